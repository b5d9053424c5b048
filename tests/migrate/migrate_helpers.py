"""Small helpers shared by the migration tests."""

from __future__ import annotations

import json

from conftest import Host

MIGRATION_0003 = """from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("polls", "0002_choice")]
    operations = [migrations.AddField("choice", "votes", models.IntegerField(default=0))]
"""


def python_migration(name: str, after: str, body: str) -> dict[str, str]:
    """A Django migration file (for Work.commit) that runs ``body`` as its RunPython step."""
    text = f'''import time

from django.db import migrations


def forward(apps, schema_editor):
    {body}


class Migration(migrations.Migration):
    dependencies = [("polls", "{after}")]
    operations = [migrations.RunPython(forward, migrations.RunPython.noop)]
'''
    return {f"polls__migrations__{name}.py": text}


def sql_migration(name: str, after: str, sql: str) -> dict[str, str]:
    text = f'''from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("polls", "{after}")]
    operations = [migrations.RunSQL({sql!r}, migrations.RunSQL.noop)]
'''
    return {f"polls__migrations__{name}.py": text}


def history(host: Host) -> list[dict]:
    path = host.dir / "deploys" / "deploys.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def manifest(host: Host) -> dict:
    return json.loads((host.live() / ".shipyard" / "release.json").read_text())


def set_env(host: Host, **values: str) -> None:
    text = "".join(f"{k}={v}\n" for k, v in values.items())
    (host.dir / "shared" / ".env").write_text(text)


def phase_line(out: str, phase: str) -> str:
    for line in out.splitlines():
        if f" {phase} " in line and ("✓" in line or "✗" in line or " - " in line):
            return line
    raise AssertionError(f"no {phase} line in:\n{out}")


def applied_in(conn, app: str = "polls") -> list[str]:
    rows = conn.execute("SELECT name FROM django_migrations WHERE app = %s ORDER BY id", (app,))
    return [r[0] for r in rows.fetchall()]
