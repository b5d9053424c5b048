"""The stamper: every line a process writes, stamped with the time and its release.

supervisord's log files have no times, so the launcher puts this small process
between the program and supervisord (``start_stamper``); ``shipyard logs``
(shipyard/logs.py) merges the files by these stamps::

    [2026-12-01T09:40:01.123Z 20261201T093000Z-1a2b3c4] GET /healthz 200
"""

from __future__ import annotations

import os
import sys
import time

TYPE_CHECKING = False  # typing's, without importing typing: the launcher imports this module
if TYPE_CHECKING:
    import re
    from pathlib import Path

IDLE_FLUSH = 0.5  # a partial line (no newline yet) is written after this long


def __getattr__(name: str) -> re.Pattern:
    """``STAMP``, compiled on first use: the launcher imports this module (``start_stamper``)
    on every process's start, and ``re`` would be most of its imports."""
    if name != "STAMP":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import re

    global STAMP
    STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})Z (\S+)\] ?")
    return STAMP


def stamp_line(text: str, release: str, now: float | None = None) -> str:
    from datetime import UTC, datetime  # the stamper's child imports it, not the launcher

    moment = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    millis = f"{moment.microsecond // 1000:03d}"
    return f"[{moment.strftime('%Y-%m-%dT%H:%M:%S.')}{millis}Z {release}] {text}"


def unstamp(text: str) -> str:
    """The lines as the program wrote them (for the excerpts a failed deploy shows)."""
    pattern = sys.modules[__name__].STAMP  # through __getattr__ the first time
    return "\n".join(pattern.sub("", line, count=1) for line in text.split("\n"))


def stamp(source: int, out: int, release: str, fallback: Path | None = None) -> None:
    """Copy ``source`` to ``out`` line by line, each line stamped; until EOF.

    Once ``out`` is gone (supervisord dropped a stopped program's pipe while its last
    lines — a goodbye, a traceback — were still on their way), they are appended to
    ``fallback``, the program's log file, instead of being lost.
    """
    import select

    pending = b""

    def write(data: bytes) -> None:
        nonlocal out
        try:
            _write_all(out, data)
        except BrokenPipeError:
            if fallback is None:
                raise
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
            out = os.open(fallback, flags, 0o644)
            _write_all(out, data)

    while True:
        ready, _, _ = select.select([source], [], [], IDLE_FLUSH if pending else None)
        data = os.read(source, 65536) if ready else b""
        if ready and not data:
            break
        pending += data
        lines = pending.split(b"\n")
        pending = lines.pop()
        if not ready or len(pending) > 65536:  # idle or huge: the partial line goes too
            lines.append(pending)
            pending = b""
        if lines:
            text = "".join(stamp_line(ln.decode(errors="replace"), release) + "\n" for ln in lines)
            write(text.encode())
    if pending:
        write((stamp_line(pending.decode(errors="replace"), release) + "\n").encode())


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]


def start_stamper(release: str, log: Path | None = None) -> None:
    """From here on, this process's stdout and stderr reach supervisord stamped.

    The stamper is a child of the program (so it stays among supervisord's
    descendants, and in its session for the orphan clean-up), closes every
    other descriptor (it must never hold the web sockets), ignores the stop
    signals and ends when the last writer (the program, its workers) is gone.
    """
    read, write = os.pipe()
    if os.fork() == 0:
        try:
            # signal's C half: the module wraps it in enums (~3 ms of the launcher's start)
            import _signal

            for sig in (_signal.SIGTERM, _signal.SIGINT, _signal.SIGHUP, _signal.SIGQUIT):
                _signal.signal(sig, _signal.SIG_IGN)
            os.close(write)
            keep = os.dup2(read, 3)
            os.dup2(1, 4)
            os.closerange(5, os.sysconf("SC_OPEN_MAX"))
            devnull = os.open(os.devnull, os.O_RDWR)
            os.dup2(devnull, 0)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            try:  # noqa: SIM105 (contextlib: ~2 ms of the launcher's start)
                stamp(keep, 4, release, log)
            except OSError:
                pass
        finally:
            os._exit(0)
    os.close(read)
    os.dup2(write, 1)
    os.dup2(write, 2)
    os.close(write)
