"""Data inside a release: moved to shared/ without losing a write, or refused."""

from __future__ import annotations

import os
import sqlite3
from types import SimpleNamespace

import pytest

from shipyard import data
from shipyard.app import App
from shipyard.errors import PhaseError
from shipyard.report import Masker

OLD, NEW = "20261201T000000Z-aaaaaaa", "20261201T000100Z-bbbbbbb"


@pytest.fixture
def d(tmp_path):
    app = App(tmp_path, "site")
    for rid in (OLD, NEW):
        (app.releases / rid / "mysite").mkdir(parents=True)
    app.shared.mkdir()
    app.run.mkdir()
    os.symlink(f"releases/{OLD}", app.current)
    lines = []
    out = SimpleNamespace(warn=lines.append, mask=Masker({}))
    return SimpleNamespace(
        app=app, release_id=NEW, release=app.releases / NEW, out=out, lines=lines
    )


def test_the_live_releases_file_moves_to_shared_while_it_is_open(d):
    live_db = d.app.releases / OLD / "db.sqlite3"
    conn = sqlite3.connect(live_db)  # the live web process, holding it open
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    assert data.seed(d, "db.sqlite3", "file") == f"moved from releases/{OLD}"
    conn.execute("INSERT INTO t VALUES (1)")  # a write after the move is not lost
    conn.commit()
    assert live_db.is_symlink() and live_db.resolve() == d.app.shared / "db.sqlite3"
    data.link_one(d, "db.sqlite3", "file")
    rows = sqlite3.connect(d.release / "db.sqlite3").execute("SELECT x FROM t").fetchall()
    assert rows == [(1,)]
    assert data.seed(d, "db.sqlite3", "file") is None  # there already: once only


def test_a_committed_database_becomes_a_writable_file_of_its_own_in_shared(d):
    """Tracked files are read-only and their inodes shared between releases: the copy in
    shared/ must be the app's own, writable file (not the commit's inode)."""
    os.unlink(d.app.current)  # a first deploy: nothing live
    committed = d.release / "db.sqlite3"
    sqlite3.connect(committed).execute("CREATE TABLE t (x)").connection.commit()
    other = d.app.releases / OLD / "db.sqlite3"
    os.link(committed, other)  # as a checkout from the diff links unchanged files
    os.chmod(committed, 0o444)
    assert data.seed(d, "db.sqlite3", "file") == "from the commit"
    shared = d.app.shared / "db.sqlite3"
    assert os.stat(shared).st_mode & 0o200 and os.stat(shared).st_ino != os.stat(other).st_ino
    data.link_one(d, "db.sqlite3", "file")
    conn = sqlite3.connect(d.release / "db.sqlite3")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.commit()
    assert sqlite3.connect(other).execute("SELECT count(*) FROM t").fetchone() == (0,)


def test_paths_inside_and_outside_the_release(d):
    assert data.inside(d.release, d.release / "db.sqlite3", d.app) == "db.sqlite3"
    assert data.inside(d.release, d.app.shared / "db.sqlite3", d.app) is None
    os.symlink("../../shared/x.db", d.release / "x.db")
    assert data.inside(d.release, d.release / "x.db", d.app) is None  # linked already
    assert data.inside(d.release, d.release, d.app) == "."


def test_code_or_the_release_itself_is_refused(d):
    (d.release / "mysite" / "settings.py").write_text("")
    assert "holds the app's code" in data.refusal(d, "mysite", "dir", "Django MEDIA_ROOT")
    assert "the release itself" in data.refusal(d, ".", "dir", "Django MEDIA_ROOT")
    assert data.refusal(d, "media", "dir", "Django MEDIA_ROOT") is None


def test_a_database_written_beside_the_live_ones_own_is_refused(d):
    d.reused = False
    d.manifest = SimpleNamespace(created=0)
    for rid in (OLD, NEW):
        sqlite3.connect(d.app.releases / rid / "app.db").execute("CREATE TABLE t (x)")
    with pytest.raises(PhaseError) as err:
        data.check(d)
    assert f"releases/{NEW}/app.db is an SQLite database written inside" in err.value.message
    assert 'shared = [".env", "app.db"]' in err.value.hint


def test_a_first_database_written_inside_moves_to_shared_and_is_remembered(d):
    d.reused = False
    d.manifest = SimpleNamespace(created=0)
    os.unlink(d.app.current)
    sqlite3.connect(d.release / "app.db").execute("CREATE TABLE t (x)")
    assert data.check(d) == "app.db moved to shared/ and linked"
    assert (d.release / "app.db").is_symlink() and (d.app.shared / "app.db").is_file()
    assert data.remembered(d.app) == {"app.db": "file"}
