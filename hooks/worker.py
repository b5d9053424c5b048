"""The detached deploy worker, as the hooks run it: start it, copy its log, learn its outcome.

The deploy runs in its own session, writing ``deploys/<N>.log``; the hook only
reads that log. So Ctrl-C in the pusher's terminal or a dropped SSH connection
kills the reader, never the deploy half-way through. The outcome is read back
from the history file, where the worker (or the recovery of a killed worker)
recorded it: that is what proc-receive reports to git.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from shipyard import history, teardown
from shipyard.app import App
from shipyard.config import load_host_config
from shipyard.context import Deploy
from shipyard.errors import ShipyardError
from shipyard.options import parse_options, wants_color
from shipyard.release import tag_for
from shipyard.repo import git_env
from shipyard.report import Reporter

ANSI = re.compile(rb"\x1b\[[0-9;]*[A-Za-z]")
DETAIL = "    │ ".encode()
TAIL = 20  # lines of a failed step's output the push shows; the log keeps them all


REPORTED_FD = 3  # the worker's end of the pipe that says "the outcome is recorded"


class Worker:
    """The forked deploy worker, polled like a ``subprocess.Popen``; ``outcome_known`` turns
    true once it recorded its outcome, though it may still be deleting what it pruned."""

    def __init__(self, pid: int, reported: int | None = None) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.reported = reported  # our end of the pipe: a byte once the outcome is recorded
        self.said = False

    def poll(self) -> int | None:
        if self.returncode is None:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def outcome_known(self) -> bool:
        if not self.said and self.reported is not None:
            with contextlib.suppress(BlockingIOError):
                self.said = bool(os.read(self.reported, 1))
                if not self.said:  # the pipe's end: the worker is gone without a word
                    os.close(self.reported)
                    self.reported = None
        return self.said or self.poll() is not None

    def wait(self, timeout: float) -> None:
        """Sleep up to ``timeout``, woken the moment the worker says its outcome is recorded
        (the push's answer then goes out at once, not at the next poll)."""
        if self.said or self.reported is None:
            time.sleep(timeout)
        else:
            select.select([self.reported], [], [], timeout)


def say_reported() -> None:
    """In the worker: the outcome is recorded and its last line is in the log."""
    with contextlib.suppress(OSError):
        sys.stdout.flush()
        os.write(REPORTED_FD, b"1")
        os.close(REPORTED_FD)


class Spare:
    """A worker forked before the push is checked (``prefork``): it imports the deploy's
    modules on the other core while the hook reads the pushed commit, checks it and moves
    the branch, then runs the deploy it is handed; closed unused, it exits."""

    def __init__(self, pid: int, channel: socket.socket) -> None:
        self.pid = pid
        self.channel = channel

    def hand(self, job: dict, log: int, reported: int) -> bool:
        """Give it the deploy, its log and the pipe it reports on; False if it is gone."""
        try:
            socket.send_fds(self.channel, [json.dumps(job).encode()], [log, reported])
        except OSError:
            return False
        finally:
            self.channel.close()
        return True

    def close(self) -> None:
        self.channel.close()


def prefork() -> Spare | None:
    """A spare worker for the deploy this push is about to start (None: no fork here)."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        ours, theirs = socket.socketpair()
        pid = os.fork()
    except OSError:  # no fork now: start() forks its worker then, as without a spare
        return None
    if pid:
        theirs.close()
        return Spare(pid, ours)
    code = 0
    try:
        ours.close()
        teardown.stdio_to_devnull()  # off git's pipes now: git reads the hook's stderr to its end
        import shipyard.operate  # noqa: F401 - the point: loaded while the hook checks
        import shipyard.worker  # noqa: F401

        message, fds, _flags, _address = socket.recv_fds(theirs, 1 << 16, 2)
        theirs.close()
        if message and len(fds) == 2:
            job = json.loads(message)
            app = App(Path(job["root"]), job["name"])
            code = become(app, job["number"], job["sha"], job["ref"], job["options"], *fds)
    finally:
        os._exit(code)


def start(
    app: App, number: int, sha: str, ref: str, options: list[str], spare: Spare | None = None
) -> Worker:
    """Fork the deploy worker into a new session with the log as its only output.

    A fork, not a new interpreter: no second Python start per push, and the modules this
    hook already imported are not imported again. With ``spare`` (forked earlier, the
    deploy's modules loaded meanwhile) that one runs it, or a fork if it is gone.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    # The worker inherits the log, and with it the hold that tells `shipyard status`
    # it is alive; once the worker dies (even by SIGKILL) the deploy shows as interrupted.
    ours, theirs = os.pipe()
    os.set_blocking(ours, False)
    with history.open_log(app, number) as log:
        job = {"root": str(app.root), "name": app.name, "number": number, "sha": sha}
        job.update(ref=ref, options=options)
        if spare is not None and spare.hand(job, log.fileno(), theirs):
            os.close(theirs)
            return Worker(spare.pid, ours)
        pid = os.fork()
        if pid:
            os.close(theirs)
            return Worker(pid, ours)
        os._exit(become(app, number, sha, ref, options, log.fileno(), theirs))


def become(
    app: App, number: int, sha: str, ref: str, options: list[str], log: int, reported: int
) -> int:
    """In the forked worker: its own session, the log as its output, then the deploy."""
    code = 1
    try:
        os.setsid()
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.dup2(reported, REPORTED_FD)
        os.closerange(REPORTED_FD + 1, 1 << 16)  # nothing of git's is kept (its pkt-lines)
        os.chdir(app.dir)
        for name in [k for k in os.environ if k.startswith("GIT_")]:
            del os.environ[name]
        try:
            code = run_deploy(app.root, app.name, number, sha, ref, options)
        except ShipyardError as exc:
            print(f"shipyard: error: {exc}", file=sys.stderr)
    except BaseException:  # noqa: BLE001 - whatever happens, it goes to the log
        import traceback  # only for the log of a crash: not imported by every push

        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
    return code


def pushed_tag(app: App, sha: str) -> str | None:
    """The tag a push named, else a tag in the repo that points at the commit.

    An annotated tag pushed as ``v1.2:main`` names itself (proc-receive peels it
    and records the name). A lightweight tag is just a commit on the wire: the
    server only knows its name if the tag was pushed too (``git push production
    v1.2 v1.2:main``, ``--tags`` or ``--follow-tags`` for annotated tags).
    """
    record = app.run / "tags" / sha
    if record.is_file():
        try:
            return json.loads(record.read_text()).get("tag")
        except ValueError:
            pass
        finally:
            record.unlink(missing_ok=True)
    return tag_for(app, sha)


def run_deploy(
    root: Path | None, name: str, number: int, sha: str, ref: str, raw_options: list[str]
) -> int:
    """Run deploy ``number`` of ``sha``: the detached worker's body; its output is the log.

    Imported here, in the forked worker only: the deploy's modules are not loaded by a hook
    that refuses a push or by ``shipyard log`` (allowed in tests/unit/test_layers.py).
    """
    from shipyard.operate import older_release_notes, pusher
    from shipyard.worker import execute

    def stop(signum: int, _frame: object) -> None:
        raise ShipyardError(f"deploy stopped by signal {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    app = App.at(name, root).require()
    options = parse_options(raw_options)
    host = load_host_config(app.config_file)
    out = Reporter(sys.stdout, wants_color(options, dict(os.environ)), heartbeat=host.heartbeat)
    d = Deploy.for_push(
        app,
        host,
        number,
        sha,
        ref,
        out,
        pusher=pusher(),
        tag=pushed_tag(app, sha),
        options=options,
        notes=older_release_notes(app, sha),
    )
    return 0 if execute(d, say_reported) else 1


def spawn(app: App, number: int, command: list[str]) -> subprocess.Popen:
    """``shipyard COMMAND`` detached (its own session), appending to deploy ``number``'s log."""
    env = git_env()
    args = [sys.executable, "-m", "shipyard", "--root", str(app.root), *command]
    with history.open_log(app, number) as log:
        return subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
            cwd=app.dir,
            start_new_session=True,
        )


class Lines:
    """Pass a log through line by line (an escape sequence is never split)."""

    def __init__(self, strip_ansi: bool = False) -> None:
        self.strip_ansi = strip_ansi
        self.partial = b""

    def feed(self, chunk: bytes) -> bytes:
        lines = (self.partial + chunk).split(b"\n")
        self.partial = lines.pop()
        return b"".join(self.line(ln + b"\n") for ln in lines)

    def flush(self) -> bytes:
        rest, self.partial = self.partial, b""
        return self.line(rest) if rest else b""

    def line(self, line: bytes) -> bytes:
        return ANSI.sub(b"", line) if self.strip_ansi else line


class PushLines(Lines):
    """What the pusher reads: a failed step's output cut to its last lines, saying where it all is.

    The log keeps the step's whole output (``engine.explain``); the push shows its
    tail, since the real error is usually at the end, and names the command that
    replays the whole log.
    """

    def __init__(self, app: App, number: int) -> None:
        super().__init__()
        self.where = f"shipyard log {app.name} {number}"
        self.held: list[bytes] = []

    def line(self, line: bytes) -> bytes:
        if ANSI.sub(b"", line).startswith(DETAIL):
            self.held.append(line)
            return b""
        return self.release() + line

    def flush(self) -> bytes:
        return super().flush() + self.release()

    def release(self) -> bytes:
        held, self.held = self.held, []
        if len(held) <= TAIL:
            return b"".join(held)
        cut = len(held) - TAIL
        note = f"    │ … {cut} earlier line(s) of this output are in the log: `{self.where}`\n"
        return note.encode() + b"".join(held[-TAIL:])


def copy_log(
    path: Path,
    done: Callable[[], bool],
    out: BinaryIO | None = None,
    poll: float = 0.02,
    start: int = 0,
    lines: Lines | None = None,
    wait: Callable[[float], None] = time.sleep,
) -> int | None:
    """Copy the log to ``out`` from ``start`` until ``done()`` and the log is drained.

    ``wait(poll)`` between reads (``Worker.wait`` wakes early). Returns where it stopped
    reading, or None if ``out`` went away.
    """
    out = sys.stdout.buffer if out is None else out
    lines = lines or Lines()
    with open(path, "rb") as log:
        log.seek(start)
        while True:
            finished = done()
            chunk = log.read()
            text = lines.feed(chunk) if chunk else b""
            if finished and not chunk:
                text += lines.flush()
            if text:
                try:
                    out.write(text)
                    out.flush()
                except (BrokenPipeError, OSError, ValueError):
                    return None
            if finished and not chunk:
                return log.tell()
            if not chunk:
                wait(poll)


def report_lost(app: App, number: int, code: int | None, out: BinaryIO) -> None:
    """A worker that died without recording an outcome (killed) must not end the push silently."""
    live = app.live_release()
    text = (
        f"shipyard ▸ deploy #{number} stopped without an outcome (worker exit {code}); "
        f"{'live: ' + live if live else 'nothing is live'}; recovering it "
        f"(or run `shipyard recover {app.name}` on the host)\n"
    )
    with contextlib.suppress(OSError, ValueError):
        out.write(text.encode())
        out.flush()


def deploy(
    app: App,
    number: int,
    sha: str,
    ref: str,
    options: list[str],
    out: BinaryIO,
    spare: Spare | None = None,
) -> dict | None:
    """Run deploy ``number`` detached, copy its log to ``out``, return its outcome.

    A worker killed without an outcome is recovered (completed after its switch,
    closed before), detached like the worker, so the pusher going away does not
    stop that either. ``out`` going away never stops anything: the hook then
    waits for the outcome without copying.
    """
    worker = start(app, number, sha, ref, options, spare)
    log = history.log_path(app, number)
    lines = PushLines(app, number)
    offset = copy_log(log, worker.outcome_known, out, lines=lines, wait=worker.wait)
    while not worker.outcome_known():  # the pusher went away: wait anyway
        worker.wait(0.1)
    entry = history.recorded(app, number)
    while entry is None and worker.poll() is None:  # said so, yet not recorded: wait it out
        time.sleep(0.1)
        entry = history.recorded(app, number)
    if entry is None:
        recovery = spawn(
            app,
            number,
            ["recover", app.name, "--into-log", "--number", str(number)]
            + ["--sha", sha, "--ref", ref],
        )
        if offset is not None:
            report_lost(app, number, worker.returncode, out)
            copy_log(
                log,
                lambda: recovery.poll() is not None,
                out,
                start=offset,
                lines=PushLines(app, number),
            )
        recovery.wait()
        entry = history.recorded(app, number)
    return entry
