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

import configparser
import hashlib
import json
import os
import re
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from . import history, release
from .app import App
from .command import Result, in_release
from .context import Deploy
from .errors import CommandFailed, CommandTimedOut, ConfigError, PhaseError, ShipyardError
from .report import Skip

STATE = Path(".shipyard") / "migrate.json"
PROBE_MARK = "SHIPYARD-PROBE "
ALEMBIC_PROBE = Path(__file__).with_name("alembic_probe.py")
POLL = 0.2  # seconds between tries of a held database lock
SHOWN = 30  # pending migrations listed one per line; more are summarised


# --- the database named by DATABASE_URL --------------------------------------


@dataclass(frozen=True)
class Database:
    """What ``DATABASE_URL`` names. ``url`` is never printed; ``where`` is safe to print."""

    kind: str  # "postgresql", "sqlite", "other" or "none"
    url: str = ""
    where: str = ""

    @property
    def conninfo(self) -> str:
        """The URL as libpq reads it: SQLAlchemy's ``+driver`` suffix dropped."""
        scheme, _, rest = self.url.partition("://")
        return f"{scheme.split('+')[0]}://{rest}"


EXAMPLE_URLS = "e.g. postgresql://user:password@host:5432/name or sqlite:////abs/path/db.sqlite3"


def parse_database_url(url: str | None, source: str = "DATABASE_URL") -> Database:
    """Validate ``DATABASE_URL`` without ever echoing it (it usually holds a password)."""
    if not url:
        return Database("none")

    def bad(reason: str) -> ConfigError:
        return ConfigError(f"{source} is malformed: {reason}", f"write it as {EXAMPLE_URLS}")

    if re.search(r"\s", url):
        raise bad("it contains whitespace (percent-encode it, e.g. %20)")
    if "://" not in url:
        raise bad("it has no scheme (nothing before '://')")
    scheme = url.partition("://")[0].lower()
    if not re.fullmatch(r"[a-z][a-z0-9.+-]*", scheme):
        raise bad(f"{scheme[:20]!r} is not a URL scheme")
    base = scheme.split("+")[0]
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        reason = "its port is not a number" if "port" in str(exc).lower() else "it is not a URL"
        raise bad(reason) from None
    if base in ("postgres", "postgresql"):
        name = unquote(parts.path.lstrip("/")) or "(default)"
        host = parts.hostname or "local socket"
        return Database("postgresql", url, f"{host}:{port or 5432}/{name}")
    if base == "sqlite":
        if not parts.path and not parts.netloc:
            raise bad("a sqlite URL needs a file path, e.g. sqlite:////abs/path/db.sqlite3")
        return Database("sqlite", url, parts.path or parts.netloc)
    return Database("other", url, f"{base} at {parts.hostname or '?'}")


def database_of(d: Deploy) -> Database:
    env = release.command_env(d.app, d.release, d.env)
    source = "DATABASE_URL in shared/.env" if "DATABASE_URL" in d.env else "DATABASE_URL"
    return parse_database_url(env.get("DATABASE_URL"), source)


def sqlite_paths(db: Database, cwd: Path) -> list[Path]:
    """Where a sqlite URL's file may be: ``sqlite:////abs`` is absolute everywhere; with three
    slashes Django-style settings read an absolute path and SQLAlchemy a relative one."""
    path = urlsplit(db.url).path
    if path.startswith("//"):
        return [Path(path[1:])]
    if path.startswith("/"):
        return [Path(path), cwd / path[1:]]
    return [cwd / path] if path else []


# --- PostgreSQL: the advisory lock, on shipyard's own connection ------------


def lock_key(app_name: str) -> int:
    """The advisory lock's bigint key: every host deploying this app to a database shares it."""
    digest = hashlib.sha256(f"shipyard migrate {app_name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def session_name(d: Deploy, what: str = "deploy") -> str:
    """application_name (at most 63 bytes), so a waiting deploy can say whom it waits for."""
    return f"shipyard {d.app.name} {what} #{d.number} (pid {os.getpid()}@{socket.gethostname()})"[
        :63
    ]


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def pg_connect(db: Database, application_name: str, mask: Callable[[str], str]) -> Any:
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency of shipyard
        raise PhaseError(
            "PostgreSQL needs psycopg in shipyard's own environment",
            "install it next to shipyard: pip install 'psycopg[binary]'",
        ) from None
    try:
        return psycopg.connect(
            db.conninfo, autocommit=True, application_name=application_name, connect_timeout=10
        )
    except psycopg.OperationalError as exc:
        raise PhaseError(
            f"database unreachable: {mask(one_line(exc))}",
            f"check that PostgreSQL at {db.where} is up and DATABASE_URL is right; "
            "the live release is untouched",
        ) from None
    except psycopg.Error as exc:
        reason = mask(one_line(exc).replace(db.url, "…").replace(db.conninfo, "…"))
        raise ConfigError(
            f"DATABASE_URL is not a usable PostgreSQL URL: {reason}",
            f"write it as {EXAMPLE_URLS}",
        ) from None


HOLDER_SQL = """
SELECT a.pid, a.application_name, host(a.client_addr), a.usename,
       extract(epoch FROM a.backend_start)
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid = %s::bigint::oid AND l.objid = %s::bigint::oid
"""


def lock_holder(conn: Any, key: int) -> str:
    """Who holds the advisory lock, as pg_stat_activity names them."""
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    try:
        row = conn.execute(HOLDER_SQL, (unsigned >> 32, unsigned & 0xFFFFFFFF)).fetchone()
    except Exception:  # noqa: BLE001 - describing the holder must never fail the deploy
        row = None
    if not row:
        return "another session"
    pid, name, addr, user, since = row
    when = time.strftime("%H:%M:%S UTC", time.gmtime(float(since))) if since else "?"
    who = f"`{name}`" if name else f"a session of user {user or '?'} with no application_name"
    return f"{who} (server pid {pid}, from {addr or 'local socket'}, since {when})"


@contextmanager
def database_lock(d: Deploy, db: Database, what: str = "deploy") -> Iterator[Any]:
    """Hold ``pg_advisory_lock`` for the block when the database is PostgreSQL (else no-op).

    The lock lives in the session of a connection of its own: whatever happens to this
    process, the server drops the lock with the connection. There is no lock file.
    """
    if db.kind != "postgresql":
        yield None
        return
    conn = pg_connect(db, session_name(d, what), d.out.mask)
    try:
        key = lock_key(d.app.name)
        got = try_lock(conn, key, db, d.out.mask)
        if not got:
            started = time.monotonic()
            limit = float(d.config.migrate_timeout)
            next_beat = started + d.out.heartbeat
            d.out.line(
                f"  … migrate: waiting for the database migration lock on {db.where}, "
                f"held by {lock_holder(conn, key)}"
            )
            while not got:
                time.sleep(POLL)
                now = time.monotonic()
                if now - started > limit:
                    raise PhaseError(
                        f"gave up after {limit:g}s waiting for the database migration lock, "
                        f"held by {lock_holder(conn, key)}",
                        "see what that session is doing (pg_stat_activity) and push again",
                    )
                if now >= next_beat:
                    d.out.line(
                        f"  … migrate: still waiting ({now - started:.0f}s) for "
                        f"{lock_holder(conn, key)}"
                    )
                    next_beat = now + d.out.heartbeat
                got = try_lock(conn, key, db, d.out.mask)
            waited = time.monotonic() - started
            d.out.line(f"  … migrate: database migration lock taken after {waited:.1f}s")
        yield conn
    finally:
        with suppress(Exception):
            conn.close()  # ends the session, and with it the lock


def try_lock(conn: Any, key: int, db: Database, mask: Callable[[str], str]) -> bool:
    import psycopg

    try:
        return bool(conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0])
    except psycopg.Error as exc:
        raise PhaseError(
            f"database unreachable: lost the connection to {db.where}: {mask(one_line(exc))}",
            "the live release is untouched; push again once the database is back",
        ) from None


def terminate_sessions(conn: Any, application_name: str) -> None:
    """Stop server sessions a killed migration left behind (they may still hold table locks)."""
    if conn is None:
        return
    with suppress(Exception):
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = %s AND pid <> pg_backend_pid()",
            (application_name,),
        )


UNREACHABLE = re.compile(
    r"could not connect|connection refused|connection failed|could not translate host|"
    r"name or service not known|timeout expired|unable to open database file|"
    r"server closed the connection|no route to host|can't connect to|"
    r"password authentication failed|no password supplied|database \".*\" does not exist",
    re.I,
)


def unreachable_reason(output: str) -> str | None:
    """The line that says the database could not be reached, if the output has one."""
    for line in reversed(output.splitlines()):
        if UNREACHABLE.search(line):
            return re.sub(r"^[\w.]*(OperationalError|Error):\s*", "", line.strip())
    return None


# --- the tools ---------------------------------------------------------------


@dataclass
class Status:
    """What the database has and what the release would still apply, oldest first."""

    applied: list[str]  # Alembic: the database's current heads
    pending: list[str]
    labels: dict[str, str] = field(default_factory=dict)
    heads: list[str] = field(default_factory=list)  # Alembic: the script directory's heads

    def label(self, name: str) -> str:
        return self.labels.get(name, name)


@dataclass
class Plan:
    """How this release's migrations are listed and applied."""

    kind: str  # "django", "alembic" or "command"
    label: str  # what the output calls it
    command: str | None  # what applies them
    check: str | None = None  # an explicit migrate_check, when given
    ini: str = "alembic.ini"  # Alembic: its config, relative to the release
    flask: bool = False  # Alembic run by Flask-Migrate (`flask db upgrade`, in an app context)

    @property
    def default(self) -> str | None:
        """The tool's own "apply everything" command, as the app's users run it."""
        if self.kind == "django":
            return DJANGO_MIGRATE
        if self.kind != "alembic":
            return None
        if self.flask:
            folder = str(Path(self.ini).parent)
            return FLASK_UPGRADE if folder == "migrations" else f"{FLASK_UPGRADE} -d {folder}"
        where = str(Path(self.ini).parent)
        return ALEMBIC_UPGRADE if where == "." else f"cd {where} && {ALEMBIC_UPGRADE}"

    @property
    def listable(self) -> bool:
        return self.check is not None or self.kind in ("django", "alembic")


DJANGO_MIGRATE = "python manage.py migrate --noinput"
ALEMBIC_UPGRADE = "alembic upgrade heads"
FLASK_UPGRADE = "flask db upgrade"
ALEMBIC_SKIP = {".venv", ".shipyard", ".git", "node_modules", "__pycache__"}


def find_alembic(release_dir: Path) -> tuple[str, bool] | None:
    """(alembic.ini relative to the release, run by Flask-Migrate?) — at the root, else one or
    two levels down (``migrations/alembic.ini`` with an ``env.py`` beside it is Flask-Migrate's
    layout: its env.py needs the Flask app)."""
    if (release_dir / "alembic.ini").is_file():
        return "alembic.ini", False
    found = []
    for path in sorted(release_dir.glob("*/alembic.ini")) + sorted(
        release_dir.glob("*/*/alembic.ini")
    ):
        rel = path.relative_to(release_dir)
        if not ALEMBIC_SKIP & set(rel.parts) and not path.parent.is_symlink():
            found.append(rel)
    if not found:
        return None
    ini = found[0]
    env_py = release_dir / ini.parent / "env.py"
    flask = env_py.is_file() and "current_app" in env_py.read_text(errors="replace")
    return str(ini), flask


def detect(release_dir: Path, config) -> Plan | Skip:
    """The plan for a release, from its shipyard.toml and its files."""
    if config.migrate is not None and not config.migrate.strip():
        return Skip('disabled in shipyard.toml (migrate = "")')
    alembic = None if (release_dir / "manage.py").is_file() else find_alembic(release_dir)
    if (release_dir / "manage.py").is_file():
        plan = Plan("django", "Django", None)
    elif alembic is not None:
        ini, flask = alembic
        label = "Flask-Migrate" if flask else "Alembic"
        usual = "migrations/alembic.ini" if flask else "alembic.ini"
        label = label if ini == usual else f"{label} ({ini})"
        plan = Plan("alembic", label, None, None, ini, flask)
    elif config.migrate:
        plan = Plan("command", f"`{config.migrate}`", None)
    else:
        return Skip("none detected (no manage.py or alembic.ini, no migrate in shipyard.toml)")
    plan.command = config.migrate or plan.default
    if config.migrate_check:
        plan.kind, plan.label, plan.check = (
            "command",
            f"`{config.migrate_check}`",
            config.migrate_check,
        )
    return plan


def status(d: Deploy, plan: Plan) -> Status:
    """Ask the tool (or migrate_check) what is applied and what is pending."""
    timeout = float(d.config.migrate_timeout)
    if plan.check is not None:
        return command_status(d, plan.check, timeout)
    if plan.kind == "django":
        return django_status(d, timeout)
    return alembic_status(d, timeout, plan)


def probe_failure(d: Deploy, what: str, ran: Result, timeout: float) -> PhaseError:
    if ran.timed_out:
        return CommandTimedOut(
            ran,
            what,
            f"{what} did not answer within {timeout:g}s and was stopped",
            "is the database locked or slow? (migrate_timeout in shipyard.toml)",
        )
    reason = unreachable_reason(ran.output)
    if reason:
        return CommandFailed(
            ran,
            what,
            f"database unreachable: {d.out.mask(reason)}",
            "check the database and DATABASE_URL in shared/.env; the live release is untouched",
        )
    if ran.exited == 127:
        return CommandFailed(
            ran,
            what,
            f"{what}: command not found (exit 127)",
            "is it installed in the release's virtualenv (requirements) or on PATH?",
        )
    return CommandFailed(ran, what)


def release_python(d: Deploy) -> str:
    return str(d.release / ".venv" / "bin" / "python")


def django_status(d: Deploy, timeout: float) -> Status:
    what = "listing migrations (manage.py showmigrations --plan)"
    ran = in_release(
        d,
        [release_python(d), "manage.py", "showmigrations", "--plan", "--skip-checks", "-v", "1"],
        timeout,
    )
    if ran.exited or ran.timed_out:
        raise probe_failure(d, what, ran, timeout)
    applied, pending = [], []
    for line in ran.output.splitlines():
        match = re.match(r"^\[([ X])\]\s+(\S+)", line)
        if match:
            (applied if match.group(1) == "X" else pending).append(match.group(2))
    return Status(applied, pending)


def alembic_status(d: Deploy, timeout: float, plan: Plan | None = None) -> Status:
    plan = plan or Plan("alembic", "Alembic", ALEMBIC_UPGRADE)
    what = "listing revisions (alembic current/heads)"
    args = [release_python(d), str(ALEMBIC_PROBE), plan.ini] + (["--flask"] if plan.flask else [])
    ran = in_release(d, args, timeout)
    if ran.exited or ran.timed_out:
        for module, package in (("alembic", "alembic"), ("flask_migrate", "Flask-Migrate")):
            if f"No module named '{module}'" in ran.output:
                raise PhaseError(
                    f"{plan.ini} is in the release but {package} is not installed in its "
                    "virtualenv",
                    f"add {package} to the requirements",
                    output=ran.output,
                )
        raise probe_failure(d, what, ran, timeout)
    answer = None
    for line in ran.output.splitlines():
        if line.startswith(PROBE_MARK):
            with suppress(ValueError):
                answer = json.loads(line[len(PROBE_MARK) :])
    if not isinstance(answer, dict) or not {"current", "heads", "pending"} <= answer.keys():
        raise PhaseError(f"{what} gave no answer", output=ran.output)
    pending = [p["revision"] for p in answer["pending"]]
    labels = {p["revision"]: f"{p['revision']} ({p['doc']})" for p in answer["pending"] if p["doc"]}
    return Status(list(answer["current"]), pending, labels, list(answer["heads"]))


def command_status(d: Deploy, check: str, timeout: float) -> Status:
    """``migrate_check`` prints the pending migrations on stdout, one per line (nothing: none
    pending); what it writes to stderr is shown only when it fails."""
    ran = in_release(d, check, timeout, stderr_apart=True)
    if ran.exited or ran.timed_out:
        ran.output = ran.everything
        raise probe_failure(d, f"migrate_check `{check}`", ran, timeout)
    pending = [line.strip() for line in ran.output.splitlines() if line.strip()]
    return Status([], pending)


# --- following a migration run ----------------------------------------------


class Progress:
    """Turns a migrate command's output into (migration, seconds) as each one finishes.

    Django writes ``  Applying polls.0003_x...`` when a migration starts (and flushes) and
    ``OK`` when it has been committed. Alembic logs ``Running upgrade A -> B, doc`` as each
    starts; one ends when the next starts or the command exits.
    """

    def __init__(self, kind: str, on_done: Callable[[str, float], None] | None = None) -> None:
        self.kind = kind
        self.on_done = on_done
        self.buffer = ""
        self.started: dict[str, float] = {}
        self.done: list[tuple[str, float]] = []
        self.current: str | None = None

    def feed(self, text: str, now: float) -> None:
        self.buffer += text
        *lines, self.buffer = self.buffer.split("\n")
        for line in lines:
            self._line(line, now, complete=True)
        if self.buffer:
            self._line(self.buffer, now, complete=False)

    def _start(self, name: str, now: float) -> None:
        if name not in self.started:
            self.started[name] = now
            self.current = name

    def _finish(self, name: str, now: float) -> None:
        if any(done == name for done, _ in self.done):
            return
        seconds = now - self.started.get(name, now)
        self.done.append((name, seconds))
        if self.current == name:
            self.current = None
        if self.on_done:
            self.on_done(name, seconds)

    def _line(self, line: str, now: float, complete: bool) -> None:
        if self.kind == "django":
            match = re.search(r"Applying (\S+?)\.\.\.", line)
            if match:
                self._start(match.group(1), now)
                if complete and re.search(r"Applying \S+?\.\.\.\s*(OK|FAKED)", line):
                    self._finish(match.group(1), now)
        elif self.kind == "alembic" and complete:
            match = re.search(r"Running upgrade (\S*) -> (\S+?),", line)
            if match:
                if self.current:
                    self._finish(self.current, now)
                self._start(match.group(2), now)

    def close(self, now: float) -> None:
        """The command succeeded: whatever was running has finished."""
        if self.kind == "alembic" and self.current:
            self._finish(self.current, now)


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
    digest a release recorded for the same venv key is reused without walking the venv."""
    if known and known.get("venv") == d.venv_key and known.get("venv_digest"):
        return known["venv_digest"]
    digest = hashlib.sha256()
    venv = d.release / ".venv"
    files_digest(digest, venv, [p for p in venv_files(venv) if p.is_file()])
    return digest.hexdigest()


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
