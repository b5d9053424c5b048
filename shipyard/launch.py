"""What a supervisor program runs: ``python -I -S …/shipyard/launch.py APP_DIR RELEASE TYPE``.

It reads the app's ``shared/.env`` (as python-dotenv does), puts the release's virtualenv
first on PATH, changes into the release and execs ``/bin/sh -c 'exec <command>'``: the pid
supervisord started becomes the program itself, running in the release it was started
for, whatever ``current`` points at by then.

What it needs from the release (the Procfile's command as the script ``--run``, for web
the socket paths) was decided when ``programs.conf`` was written (``programs.launch_options``:
a release never changes). So on the path of every restart this is a Python without ``site``
(``-S``: nor the editable install's finder) that imports the C modules it uses and three
small modules of shipyard's; what is rare (a ``.env`` beyond plain ``NAME=value`` lines,
root with a host config changed since, the options of a ``programs.conf`` written before
there were any) loads what it needs when it needs it.

A blue/green web instance (``--color``) also gets its sockets, the way systemd
socket activation hands them over (``LISTEN_FDS=2``, fds 3 and 4, which
gunicorn uses instead of its ``--bind`` addresses): fd 3 is the shared
listening socket, fetched from the port's holder (``shipyard/listen.py``),
fd 4 a private unix socket, ``run/web-<color>.<n>.sock``, for the health probe.

Its output (and the program's) goes through a stamper first (``shipyard/stamp.py``).
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__" and __package__ in (None, ""):  # run as a file: its package's dir
    sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import _socket  # noqa: E402 socket's C half: the module costs enum and selectors (~5–10 ms)
import fcntl  # noqa: E402
import time  # noqa: E402

from shipyard.envfile import read as read_env  # noqa: E402
from shipyard.environment import for_release  # noqa: E402
from shipyard.errors import ShipyardError  # noqa: E402
from shipyard.guard import check_not_root, config_stamp  # noqa: E402
from shipyard.stamp import start_stamper  # noqa: E402

# Exit status for "cannot even start": supervisord retries a few times, then FATAL.
EX_CONFIG = 78
LISTEN_FDS_START = 3
HOLDER_WAIT = 20.0
OPTIONS = ("--index", "--color", "--port", "--log", "--run", "--listen", "--probe", "--control")
OPTIONS += ("--root-ok",)
DROPPED = ("PYTHONPATH", "PYTHONSTARTUP", "PYTHONEXECUTABLE", "__PYVENV_LAUNCHER__")
DROPPED += ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "GUNICORN_FD")


def parse_args(argv: list[str]) -> dict[str, str]:
    """``APP_DIR RELEASE TYPE`` and ``--name value`` options, as programs.conf writes them."""
    words = list(argv)
    args: dict[str, str] = {}
    positional = []
    while words:
        word = words.pop(0)
        name, equals, value = word.partition("=")
        if name in OPTIONS:
            if not equals:
                if not words:
                    raise SystemExit(f"shipyard.launch: {name} needs a value")
                value = words.pop(0)
            args[name[2:].replace("-", "_")] = value
        elif word.startswith("--"):
            raise SystemExit(f"shipyard.launch: unknown option {word}")
        else:
            positional.append(word)
    if len(positional) != 3:
        raise SystemExit("usage: shipyard.launch APP_DIR RELEASE TYPE [--index N] …")
    args["app_dir"], args["release"], args["type"] = positional
    args.setdefault("index", "1")
    if not args["index"].isdigit() or args.get("color") not in (None, "blue", "green"):
        raise SystemExit("shipyard.launch: --index takes a number, --color blue or green")
    if "port" in args and not args["port"].isdigit():
        raise SystemExit("shipyard.launch: --port takes a number")
    return args


def decided_at_start(args: dict[str, str]) -> None:
    """The options of a program written before programs.conf carried them (its launcher was
    ``-m shipyard.launch`` then): worked out from the release now, as the writer does."""
    from shipyard.app import App
    from shipyard.programs import launch_options

    app_dir = os.path.abspath(args["app_dir"])
    app = App.at(os.path.basename(app_dir), os.path.dirname(app_dir))
    port = int(args["port"]) if "port" in args else None
    options, script = launch_options(
        app, args["release"], args["type"], args.get("color"), port, args["index"]
    )
    args.update(parse_args([args["app_dir"], args["release"], args["type"], *options]))
    args["run"] = script


def check_root(app_dir: str, root_ok: str | None) -> None:
    """The root guard (guard.py), as every pushed command has it: as root, only where the
    host config allows it; the stamp programs.conf carries spares parsing it while the file
    is the very one that allowed it."""
    if os.geteuid() != 0:
        return
    config = os.path.join(app_dir, "shipyard.toml")
    if root_ok and config_stamp(config) == root_ok:
        return
    from shipyard.app import App

    check_not_root(App.at(os.path.basename(app_dir), os.path.dirname(app_dir)))


def shared_env(app_dir: str) -> dict[str, str]:
    """``shared/.env``; python-dotenv (and so ``site``, which ``-S`` left out) only for a file
    beyond plain lines."""
    path = os.path.join(app_dir, "shared", ".env")
    try:
        return read_env(path)
    except ImportError:
        import site

        site.main()
        return read_env(path)


def process_env(
    app_dir: str, release: str, kind: str, index: int | str, port: int | str | None
) -> dict[str, str]:
    """What the program's environment is: release.command_env's, then the process's own."""
    release_dir = os.path.join(app_dir, "releases", release)
    shared = os.path.join(app_dir, "shared")
    env = for_release(
        os.environ, shared_env(app_dir), os.path.basename(app_dir), release_dir, shared
    )
    for name in DROPPED:
        env.pop(name, None)
    env["PYTHONUNBUFFERED"] = "1"
    env["SHIPYARD_PROCESS"] = f"{kind}.{index}"
    if port is not None:
        env["PORT"] = str(port)
    return env


def recv_fd(conn: _socket.socket) -> int | None:
    """The first descriptor sent with one message (socket.recv_fds, without the module)."""
    size = _socket.CMSG_LEN(4)
    _, ancillary, _, _ = conn.recvmsg(64, size)
    fds = [
        int.from_bytes(data[i : i + 4], sys.byteorder, signed=True)
        for level, kind, data in ancillary
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS
        for i in range(0, len(data) - len(data) % 4, 4)
    ]
    for extra in fds[1:]:
        os.close(extra)
    return fds[0] if fds else None


def fetch_listener(path: str, wait: float = HOLDER_WAIT) -> int:
    """The shared listening socket, from its holder (which may still be starting)."""
    deadline = time.monotonic() + wait
    while True:
        conn = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            conn.settimeout(5)
            conn.connect(str(path))
            fd = recv_fd(conn)
            if fd is not None:
                return fd
            raise ConnectionError("the holder sent no socket")
        except (FileNotFoundError, ConnectionError) as exc:
            if time.monotonic() > deadline:
                raise ShipyardError(
                    f"no listening socket from {path} after {wait:.0f}s ({exc})",
                    "is the listen program running? see `shipyard processes`",
                ) from None
            time.sleep(0.1)
        finally:
            conn.close()


def private_socket(path: str) -> int:
    try:  # noqa: SIM105 (contextlib is ~2 ms of this start)
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
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


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    kind, index, color, release = args["type"], args["index"], args.get("color"), args["release"]
    where = f" ({color})" if color else ""
    start_stamper(release, args.get("log"))  # every line supervisord captures: time, release
    app_dir = os.path.abspath(args["app_dir"])
    release_dir = os.path.join(app_dir, "releases", release)
    try:
        if "/" in release or release.startswith("."):
            raise ShipyardError(f"invalid release name {release!r}")
        if "run" not in args:
            decided_at_start(args)
        check_root(app_dir, args.get("root_ok"))
        env = process_env(app_dir, release, kind, index, args.get("port"))
        script = args["run"]
        if "listen" in args:
            shared = fetch_listener(args["listen"])
            private = private_socket(args["probe"])
            hand_over([shared, private], env)
            if "control" in args:  # gunicorn ≥ 25.1: its own, not the per-user default
                script += f" --control-socket {args['control']}"
        os.chdir(release_dir)
    except (ShipyardError, OSError) as exc:
        print(f"shipyard: cannot start {kind}.{index}{where}: {exc}", file=sys.stderr)
        sys.exit(EX_CONFIG)
    print(f"shipyard ▸ {kind}.{index}{where} starting on releases/{release}: {script}", flush=True)
    os.execve("/bin/sh", ["/bin/sh", "-c", script], env)


if __name__ == "__main__":
    main()
