"""Test-only fault injection: kill or pause a deploy at a named point.

Off unless the host's operator writes ``run/faults.json`` in the app's deploy
root. Nothing a pusher sends can arm it: not a push option, not the commit, not
an environment variable (no variable is read at all; over SSH the forced
command drops every ``SHIPYARD_*`` variable anyway). The file must be a regular
file (not a symlink) owned by the user the deploy runs as and writable by no one
else, or it is ignored. A build step can write it, but a build step is the
app's own code running as the deploy user, which can kill its deploy anyway.

The file holds a list of faults, each fired once (then removed from the file)::

    [{"at": "venv", "action": "kill"},
     {"at": "restart", "action": "pause", "deploy": 3},
     {"at": "venv", "action": "kill", "delay": 0.5},
     {"at": "switch", "when": "end", "action": "kill"}]

``at`` names a point: a deploy phase (``checkout`` … ``finish``, entered —
``when = "start"``, the default — or just completed — ``"end"``; in a peer's
receiver too, armed in the peer's own ``run/``), a batch of a many-host
rollout (``batch-1``, ``batch-2`` … as it starts), ``receive``
(proc-receive, just after it moved the branch), ``tidy`` (the worker, its outcome
reported, before it deletes what ``finish`` pruned) or ``settle`` (then, before it waits
for the old web that ``restart`` sent TERM). ``kill`` sends the process
SIGKILL, right away or ``delay`` seconds later while the phase runs. ``fail``
fails the phase as a phase fails (``PhaseError``); ``raise`` raises an
exception no phase expects (``Injected``, a ``RuntimeError``), as a bug would.
``pause`` writes ``run/faults.paused`` (who paused, where) and waits until that
file is removed (at most ``timeout`` seconds, default 300): meanwhile a test
kills the pushing client, stops supervisord, or pushes again.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import threading
import time
from pathlib import Path

from .errors import PhaseError

FILE = "faults.json"
PAUSED = "faults.paused"


class Injected(RuntimeError):
    """The ``raise`` fault: an exception of no kind the phases know (a bug, in effect)."""


def _path(run: Path) -> Path:
    return run / FILE


def _load(path: Path) -> list[dict] | None:
    """The armed faults, or None when the file is absent or not trusted."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if (
            not stat.S_ISREG(info.st_mode)
            or info.st_uid != os.geteuid()
            or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        ):
            return None
        data = json.loads(os.read(fd, 1 << 16) or b"[]")
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)
    if isinstance(data, dict):
        data = [data]
    return [f for f in data if isinstance(f, dict)] if isinstance(data, list) else None


def arm(run: Path, *faults: dict) -> None:
    """Write the faults file (what a test does; mode 0600, atomically)."""
    run.mkdir(parents=True, exist_ok=True)
    tmp = run / f".{FILE}.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(list(faults), f)
    os.rename(tmp, _path(run))


def disarm(run: Path) -> None:
    _path(run).unlink(missing_ok=True)
    (run / PAUSED).unlink(missing_ok=True)


def _take(run: Path, at: str, when: str, number: int | None) -> dict | None:
    """The first armed fault for this point, removed from the file (each fires once)."""
    path = _path(run)
    faults = _load(path)
    if not faults:
        return None
    for i, fault in enumerate(faults):
        if fault.get("at") != at or fault.get("when", "start") != when:
            continue
        if fault.get("deploy") is not None and fault.get("deploy") != number:
            continue
        rest = faults[:i] + faults[i + 1 :]
        if rest:
            arm(run, *rest)
        else:
            path.unlink(missing_ok=True)
        return fault
    return None


def point(run: Path, at: str, when: str = "start", number: int | None = None) -> None:
    """Fire the fault armed for this point, if any (a stat(2) when none is armed)."""
    if not _path(run).exists():
        return
    fault = _take(run, at, when, number)
    if fault is None:
        return
    action = fault.get("action", "kill")
    if action == "kill":
        delay = float(fault.get("delay") or 0)
        if delay > 0:
            timer = threading.Timer(delay, os.kill, (os.getpid(), signal.SIGKILL))
            timer.daemon = True
            timer.start()
            return
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "fail":
        raise PhaseError(f"injected failure at {at} {when}")
    elif action == "raise":
        raise Injected(f"injected exception at {at} {when}")
    elif action == "pause":
        paused = run / PAUSED
        note = {"pid": os.getpid(), "at": at, "when": when, "deploy": number}
        tmp = run / f".{PAUSED}.{os.getpid()}"
        tmp.write_text(json.dumps(note))
        os.rename(tmp, paused)
        deadline = time.monotonic() + float(fault.get("timeout") or 300)
        while paused.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        with contextlib.suppress(OSError):
            paused.unlink()
