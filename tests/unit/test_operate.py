"""Rollback bookkeeping without git: target choice, migration warnings, adapters, names."""

from __future__ import annotations

import json
import time

import pytest

from shipyard import history, migrate, operate, process_views, release, views
from shipyard.app import App
from shipyard.errors import AppError, ShipyardError


def make_release(app: App, rid: str, state: str = "good", migrations=None) -> None:
    path = app.releases / rid
    path.mkdir(parents=True)
    release.Manifest(
        sha=rid[-7:] + "0" * 33,
        ref="refs/heads/main",
        release=rid,
        deploy=1,
        pusher="alice",
        created=time.time(),
        state=state,
        migrations=migrations,
    ).save(path)


def live(app: App, rid: str) -> None:
    (app.dir / "current").unlink(missing_ok=True)
    (app.dir / "current").symlink_to(f"releases/{rid}")


@pytest.fixture
def app(tmp_path) -> App:
    app = App.at("mysite", tmp_path)
    for path in (app.releases, app.deploys, app.run):
        path.mkdir(parents=True)
    return app


A, B, C = (f"2026112{n}T000000Z-{n}aaaaaa" for n in (1, 2, 3))


def record(app: App, number: int, rid: str, kind: str = "push", previous=None, **extra):
    history.log_path(app, number).touch()
    entry = {"deploy": number, "release": rid, "kind": kind, "previous": previous}
    history.record(app, {**entry, "outcome": "live", "sha": rid[-7:], **extra})


def test_rollback_target_walks_back_and_never_returns_to_a_release_it_left(app):
    for rid in (A, B, C):
        make_release(app, rid)
    record(app, 1, A)
    record(app, 2, B, previous=A)
    record(app, 3, C, previous=B)
    live(app, C)
    assert operate.rollback_target(app) == B
    record(app, 4, B, kind="rollback", previous=C)
    live(app, B)
    assert operate.rollback_target(app) == A
    record(app, 5, C, kind="rollback", previous=B)  # named: forward again
    live(app, C)
    assert operate.rollback_target(app) == A  # B was rolled back from, after it was live


def test_rollback_target_without_history_uses_older_releases_on_disk(app):
    make_release(app, A)
    make_release(app, B, state="building")
    make_release(app, C)
    live(app, C)
    assert operate.rollback_target(app) == A
    live(app, A)
    assert operate.rollback_target(app) is None


def test_migrations_between_uses_manifests_or_the_migrate_module(app, monkeypatch):
    make_release(app, A, migrations=["p.0001"])
    make_release(app, B, migrations=["p.0002"])
    make_release(app, C, migrations=["p.0003", "p.0004"])
    assert operate.migrations_between(app, C, A) == ["p.0002", "p.0003", "p.0004"]
    assert operate.migrations_between(app, C, B) == ["p.0003", "p.0004"]
    assert operate.migrations_between(app, A, C) == []  # forward: nothing left behind
    monkeypatch.setattr(migrate, "applied_between", lambda a, f, t: [f"{f}>{t}"], raising=False)
    assert operate.migrations_between(app, C, A) == [f"{C}>{A}"]


def test_process_status_view(app, monkeypatch):
    assert views.render_processes(None) == ["  processes  n/a"]
    rows = [
        {"process": "web-blue.0", "state": "RUNNING", "pid": 42, "release": "r1", "live": True},
        {"process": "worker.0", "state": "FATAL", "pid": 0, "release": "r0", "live": False},
    ]
    monkeypatch.setattr(process_views, "status", lambda a: rows)
    assert views.processes(app) == rows
    assert views.render_processes(rows) == [
        "  processes  web-blue.0: RUNNING pid 42 live",
        "             worker.0: FATAL pid - on r0 (NOT LIVE)",
    ]

    def broken(a):
        raise RuntimeError("no socket")

    monkeypatch.setattr(process_views, "status", broken, raising=False)
    assert views.processes(app) == {"error": "RuntimeError: no socket"}
    json.dumps(views.status(app))  # always serialisable


@pytest.mark.parametrize("name", ["../x", "a/../b", "/etc", "-f", ".hidden", "a b", "x\n", ""])
def test_release_names_that_could_be_paths_are_refused(app, name):
    with pytest.raises(AppError, match="invalid release name"):
        operate.find_release(app, name)


def test_release_names_resolve_by_id_sha_and_tag(app):
    make_release(app, A)
    make_release(app, B)
    edit = release.Manifest.load(app.releases / B)
    edit.tag = "v2"
    edit.save(app.releases / B)
    assert operate.find_release(app, A) == A
    assert operate.find_release(app, f"releases/{A}") == A
    assert operate.find_release(app, "2aaaaaa") == B
    assert operate.find_release(app, "v2") == B
    with pytest.raises(ShipyardError, match="no release 'v9'"):
        operate.find_release(app, "v9")


def test_unfinished_deploys_are_running_waiting_or_interrupted(app):
    history.log_path(app, 1).touch()
    history.record(app, {"deploy": 1, "outcome": "live"})
    history.claim_number(app)  # 2: claimed, nobody holds it
    assert [e["outcome"] for e in history.deploys(app)] == ["live", "interrupted"]
    number = history.claim_number(app)
    with history.open_log(app, number):
        assert history.deploys(app)[-1]["outcome"] == "waiting"
    assert history.deploys(app)[-1]["outcome"] == "interrupted"


def test_a_deploys_own_history_line_is_read_from_the_end_of_the_file(app):
    """What `answered` reads for the exit status: the newest line for the number, at any size."""
    assert history.recorded(app, 1) is None  # no history yet
    for n in range(1, 400):
        record(app, n, A, message="x" * 300)
    history.record(app, {"deploy": 400, "outcome": "failed", "release": B})
    assert history.recorded(app, 400)["outcome"] == "failed"
    assert history.recorded(app, 399)["release"] == A
    assert history.recorded(app, 2) is None  # not in the last 64 KiB: the command ends as before
    assert history.recorded(app, 2, tail=1 << 30)["deploy"] == 2
    assert history.recorded(app, 401) is None
