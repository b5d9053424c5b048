"""One-off commands in a release: ``shipyard run APP [--release ID] -- COMMAND [ARGS…]``.

The command runs as the user running shipyard (over SSH: the deploy user),
in the live release (or a kept one), with its virtualenv first on PATH and
the app's ``shared/.env`` in the environment, as the processes get them. Its
exit status is shipyard's. Its output is streamed through the deploy output's
masking (values of secret-looking settings become ``********``): by line on
pipes, by chunk under a terminal, where the command gets a pty of its own
(``ssh -t … shipyard run mysite -- python manage.py shell``).

It does not start while a deploy of the app is migrating its database: it
waits for the migration to end, or fails at once with ``--no-wait``.
"""

from __future__ import annotations

import codecs
import contextlib
import fcntl
import json
import os
import pty
import select
import signal
import sys
import termios
import threading
import time
import tty
from collections.abc import Callable
from pathlib import Path

from . import command, lock, release
from .app import App
from .config import load_host_config
from .errors import ShipyardError
from .guard import check_not_root
from .hosts import Fleet
from .operate import find_release
from .report import Masker

MIGRATING = ("migrate", "post-migrate")
FLUSH_AFTER = 0.1  # seconds without a newline before a partial line is shown anyway
NOT_FOUND = 127


def target(app: App, name: str | None) -> Path:
    """The release to run in: the live one, or the kept release ``name`` names."""
    rid = find_release(app, name) if name else app.live_release()
    if rid is None:
        raise ShipyardError(f"nothing is live in {app.name} yet", "push first, or give --release")
    problem = release.unusable(app, rid)
    if problem:
        raise ShipyardError(f"cannot run in it: {problem}", f"see `shipyard releases {app.name}`")
    return app.release_dir(rid)


def migrating(app: App) -> dict | None:
    """The note of the deploy migrating the app's database right now, if one is."""
    path = app.deploy_lock
    if not lock.is_held(path):
        return None
    note = lock.holder(path)
    return note if note.get("phase") in MIGRATING else None


def wait_for_migrations(app: App, wait: bool, say: Callable[[str], None]) -> None:
    note = migrating(app)
    if note is None:
        return
    what = f"{lock.describe(note)} is migrating {app.name}'s database"
    if not wait:
        raise ShipyardError(f"{what}: not run", "try again when it is done, or leave out --no-wait")
    say(f"shipyard ▸ waiting: {what}")
    while migrating(app) is not None:
        time.sleep(0.2)


class Stream:
    """Bytes from the command to our output, masked; by line, or by chunk for a terminal."""

    def __init__(self, out: int | Callable[[str], None], mask: Masker, by_line: bool) -> None:
        self.out = out
        self.mask = mask
        self.by_line = by_line
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.pending = ""
        self.since = time.monotonic()

    def feed(self, data: bytes) -> None:
        self.pending += self.decoder.decode(data, final=not data)
        if not self.by_line or not data:
            self.flush()
            return
        cut = self.pending.rfind("\n") + 1
        if cut:
            self._write(self.pending[:cut])
            self.pending = self.pending[cut:]
            self.since = time.monotonic()

    def tick(self) -> None:
        if self.pending and time.monotonic() - self.since >= FLUSH_AFTER:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self._write(self.pending)
            self.pending = ""
        self.since = time.monotonic()

    def _write(self, text: str) -> None:
        if callable(self.out):  # a receiver's answer (``serve``)
            self.out(self.mask(text))
            return
        data = self.mask(text).encode()
        with contextlib.suppress(BrokenPipeError):
            while data:
                data = data[os.write(self.out, data) :]


def exit_code(status: int) -> int:
    """A wait status as a shell reports it: the exit code, or 128 + the signal."""
    return shell_code(os.waitstatus_to_exitcode(status))


def shell_code(code: int) -> int:
    """A return code (negative: killed by that signal) as a shell reports it."""
    return 128 - code if code < 0 else code


def masked(
    argv: list[str],
    cwd: Path,
    env: dict[str, str],
    out: int | Callable[[str], None],
    err: int | Callable[[str], None],
    mask: Masker,
    **options,
) -> command.Result:
    """``command.run`` with every line of its output masked on its way to ``out``/``err``."""
    to_out, to_err = Stream(out, mask, by_line=True), Stream(err, mask, by_line=True)
    return command.run(
        argv,
        cwd,
        env,
        on_line=lambda text, _: to_out._write(text),
        on_error_line=lambda text, _: to_err._write(text),
        **options,
    )


def piped(argv: list[str], cwd: Path, env: dict[str, str], mask: Masker) -> int:
    """Run with stdin inherited and stdout/stderr masked by line (``command.run``); it stays
    in our foreground job, since it may read the terminal, and gets our signals."""
    out, err = sys.stdout.fileno(), sys.stderr.fileno()
    result = masked(
        argv, cwd, env, out, err, mask, stdin=None, own_group=False, forward_signals=True
    )
    if not result.started:
        print(f"shipyard: {argv[0]}: command not found in the release", file=sys.stderr)
    return shell_code(result.exited)


def interactive(argv: list[str], cwd: Path, env: dict[str, str], mask: Masker) -> int:
    """Run under a pty of its own; our terminal raw, its size passed on, output masked."""
    pid, master = pty.fork()
    if pid == 0:  # the child: session leader with the pty as its terminal
        try:
            os.chdir(cwd)
            os.execvpe(argv[0], argv, env)
        except OSError as exc:
            os.write(2, f"shipyard: {argv[0]}: {exc.strerror}\r\n".encode())
        os._exit(NOT_FOUND)
    stdin = sys.stdin.fileno()

    def resize(*_: object) -> None:
        with contextlib.suppress(OSError):
            size = fcntl.ioctl(stdin, termios.TIOCGWINSZ, b"\0" * 8)
            fcntl.ioctl(master, termios.TIOCSWINSZ, size)

    resize()
    saved_winch = signal.signal(signal.SIGWINCH, resize)
    saved = termios.tcgetattr(stdin)
    out = Stream(sys.stdout.fileno(), mask, by_line=False)
    try:
        tty.setraw(stdin, termios.TCSANOW)  # keep what was typed ahead
        with command.forwarding(pid):
            reading = [master, stdin]
            while master in reading:
                try:
                    ready, _, _ = select.select(reading, [], [])
                except InterruptedError:
                    continue
                if master in ready:
                    try:
                        data = os.read(master, 65536)
                    except OSError:  # EIO: the command closed its terminal
                        data = b""
                    out.feed(data)
                    if not data:
                        reading.remove(master)
                if stdin in ready:
                    data = os.read(stdin, 65536)
                    if data:
                        os.write(master, data)
                    else:
                        reading.remove(stdin)
            _, status = os.waitpid(pid, 0)
    finally:
        termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        signal.signal(signal.SIGWINCH, saved_winch)
        os.close(master)
    return exit_code(status)


def split(words: list[str]) -> tuple[list[str], dict[str, str | bool]]:
    """(command, options) from what follows APP (argparse leaves them together): --release ID,
    --host NAME, --no-wait."""
    valued = ("--release", "--host")
    if "--" in words:
        options, command = words[: words.index("--")], words[words.index("--") + 1 :]
    else:  # no --: the options are the leading words that look like them
        cut = 0
        while cut < len(words) and words[cut].startswith("--"):
            cut += 2 if words[cut] in valued else 1
        options, command = words[:cut], words[cut:]
    found: dict[str, str | bool] = {}
    while options:
        word = options.pop(0)
        name, eq, value = word.partition("=")
        if word == "--no-wait":
            found["no-wait"] = True
        elif name in valued and (eq or options):
            found[name[2:]] = value if eq else options.pop(0)
        else:
            raise ShipyardError(
                f"unexpected {word!r} before --",
                "usage: shipyard run APP [--release ID] [--host NAME] -- COMMAND",
            )
    return command, found


def run(
    app: App,
    words: list[str],
    release_name: str | None = None,
    wait: bool = True,
    host_name: str | None = None,
) -> int:
    """``shipyard run``: the command's exit status (on the primary, or on ``--host NAME``)."""
    argv, found = split(words)
    release_name = str(found.get("release") or release_name or "") or None
    host_name = str(found.get("host") or host_name or "") or None
    wait = wait and not found.get("no-wait")
    if not argv:
        raise ShipyardError(
            "no command given", f"e.g. shipyard run {app.name} -- python manage.py check"
        )
    host = load_host_config(app.config_file)
    check_not_root(app, host)
    if host_name:
        member = Fleet.load(app, host).pick(host_name)[0]
        if member.peer is not None:
            return remote(member, argv, release_name, wait)
    cwd = target(app, release_name)
    shared = release.shared_env(app)
    env = release.command_env(app, cwd, shared)
    env["SHIPYARD_PROCESS"] = "run"
    wait_for_migrations(app, wait, lambda text: print(text, file=sys.stderr, flush=True))
    sys.stdout.flush()
    if sys.stdin.isatty() and sys.stdout.isatty():
        return interactive(argv, cwd, env, Masker(shared))
    return piped(argv, cwd, env, Masker(shared))


# --- on another host: through its receiver (``run`` route) ---------------------------------


def remote(member, argv: list[str], release_name: str | None, wait: bool) -> int:
    """Run on a peer through its receiver: output streamed back, its exit status returned.

    No terminal and no stdin travel (the receiver is not a shell): an interactive
    command runs on that host with ``ssh -t deploy@HOST shipyard run …``."""
    if sys.stdin.isatty() and sys.stdout.isatty():
        print(
            f"shipyard ▸ {member.label}: no terminal through the receiver "
            f"(for one: ssh -t to that host)",
            file=sys.stderr,
            flush=True,
        )
    sys.stdout.flush()

    def on_line(line: str) -> None:
        which, _, payload = line.partition(" ")
        with contextlib.suppress(ValueError):
            text = json.loads(payload)
            stream = sys.stderr if which == "e" else sys.stdout
            stream.write(text)
            stream.flush()

    answer = member.peer.call(
        "POST",
        "run",
        {"argv": argv, "release": release_name, "wait": wait},
        on_line=on_line,
        idempotent=False,
    )
    if not answer.get("ok"):
        raise ShipyardError(member.said(str(answer.get("error") or "run failed")))
    return int(answer.get("code", 1))


def serve(app: App, data: dict, stream) -> dict:
    """The receiver's ``run`` route: the command here, its output as ``o``/``e`` lines."""
    argv = data.get("argv")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise ShipyardError("argv must be a non-empty list of strings")
    if any("\0" in a for a in argv):
        raise ShipyardError("an argument contains a NUL byte")
    name = data.get("release")
    cwd = target(app, str(name) if name else None)
    shared = release.shared_env(app)
    env = release.command_env(app, cwd, shared)
    env["SHIPYARD_PROCESS"] = "run"
    lock_ = threading.Lock()

    def sink(which: str) -> Callable[[str], None]:
        def write(text: str) -> None:
            with lock_:
                stream.write(f"{which} {json.dumps(text)}\n")

        return write

    wait_for_migrations(app, bool(data.get("wait", True)), lambda t: sink("e")(t + "\n"))
    mask = Masker(shared)
    # the primary went away (stream.gone): TERM, then KILL
    result = masked(argv, cwd, env, sink("o"), sink("e"), mask, cancelled=lambda: stream.gone)
    if not result.started:
        sink("e")(f"shipyard: {argv[0]}: command not found in the release\n")
        return {"ok": True, "code": NOT_FOUND}
    return {"ok": True, "code": shell_code(result.exited)}
