"""Operator commands that change what is live: ``shipyard deploy`` and ``shipyard rollback``.

Both are deploys like a push's: they move the deploy branch, claim a deploy
number and run ``worker.execute`` (same lock, same phases, same log, same
history line), only in the foreground. A rollback is a deploy of a kept
release: ``checkout`` reuses it, so nothing is fetched, installed or built,
migrations are not run (they are never reversed; shipyard warns instead), and
the Procfile's ``release:`` command runs only when asked (``--run-release``).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import threading
from collections.abc import Iterator
from typing import IO, TextIO

from . import engine, history, migrate, release, teardown, worker
from .app import RELEASE_ID, App
from .config import load_host_config
from .context import Deploy
from .errors import AppError, PhaseError, ShipyardError
from .guard import check_not_root
from .options import refuse_push_only, wants_color
from .report import Reporter

SHA_PREFIX = re.compile(r"^[0-9a-f]{4,40}$")


def pusher() -> str:
    """Whose key ran the command (the forced SSH command sets it), else the local user."""
    if os.environ.get("SHIPYARD_PUSHER"):
        return os.environ["SHIPYARD_PUSHER"]
    import getpass  # with termios: not for a command run over SSH

    return getpass.getuser()


# --- which commit, which release --------------------------------------------


def check_name(name: str, what: str, hint: str, allowed: str = "") -> str:
    """Refuse names that could be read as options, paths or ranges before anything looks them up."""
    if (
        not name
        or name.startswith(("-", "/", "."))
        or ".." in name
        or any(
            c.isspace() or ord(c) < 32 or (c in "\\~^:?*[{}@" and c not in allowed) for c in name
        )
    ):
        raise AppError(f"invalid {what} {name!r}", hint)
    return name


def resolve(app: App, ref: str) -> tuple[str, str | None]:
    """(commit, tag) for a branch, tag or commit in the app's repo, or a tag deployed before.

    An annotated tag pushed as ``v1.2:main`` is not kept as a tag ref on the host,
    but its deploy recorded the name: ``shipyard deploy APP v1.2`` finds it there.
    """
    check_name(
        ref, "ref", "name a branch, tag or commit, e.g. main, v1.2, 1a2b3c4, main~1", "~^{}@"
    )
    try:
        sha = release.git(app.repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    except PhaseError:
        sha = ""
    if not sha:
        for entry in reversed(history.entries(app)):
            if entry.get("tag") == ref and entry.get("sha") and has_commit(app, entry["sha"]):
                return entry["sha"], ref
        try:
            kind = release.git(app.repo, "cat-file", "-t", ref)
        except PhaseError:
            raise ShipyardError(
                f"no branch, tag or commit {ref!r} in {app.name}'s repo",
                "push it first (git push production REF), or name one that "
                f"`git --git-dir {app.repo} log --all --oneline` lists",
            ) from None
        raise ShipyardError(f"{ref} is a {kind}, not a commit", "name a branch, tag or commit")
    try:
        is_tag = bool(release.git(app.repo, "rev-parse", "--verify", "--quiet", f"refs/tags/{ref}"))
    except PhaseError:
        is_tag = False
    return sha, ref if is_tag else release.tag_for(app, sha)


def has_commit(app: App, sha: str) -> bool:
    try:
        release.git(app.repo, "cat-file", "-e", f"{sha}^{{commit}}")
    except PhaseError:
        return False
    return True


def find_release(app: App, name: str) -> str:
    """The kept release ``name`` means: its id, a commit prefix, or a tag (newest first)."""
    name = name.removeprefix("releases/")
    check_name(
        name,
        "release name",
        f"name a release as `shipyard releases {app.name}` lists it, or by its commit or tag",
    )
    kept = release.releases(app)
    if RELEASE_ID.match(name):
        if (app.releases / name).is_dir():
            return name
        return missing(app, name, lambda e: e.get("release") == name)
    if SHA_PREFIX.match(name):
        matches = [rid for rid, m in kept if m and m.sha.startswith(name)]
        if len({m.sha for rid, m in kept if m and rid in matches}) > 1:
            raise ShipyardError(
                f"{name} matches releases of several commits", "give more of the sha"
            )
        if matches:
            return matches[-1]
    matches = [rid for rid, m in kept if m and m.tag == name]
    if matches:
        return matches[-1]
    return missing(
        app,
        name,
        lambda e: e.get("tag") == name or str(e.get("sha", "")).startswith(name),
    )


def missing(app: App, name: str, was: object) -> str:
    """Fail for a release that is not on disk, saying whether it ever was."""
    gone = [e for e in history.entries(app) if e.get("release") and was(e)]
    hint = f"see `shipyard releases {app.name}` for what is kept"
    if gone:
        entry = gone[-1]
        again = f"deploy its commit again: shipyard deploy {app.name} {entry['sha'][:12]}"
        if not any(e.get("outcome") == "live" for e in gone):
            raise ShipyardError(
                f"release {entry['release']} never went live (deploy #{entry['deploy']} "
                f"{entry.get('outcome')}) and is not kept",
                again,
            )
        raise ShipyardError(
            f"release {entry['release']} is no longer on disk (pruned or deleted)", again
        )
    raise ShipyardError(f"no release {name!r} in {app.name}", hint)


def rollback_target(app: App) -> str | None:
    """The release that was live before the current one, skipping releases rolled back from.

    Walks the history of live deploys newest first. A release that a rollback
    left is not picked again automatically (rolling back twice goes two steps
    back, never forward to the release just abandoned); name it to return to it.
    """
    live = app.live_release()
    left: set[str] = set()
    for entry in reversed(history.entries(app)):
        if entry.get("outcome") != "live":
            continue
        rid = entry.get("release")
        if rid and rid != live and rid not in left and usable(app, rid):
            return rid
        if entry.get("kind") == "rollback" and entry.get("previous"):
            left.add(entry["previous"])
    # No history to go by (an app deployed before history, or a lost deploys.jsonl).
    ordered = [rid for rid, _ in release.releases(app)]
    older = ordered[: ordered.index(live)] if live in ordered else ordered
    for rid in reversed(older):
        if rid not in left and usable(app, rid):
            return rid
    return None


def usable(app: App, rid: str) -> bool:
    try:
        return release.unusable(app, rid) is None
    except AppError:
        return False


def migrations_between(app: App, from_release: str | None, to_release: str) -> list[str]:
    """Migrations applied after ``to_release`` up to ``from_release``: what a rollback keeps.

    Asks ``migrate.applied_between`` when the migrations module offers it; else
    the ``migrations`` recorded in the manifests (and history lines) of the
    releases built after the target, up to the one being left.
    """
    ask = getattr(migrate, "applied_between", None)
    if callable(ask):
        return list(ask(app, from_release, to_release))
    kept = release.releases(app)
    created = {rid: m.created for rid, m in kept if m}

    def rank(rid: str) -> tuple[str, float]:  # build order, as release.releases sorts
        return rid[:16], created.get(rid, 0.0)

    if not from_release or rank(from_release) <= rank(to_release):
        return []
    low, high = rank(to_release), rank(from_release)
    applied: list[str] = []
    for rid, manifest in kept:
        if low < rank(rid) <= high and manifest and manifest.migrations:
            applied += manifest.migrations
    for entry in history.entries(app):  # also releases pruned since
        rid = entry.get("release") or ""
        if rid and low < rank(rid) <= high and entry.get("outcome") == "live":
            applied += entry.get("migrations") or []
    return list(dict.fromkeys(applied))


def migrations_notes(app: App, live: str | None, target: str) -> list[str]:
    """The warnings a deploy gives when it makes ``target`` live over the newer ``live``:
    the migrations applied since, and deploys since whose migrate command listed nothing."""
    notes = []
    applied = migrations_between(app, live, target)
    if applied:
        shown = ", ".join(applied[:4])
        if len(applied) > 4:
            shown += f" and {len(applied) - 4} more"
        notes.append(
            f"{len(applied)} migration(s) applied since {target} stay applied: {shown}; "
            "the older code runs against the newer schema (reverse them by hand if needed)"
        )
    unknown = migrate.unknown_between(app, live, target) if live else []
    if unknown:
        which = ", ".join(f"#{n}" for n in unknown)
        notes.append(
            f"migrations may have run since {target}: deploy {which} ran a migrate command "
            "that cannot list what it applied (set migrate_check to know)"
        )
    return notes


def older_release_notes(app: App, sha: str) -> list[str]:
    """A deploy of a commit that was live here before, older than what is live: its warning.

    The same words as a rollback's, for a forced push of an older tag or
    ``shipyard deploy APP OLDREF``: the release it was live as (kept, or only in
    the history if pruned since) dates it against the live one.
    """
    live = app.live_release()
    if not live:
        return []
    target = release.find_good(app, sha)
    if target is None:
        for entry in reversed(history.entries(app)):
            if entry.get("sha") == sha and entry.get("outcome") == "live" and entry.get("release"):
                target = entry["release"]
                break
    if target is None or target == live:
        return []
    return migrations_notes(app, live, target)


# --- running a deploy in the foreground --------------------------------------


class Tee:
    """The deploy's output, written to its log and (while it is there) to the terminal."""

    def __init__(self, log: IO[bytes], term: TextIO | None) -> None:
        self.log = log
        self.term = term

    def write(self, text: str) -> int:
        self.log.write(text.encode())
        self.log.flush()
        if self.term is not None:
            try:
                self.term.write(text)
                self.term.flush()
            except (BrokenPipeError, OSError, ValueError):
                self.term = None  # the operator's terminal went away; the deploy goes on
        return len(text)

    def flush(self) -> None:
        self.log.flush()


@contextlib.contextmanager
def stoppable() -> Iterator[None]:
    """Ctrl-C, a hang-up or SIGTERM fail the current phase, so the deploy reverts cleanly."""

    def stop(signum: int, _frame: object) -> None:
        raise ShipyardError(f"stopped by {signal.Signals(signum).name}")

    saved = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def move_branch(app: App, ref: str, sha: str, why: str) -> None:
    """Point the deploy branch at ``sha`` (compare-and-swap, so a racing push is not lost)."""
    old = engine.branch_tip(app, ref) or ""
    try:
        release.git(app.repo, "update-ref", "-m", why, ref, sha, old)
    except PhaseError as exc:
        raise ShipyardError(
            f"could not move {ref.removeprefix('refs/heads/')}: {exc.message}", "try again"
        ) from None


def run_foreground(
    app: App,
    sha: str,
    tag: str | None,
    kind: str,
    options: dict[str, str],
    release_id: str = "",
    notes: list[str] | None = None,
    term: TextIO | None = None,
    detach: bool = False,
) -> bool:
    """Run one deploy here and now, printing what a push would; True when it went live.

    ``detach`` (the command, not a caller in this process): the command ends with the
    outcome (``answered``), what comes after it runs on in a detached child."""
    term = sys.stdout if term is None else term
    refuse_push_only(options, kind)
    host = load_host_config(app.config_file)
    check_not_root(app, host)
    if notes is None and kind == "deploy":
        notes = older_release_notes(app, sha)
    ref = f"refs/heads/{host.branch}"
    number = history.claim_number(app)
    with history.open_log(app, number) as log:
        color = wants_color(options, dict(os.environ)) and term.isatty()
        out = Reporter(Tee(log, term), color=color, heartbeat=host.heartbeat)
        if kind == "rollback":
            kept = release.Manifest.load(app.release_dir(release_id))
            d = Deploy.for_rollback(
                app, host, number, release_id, kept, out, pusher=pusher(), options=options,
                notes=notes,
            )  # fmt: skip
        else:
            d = Deploy.for_push(
                app, host, number, sha, ref, out, pusher=pusher(), tag=tag, options=options,
                kind=kind, notes=notes,
            )  # fmt: skip
        with stoppable():
            try:
                move_branch(app, ref, sha, f"shipyard {kind} #{number} by {d.pusher}")
                return worker.execute(d, (lambda: answered(d)) if detach else None)
            except ShipyardError as exc:  # outside the phases: moving the branch, the lock wait
                if history.recorded(app, number) is not None:
                    return False  # stopped after its outcome was recorded
                engine.reset_branch(d)
                engine.record(d, "failed", 0.0, error=exc.message)
                d.out.final(f"{kind} #{number} did not run: {exc}", good=False)
                return False


def answered(d: Deploy) -> None:
    """The outcome is recorded and its last line written: the command ends here, its status
    the outcome's, while a child detached from the terminal goes on with what is left (the
    deploy lock's release and ``engine.tidy``: deleting what ``finish`` pruned and any other
    work after the answer, as a push's worker does it after git has its answer). Neither
    ``ssh host shipyard rollback`` nor a terminal waits for that.

    Not without the record (a full disk: the deploy ends here, as before), nor with another
    thread running (a fork would not have it)."""
    entry = history.recorded(d.app, d.number)
    d.out.quiet()  # the phases' heartbeat thread: a fork has no other thread
    if entry is None or threading.active_count() > 1:
        return
    teardown.flush_output()
    if os.fork():
        os._exit(0 if entry.get("outcome") == "live" else 1)  # nothing else of ours to run
    os.setsid()  # the terminal's hang-up, Ctrl-C or a closed ssh session spare it
    teardown.stdio_to_devnull()
    if d.journal is not None:  # the lock's holder is this process now (a recovery reads it)
        d.journal.update(pid=os.getpid(), session=True)


def rollback(
    app: App,
    name: str | None,
    options: dict[str, str],
    term: TextIO | None = None,
    run_release: bool = False,
    detach: bool = False,
) -> bool:
    """Make a kept release live again: no migrations, and the ``release:`` command only if asked.

    Migrations are never reversed and the older code's migrations are already
    applied, so the migrate phases skip (saying so); ``release:`` often runs
    migrations or other one-off work meant for a new release, so it runs only
    with ``run_release`` (``shipyard rollback APP --run-release``).
    """
    refuse_push_only(options, "rollback")
    live = app.live_release()
    if name:
        target = find_release(app, name)
        if target == live:
            raise ShipyardError(f"release {target} is already live", "nothing to do")
        problem = release.unusable(app, target)
        if problem:
            raise ShipyardError(
                f"cannot roll back: {problem}", f"see `shipyard releases {app.name}`"
            )
    else:
        target = rollback_target(app)
        if target is None:
            raise ShipyardError(
                f"nothing to roll back to: no other good release of {app.name} is kept",
                f"see `shipyard releases {app.name}`",
            )
    manifest = release.Manifest.load(app.release_dir(target))
    notes = migrations_notes(app, live, target)
    extra = {"run-release": ""} if run_release else {}
    return run_foreground(
        app,
        manifest.sha,
        manifest.tag,
        "rollback",
        {**options, **extra},
        release_id=target,
        notes=notes,
        term=term,
        detach=detach,
    )
