"""A numbered deploy's turn at its app: the deploy lock, the recovery of a holder that died,
then superseded (a newer push deploys) or run.

Above the plans (deploy.py) and recovery (recover.py): the push worker (hooks/worker.py,
detached) and ``shipyard deploy``/``rollback`` (operate.py, in the foreground) call
``execute``.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable

from . import deploy, engine, guard, lock, notify, recover, release, supervise
from .context import Deploy
from .errors import ShipyardError
from .report import Masker


def title(d: Deploy) -> str:
    what = "rollback" if d.kind == "rollback" else "deploy"
    text = f"{what} #{d.number}: {d.ref.removeprefix('refs/heads/')} {d.short} by {d.pusher}"
    message = d.options.get("message")
    return f"{text}: {message}" if message else text


def journal_info(d: Deploy) -> dict:
    """The deploy lock's note: who holds it, and what a recovery needs to finish the deploy."""
    return {
        "deploy": d.number,
        "sha": d.sha,
        "pusher": d.pusher,
        "since": time.time(),
        "pid": os.getpid(),
        # a detached worker leads its own session: a recovery stops what it left running
        "session": os.getsid(0) == os.getpid(),
        "boot": recover.boot_id(),
        "kind": d.kind,
        "ref": d.ref,
        "tag": d.tag,
        "options": d.options,
        "previous": d.app.live_release(),
        "phase": None,
        "recoverable": True,  # if this process dies holding the lock, the next holder resumes
    }


def execute(d: Deploy, reported: Callable[[], None] | None = None) -> bool:
    """Take the app's deploy lock and run the deploy, unless a newer push superseded it.

    A deploy that died holding the lock left its note there: it is finished or
    cleaned up first (``recover``), so this one starts from a consistent host.
    ``reported`` is called once the outcome is recorded and its last line written (the push
    hook answers git then); what ``finish`` pruned is deleted after it and after the lock.
    """
    with contextlib.suppress(ShipyardError, OSError):  # checkout reports a .env that won't parse
        d.out.mask = Masker(release.shared_env(d.app))  # e.g. a secret pasted into -o message=
    d.out.title(title(d))
    problem = guard.root_problem(d.app, d.host)
    if problem:  # proc-receive and `shipyard deploy` refuse first; this is the last word
        d.out.line(f"    hint: {guard.root_hint(d.app)}")
        engine.reset_branch(d)
        engine.record(d, "failed", 0.0, error=problem)
        d.out.final(f"refused: {problem}", good=False)
        return False
    for note in d.notes:
        d.out.warn(note)
    with lock.exclusive(
        d.app.deploy_lock,
        journal_info(d),
        on_wait=lambda who: d.out.line(f"  … waiting for {lock.describe(who)}"),
        on_still_waiting=lambda who, s: d.out.line(
            f"  … still waiting ({s:.0f}s) for {lock.describe(who)}"
        ),
        heartbeat=d.out.heartbeat,
    ) as held:
        if held.stale:
            recover.resume(d.app, d.host, held, d.out, by=f"deploy #{d.number}")
        held.replace(journal_info(d))  # `previous` as it is now that the lock is ours
        d.journal = held
        tip = engine.branch_tip(d.app, d.ref)
        if tip != d.sha:
            engine.record(d, "superseded", 0.0, superseded_by=tip)
            d.out.final(
                f"superseded: {d.ref.removeprefix('refs/heads/')} is now "
                f"{(tip or 'deleted')[:7]}; the newest push deploys",
                good=True,
            )
            return True
        notify.deploy_event(d, "started", 0.0, {})
        d.trash = []
        d.processes.settle_later = True  # the old web's stop is waited for after the answer
        ok = engine.run(d, deploy.plan(d))
        if reported:
            reported()
    # What finish pruned is out of every listing; deleting it needs no deploy lock (the next
    # deploy goes on meanwhile): the dirs' names carry our pid, so no one else sweeps them
    # while we live, and the next prune sweeps them if we are killed.
    engine.tidy(d)
    supervise.settle(d)  # the old web's group, once it stopped (or the next handover does)
    engine.collect_garbage(d)
    return ok
