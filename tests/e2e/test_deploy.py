"""Single-host push-to-deploy with the real git client, real uv, the real example app."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path

from conftest import Host, Work, make_work, run, shipyard
from httpload import fetch

from shipyard import fault_injection, lock


def manifest(host: Host) -> dict:
    return json.loads((host.live() / ".shipyard" / "release.json").read_text())


def history(host: Host) -> list[dict]:
    path = host.dir / "deploys" / "deploys.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_init_creates_layout_and_is_repeatable(host: Host):
    for name in ("repo.git", "releases", "venvs", "shared", "deploys", "run", "shipyard.toml"):
        assert (host.dir / name).exists(), name
    for hook in ("proc-receive", "post-receive"):
        assert os.access(host.repo / "hooks" / hook, os.X_OK)
    config = run("git", "--git-dir", host.repo, "config", "receive.procReceiveRefs").stdout
    assert config.strip() == "refs/heads/main"
    (host.repo / "hooks" / "post-receive").unlink()
    again = shipyard("--root", host.root, "init", "mysite")
    assert "installed hooks/post-receive" in again.stdout
    assert f"git remote add production {host.repo}" in again.stdout
    assert "ssh://" in again.stdout
    assert "nothing to do" in shipyard("--root", host.root, "init", "mysite").stdout


def test_init_again_with_allow_root_sets_it(tmp_path):
    root = tmp_path / "apps"
    shipyard("--root", root, "init", "blog", "--port", "8123")
    config = root / "blog" / "shipyard.toml"
    config.write_text(config.read_text() + '\n[health]\npath = "/up"\n')
    again = shipyard("--root", root, "init", "blog", "--allow-root")
    assert "set allow_root = true in shipyard.toml" in again.stdout
    text = config.read_text()
    assert text.index("allow_root = true") < text.index("[health]")  # top level, not in a table
    assert "port = 8123" in text and 'path = "/up"' in text
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert "nothing to do" in shipyard("--root", root, "init", "blog", "--allow-root").stdout


def test_init_refuses_a_directory_that_is_not_an_app(tmp_path):
    (tmp_path / "apps" / "blog").mkdir(parents=True)
    (tmp_path / "apps" / "blog" / "notes.txt").write_text("mine")
    result = shipyard("--root", tmp_path / "apps", "init", "blog", check=False)
    assert result.returncode == 1
    assert "exists and is not a shipyard app" in result.stderr
    assert result.stderr.count("\n") == 1
    assert (tmp_path / "apps" / "blog" / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "apps" / "blog" / "repo.git").exists()


def test_first_push_goes_live_then_code_change_reuses_venv(host: Host, work: Work):
    first = work.push()
    assert "shipyard ▸ deploy #1: main" in first.out
    for phase in ("checkout", "link", "venv", "build", "switch", "finish"):
        assert f"✓ {phase}" in first.out, phase
    sha = work.git("rev-parse", "HEAD").stdout.strip()
    assert f"shipyard ▸ live: {sha[:7]}" in first.out
    release = host.live()
    assert release.parent == host.dir / "releases"
    assert release.name.endswith(f"-{sha[:7]}")
    assert (release / "manage.py").is_file() and not (release / ".git").exists()
    assert (release / "static" / "polls" / "style.css").is_file()  # collectstatic ran
    assert (release / "media").is_symlink()
    venv = (release / ".venv").resolve()
    assert venv.parent == host.dir / "venvs" and (venv / "bin" / "gunicorn").exists()
    django = run(
        release / ".venv" / "bin" / "python",
        "-c",
        "import django, os; print(os.path.realpath(django.__file__))",
    )
    assert str(host.dir / "venvs") in django.stdout
    assert manifest(host)["sha"] == sha and manifest(host)["state"] == "good"
    assert history(host)[-1]["outcome"] == "live"

    work.commit("v2", **{"mysite/version.py": 'GREETING = "Hello from mysite v2"\n'})
    second = work.push()
    assert "requirements unchanged" in second.out
    assert (host.live() / ".venv").resolve() == venv
    assert "v2" in (host.live() / "mysite" / "version.py").read_text()
    assert len(host.releases()) == 2

    work.commit(
        "deps",
        **{
            "requirements.txt": (work.path / "requirements.txt").read_text()
            + "python-dotenv>=1.0\n"
        },
    )
    third = work.push()
    assert "built" in third.out.split("✓ venv")[1].splitlines()[0]
    assert (host.live() / ".venv").resolve() != venv
    assert [e["outcome"] for e in history(host)] == ["live", "live", "live"]


def test_prune_keeps_last_n_good_releases_and_their_venvs(host: Host, work: Work):
    host.set_host_config(keep=2)
    work.write("shipyard.toml", "")  # no build step: faster pushes
    for i in range(4):
        work.commit(f"c{i}", **{"mysite/version.py": f'GREETING = "v{i}"\n'})
        work.push()
    releases = host.releases()
    assert len(releases) == 2 and host.live().name == releases[-1]
    assert len(list((host.dir / "venvs").iterdir())) == 1


def test_the_push_returns_before_what_it_pruned_is_deleted(host: Host, work: Work):
    """Pruning is off the push's critical path: the pruned release is out of every listing when
    the push says live, and deleted after it, by the worker, the deploy lock already free."""
    host.set_host_config(keep=1)
    work.write("shipyard.toml", "")  # no build step: faster pushes
    work.commit("first", **{"mysite/version.py": 'GREETING = "v0"\n'})
    work.push()
    run_dir = host.dir / "run"
    fault_injection.arm(
        run_dir, {"at": "tidy", "action": "pause", "timeout": 120, "deploy": 2}
    )  # the second push's: the first one's worker may still be on its way out
    try:
        sha = work.commit("second", **{"mysite/version.py": 'GREETING = "v1"\n'})
        out = work.push().out  # with the worker paused after its outcome, before deleting
        assert f"shipyard ▸ live: {sha[:7]}" in out
        deadline = time.monotonic() + 30  # bounded: the answer goes out before the pause
        while not (run_dir / fault_injection.PAUSED).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert (run_dir / fault_injection.PAUSED).exists()
        assert host.releases() == [host.live().name]
        trash = list((host.dir / "releases").glob(".trash-*"))
        assert trash  # renamed aside, not deleted yet
        assert not lock.is_held(host.dir / "run" / "deploy.lock")  # the next deploy may go on
        third = work.commit("third", **{"mysite/version.py": 'GREETING = "v2"\n'})
        assert f"shipyard ▸ live: {third[:7]}" in work.push().out  # and its prune leaves ours
        assert all(p.is_dir() for p in trash)
    finally:
        fault_injection.disarm(run_dir)
        (run_dir / fault_injection.PAUSED).unlink(missing_ok=True)
    deadline = time.monotonic() + 60  # bounded: the paused worker ends once it deleted its trash
    while list((host.dir / "releases").glob(".trash-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not list((host.dir / "releases").glob(".trash-*"))
    assert host.releases() == [host.live().name]
    assert history(host)[-1]["outcome"] == "live"


def test_the_repo_is_packed_after_the_answer_not_before_it(host: Host, work: Work):
    """receive-pack's own `git gc --auto` ran before the pusher had an answer; the worker runs
    it once the outcome is out. Every push kept as a pack, and two packs too many: the gc
    after the second push's answer leaves one."""
    repo = host.dir / "repo.git"
    config = ["git", "--git-dir", str(repo), "config"]
    assert run(*config, "receive.autogc").stdout.strip() == "false"
    run(*config, "transfer.unpackLimit", "1")
    run(*config, "gc.autoPackLimit", "1")
    work.write("shipyard.toml", "")  # no build step: faster pushes
    work.commit("first", **{"mysite/version.py": 'GREETING = "v0"\n'})
    work.push()

    def packs() -> int:
        return len(list((repo / "objects" / "pack").glob("*.pack")))

    deadline = time.monotonic() + 30  # bounded: the first push's worker ends
    while packs() != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert packs() == 1
    run_dir = host.dir / "run"
    fault_injection.arm(run_dir, {"at": "tidy", "action": "pause", "timeout": 120, "deploy": 2})
    try:
        sha = work.commit("second", **{"mysite/version.py": 'GREETING = "v1"\n'})
        assert f"shipyard ▸ live: {sha[:7]}" in work.push().out
        deadline = time.monotonic() + 30
        while not (run_dir / fault_injection.PAUSED).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert (run_dir / fault_injection.PAUSED).exists()
        assert packs() == 2  # answered, not yet collected
    finally:
        fault_injection.disarm(run_dir)
        (run_dir / fault_injection.PAUSED).unlink(missing_ok=True)
    deadline = time.monotonic() + 60  # bounded: the worker packs once it is let go
    while packs() != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert packs() == 1
    assert run("git", "--git-dir", repo, "cat-file", "-e", sha).returncode == 0


def test_failing_build_step_leaves_live_release_and_retry_works(host: Host, work: Work):
    work.push()
    live, good_sha = host.live(), host.branch()
    bad = work.commit("bad", **{"shipyard.toml": 'build = ["echo building; exit 3"]\n'})
    result = work.push(check=False)  # a failed deploy fails the push (it exited 0 before)
    assert result.returncode != 0 and work.tracking() == good_sha
    assert "[remote rejected] main -> main (deploy #2 failed at build: build step" in result.out
    assert "✗ build" in result.out and "exit 3" in result.out and "building" in result.out
    assert f"still live: {live.name}" in result.out.splitlines()[-3] or "still live" in result.out
    assert host.live() == live
    assert host.branch() == good_sha  # reset, so a plain re-push retries
    assert not any(r.endswith(bad[:7]) for r in host.releases())
    assert history(host)[-1]["outcome"] == "failed"
    work.git("commit", "-q", "--amend", "-m", "fixed", "--no-edit")
    work.write("shipyard.toml", "build = []\n")
    work.git("commit", "-qam", "fix build")
    retry = work.push()
    assert "shipyard ▸ live" in retry.out and host.live() != live


def test_concurrent_pushes_end_with_the_newest_live(tmp_path, host: Host, work: Work):
    work.write("shipyard.toml", 'build = ["sleep 2"]\n')
    work.commit("slow build")
    work.push()
    other = make_work(tmp_path / "other", host)
    other.git("fetch", "-q", "production")
    other.git("reset", "-q", "--hard", "production/main")
    a = work.commit("a", **{"mysite/version.py": 'GREETING = "a"\n'})
    first = subprocess.Popen(
        ["git", "push", "production", "main"],
        cwd=work.path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    time.sleep(1.0)
    other.commit("b", **{"mysite/other.py": "B = 1\n"})
    other.git("pull", "-q", "--rebase", "production", "main")
    b = other.git("rev-parse", "HEAD").stdout.strip()
    second = other.push()
    out_a = first.communicate(timeout=120)[0]
    assert a[:7] in out_a and b[:7] in second.out
    assert "waiting for deploy" in second.out
    assert host.live().name.endswith(b[:7])
    outcomes = {e["sha"][:7]: e["outcome"] for e in history(host)}
    assert outcomes[a[:7]] == "live" and outcomes[b[:7]] == "live"


def test_killed_push_client_does_not_stop_the_deploy(host: Host, work: Work):
    work.write("shipyard.toml", 'build = ["sleep 3"]\n')
    sha = work.commit("slow")
    client = subprocess.Popen(
        ["git", "push", "production", "main"],
        cwd=work.path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    seen = b""
    while b"build" not in seen and b"venv" not in seen:
        seen += client.stdout.read1(1024)
    os.killpg(client.pid, signal.SIGKILL)
    client.wait()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (host.dir / "current").exists():
        time.sleep(0.2)
    while (
        time.monotonic() < deadline and (host.dir / "deploys" / "deploys.jsonl").exists() is False
    ):
        time.sleep(0.2)
    assert host.live().name.endswith(sha[:7])
    assert history(host)[-1]["outcome"] == "live"
    assert "shipyard ▸ live" in (host.dir / "deploys" / "1.log").read_text()
    assert f"shipyard ▸ live: {sha[:7]}" in shipyard("--root", host.root, "log", "mysite").stdout
    assert work.tracking() is None  # the client never heard the outcome
    after = work.commit("next", **{"mysite/version.py": 'GREETING = "next"\n'})
    again = work.push()  # the next push is not confused by the refs
    assert again.returncode == 0 and work.tracking() == after == host.branch()
    assert host.live().name.endswith(after[:7])


def test_other_branches_are_stored_not_deployed(host: Host, work: Work):
    work.git("checkout", "-q", "-b", "feature")
    result = work.push("feature")
    assert "stored refs/heads/feature (not deployed: this app deploys main)" in result.out
    # nothing is live: `git init` may have named the branch otherwise; the fix is said
    assert "nothing is live yet: `git push production feature:main` deploys this" in result.out
    assert not (host.dir / "current").exists()
    assert host.branch("feature")
    # the hint's other way: the app deploys that branch from now on
    out = shipyard("--root", host.root, "init", "mysite", "--branch", "feature").stdout
    assert (
        "set branch = 'feature' in shipyard.toml, was 'main'" in out and "nothing to do" not in out
    )
    assert "git push production feature" in out
    work.git("commit", "-q", "--allow-empty", "-m", "later")
    deployed = work.push("feature")
    assert "shipyard ▸ live:" in deployed.out and host.live().name.endswith(
        host.branch("feature")[:7]
    )
    work.git("checkout", "-q", "-b", "other")
    assert "nothing is live yet" not in work.push("other").out  # something is live
    refused = shipyard("--root", host.root, "init", "mysite", "--branch", "a b", check=False)
    assert refused.returncode == 1 and "--branch 'a b' is not a branch name" in refused.stderr


def test_deleting_the_deploy_branch_is_refused(host: Host, work: Work):
    work.push()
    sha = host.branch()
    result = work.push(":main", check=False)
    assert result.returncode != 0
    assert "deleting the deploy branch main is refused" in result.out
    assert host.branch() == sha


def test_invalid_shipyard_toml_refused_before_the_ref_moves(host: Host, work: Work):
    work.push()
    sha = host.branch()
    work.commit("syntax", **{"shipyard.toml": "build = [\n"})
    result = work.push(check=False)
    assert (
        result.returncode != 0 and "shipyard.toml:" in result.out and "not valid TOML" in result.out
    )
    assert host.branch() == sha
    work.commit("unknown", **{"shipyard.toml": 'biuld = ["x"]\n'})
    result = work.push(check=False)
    assert "shipyard.toml:1: unknown key 'biuld'" in result.out
    assert host.branch() == sha and "deploy #" not in result.out


def test_requirement_problems_fail_cleanly(host: Host, work: Work):
    work.push()
    live = host.live()
    work.commit("missing", **{"shipyard.toml": 'requirements = "reqs/prod.txt"\n'})
    result = work.push(check=False)  # refused before the branch moves
    assert result.returncode != 0 and host.branch() != work.git("rev-parse", "HEAD").stdout.strip()
    assert "requirements file 'reqs/prod.txt' is not in the commit" in result.out
    work.commit(
        "uninstallable",
        **{"shipyard.toml": "", "requirements.txt": "shipyard-no-such-package-xyz==1.0\n"},
    )
    result = work.push(check=False)  # a failed deploy fails the push (it exited 0 before)
    assert result.returncode != 0 and "(deploy #2 failed at venv: " in result.out
    assert "✗ venv" in result.out and "shipyard-no-such-package-xyz" in result.out
    assert host.live() == live
    assert not [p for p in (host.dir / "venvs").iterdir() if p.name.startswith(".tmp")]
    assert len(list((host.dir / "venvs").iterdir())) == 1


def test_symlink_out_of_the_release_is_refused(host: Host, work: Work):
    (work.path / "secrets").symlink_to("../../../../etc/passwd")
    work.commit("sneaky")
    result = work.push(check=False)  # a failed deploy fails the push (it exited 0 before)
    assert result.returncode != 0 and work.tracking() is None
    assert "symlink secrets -> ../../../../etc/passwd points outside the release" in result.out
    assert not (host.dir / "current").exists() and host.releases() == []
    assert host.branch() is None


def test_build_outputs_reused_while_inputs_unchanged(host: Host, work: Work):
    work.push()
    first = host.live()
    work.commit("code", **{"mysite/version.py": 'GREETING = "code only"\n'})
    code_only = work.push()
    assert "0 ran, 1 reused (inputs unchanged)" in code_only.out
    css = "static/polls/style.css"
    assert (host.live() / css).stat().st_ino == (first / css).stat().st_ino
    work.commit("style", **{"polls/static/polls/style.css": "body { color: red; }\n"})
    restyled = work.push()
    assert "✓ build" in restyled.out and "1 ran" in restyled.out
    assert "red" in (host.live() / css).read_text()
    assert "sans-serif" in (first / css).read_text()  # the old release is untouched


def test_requirements_resolving_to_the_same_packages_reuse_the_venv(host: Host, work: Work):
    work.push()
    first = host.live()
    venv = (first / ".venv").resolve()
    css = "static/polls/style.css"
    reqs = (work.path / "requirements.txt").read_text()
    work.commit("explicit", **{"requirements.txt": reqs + "sqlparse>=0.4\n"})  # Django's own
    same = work.push()
    line = same.out.split("✓ venv")[1].splitlines()[0]
    assert "reused" in line and "requirements changed, resolved to the same" in line, line
    assert (host.live() / ".venv").resolve() == venv
    assert "0 ran, 1 reused (inputs unchanged)" in same.out
    assert (host.live() / css).stat().st_ino == (first / css).stat().st_ino
    assert manifest(host)["venv"] == venv.name
    assert fetch(host.port)[0] == 200  # the site runs on the venv it shares

    work.commit("added", **{"requirements.txt": reqs + "sqlparse>=0.4\npython-dotenv>=1.0\n"})
    added = work.push()  # another package: a venv of its own, and the build runs with it
    assert "built" in added.out.split("✓ venv")[1].splitlines()[0]
    grown = (host.live() / ".venv").resolve()
    assert grown != venv and manifest(host)["venv"] == grown.name
    assert "1 ran" in added.out.split("✓ build")[1].splitlines()[0]
    run(host.live() / ".venv" / "bin" / "python", "-c", "import dotenv, django")
    assert run(venv / "bin" / "python", "-c", "import dotenv", check=False).returncode != 0

    work.commit("code", **{"mysite/version.py": 'GREETING = "code only"\n'})
    code_only = work.push()
    assert "requirements unchanged" in code_only.out
    assert (host.live() / ".venv").resolve() == grown
    status, body = fetch(host.port)
    assert status == 200 and "code only" in body


def test_queued_pushes_coalesce_to_the_newest(tmp_path, host: Host, work: Work):
    work.write("shipyard.toml", 'build = ["sleep 3"]\n')
    work.commit("slow build")
    work.push()
    other = make_work(tmp_path / "other", host)

    def background(clone: Work) -> subprocess.Popen:
        return subprocess.Popen(
            ["git", "push", "production", "main"],
            cwd=clone.path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    work.commit("a", **{"mysite/version.py": 'GREETING = "a"\n'})
    a = background(work)
    time.sleep(1.0)
    other.git("fetch", "-q", "production")
    other.git("reset", "-q", "--hard", "production/main")
    b_sha = other.commit("b", **{"mysite/b.py": "B = 1\n"})
    b = background(other)
    deadline = time.monotonic() + 60  # c goes on top of b: b's ref must have moved first
    while host.branch() != b_sha:
        assert time.monotonic() < deadline, "push b never moved main"
        time.sleep(0.05)
    c_sha = other.commit("c", **{"mysite/c.py": "C = 1\n"})
    c = other.push()
    out_a, out_b = a.communicate(timeout=120)[0], b.communicate(timeout=120)[0]
    assert "shipyard ▸ live" in out_a
    assert "waiting for deploy" in out_b and f"superseded: main is now {c_sha[:7]}" in out_b
    assert a.returncode == 0 and b.returncode != 0  # b's push exited 0 before: nothing deployed
    assert "[remote rejected] main -> main (deploy #3 superseded: " in out_b
    assert f"shipyard ▸ live: {c_sha[:7]}" in c.out
    assert host.live().name.endswith(c_sha[:7])
    outcomes = {e["sha"]: e["outcome"] for e in history(host)}
    assert outcomes[b_sha] == "superseded" and outcomes[c_sha] == "live"


def test_heartbeat_during_a_long_step(host: Host, work: Work):
    work.write("shipyard.toml", 'build = ["sleep 2.5"]\n')
    work.commit("slow")
    (host.dir / "shipyard.toml").write_text(
        (host.dir / "shipyard.toml").read_text() + "heartbeat = 1\n"
    )
    result = work.push()
    beats = [ln for ln in result.out.splitlines() if "… build" in ln and "still running" in ln]
    assert len(beats) >= 2


def wait_for_spare(host: Host, sha: str) -> Path:
    """The worker prepares the live commit's spare once the push is answered: soon after."""
    spare = host.dir / "releases" / f".next-{sha}"
    deadline = time.monotonic() + 60  # bounded
    while not (spare / ".shipyard" / "spare.json").is_file() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (spare / ".shipyard" / "spare.json").is_file(), "no spare after the answer"
    return spare


def test_the_next_push_starts_from_the_spare_made_after_the_answer(host: Host, work: Work):
    work.commit("notes", **{"notes/old.txt": "deleted by the next push\n"})
    work.push()
    first = host.live()
    first_sha = manifest(host)["sha"]
    spare = wait_for_spare(host, first_sha)
    assert host.releases() == [first.name]  # no release: not listed, not kept, no rollback
    listed = shipyard("--root", host.root, "releases", host.name, "--json")
    assert [r["id"] for r in json.loads(listed.stdout)["releases"]] == [first.name]

    (work.path / "notes" / "old.txt").unlink()
    sha = work.commit("v2", **{"mysite/version.py": 'GREETING = "from the spare"\n'})
    assert f"shipyard ▸ live: {sha[:7]}" in work.push().out
    second = host.live()
    assert not spare.exists()  # taken by the checkout
    assert (second / "manage.py").stat().st_ino == (first / "manage.py").stat().st_ino
    assert not (second / "notes").exists() and (first / "notes" / "old.txt").exists()
    assert 'GREETING = "from the spare"' in (second / "mysite" / "version.py").read_text()
    assert wait_for_spare(host, sha).is_dir()

    shutil.rmtree(first)  # deleting another release breaks none
    status, body = fetch(host.port)
    assert status == 200 and "from the spare" in body
    assert shipyard("--root", host.root, "status", host.name).returncode == 0
