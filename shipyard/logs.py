"""The processes' output: stamped as it is written, shown by ``shipyard logs``.

supervisord captures each process's stdout and stderr into
``logs/<program>.<n>.log`` and rotates it by size (``LOG_MAXBYTES``, with
``LOG_BACKUPS`` old files), so a chatty app cannot fill the disk. What it
writes has no times, so the launcher puts a *stamper* between the program and
supervisord: a small process, forked before the program is exec'd (the pid
supervisord started stays the program), that prefixes each line with the time
and the release it runs::

    [2026-12-01T09:40:01.123Z 20261201T093000Z-1a2b3c4] GET /healthz 200

``shipyard logs`` merges the files by those times, with the process, its
colour and the release's commit in front; ``-f`` follows them, picking up the
files of processes a deploy starts, and rotated files.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from .app import App
from .counts import types
from .errors import AppError
from .release import shared_env
from .report import Masker, clip

STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})Z (\S+)\] ?")
LOG_NAME = re.compile(r"^(?P<type>[A-Za-z0-9_]+?)(?:-(?P<color>blue|green))?\.(?P<n>\d+)\.log$")
CRON_LOG = re.compile(r"^cron-(?P<job>[a-z0-9][a-z0-9_-]*)\.log$")  # a job's runs (cron.py)
IDLE_FLUSH = 0.5  # a partial line (no newline yet) is written after this long
COLORS = ("\033[36m", "\033[35m", "\033[33m", "\033[32m", "\033[34m", "\033[91m")
RESET = "\033[0m"
POLL = 0.2


# --- writing: the stamper -------------------------------------------------------


def stamp_line(text: str, release: str, now: float | None = None) -> str:
    moment = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    millis = f"{moment.microsecond // 1000:03d}"
    return f"[{moment.strftime('%Y-%m-%dT%H:%M:%S.')}{millis}Z {release}] {text}"


def unstamp(text: str) -> str:
    """The lines as the program wrote them (for the excerpts a failed deploy shows)."""
    return "\n".join(STAMP.sub("", line, count=1) for line in text.split("\n"))


def stamp(source: int, out: int, release: str, fallback: Path | None = None) -> None:
    """Copy ``source`` to ``out`` line by line, each line stamped; until EOF.

    Once ``out`` is gone (supervisord dropped a stopped program's pipe while its last
    lines — a goodbye, a traceback — were still on their way), they are appended to
    ``fallback``, the program's log file, instead of being lost.
    """
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
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
                signal.signal(sig, signal.SIG_IGN)
            os.close(write)
            keep = os.dup2(read, 3)
            os.dup2(1, 4)
            os.closerange(5, os.sysconf("SC_OPEN_MAX"))
            devnull = os.open(os.devnull, os.O_RDWR)
            os.dup2(devnull, 0)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            with contextlib.suppress(OSError):
                stamp(keep, 4, release, log)
        finally:
            os._exit(0)
    os.close(read)
    os.dup2(write, 1)
    os.dup2(write, 2)
    os.close(write)


# --- reading --------------------------------------------------------------------


@dataclass
class Source:
    """One process's log: its current file, read from ``offset``."""

    path: Path
    process: str  # web.1
    color: str | None
    offset: int = 0
    inode: int = 0
    last: float = 0.0  # the time of its last stamped line (for lines without one)
    rest: str = ""


@dataclass(frozen=True)
class Line:
    when: float
    process: str
    color: str | None
    release: str
    text: str


def sources(app: App, process: str | None = None) -> list[Source]:
    """The process logs in ``logs/`` (not the port holder's), optionally of one type."""
    found = []
    directory = app.dir / "logs"
    for path in sorted(directory.glob("*.log")) if directory.is_dir() else []:
        match, job = LOG_NAME.match(path.name), CRON_LOG.match(path.name)
        if match:
            kind, name, color = match["type"], f"{match['type']}.{match['n']}", match["color"]
        elif job:
            kind, name, color = "cron", f"cron.{job['job']}", None
        else:
            continue
        if process and process not in (kind, name):
            continue
        found.append(Source(path, name, color))
    return found


def parse(source: Source, text: str) -> list[Line]:
    lines = []
    for raw in text.splitlines():
        match = STAMP.match(raw)
        if match:
            moment = datetime.fromisoformat(match[1]).replace(tzinfo=UTC).timestamp()
            source.last = moment
            lines.append(Line(moment, source.process, source.color, match[2], raw[match.end() :]))
        else:
            lines.append(Line(source.last, source.process, source.color, "", raw))
    return lines


def last_lines(source: Source, count: int) -> list[Line]:
    """The last ``count`` lines of a process, from its rotated files too."""
    files = [source.path] + [source.path.with_name(f"{source.path.name}.{i}") for i in (1, 2, 3)]
    chunks: list[str] = []
    total = 0
    for path in files:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        chunks.insert(0, text)
        total += text.count("\n")
        if total >= count:
            break
    with contextlib.suppress(OSError):
        st = source.path.stat()
        source.offset, source.inode = st.st_size, st.st_ino
    return parse(source, "".join(chunks))[-count:] if count else []


def read_new(source: Source) -> list[Line]:
    """What was written since the last read (a rotated file: its rest, then the new one)."""
    out: list[Line] = []
    try:
        st = source.path.stat()
    except OSError:
        return out
    if st.st_ino != source.inode or st.st_size < source.offset:
        if source.inode:  # rotated: finish the old file (now .log.1) first
            old = source.path.with_name(source.path.name + ".1")
            with contextlib.suppress(OSError):
                if old.stat().st_ino == source.inode:
                    out += _read_from(source, old, source.offset)
        source.offset, source.inode = 0, st.st_ino
    if st.st_size > source.offset:
        out += _read_from(source, source.path, source.offset)
        source.offset = st.st_size
    return out


def _read_from(source: Source, path: Path, offset: int) -> list[Line]:
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read()
    text = source.rest + data.decode(errors="replace")
    complete, _, source.rest = text.rpartition("\n")
    return parse(source, complete + "\n") if complete or text.endswith("\n") else []


# --- showing ---------------------------------------------------------------------


class Printer:
    def __init__(self, mask: Masker, color: bool) -> None:
        self.mask = mask
        self.color = color
        self.palette: dict[str, str] = {}

    def line(self, line: Line) -> str:
        when = time.strftime("%m-%d %H:%M:%S", time.gmtime(line.when)) if line.when else " " * 14
        who = line.process + (f" {line.color}" if line.color else "")
        commit = line.release.rsplit("-", 1)[-1][:7] if line.release else "-"
        head = f"{when} {who:<12} {commit:<7}"
        if self.color:
            code = self.palette.setdefault(
                line.process.split(".")[0], COLORS[len(self.palette) % len(COLORS)]
            )
            head = f"{code}{head}{RESET}"
        return clip(f"{head} │ {self.mask(line.text)}", 2000)


def check_process(app: App, process: str | None) -> None:
    if process is None:
        return
    kinds = [*types(app), "cron"]  # cron: the scheduled jobs' runs
    if process.split(".")[0] not in kinds:
        raise AppError(
            f"{app.name} has no process type {process!r}",
            f"its Procfile runs: {', '.join(kinds) or 'nothing'}",
        )


def show(
    app: App,
    count: int = 100,
    follow: bool = False,
    process: str | None = None,
    color: bool | None = None,
) -> int:
    """``shipyard logs``: the last ``count`` lines merged by time, then (``follow``) new ones."""
    if count < 0:
        raise AppError(f"-n {count}: give a number of lines, 0 or more")
    check_process(app, process)
    mask = Masker()
    with contextlib.suppress(Exception):
        mask = Masker(shared_env(app))
    if color is None:  # over SSH there is no terminal (only `run` gets one): --color asks
        color = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    printer = Printer(mask, color)
    known = {s.path: s for s in sources(app, process)}
    merged = sorted(
        (ln for s in known.values() for ln in last_lines(s, count)), key=lambda ln: ln.when
    )
    emit([printer.line(ln) for ln in merged[-count:]] if count else [])
    if not known and not follow:
        print(f"{app.name}: no process logs yet (in {app.dir / 'logs'})", file=sys.stderr)
    while follow:
        time.sleep(POLL)
        for source in sources(app, process):
            known.setdefault(source.path, source)  # a process a deploy started: from its start
        new = sorted((ln for s in known.values() for ln in read_new(s)), key=lambda ln: ln.when)
        if not emit([printer.line(ln) for ln in new]):
            return 0
    return 0


def emit(lines: list[str]) -> bool:
    """Write the lines; False once the reader went away (the pipe or connection closed)."""
    try:
        if lines:
            sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()
        poll = select.poll()
        poll.register(sys.stdout.fileno(), 0)
        return not any(event & (select.POLLERR | select.POLLHUP) for _, event in poll.poll(0))
    except (BrokenPipeError, OSError, ValueError):
        return False
