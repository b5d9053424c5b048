"""Migration helpers that need no database server: URLs, progress parsing, detection."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from shipyard import advisory_lock, command, database, migration_progress, migration_tools
from shipyard.app import App
from shipyard.config import AppConfig
from shipyard.errors import ConfigError
from shipyard.release import shared_env
from shipyard.report import Masker, Skip


@pytest.mark.parametrize(
    ("url", "kind", "where"),
    [
        ("postgresql://u:p@db:5433/app", "postgresql", "db:5433/app"),
        ("postgres://u@db/app", "postgresql", "db:5432/app"),
        ("postgresql+psycopg://u:p@127.0.0.1/app", "postgresql", "127.0.0.1:5432/app"),
        ("sqlite:////srv/app/shared/db.sqlite3", "sqlite", "//srv/app/shared/db.sqlite3"),
        ("mysql://u:p@db/app", "other", "mysql at db"),
        ("", "none", ""),
        (None, "none", ""),
    ],
)
def test_database_urls(url, kind, where):
    db = database.parse_database_url(url)
    assert (db.kind, db.where) == (kind, where)


def test_conninfo_drops_the_sqlalchemy_driver():
    db = database.parse_database_url("postgresql+psycopg://u:p@h/db")
    assert db.conninfo == "postgresql://u:p@h/db"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("postgresql://u:hunter22@db:54x2/app", "its port is not a number"),
        ("localhost/app", "it has no scheme"),
        ("postgresql://u:hunter22@db/my app", "whitespace"),
        ("sqlite://", "needs a file path"),
        ("1x://hunter22@h", "is not a URL scheme"),
    ],
)
def test_malformed_database_urls_never_echo_the_url(url, reason):
    with pytest.raises(ConfigError) as info:
        database.parse_database_url(url, "DATABASE_URL in shared/.env")
    assert reason in info.value.message and "DATABASE_URL in shared/.env" in info.value.message
    assert "hunter22" not in str(info.value)


def test_sqlite_paths(tmp_path):
    four = database.parse_database_url("sqlite:////srv/db.sqlite3")
    assert database.sqlite_paths(four, tmp_path) == [Path("/srv/db.sqlite3")]
    three = database.parse_database_url("sqlite:///db.sqlite3")
    assert database.sqlite_paths(three, tmp_path) == [Path("/db.sqlite3"), tmp_path / "db.sqlite3"]


def test_lock_key_is_a_stable_signed_bigint_per_app():
    key = advisory_lock.lock_key("mysite")
    assert key == advisory_lock.lock_key("mysite") != advisory_lock.lock_key("mysite-staging")
    assert -(2**63) <= key < 2**63


def test_django_progress_times_each_migration_from_its_start():
    done = []
    progress = migration_progress.Progress("django", lambda name, s: done.append((name, s)))
    progress.feed("Operations to perform:\n  Apply all migrations: polls\nRunning migrations:\n", 0)
    progress.feed("  Applying polls.0001_initial...", 1.0)
    assert progress.current == "polls.0001_initial" and not done
    progress.feed(" OK\n  Applying polls.0002_choice...", 1.5)
    progress.feed(" OK\n  Applying polls.0003_x...", 4.0)
    progress.feed("Traceback (most recent call last):\n", 4.2)
    assert done == [("polls.0001_initial", 0.5), ("polls.0002_choice", 2.5)]
    assert progress.current == "polls.0003_x"


def test_alembic_progress_ends_one_when_the_next_starts():
    progress = migration_progress.Progress("alembic")
    log = "INFO  [alembic.runtime.migration] Running upgrade {} -> {}, {}\n"
    progress.feed(log.format("", "0001", "create notes"), 1.0)
    progress.feed(log.format("0001", "0002", "add done"), 3.0)
    progress.close(3.5)
    assert progress.done == [("0001", 2.0), ("0002", 0.5)]


def test_unreachable_reason_picks_the_driver_line():
    output = (
        "Traceback (most recent call last):\n  ...\n"
        'django.db.utils.OperationalError: connection failed: connection to server at "h", '
        "port 1 failed: Connection refused\n"
    )
    assert advisory_lock.unreachable_reason(output).startswith("connection failed: connection to")
    assert advisory_lock.unreachable_reason("ValueError: nope\n") is None


def test_detection(tmp_path):
    assert isinstance(migration_tools.detect(tmp_path, AppConfig()), Skip)
    (tmp_path / "alembic.ini").write_text("[alembic]\n")
    plan = migration_tools.detect(tmp_path, AppConfig())
    assert (plan.kind, plan.command) == ("alembic", "alembic upgrade heads")
    (tmp_path / "manage.py").write_text("")
    plan = migration_tools.detect(tmp_path, AppConfig())
    assert (plan.kind, plan.command) == ("django", "python manage.py migrate --noinput")
    plan = migration_tools.detect(
        tmp_path, AppConfig(migrate="make migrate", migrate_check="make check")
    )
    assert (plan.kind, plan.command, plan.check) == ("command", "make migrate", "make check")
    assert isinstance(migration_tools.detect(tmp_path, AppConfig(migrate="")), Skip)
    plain = tmp_path / "plain"
    plain.mkdir()
    plan = migration_tools.detect(plain, AppConfig(migrate="./bin/migrate"))
    assert (plan.kind, plan.listable) == ("command", False)


def test_masker_hides_a_url_password_on_its_own():
    mask = Masker({"DATABASE_URL": "postgresql://app:s%40fe-pw@db/app"})
    assert mask("FATAL: bad password s@fe-pw") == "FATAL: bad password ********"
    assert "s%40fe-pw" not in mask("url postgresql://app:s%40fe-pw@db/app")


def test_unparsable_env_line_is_refused_with_file_and_line(tmp_path):
    app = App.at("mysite", tmp_path)
    app.shared.mkdir(parents=True)
    (app.shared / ".env").write_text('A=1\n# note\nB="s3cr3t-unclosed\nC=3\n')
    with pytest.raises(ConfigError) as info:
        shared_env(app)
    assert info.value.message.startswith(f"{app.shared / '.env'}:3: cannot parse")
    assert "s3cr3t" not in info.value.message
    (app.shared / ".env").write_text('A=1\nB="two words"\nexport C=3\n')
    assert shared_env(app) == {"A": "1", "B": "two words", "C": "3"}


def test_a_timed_out_command_is_stopped_with_its_children(tmp_path):
    d = SimpleNamespace(app=App.at("mysite", tmp_path), release=tmp_path, env={})
    d.app.dir.mkdir()
    d.app.config_file.write_text("allow_root = true\n")  # commands refuse root without it
    started = time.monotonic()
    ran = command.in_release(d, "sleep 30 & echo started; wait", timeout=1)
    assert ran.timed_out and ran.output == "started\n"
    assert time.monotonic() - started < 5
    ran = command.in_release(d, "no-such-command-xyz", timeout=5)
    assert ran.exited == 127 and not ran.timed_out
