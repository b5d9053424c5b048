"""The migrate phase's fast path (the skip cache): nothing changed since the live release
checked, so the tool's own start-up is skipped. See migrate.py's docstring for what counts."""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

from . import release
from .context import Deploy
from .database import Database, sqlite_paths
from .errors import ShipyardError
from .migration_tools import Plan, Status

STATE = Path(".shipyard") / "migrate.json"


# --- the fast path: nothing changed since the live release checked ----------


def files_digest(digest: Any, root: Path, paths: list[Path]) -> None:
    for path in sorted(set(paths)):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")


def settings_files(d: Deploy) -> list[Path] | None:
    """The Django settings module's file(s), found the way manage.py finds them."""
    env = release.command_env(d.app, d.release, d.env)
    module = env.get("DJANGO_SETTINGS_MODULE")
    if not module:
        text = (d.release / "manage.py").read_text(errors="replace")
        match = re.search(r"DJANGO_SETTINGS_MODULE['\"]\s*,\s*['\"]([\w.]+)['\"]", text)
        module = match.group(1) if match else None
    if not module:
        return None
    base = d.release.joinpath(*module.split("."))
    if base.with_suffix(".py").is_file():
        return [base.with_suffix(".py")]
    if base.is_dir():
        return sorted(base.rglob("*.py"))
    return None


def migration_files(root: Path) -> list[Path]:
    """Every file below a ``migrations`` directory of the release (links are not followed)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [n for n in dirnames if n not in (".shipyard", "__pycache__", ".git")]
        rel = Path(dirpath).relative_to(root)
        if "migrations" in rel.parts:
            found.extend(Path(dirpath) / n for n in filenames if n.endswith(".py"))
    return found


def alembic_files(root: Path, ini: str = "alembic.ini") -> list[Path] | None:
    import configparser  # only an Alembic app reads an alembic.ini

    here = (root / ini).parent
    parser = configparser.ConfigParser(defaults={"here": str(here)})
    try:
        parser.read(root / ini)
        location = parser.get("alembic", "script_location")
    except (configparser.Error, OSError):
        return None
    if ":" in location and not location.startswith("/"):
        return None  # a package resource; not worth guessing
    scripts = (here / location).resolve()
    if not scripts.is_dir() or not scripts.is_relative_to(root.resolve()):
        return None
    files = [p for p in scripts.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    return [root / ini, *(root / p.relative_to(root.resolve()) for p in files)]


def inputs_fingerprint(d: Deploy, plan: Plan, known: dict | None = None) -> str | None:
    """What decides the set of migrations, apart from the database: None when unknown.

    ``known``: the state the live release recorded (its venv's digest is reused as is).
    """
    if plan.check is not None or plan.kind not in ("django", "alembic") or plan.flask:
        return None  # Flask-Migrate: the database is the app's config, not DATABASE_URL
    try:
        return _inputs_fingerprint(d, plan, known)
    except (OSError, ValueError):
        return None  # unreadable: no fast path, the tool is asked


def venv_files(venv: Path) -> list[Path]:
    """What of a virtualenv decides the set of migrations: its packages' migration files and
    app configs (an app's label names its migrations). A requirement that brings neither,
    the usual change, leaves the fast path open; a package upgrade that changes them closes it.
    """
    found = []
    for dirpath, dirnames, filenames in os.walk(venv / "lib"):
        dirnames[:] = [n for n in dirnames if n != "__pycache__"]
        if os.path.basename(dirpath) == "migrations":
            found.extend(Path(dirpath) / n for n in filenames if n.endswith(".py"))
        elif "apps.py" in filenames:
            found.append(Path(dirpath) / "apps.py")
    return found


def venv_digest(d: Deploy, known: dict | None = None) -> str:
    """``venv_files`` hashed. A venv is content-addressed and never changes once built, so the
    digest a release recorded for the same venv key is reused without walking the venv, and
    one this process made (``digest_beside``) is used as it is."""
    if known and known.get("venv") == d.venv_key and known.get("venv_digest"):
        return known["venv_digest"]
    venv = os.path.realpath(d.release / ".venv")
    made = _made.get(venv)
    if made is not None:
        made[0].join()
        if made[1]:
            return made[1][0]
    return _venv_digest(Path(venv))


def _venv_digest(venv: Path) -> str:
    digest = hashlib.sha256()
    files_digest(digest, venv, [p for p in venv_files(venv) if p.is_file()])
    return digest.hexdigest()


_made: dict[str, tuple[threading.Thread, list[str]]] = {}  # a venv's path: its digest, made


def digest_beside(d: Deploy) -> None:
    """Hash a Django release's venv in a thread, while the build steps run, for the migrate
    phase's fast path (a walk of the venv's thousands of directories, ~0.03 s)."""
    if not (d.release / "manage.py").is_file():
        return
    venv = os.path.realpath(d.release / ".venv")
    if venv in _made:
        return
    found: list[str] = []

    def walk() -> None:
        with suppress(OSError, ValueError):
            found.append(_venv_digest(Path(venv)))

    thread = threading.Thread(target=walk, name="venv-digest", daemon=True)
    _made[venv] = (thread, found)
    thread.start()


def _inputs_fingerprint(d: Deploy, plan: Plan, known: dict | None = None) -> str | None:
    venv = venv_digest(d, known) if plan.kind == "django" else d.venv_key
    digest = hashlib.sha256(f"v2\0{plan.kind}\0{plan.command}\0{venv}\0".encode())
    if plan.kind == "django":
        settings = settings_files(d)
        if settings is None:
            return None
        files_digest(digest, d.release, settings + migration_files(d.release))
    else:
        files = alembic_files(d.release, plan.ini)
        if files is None:
            return None
        files_digest(digest, d.release, files)
    with suppress(OSError):  # settings may read .env; its bytes are not hashed (secrets)
        st = (d.app.shared / ".env").stat()
        digest.update(f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}".encode())
    return digest.hexdigest()


TABLE_SQL = {
    "django": "SELECT app || '.' || name FROM django_migrations",
    "alembic": "SELECT version_num FROM alembic_version",
}


def recorded_in_database(plan: Plan, db: Database, conn: Any, cwd: Path) -> set[str] | None:
    """The tool's own table of applied migrations, read directly (None if unreadable)."""
    sql = TABLE_SQL.get(plan.kind)
    if sql is None:
        return None
    if db.kind == "postgresql" and conn is not None:
        try:
            return {row[0] for row in conn.execute(sql).fetchall()}
        except Exception:  # noqa: BLE001 - no table yet, or not this database: no fast path
            return None
    if db.kind == "sqlite":
        import sqlite3  # here: a deploy whose fingerprint matched never opens the database

        for path in sqlite_paths(db, cwd):
            if not path.is_file():
                continue
            try:
                lite = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2)
                try:
                    return {row[0] for row in lite.execute(sql).fetchall()}
                finally:
                    lite.close()
            except sqlite3.Error:
                continue
    return None


def digest_of(names: set[str]) -> str:
    return hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()


def save_state(d: Deploy, plan: Plan, db: Database, conn: Any, now: Status) -> None:
    """Remember, in the release, that nothing was pending and what the database held.

    Best effort: without it the next deploy just asks the tool.
    """
    with suppress(OSError):
        _save_state(d, plan, db, conn, now)


def _save_state(d: Deploy, plan: Plan, db: Database, conn: Any, now: Status) -> None:
    path = d.release / STATE
    with suppress(OSError):
        path.unlink()
    if now.pending:
        return
    known = {"venv": d.venv_key, "venv_digest": venv_digest(d) if plan.kind == "django" else None}
    inputs = inputs_fingerprint(d, plan, known)
    rows = recorded_in_database(plan, db, conn, d.release)
    if inputs is None or rows is None:
        return
    coherent = set(now.applied) <= rows if plan.kind == "django" else set(now.applied) == rows
    if not coherent:
        return  # DATABASE_URL is not the database the tool uses: always ask the tool
    state = {
        "tool": plan.kind,
        "inputs": inputs,
        "database": digest_of(rows),
        "applied": now.applied if plan.kind == "alembic" else len(now.applied),
        **known,
        "deploy": d.number,
        "checked": time.time(),
    }
    path.parent.mkdir(exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    os.rename(tmp, path)


def unchanged(d: Deploy, plan: Plan, db: Database, conn: Any) -> str | None:
    """The 'nothing pending' detail when the fast path applies, else None."""
    live = d.app.live_release()
    if not live:
        return None
    try:
        state = json.loads((d.app.release_dir(live) / STATE).read_text())
    except (OSError, ValueError, ShipyardError):
        return None
    if state.get("tool") != plan.kind:
        return None
    inputs = inputs_fingerprint(d, plan, state)
    if inputs is None or inputs != state.get("inputs"):
        return None
    rows = recorded_in_database(plan, db, conn, d.release)
    if rows is None or digest_of(rows) != state.get("database"):
        return None
    with suppress(OSError):  # the same migrations, maybe another venv: recorded with its key
        save_state_copy(d, {**state, "venv": d.venv_key})
    applied = state.get("applied", "?")
    if isinstance(applied, list):
        held = f"at {', '.join(applied) or 'base'}"
    else:
        held = f"{applied} applied"
    return (
        f"nothing pending ({plan.label}: {held}; migrations and database unchanged "
        f"since deploy #{state.get('deploy', '?')})"
    )


def save_state_copy(d: Deploy, state: dict) -> None:
    """The new release inherits the state it was checked against."""
    path = d.release / STATE
    path.parent.mkdir(exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    os.rename(tmp, path)
