"""Scheduled jobs: the app's ``[cron]``, run by the host's own cron daemon.

At each deploy's switch the deploy user's crontab gets this app's block,
generated from the new live release's ``[cron]`` (``crontab -``; other lines and
other apps' blocks are kept); the switch's undo puts the previous release's
block back, so a rollback restores the old jobs and a release that never goes
live changes none. Each crontab line runs one entry point,
``shipyard cron APP exec NAME``: the live release's venv, ``.env`` and cwd (the
one-off command path, ``release.command_env``), a lock per job (a run that finds
the previous one still going is skipped and says so), the job's time limit,
its output appended to ``<app>/logs/cron-NAME.log``.

With peers, a job runs on one host: the one its ``host`` names, else the
primary (a receiver's switch installs only the jobs that name its host).
"""

from __future__ import annotations

import calendar
import contextlib
import fcntl
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from . import lock, release
from .app import App
from .config import CronJob, HostConfig, cron_values, load_app_config
from .errors import CronError, ShipyardError
from .stamp import stamp_line

STOP_GRACE = 10  # seconds between TERM and KILL for a job past its limit
LOG_LIMIT = 10 * 1024 * 1024  # a job's log is rotated to .1 beyond this


def logs_dir(app: App) -> Path:
    return app.dir / "logs"


def log_path(app: App, name: str) -> Path:
    """Where a job's runs write (what `shipyard logs APP --process cron` reads)."""
    return logs_dir(app) / f"cron-{name}.log"


def state_dir(app: App) -> Path:
    return app.run / "cron"


def host_name(host: HostConfig) -> str:
    return host.name or socket.gethostname()


def jobs_here(jobs: dict[str, CronJob], host: HostConfig, peer: bool) -> list[CronJob]:
    """The jobs this host runs: those naming it, and (on the primary) those naming no host."""
    me = host_name(host)
    return [j for j in jobs.values() if j.host == me or (j.host is None and not peer)]


# --- the crontab --------------------------------------------------------------


def marks(app: App) -> tuple[str, str]:
    return f"# shipyard {app.dir} begin", f"# shipyard {app.dir} end"


def entry(app: App, job: CronJob) -> str:
    """One crontab line: the schedule, then shipyard's entry point for the job."""
    command = shlex.join(
        [sys.executable, "-m", "shipyard", "--root", str(app.root), "cron", app.name]
        + ["exec", job.name]
    )
    line = f"{job.schedule} {command} >>{shlex.quote(str(log_path(app, job.name)))} 2>&1"
    return line.replace("%", "\\%")  # cron reads an unescaped % as a newline


def block(app: App, jobs: list[CronJob]) -> list[str]:
    if not jobs:
        return []
    begin, end = marks(app)
    note = "# generated at each deploy from the live release's [cron]; edits here are replaced"
    return [begin, note, *(entry(app, j) for j in jobs), end]


def merged(current: str, app: App, jobs: list[CronJob]) -> str:
    """``current`` with this app's block replaced (or added, or removed); the rest kept."""
    begin, end = marks(app)
    lines, out, inside = current.splitlines(), [], False
    for line in lines:
        if line == begin:
            inside = True
        elif line == end and inside:
            inside = False
        elif not inside:
            out.append(line)
    while out and not out[-1].strip():
        out.pop()
    new = block(app, jobs)
    if out and new:
        out.append("")
    out += new
    return "\n".join(out) + "\n" if out else ""


def crontab_bin() -> str:
    found = shutil.which("crontab") or next(
        (p for p in ("/usr/bin/crontab",) if os.access(p, os.X_OK)), None
    )
    if not found:
        raise CronError(
            "crontab is not installed, so the app's [cron] jobs cannot be scheduled",
            "install Debian's cron (`apt-get install cron`; `shipyard provision` does)",
        )
    return found


def read_crontab() -> str:
    result = subprocess.run([crontab_bin(), "-l"], capture_output=True, text=True)
    if result.returncode:
        if "no crontab" in result.stderr.lower():
            return ""
        why = " / ".join(result.stderr.strip().splitlines()[:2]) or f"exit {result.returncode}"
        raise CronError(f"`crontab -l` failed: {why}")
    return result.stdout


def install(app: App, jobs: list[CronJob]) -> bool:
    """Make this app's block of the user's crontab list ``jobs``; True if it changed.

    Read-modify-write under a lock in the deploy root, so two apps deploying at once
    do not drop each other's block.
    """
    installed = state_dir(app) / "installed.json"
    if not jobs and not installed.exists():
        return False  # this app never scheduled anything here: leave the crontab (and cron) be
    if jobs:  # cron's shell opens the log before shipyard runs: its directory must exist
        logs_dir(app).mkdir(parents=True, exist_ok=True)
    with open(app.root / ".crontab.lock", "a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        current = read_crontab()
        new = merged(current, app, jobs)
        if new != current:
            argv = [crontab_bin(), "-"] if new else [crontab_bin(), "-r"]
            result = subprocess.run(argv, input=new, capture_output=True, text=True)
            if result.returncode:
                why = " / ".join((result.stderr or result.stdout).strip().splitlines()[-3:])
                raise CronError(
                    f"`crontab -` refused the new crontab: {why or f'exit {result.returncode}'}",
                    f"the jobs are unchanged; see `shipyard cron {app.name}`",
                )
    state_dir(app).mkdir(parents=True, exist_ok=True)
    (state_dir(app) / "error.json").unlink(missing_ok=True)
    if jobs:
        installed.write_text(json.dumps({"jobs": [j.name for j in jobs], "time": time.time()}))
    else:
        installed.unlink(missing_ok=True)
    return new != current


def apply(d: Any, release_id: str | None) -> str:
    """At a switch (or its undo): schedule the jobs of ``release_id``. Never raises.

    Returns a few words for the switch's line ("" when there are no jobs either way);
    a crontab that cannot be installed is a warning, not a failed deploy.
    """
    app = d.app
    try:
        config = load_app_config(app.release_dir(release_id)) if release_id else None
        jobs = jobs_here(config.cron if config else {}, d.host, getattr(d, "peer", False))
        if not install(app, jobs):
            return f"; {len(jobs)} cron job(s)" if jobs else ""
        return f"; cron: {', '.join(j.name for j in jobs) or 'none'}"
    except Exception as exc:  # noqa: BLE001 - a crontab never fails (or blocks) a deploy
        message = exc.message if isinstance(exc, ShipyardError) else f"{type(exc).__name__}: {exc}"
        d.out.warn(f"cron: {message}; the jobs are unchanged")
        with contextlib.suppress(OSError):
            state_dir(app).mkdir(parents=True, exist_ok=True)
            (state_dir(app) / "error.json").write_text(
                json.dumps({"error": message, "release": release_id, "time": time.time()})
            )
        return "; cron jobs NOT updated"


# --- one run --------------------------------------------------------------------


@dataclass
class Run:
    """What the last run of a job did (``run/cron/NAME.json``)."""

    start: float
    end: float | None = None
    exit: int | None = None
    release: str | None = None
    timed_out: bool = False
    skipped: float | None = None  # when a run was last skipped (the previous still running)


def last_run(app: App, name: str) -> dict:
    try:
        return json.loads((state_dir(app) / f"{name}.json").read_text())
    except (OSError, ValueError):
        return {}


def _save(app: App, name: str, data: dict) -> None:
    path = state_dir(app) / f"{name}.json"
    tmp = path.with_name(f".{name}.json.{os.getpid()}")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def stamp(ts: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def open_log(app: App, name: str) -> TextIO:
    logs_dir(app).mkdir(parents=True, exist_ok=True)
    path = log_path(app, name)
    with contextlib.suppress(OSError):
        if path.stat().st_size > LOG_LIMIT:
            os.replace(path, path.with_name(path.name + ".1"))
    return open(path, "a", buffering=1)  # noqa: SIM115 - the caller closes it


def find_job(app: App, name: str) -> tuple[str, CronJob]:
    """The live release and its job ``name``."""
    live = app.live_release()
    if not live:
        raise CronError(f"{app.name} has nothing live: no job runs", "deploy it first")
    jobs = load_app_config(app.release_dir(live)).cron
    if name not in jobs:
        known = ", ".join(sorted(jobs)) or "none"
        raise CronError(
            f"no cron job {name!r} in the live release of {app.name}",
            f"jobs: {known} (see `shipyard cron {app.name}`)",
        )
    return live, jobs[name]


def execute(app: App, name: str, echo: TextIO | None = None) -> int:
    """Run job ``name`` of the live release once, as cron does; its exit status.

    Output goes to the job's log (and to ``echo`` too, for `shipyard cron APP run`).
    """
    state_dir(app).mkdir(parents=True, exist_ok=True)
    with open_log(app, name) as log:

        def say(text: str) -> None:
            # stamped like the processes' lines, so `shipyard logs APP --process cron` merges it
            log.write(stamp_line(f"cron {name}: {text}", app.live_release() or "-") + "\n")
            if echo:
                print(f"{stamp()} cron {name}: {text}", file=echo, flush=True)

        try:
            live, job = find_job(app, name)
        except ShipyardError as exc:
            say(f"not run: {exc}")
            return 1
        lock = open(state_dir(app) / f"{name}.lock", "a+")  # noqa: SIM115 - held for the run
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "?"
            say(f"skipped: the previous run ({holder}) is still running")
            _save(app, name, {**last_run(app, name), "skipped": time.time()})
            lock.close()
            return 0
        with lock:
            lock.truncate(0)
            lock.write(f"pid {os.getpid()}, since {stamp()}")
            lock.flush()
            directory = app.release_dir(live)
            env = release.command_env(app, directory, release.shared_env(app))
            started = time.time()
            run = Run(start=started, release=live)
            _save(app, name, run.__dict__)
            say(f"start (release {live}, limit {job.timeout:g}s): {job.run}")
            sink = subprocess.PIPE if echo else log
            child = subprocess.Popen(
                job.run,
                shell=True,
                cwd=directory,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: the limit stops all it started
                text=True,
            )
            if echo:
                copier = _tee(child, log, echo)
            try:
                code = child.wait(timeout=job.timeout)
            except subprocess.TimeoutExpired:
                run.timed_out = True
                code = _stop(child)
            if echo:
                copier.join()
            run.end, run.exit = time.time(), code
            _save(app, name, run.__dict__)
            took = run.end - started
            if run.timed_out:
                say(
                    f"stopped after its limit of {job.timeout:g}s (exit {code}); raise "
                    f"`timeout` in [cron] {name} if it needs longer"
                )
            else:
                say(f"exit {code} in {took:.1f}s")
            return code if code >= 0 else 128 - code


def _tee(child: subprocess.Popen, log: TextIO, echo: TextIO):
    import threading

    def copy() -> None:
        for line in child.stdout:
            log.write(line)
            echo.write(line)
            echo.flush()

    thread = threading.Thread(target=copy, daemon=True)
    thread.start()
    return thread


def _stop(child: subprocess.Popen) -> int:
    """TERM the job's process group, then KILL it; its exit status."""
    for sig, wait in ((signal.SIGTERM, STOP_GRACE), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, sig)
        try:
            return child.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    return child.wait()


# --- listing ----------------------------------------------------------------------


def next_run(schedule: str, after: float | None = None) -> float | None:
    """When cron next starts ``schedule`` (local time, as the daemon), after ``after``."""
    fields = cron_values(schedule)
    if fields is None:
        return None
    minutes, hours, days, months, weekdays = fields
    text = schedule.split()  # a macro restricts at most one of the two day fields
    both = len(text) == 5 and not text[2].startswith("*") and not text[4].startswith("*")
    t = time.localtime((after or time.time()) // 60 * 60 + 60)
    year, month, day, hour, minute = t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min
    for _ in range(366 * 5 * 24):  # bounded: a schedule like Feb 30 never runs
        if month not in months:
            month, day, hour, minute = month + 1, 1, 0, 0
            if month > 12:
                year, month = year + 1, 1
            continue
        if day > calendar.monthrange(year, month)[1]:
            month, day, hour, minute = month + 1, 1, 0, 0
            if month > 12:
                year, month = year + 1, 1
            continue
        weekday = (calendar.weekday(year, month, day) + 1) % 7  # cron: 0 is Sunday
        day_ok = (
            (day in days or weekday in weekdays) if both else (day in days and weekday in weekdays)
        )
        if not day_ok:
            day, hour, minute = day + 1, 0, 0
            continue
        if hour not in hours:
            hour, minute = hour + 1, 0
            if hour > 23:
                day, hour = day + 1, 0
            continue
        later = [m for m in sorted(minutes) if m >= minute]
        if not later:
            hour, minute = hour + 1, 0
            if hour > 23:
                day, hour = day + 1, 0
            continue
        return time.mktime((year, month, day, hour, later[0], 0, 0, 0, -1))
    return None


def listing(app: App, host: HostConfig) -> dict:
    """`shipyard cron APP`: each job of the live release, when it runs next, how it last went."""
    live = app.live_release()
    jobs = load_app_config(app.release_dir(live)).cron if live else {}
    try:
        installed = json.loads((state_dir(app) / "installed.json").read_text())["jobs"]
    except (OSError, ValueError, KeyError):
        installed = []
    try:
        error = json.loads((state_dir(app) / "error.json").read_text())
    except (OSError, ValueError):
        error = None
    rows = []
    for job in jobs.values():
        last = last_run(app, job.name)
        here = job.name in installed
        rows.append(
            {
                "name": job.name,
                "schedule": job.schedule,
                "run": job.run,
                "timeout": job.timeout,
                "host": job.host or "primary",
                "scheduled_here": here,
                "next": next_run(job.schedule) if here else None,
                "last": last.get("start"),
                "exit": last.get("exit"),
                "duration": (
                    round(last["end"] - last["start"], 3)
                    if last.get("end") and last.get("start")
                    else None
                ),
                "timed_out": last.get("timed_out", False),
                "running": bool(last.get("start"))
                and last.get("end") is None
                and _held(app, job.name),
                "skipped": last.get("skipped"),
                "log": str(log_path(app, job.name)),
            }
        )
    return {
        "app": app.name,
        "host": host_name(host),
        "release": live,
        "jobs": rows,
        "error": error,
        "daemon": daemon_running(),
    }


def daemon_running() -> bool:
    """Is a cron daemon running on this host (else nothing scheduled ever starts)?"""
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and (entry / "comm").read_text().strip() in ("cron", "crond"):
                return True
    return False


def _held(app: App, name: str) -> bool:
    return lock.is_held(state_dir(app) / f"{name}.lock")


def render(data: dict) -> str:
    if not data["jobs"]:
        return (
            f"{data['app']}: no cron jobs in the live release (add a [cron] table to shipyard.toml)"
        )
    lines = [f"{data['app']}: cron jobs of releases/{data['release']} on {data['host']}"]
    lines.append(
        f"  {'job':<18} {'schedule':<16} {'next':<17} {'last':<17} {'exit':>5} {'took':>7}"
    )
    for row in data["jobs"]:
        when = (
            time.strftime("%Y-%m-%d %H:%M", time.localtime(row["next"]))
            if row["next"]
            else f"on {row['host']}"
        )
        last = (
            time.strftime("%Y-%m-%d %H:%M", time.localtime(row["last"])) if row["last"] else "never"
        )
        status = "run" if row["running"] else "" if row["exit"] is None else str(row["exit"])
        if row["timed_out"]:
            status = "limit"
        took = f"{row['duration']:.1f}s" if row["duration"] is not None else "-"
        lines.append(
            f"  {row['name']:<18} {row['schedule']:<16} {when:<17} {last:<17} {status:>5} {took:>7}"
        )
    lines.append(f"  logs: {Path(data['jobs'][0]['log']).parent}/cron-NAME.log")
    if not data.get("daemon", True):
        lines.append("  ! no cron daemon runs on this host: start it (systemctl enable --now cron)")
    if data.get("error"):
        lines.append(f"  ! the crontab was not updated: {data['error']['error']}")
    return "\n".join(lines)
