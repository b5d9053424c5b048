"""The app's public port: who holds it, and a refusal that names them."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from .app import App
from .errors import PhaseError

# --- ports ----------------------------------------------------------------------


def port_owner(port: int) -> str:
    """Who listens on a TCP port (best effort, from /proc): 'gunicorn (pid 123)' or ''."""
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
    if not inodes:
        return ""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            for fd in fds:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    name = Path(f"/proc/{pid}/comm").read_text().strip()
                    return f"{name} (pid {pid})"
        except OSError:
            continue
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
