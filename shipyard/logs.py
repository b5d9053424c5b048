"""The processes' output: stamped as it is written, shown by ``shipyard logs``.

supervisord captures each process's stdout and stderr into
``logs/<program>.<n>.log`` and rotates it by size (``LOG_MAXBYTES``, with
``LOG_BACKUPS`` old files), so a chatty app cannot fill the disk. What it
writes has no times, so the launcher puts a *stamper* between the program and
supervisord (shipyard/stamp.py): a small process, forked before the program is exec'd (the pid
supervisord started stays the program), that prefixes each line with the time
and the release it runs::

    [2026-12-01T09:40:01.123Z 20261201T093000Z-1a2b3c4] GET /healthz 200

``shipyard logs`` merges the files by those times, with the process, its
colour and the release's commit in front; ``-f`` follows them, picking up the
files of processes a deploy starts, and rotated files.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import select
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from shipyard.receiver.client import PeerError

from .app import App
from .config import load_host_config
from .counts import types
from .errors import AppError
from .hosts import Fleet
from .release import shared_env
from .report import Masker, clip
from .stamp import STAMP

LOG_NAME = re.compile(r"^(?P<type>[A-Za-z0-9_]+?)(?:-(?P<color>blue|green))?\.(?P<n>\d+)\.log$")
CRON_LOG = re.compile(r"^cron-(?P<job>[a-z0-9][a-z0-9_-]*)\.log$")  # a job's runs (cron.py)
COLORS = ("\033[36m", "\033[35m", "\033[33m", "\033[32m", "\033[34m", "\033[91m")
RESET = "\033[0m"
POLL = 0.2


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

    def line(self, line: Line, host: str = "") -> str:
        """One line as shown; ``host`` (with peers): the host's name in front."""
        when = time.strftime("%m-%d %H:%M:%S", time.gmtime(line.when)) if line.when else " " * 14
        who = line.process + (f" {line.color}" if line.color else "")
        commit = line.release.rsplit("-", 1)[-1][:7] if line.release else "-"
        head = f"{host}{when} {who:<12} {commit:<7}"
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
    host: str | None = None,
) -> int:
    """``shipyard logs``: the last ``count`` lines merged by time, then (``follow``) new ones.

    With peers, every host's lines (or ``host``'s only), the host's name in front."""
    if count < 0:
        raise AppError(f"-n {count}: give a number of lines, 0 or more")
    fleet = Fleet.load(app, load_host_config(app.config_file))
    members = fleet.pick(host)
    if color is None:  # over SSH there is no terminal (only `run` gets one): --color asks
        color = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    printer = Printer(masker(app), color)
    if not fleet.peers:
        return show_here(app, count, follow, process, printer)
    return show_hosts(app, fleet, members, count, follow, process, printer)


def masker(app: App) -> Masker:
    with contextlib.suppress(Exception):
        return Masker(shared_env(app))
    return Masker()


def show_here(app: App, count: int, follow: bool, process: str | None, printer: Printer) -> int:
    check_process(app, process)
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


def show_hosts(
    app: App, fleet, members: list, count: int, follow: bool, process: str | None, printer
) -> int:
    """Every host's lines (this one's read here, the peers' through their ``logs`` route),
    merged by time for ``-n``; with ``-f`` each host's new lines as they come."""
    local = next((m for m in members if m.peer is None), None)
    remote = [m for m in members if m.peer is not None]
    if remote and not fleet.named:
        fleet.learn_names()
    width = max(len(m.label) for m in members) + 1
    incoming: queue.Queue = queue.Queue()
    first: dict[str, list[Line]] = {m.label: [] for m in remote}
    ready = {m.label: threading.Event() for m in remote}
    errors: dict[str, str] = {}

    def fetch(m) -> None:
        def on_line(text: str) -> None:
            if text == "f":  # its last lines are all sent: what follows is new
                ready[m.label].set()
                return
            with contextlib.suppress(ValueError, TypeError):
                when, proc, colour, rid, body = json.loads(text.partition(" ")[2])
                line = Line(float(when), str(proc), colour, str(rid), str(body))
                if ready[m.label].is_set():
                    incoming.put((m.label, line))
                else:
                    first[m.label].append(line)

        query = {"lines": str(count), **({"process": process} if process else {})}
        try:
            answer = m.peer.call(
                "GET",
                "logs",
                query={**query, **({"follow": "1"} if follow else {})},
                on_line=on_line,
                retries=1,
                idempotent=False,  # repeated after some lines came, they would come twice
            )
            if not answer.get("ok"):
                errors[m.label] = m.said(str(answer.get("error")))
        except PeerError as exc:
            errors[m.label] = m.said(exc.message)
        finally:
            ready[m.label].set()

    threads = [threading.Thread(target=fetch, args=(m,), daemon=True) for m in remote]
    for t in threads:
        t.start()
    known: dict = {}
    lines: list[tuple[str, Line]] = []
    if local:
        check_process(app, process)
        known = {s.path: s for s in sources(app, process)}
        lines = [(local.label, ln) for s in known.values() for ln in last_lines(s, count)]
    for m in remote:
        ready[m.label].wait()
        lines += [(m.label, ln) for ln in first[m.label]]
    lines.sort(key=lambda pair: pair[1].when)
    shown = lines[-count:] if count else []
    emit([printer.line(ln, f"{label:<{width}}") for label, ln in shown])
    reported = set(errors)
    for message in errors.values():
        print(f"shipyard: {message}: its lines are missing", file=sys.stderr, flush=True)
    while follow:
        time.sleep(POLL)
        new = []
        if local:
            for source in sources(app, process):
                known.setdefault(source.path, source)
            new = [(local.label, ln) for s in known.values() for ln in read_new(s)]
        with contextlib.suppress(queue.Empty):
            while True:
                new.append(incoming.get_nowait())
        new.sort(key=lambda pair: pair[1].when)
        if not emit([printer.line(ln, f"{label:<{width}}") for label, ln in new]):
            return 0
        for label in [x for x in errors if x not in reported]:
            print(f"shipyard: {errors[label]}: no longer followed", file=sys.stderr, flush=True)
            reported.add(label)
    return 1 if errors else 0


def serve(app: App, query: dict, stream) -> dict:
    """The receiver's ``logs`` route: the last lines (``l`` lines of JSON), then with
    ``follow=1`` an ``f`` line and the new ones, until the primary goes away."""
    count = int(query.get("lines", "100"))
    if count < 0:
        raise AppError(f"lines={count}: give a number of lines, 0 or more")
    process = query.get("process") or None
    check_process(app, process)
    mask = masker(app)

    def send(lines: list[Line]) -> None:
        for ln in lines:
            row = [ln.when, ln.process, ln.color, ln.release, mask(ln.text)]
            stream.write("l " + json.dumps(row) + "\n")

    known = {s.path: s for s in sources(app, process)}
    merged = sorted(
        (ln for s in known.values() for ln in last_lines(s, count)), key=lambda ln: ln.when
    )
    send(merged[-count:] if count else [])
    if query.get("follow") != "1":
        return {"ok": True}
    stream.write("f\n")
    while not stream.gone:
        time.sleep(POLL)
        for source in sources(app, process):
            known.setdefault(source.path, source)
        send(sorted((ln for s in known.values() for ln in read_new(s)), key=lambda ln: ln.when))
    return {"ok": True}


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
