"""PostgreSQL's session-level advisory lock around a deploy's migrations, on shipyard's own
connection: taken, waited for (naming who holds it), and the sessions of a dead deploy ended."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

from .context import Deploy
from .database import EXAMPLE_URLS, Database
from .errors import ConfigError, PhaseError

POLL = 0.2  # seconds between tries of a held database lock


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
