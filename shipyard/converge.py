"""The handover of processes from what runs to what is wanted (``converge``): web blue/green
behind the health check, the other types stopped and started, the port's socket holders."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import replace
from pathlib import Path

from supervisor.states import ProcessStates

from . import exchange
from . import programs as prov
from .app import App
from .config import HostConfig, load_app_config
from .errors import ProcessFailed, ShipyardError
from .health import Health, final_answer, health_for, health_hint, probe
from .ports import check_port_free, holds, listening_sockets
from .programs import Listener, Program
from .supervisord import Supervisor, handover_lock, tail

STARTING, RUNNING = ProcessStates.STARTING, ProcessStates.RUNNING
CRASHED = (ProcessStates.BACKOFF, ProcessStates.EXITED, ProcessStates.FATAL)
START_TIMEOUT = 30.0  # a non-web process must reach RUNNING (startsecs=1) within this
STARTSECS = float(prov.STARTSECS)  # … and have run as itself this long (programs.conf's)
# the launcher as programs.conf names it (its file), as it did before (-m …), and the shim's
LAUNCHERS = (b"shipyard/launch.py", prov.LAUNCHER.encode(), b"shipyard.provision.launch")
ACCEPT_WAIT = 1.0  # seconds an old gunicorn master may take to close the shared socket on TERM
SAME_ANSWERS = 3  # the same unwanted final answer this many times in a row fails at once


# --- the handover ---------------------------------------------------------------


def _crashed(
    sv: Supervisor, program: Program, info: dict, offsets: dict[int, int]
) -> ProcessFailed:
    index = int(info["name"].rsplit(".", 1)[1])
    log = program.log(sv.app, index)
    if info.get("exitstatus"):
        how = f"exit status {info['exitstatus']}"
    else:
        how = info.get("spawnerr") or info["statename"]
        how = how.replace(" (process log may have details)", "")
    return ProcessFailed(
        f"{info['name']} on releases/{program.release} exited on start ({how})",
        f"its log: {log}",
        output=tail(log, offsets.get(index, 0)),
    )


def probe_address(sv: Supervisor, program: Program, index: int, tcp: bool) -> Path | int | None:
    """Where to probe one instance: its private unix socket, or (no handover) the public port."""
    if tcp:
        return program.port
    path = program.socket(sv.app, index)
    return path if path is not None and path.exists() else None  # None: not started far enough


def wait_healthy(
    sv: Supervisor, program: Program, health: Health, offsets: dict[int, int], tcp: bool
) -> None:
    """Probe each instance (its private socket, or the public port) until it answers ``health``."""
    app = sv.app
    pending = set(range(1, program.count + 1))
    started = time.monotonic()
    deadline = started + health.timeout
    wrong, last = 0, "no answer yet"
    final, same = None, 0  # the last answer and how many times in a row it came
    while pending:
        infos = sv.infos()
        for ns in program.namespecs(app):
            info = infos.get(ns)
            if info is None:
                raise ProcessFailed(f"{ns} is not in supervisord any more")
            if info["state"] in CRASHED:
                raise _crashed(sv, program, info, offsets)
        pause = 0.1
        for index in sorted(pending):
            address = probe_address(sv, program, index, tcp)
            if address is None:
                continue
            remaining = max(0.5, deadline - time.monotonic())
            try:
                answer = probe(address, health.path, min(5.0, remaining), health.headers())
            except (ConnectionRefusedError, FileNotFoundError):
                continue  # still booting: not listening yet
            except OSError as exc:
                wrong, last = wrong + 1, f"{type(exc).__name__}: {exc}"
                pause = health.interval
                continue
            if answer.status in health.accepts:
                pending.discard(index)
                continue
            to = f" → {answer.location}" if answer.location else ""
            wrong, last = wrong + 1, f"got {answer.status}{to}"
            pause = health.interval
            same = same + 1 if answer == final else 1
            final = answer
            if final_answer(answer, health) and same >= SAME_ANSWERS:
                log = program.log(app, index)
                raise ProcessFailed(
                    f"{program.type}.{index} on releases/{program.release} failed the health "
                    f"check (GET {health.path} with Host: {health.host or 'localhost'}: {last}, "
                    f"wanted {health.wanted}; an answer that waiting will not change)",
                    health_hint(answer, health, "shipyard.toml"),
                    output=tail(log, offsets.get(index, 0)),
                )
        if not pending:
            return
        now = time.monotonic()
        if now >= deadline or wrong > health.retries:
            index = min(pending)
            log = program.log(app, index)
            waited = f"{now - started:.1f}s" if now < deadline else f"{health.timeout:g}s"
            hint = f"its log: {log}"
            if final is not None and final.status == 404 and last == "got 404":  # answered 404
                hint = f"{health_hint(final, health, 'shipyard.toml')}; {hint}"
            raise ProcessFailed(
                f"{program.type}.{index} on releases/{program.release} failed the health check "
                f"(GET {health.path}: {last}, wanted {health.wanted}, after {waited})",
                hint,
                output=tail(log, offsets.get(index, 0)),
            )
        time.sleep(pause)


def launched(pid: int) -> bool:
    """Has the launcher exec'd the program yet (RUNNING only means up for startsecs)?"""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # gone (supervisord will say so) or not ours to read
    return not any(launcher in command for launcher in LAUNCHERS)


def wait_running(sv: Supervisor, programs: list[Program], offsets: dict[str, dict[int, int]]):
    """Wait until every process has been up as itself for ``STARTSECS``; fail fast on a crash.

    supervisord's RUNNING (up for ``startsecs``) counts from the spawn, the launcher's start:
    on a busy machine a program that dies as soon as it runs could pass for started. So the
    time counts from when the pid is seen past the launcher's exec, and a new pid is a crash.
    """
    deadline = time.monotonic() + START_TIMEOUT
    waiting = {ns: p for p in programs for ns in p.namespecs(sv.app)}
    since: dict[str, tuple[int, float]] = {}  # namespec → (pid, first seen as itself)
    while waiting:
        infos = sv.infos()
        now = time.monotonic()
        for ns, program in list(waiting.items()):
            info = infos.get(ns)
            if info is None:
                raise ProcessFailed(f"{ns} is not in supervisord any more")
            if info["state"] in CRASHED:
                raise _crashed(sv, program, info, offsets[program.name])
            if info["state"] not in (STARTING, RUNNING) or not launched(info["pid"]):
                continue
            pid, seen = since.setdefault(ns, (info["pid"], now))
            if pid != info["pid"]:  # it exited and supervisord started it again
                raise _crashed(sv, program, info, offsets[program.name])
            if info["state"] == RUNNING and now - seen >= STARTSECS:
                del waiting[ns]
        if waiting and time.monotonic() > deadline:
            raise ProcessFailed(
                f"{', '.join(waiting)} did not reach RUNNING in {START_TIMEOUT:.0f}s"
            )
        if waiting:
            time.sleep(0.05)


def pids(sv: Supervisor, programs: list[Program]) -> dict[str, int]:
    """The pid supervisord started for each process of the programs (gunicorn's masters),
    by namespec."""
    infos = sv.infos()
    return {ns: infos[ns]["pid"] for p in programs for ns in p.namespecs(sv.app) if ns in infos}


def stop_accepting(masters: list[int], sockets: set[str], wait: float = ACCEPT_WAIT) -> None:
    """Wait until gunicorn's masters, sent TERM, have closed the shared socket, then send
    their workers the TERM a master sends them, so the answer comes once no old process
    takes a new request.

    A master closes the socket first and signals its workers after; a worker still accepts
    until it has that signal, so a request sent just after the answer could reach the old
    release while the master was not yet scheduled again (seen on a loaded machine: a
    rollback's answer, then the code it went back from). Signalled here, a worker leaves its
    accept loop as soon as it runs (a pending signal is handled before it returns from its
    wait); one busy with a request finishes it and accepts no other, as on its master's
    TERM, which follows (a second TERM changes nothing). Its exit (tens of ms, an
    interpreter's teardown) is not waited for."""
    workers = [child for pid in masters if pid for child in children(pid)]
    deadline = time.monotonic() + wait
    while sockets and any(holds(pid, sockets) for pid in masters if pid):
        if time.monotonic() > deadline:
            return
        time.sleep(0.002)
    for pid in workers:
        with contextlib.suppress(OSError):  # gone already
            os.kill(pid, signal.SIGTERM)


def children(pid: int) -> list[int]:
    """The processes ``pid`` has forked and not yet reaped (a gunicorn master's workers)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(child) for child in f.read().split()]
    except (OSError, ValueError):
        return []


def health_of(app: App, host: HostConfig, release: str) -> Health:
    try:
        config = load_app_config(app.release_dir(release))
    except ShipyardError:
        return health_for({}, host)
    return health_for(config.health, host)


def converge(
    sv: Supervisor,
    wanted: dict[str, Program],
    restart_same: bool | frozenset[str] = True,
    retire: bool = False,
) -> tuple[list[Program], list[str]]:
    """Bring supervisord from what runs (the state file) to ``wanted``, web without downtime.

    With ``restart_same`` false (switching back), a program already running
    exactly what is wanted is left alone; a set of types restarts only those
    (`shipyard restart --process`). With ``retire``, the old web is sent TERM
    but not waited for: the new one serves alone from then on, and whoever
    ``reap``s next (the deploy, after its answer, or the next handover) waits
    for its graceful stop. Returns the programs now running and a summary per type.
    """
    with handover_lock(sv.app):
        sv.reap()  # what the previous handover stopped without waiting is gone first
        return _converge(sv, wanted, restart_same, retire)


def _converge(
    sv: Supervisor, wanted: dict[str, Program], restart_same: bool | frozenset[str], retire: bool
) -> tuple[list[Program], list[str]]:
    app, host = sv.app, sv.host

    def again(kind: str) -> bool:
        return restart_same is True or (not isinstance(restart_same, bool) and kind in restart_same)

    running = sv.load_state()
    summary: list[str] = []
    leaving: list[Program] = []  # stopped together with the other types, once the web is over

    # 1. web: blue/green from the port's shared socket, else stop-then-start.
    old_web = [p for p in running if p.type == "web"]
    new_web = wanted.get("web")
    if new_web is None:
        leaving = old_web
        summary.extend(["web stopped"] if old_web else [])
    elif not again("web") and any(p.same_as(new_web) and sv.is_up(p) for p in old_web):
        summary.append(f"web ×{new_web.count} kept")
    else:
        health = health_of(app, host, new_web.release)
        want = new_web.listener()  # None: not gunicorn, no handover
        infos = sv.infos()  # one answer for what is up, until something is stopped
        # Whatever holds the new port otherwise (an old non-handover web, a socket on another
        # address, web instances whose socket holder died) must go first: a short
        # interruption, only when that setup changes or broke.
        holder_lost = any(x == want and not sv.is_up(x, infos) for x in sv.listeners)
        clash = [
            p
            for p in old_web
            if p.port == new_web.port and (want is None or p.listener() != want or holder_lost)
        ]
        clash_sockets = [
            x for x in sv.listeners if x.port == new_web.port and (x != want or holder_lost)
        ]
        interrupted = bool(clash and any(sv.is_up(p, infos) for p in clash))
        if clash or clash_sockets:
            sv.stop(*clash, *clash_sockets)
            running = [p for p in running if p not in clash]
            sv.apply(running, [x for x in sv.listeners if x not in clash_sockets])
            infos = sv.infos()
        serving = [p for p in running if p.type == "web" and sv.is_up(p, infos)]
        if want is not None:
            ensure_listener(sv, running, want, infos)
        elif not any(p.port == new_web.port for p in serving):
            check_port_free(app, new_web.port)
        used = {p.color for p in running if p.type == "web"}
        color = next((c for c in prov.COLORS if c not in used), prov.COLORS[0])
        program = replace(new_web, color=color if want else None)
        stale = [p for p in running if p.name == program.name]  # both colours left by a crash
        if stale:
            sv.stop(*stale)
            running = [p for p in running if p not in stale]
        sv.apply([*running, program])
        offsets = sv.start(program)
        try:
            wait_healthy(sv, program, health, offsets, tcp=want is None)
        except ShipyardError:
            sv.stop(program)
            sv.apply(running)
            drop_unused_listeners(sv, running)
            raise
        leaving = [p for p in running if p.type == "web"]
        running.append(program)
        how = f" on {color}" if want else " (restarted: not gunicorn, no handover)"
        if interrupted and want:
            why = "its socket holder had died" if holder_lost else "the port's set-up changed"
            how += f" (stopped first: {why})"
        summary.append(f"web ×{program.count} healthy ({health}){how}")

    # 2. the old web (TERM: it drains) and every other type stop together, gracefully;
    #    then the other types start on the new release.
    others_old = [p for p in running if p.type != "web"]
    others_new = [p for t, p in wanted.items() if t != "web"]
    kept = [
        p
        for p in others_new
        if not again(p.type) and any(p.same_as(o) and sv.is_up(o) for o in others_old)
    ]
    # the old web taking its socket from the new one's holder can drain after the answer
    shared = {p.listener() for p in running if p.type == "web" and p not in leaving}
    retired = [p for p in leaving if retire and p.listener() is not None and p.listener() in shared]
    if retired:
        running = [p for p in running if p not in retired]
        old = list(pids(sv, retired).values())
        sv.retire(running, retired)
        stop_accepting(old, listening_sockets(retired[0].port))
    stopping = [p for p in leaving if p not in retired]
    stopping += [o for o in others_old if not any(o.same_as(k) for k in kept)]
    starting = [p for p in others_new if p not in kept]
    if stopping:
        sv.stop(*stopping)
        running = [p for p in running if p not in stopping]
        sv.apply(running)
    drop_unused_listeners(sv, running)
    if starting:
        sv.apply([*running, *starting])
        offsets = {p.name: sv.start(p) for p in starting}
        running.extend(starting)
        wait_running(sv, starting, offsets)
    for program in others_new:
        verb = "kept" if program in kept else "running"
        summary.append(f"{program.type} ×{program.count} {verb}")
    gone = {o.type for o in others_old} - {p.type for p in others_new}
    summary.extend(f"{t} stopped" for t in sorted(gone))
    return running, summary


def ensure_listener(
    sv: Supervisor, running: list[Program], want: Listener, infos: dict[str, dict] | None = None
) -> None:
    """The holder of the web port's socket is up (started, after a port check, if not)."""
    existing = next((x for x in sv.listeners if x == want), None)
    if existing is not None and sv.is_up(existing, infos):
        return
    if existing is not None:
        sv.stop(existing)
    check_port_free(sv.app, want.port, want.host)
    sv.apply(running, [x for x in sv.listeners if x != want] + [want])
    offsets = sv.start(want)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            exchange.connect(str(want.socket(sv.app)), 5).close()
            return
        except OSError:
            pass
        info = sv.infos().get(want.namespecs(sv.app)[0])
        if info is None or info["state"] in CRASHED or time.monotonic() > deadline:
            log = want.log(sv.app)
            sv.stop(want)
            sv.apply(running, [x for x in sv.listeners if x != want])
            raise ProcessFailed(
                f"could not listen on {want.host}:{want.port}",
                f"its log: {log}",
                output=tail(log, offsets.get(1, 0)),
            )
        time.sleep(0.05)


def drop_unused_listeners(sv: Supervisor, running: list[Program]) -> None:
    """Stop the socket holders no web program of ``running`` takes its socket from."""
    used = {p.listener() for p in running if p.type == "web"}
    unused = [x for x in sv.listeners if x not in used]
    if unused:
        sv.stop(*unused)
        sv.apply(running, [x for x in sv.listeners if x in used])
