"""Pinned releases: pushing tags to the deploy branch, reusing kept releases, push options."""

from __future__ import annotations

import json

import pytest
from conftest import Host, Work, run


def history(host: Host) -> list[dict]:
    path = host.dir / "deploys" / "deploys.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def manifest(host: Host) -> dict:
    return json.loads((host.live() / ".shipyard" / "release.json").read_text())


MIGRATION = """from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("polls", "0002_choice")]
    operations = [migrations.AddField("question", "votes", models.IntegerField(default=0))]
"""


def deploy_count(host: Host) -> int:
    return len(list((host.dir / "deploys").glob("*.log")))


@pytest.fixture
def fast(work: Work) -> Work:
    """The example app without its collectstatic step: pushes take a fraction of a second."""
    work.commit("no build step", **{"shipyard.toml": ""})
    return work


def test_annotated_tag_to_branch_deploys_its_commit(host: Host, fast: Work):
    fast.push()
    sha = fast.commit("two", **{"mysite/version.py": 'GREETING = "two"\n'})
    fast.git("tag", "-a", "v1.0", "-m", "release 1.0")
    tag_object = fast.git("rev-parse", "v1.0").stdout.strip()
    assert tag_object != sha
    result = fast.push("v1.0:main")
    assert result.returncode == 0
    assert "error" not in result.out.lower() and "rejected" not in result.out
    old = host.dir / "deploys" / "1.log"
    assert old.is_file()
    assert "v1.0 -> main" in result.out.splitlines()[-1]  # git's own success line
    assert f"shipyard ▸ deploy #2: main {sha[:7]} (v1.0) by" in result.out
    assert f"shipyard ▸ live: {sha[:7]} (v1.0)" in result.out
    assert host.branch("refs/heads/main") == sha  # the peeled commit, never the tag object
    assert manifest(host)["tag"] == "v1.0"
    assert history(host)[-1]["tag"] == "v1.0" and history(host)[-1]["outcome"] == "live"
    assert not list((host.dir / "run" / "tags").iterdir())  # the note was consumed


@pytest.mark.parametrize("annotated", [True, False], ids=["annotated", "lightweight"])
def test_first_push_of_a_tag_to_an_empty_host_deploys(host: Host, fast: Work, annotated: bool):
    """With no main on the host, git reads `v1.0:main` as "create tag main": it deploys to main.

    (It was refused before, asking for `v1.0:refs/heads/main`.)
    """
    sha = fast.git("rev-parse", "HEAD").stdout.strip()
    fast.git("tag", *(["-a", "-m", "release 1.0"] if annotated else []), "v1.0")
    result = fast.push("v1.0:main")
    assert result.returncode == 0, result.out
    assert "* [new branch]      v1.0 -> main" in result.out  # git's line names the branch
    named = " (v1.0)" if annotated else ""  # a lightweight tag is a bare commit on the wire
    assert f"shipyard ▸ live: {sha[:7]}{named} in" in result.out
    assert host.branch("refs/heads/main") == sha and host.branch("refs/tags/main") is None
    assert fast.tracking() == sha  # the pusher's production/main is what is live
    assert manifest(host)["sha"] == sha

    # Once the branch exists, a real tag named like it is refused (it would make main ambiguous)
    fast.git("tag", "-f", "main")
    refused = fast.push("refs/tags/main:refs/tags/main", check=False)
    assert refused.returncode != 0
    assert "refusing to create a tag named main" in refused.out
    assert host.branch("refs/tags/main") is None and deploy_count(host) == 1
    fast.git("tag", "-d", "main")
    full = fast.push("-f", "v1.0:refs/heads/main")  # the full spelling still works
    assert full.returncode == 0 and host.branch("refs/heads/main") == sha


@pytest.mark.parametrize("how", ["forced push", "shipyard deploy"])
def test_pinning_an_older_tag_names_the_migrations_applied_since(host: Host, fast: Work, how):
    """Making an older release live warns as a rollback does (it printed `nothing pending`)."""
    fast.git("tag", "-a", "v0.9", "-m", "before the migration")
    v09 = fast.push().out and host.branch()
    old = host.live().name
    fast.commit("migration", **{"polls/migrations/0003_votes.py": MIGRATION})
    fast.push()
    if how == "forced push":
        out = fast.push("-f", "v0.9:main").out
    else:
        out = run("shipyard", "--root", host.root, "deploy", "mysite", v09[:12]).stdout
    warning = next(ln for ln in out.splitlines() if "migration(s) applied since" in ln)
    assert f"1 migration(s) applied since {old} stay applied: polls.0003_votes;" in warning
    assert "the older code runs against the newer schema" in warning
    assert host.live().name == old


def test_lightweight_tag_deploys_and_is_named_only_when_pushed_too(host: Host, fast: Work):
    fast.push()
    sha = fast.commit("two", **{"mysite/version.py": 'GREETING = "two"\n'})
    fast.git("tag", "v2")
    alone = fast.push("v2:main")
    assert f"shipyard ▸ live: {sha[:7]} in" in alone.out  # on the wire a commit has no name
    assert host.branch() == sha and history(host)[-1]["tag"] is None

    sha3 = fast.commit("three", **{"mysite/version.py": 'GREETING = "three"\n'})
    fast.git("tag", "v3")
    both = fast.push("v3", "v3:main")
    assert "shipyard ▸ stored tag v3" in both.out
    assert f"shipyard ▸ live: {sha3[:7]} (v3)" in both.out
    assert history(host)[-1]["tag"] == "v3" and manifest(host)["tag"] == "v3"


def test_pinning_an_older_tag_needs_force_and_reuses_the_kept_release(host: Host, work: Work):
    """Normal deploys build (collectstatic); a pinned push of a kept release only switches."""
    v1 = work.commit(
        "collectstatic on every deploy",
        **{"shipyard.toml": 'build = ["python manage.py collectstatic --noinput -v 0"]\n'},
    )
    work.git("tag", "-a", "v1", "-m", "one")
    work.push()
    v1_release = host.live()
    work.commit("two", **{"mysite/version.py": 'GREETING = "two"\n'})
    work.push()
    work.commit("three", **{"mysite/version.py": 'GREETING = "three"\n'})
    normal = work.push()
    assert "✓ build" in normal.out
    head, releases, logs = host.branch(), host.releases(), deploy_count(host)
    venvs = sorted(p.name for p in (host.dir / "venvs").iterdir())

    refused = work.push("v1:main", check=False)
    assert refused.returncode != 0
    assert "[rejected]" in refused.out and "non-fast-forward" in refused.out
    assert host.branch() == head and deploy_count(host) == logs  # nothing deployed

    pinned = work.push("-f", "v1:main")
    assert "(forced update)" in pinned.out
    assert f"reused releases/{v1_release.name} (already built)" in pinned.out
    assert "✓ venv" not in pinned.out and "✓ build" not in pinned.out
    assert f"shipyard ▸ live: {v1[:7]} (v1)" in pinned.out
    assert host.live() == v1_release and host.branch() == v1
    assert host.releases() == releases  # no new release directory
    assert sorted(p.name for p in (host.dir / "venvs").iterdir()) == venvs
    entries = history(host)
    assert entries[-1]["reused"] is True and entries[-1]["tag"] == "v1"
    # how much faster it is, `make bench` measures ("pinned push of a kept release")

    # `+v1:main` is the same force, spelled in the refspec; back to head first.
    work.push("-f", "main")
    again = work.push("+v1:main")
    assert "reused releases/" in again.out and host.live() == v1_release


def test_pinning_a_release_that_is_gone_builds_it_again(host: Host, fast: Work):
    first = fast.git("rev-parse", "HEAD").stdout.strip()
    fast.git("tag", "v1")
    fast.push()
    old = host.live()
    fast.commit("two", **{"mysite/version.py": 'GREETING = "two"\n'})
    fast.push()
    run("rm", "-rf", old)
    result = fast.push("-f", "v1:main")
    assert "reused releases/" not in result.out and "files → releases/" in result.out
    assert f"shipyard ▸ live: {first[:7]}" in result.out


def test_tag_of_a_tree_or_blob_is_refused(host: Host, fast: Work):
    fast.push()
    sha = host.branch()
    fast.git("tag", "-a", "treetag", "-m", "a tree", "HEAD^{tree}")
    plain = fast.push("treetag:main", check=False)
    assert plain.returncode != 0 and host.branch() == sha  # git itself wants --force
    forced = fast.push("-f", "treetag:main", check=False)
    assert forced.returncode != 0
    assert "tag treetag does not point at a commit" in forced.out
    blob = fast.git("rev-parse", "HEAD:manage.py").stdout.strip()
    fast.git("tag", "blobtag", blob)
    forced = fast.push("-f", "blobtag:main", check=False)
    assert f"{blob[:7]} is a blob, not a commit" in forced.out
    assert host.branch() == sha and deploy_count(host) == 1


def test_known_push_options_are_applied_and_recorded(host: Host, fast: Work):
    fast.push()
    fast.commit("two", **{"mysite/version.py": 'GREETING = "two"\n'})
    result = fast.push(
        "-o",
        "skip-migrate",
        "-o",
        "no-restart",
        "-o",
        "color=never",
        "-o",
        "message=hotfix for #12",
        "main",
    )
    assert "by " in result.out.splitlines()[0] and ": hotfix for #12" in result.out.splitlines()[0]
    assert "\033[" not in result.out and "^[[" not in result.out
    for phase in ("migrate", "restart", "verify"):
        line = next(ln for ln in result.out.splitlines() if f" {phase} " in ln)
        assert "skipped" in line or "-o no-restart:" in line, line
    options = history(host)[-1]["options"]
    assert options == {
        "skip-migrate": "",
        "no-restart": "",
        "color": "never",
        "message": "hotfix for #12",
    }
    fast.commit("three", **{"mysite/version.py": 'GREETING = "three"\n'})
    colored = fast.push("-o", "color=always", "main")  # the tests run with NO_COLOR set
    assert "\033[32m✓" in colored.out or "^[[32m✓" in colored.out  # newer gits mask ESC


def test_unknown_push_option_is_refused_before_the_ref_moves(host: Host, fast: Work):
    fast.push()
    sha, logs = host.branch(), deploy_count(host)
    fast.commit("two", **{"mysite/version.py": 'GREETING = "two"\n'})
    for bad in ("skip-migrations", "color=purple", "no-restart=no"):
        result = fast.push("-o", bad, "main", check=False)
        assert result.returncode != 0 and "[remote rejected]" in result.out
        assert (
            "known options: color, maintenance, message, no-restart, no-wait, skip-migrate, wait"
            in result.out
            or "is not one of never, always, auto" in result.out
            or "push option no-restart takes no value" in result.out
        )
        assert host.branch() == sha and deploy_count(host) == logs
