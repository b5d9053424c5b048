"""migrate's fast path (``unchanged``): Django is not asked only while nothing that decides the
set of migrations changed since the live release asked it. SQLite in ``shared/``, no tool run."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from shipyard import database, migration_cache, migration_tools, release
from shipyard.app import App

SITE = "lib/python3.11/site-packages"
APPLIED = ["auth.0001_initial", "polls.0001_initial"]


class Site:
    """An app with a live release that recorded 'nothing pending', and a new release next to it."""

    def __init__(self, tmp: Path) -> None:
        self.app = App.at("mysite", tmp / "apps")
        self.app.releases.mkdir(parents=True)
        self.app.shared.mkdir()
        self.app.config_file.write_text("allow_root = true\n")  # commands refuse root without it
        self.db = self.app.shared / "db.sqlite3"
        (self.app.shared / ".env").write_text(f"DATABASE_URL=sqlite:///{self.db}\n")
        with sqlite3.connect(self.db) as conn:
            conn.execute("CREATE TABLE django_migrations (app TEXT, name TEXT)")
            conn.executemany(
                "INSERT INTO django_migrations VALUES (?, ?)",
                [n.split(".") for n in APPLIED],
            )
        conn.close()
        self.plan = migration_tools.Plan("django", "Django", migration_tools.DJANGO_MIGRATE)
        self.live = self.release("20260101T000000Z-aaaaaaa", venv="v1")
        self.deploy(self.live, "v1", 1).save()
        os.symlink(self.live.relative_to(self.app.dir), self.app.current)
        self.new = self.release("20260101T000100Z-bbbbbbb", venv="v2")  # a changed requirement

    def release(self, rid: str, venv: str) -> Path:
        path = self.app.release_dir(rid)
        write(
            path / "manage.py",
            "os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'mysite.settings')\n",
        )
        write(path / "mysite" / "settings.py", "INSTALLED_APPS = ['polls']\n")
        write(path / "polls" / "migrations" / "0001_initial.py", "# 1\n")
        site = self.app.venvs / venv / SITE
        if not site.is_dir():
            write(site / "django" / "contrib" / "auth" / "migrations" / "0001_initial.py", "# a\n")
            write(site / "django" / "contrib" / "auth" / "apps.py", "label = 'auth'\n")
            if venv != "v1":  # … that brings a package with no app in it
                write(site / "six.py", "# six\n")
        os.symlink(os.path.relpath(self.app.venvs / venv, path), path / ".venv")
        return path

    def deploy(self, path: Path, venv: str, number: int = 2) -> SimpleNamespace:
        d = SimpleNamespace(
            app=self.app,
            release=path,
            venv_key=venv,
            number=number,
            env=release.shared_env(self.app),
        )
        db = database.database_of(d)
        d.save = lambda: migration_cache.save_state(
            d, self.plan, db, None, migration_tools.Status(APPLIED, [])
        )
        d.unchanged = lambda: migration_cache.unchanged(d, self.plan, db, None)
        return d


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return Site(tmp_path)


def test_a_changed_requirement_without_migrations_keeps_the_fast_path(site: Site):
    d = site.deploy(site.new, "v2")
    assert "unchanged since deploy #1" in d.unchanged()
    state = (site.new / migration_cache.STATE).read_text()
    assert '"venv": "v2"' in state  # inherited, recorded with the new venv's key


def test_a_code_only_deploy_does_not_walk_the_venv(site: Site, monkeypatch):
    d = site.deploy(site.new, "v1")  # the same venv key as the live release
    monkeypatch.setattr(migration_cache, "venv_files", lambda venv: pytest.fail("walked the venv"))
    assert d.unchanged()


@pytest.mark.parametrize("upgraded", [False, True])
def test_the_digest_made_beside_the_build_steps_is_the_walks(site: Site, monkeypatch, upgraded):
    """Hashed in a thread while the build steps run (``digest_beside``), then not again."""
    if upgraded:  # a package upgrade that brings a migration is still noticed
        auth = site.app.venvs / "v2" / SITE / "django" / "contrib" / "auth"
        write(auth / "migrations" / "0002_alter.py", "# b\n")
    d = site.deploy(site.new, "v2")
    walked = migration_cache._venv_digest((site.new / ".venv").resolve())
    migration_cache.digest_beside(d)
    monkeypatch.setattr(migration_cache, "venv_files", lambda venv: pytest.fail("walked again"))
    assert migration_cache.venv_digest(d) == walked
    assert (d.unchanged() is None) == upgraded


def test_another_process_migrated_the_database(site: Site):
    with sqlite3.connect(site.db) as conn:
        conn.execute("INSERT INTO django_migrations VALUES ('polls', '0002_choice')")
    conn.close()
    assert site.deploy(site.new, "v2").unchanged() is None


def test_the_database_was_reset(site: Site):
    site.db.unlink()
    assert site.deploy(site.new, "v2").unchanged() is None


def test_a_changed_migration_file_in_the_release(site: Site):
    write(site.new / "polls" / "migrations" / "0002_choice.py", "# 2\n")
    assert site.deploy(site.new, "v2").unchanged() is None


def test_a_package_upgrade_that_brings_a_migration(site: Site):
    auth = site.app.venvs / "v2" / SITE / "django" / "contrib" / "auth"
    write(auth / "migrations" / "0002_alter.py", "# b\n")
    assert site.deploy(site.new, "v2").unchanged() is None


def test_a_package_whose_app_config_changed(site: Site):
    write(site.app.venvs / "v2" / SITE / "django" / "contrib" / "auth" / "apps.py", "label = 'x'\n")
    assert site.deploy(site.new, "v2").unchanged() is None


def test_changed_settings(site: Site):
    write(site.new / "mysite" / "settings.py", "INSTALLED_APPS = ['polls', 'blog']\n")
    assert site.deploy(site.new, "v2").unchanged() is None


def test_a_changed_env_file(site: Site):
    env = site.app.shared / ".env"
    time.sleep(0.01)  # a new mtime even on a coarse clock
    env.write_text(env.read_text() + "DEBUG=1\n")
    assert site.deploy(site.new, "v2").unchanged() is None
