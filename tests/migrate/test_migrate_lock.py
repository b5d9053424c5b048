"""The PostgreSQL advisory lock on its own: who holds it is named, a dead holder frees it."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import psycopg
import pytest
from pgcluster import pg_url, postgres  # noqa: F401  (fixtures)

from shipyard import advisory_lock, database
from shipyard.app import App
from shipyard.config import AppConfig
from shipyard.errors import PhaseError
from shipyard.report import Reporter


def fake_deploy(tmp_path, number: int = 7, timeout: float = 30):
    out = io.StringIO()
    reporter = Reporter(out, heartbeat=0.5)
    d = SimpleNamespace(
        app=App.at("mysite", tmp_path),
        number=number,
        out=reporter,
        config=AppConfig(migrate_timeout=timeout),
    )
    return d, out


def take_in_thread(d, db) -> tuple[threading.Thread, dict]:
    state: dict = {}

    def run() -> None:
        try:
            with advisory_lock.database_lock(d, db) as conn:
                state["taken"] = time.monotonic()
                state["pid"] = conn.info.backend_pid
        except Exception as exc:  # noqa: BLE001
            state["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, state


def test_waiter_names_a_manual_holder(tmp_path, pg_url):  # noqa: F811
    db = database.parse_database_url(pg_url)
    key = advisory_lock.lock_key("mysite")
    holder = psycopg.connect(pg_url, autocommit=True, application_name="manual migrate by bob")
    holder.execute("SELECT pg_advisory_lock(%s)", (key,))
    d, out = fake_deploy(tmp_path)
    thread, state = take_in_thread(d, db)
    time.sleep(1.5)
    assert "taken" not in state
    text = out.getvalue()
    assert "waiting for the database migration lock" in text
    assert "held by `manual migrate by bob` (server pid" in text
    assert "still waiting" in text  # the heartbeat
    holder.close()
    thread.join(10)
    assert "taken" in state and "lock taken after" in out.getvalue()


def test_a_holder_that_dies_releases_the_lock(tmp_path, pg_url):  # noqa: F811
    key = advisory_lock.lock_key("mysite")
    script = (
        "import psycopg, sys, time\n"
        f"c = psycopg.connect({pg_url!r}, autocommit=True, application_name='doomed')\n"
        f"c.execute('SELECT pg_advisory_lock({key})')\n"
        "print('locked', flush=True)\n"
        "time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    d, out = fake_deploy(tmp_path)
    thread, state = take_in_thread(d, database.parse_database_url(pg_url))
    time.sleep(1.0)
    assert "taken" not in state and "`doomed`" in out.getvalue()
    proc.kill()  # no cleanup code runs: the server drops the session and its lock
    proc.wait()
    thread.join(10)
    assert "taken" in state, out.getvalue()


def test_waiting_gives_up_after_migrate_timeout(tmp_path, pg_url):  # noqa: F811
    key = advisory_lock.lock_key("mysite")
    holder = psycopg.connect(pg_url, autocommit=True, application_name="slow one")
    holder.execute("SELECT pg_advisory_lock(%s)", (key,))
    d, _ = fake_deploy(tmp_path, timeout=1)
    db = database.parse_database_url(pg_url)
    with pytest.raises(PhaseError) as info, advisory_lock.database_lock(d, db):
        pass
    assert "gave up after 1s waiting for the database migration lock" in info.value.message
    assert "`slow one`" in info.value.message
    holder.close()


def test_other_apps_do_not_wait(tmp_path, pg_url):  # noqa: F811
    holder = psycopg.connect(pg_url, autocommit=True)
    holder.execute("SELECT pg_advisory_lock(%s)", (advisory_lock.lock_key("blog"),))
    d, out = fake_deploy(tmp_path)
    with advisory_lock.database_lock(d, database.parse_database_url(pg_url)) as conn:
        assert conn is not None
    assert "waiting" not in out.getvalue()
    holder.close()
