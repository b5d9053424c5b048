"""The live release's processes handed over again, without a deploy (restart, config, scale).

The same handover a deploy's ``restart`` phase makes (``converge.converge``:
the web process blue/green with its health check, zero failed requests), onto
the release that is already live, then the deploy's ``verify``; nothing is
checked out or built. If the new processes do not come up, the ones that ran
before are put back (``supervise.restart_previous``) and the change fails.
"""

from __future__ import annotations

from . import converge, supervise, supervisord
from .app import App
from .config import HostConfig, load_app_config, load_procfile
from .context import Deploy
from .counts import types
from .errors import AppError, ShipyardError
from .report import Reporter, Skip


def live_deploy(app: App, host: HostConfig, out: Reporter) -> Deploy:
    """A deploy-shaped view of the live release, for the restart and verify phases."""
    rid = app.live_release()
    if rid is None:
        raise AppError(f"nothing is live in {app.name} yet", "push first: git push production main")
    d = Deploy.of_live(app, host, out, rid)
    d.config = load_app_config(d.release)
    d.procfile = load_procfile(d.release)
    return d


def check_type(app: App, kind: str) -> None:
    known = types(app)
    if kind not in known:
        raise AppError(
            f"{app.name} has no process type {kind!r}",
            f"its Procfile runs: {', '.join(known) or 'nothing'}",
        )


def handover(
    app: App, host: HostConfig, out: Reporter, restart: bool | frozenset[str] = True
) -> str:
    """Converge the processes onto the live release (``restart``: which types start afresh)."""
    if app.live_release() is None:
        return Skip("nothing is live yet: the first deploy starts the processes")
    d = live_deploy(app, host, out)
    sv = supervisord.Supervisor(app, d.host)
    before = sv.load_state()
    wanted = supervise.wanted_programs(d)
    if not wanted and not before:
        return Skip("no Procfile processes")
    sv.ensure()
    d.processes.before = before
    d.processes.running = before  # what restart_previous puts back if this fails
    try:
        running, summary = converge.converge(sv, wanted, restart_same=restart)
        d.processes.running = running
        d.processes.pids = converge.pids(sv, running)
        checked = supervise.verify(d)
    except ShipyardError as exc:
        try:
            supervise.restart_previous(d)
        except ShipyardError as again:
            exc.hint = f"{exc.hint}; and putting the previous processes back failed: {again}"
        raise
    return f"{', '.join(summary) or 'no processes'}; {checked}"
