"""The push tells the truth: `git push`'s exit status, git's own ref lines and the pusher's
tracking ref match what is live, with the real git client over file transport.

(tests/e2e/test_ssh.py checks the same over the real sshd.) One deployed app for the
module; every case leaves it serving a good release, the clone reset to the host's tip.
"""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import time

import pytest
from conftest import Host, Work, make_host, make_work, shipyard
from httpload import fetch

from shipyard import fault_injection

BOOM = """from django.db import migrations


def boom(apps, schema_editor):
    raise RuntimeError("migration 0003 cannot run here")


class Migration(migrations.Migration):
    dependencies = [("polls", "0002_choice")]
    operations = [migrations.RunPython(boom)]
"""
NO_BUILD = 'shared = [".env", "media/"]\n\n[health]\npath = "/healthz"\n'


def history(host: Host) -> list[dict]:
    path = host.dir / "deploys" / "deploys.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def greeting(host: Host) -> str:
    status, body = fetch(host.port)
    assert status == 200, body
    return body.strip()


def greet(work: Work, text: str) -> str:
    return work.commit(text, **{"mysite/version.py": f'GREETING = "{text}"\n'})


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    base = tmp_path_factory.mktemp("outcome")
    host = make_host(base / "apps")
    work = make_work(base / "work", host)
    work.commit("no build step", **{"shipyard.toml": NO_BUILD})
    try:
        work.push()
        yield host, work, base
    finally:
        host.stop_processes()


@pytest.fixture
def site(deployed):
    """The shared app; afterwards the clone is back on what the host has."""
    host, work, _ = deployed
    yield deployed
    fault_injection.disarm(host.dir / "run")
    work.git("reset", "-q", "--hard", host.branch())


def rejected(result, number: int, phase: str) -> None:
    """git's own line for a deploy that failed, and a non-zero exit."""
    assert result.returncode != 0, result.out
    assert re.search(
        rf"! \[remote rejected\] main -> main \(deploy #{number} failed at {phase}: ", result.out
    ), result.out


def assert_unmoved(host: Host, work: Work, live_sha: str, serving: str) -> None:
    """Nothing of the failed push is live, the server's branch and the tracking ref included."""
    assert host.branch() == live_sha
    assert work.tracking() == live_sha
    assert greeting(host) == serving


def test_a_live_deploy_exits_0_and_moves_the_tracking_ref(site):
    host, work, _ = site
    old = host.branch()
    sha = greet(work, "live one")
    result = work.push()
    assert result.returncode == 0
    assert f"{old[:7]}..{sha[:7]}  main -> main" in result.out
    assert work.tracking() == sha == host.branch()
    assert greeting(host) == "live one"
    assert f"shipyard ▸ live: {sha[:7]}" in result.out


@pytest.mark.parametrize("phase", ["venv", "migrate", "verify"])
def test_a_failed_deploy_fails_the_push(site, phase):
    """Any phase, the health check with its switch-back included: exit 1, ref unmoved."""
    host, work, _ = site
    live_sha, serving = host.branch(), greeting(host)
    n = len(history(host)) + 1
    break_at(work, phase)
    result = work.push(check=False)
    # the new web's health check is part of restart (it is switched back from there)
    rejected(result, n, "(restart|verify)" if phase == "verify" else phase)
    assert "migration 0003 cannot run here" in result.out or phase != "migrate"
    assert_unmoved(host, work, live_sha, serving)
    entry = history(host)[-1]
    assert entry["deploy"] == n and entry["outcome"] == "failed"

    work.git("reset", "-q", "--hard", live_sha)  # the next push is not confused by the refs
    fixed = greet(work, f"after a failed {phase}")
    again = work.push()
    assert again.returncode == 0 and work.tracking() == fixed == host.branch()
    assert greeting(host) == f"after a failed {phase}"


def test_a_superseded_push_says_so_and_fails(site):
    host, work, base = site
    n = len(history(host)) + 1
    greet(work, "first")
    fault_injection.arm(host.dir / "run", {"at": "checkout", "action": "pause", "deploy": n})
    first = background(work)
    wait_paused(host)
    other = clone(base / "other", host)
    b = greet(other, "queued")
    queued = background(other)
    wait(lambda: (host.dir / "deploys" / f"{n + 1}.log").is_file() and host.branch() == b)
    c = other.commit("newer", **{"mysite/c.py": "C = 1\n"})
    newer = background(other)
    wait(lambda: host.branch() == c)
    (host.dir / "run" / fault_injection.PAUSED).unlink()
    out_first, out_b, out_c = (p.communicate(timeout=180)[0] for p in (first, queued, newer))
    assert first.returncode == 0, out_first
    assert queued.returncode != 0, out_b
    assert re.search(r"! \[remote rejected\] \S+ -> main \(deploy #\d+ superseded: ", out_b)
    assert f"to {c[:7]} before this one started" in out_b and "push again" in out_b
    assert newer.returncode == 0, out_c
    assert host.branch() == c and greeting(host) == "queued"
    outcomes = {e["sha"]: e["outcome"] for e in history(host)}
    assert outcomes[b] == "superseded" and outcomes[c] == "live"
    work.git("fetch", "-q", "production")


def test_client_killed_mid_deploy(site):
    """The deploy goes on detached; its log replays it; the next push is fine."""
    host, work, _ = site
    n = len(history(host)) + 1
    sha = greet(work, "client gone")
    before = work.tracking()
    fault_injection.arm(host.dir / "run", {"at": "switch", "action": "pause", "deploy": n})
    client = background(work)
    wait_paused(host)
    os.killpg(client.pid, signal.SIGKILL)
    client.wait(timeout=30)
    (host.dir / "run" / fault_injection.PAUSED).unlink()
    wait(lambda: any(e["deploy"] == n for e in history(host)))
    assert history(host)[-1]["outcome"] == "live" and greeting(host) == "client gone"
    replay = shipyard("--root", host.root, "log", "mysite", str(n)).stdout
    assert f"shipyard ▸ live: {sha[:7]}" in replay
    assert work.tracking() == before  # the client never heard the outcome
    after = greet(work, "after the killed client")
    again = work.push()
    assert again.returncode == 0 and work.tracking() == after == host.branch()
    assert greeting(host) == "after the killed client"


def test_several_refs_report_each_their_own_outcome(site):
    host, work, _ = site
    live_sha = host.branch()
    n = len(history(host)) + 1
    work.git("branch", "-f", "feature")
    work.git("tag", "-f", "v-ok")
    work.commit("bad", **{"polls/migrations/0003_boom.py": BOOM})
    result = work.push("main", "feature", "v-ok", check=False)
    rejected(result, n, "migrate")
    assert "* [new branch]      feature -> feature" in result.out
    assert "* [new tag]         v-ok -> v-ok" in result.out
    assert "shipyard ▸ stored tag v-ok" in result.out
    assert "stored refs/heads/feature (not deployed" in result.out
    assert host.branch() == live_sha and work.tracking() == live_sha
    assert host.branch("refs/heads/feature") and host.branch("refs/tags/v-ok")


def test_no_wait_returns_at_once(site):
    host, work, _ = site
    n = len(history(host)) + 1
    sha = greet(work, "not waited for")
    result = work.push("-o", "no-wait", "main")
    assert f"deploy #{n} started; the push does not wait" in result.out
    assert f"shipyard log mysite {n} --follow" in result.out
    wait(lambda: any(e["deploy"] == n for e in history(host)))
    assert history(host)[-1]["outcome"] == "live" and host.branch() == sha

    config = host.dir / "shipyard.toml"
    saved = config.read_text()
    config.write_text("push_wait = false\n" + saved)
    try:
        greet(work, "host says no-wait")
        assert "the push does not wait" in work.push().out
        wait(lambda: any(e["deploy"] == n + 1 for e in history(host)))
        waited = greet(work, "waited for after all")
        out = work.push("-o", "wait", "main").out
        assert f"shipyard ▸ live: {waited[:7]}" in out
    finally:
        config.write_text(saved)


@pytest.mark.parametrize(
    ("option", "said"),
    [
        ("no-wait=yes", "push option no-wait takes no value"),
        ("skip-migrate=false", "push option skip-migrate takes no value"),
        ("wait", "wait and no-wait contradict"),
        ("nowait", "unknown push option 'nowait'"),
    ],
)
def test_impossible_push_options_refused_before_anything_moves(site, option, said):
    host, work, _ = site
    sha, logs = host.branch(), len(list((host.dir / "deploys").glob("*.log")))
    greet(work, "never deployed")
    extra = ["-o", "no-wait"] if option == "wait" else []
    result = work.push("-o", option, *extra, "main", check=False)
    assert result.returncode != 0 and "[remote rejected] main -> main" in result.out
    assert said in result.out
    assert host.branch() == sha == work.tracking()
    assert len(list((host.dir / "deploys").glob("*.log"))) == logs


def test_no_wait_with_a_rollback_is_refused(site):
    host, _, _ = site
    live = host.live()
    for command in (["rollback", "mysite"], ["deploy", "mysite"]):
        result = shipyard("--root", host.root, *command, "-o", "no-wait", check=False)
        assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
        assert "-o no-wait is for `git push`" in result.stderr
    assert host.live() == live


def test_a_failed_steps_whole_output_is_in_the_log_and_its_tail_in_the_push(site):
    host, work, _ = site
    n = len(history(host)) + 1
    step = "python -c \\\"[print(f'line {i}') for i in range(1, 101)]\\\"; exit 4"
    work.commit(
        "noisy", **{"shipyard.toml": NO_BUILD.replace("shared", f'build = ["{step}"]\nshared')}
    )
    result = work.push(check=False)
    rejected(result, n, "build")
    shown = [ln for ln in result.out.splitlines() if "│ line " in ln]
    assert [ln.split("│ ")[1].strip() for ln in shown] == [f"line {i}" for i in range(81, 101)]
    assert f"80 earlier line(s) of this output are in the log: `shipyard log mysite {n}`" in (
        result.out
    )
    log = (host.dir / "deploys" / f"{n}.log").read_text()
    assert [ln.split("│ ")[1] for ln in log.splitlines() if "│ line " in ln] == [
        f"line {i}" for i in range(1, 101)
    ]
    replay = shipyard("--root", host.root, "log", "mysite", str(n)).stdout
    assert "│ line 1\n" in replay and "│ line 100\n" in replay


def test_shipyard_log_prints_colour_only_onto_a_terminal(site):
    host, work, _ = site
    n = len(history(host)) + 1
    greet(work, "in colour")
    work.push("-o", "color=always", "main")
    assert "\033[32m" in (host.dir / "deploys" / f"{n}.log").read_text()
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    piped = shipyard("--root", host.root, "log", "mysite", str(n), env=env).stdout
    assert "\033[" not in piped and "✓ checkout" in piped
    assert "\033[32m" in on_a_tty(host, n, env)
    assert "\033[" not in on_a_tty(host, n, {**env, "NO_COLOR": "1"})


# --- helpers -----------------------------------------------------------------


def break_at(work: Work, phase: str) -> str:
    """Commit a change whose deploy fails at ``phase`` (verify: the new web is unhealthy)."""
    if phase == "venv":
        reqs = (work.path / "requirements.txt").read_text()
        return work.commit(
            "bad", **{"requirements.txt": reqs + "shipyard-no-such-package-xyz==1.0\n"}
        )
    if phase == "migrate":
        return work.commit("bad", **{"polls/migrations/0003_boom.py": BOOM})
    views = (work.path / "polls" / "views.py").read_text()
    return work.commit(
        "unhealthy",
        **{
            "polls/views.py": views.replace(
                'return JsonResponse({"ok": True})',
                'return JsonResponse({"ok": False}, status=503)',
            ),
            "shipyard.toml": (work.path / "shipyard.toml").read_text()
            + "timeout = 20\nretries = 2\n",
        },
    )


def on_a_tty(host: Host, number: int, env: dict) -> str:
    """`shipyard log` with its output on a terminal (a pty), as an operator reads it."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        ["shipyard", "--root", str(host.root), "log", "mysite", str(number)],
        stdout=follower,
        stderr=subprocess.STDOUT,
        env=env,
    )
    os.close(follower)
    out = b""
    try:
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the command ended and its terminal is drained
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(leader)
    assert proc.wait(timeout=60) == 0
    return out.decode(errors="replace")


def background(work: Work, *args: str) -> subprocess.Popen:
    return work.push_in_background(*args)


def clone(path, host: Host) -> Work:
    work = Work(path) if path.exists() else make_work(path, host)
    work.git("fetch", "-q", "production")
    work.git("reset", "-q", "--hard", "production/main")
    return work


def wait(predicate, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def wait_paused(host: Host) -> None:
    wait(lambda: (host.dir / "run" / fault_injection.PAUSED).exists())
