"""``shipyard restart``: the zero-downtime handover without a deploy, host by host with peers."""

from __future__ import annotations

from .app import App
from .change import making
from .handover import check_type, handover
from .hosts import Fleet, roll


def run(app: App, process: str | None, term=None) -> str:
    """``shipyard restart APP [--process TYPE]``: the handover, under the deploy lock."""
    with making(app, "restart", numbered=False, term=term) as change:
        if process:
            check_type(app, process)
        fleet = Fleet.load(app, change.host)
        if fleet.peers:  # host by host, each one's health check before the next
            fleet.warn_drained(change.out, "restart")
            fleet.require_all()
            done = roll(fleet, change.out, [process] if process else True)
            names = ", ".join(m.label for m in done)
            change.out.final(
                f"{app.name}: restarted on {len(done)} hosts, one by one: {names}", True
            )
            return names
        detail = handover(app, change.host, change.out, frozenset([process]) if process else True)
        change.out.final(f"{app.name}: restarted on releases/{app.live_release()}: {detail}", True)
        return detail
