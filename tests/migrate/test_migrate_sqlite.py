"""The embedded default (SQLite under shared/), the fast path, bad inputs, and what a
rollback would cross."""

from __future__ import annotations

import sqlite3

from conftest import Host, Work
from migrate_helpers import MIGRATION_0003, history, manifest, phase_line, set_env

from shipyard.app import App
from shipyard.migrate import applied_between


def sqlite_url(host: Host) -> str:
    return f"sqlite:///{host.dir / 'shared' / 'db.sqlite3'}"


def test_sqlite_default_fast_path_and_reset(host: Host, work: Work):
    set_env(host, DATABASE_URL=sqlite_url(host))
    work.write("shipyard.toml", "")  # no build step: faster pushes
    work.commit("no build")
    first = work.push()
    assert "2 applied: polls.0001_initial, polls.0002_choice" in phase_line(first.out, "migrate")
    assert "database lock" not in first.out  # SQLite: the deploy lock is the lock
    db = host.dir / "shared" / "db.sqlite3"
    assert db.is_file()

    for i in range(3):  # the fast path: Django is not asked (`make bench` times it)
        work.commit(f"code {i}", **{"mysite__version.py": f'GREETING = "v{i}"\n'})
        out = work.push().out
        assert "unchanged since deploy #" in phase_line(out, "migrate")

    work.commit(
        "settings change",
        **{
            "mysite__settings.py": (
                (work.path / "mysite" / "settings.py").read_text() + "\nUSE_I18N = False\n"
            )
        },
    )
    out = work.push().out
    assert "nothing pending (Django: 2 applied)" in phase_line(out, "migrate")  # asked Django

    db.unlink()  # the database was reset by hand: noticed, not skipped
    work.commit("after reset", **{"mysite__version.py": 'GREETING = "reset"\n'})
    out = work.push().out
    assert "2 applied" in phase_line(out, "migrate")
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM django_migrations").fetchone()[0] == 2


def test_bad_inputs_fail_clearly(host: Host, work: Work):
    work.write("shipyard.toml", "")
    work.commit("no build")
    set_env(host, DATABASE_URL="postgresql://app:Sup3rSecret@db.example:54x2/app")
    out = work.push(fails=True).out
    line = phase_line(out, "migrate")
    assert "DATABASE_URL in shared/.env is malformed: its port is not a number" in line
    assert "Sup3rSecret" not in out

    (host.dir / "shared" / ".env").write_text('SECRET_KEY=abc\nBROKEN="never closed\nX=1\n')
    refused = work.push(check=False)  # refused before the branch moves
    assert refused.returncode != 0
    assert "shared/.env:2: cannot parse this line of .env" in refused.out
    assert "never closed" not in refused.out

    set_env(host, DATABASE_URL=sqlite_url(host))
    work.commit(
        "explicit command that is not installed",
        **{"shipyard.toml": 'migrate = "no-such-migrate-tool up"\n'},
    )
    out = work.push(fails=True).out
    line = phase_line(out, "migrate")
    assert "migrate command not found: `no-such-migrate-tool up` (exit 127)" in line
    assert "not found" in out

    work.commit("bad timeout", **{"shipyard.toml": "migrate_timeout = 0\n"})
    out = work.push(check=False).out
    assert "shipyard.toml:1: migrate_timeout must be a number of seconds above 0" in out

    work.commit(
        "explicit check and command",
        **{
            "shipyard.toml": (
                "migrate_check = \"python manage.py showmigrations --plan | grep -F '[ ]' "
                "| sed 's/^.....//' || true\"\n"
                'migrate = "python manage.py migrate --noinput"\n'
            )
        },
    )
    out = work.push().out
    assert "2 pending (`python manage.py showmigrations" in out
    assert "2 applied: polls.0001_initial, polls.0002_choice" in phase_line(out, "migrate")
    work.commit("disabled", **{"shipyard.toml": 'migrate = ""\n'})
    out = work.push().out
    assert 'disabled in shipyard.toml (migrate = "")' in phase_line(out, "migrate")
    assert [e["outcome"] for e in history(host)] == ["failed", "failed", "live", "live"]


def test_applied_between_a_migrating_release(host: Host, work: Work):
    set_env(host, DATABASE_URL=sqlite_url(host))
    work.write("shipyard.toml", "")
    work.commit("no build")
    work.push()
    r1 = host.live().name
    work.commit("votes", **{"polls__migrations__0003_votes.py": MIGRATION_0003})
    work.push()
    r2 = host.live().name
    work.commit("code", **{"mysite__version.py": 'GREETING = "v3"\n'})
    work.push()
    r3 = host.live().name
    assert manifest(host)["migrations"] == []
    app = App.at("mysite", host.root)
    assert applied_between(app, r3, r1) == ["polls.0003_votes"]
    assert applied_between(app, r3, r2) == []
    assert applied_between(app, r2, r1) == ["polls.0003_votes"]
    assert applied_between(app, r1, r3) == []
    (host.dir / "deploys" / "deploys.jsonl").unlink()  # history gone: the manifests still know
    assert applied_between(app, r3, r1) == ["polls.0003_votes"]
