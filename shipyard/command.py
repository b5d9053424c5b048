"""One way to run a command of the app's (Invoke's ``Runner``/``Result`` the model).

Build steps, the ``release:`` command, migrations and their probes, and ``shipyard run``
use ``run``: the command runs in its own process group, its output is handed on line by
line as it comes (``on_line``: the reporter, migration progress; a partial line once
nothing more came for a moment), and a timeout stops the whole group, TERM then KILL,
not just the shell (a shell's ``sleep 600 &`` goes too). The group is stopped as well
when the run is cut short (a deploy stopped by a signal raises in the read loop). It
stays in the caller's session, so the recovery of a killed deploy still finds what it
left running (recover.py).
"""

from __future__ import annotations

import codecs
import contextlib
import os
import select
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from . import release
from .context import Deploy
from .errors import CommandFailed, CommandTimedOut

GRACE = 3.0  # seconds between TERM and KILL of a group that is stopped
PARTIAL_AFTER = 0.1  # seconds without a newline before a partial line is handed on anyway
NOT_FOUND = 127

OnLine = Callable[[str, float], None]


@dataclass
class Result:
    """How a command ended: its exit status, what it printed, how long it took."""

    command: str | list[str]
    exited: int  # the exit status; -N: killed by signal N
    output: str  # stdout and stderr as they came (stdout only with ``stderr_apart``)
    seconds: float = 0.0
    timed_out: bool = False
    errors: str = ""  # stderr, with ``stderr_apart``
    started: bool = True  # False: the program was not found (exit 127, as in a shell)
    timeout: float | None = None

    @property
    def ok(self) -> bool:
        return self.exited == 0 and not self.timed_out

    @property
    def everything(self) -> str:
        return f"{self.output}{self.errors}"


def run(
    command: str | list[str],
    cwd: Path,
    env: dict[str, str],
    timeout: float | None = None,
    on_line: OnLine | None = None,
    stderr_apart: bool = False,
    on_error_line: OnLine | None = None,
    stdin: int | IO | None = subprocess.DEVNULL,
    own_group: bool = True,
    forward_signals: bool = False,
    cancelled: Callable[[], bool] | None = None,
) -> Result:
    """Run ``command`` (a string through the shell); never raises for how it ended (see
    ``check``). ``stdin=None`` and ``own_group=False`` keep it in the caller's foreground
    job, for a command that may read the terminal (``shipyard run``); ``forward_signals``
    passes hang-up, Ctrl-C and TERM on to it while it runs; once ``cancelled()`` (the one
    who asked went away) it is stopped as on a timeout."""
    apart = stderr_apart or on_error_line is not None
    try:
        proc = subprocess.Popen(
            command,
            shell=isinstance(command, str),
            cwd=cwd,
            env=env,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE if apart else subprocess.STDOUT,
            process_group=0 if own_group else None,
        )
    except FileNotFoundError:
        return Result(
            command, NOT_FOUND, f"{command[0]}: not found\n", started=False, timeout=timeout
        )
    readers = {proc.stdout.fileno(): Lines(on_line)}
    if apart:
        readers[proc.stderr.fileno()] = Lines(on_error_line)
    started = time.monotonic()
    timed_out = False
    forwarded = forwarding(proc.pid) if forward_signals else contextlib.nullcontext()
    try:
        with forwarded:
            timed_out = _read(readers, None if timeout is None else started + timeout, cancelled)
            if not timed_out:
                try:
                    left = None if timeout is None else started + timeout - time.monotonic()
                    proc.wait(timeout=None if left is None else max(left, 0.01))
                except subprocess.TimeoutExpired:
                    timed_out = True
    finally:
        if timed_out or proc.poll() is None:
            stop(proc, own_group)
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()
    out, *err = readers.values()
    return Result(
        command,
        proc.returncode,
        out.text(),
        time.monotonic() - started,
        timed_out,
        err[0].text() if err else "",
        timeout=timeout,
    )


class Lines:
    """One output stream of a command: kept whole, and handed on line by line."""

    def __init__(self, on_line: OnLine | None) -> None:
        self.on_line = on_line
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.chunks: list[str] = []
        self.partial = ""

    def feed(self, data: bytes) -> None:
        text = self.decoder.decode(data, final=not data)
        self.chunks.append(text)
        if self.on_line:
            *lines, self.partial = (self.partial + text).split("\n")
            for line in lines:
                self.on_line(line + "\n", time.monotonic())
            if not data:
                self.flush()

    def flush(self) -> None:
        if self.partial and self.on_line:
            self.on_line(self.partial, time.monotonic())
        self.partial = ""

    def text(self) -> str:
        return "".join(self.chunks)


def _read(
    readers: dict[int, Lines], deadline: float | None, cancelled: Callable[[], bool] | None
) -> bool:
    """Read every stream until each is closed; True if ``deadline`` (or ``cancelled``) came
    first."""
    open_fds = list(readers)
    while open_fds:
        if cancelled and cancelled():
            return True
        wait = PARTIAL_AFTER
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return True
            wait = min(remaining, wait)
        ready, _, _ = select.select(open_fds, [], [], wait)
        if not ready:
            for fd in open_fds:
                readers[fd].flush()  # a prompt, a progress bar: shown without its newline
            continue
        for fd in ready:
            data = os.read(fd, 65536)
            readers[fd].feed(data)
            if not data:
                open_fds.remove(fd)
    return False


def stop(proc: subprocess.Popen, group: bool = True, grace: float = GRACE) -> None:
    """TERM the command (its whole process group), then KILL what is left after ``grace``."""
    kill = os.killpg if group else os.kill
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            kill(proc.pid, sig)
        except ProcessLookupError:
            break  # nothing of it is left
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0.05)
            if proc.returncode is not None and not (group and _group_alive(proc.pid)):
                return
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)


def _group_alive(pgid: int) -> bool:
    """Is a process of group ``pgid`` still running (one that is only a zombie is not)?"""
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry.name}/stat").read_text()
                fields = stat.rpartition(")")[2].split()
                if int(fields[2]) == pgid and fields[0] != "Z":
                    return True
    return False


@contextlib.contextmanager
def forwarding(pid: int) -> Iterator[None]:
    """Hang-up, Ctrl-C and TERM reach the command (and end shipyard when it ends)."""

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    saved = {s: signal.signal(s, forward) for s in sigs}
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


def in_release(
    d: Deploy,
    command: str | list[str],
    timeout: float | None = None,
    on_line: OnLine | None = None,
    extra_env: dict[str, str] | None = None,
    stderr_apart: bool = False,
    cancelled: Callable[[], bool] | None = None,
) -> Result:
    """``run`` in the deploy's release, with its venv and the app's .env."""
    env = release.command_env(d.app, d.release, d.env)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra_env or {})
    return run(command, d.release, env, timeout, on_line, stderr_apart, cancelled=cancelled)


def check(result: Result, what: str) -> Result:
    """``result`` if the command succeeded; else its typed failure, which carries it."""
    if result.timed_out:
        raise CommandTimedOut(result, what)
    if not result.ok:
        raise CommandFailed(result, what)
    return result


def run_in_release(d: Deploy, command: str, what: str, timeout: float | None = None) -> str:
    """A build step or the ``release:`` command: its output, or a failure that carries it."""
    return check(in_release(d, command, timeout), what).output
