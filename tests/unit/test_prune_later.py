"""Pruning off the push's critical path: ``finish`` only renames what it prunes aside (gone from
every listing at once), the worker deletes it after the outcome is reported."""

from __future__ import annotations

import os
from pathlib import Path

from shipyard import release, venv
from shipyard.app import App


def make_app(tmp: Path, count: int) -> tuple[App, list[str]]:
    app = App.at("site", tmp / "apps")
    app.releases.mkdir(parents=True)
    app.venvs.mkdir()
    ids = []
    for n in range(count):
        rid = f"2026010{n + 1}T000000Z-{n:07x}"
        path = app.release_dir(rid)
        path.mkdir()
        (path / "app.py").write_text(f"# {n}\n")
        (app.venvs / f"v{n}").mkdir()
        release.Manifest(
            sha=f"{n:040x}", ref="refs/heads/main", release=rid, deploy=n + 1, pusher="t",
            created=float(n), venv=f"v{n}", state="good", live_at=float(n),
        ).save(path)  # fmt: skip
        ids.append(rid)
    os.symlink(app.release_dir(ids[-1]).relative_to(app.dir), app.current)
    return app, ids


def test_pruned_releases_and_venvs_are_renamed_aside_until_emptied(tmp_path):
    app, ids = make_app(tmp_path, 4)
    trash: list[Path] = []
    removed = release.prune(app, 2, trash=trash)
    assert removed == ids[:2]
    assert [rid for rid, _ in release.releases(app)] == ids[2:]  # gone from the listing now
    used = {m.venv for _, m in release.releases(app) if m and m.venv}
    assert sorted(venv.prune(app, used, trash)) == ["v0", "v1"]
    assert len(trash) == 4 and all(p.is_dir() for p in trash)  # not deleted yet
    assert sorted(p.name for p in app.venvs.iterdir() if not p.name.startswith(".")) == [
        "v2",
        "v3",
    ]
    release.prune(app, 2, trash=trash)  # a second prune does not sweep our own trash
    assert all(p.is_dir() for p in trash)
    release.empty(trash)
    assert trash == [] and sorted(os.listdir(app.releases)) == ids[2:]
    assert sorted(os.listdir(app.venvs)) == ["v2", "v3"]


def test_without_trash_pruning_deletes_at_once(tmp_path):
    app, ids = make_app(tmp_path, 3)
    assert release.prune(app, 1) == ids[:2]
    assert sorted(os.listdir(app.releases)) == ids[2:]


def test_a_killed_workers_trash_is_swept_by_the_next_prune(tmp_path):
    app, ids = make_app(tmp_path, 2)
    dead = app.releases / f".trash-{ids[0]}-999999999"  # no such pid
    dead.mkdir()
    release.prune(app, 5)
    assert not dead.exists()
