"""What an embedded supervisord that died (SIGKILL, the OOM killer) left running: found by
its session in /proc, stopped before a new supervisord starts."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from . import programs as prov
from .app import App


def _session(pid: str | int) -> int | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else int(fields[3])


def orphans(app: App) -> list[int]:
    """Processes an embedded supervisord that died (SIGKILL, OOM) left running.

    supervisord leads its own session and its programs stay in it: with the leader
    (run/supervisord.pid) dead, what is left of that session in the app's directory
    is its orphans — the web port's socket holder and the app's processes, still
    holding the port, and invisible to a new supervisord.
    """
    pid = read_pid(prov.pid_file(app))
    if pid is None or alive(pid):
        return []
    base = os.path.realpath(app.dir)
    found = []
    for name in filter(str.isdigit, os.listdir("/proc")):
        if int(name) == os.getpid() or _session(name) != pid:
            continue
        try:
            cwd = os.readlink(f"/proc/{name}/cwd")
        except OSError:
            continue
        if cwd == base or cwd.startswith(base + "/"):
            found.append(int(name))
    return found


def stop_orphans(app: App, grace: float = 5.0) -> int:
    """TERM (gunicorn drains), then KILL, what a dead supervisord left; how many there were.

    Looked for again before every signal: a gunicorn master that has not acted on its TERM
    yet forks new workers, in the same session, for those the TERM ended, and a list made
    once would leave those running after the master's KILL."""
    seen: set[int] = set()
    for sig in (signal.SIGTERM, signal.SIGKILL, signal.SIGKILL):
        found = orphans(app)
        seen.update(found)
        for pid in found:
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(alive(p) for p in found):
            time.sleep(0.05)
    return len(seen)


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def is_supervisord(pid: int) -> bool:
    """Is ``pid`` a supervisord, or a process on its way out (its memory, and with it its
    command line, goes before its open files), rather than a pid file's number reused?"""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return (not command or b"supervisord" in command) and alive(pid)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
