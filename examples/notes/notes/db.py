"""The database: everything environment-specific comes from DATABASE_URL."""

import os

import sqlalchemy as sa

metadata = sa.MetaData()

notes = sa.Table(
    "notes",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("text", sa.String(200), nullable=False),
    sa.Column("done", sa.Boolean, nullable=False, server_default=sa.false()),
)


def database_url() -> str:
    """sqlite:////abs/path or postgresql://user:pass@host:port/name (driven by psycopg 3)."""
    url = os.environ.get("DATABASE_URL", "sqlite:///notes.sqlite3")
    scheme, sep, rest = url.partition("://")
    if scheme in ("postgres", "postgresql"):
        return f"postgresql+psycopg{sep}{rest}"
    return url


def engine() -> sa.Engine:
    return sa.create_engine(database_url(), pool_pre_ping=True)
