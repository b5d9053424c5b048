"""`shipyard processes`: what runs, from which release (/proc/<pid>/cwd), for how long."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from .app import App
from .errors import AppError, Fault, ShipyardError
from .supervisord import Supervisor, host_of

# --- `shipyard processes` -------------------------------------------------------


def _uptime(seconds: float) -> str:
    seconds = int(max(0, seconds))
    days, rest = divmod(seconds, 86400)
    text = f"{rest // 3600}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}d {text}" if days else text


def status(app: App) -> list[dict]:
    """What runs: one row per process with state, pid, uptime and the release it runs."""
    sv = Supervisor(app, host_of(app))
    programs = sv.load_state()
    if not sv.reachable():
        if not programs and sv.settings.embedded:
            return []
        raise AppError(
            f"supervisord for {app.name} is not running (socket {sv.settings.socket})",
            f"start it with `shipyard processes {app.name} --start`"
            if sv.settings.embedded
            else "start the system supervisord",
        )
    infos = sv.infos()
    live = app.live_release()
    rows = []
    for listener in sv.listeners:
        info = infos.get(listener.namespecs(app)[0], {})
        pid = info.get("pid") or 0
        rows.append(
            {
                "process": listener.name,
                "program": listener.group(app),
                "state": info.get("statename", "MISSING"),
                "pid": pid,
                "uptime": info["now"] - info["start"] if pid else 0,
                "release": None,
                "live": None,
                "color": None,
                "port": listener.port,
                "address": f"{listener.host}:{listener.port}",
            }
        )
    for program in programs:
        for ns in program.namespecs(app):
            info = infos.get(ns, {})
            pid = info.get("pid") or 0
            release = program.release
            if pid:
                with contextlib.suppress(OSError):
                    release = release_of(app, os.readlink(f"/proc/{pid}/cwd"))
            rows.append(
                {
                    "process": ns.split(":", 1)[1],
                    "program": program.group(app),
                    "state": info.get("statename", "MISSING"),
                    "pid": pid,
                    "uptime": info["now"] - info["start"] if pid else 0,
                    "release": release,
                    "live": release == live,
                    "color": program.color,
                    "port": program.port,
                }
            )
    return rows


def release_of(app: App, cwd: str) -> str:
    """The release a process whose cwd is ``cwd`` runs: the release dir or a directory in it."""
    base = os.path.realpath(app.releases) + os.sep
    return cwd[len(base) :].split(os.sep, 1)[0] if cwd.startswith(base) else Path(cwd).name


def serving(app: App) -> list[str] | None:
    """The releases the app's processes run in (their /proc/<pid>/cwd); None if unknown."""
    try:
        rows = status(app)
    except (ShipyardError, OSError, Fault):
        return None
    return sorted({r["release"] for r in rows if r["release"] is not None and r["pid"]})


def format_status(app: App, rows: list[dict]) -> list[str]:
    sv = Supervisor(app, host_of(app))
    kind = "embedded" if sv.settings.embedded else "system"
    if not rows:
        return [f"{app.name}: no processes (nothing with a Procfile deployed yet)"]
    lines = [
        f"{app.name}: supervisord ({kind}) at {sv.settings.socket}",
        f"  {'PROCESS':<12} {'STATE':<9} {'PID':>7}  {'UPTIME':>9}  RELEASE",
    ]
    for row in rows:
        if row["release"] is None:  # the web port's socket holder
            lines.append(
                f"  {row['process']:<12} {row['state']:<9} {row['pid'] or '-':>7}  "
                f"{_uptime(row['uptime']) if row['pid'] else '-':>9}  "
                f"(holds {row['address']} for the web processes)"
            )
            continue
        extra = []
        if row["color"]:
            extra.append(row["color"])
        if row["port"]:
            extra.append(f":{row['port']}")
        extra.append("live" if row["live"] else "NOT LIVE")
        lines.append(
            f"  {row['process']:<12} {row['state']:<9} {row['pid'] or '-':>7}  "
            f"{_uptime(row['uptime']) if row['pid'] else '-':>9}  {row['release']}"
            f"  ({', '.join(extra)})"
        )
    return lines
