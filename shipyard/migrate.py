"""Database migrations: detected, listed, applied once under a lock, recorded per release.

What runs is decided from the release (see docs/migrations.md):

- ``migrate`` / ``migrate_check`` in the app's shipyard.toml, when given, win;
- else Django (``manage.py``): listed with ``manage.py showmigrations --plan``, applied with
  ``manage.py migrate --noinput``;
- else Alembic (``alembic.ini``): listed by comparing the database's current heads with the
  script directory's heads (``alembic_probe.py``, run by the release's Python), applied with
  ``alembic upgrade heads``; an ``alembic.ini`` further down is run from its directory, and
  Flask-Migrate's (``migrations/``, an ``env.py`` that needs the app) with ``flask db upgrade``.

Everything runs in the new release with its virtualenv and the app's ``shared/.env``, under
the app's deploy lock (held around the whole deploy) and, when ``DATABASE_URL`` is a
PostgreSQL URL, a session-level ``pg_advisory_lock`` taken on shipyard's own connection.

When nothing is pending the phase says so; it skips the tool's own start-up (about half a
second for Django) when the live release recorded that nothing was pending, the release's
migration inputs are byte-for-byte the same (for Django also the venv's migration files and
app configs, so a changed requirement that brings none keeps the fast path), the ``.env`` file
is the same file, and the database's own migration table still holds exactly what it held then
(so a reset or a manual migrate is noticed).
"""

from __future__ import annotations

import time
from typing import Any

from . import history, release
from .advisory_lock import database_lock, session_name, terminate_sessions, unreachable_reason
from .app import App
from .command import Result, in_release
from .context import Deploy
from .database import database_of
from .errors import CommandFailed, CommandTimedOut, PhaseError, ShipyardError
from .migration_cache import save_state, unchanged
from .migration_progress import Progress
from .migration_tools import Plan, Status, detect, status
from .report import Skip

SHOWN = 30  # pending migrations listed one per line; more are summarised


# --- the phases ---------------------------------------------------------------


def summary(status: Status, plan: Plan) -> str:
    if plan.check is not None:
        return plan.label
    if plan.kind == "alembic":
        return f"{plan.label}: at {', '.join(status.applied) or 'base'}"
    return f"{plan.label}: {len(status.applied)} applied"


def show_pending(d: Deploy, plan: Plan, before: Status, where: str, locked: bool) -> None:
    lock_note = ", under the database lock" if locked else ""
    names = [before.label(n) for n in before.pending]
    d.out.line(f"  · {where}: {len(names)} pending ({plan.label}{lock_note}):")
    shown = names if len(names) <= SHOWN else names[: SHOWN - 1]
    d.out.detail(shown, prefix="      ")
    if len(shown) < len(names):
        d.out.line(f"      … and {len(names) - len(shown)} more")


def record(d: Deploy, applied: list[str]) -> None:
    """Add what this deploy applied to its history entry and to the release's manifest."""
    d.migrations.extend(n for n in applied if n not in d.migrations)
    if d.manifest is not None:
        known = list(d.manifest.migrations or [])
        d.manifest.migrations = known + [n for n in applied if n not in known]
        d.manifest.save(d.release)


def migrate_run(
    d: Deploy, plan: Plan, command: str, before: Status | None, conn: Any, where: str
) -> tuple[list[str], Status | None, Result]:
    """Run ``command``; return (applied, status afterwards if known, the run).

    On failure raise a PhaseError naming what is now applied (asked of the database again,
    since Django keeps the migrations that finished and Alembic on PostgreSQL keeps none).
    """
    timeout = float(d.config.migrate_timeout)
    live = plan.kind == "django" and plan.check is None
    progress = Progress(
        plan.kind if plan.check is None else "command",
        (lambda name, s: d.out.line(f"      ✓ {name:<40} {s:5.2f}s")) if live else None,
    )
    appname = session_name(d, "migrate")
    ran = in_release(d, command, timeout, progress.feed, {"PGAPPNAME": appname})
    if ran.exited == 0 and not ran.timed_out:
        progress.close(time.monotonic())
        if not live:
            times = dict(progress.done)
            for name in before.pending if before else []:
                if name in times:
                    d.out.line(f"      ✓ {name:<40} {times[name]:5.2f}s")
        if before is None:
            return [], None, ran
        if command == plan.default and plan.check is None:
            # the tool's own "apply everything" succeeded: nothing is left, no need to ask
            done = before.heads if plan.kind == "alembic" else before.applied + before.pending
            after = Status(done, [], before.labels, before.heads)
        else:
            after = status(d, plan)
        return [n for n in before.pending if n not in after.pending], after, ran
    if ran.timed_out:
        terminate_sessions(conn, appname)
    running = progress.current
    applied: list[str] = []
    known = ""
    if before is not None:
        try:
            after = status(d, plan)
            applied = [n for n in before.pending if n not in after.pending]
        except ShipyardError:
            applied = [n for n, _ in progress.done] if plan.kind == "django" else []
            known = " (as the command reported; the database could not be asked again)"
    record(d, applied)
    if ran.timed_out:
        subject = f"migration {running}" if running else f"{where} `{command}`"
        message = f"{subject} did not finish within {timeout:g}s and was stopped"
        hint = "make it faster or raise migrate_timeout in shipyard.toml"
    elif ran.exited == 127:
        message = f"{where} command not found: `{command}` (exit 127)"
        hint = "is it installed in the release's virtualenv (requirements) or on PATH?"
    else:
        reason = unreachable_reason(ran.output)
        if reason and not progress.done and not running:
            message = f"database unreachable: {d.out.mask(reason)}"
        else:
            subject = f"migration {running}" if running else f"`{command}`"
            message = f"{subject} failed (exit {ran.exited})"
        hint = (
            "fix it and push again; the new release stays live"
            if where == "post_migrate"
            else "fix it and push again; the old release is still live"
        )
    if before is not None and before.pending:
        if applied:
            message += (
                f"; {len(applied)} of {len(before.pending)} applied before it and still "
                f"applied{known}: {', '.join(applied)}"
            )
            hint = (
                f"the {'new' if where == 'post_migrate' else 'old'} release keeps running "
                "against them; fix the failing migration and push again (the applied ones "
                "are not re-run)"
            )
        else:
            message += f"; none of the {len(before.pending)} pending was applied{known}"
    raise (CommandTimedOut if ran.timed_out else CommandFailed)(ran, where, message, hint)


def apply(d: Deploy) -> str:
    """The migrate phase: before the switch, so a failure leaves the old release serving."""
    if "skip-migrate" in d.options:
        d.out.warn("migrations skipped (-o skip-migrate): pending ones, if any, were not applied")
        return Skip("skipped by -o skip-migrate")
    plan = detect(d.release, d.config)
    if isinstance(plan, Skip):
        return plan
    db = database_of(d)
    with database_lock(d, db) as conn:
        lock_note = "; under the database lock" if conn is not None else ""
        quick = unchanged(d, plan, db, conn)
        if quick:
            record(d, [])
            return quick
        if not plan.listable:
            d.out.line(f"  · migrate: running {plan.label} (no migrate_check: pending unknown)")
            d.migrations_known = False  # recorded as null: it may have applied anything
            migrate_run(d, plan, plan.command, None, conn, "migrate")
            return f"ran {plan.label} (set migrate_check to list what it applies){lock_note}"
        before = status(d, plan)
        if not before.pending:
            record(d, [])
            save_state(d, plan, db, conn, before)
            return f"nothing pending ({summary(before, plan)}{lock_note})"
        show_pending(d, plan, before, "migrate", conn is not None)
        if not plan.command:
            raise PhaseError(
                f"{len(before.pending)} pending but no migrate command to apply them",
                "set migrate in shipyard.toml",
            )
        applied, after, _ = migrate_run(d, plan, plan.command, before, conn, "migrate")
        record(d, applied)
        if after is not None:
            save_state(d, plan, db, conn, after)
            if after.pending:
                d.out.line(
                    f"  · migrate: still pending after `{plan.command}`: "
                    + ", ".join(after.label(n) for n in after.pending)
                )
    if not applied:
        return f"none applied by `{plan.command}`{lock_note}"
    return f"{len(applied)} applied: {', '.join(applied)}{lock_note}"


def none_on_rollback(d: Deploy) -> str:
    """A rollback's migrate phase: the older release's migrations are applied already, and
    newer ones are never reversed."""
    return Skip("a rollback runs no migrations")


def post_none_on_rollback(d: Deploy) -> str:
    """A rollback's post-migrate phase: says what it did not run."""
    command = d.config.post_migrate
    if not command:
        return Skip("no post_migrate in shipyard.toml")
    return Skip(f"a rollback runs no migrations: `{command}` did not run")


def post_apply(d: Deploy) -> str:
    """The post-migrate phase: ``post_migrate`` once the new release is live and verified."""
    command = d.config.post_migrate
    if not command:
        return Skip("no post_migrate in shipyard.toml")
    if "skip-migrate" in d.options:
        d.out.warn(f"post-migrate skipped (-o skip-migrate): `{command}` did not run")
        return Skip("skipped by -o skip-migrate")
    plan = detect(d.release, d.config)
    if isinstance(plan, Skip) or not plan.listable:
        plan = Plan("command", f"`{command}`", command)
    db = database_of(d)
    with database_lock(d, db, "post-migrate") as conn:
        before = status(d, plan) if plan.listable else None
        if before is None:
            d.migrations_known = False  # recorded as null: it may have applied anything
        if before is not None and before.pending:
            show_pending(d, plan, before, "post-migrate", conn is not None)
        applied, after, ran = migrate_run(d, plan, command, before, conn, "post_migrate")
        record(d, applied)
        if after is not None:
            save_state(d, plan, db, conn, after)
    if applied:
        return f"`{command}`: {len(applied)} applied: {', '.join(applied)}"
    return f"ran `{command}` in {ran.seconds:.2f}s" + (", none applied" if before else "")


# --- for rollback and `shipyard releases` ------------------------------------


def unknown_between(app: App, from_release: str, to_release: str) -> list[int]:
    """Deploys between the two that ran a migrate command which cannot list what it applied
    (recorded as null): rolling back across them, migrations may have run since."""
    span = _between(history.entries(app), from_release, to_release)
    return [e.get("deploy") for e in span or [] if "migrations" in e and e["migrations"] is None]


def _between(entries: list[dict], from_release: str, to_release: str) -> list[dict] | None:
    """The history after ``to_release`` was last live, up to ``from_release`` (None: unknown)."""
    made_live = ("live",)  # a rollback that went live too (its kind says rollback)

    def last_live(rid: str) -> int | None:
        for i in range(len(entries) - 1, -1, -1):
            if entries[i].get("release") == rid and entries[i].get("outcome") in made_live:
                return i
        return None

    lo, hi = last_live(to_release), last_live(from_release)
    return entries[lo + 1 : hi + 1] if lo is not None and hi is not None else None


def applied_between(app: App, from_release: str, to_release: str) -> list[str]:
    """Migrations the database got after ``to_release`` was last live, up to ``from_release``.

    Going from ``from_release`` (typically live) back to ``to_release``, these are what the
    older code may not know about. Oldest first, without repeats. Read from the deploy
    history (failed deploys count: a failed Django migrate may leave earlier ones applied),
    falling back to the release manifests still on disk.
    """
    span = _between(history.entries(app), from_release, to_release)
    names: list[str] = []
    if span is not None:
        for entry in span:
            names.extend(entry.get("migrations") or [])
    else:
        for rid, manifest in release.releases(app):
            if to_release < rid <= from_release and manifest:
                names.extend(manifest.migrations or [])
    return list(dict.fromkeys(names))
