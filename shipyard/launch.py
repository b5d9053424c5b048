"""What a supervisor program runs: ``python -m shipyard.launch APP_DIR RELEASE TYPE``.

It reads the command for TYPE from that release's Procfile and the app's
``shared/.env`` (python-dotenv), puts the release's virtualenv first on PATH,
changes into the release and execs ``/bin/sh -c 'exec <command>'``: the pid
supervisord started becomes the program itself, running in the release it was
started for, whatever ``current`` points at by then.

A blue/green web instance (``--color``) also gets its sockets, the way systemd
socket activation hands them over (``LISTEN_FDS=2``, fds 3 and 4, which
gunicorn uses instead of its ``--bind`` addresses): fd 3 is the shared
listening socket, fetched from the port's holder (``shipyard/listen.py``),
fd 4 a private unix socket, ``run/web-<color>.<n>.sock``, for the health probe.

Its output (and the program's) goes through a stamper first (``shipyard/stamp.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import socket
import sys
import time
from pathlib import Path

from .app import App
from .config import parse_procfile
from .errors import ShipyardError
from .programs import (
    control_socket,
    gunicorn_version,
    is_compound,
    is_gunicorn,
    listen_socket,
    logs_dir,
    probe_socket,
    shell_script,
)
from .release import command_env, shared_env
from .stamp import start_stamper

# Exit status for "cannot even start": supervisord retries a few times, then FATAL.
EX_CONFIG = 78
LISTEN_FDS_START = 3
HOLDER_WAIT = 20.0


def process_env(app: App, release: Path, kind: str, index: int, port: int | None) -> dict[str, str]:
    env = command_env(app, release, shared_env(app))
    for name in ("PYTHONPATH", "PYTHONSTARTUP", "PYTHONEXECUTABLE", "__PYVENV_LAUNCHER__"):
        env.pop(name, None)
    for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "GUNICORN_FD"):
        env.pop(name, None)
    env["PYTHONUNBUFFERED"] = "1"
    env["SHIPYARD_PROCESS"] = f"{kind}.{index}"
    if port is not None:
        env["PORT"] = str(port)
    return env


def fetch_listener(path: Path, wait: float = HOLDER_WAIT) -> int:
    """The shared listening socket, from its holder (which may still be starting)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(5)
                conn.connect(str(path))
                _, fds, _, _ = socket.recv_fds(conn, 64, 1)
            if fds:
                return fds[0]
            raise ConnectionError("the holder sent no socket")
        except (FileNotFoundError, ConnectionError) as exc:
            if time.monotonic() > deadline:
                raise ShipyardError(
                    f"no listening socket from {path} after {wait:.0f}s ({exc})",
                    "is the listen program running? see `shipyard processes`",
                ) from None
            time.sleep(0.1)


def private_socket(path: Path) -> int:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    sock.listen(128)
    return sock.detach()


def hand_over(fds: list[int], env: dict[str, str]) -> None:
    """Put ``fds`` at 3, 4, … (inheritable) and announce them as systemd does."""
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100) for fd in fds]
    for fd in fds:
        os.close(fd)
    for i, fd in enumerate(high):
        os.dup2(fd, LISTEN_FDS_START + i, inheritable=True)
        os.close(fd)
    env["LISTEN_FDS"] = str(len(fds))
    env["LISTEN_PID"] = str(os.getpid())


def web_extra(app: App, release: Path, color: str, index: int) -> str:
    version = gunicorn_version(release / ".venv")
    if version and version >= (25, 1):  # its own control socket, not the per-user default
        return f" --control-socket {control_socket(app, color, index)}"
    return ""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="shipyard.launch")
    parser.add_argument("app_dir", type=Path)
    parser.add_argument("release")
    parser.add_argument("type")
    parser.add_argument("--index", type=int, default=1)
    parser.add_argument("--color", choices=("blue", "green"))
    parser.add_argument("--port", type=int)
    args = parser.parse_args(argv)
    where = f" ({args.color})" if args.color else ""
    name = f"{args.type}-{args.color}" if args.color else args.type  # as render_program names it
    log = logs_dir(App.at(args.app_dir.name, args.app_dir.parent)) / f"{name}.{args.index}.log"
    start_stamper(args.release, log)  # every line supervisord captures gets a time and the release
    try:
        app = App.at(args.app_dir.name, args.app_dir.parent)
        release = app.release_dir(args.release)
        procfile = parse_procfile((release / "Procfile").read_text(), "Procfile")
        if args.type not in procfile:
            raise ShipyardError(f"releases/{args.release}/Procfile has no `{args.type}:` entry")
        command = procfile[args.type]
        env = process_env(app, release, args.type, args.index, args.port)
        extra = ""
        if args.color and args.port and is_gunicorn(command) and not is_compound(command):
            shared = fetch_listener(listen_socket(app, args.port))
            private = private_socket(probe_socket(app, args.color, args.index))
            hand_over([shared, private], env)
            extra = web_extra(app, release, args.color, args.index)
        text = shell_script(command, extra)
        os.chdir(release)
    except (ShipyardError, OSError) as exc:
        print(f"shipyard: cannot start {args.type}.{args.index}{where}: {exc}", file=sys.stderr)
        sys.exit(EX_CONFIG)
    print(
        f"shipyard ▸ {args.type}.{args.index}{where} starting on releases/{args.release}: "
        f"{command}",
        flush=True,
    )
    os.execve("/bin/sh", ["/bin/sh", "-c", text], env)


if __name__ == "__main__":
    main()
