"""The app's processes under supervisord: restart onto the new release, verify, switch back.

Everything goes through supervisord's XML-RPC interface on its unix socket
(``supervisord.rpc``), never through ``supervisorctl``.

restart
    The web process is handed over blue/green: the new release starts as the
    *other* colour, taking connections from the same listening socket (held
    by the port's ``listen`` program, see shipyard/listen.py), is probed on
    its private unix socket until the health check passes, and only then is
    the old colour sent TERM (gunicorn drains in-flight requests; what is still
    queued goes to the new one; KILL after ``stop_grace``). A deploy does not
    wait for it to exit: its worker does after the answer (``settle``), or the
    next handover does first. Other types are stopped (TERM, KILL after
    ``stop_grace``), waited for, and started on the new release.
    If anything fails, the processes are put back as they were before the
    phase reports the failure.
verify
    Every process must be RUNNING with the pid restart saw, in the new release
    (``/proc/<pid>/cwd``) with the release's virtualenv (the interpreter it was
    started as, resolved through ``.venv``), and the public port must answer
    the health check.
restart_previous
    The undo: the same handover, back to the previous release.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

from supervisor.states import ProcessStates

from . import fault_injection
from . import programs as prov
from .context import Deploy
from .converge import converge, health_of, pids
from .counts import counts_for  # the host's counts (`shipyard scale`) win
from .errors import ProcessFailed, ShipyardError
from .health import public_status
from .programs import Program
from .report import Skip
from .supervisord import Supervisor, handover_lock, tail

STARTING, RUNNING = ProcessStates.STARTING, ProcessStates.RUNNING


# --- the phases -----------------------------------------------------------------


def wanted_programs(d: Deploy) -> dict[str, Program]:
    prov.check_counts(d.procfile, d.config.processes, "shipyard.toml")
    counts = counts_for(d.app, d.procfile, d.config.processes)
    if d.host.web == 0:  # a worker host runs no web, whatever the counts say
        counts["web"] = 0
    return prov.plan(
        d.procfile, counts, d.release_id, d.host.port, d.config.stop_grace, d.config.signals
    )


def _previous_programs(d: Deploy) -> dict[str, Program]:
    return {p.type: replace(p, color=None) for p in d.processes.before or []}


def restart(d: Deploy) -> str:
    """Hand the processes over to the new release; on failure put back what ran before."""
    wanted = wanted_programs(d)
    sv = Supervisor(d.app, d.host)
    before = sv.load_state()
    if not wanted and not before:
        return Skip("no Procfile processes")
    if "no-restart" in d.options:
        return Skip("-o no-restart: processes left as they were")
    how = sv.ensure()
    if d.processes.before is None:  # a recovery presets the previous release's
        d.processes.before = before
    if d.manifest is not None:  # the undo's half of the journal: see deploy.load_undo
        undo = d.manifest.undo or {}
        d.manifest.undo = {**undo, "processes": [p.to_dict() for p in d.processes.before]}
        d.manifest.save(d.release)
    try:
        running, summary = converge(sv, wanted, retire=can_retire(d))
    except ShipyardError as exc:
        try:
            converge(sv, _previous_programs(d), restart_same=False)
        except ShipyardError as again:
            exc.hint = f"{exc.hint}; and putting the previous processes back failed: {again}"
        else:
            what = "the previous release kept serving" if before else "nothing was running"
            exc.hint = f"{what}; {exc.hint}" if exc.hint else what
        raise
    d.processes.running = running
    d.processes.pids = pids(sv, running)
    if how.startswith("started ("):
        summary.insert(0, f"supervisord {how}")
    return ", ".join(summary) if summary else "no processes"


def can_retire(d: Deploy) -> bool:
    """May restart leave the old web to stop after the answer? Only when someone waits for it
    then (``settle``) and ``finish`` keeps its release anyway (the previous one, keep ≥ 2):
    a release a process runs from is not pruned, so with ``keep = 1`` it waits as before."""
    old = [p for p in d.processes.before or [] if p.type == "web"]
    return d.processes.settle_later and d.keep >= 2 and all(p.release == d.previous for p in old)


def settle(d: Deploy) -> None:
    """After the deploy's answer: wait for the old web that restart sent TERM to be gone.

    Outside the deploy lock, under the handover lock: a next deploy goes on meanwhile and
    waits for it only at its own restart (its ``converge`` reaps first), and if this
    process dies, that is who waits for it.
    """
    if not d.processes.settle_later or d.processes.running is None:
        return
    fault_injection.point(d.app.run, "settle", "start", d.number)
    sv = Supervisor(d.app, d.host)
    try:
        with handover_lock(d.app):
            sv.reap()
    except (ShipyardError, OSError) as exc:  # the outcome is out: the log says it
        d.out.warn(f"the previous processes did not stop cleanly: {exc}")


def load_undo(d: Deploy, undo: dict) -> None:
    """The processes restart handed over, as its manifest note says (another process's undo)."""
    if "processes" in undo:
        d.processes.before = [Program.from_dict(p) for p in undo["processes"]]
        d.processes.running = Supervisor(d.app, d.host).load_state()  # what runs now


def restart_previous(d: Deploy) -> None:
    """Undo of restart: hand the processes back to the release that ran before."""
    if d.processes.running is None:
        return
    started = time.monotonic()
    sv = Supervisor(d.app, d.host)
    previous = _previous_programs(d)
    _, summary = converge(sv, previous, restart_same=False)
    d.processes.running = None
    release = next(iter(previous.values())).release if previous else None
    where = f"releases/{release}" if release else "nothing (no processes ran before)"
    done = ", ".join(summary) or "nothing to do"
    d.out.line(f"  ↩ processes back on {where}: {done} in {time.monotonic() - started:.2f}s")


def verify(d: Deploy) -> str:
    """The processes run the new release with its venv, and the public port answers."""
    running: list[Program] = d.processes.running or []
    if not running:
        if "no-restart" in d.options and d.procfile:
            return Skip("-o no-restart: processes not checked")
        return Skip("no processes to check")
    sv = Supervisor(d.app, d.host)
    infos = sv.infos()
    release = d.release
    venv = (release / ".venv").resolve()
    checked = 0
    for program in running:
        for ns in program.namespecs(d.app):
            index = int(ns.rsplit(".", 1)[1])
            info = infos.get(ns)
            log = program.log(d.app, index)
            if info is None or info["state"] not in (STARTING, RUNNING):
                state = info["statename"] if info else "missing"
                raise ProcessFailed(f"{ns} is {state}, not RUNNING", output=tail(log, 0))
            expected = d.processes.pids.get(ns)
            if expected and info["pid"] != expected:
                raise ProcessFailed(
                    f"{ns} restarted since the handover (pid {expected} → {info['pid']})",
                    f"it probably crashed; its log: {log}",
                    output=tail(log, 0),
                )
            problem = check_process(info["pid"], release, venv, program.compound)
            if problem:
                raise ProcessFailed(f"{program.type}.{index} (pid {info['pid']}) {problem}")
            checked += 1
    detail = f"{checked} process(es) in releases/{d.release_id} with .venv → {venv.name[:6]}"
    web = next((p for p in running if p.type == "web"), None)
    if web is not None:
        health = health_of(d.app, d.host, web.release)
        status = public_status(web.port, health)
        if status not in health.accepts:
            raise ProcessFailed(f"port {web.port} answers GET {health.path} with {status}")
        detail += f"; :{web.port} GET {health.path} {status}"
    return detail


def check_process(pid: int, release: Path, venv: Path, compound: bool) -> str:
    """'' when pid runs in ``release`` with its venv's interpreter; else what is wrong."""
    proc = Path("/proc") / str(pid)
    try:
        cwd = os.readlink(proc / "cwd")
    except OSError as exc:
        return f"cannot be inspected: {exc.strerror}"
    real = os.path.realpath(release)
    if cwd != real and not cwd.startswith(real + os.sep):  # below it: `gunicorn --chdir backend`
        return f"runs in {cwd}, not in {release}"
    if compound:
        return ""  # a shell running a pipeline: the shell is not the app's interpreter
    try:
        argv = (proc / "cmdline").read_bytes().split(b"\0")
        exe = os.path.realpath(proc / "exe")
        environ = (proc / "environ").read_bytes().split(b"\0")
    except OSError as exc:
        return f"cannot be inspected: {exc.strerror}"
    if not Path(exe).name.startswith(("python", "pypy")):
        return ""  # not a Python program: no interpreter to check
    program = os.fsdecode(argv[0]) if argv and argv[0] else ""
    if "/" not in program:
        path = next(
            (os.fsdecode(e[5:]) for e in environ if e.startswith(b"PATH=")), os.defpath
        ).split(":")
        found = [Path(p) / program for p in path if p and (Path(p) / program).is_file()]
        program = str(found[0]) if found else program
    elif not os.path.isabs(program):
        program = os.path.join(cwd, program)
    bindir = os.path.realpath(os.path.dirname(program)) if "/" in program else ""
    if bindir == str(venv / "bin") or exe.startswith(f"{venv}/"):
        return ""
    return f"runs {program or '?'} ({exe}), not the release's virtualenv {venv}"
