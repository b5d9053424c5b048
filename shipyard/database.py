"""The database an app names by ``DATABASE_URL``: parsed, checked, its SQLite files."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from . import release
from .context import Deploy
from .errors import ConfigError

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
