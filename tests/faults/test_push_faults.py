"""Faults around the deploy: the pusher goes away, pushes race, supervisord is down,
`current` is deleted by hand. One deployed app for the module."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import faultlib
import pytest
from conftest import make_work
from faultlib import (
    app_of,
    arm,
    background_push,
    check_invariants,
    entries,
    kill_client,
    last_line,
    paused,
    phase_line,
    resume,
    settled,
    sy,
)

from shipyard import process_views
from shipyard import programs as prov

observe = faultlib.observe


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    base = tmp_path_factory.mktemp("push")
    with faultlib.deployed(base) as (host, work):
        yield host, work, base


def said(line: str) -> str:
    """What a phase line says after its mark, name and time."""
    return re.sub(r"^.*[✓✗] \S+\s+\d+\.\d+s\s+", "", line).strip()


def greet(work, text: str) -> str:
    return work.commit(text, **{"mysite/version.py": f'GREETING = "{text}"\n'})


CLIENT_PHASES = ["checkout", "venv", "migrate", "switch", "restart", "verify", "finish"]


@pytest.mark.parametrize("phase", CLIENT_PHASES)
def test_client_killed_mid_push(site, observe, phase):
    """Ctrl-C or a dropped connection at any phase never stops the deploy half-way."""
    host, work, _ = site
    check_invariants(host)
    row = observe("fault", f"pushing client (git, receive-pack, hooks) SIGKILLed during {phase}")
    sha = greet(work, f"client gone at {phase}")
    arm(host, {"at": phase, "action": "pause"})
    client = background_push(work)
    paused(host)
    kill_client(client)
    resume(host)
    settled(host)
    entry = entries(host)[-1]
    assert entry["sha"] == sha and entry["outcome"] == "live", entry
    live = check_invariants(host)
    assert live.endswith(sha[:7])
    log = (host.dir / "deploys" / f"{entry['deploy']}.log").read_text()
    assert f"shipyard ▸ live: {sha[:7]}" in log
    row["outcome"] = f"deploy went on detached: #{entry['deploy']} live, its log complete"


def test_client_killed_after_the_branch_moved(site, observe):
    """Cut off between proc-receive moving the branch and starting the deploy."""
    host, work, _ = site
    before = check_invariants(host)
    row = observe(
        "fault",
        "pushing client SIGKILLed after proc-receive moved the branch, before it started a deploy",
    )
    n = len(entries(host))
    sha = greet(work, "cut off")
    arm(host, {"at": "receive", "when": "end", "action": "pause"})
    client = background_push(work)
    paused(host)
    kill_client(client)
    resume(host)
    time.sleep(0.5)
    assert host.branch() == sha and len(entries(host)) == n  # moved, never deployed
    status = sy(host, "status", "mysite").stdout
    assert f"! branch main is at {sha[:7]}, not what is live" in status
    assert check_invariants(host) == before
    again = work.push(check=False)
    assert "Everything up-to-date" in again.out  # git has nothing to send
    retry = sy(host, "deploy", "mysite").stdout
    assert f"shipyard ▸ live: {sha[:7]}" in retry
    assert check_invariants(host).endswith(sha[:7])
    row["outcome"] = (
        "branch moved, nothing deployed, `current` untouched; `shipyard status` says "
        f"`branch main is at {sha[:7]}, not what is live`; `shipyard deploy` deploys it"
    )


def test_worker_and_client_killed_after_the_switch(site, observe):
    """Nobody left to recover at once: status tells the truth until the next deploy does."""
    host, work, _ = site
    before = check_invariants(host)
    row = observe("fault", "worker SIGKILLed just after the switch, and the pushing client with it")
    n = len(entries(host)) + 1
    sha = greet(work, "orphaned switch")
    arm(host, {"at": "switch", "when": "end", "action": "pause"})
    client = background_push(work)
    who = paused(host)
    kill_client(client)
    os.kill(who["pid"], signal.SIGKILL)
    resume(host)
    data = json.loads(sy(host, "status", "mysite", "--json").stdout)
    assert data["live"]["state"] == "interrupted" and data["live"]["deploy"] == n
    assert data["last"]["outcome"] == "interrupted"
    text = sy(host, "status", "mysite").stdout
    assert "[INTERRUPTED]" in text.splitlines()[0] and "shipyard recover mysite" in text
    assert faultlib.fetch(host.port)[1].strip() != "orphaned switch"  # old processes serve
    after = greet(work, "next push after an orphaned switch")
    out = work.push().out
    assert f"deploy #{n} ({sha[:7]} by " in out and "completing it" in out
    assert last_line(out).startswith(f"shipyard ▸ live: {after[:7]}"), out
    assert check_invariants(host).endswith(after[:7])
    recovered = next(e for e in entries(host) if e["deploy"] == n)
    assert recovered["outcome"] == "live" and recovered["recovered"]["by"] == f"deploy #{n + 1}"
    row["outcome"] = (
        f"until a deploy ran, `status` said `[INTERRUPTED]` for #{n} (not live, not good) with "
        f"`shipyard recover`, while {before[-7:]}'s processes served; the next push completed "
        f"#{n} first (history `live (recovered)`), then deployed itself"
    )


def test_queued_deploy_killed_while_waiting(site, observe):
    """A push waiting for the lock is killed: recorded, and the running deploy is unaffected."""
    host, work, base = site
    check_invariants(host)
    row = observe("fault", "SIGKILL of a deploy waiting for the lock behind another")
    n = len(entries(host)) + 1
    first = greet(work, "first of two")
    arm(host, {"at": "build", "action": "pause", "deploy": n})
    a = background_push(work)
    paused(host)
    other = base / "queued"
    clone = faultlib.Work(other) if other.exists() else make_work(other, host)
    clone.git("fetch", "-q", "production")
    clone.git("reset", "-q", "--hard", first)
    second = greet(clone, "second, killed while queued")
    b = background_push(clone)
    worker = faultlib.wait_for(lambda: worker_of(host, n + 1), 60, "the second worker")
    faultlib.wait_for(
        lambda: "waiting for deploy" in (host.dir / "deploys" / f"{n + 1}.log").read_text(),
        60,
        "the second deploy to wait",
    )
    os.kill(worker, signal.SIGKILL)
    out_b = b.communicate(timeout=120)[0]
    resume(host)
    out_a = a.communicate(timeout=180)[0]
    assert f"deploy #{n + 1} stopped without an outcome" in out_b
    assert f"deploy #{n + 1} ended before its first phase; recorded as interrupted" in out_b
    assert last_line(out_a).startswith(f"shipyard ▸ live: {first[:7]}"), out_a
    assert check_invariants(host).endswith(first[:7])
    killed = next(e for e in entries(host) if e["deploy"] == n + 1)
    assert killed["outcome"] == "interrupted" and killed["sha"] == second
    status = sy(host, "status", "mysite").stdout
    assert f"last       #{n + 1} interrupted at start" in status
    assert "retry: shipyard deploy mysite" in status
    retry = sy(host, "deploy", "mysite").stdout
    assert f"shipyard ▸ live: {second[:7]}" in retry
    work.git("fetch", "-q", "production")
    work.git("reset", "-q", "--hard", "production/main")
    row["outcome"] = (
        f"the running deploy went live; #{n + 1} recorded `interrupted at start` by its push's "
        "recovery; `status` says so with `retry: shipyard deploy`, which deployed it"
    )


def worker_of(host, number: int) -> int | None:
    """The pid of the worker running deploy ``number``: the session leader writing its log."""
    log = os.path.realpath(host.dir / "deploys" / f"{number}.log")
    for pid in map(int, filter(str.isdigit, os.listdir("/proc"))):
        try:
            if os.readlink(f"/proc/{pid}/fd/1") == log and os.getsid(pid) == pid:
                return pid
        except OSError:
            continue
    return None


def racers(host, base) -> list:
    clones = []
    for i in range(5):
        path = base / f"racer{i}"
        clone = faultlib.Work(path) if path.exists() else make_work(path, host)
        clone.git("fetch", "-q", "production")
        clone.git("reset", "-q", "--hard", "production/main")
        clones.append(clone)
    return clones


def test_five_pushes_race_at_once(site, observe):
    """Five pushes of the same tip at the same instant: git's compare-and-swap picks one."""
    host, work, base = site
    check_invariants(host)
    row = observe("fault", "5 pushes from 5 clones at once, each a new commit on the same tip")
    clones = racers(host, base)
    shas = [greet(c, f"racer {i}") for i, c in enumerate(clones)]
    n = len(entries(host))
    pushes = [background_push(c, "-f", "main") for c in clones]
    outs = [p.communicate(timeout=300)[0] for p in pushes]
    accepted = [s for s, p in zip(shas, pushes, strict=True) if p.returncode == 0]
    refused = [o for p, o in zip(pushes, outs, strict=True) if p.returncode]
    for out in refused:
        assert "push again" in out or "fetch first" in out or "stale info" in out, out
    settled(host)
    new = entries(host)[n:]
    assert sorted(e["sha"] for e in new) == sorted(accepted)  # every deploy recorded
    tip = host.branch()
    assert tip in accepted
    assert check_invariants(host).endswith(tip[:7])  # the newest push is live
    outcomes = sorted(e["outcome"] for e in new)
    assert set(outcomes) <= {"live", "superseded"}
    row["outcome"] = (
        f"{len(accepted)} accepted, {len(refused)} refused with `push again` (the branch "
        f"moved under them; nothing claimed or recorded for them); history: "
        f"{', '.join(outcomes)}; live = the branch tip"
    )
    work.git("fetch", "-q", "production")
    work.git("reset", "-q", "--hard", "production/main")


def test_five_pushes_race_while_deploying(site, observe):
    """Five forced pushes in quick succession while the first deploy is still running."""
    host, work, base = site
    check_invariants(host)
    row = observe("fault", "5 forced pushes one after another while the first one deploys")
    clones = racers(host, base)
    shas = [greet(c, f"queued racer {i}") for i, c in enumerate(clones)]
    n = len(entries(host)) + 1
    arm(host, {"at": "build", "action": "pause", "deploy": n})
    pushes = [background_push(clones[0], "-f", "main")]
    paused(host)  # the first deploy holds the lock, past its check of the branch
    for clone, sha in zip(clones[1:], shas[1:], strict=True):
        pushes.append(background_push(clone, "-f", "main"))
        faultlib.wait_for(lambda s=sha: host.branch() == s, 60, "the branch to move")
    faultlib.wait_for(
        lambda: all((host.dir / "deploys" / f"{n + i}.log").exists() for i in range(5)),
        60,
        "every push to claim its deploy",
    )
    resume(host)
    outs = [p.communicate(timeout=300)[0] for p in pushes]
    # the running one and the newest went live; the ones in between (all 0 before) deployed
    # nothing, and their pushes say so
    assert pushes[0].returncode == 0 and pushes[-1].returncode == 0, outs
    for push, out in zip(pushes[1:-1], outs[1:-1], strict=True):
        assert push.returncode != 0 and "[remote rejected]" in out and "superseded: " in out, out
    settled(host)
    new = {e["deploy"]: e for e in entries(host) if e["deploy"] >= n}
    assert sorted(new) == list(range(n, n + 5))  # every deploy recorded
    assert new[n]["outcome"] == "live"  # the one running when the others came
    newest = next(e for e in new.values() if e["sha"] == shas[-1])
    assert newest["outcome"] == "live" and check_invariants(host).endswith(shas[-1][:7])
    others = [e["outcome"] for d, e in sorted(new.items()) if e["sha"] not in (shas[0], shas[-1])]
    assert set(others) == {"superseded"}, new
    row["outcome"] = (
        f"all 5 accepted and recorded: #{n} (running) live, {len(others)} superseded "
        "(`superseded: main is now …`, their pushes rejected with `deploy #N superseded: …`), "
        "the newest live; `current` = the last push"
    )
    work.git("fetch", "-q", "production")
    work.git("reset", "-q", "--hard", "production/main")


def test_supervisord_stopped_at_restart(site, observe):
    host, work, _ = site
    check_invariants(host)
    row = observe("fault", "supervisord stopped (cleanly) while the deploy waits to restart")
    sha = greet(work, "supervisord was stopped")
    arm(host, {"at": "restart", "action": "pause"})
    client = background_push(work)
    paused(host)
    sy(host, "processes", "mysite", "--stop")
    resume(host)
    out = client.communicate(timeout=180)[0]
    assert last_line(out).startswith(f"shipyard ▸ live: {sha[:7]}"), out
    assert check_invariants(host).endswith(sha[:7])
    row["outcome"] = f"restart started it again: `{said(phase_line(out, 'restart'))}`"


def test_supervisord_killed_at_restart(site, observe):
    host, work, _ = site
    check_invariants(host)
    row = observe(
        "fault", "supervisord SIGKILLed while the deploy waits to restart (its children orphaned)"
    )
    sha = greet(work, "supervisord was killed")
    arm(host, {"at": "restart", "action": "pause"})
    client = background_push(work)
    paused(host)
    pid = int((host.dir / "run" / "supervisord.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    resume(host)
    out = client.communicate(timeout=180)[0]
    row["outcome"] = f"restart: `{said(phase_line(out, 'restart'))}`; `{last_line(out)}`"
    assert last_line(out).startswith(f"shipyard ▸ live: {sha[:7]}"), out
    assert check_invariants(host).endswith(sha[:7])
    orphans = [
        p for p in faultlib.processes_under(host.dir / "releases") if not supervised(host, p)
    ]
    assert not orphans, f"processes of the killed supervisord still run: {orphans}"
    row["outcome"] += "; no orphan left"


def supervised(host, pid: int) -> bool:
    """Is ``pid`` (or an ancestor) a child of the app's supervisord?"""
    sv = int((host.dir / "run" / "supervisord.pid").read_text())
    while pid > 1:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return False
        pid = int(stat[1])
        if pid == sv:
            return True
    return False


def test_current_deleted_by_hand(site, observe):
    host, work, _ = site
    before = check_invariants(host)
    row = observe("fault", "`current` deleted by hand, then a push")
    (host.dir / "current").unlink()
    status = sy(host, "status", "mysite").stdout
    assert "mysite: nothing is live" in status
    assert "! current is missing (deleted by hand?)" in status
    assert f"! last live: releases/{before}" in status
    sha = greet(work, "after current was deleted")
    out = work.push().out
    assert last_line(out).startswith(f"shipyard ▸ live: {sha[:7]}"), out
    assert check_invariants(host).endswith(sha[:7])
    row["outcome"] = (
        "`status`: `nothing is live` + `current is missing (deleted by hand?)`, the last live "
        "release and the fix; the next push deployed normally and replaced the old processes"
    )


def test_current_dangling(site, observe):
    host, work, _ = site
    check_invariants(host)
    row = observe("fault", "`current` pointing at a release directory that was deleted")
    link = host.dir / "current"
    link.unlink()
    link.symlink_to("releases/20200101T000000Z-deadbee")
    status = sy(host, "status", "mysite").stdout
    assert "current points at releases/20200101T000000Z-deadbee, which is gone" in status
    sha = greet(work, "after a dangling current")
    out = work.push().out
    assert last_line(out).startswith(f"shipyard ▸ live: {sha[:7]}"), out
    assert check_invariants(host).endswith(sha[:7])
    row["outcome"] = "`status` names the missing target; the next push deployed normally"


def test_supervisord_state_survives(site):
    """Sanity for the module: what runs is what processes.json says."""
    host, _, _ = site
    state = json.loads(prov.state_file(app_of(host)).read_text())
    rows = [r for r in process_views.status(app_of(host)) if r["release"]]
    assert {r["release"] for r in rows} == {p["release"] for p in state["programs"]}


def test_pause_never_reachable_from_a_push(site, observe):
    """The fault file is the only switch: an environment variable or push option does nothing."""
    host, work, _ = site
    row = observe("security", "fault injection reachable from a push (env, push option, commit)")
    sha = work.commit(
        "try to arm faults", **{"run/faults.json": '[{"at": "checkout", "action": "kill"}]'}
    )
    env = {**os.environ, "SHIPYARD_FAULTS": "checkout", "SHIPYARD_FAULT": "kill"}
    result = subprocess.run(
        ["git", "push", "production", "main"],
        cwd=work.path,
        capture_output=True,
        text=True,
        env=env,
    )
    out = result.stdout + result.stderr
    assert last_line(out).startswith(f"shipyard ▸ live: {sha[:7]}"), out
    world = host.dir / "run" / "faults.json"
    world.write_text('[{"at": "checkout", "action": "kill"}]')
    world.chmod(0o666)  # writable by others: not trusted
    sha = greet(work, "a world-writable fault file is ignored")
    out = work.push().out
    assert last_line(out).startswith(f"shipyard ▸ live: {sha[:7]}"), out
    world.unlink()
    check_invariants(host)
    row["outcome"] = (
        "no effect: faults are armed only by run/faults.json owned by the deploy user and "
        "writable by no one else (a file in the commit, SHIPYARD_* variables, a world-writable "
        "file: all ignored)"
    )
