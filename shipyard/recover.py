"""Interrupted deploys: completed, or closed, by the next holder of the deploy lock.

The process running a deploy keeps its note in ``run/deploy.lock`` up to date:
the deploy's number, commit, kind and options, the release live before it, and
the phase it is in with the release it makes live. A holder that ends normally
empties the note; one that is killed (SIGKILL, the OOM killer, a power cut)
leaves it behind, and flock(2) lets the next process take the lock at once.
That process — ``shipyard recover`` started by the killed deploy's post-receive
hook, or the next deploy or rollback — reads the note first and:

* stops what the dead deploy left running in its session (a build step, uv, a
  migration), so nothing of it races what comes next;
* **before the switch** (``current`` never moved): nothing of the deploy went
  live. It is recorded as ``interrupted`` at its phase; its release, if it got
  that far, stays ``building``: never counted by ``keep`` or ``rollback``, pruned
  by the next good deploy. A half-built venv was never renamed into ``venvs/``.
* **from the switch on** (``current`` points at its release): the point of no
  return was passed, so the deploy is completed — restart, verify, post-migrate,
  finish — with the same undo as any deploy: if that fails, the processes and
  ``current`` go back to the previous release and the deploy is ``failed``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from pathlib import Path

from . import deploy, engine, history, lock, peers, proxy
from . import programs as prov
from . import release_phases as rp
from .app import App
from .config import HostConfig, load_app_config, load_procfile
from .context import Deploy
from .errors import LockTimeout, ShipyardError
from .lock import owner_alive
from .report import Reporter


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _session_of(pid: str) -> int | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] == "Z":
        return None
    return int(fields[3])


def leftovers(note: dict) -> list[int]:
    """Processes the dead deploy's session still runs (its worker led a session of its own).

    Only when its session leader is gone and the machine was not rebooted since,
    so that a reused pid never names somebody else's processes.
    """
    sid = note.get("pid")
    if not note.get("session") or not isinstance(sid, int) or sid in (os.getpid(), os.getsid(0)):
        return []
    if note.get("boot") and note.get("boot") != boot_id():
        return []
    if _session_of(str(sid)) is not None:  # the leader lives: not the dead deploy
        return []
    me = os.getpid()
    return [
        int(pid)
        for pid in os.listdir("/proc")
        if pid.isdigit() and int(pid) != me and _session_of(pid) == sid
    ]


def stop_leftovers(note: dict, timeout: float = 10.0) -> int:
    found = leftovers(note)
    for pid in found:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_session_of(str(p)) is not None for p in found):
        time.sleep(0.05)
    return len(found)


def remove_strays(app: App) -> None:
    """Work-in-progress directories (``.tmp-…-<pid>``) whose process is dead."""
    for parent in (app.releases, app.venvs):
        if parent.is_dir():
            for stray in parent.glob(".t*-*"):
                if not owner_alive(stray.name):
                    shutil.rmtree(stray, ignore_errors=True)


def planned(app: App, host: HostConfig, release_id: str | None) -> list:
    """The programs a kept release runs (for handing the processes back to it)."""
    if not release_id:
        return []
    try:
        path = app.release_dir(release_id)
        config = load_app_config(path)
        procfile = load_procfile(path)
        wanted = prov.plan(
            procfile, config.processes, release_id, host.port, config.stop_grace, config.signals
        )
    except (ShipyardError, OSError):
        return []
    return list(wanted.values())


def _log_line(app: App, number: int, text: str) -> None:
    with contextlib.suppress(OSError), open(history.log_path(app, number), "a") as log:
        log.write(text + "\n")


def resume(
    app: App, host: HostConfig, held: lock.Held, out: Reporter, by: str, into_log: bool = False
) -> str | None:
    """Complete or close the deploy whose note ``held.stale`` holds.

    Unless ``out`` already writes into that deploy's log (``into_log``), a line there
    says what became of it.

    Returns None when there was nothing to do, else its outcome now: ``interrupted``
    (closed before its switch), ``live`` (completed) or ``failed`` (completing it
    failed and was undone).
    """
    stale = held.stale
    number = stale.get("deploy")
    if not isinstance(number, int) or not stale.get("sha"):
        held.handled = True  # nothing anyone could resume
        return None
    if any(e.get("deploy") == number for e in history.entries(app)):
        held.handled = True
        return None  # it recorded its outcome and died just before letting go of the lock
    # From now on the note is ours; if we die too, the next holder resumes the same deploy.
    held.replace(
        {
            **stale,
            "pid": os.getpid(),
            "session": os.getsid(0) == os.getpid(),
            "boot": boot_id(),
            "recovering": by,
        }
    )
    try:
        outcome = _resume(app, host, held, out, by, into_log, stale)
    except BaseException:
        held.handled = False  # leave it to the next holder, as we found it
        raise
    said = proxy.end_interrupted(app, stale)  # `-o maintenance`: off, however it ended
    if said:
        out.line(f"  ↻ {said}")
    return outcome


def _resume(
    app: App, host: HostConfig, held: lock.Held, out: Reporter, by: str, into_log: bool, stale: dict
) -> str:
    number = stale["deploy"]
    phase = stale.get("phase") or "start"
    rid = stale.get("release")
    stopped = stop_leftovers(stale)
    remove_strays(app)
    what = f"deploy #{number} ({str(stale['sha'])[:7]} by {stale.get('pusher', '?')})"
    left = f"; stopped {stopped} process(es) it left running" if stopped else ""
    out.line(f"  ↻ {what} was interrupted at {phase}{left}")
    live = app.live_release()
    verified = ("maintenance-off", "post-migrate", "finish")
    if rid and stale.get("peers") is not None and phase not in verified:
        outcome = go_back(app, host, out, by, stale)
        if not into_log:
            _log_line(app, number, f"shipyard ▸ interrupted at {phase}; {by}: every host went back")
        return outcome
    if phase in deploy.RESUME and rid and live == rid:
        out.line(f"  ↻ it had switched current to {rid}: completing it")
        ok = complete(app, host, held, out, by, stale)
        if not into_log:
            verdict = "completed: live" if ok else "completing it failed and was undone"
            _log_line(app, number, f"shipyard ▸ interrupted at {phase}; {by} resumed it: {verdict}")
        return "live" if ok else "failed"
    entry = {
        "deploy": number,
        "kind": stale.get("kind", "push"),
        "sha": stale["sha"],
        "ref": stale.get("ref"),
        "tag": stale.get("tag"),
        "pusher": stale.get("pusher"),
        "release": rid,
        "previous": stale.get("previous"),
        "reused": bool(stale.get("reused")),
        "start": stale.get("since"),
        "duration": None,
        "outcome": "interrupted",
        "failed_phase": phase,
        "phases": {},
        "options": stale.get("options") or {},
        "migrations": [],
        "recovered": {"by": by, "phase": phase, "at": time.time()},
    }
    history.record(app, entry)
    still = f"still live: {live}" if live else "nothing is live"
    if rid and live == rid and phase not in deploy.BEFORE_SWITCH:
        # e.g. killed during a many-host `rollout`: the other hosts are not ours to finish
        out.line(
            f"  ↻ it had switched current to {rid} but cannot be completed here; "
            f"recorded as interrupted at {phase}: redeploy with `shipyard deploy {app.name}`"
        )
        return "interrupted"
    out.line(f"  ↻ nothing of it went live ({still}); recorded as interrupted at {phase}")
    if not into_log:
        _log_line(app, number, f"shipyard ▸ interrupted at {phase}; closed by {by}; {still}")
    return "interrupted"


def from_note(app: App, host: HostConfig, out: Reporter, by: str, stale: dict) -> Deploy:
    """The interrupted deploy as its note describes it, to finish or undo it here."""
    d = Deploy.from_note(app, host, out, stale, by)
    d.maintenance_was_on = not proxy.turned_on_by(stale)  # `-o maintenance` found it on
    return d


def complete(
    app: App, host: HostConfig, held: lock.Held, out: Reporter, by: str, stale: dict
) -> bool:
    """Finish a deploy killed after its switch, from where it stopped (undo on failure)."""
    phase = stale["phase"]
    d = from_note(app, host, out, by, stale)
    d.journal = held
    done = list(deploy.RESUMED_UNDO)
    try:
        rp.load_undo(d)  # the processes that ran before, as restart wrote them down
        if d.manifest is None:
            raise ShipyardError(f"release {d.release_id} has no readable manifest")
    except (ShipyardError, OSError) as exc:
        d.timings["switch"] = 0.0
        engine.fail(d, engine.undo(d, done[-1], done, exc))
        return False
    if d.processes.before is None:  # killed before restart wrote them (or an older note)
        d.processes.before = planned(app, host, d.previous)
    plan = deploy.resume(d, phase)
    if deploy.RESTART in plan:
        d.processes.running = None  # restart runs again, handing over from what runs
    else:  # restart ran: its undo is owed if what follows fails
        done.append(deploy.RESTART)
    return engine.run(d, plan, done)


def go_back(app: App, host: HostConfig, out: Reporter, by: str, stale: dict) -> str:
    """A primary killed during its many-host rollout: not every host had verified, so every
    host goes back to the release it ran before, as it wrote down when it switched."""
    d = from_note(app, host, out, by, stale)
    rid = d.release_id
    if app.live_release() == rid:
        d.timings["rollout"] = 0.0
        with contextlib.suppress(ShipyardError, OSError):
            rp.load_undo(d)
        engine.revert(d, deploy.GO_BACK)
    elif not d.reused:
        rp.discard(d)
    lost = peers.go_back(app, host, rid, stale.get("peers") or [], out)
    engine.reset_branch(d)
    back = app.live_release()
    where = f"every host went back to {back}" if back else "nothing is live"
    if lost:
        where += f" (not {', '.join(lost)}, unreachable: `shipyard sync {app.name}` converges it)"
    message = f"interrupted during the rollout of {rid}; {where}"
    engine.record(d, "interrupted", 0.0, failed_phase="rollout", error=message, live=back)
    out.line(f"  ↻ {message}")
    return "interrupted"


def run(
    app: App,
    host: HostConfig,
    out: Reporter,
    by: str = "shipyard recover",
    into_log: bool = False,
    lost: dict | None = None,
) -> bool:
    """``shipyard recover APP``: resume what a killed deploy left, if the lock is free.

    ``lost`` (from the post-receive hook: number, sha, ref) names the deploy whose
    worker just died. If it left no note to resume (it died waiting for the lock,
    or before it), it is recorded here, so that every deploy has an outcome.
    """
    try:
        with lock.exclusive(
            app.deploy_lock, {"pid": os.getpid(), "since": time.time()}, timeout=0
        ) as held:
            outcome = resume(app, host, held, out, by, into_log) if held.stale else None
            if outcome is None and not lost:
                out.line(f"shipyard ▸ {app.name}: no interrupted deploy to recover")
    except LockTimeout:
        outcome = None
        if not lost:
            who = lock.describe(lock.holder(app.deploy_lock))
            out.line(f"shipyard ▸ {who} holds the deploy lock; it recovers what was interrupted")
    if lost:
        record_lost(app, lost, out)
    return outcome != "failed"


def record_lost(app: App, lost: dict, out: Reporter) -> None:
    """Record a deploy whose process ended without an outcome and without a note to resume."""
    number = lost["deploy"]
    if any(e.get("deploy") == number for e in history.entries(app)):
        return
    if lock.pending(lock.holder(app.deploy_lock)).get("deploy") == number:
        return  # its note waits in the lock: whoever takes it next resumes it
    with contextlib.suppress(OSError):  # a full disk: it stays "interrupted", unrecorded
        history.record(
            app,
            {
                "deploy": number,
                "kind": "push",
                "sha": lost.get("sha"),
                "ref": lost.get("ref"),
                "start": lost.get("since"),
                "duration": None,
                "outcome": "interrupted",
                "failed_phase": "start",
                "error": "its process ended without an outcome before its first phase "
                "(killed while waiting for the deploy lock, or failed to start)",
                "options": {},
                "migrations": [],
            },
        )
        out.line(
            f"shipyard ▸ deploy #{number} ended before its first phase; recorded as interrupted; "
            f"nothing of it went live"
        )
