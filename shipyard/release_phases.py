"""The phases of the release itself: checkout (a push's, a rollback's), link, venv, build,
switch (with its undo), finish; and what recovery and a receiver load of a release on disk.

The plans that order them with the other modules' phases are in deploy.py.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from . import build, command, cron, data, migration_cache, release, supervise, venv
from . import programs as prov
from .command import run_in_release
from .config import load_app_config, load_procfile
from .context import Deploy
from .errors import PhaseError
from .report import Masker, Skip

if TYPE_CHECKING:
    from .app import App

# --- the phases -------------------------------------------------------------


def checkout_kept(d: Deploy) -> str:
    """A rollback's checkout: the release it names must still be there and good; it is
    made live as it is (nothing checked out, linked or built)."""
    problem = release.unusable(d.app, d.release_id)
    if problem:
        raise PhaseError(problem, f"see `shipyard releases {d.app.name}`")
    return checkout(d, d.release_id)


def checkout(d: Deploy, kept: str | None = None) -> str:
    """A push's checkout: a good release of this commit is reused, else it is checked out."""
    if kept is None and d.release_id:  # a peer builds the release id its primary chose (peers.py)
        m = release.Manifest.load(d.release) if d.release.is_dir() else None
        kept = d.release_id if m and m.sha == d.sha and m.state in release.GOOD_STATES else None
    elif kept is None:
        kept = release.find_good(d.app, d.sha)
    if kept:
        d.release_id, d.reused = kept, True
        d.manifest = release.Manifest.load(d.release)
        d.venv_key = d.manifest.venv if d.manifest else None
    else:
        d.release_id = d.release_id or release.new_release_id(d.sha)
        if d.release.exists() and d.release_id != d.app.live_release():
            # a half-made release of this id, e.g. by a deploy of this commit killed this second
            release.remove(d.app, d.release_id)
        release.checkout(d.app, d.sha, d.release_id)
        d.manifest = release.Manifest(
            sha=d.sha,
            ref=d.ref,
            release=d.release_id,
            deploy=d.number,
            pusher=d.pusher,
            created=time.time(),
            tag=d.tag,
        )
        d.manifest.save(d.release)
    d.config = load_app_config(d.release)
    d.procfile = load_procfile(d.release)
    d.env = release.shared_env(d.app)
    d.out.mask = Masker(d.env)
    if d.reused:
        return f"reused releases/{d.release_id} (already built)"
    return f"{release.count_files(d.release)} files → releases/{d.release_id}"


def discard(d: Deploy) -> None:
    if d.release_id and not d.reused:
        release.remove(d.app, d.release_id)


def link(d: Deploy) -> str:
    if d.reused:
        return Skip("reused release")
    linked = release.link_shared(d.app, d.release, d.config.shared)
    return ", ".join(linked) if linked else Skip("no shared paths present yet")


def build_venv(d: Deploy) -> str:
    if d.reused:
        return Skip(f"reused {(d.venv_key or '?')[:6]} (release already built)")
    the_plan = venv.plan(d.release, d.config, d.host.installer)
    d.venv_key, reused = venv.ensure(d.app, d.release, the_plan)
    d.manifest.venv = d.venv_key
    d.manifest.save(d.release)
    if reused:
        return f"reused {d.venv_key[:6]} ({reused})"
    note = venv.carried() if the_plan.installer == "uv" else ""
    note = f" ({note})" if note else ""
    return (
        f"built {d.venv_key[:6]} with {the_plan.installer} from {the_plan.requirements.name}{note}"
    )


def build_steps(d: Deploy) -> str:
    """The build steps; the data probe ran beside them (``data.link``): when its answer links
    paths the steps did not see, they run again, as they would have after those links."""
    live, before = None, None
    if not d.reused and d.config.build:  # the live release's manifest, read once for both
        live = d.app.live_release()
        before = release.Manifest.load(d.app.release_dir(live)) if live else None
        if not d.peer and (before is None or before.venv != d.venv_key):  # another venv
            migration_cache.digest_beside(d)  # for migrate's fast path, while the steps run
    detail = _build_steps(d, live, before)
    again = data.settle(d)
    if again:
        detail = f"{_build_steps(d, live, before)} (again: {again})"
    return detail


def _build_steps(d: Deploy, live: str | None, before: release.Manifest | None) -> str:
    if d.reused:
        return Skip("reused release")
    if not d.config.build:
        return Skip("no build steps")
    ran, reused = 0, 0
    d.manifest.builds = {}
    for step in d.config.build:
        key = build.input_key(step, d.release, d.venv_key) if step.cacheable else None
        if (
            key
            and before
            and (before.builds or {}).get(step.run) == key
            and build.reuse_outputs(step, d.app.release_dir(live), d.release)
        ):
            reused += 1
        else:
            command.run_in_release(d, step.run, f"build step `{step.run}`")
            ran += 1
        if key:
            d.manifest.builds[step.run] = key
    d.manifest.save(d.release)
    return f"{ran} ran" + (f", {reused} reused (inputs unchanged)" if reused else "")


def switch(d: Deploy) -> str:
    # what going back needs, written before current moves: whoever undoes this switch (this
    # process, a receiver asked to revert, a recovery) reads it from the release's manifest
    if d.manifest is not None:
        d.manifest.undo = {"deploy": d.number, "previous": d.app.live_release()}
        d.manifest.save(d.release)
    d.previous = release.switch(d.app, d.release_id)
    d.switched_at = time.time()
    return f"current → {d.release_id}{cron.apply(d, d.release_id)}"


def load_release(d: Deploy) -> None:
    """Fill in what checkout would have for a release already on disk (d.release_id set)."""
    d.manifest = release.Manifest.load(d.release)
    d.venv_key = d.manifest.venv if d.manifest else None
    d.config = load_app_config(d.release)
    d.procfile = load_procfile(d.release)
    d.env = release.shared_env(d.app)
    d.out.mask = Masker(d.env)


def load_undo(d: Deploy) -> None:
    """Fill in the release (as ``load_release``) and take over what the switch and restart
    that made ``d.release_id`` live wrote down for their undo (``switch_back``,
    ``restart_previous``), in another process than theirs."""
    load_release(d)
    undo = (d.manifest.undo if d.manifest else None) or {}
    if "previous" in undo:
        d.previous = undo["previous"]
    supervise.load_undo(d, undo)


def switch_back(d: Deploy) -> None:
    if d.previous:
        release.switch(d.app, d.previous)
    elif d.app.current.is_symlink():
        d.app.current.unlink()
    cron.apply(d, d.previous)  # the jobs of what is live again


def seal(d: Deploy) -> None:
    """The release is good: live, verified, kept."""
    d.manifest.state = "good"
    d.manifest.live_at = time.time()
    if d.manifest.migrations is None and not d.reused and d.migrations_known:
        d.manifest.migrations = list(d.migrations)  # None stays: unknown
    d.manifest.save(d.release)


def finish(d: Deploy) -> str:
    seal(d)
    keep = d.keep
    # with d.trash, what is pruned is only renamed aside here: deleted once the outcome is out
    removed = prune(d.app, keep, protected(d), d.trash)
    return f"kept {keep}, pruned {len(removed)}" if removed else f"kept {keep}"


def finish_peer(d: Deploy) -> str:
    """A peer's finish: sealed here; its receiver prunes later, once idle (``d.prune_later``),
    so that neither the switch's answer nor the next deploy waits for it."""
    if d.prune_later is None:
        return finish(d)
    seal(d)
    d.prune_later(d.keep, protected(d))
    return f"kept {d.keep}, pruned when idle"


def protected(d: Deploy) -> set[str]:
    # a peer keeps the release it would go back to until the cluster has committed
    return {d.previous} if d.previous and not d.committed else set()


def prune(app: App, keep: int, protect: set[str], trash: list[Path] | None = None) -> list[str]:
    """The releases beyond ``keep`` (but ``protect``) and the venvs none of the rest uses."""
    removed = release.prune(app, keep, protect, trash)
    used = {m.venv for _, m in release.releases(app) if m and m.venv}
    venv.prune(app, used, trash)
    return removed


def release_command(d: Deploy) -> str:
    """The Procfile's ``release:`` command: once per deploy, in the new release, before switch."""
    command = d.procfile.get(prov.RELEASE_TYPE)
    if not command:
        return Skip("no release: command in Procfile")
    output = run_in_release(d, command, "release command", timeout=d.config.migrate_timeout)
    last = output.strip().splitlines()[-1:] if output.strip() else []
    return f"`{command}` ran" + (f": {last[0]}" if last else "")


def release_command_on_rollback(d: Deploy) -> str:
    """A rollback's release phase: ``release:`` runs only when asked (``--run-release``)."""
    command = d.procfile.get(prov.RELEASE_TYPE)
    if command and "run-release" not in d.options:
        return Skip(f"a rollback runs no `{command}` (shipyard rollback --run-release does)")
    return release_command(d)
