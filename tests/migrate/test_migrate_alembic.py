"""The Alembic/SQLAlchemy example app on a real PostgreSQL."""

from __future__ import annotations

import psycopg
from conftest import Host, make_work
from migrate_helpers import history, manifest, phase_line, set_env
from pgcluster import PASSWORD, pg_url, postgres  # noqa: F401  (fixtures)

REVISION_0003 = '''"""add priority

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("notes", sa.Column("priority", sa.Integer, nullable=False, server_default="0"))


def downgrade() -> None:
    op.drop_column("notes", "priority")
'''

FAILING_0004 = '''"""broken

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE no_such_table ADD COLUMN x integer")


def downgrade() -> None:
    pass
'''


def heads(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT version_num FROM alembic_version").fetchall()]


def test_alembic_two_revisions_then_a_third(tmp_path, host: Host, pg_url):  # noqa: F811
    set_env(host, DATABASE_URL=pg_url)
    work = make_work(tmp_path / "notes", host, "notes")
    first = work.push()
    lines = first.out.splitlines()
    listed = next(i for i, ln in enumerate(lines) if "2 pending (Alembic" in ln)
    assert "0001 (create notes)" in lines[listed + 1] and "0002 (add done)" in lines[listed + 2]
    line = phase_line(first.out, "migrate")
    assert "2 applied: 0001, 0002" in line and "under the database lock" in line
    assert lines.index(line) > listed
    assert PASSWORD not in first.out
    assert heads(pg_url) == ["0002"]
    assert manifest(host)["migrations"] == ["0001", "0002"]

    work.commit("readme", **{"README": "notes\n"})
    second = work.push()
    line = phase_line(second.out, "migrate")
    assert "nothing pending (Alembic: at 0002" in line and "unchanged since deploy #1" in line

    work.commit("priority", **{"migrations__versions__0003_priority.py": REVISION_0003})
    third = work.push()
    assert "1 pending (Alembic" in third.out and "0003 (add priority)" in third.out
    assert "1 applied: 0003" in phase_line(third.out, "migrate")
    assert heads(pg_url) == ["0003"]
    assert history(host)[-1]["migrations"] == ["0003"]

    live = host.live()
    work.commit("broken", **{"migrations__versions__0004_broken.py": FAILING_0004})
    failed = work.push(fails=True)
    line = phase_line(failed.out, "migrate")
    assert "✗ migrate" in line and "failed (exit 1)" in line
    assert "none of the 1 pending was applied" in line
    assert 'relation "no_such_table" does not exist' in failed.out  # the migration's own error
    assert host.live() == live and heads(pg_url) == ["0003"]
