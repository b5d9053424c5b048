"""The web port's holder: ``python -m shipyard.listen APP_DIR --host H --port P``.

It binds and listens on H:P once, and hands that very socket (SCM_RIGHTS) to
every web instance that asks on ``run/listen-P.sock``. Blue and green thus
accept from one shared queue: when the old instance is sent TERM it stops
accepting and finishes what it has, and every connection still queued is
accepted by the new one. Nothing is reset, whatever the kernel version or
privileges (no SO_REUSEPORT, no sysctl), and an instance that fails while
booting takes no queued connection down with it, since it had accepted none.

The holder itself never accepts a connection on the port.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import sys
from pathlib import Path

BACKLOG = 2048


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(BACKLOG)
    return sock


def serve(listener: socket.socket, path: Path) -> None:
    """Hand ``listener`` to whoever connects to the unix socket ``path`` (same user only)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    old = os.umask(0o177)
    try:
        control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        control.bind(str(path))
    finally:
        os.umask(old)
    control.listen(64)
    while True:
        conn, _ = control.accept()
        with conn, contextlib.suppress(OSError):
            conn.settimeout(5)
            socket.send_fds(conn, [b"shipyard-listen 1\n"], [listener.fileno()])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="shipyard.listen")
    parser.add_argument("app_dir", type=Path)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        listener = bind(args.host, args.port)
    except OSError as exc:
        print(f"shipyard: cannot listen on {args.host}:{args.port}: {exc.strerror}", flush=True)
        sys.exit(2)
    path = args.app_dir / "run" / f"listen-{args.port}.sock"
    print(
        f"shipyard ▸ listening on {args.host}:{args.port}; web instances get it from {path}",
        flush=True,
    )
    serve(listener, path)


if __name__ == "__main__":
    main()
