"""The app's public port: who holds it, and a refusal that names them."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from .app import App
from .errors import PhaseError

# --- ports ----------------------------------------------------------------------


def listening_sockets(port: int) -> set[str]:
    """The TCP sockets listening on ``port``, as /proc/<pid>/fd links name them."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            listening = len(fields) > 9 and fields[3] == "0A"
            if listening and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    return inodes


def holds(pid: int | str, sockets: set[str]) -> bool:
    """Does process ``pid`` hold one of ``sockets`` open (False once it is gone)?"""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") in sockets:
                return True
        except OSError:  # closed meanwhile
            continue
    return False


def port_owner(port: int) -> str:
    """Who listens on a TCP port (best effort, from /proc): 'gunicorn (pid 123)' or ''."""
    inodes = listening_sockets(port)
    if not inodes:
        return ""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if holds(pid, inodes):
            try:
                name = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                continue
            return f"{name} (pid {pid})"
    return ""


def check_port_free(app: App, port: int, host: str = "0.0.0.0") -> None:
    """Before the first web process: is the port taken by something that is not ours?"""
    probe = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
    except OSError as exc:
        owner = port_owner(port)
        by = f" by {owner}" if owner else ""
        raise PhaseError(
            f"port {port} is already in use{by}: the web process cannot listen there",
            f"stop that program, or set `port` in {app.config_file} to a free port",
        ) from exc
    finally:
        probe.close()
