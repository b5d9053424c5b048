"""The fault and bad-input suite: helpers, invariants, and the reliability record.

Every case calls ``observe(kind, fault, outcome)`` with what it did and what it saw
(the lines the pusher read, what is live, what the history says). With
``SHIPYARD_RELIABILITY=path`` set, each record is appended to ``path`` as one JSON
line, with whether the case passed; ``make reliability`` renders the table in
docs/reliability.md from it (``tests/faults/render.py``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import Host, Work, make_host, make_work, processes_under, shipyard  # noqa: F401
from httpload import fetch  # noqa: F401 - re-exported

from shipyard import fault_injection, history, lock, process_views
from shipyard.app import App

RECORD = os.environ.get("SHIPYARD_RELIABILITY")
# The example app without its build step: faster pushes for cases that are not about builds.
NO_BUILD = 'shared = [".env", "media/"]\n\n[health]\npath = "/healthz"\n'


@contextlib.contextmanager
def deployed(base: Path, push: bool = True):
    """(host, work): a deploy root and a clone of the example app (NO_BUILD), pushed once."""
    host = make_host(base / "apps")
    work = make_work(base / "work", host)
    work.commit("no build step", **{"shipyard.toml": NO_BUILD})
    try:
        if push:
            work.push()
        yield host, work
    finally:
        host.stop_processes()


@pytest.fixture(scope="module")
def site(tmp_path_factory, request):
    """(host, work): one deployed app for a module (``site = faultlib.site`` in it)."""
    name = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    with deployed(tmp_path_factory.mktemp(name)) as (host, work):
        yield host, work


@pytest.fixture
def clean(site):
    """(host, work, live): the clone at the host's branch, untracked files gone, before and
    after a case; ``live`` is what was live, checked (``check_invariants``) before it."""
    host, work = site

    def reset() -> None:
        work.git("reset", "-q", "--hard", host.branch())
        work.git("clean", "-q", "-fdx")

    reset()
    yield host, work, check_invariants(host)
    reset()


@pytest.fixture
def observe(request):
    """Record what a case tried and what happened, for docs/reliability.md."""
    rows: list[dict] = []

    def record(kind: str, fault: str, outcome: str = "") -> dict:
        """One row; a case fills in ``row["outcome"]`` as it learns what happened."""
        rows.append({"kind": kind, "fault": fault, "outcome": outcome})
        return rows[-1]

    failed_before = request.session.testsfailed
    started = time.monotonic()
    yield record
    if RECORD:
        # the call's report is counted before teardown: did this case fail?
        status = "failed" if request.session.testsfailed > failed_before else "passed"
        with open(RECORD, "a") as f:
            for row in rows:
                row.update(
                    case=request.node.name,
                    module=request.node.module.__name__.rsplit(".", 1)[-1],
                    status=status,
                    seconds=round(time.monotonic() - started, 1),
                )
                f.write(json.dumps(row) + "\n")


def sy(host: Host, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return shipyard("--root", host.root, *args, check=check)


def app_of(host: Host) -> App:
    return App(host.root, host.name)


def entries(host: Host) -> list[dict]:
    return history.entries(app_of(host))


def arm(host: Host, *specs: dict) -> None:
    fault_injection.arm(host.dir / "run", *specs)


def disarm(host: Host) -> None:
    fault_injection.disarm(host.dir / "run")


def wait_for(predicate, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def paused(host: Host, timeout: float = 120.0) -> dict:
    """Wait until a deploy paused at an armed point; returns who paused where."""
    path = host.dir / "run" / fault_injection.PAUSED

    def read() -> dict | None:
        with contextlib.suppress(OSError, ValueError):
            return json.loads(path.read_text())
        return None

    return wait_for(read, timeout, "the deploy to pause")


def resume(host: Host) -> None:
    (host.dir / "run" / fault_injection.PAUSED).unlink(missing_ok=True)


def background_push(work: Work, *args: str) -> subprocess.Popen:
    """`git push production …` in its own process group (so a test can kill the client)."""
    return work.push_in_background(*args)


def kill_client(proc: subprocess.Popen) -> None:
    """The pusher's terminal goes away: git, its receive-pack and the hooks with it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def greeting_of(release: Path) -> str:
    text = (release / "mysite" / "version.py").read_text()
    return re.search(r'GREETING = "(.*)"', text).group(1)


def settled(host: Host) -> None:
    """No deploy running or queued: the lock is free and its note empty (no stale lock)."""
    app = app_of(host)
    wait_for(lambda: not lock.is_held(app.deploy_lock), 120, "the deploy lock")
    note = app.deploy_lock.read_text()
    assert not note.strip(), f"a dead deploy's note is still in the lock: {note}"


def set_aside(host: Host) -> list[str]:
    """Half-made or pruned releases and venvs still on disk (``.t…`` in releases/, ``.tmp…``
    in venvs/)."""
    releases = [p.name for p in (host.dir / "releases").iterdir() if p.name.startswith(".t")]
    return releases + [p.name for p in (host.dir / "venvs").iterdir() if p.name.startswith(".tmp")]


def check_invariants(host: Host, served: bool = True) -> str:
    """`current` is a complete release, its processes serve it, history has every outcome.

    Returns the live release id.
    """
    settled(host)
    app = app_of(host)
    live = app.live_release()
    assert live, "current does not point at a release"
    release = host.dir / "releases" / live
    manifest = json.loads((release / ".shipyard" / "release.json").read_text())
    assert manifest["state"] == "good", f"live release {live} is {manifest['state']}"
    venv = (release / ".venv").resolve()
    assert venv.parent == host.dir / "venvs" and (venv / "bin" / "python").exists()
    # what finish set aside is deleted by the worker once the push is answered: soon after
    wait_for(lambda: not set_aside(host), 30, "the pruned releases set aside to be deleted")
    # every deploy has its outcome in the history file (an interrupted one once recovered)
    recorded = {e.get("deploy") for e in history.entries(app)}
    unfinished = [e for e in history.deploys(app) if e["deploy"] not in recorded]
    assert not unfinished, f"deploys without an outcome: {unfinished}"
    if served:
        status, body = fetch(host.port)
        assert status == 200 and body.strip() == greeting_of(release), body
        rows = [r for r in process_views.status(app) if r["release"] is not None]
        # STARTING: up and healthy, but not yet for startsecs
        assert rows and all(r["state"] in ("RUNNING", "STARTING") and r["live"] for r in rows), rows
        for row in rows:
            assert os.readlink(f"/proc/{row['pid']}/cwd") == str(release)
    return live


def phase_line(out: str, phase: str) -> str:
    return next((ln for ln in out.splitlines() if re.search(rf"[✓✗-] {phase}\b", ln)), "")


def last_line(out: str) -> str:
    lines = [ln for ln in out.splitlines() if "shipyard ▸" in ln]
    return lines[-1].split("remote: ", 1)[-1].strip() if lines else ""
