"""Operator commands on the host: status, releases, history, log, deploy, rollback."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import pytest
from conftest import BIN, Host, Work, shipyard
from httpload import fetch

from shipyard import fault_injection, lock


def sy(host: Host, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return shipyard("--root", host.root, *args, check=check)


def history(host: Host) -> list[dict]:
    path = host.dir / "deploys" / "deploys.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def manifest_file(host: Host, release: str):
    return host.dir / "releases" / release / ".shipyard" / "release.json"


def edit_manifest(host: Host, release: str, **values: object) -> None:
    path = manifest_file(host, release)
    data = json.loads(path.read_text())
    data.update(values)
    path.write_text(json.dumps(data))


def holder(host: Host) -> dict:
    """What the deploy lock's holder wrote about itself (empty when free or unknown)."""
    try:
        return json.loads((host.dir / "run" / "deploy.lock").read_text() or "{}")
    except (OSError, ValueError):
        return {}


def wait_for(predicate, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def three(host: Host, work: Work) -> tuple[Host, Work, list[str]]:
    """Three good releases, v1 (annotated tag, pushed), v2, v3; v3 is live. No build step."""
    work.commit("fast", **{"shipyard.toml": ""})
    work.git("tag", "-a", "v1", "-m", "one")
    work.push("main", "v1")
    for n in (2, 3):
        work.commit(f"v{n}", **{"mysite/version.py": f'GREETING = "v{n}"\n'})
        work.git("tag", f"v{n}")
        work.push("main", f"v{n}")
    releases = [entry["release"] for entry in history(host)]  # ids made in one second
    assert sorted(releases) == host.releases()  # may not sort by time; deploys do
    return host, work, releases


# --- status, releases, history, log -----------------------------------------


def settled_status(host: Host, timeout: float = 10.0) -> str:
    """``status`` once supervisord counts web as RUNNING: a program is STARTING for its
    first second (``startsecs``), though its health check passed before the push ended."""
    deadline = time.monotonic() + timeout
    while True:
        out = sy(host, "status", "mysite").stdout
        if re.search(r"web\.1: RUNNING", out) or time.monotonic() > deadline:
            return out
        time.sleep(0.2)


def test_status_shows_what_is_live_in_80_columns_and_as_json(three):
    host, work, releases = three
    out = settled_status(host)
    sha = host.branch("refs/heads/main")
    assert out.splitlines()[0] == f"mysite: live {sha[:7]} (v3)"
    assert f"release    releases/{releases[-1]}" in out
    assert "deployed   deploy #3 by " in out
    assert "deploying  no" in out
    assert re.search(r"processes  listen-\d+: RUNNING pid \d+\n +web\.1: RUNNING pid \d+ live", out)
    assert f"rollback   → {releases[-2]}" in out
    assert all(len(line) <= 80 for line in out.splitlines())

    data = json.loads(sy(host, "status", "mysite", "--json").stdout)
    assert data["schema"] == 1 and data["app"] == "mysite"
    assert set(data) >= {"live", "deploying", "waiting", "last", "branch", "rollback_to"}
    live = data["live"]
    assert live["release"] == releases[-1] and live["sha"] == sha and live["tag"] == "v3"
    assert live["state"] == "good" and live["deploy"] == 3 and live["kind"] == "push"
    assert isinstance(live["since"], float) and live["since"] <= time.time()
    assert data["deploying"] is None and data["waiting"] == []
    web = next(row for row in data["processes"] if row["process"] == "web.1")
    assert web["state"] == "RUNNING" and web["release"] == releases[-1] and web["live"]
    assert data["rollback_to"] == releases[-2]
    assert data["branch"] == {"name": "main", "sha": sha}


def test_releases_table_and_json(three):
    host, work, releases = three
    edit_manifest(host, releases[-1], migrations=["polls.0003_a", "polls.0004_b"])
    out = sy(host, "releases", "mysite").stdout
    lines = out.splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert lines[0].split() == [
        "RELEASE",
        "(stamp-sha)",
        "TAG",
        "STATE",
        "VENV",
        "MIGR",
        "LIVE",
        "BY",
    ]
    assert lines[1].startswith(f"* {releases[-1]}  v3") and " good " in lines[1]
    assert lines[1].split()[5] == "2"  # migrations applied
    assert lines[2].startswith(f"↩ {releases[-2]}  v2")
    assert lines[3].startswith(f"  {releases[-3]}  v1")

    data = json.loads(sy(host, "releases", "mysite", "--json").stdout)
    assert data["schema"] == 1 and data["live"] == releases[-1] and data["keep"] == 5
    assert [r["id"] for r in data["releases"]] == releases
    row = data["releases"][-1]
    assert set(row) == {
        "id", "sha", "tag", "state", "live", "venv", "venv_present", "migrations",
        "built", "deployed", "deploy", "pusher", "own_bytes",
    }  # fmt: skip
    assert row["live"] is True and row["state"] == "good" and row["venv_present"] is True
    assert row["migrations"] == ["polls.0003_a", "polls.0004_b"] and len(row["sha"]) == 40
    # releases share their unchanged files: what each holds alone adds up to less than all
    assert 0 < sum(r["own_bytes"] for r in data["releases"]) < data["disk_bytes"]
    assert "all releases" in out.split("DISK")[1]


def test_history_lists_deploys_with_tags_and_messages(three):
    host, work, _ = three
    work.commit("four", **{"mysite/version.py": 'GREETING = "v4"\n'})
    work.push("-o", "message=ship it", "main")
    out = sy(host, "history", "mysite").stdout
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["#", "KIND", "SHA", "TAG"]
    assert lines[1].split()[:2] == ["4", "push"] and lines[1].endswith(": ship it")
    assert lines[2].split()[3] == "v3" and "live" in lines[2]
    assert all(len(line) <= 80 for line in lines)
    data = json.loads(sy(host, "history", "mysite", "-n", "2", "--json").stdout)
    assert [e["deploy"] for e in data["deploys"]] == [3, 4]
    assert data["deploys"][-1]["options"] == {"message": "ship it"}


def test_log_replays_a_deploy(three):
    host, _, _ = three
    latest = sy(host, "log", "mysite").stdout
    assert latest.startswith("shipyard ▸ deploy #3: main") and "shipyard ▸ live:" in latest
    assert sy(host, "log", "mysite", "#1").stdout.startswith("shipyard ▸ deploy #1:")
    assert sy(host, "log", "mysite", "2").stdout.startswith("shipyard ▸ deploy #2:")
    missing = sy(host, "log", "mysite", "9", check=False)
    assert missing.returncode == 1 and "no deploy #9 in mysite" in missing.stderr
    assert "numbered 1 to 3" in missing.stderr
    bad = sy(host, "log", "mysite", "../1", check=False)
    assert bad.returncode == 2 and "is not a deploy number" in bad.stderr


def test_log_follow_tails_a_running_deploy_to_its_end(host: Host, work: Work):
    work.commit("slow", **{"shipyard.toml": 'build = ["sleep 2"]\n'})
    push = subprocess.Popen(
        ["git", "push", "production", "main"],
        cwd=work.path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    log = host.dir / "deploys" / "1.log"
    wait_for(lambda: log.is_file() and "checkout" in log.read_text(), what="the deploy to start")
    followed = sy(host, "log", "mysite", "--follow")
    assert push.wait(timeout=120) == 0
    assert "✓ build" in followed.stdout
    assert followed.stdout.rstrip().splitlines()[-1].startswith("shipyard ▸ live:")


# --- rollback ----------------------------------------------------------------


def test_rollback_goes_back_step_by_step_and_moves_the_branch(three):
    host, work, releases = three
    shas = [json.loads(manifest_file(host, r).read_text())["sha"] for r in releases]
    result = sy(host, "rollback", "mysite")
    out = result.stdout
    assert out.splitlines()[0].startswith(f"shipyard ▸ rollback #4: main {shas[1][:7]} (v2) by")
    assert f"reused releases/{releases[1]} (already built)" in out
    assert "✓ venv" not in out and "✓ build" not in out
    assert f"(rolled back from {releases[2]})" in out.splitlines()[-1]
    assert host.live().name == releases[1]
    assert host.branch("refs/heads/main") == shas[1]  # a plain re-push retries from here
    entry = history(host)[-1]
    assert entry["kind"] == "rollback" and entry["outcome"] == "live"
    assert entry["previous"] == releases[2] and entry["release"] == releases[1]
    assert entry["options"] == {}  # it was {"skip-migrate": ""}, an option nobody gave
    assert "skip-migrate" not in out and "a rollback runs no migrations" in out
    assert (host.dir / "deploys" / "4.log").read_text() == out  # logged like any deploy

    # Again: one more step back, never forward to the release just left.
    sy(host, "rollback", "mysite")
    assert host.live().name == releases[0]
    nothing = sy(host, "rollback", "mysite", check=False)
    assert nothing.returncode == 1
    assert "nothing to roll back to: no other good release of mysite is kept" in nothing.stderr
    assert host.live().name == releases[0]

    # Named: by release id, by tag, by commit prefix.
    sy(host, "rollback", "mysite", releases[2])
    assert host.live().name == releases[2]
    sy(host, "rollback", "mysite", "v2")
    assert host.live().name == releases[1]
    sy(host, "rollback", "mysite", shas[0][:8])
    assert host.live().name == releases[0]
    assert host.branch("refs/heads/main") == shas[0]
    again = sy(host, "rollback", "mysite", releases[0], check=False)
    assert again.returncode == 1 and "is already live" in again.stderr

    # A push after a rollback is an ordinary deploy.
    work.push("-f", "main")
    assert host.live().name == releases[2] and history(host)[-1]["kind"] == "push"


def test_rollback_answers_before_the_work_after_its_outcome(three):
    """`shipyard rollback` ends with its outcome (its exit status the outcome's): what comes
    after it (the lock's release, engine.tidy) goes on in a detached process that neither a
    terminal nor `ssh host shipyard rollback` waits for."""
    host, work, releases = three
    run_dir = host.dir / "run"
    fault_injection.arm(run_dir, {"at": "tidy", "action": "pause", "timeout": 120, "deploy": 4})
    try:
        result = shipyard("--root", host.root, "rollback", "mysite", timeout=60)  # then paused
        assert result.stdout.splitlines()[-1].startswith("shipyard ▸ live: ")
        assert host.live().name == releases[1] and history(host)[-1]["outcome"] == "live"
        assert fetch(host.port) == (200, "v2\n")  # the old code served, as it returned
        wait_for((run_dir / fault_injection.PAUSED).exists, what="the detached rest's pause")
        paused = json.loads((run_dir / fault_injection.PAUSED).read_text())
        os.kill(paused["pid"], 0)  # the detached rest of the rollback, still there
        assert os.getsid(paused["pid"]) == paused["pid"]  # in its own session
    finally:
        fault_injection.disarm(run_dir)
        (run_dir / fault_injection.PAUSED).unlink(missing_ok=True)
    wait_for(lambda: not lock.is_held(host.dir / "run" / "deploy.lock"), what="the lock's release")
    assert (host.dir / "deploys" / "4.log").read_text() == result.stdout

    fault_injection.arm(run_dir, {"at": "verify", "action": "fail"})  # a rollback that fails
    failed = shipyard("--root", host.root, "rollback", "mysite", timeout=60, check=False)
    assert failed.returncode == 1 and "failed at verify: injected failure" in failed.stdout
    assert host.live().name == releases[1] and history(host)[-1]["outcome"] == "failed"


def test_rollback_with_no_earlier_release(host: Host, work: Work):
    nothing = sy(host, "rollback", "mysite", check=False)
    assert nothing.returncode == 1 and "nothing to roll back to" in nothing.stderr
    work.commit("fast", **{"shipyard.toml": ""})
    work.push()
    nothing = sy(host, "rollback", "mysite", check=False)
    assert nothing.returncode == 1 and "nothing to roll back to" in nothing.stderr
    assert not (host.dir / "deploys" / "2.log").exists()  # refused before claiming a deploy


def test_rollback_refuses_bad_names_and_unusable_releases(three):
    host, _, releases = three
    live = host.live()
    for name in ("../../etc", "../releases/" + releases[0], "/etc/passwd", "-rf"):
        bad = sy(host, "rollback", "mysite", "--", name, check=False)
        assert bad.returncode == 1 and "invalid release name" in bad.stderr, name
    unknown = sy(host, "rollback", "mysite", "20200101T000000Z-abcdef0", check=False)
    assert unknown.returncode == 1 and "no release '20200101T000000Z-abcdef0'" in unknown.stderr

    edit_manifest(host, releases[1], state="failed")
    failed = sy(host, "rollback", "mysite", releases[1], check=False)
    assert failed.returncode == 1
    assert f"cannot roll back: release {releases[1]} is failed, not a good release" in failed.stderr
    # the automatic choice skips it too
    assert json.loads(sy(host, "status", "mysite", "--json").stdout)["rollback_to"] == releases[0]

    (host.dir / "releases" / releases[0] / ".shipyard" / "release.json").unlink()
    os.rename(host.dir / "releases" / releases[0], host.dir / "gone")
    deleted = sy(host, "rollback", "mysite", releases[0], check=False)
    assert deleted.returncode == 1
    assert f"release {releases[0]} is no longer on disk (pruned or deleted)" in deleted.stderr
    assert "shipyard deploy mysite " in deleted.stderr
    nothing = sy(host, "rollback", "mysite", check=False)
    assert "nothing to roll back to" in nothing.stderr
    assert host.live() == live

    for command in ("status", "releases", "rollback", "log", "deploy", "history"):
        missing = sy(host, command, "nosuchapp", check=False)
        assert missing.returncode == 1, command
        assert f"no shipyard app at {host.root / 'nosuchapp'}" in missing.stderr
    bad_app = sy(host, "status", "../mysite", check=False)
    assert bad_app.returncode == 1 and "invalid app name" in bad_app.stderr


MIGRATION = """from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("polls", "{previous}")]
    operations = [migrations.AddField("question", "{field}", models.IntegerField(default=0))]
"""


def test_rollback_warns_about_migrations_it_leaves_applied(three):
    host, work, _ = three
    work.commit(
        "two migrations",
        **{
            "polls/migrations/0003_votes.py": MIGRATION.format(
                previous="0002_choice", field="votes"
            ),
            "polls/migrations/0004_closed.py": MIGRATION.format(
                previous="0003_votes", field="closed"
            ),
        },
    )
    pushed = work.push()
    assert "polls.0003_votes" in pushed.out and "polls.0004_closed" in pushed.out
    out = sy(host, "rollback", "mysite").stdout
    warning = out.splitlines()[1]
    assert warning.startswith("  ! 2 migration(s) applied since")
    assert "polls.0003_votes, polls.0004_closed" in warning
    assert "the older code runs against the newer schema" in warning
    # only what is true: no "-o skip-migrate" the user never gave (it said so before)
    assert "- migrate           -    a rollback runs no migrations" in out
    assert "skip-migrate" not in out


def test_rollback_runs_the_release_command_only_when_asked(three):
    """A rollback ran the Procfile's `release:` (often a migrate) before; now only if asked."""
    host, work, _ = three
    procfile = (work.path / "Procfile").read_text()
    release = "release: touch $SHIPYARD_SHARED/release-ran"
    with_release = work.commit("release command", **{"Procfile": procfile + release + "\n"})
    work.push()
    v5 = work.commit("v5", **{"mysite/version.py": 'GREETING = "v5"\n'})
    work.push()
    marker = host.dir / "shared" / "release-ran"
    marker.unlink()
    out = sy(host, "rollback", "mysite").stdout
    line = next(ln for ln in out.splitlines() if " release " in ln)
    assert "- release" in line and "a rollback runs no `touch" in line
    assert "--run-release" in line and not marker.exists()
    sy(host, "deploy", "mysite", v5[:12])
    asked = sy(host, "rollback", "mysite", with_release[:8], "--run-release").stdout
    assert "✓ release" in asked and marker.exists()
    assert history(host)[-1]["options"] == {"run-release": ""}


def test_rollback_target_survives_pruning_after_a_pin(host: Host, work: Work):
    """keep counts releases by when they were last live, so a pinned old release is kept."""
    host.set_host_config(keep=2)
    work.commit("fast", **{"shipyard.toml": ""})
    work.git("tag", "v1")
    work.push("main", "v1")
    first = host.live().name
    work.commit("v2", **{"mysite/version.py": 'GREETING = "v2"\n'})
    work.push()
    second = host.live().name
    work.push("-f", "v1:main")  # pin v1 again: reused, and now the most recently live
    assert host.live().name == first
    work.commit("v3", **{"mysite/version.py": 'GREETING = "v3"\n'})
    work.push("-f", "main")
    assert first in host.releases() and second not in host.releases()
    assert len(host.releases()) == 2
    sy(host, "rollback", "mysite")
    assert host.live().name == first


# --- deploy ------------------------------------------------------------------


def test_deploy_command_redeploys_a_ref_in_the_foreground(three):
    host, work, releases = three
    again = sy(host, "deploy", "mysite")
    assert again.stdout.startswith("shipyard ▸ deploy #4: main")
    assert f"reused releases/{releases[2]}" in again.stdout
    pinned = sy(host, "deploy", "mysite", "v1", "-o", "message=back to v1")
    assert "(v1) by" in pinned.stdout.splitlines()[0] and ": back to v1" in pinned.stdout
    assert host.live().name == releases[0]
    v1 = json.loads(manifest_file(host, releases[0]).read_text())["sha"]
    assert host.branch("refs/heads/main") == v1
    entry = history(host)[-1]
    assert entry["kind"] == "deploy" and entry["tag"] == "v1"
    assert entry["options"] == {"message": "back to v1"}
    assert (host.dir / "deploys" / "5.log").read_text() == pinned.stdout

    sha2 = json.loads(manifest_file(host, releases[1]).read_text())["sha"]
    by_sha = sy(host, "deploy", "mysite", sha2[:10])
    assert "(v2)" in by_sha.stdout.splitlines()[0] and host.live().name == releases[1]

    for ref, message in (
        ("nosuch", "no branch, tag or commit 'nosuch' in mysite's repo"),
        ("0123456789abcdef", "no branch, tag or commit '0123456789abcdef'"),
        ("main^{tree}", "main^{tree} is a tree, not a commit"),
        ("--upload-pack=x", "invalid ref"),
        ("main..v1", "invalid ref"),
    ):
        bad = sy(host, "deploy", "mysite", "--", ref, check=False)
        assert bad.returncode == 1 and message in bad.stderr, (ref, bad.stderr)
    unknown = sy(host, "deploy", "mysite", "-o", "bogus", check=False)
    assert unknown.returncode == 1 and "unknown push option 'bogus'" in unknown.stderr
    assert len(history(host)) == 6 and host.live().name == releases[1]


def test_deploy_command_waits_for_a_running_push(host: Host, work: Work):
    work.commit("slow", **{"shipyard.toml": 'build = ["sleep 2"]\n'})
    push = subprocess.Popen(
        ["git", "push", "production", "main"],
        cwd=work.path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: holder(host).get("deploy") == 1, what="the push to take the lock")
    waiting = sy(host, "deploy", "mysite")
    assert push.wait(timeout=120) == 0
    assert "… waiting for deploy #1" in waiting.stdout
    assert "shipyard ▸ live:" in waiting.stdout
    assert [e["deploy"] for e in history(host)] == [1, 2]


# --- interrupted deploys -----------------------------------------------------


def test_a_killed_deploy_shows_as_interrupted_and_can_be_retried(host: Host, work: Work):
    work.commit("fast", **{"shipyard.toml": ""})
    work.push()
    live = host.live()
    sha = work.commit("slow", **{"shipyard.toml": 'build = ["sleep 5"]\n'})
    push = subprocess.Popen(
        ["git", "push", "production", "main"],
        cwd=work.path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    wait_for(lambda: holder(host).get("deploy") == 2, what="deploy #2 to take the lock")
    running = json.loads(sy(host, "status", "mysite", "--json").stdout)
    assert running["deploying"]["deploy"] == 2 and running["last"]["outcome"] == "running"
    log = host.dir / "deploys" / "2.log"
    wait_for(lambda: "✓ checkout" in log.read_text(), what="deploy #2 in its slow build")
    os.kill(holder(host)["pid"], signal.SIGKILL)
    out = push.communicate(timeout=60)[0]
    assert "deploy #2 stopped without an outcome" in out

    status = sy(host, "status", "mysite").stdout
    assert f"mysite: live {live.name[-7:]}" in status
    assert "last       #2 interrupted" in status and "deploying  no" in status
    data = json.loads(sy(host, "status", "mysite", "--json").stdout)
    assert data["live"]["release"] == live.name and data["live"]["state"] == "good"
    assert data["last"]["outcome"] == "interrupted" and data["last"]["sha"] == sha
    hist = sy(host, "history", "mysite").stdout.splitlines()
    assert hist[1].split()[0] == "2" and "interrupted" in hist[1]
    releases = json.loads(sy(host, "releases", "mysite", "--json").stdout)["releases"]
    assert [r["state"] for r in releases] == ["good", "interrupted"]
    assert "interrupted: it stopped without an outcome" in sy(host, "log", "mysite").stdout
    assert "nothing to roll back to" in sy(host, "rollback", "mysite", check=False).stderr

    retry = sy(host, "deploy", "mysite")  # the branch still points at the interrupted commit
    assert f"shipyard ▸ live: {sha[:7]}" in retry.stdout
    assert host.live().name.endswith(sha[:7])


def test_foreground_deploy_killed_at_the_switch_shows_as_interrupted(host: Host, work: Work):
    """Killed after `current` moved: the live release is flagged, never reported as good."""
    work.commit("fast", **{"shipyard.toml": ""})
    work.push()
    work.commit("two", **{"mysite/version.py": 'GREETING = "two"\n', "shipyard.toml": ""})
    work.git("push", "-q", "production", "main:refs/heads/staging")  # in the repo, not deployed
    proc = subprocess.Popen(
        [str(BIN / "python"), "-c", KILL_AFTER_SWITCH, str(host.root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert proc.wait(timeout=60) == -signal.SIGKILL
    data = json.loads(sy(host, "status", "mysite", "--json").stdout)
    assert data["live"]["state"] == "interrupted" and data["live"]["deploy"] == 2
    assert data["last"]["outcome"] == "interrupted"
    assert "[INTERRUPTED]" in sy(host, "status", "mysite").stdout.splitlines()[0]


KILL_AFTER_SWITCH = """
import os, signal, sys
from pathlib import Path
from shipyard import context, deploy, operate
from shipyard.app import App

real = deploy.SWITCH.run
def switch_then_die(d):
    real(d)
    os.kill(os.getpid(), signal.SIGKILL)
at = deploy.PUSH.index(deploy.SWITCH)
deploy.PUSH[at] = context.Phase("switch", switch_then_die, deploy.SWITCH.undo)
app = App.at("mysite", Path(sys.argv[1]))
sha, tag = operate.resolve(app, "staging")
operate.run_foreground(app, sha, tag, "deploy", {})
"""


def test_rollback_to_a_failed_deploy_is_refused(host: Host, work: Work):
    work.commit("fast", **{"shipyard.toml": ""})
    work.push()
    live = host.live()
    bad = work.commit("bad", **{"shipyard.toml": 'build = ["exit 3"]\n'})
    assert work.push(check=False).returncode == 1  # a failed deploy fails the push now
    failed = history(host)[-1]
    assert failed["outcome"] == "failed" and failed["release"].endswith(bad[:7])
    for name in (failed["release"], bad[:7]):
        refused = sy(host, "rollback", "mysite", name, check=False)
        assert refused.returncode == 1
        assert f"release {failed['release']} never went live (deploy #2 failed)" in refused.stderr
        assert f"shipyard deploy mysite {bad[:12]}" in refused.stderr
    assert host.live() == live
