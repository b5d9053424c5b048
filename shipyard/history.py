"""Deploy numbers, logs and the history file ``deploys/deploys.jsonl``.

A deploy's number is claimed by creating its log with O_EXCL, so two pushes
arriving at once can never get the same number. History is append-only JSON
lines, one per finished deploy (or per deploy that never started its phases).

Whoever runs deploy N holds a flock on ``deploys/N.log`` for as long as it
lives (the worker inherits it through its stdout). A claimed log with no
history line is therefore ``running`` (its process holds the deploy lock),
``waiting`` (its log is held, the deploy lock is not its), or ``interrupted``
(nobody holds its log: the process died, e.g. SIGKILL, without an outcome).
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import IO

from . import lock
from .app import App

# what a history line's ``outcome`` is: a deploy's (a rollback that went live is ``live``,
# its ``kind`` says rollback), or ``applied`` for a change (config, scale: change.py)
OUTCOMES = ("live", "failed", "superseded", "interrupted", "applied")
UNFINISHED = ("running", "waiting", "interrupted")


def log_path(app: App, number: int) -> Path:
    return app.deploys / f"{number}.log"


def claim_number(app: App) -> int:
    """Create ``deploys/<N>.log`` for the next free N and return N."""
    app.deploys.mkdir(parents=True, exist_ok=True)
    number = last_number(app) + 1
    while True:
        try:
            fd = os.open(log_path(app, number), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640)
        except FileExistsError:
            number += 1
            continue
        os.close(fd)
        return number


def open_log(app: App, number: int) -> IO[bytes]:
    """Open a claimed log for appending and hold it for the life of the deploy's process.

    The flock belongs to the open file, so a child given this file as its output
    keeps holding it after the opener closes its copy; it is dropped only when
    the last process with the file dies.
    """
    log = open(log_path(app, number), "ab")  # noqa: SIM115 - the caller owns it
    fcntl.flock(log.fileno(), fcntl.LOCK_SH)
    return log


def log_held(app: App, number: int) -> bool:
    """Is some live process still running (or waiting to run) deploy ``number``?"""
    return lock.is_held(log_path(app, number), fcntl.LOCK_EX)


def last_number(app: App) -> int:
    numbers = [int(p.stem) for p in app.deploys.glob("*.log") if p.stem.isdigit()]
    return max(numbers, default=0)


def record(app: App, entry: dict) -> None:
    """Append one line; a single write(2) of a short line, so concurrent appends do not mix."""
    if entry.get("outcome") not in OUTCOMES:
        raise ValueError(f"not a history outcome: {entry.get('outcome')!r} (one of {OUTCOMES})")
    line = (json.dumps(entry, sort_keys=True) + "\n").encode()
    fd = os.open(app.history_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def entries(app: App) -> list[dict]:
    try:
        text = app.history_file.read_text()
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def recorded(app: App, number: int, tail: int = 65536) -> dict | None:
    """Deploy ``number``'s history line, looked for in the last ``tail`` bytes only: for a
    deploy that has just written its own (the file grows with every deploy)."""
    try:
        with open(app.history_file, "rb") as history:
            history.seek(max(0, history.seek(0, os.SEEK_END) - tail))
            lines = history.read().splitlines()
    except FileNotFoundError:
        return None
    for line in reversed(lines):
        try:
            entry = json.loads(line)
        except ValueError:  # e.g. the cut first line
            continue
        if isinstance(entry, dict) and entry.get("deploy") == number:
            return entry
    return None


def last_live(app: App) -> dict | None:
    for entry in reversed(entries(app)):
        if entry.get("outcome") == "live":
            return entry
    return None


def numbers(app: App) -> list[int]:
    return sorted(int(p.stem) for p in app.deploys.glob("*.log") if p.stem.isdigit())


def deploys(app: App) -> list[dict]:
    """Every claimed deploy, oldest first: its history line, or what became of it.

    A deploy with no history line gets ``outcome`` ``running``, ``waiting`` or
    ``interrupted`` (see the module docstring); never ``live``.
    """
    recorded: dict[int, dict] = {}
    for entry in entries(app):
        if isinstance(entry.get("deploy"), int):
            recorded[entry["deploy"]] = entry
    held = lock.is_held(app.deploy_lock)
    # The holder's note survives a holder killed by SIGKILL: it says what that deploy was
    # (kept under "stale" while a holder that cannot resume it holds the lock).
    note = lock.holder(app.deploy_lock)
    holder = note if held else (lock.pending(note) or note)
    dead = lock.pending(note)
    out = []
    for number in sorted(set(numbers(app)) | set(recorded)):
        if number in recorded:
            out.append(recorded[number])
            continue
        if held and holder.get("deploy") == number:
            entry = {"deploy": number, "outcome": "running", **holder}
        elif log_held(app, number):
            entry = {"deploy": number, "outcome": "waiting"}
        else:
            entry = {"deploy": number, "outcome": "interrupted"}
            if dead.get("deploy") == number:
                entry.update({k: dead[k] for k in ("sha", "pusher") if k in dead})
        if "since" in entry:
            entry["start"] = entry["since"]
        else:
            try:  # when its log was last written: about when it stopped
                entry["start"] = log_path(app, number).stat().st_mtime
            except OSError:
                entry["start"] = None
        out.append(entry)
    return out


def find(app: App, number: int) -> dict | None:
    for entry in deploys(app):
        if entry.get("deploy") == number:
            return entry
    return None
