"""The deploy's plans, declared (Capistrano's framework.rake): every flow a deploy runs, on
one host or many, forward or back, as a list of named phases with their undos.

Phases run in order (engine.py); when one fails, the undos of those that ran are
called in reverse, the branch is set back to the live commit so a plain re-push
retries, and the last line says what failed and what is still live. A phase that
runs once the new release is live and verified (post-migrate) is not fatal: its
failure is reported and recorded, and the new release stays.

The phases themselves live with their nouns: the release's in release_phases.py,
the others in migrate, data, supervise, peers and proxy.
"""

from __future__ import annotations

from . import data, migrate, peers, proxy, supervise
from . import release_phases as rp
from .context import Deploy, Phase

# --- the phases ---------------------------------------------------------------

CHECKOUT = Phase("checkout", rp.checkout, rp.discard)
LINK = Phase("link", rp.link)
VENV = Phase("venv", rp.build_venv)
DATA = Phase("data", data.link, data.abandon)
BUILD = Phase("build", rp.build_steps)
PREPARE_PEERS = Phase("prepare-peers", peers.prepare, peers.abort)
MIGRATE = Phase("migrate", migrate.apply)
RELEASE = Phase("release", rp.release_command)
DATA_CHECK = Phase("data-check", data.check)
SWITCH = Phase("switch", rp.switch, rp.switch_back)
RESTART = Phase("restart", supervise.restart, supervise.restart_previous)
VERIFY = Phase("verify", supervise.verify)
POST_MIGRATE = Phase("post-migrate", migrate.post_apply, fatal=False)
FINISH = Phase("finish", rp.finish)
PEER_FINISH = Phase("finish", rp.finish_peer)  # its receiver prunes once idle

# a rollback makes a kept release live as it is: no checkout, build or migration
KEPT = Phase("checkout", rp.checkout_kept)
NO_MIGRATE = Phase("migrate", migrate.none_on_rollback)
RELEASE_IF_ASKED = Phase("release", rp.release_command_on_rollback)
NO_POST_MIGRATE = Phase("post-migrate", migrate.post_none_on_rollback, fatal=False)

# many hosts: checkout also starts the peers' prepare; switch → restart → verify run on
# every host as one rollout (this host's part is ROLLOUT_HERE)
ROLLOUT_HERE = [SWITCH, RESTART, VERIFY]
CHECKOUT_WITH_PEERS = peers.with_peers(CHECKOUT)
KEPT_WITH_PEERS = peers.with_peers(KEPT)
ROLLOUT = Phase("rollout", lambda d: peers.rollout(d, ROLLOUT_HERE), peers.rollback)

# --- the plans ----------------------------------------------------------------

# a push (and `shipyard deploy`) on one host
PUSH = [
    CHECKOUT, LINK, VENV, DATA, BUILD, PREPARE_PEERS, MIGRATE, RELEASE, DATA_CHECK,
    SWITCH, RESTART, VERIFY, POST_MIGRATE, FINISH,
]  # fmt: skip
# a push on the primary of many hosts
PUSH_MANY = [
    CHECKOUT_WITH_PEERS, LINK, VENV, DATA, BUILD, PREPARE_PEERS, MIGRATE, RELEASE, DATA_CHECK,
    ROLLOUT, POST_MIGRATE, FINISH,
]  # fmt: skip
# `shipyard rollback` on one host, and on the primary of many
ROLLBACK = [KEPT, PREPARE_PEERS, NO_MIGRATE, RELEASE_IF_ASKED, SWITCH, RESTART, VERIFY,
            NO_POST_MIGRATE, FINISH]  # fmt: skip
ROLLBACK_MANY = [KEPT_WITH_PEERS, PREPARE_PEERS, NO_MIGRATE, RELEASE_IF_ASKED, ROLLOUT,
                 NO_POST_MIGRATE, FINISH]  # fmt: skip

# a peer, asked by its primary's receiver calls (receiver/server.py)
PEER_PREPARE = [CHECKOUT, LINK, VENV, BUILD]  # POST /prepare
PEER_PREPARE_KEPT = [KEPT]  # POST /prepare of a rollback: the release must be there, good
PEER_SWITCH = [SWITCH, RESTART, VERIFY, PEER_FINISH]  # POST /switch
PEER_REVERT = [SWITCH, RESTART]  # POST /revert: the undos, as the switch wrote them down

# recovery (recover.py) of a deploy killed after its switch: where it picks up again,
# by the phase its journal names, and the undos it owes from there
RESUME = {
    "switch": [RESTART, VERIFY, POST_MIGRATE, FINISH],
    "restart": [RESTART, VERIFY, POST_MIGRATE, FINISH],
    "verify": [RESTART, VERIFY, POST_MIGRATE, FINISH],  # the handover's pids are not kept
    "maintenance-off": [POST_MIGRATE, FINISH],  # verified; the page goes off (recover.py)
    "post-migrate": [POST_MIGRATE, FINISH],
    "finish": [FINISH],
}
RESUME_ROLLBACK = {
    "switch": [RESTART, VERIFY, NO_POST_MIGRATE, FINISH],
    "restart": [RESTART, VERIFY, NO_POST_MIGRATE, FINISH],
    "verify": [RESTART, VERIFY, NO_POST_MIGRATE, FINISH],
    "maintenance-off": [NO_POST_MIGRATE, FINISH],
    "post-migrate": [NO_POST_MIGRATE, FINISH],
    "finish": [FINISH],
}
RESUMED_UNDO = [CHECKOUT, SWITCH]  # what ran before the resume point; RESTART too once it ran
GO_BACK = [CHECKOUT, SWITCH, RESTART]  # a primary killed in its rollout: this host's undos
# where a deploy interrupted before its switch was (``start``: still waiting for the lock)
BEFORE_SWITCH = ("start", "checkout", "link", "venv", "data", "build", "prepare-peers",
                 "maintenance", "migrate", "release", "data-check")  # fmt: skip

PHASES = PUSH  # the name bench/ and older tools read the phase order by


def with_options(d: Deploy, phases: list[Phase]) -> list[Phase]:
    """``-o maintenance``: the maintenance page from before ``migrate`` until ``verify`` (or
    the rollout) passed; turning it on is undone with the deploy."""
    if "maintenance" not in d.options:
        return phases
    out = []
    for phase in phases:
        if phase.name == "migrate":
            out.append(Phase("maintenance", proxy.maintenance_start, proxy.maintenance_undo))
        out.append(phase)
        if phase.name in ("verify", "rollout"):
            out.append(Phase("maintenance-off", proxy.maintenance_end, fatal=False))
    return out


def plan(d: Deploy) -> list[Phase]:
    """The plan of deploy ``d``: a push or a rollback, on one host or many, with its options."""
    many = bool(peers.active_peers(d.host))
    if d.kind == "rollback":
        return with_options(d, ROLLBACK_MANY if many else ROLLBACK)
    return with_options(d, PUSH_MANY if many else PUSH)


def peer_prepare(d: Deploy) -> list[Phase]:
    """What a peer runs for its primary's prepare."""
    return PEER_PREPARE_KEPT if d.kind == "rollback" else PEER_PREPARE


def resume(d: Deploy, phase: str) -> list[Phase]:
    """What a recovery runs of a deploy whose journal says it was at ``phase`` (after its
    switch)."""
    resumed = RESUME_ROLLBACK if d.kind == "rollback" else RESUME
    return with_options(d, resumed[phase])
