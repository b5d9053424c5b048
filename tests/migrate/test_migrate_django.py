"""Django migrations on a real PostgreSQL, pushed with the real git client."""

from __future__ import annotations

import subprocess
import time

import psycopg
from conftest import Host, Work, make_host
from migrate_helpers import (
    MIGRATION_0003,
    applied_in,
    history,
    manifest,
    phase_line,
    python_migration,
    set_env,
    sql_migration,
)
from pgcluster import PASSWORD, pg_url, postgres  # noqa: F401  (fixtures)


def test_lists_then_applies_then_only_the_new_one(host: Host, work: Work, pg_url):  # noqa: F811
    set_env(host, DATABASE_URL=pg_url, SECRET_KEY="django-insecure-abcdef")
    first = work.push()
    lines = first.out.splitlines()
    listed = next(i for i, ln in enumerate(lines) if "2 pending (Django" in ln)
    done = next(i for i, ln in enumerate(lines) if "✓ migrate" in ln)
    assert listed < done
    assert "polls.0001_initial" in lines[listed + 1] and "polls.0002_choice" in lines[listed + 2]
    assert "2 applied: polls.0001_initial, polls.0002_choice" in lines[done]
    assert "under the database lock" in lines[done]
    assert PASSWORD not in first.out and "pg-Secret" not in first.out
    assert manifest(host)["migrations"] == ["polls.0001_initial", "polls.0002_choice"]
    assert history(host)[-1]["migrations"] == ["polls.0001_initial", "polls.0002_choice"]

    work.commit("code only", **{"mysite__version.py": 'GREETING = "v2"\n'})
    second = work.push()
    line = phase_line(second.out, "migrate")
    assert "nothing pending" in line and "unchanged since deploy #1" in line
    assert manifest(host)["migrations"] == []

    work.commit("votes", **{"polls__migrations__0003_votes.py": MIGRATION_0003})
    third = work.push()
    assert "1 pending (Django" in third.out
    assert "1 applied: polls.0003_votes" in phase_line(third.out, "migrate")
    assert manifest(host)["migrations"] == ["polls.0003_votes"]
    with psycopg.connect(pg_url) as conn:
        assert applied_in(conn) == ["0001_initial", "0002_choice", "0003_votes"]
        # a manual reset of the database must not be missed by the fast path
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")
    work.commit("code again", **{"mysite__version.py": 'GREETING = "v3"\n'})
    fourth = work.push()
    assert "3 pending (Django" in fourth.out
    assert "3 applied" in phase_line(fourth.out, "migrate")


def test_failing_migration_stops_before_switch(host: Host, work: Work, pg_url):  # noqa: F811
    set_env(host, DATABASE_URL=pg_url)
    work.push()
    live, good_sha = host.live(), host.branch()
    work.commit(
        "two more, the second fails",
        **{"polls__migrations__0003_votes.py": MIGRATION_0003},
        **python_migration(
            "0004_fix", "0003_votes", 'raise RuntimeError("boom: the 0004 data fix failed")'
        ),
    )
    result = work.push(fails=True)
    assert "2 pending (Django" in result.out
    assert "✓ polls.0003_votes" in result.out
    line = phase_line(result.out, "migrate")
    assert "✗ migrate" in line and "migration polls.0004_fix failed (exit 1)" in line
    assert "1 of 2 applied before it and still applied: polls.0003_votes" in line
    assert "RuntimeError: boom: the 0004 data fix failed" in result.out  # its own error
    assert f"still live: {live.name}" in result.out
    assert host.live() == live and host.branch() == good_sha
    entry = history(host)[-1]
    assert entry["outcome"] == "failed" and entry["failed_phase"] == "migrate"
    assert entry["migrations"] == ["polls.0003_votes"]
    with psycopg.connect(pg_url) as conn:
        assert applied_in(conn)[-1] == "0003_votes"


def test_hung_migration_is_stopped(host: Host, work: Work, postgres, pg_url):  # noqa: F811
    set_env(host, DATABASE_URL=pg_url)
    work.push()
    live = host.live()
    work.commit(
        "hangs",
        **{"shipyard.toml": "migrate_timeout = 4\n"},
        **sql_migration("0003_hang", "0002_choice", "SELECT pg_sleep(600)"),
    )
    started = time.monotonic()
    result = work.push(fails=True)
    assert time.monotonic() - started < 60
    line = phase_line(result.out, "migrate")
    assert "migration polls.0003_hang did not finish within 4s and was stopped" in line
    assert "none of the 1 pending was applied" in line
    assert host.live() == live
    with postgres.connect() as conn:  # the server session of the killed migration is gone too
        rows = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'shipyard %'"
        ).fetchone()
        assert rows[0] == 0


def test_two_roots_one_database_take_turns(tmp_path, work: Work, pg_url):  # noqa: F811
    a, b = make_host(tmp_path / "a"), make_host(tmp_path / "b")
    for h in (a, b):
        set_env(h, DATABASE_URL=pg_url)
    work.git("remote", "set-url", "production", str(a.repo))
    work.git("remote", "add", "other", str(b.repo))
    work.write("shipyard.toml", "")  # no build step: both reach migrate quickly
    work.commit("no build")
    work.push()
    work.git("push", "-q", "other", "main")
    work.commit(
        "slow",
        **{"polls__migrations__0003_votes.py": MIGRATION_0003},
        **python_migration("0004_slow", "0003_votes", "time.sleep(4)"),
    )
    pushes = [
        subprocess.Popen(
            ["git", "push", remote, "main"],
            cwd=work.path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for remote in ("production", "other")
    ]
    outs = [p.communicate(timeout=180)[0] for p in pushes]
    for out in outs:
        assert "shipyard ▸ live" in out, out
    holder = next(o for o in outs if "2 applied: polls.0003_votes, polls.0004_slow" in o)
    waiter = next(o for o in outs if o is not holder)
    assert "under the database lock" in holder
    assert "waiting for the database migration lock" in waiter
    assert "held by `shipyard mysite deploy #2 (pid" in waiter
    assert "database migration lock taken after" in waiter
    assert "nothing pending (Django: 4 applied" in phase_line(waiter, "migrate")
    with psycopg.connect(pg_url) as conn:
        assert applied_in(conn) == ["0001_initial", "0002_choice", "0003_votes", "0004_slow"]


def test_database_down_is_reported_as_unreachable(host: Host, work: Work, postgres):  # noqa: F811
    set_env(host, DATABASE_URL=postgres.url().replace(str(postgres.port), "1"))
    result = work.push(fails=True)
    line = phase_line(result.out, "migrate")
    assert "✗ migrate" in line and "database unreachable:" in line and "refused" in line
    assert "pending" not in line
    assert PASSWORD not in result.out
    assert "nothing is live yet" in result.out and history(host)[-1]["outcome"] == "failed"


def test_post_migrate_and_skip_migrate(host: Host, work: Work, pg_url):  # noqa: F811
    set_env(host, DATABASE_URL=pg_url)
    skipped = work.push("-o", "skip-migrate", "main")
    assert "! migrations skipped (-o skip-migrate)" in skipped.out
    assert "skipped by -o skip-migrate" in phase_line(skipped.out, "migrate")
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT to_regclass('django_migrations')").fetchone()[0] is None
    work.commit(
        "expand, then contract once live",
        **{
            "shipyard.toml": (
                'migrate = "python manage.py migrate polls 0002 --noinput"\n'
                'post_migrate = "python manage.py migrate --noinput"\n'
            ),
            "polls__migrations__0003_votes.py": MIGRATION_0003,
        },
    )
    result = work.push()
    assert "2 applied: polls.0001_initial, polls.0002_choice" in phase_line(result.out, "migrate")
    assert "still pending after" in result.out and "polls.0003_votes" in result.out
    post = phase_line(result.out, "post-migrate")
    assert "✓ post-migrate" in post and "1 applied: polls.0003_votes" in post
    assert result.out.index("✓ switch") < result.out.index("✓ post-migrate")
    assert manifest(host)["migrations"] == [
        "polls.0001_initial",
        "polls.0002_choice",
        "polls.0003_votes",
    ]
    live = host.live()
    work.commit("a failing contract step", **{"shipyard.toml": 'post_migrate = "exit 4"\n'})
    failing = work.push()
    assert "✗ post-migrate" in failing.out
    assert host.live() != live  # the new release stays live
    assert "but post-migrate: `exit 4` failed (exit 4)" in failing.out
    assert "the new release stays live" in failing.out
    assert history(host)[-1]["outcome"] == "live" and history(host)[-1]["problems"]
