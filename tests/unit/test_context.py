"""The deploy's context is made by its factories, one per way a deploy starts."""

from __future__ import annotations

import io
from pathlib import Path

from shipyard import release
from shipyard.app import App
from shipyard.config import HostConfig
from shipyard.context import Deploy, ProcessState
from shipyard.report import Reporter

RID = "20260101T000000Z-aaaaaaa"


def kept(tmp_path: Path) -> tuple[App, release.Manifest]:
    app = App(tmp_path, "mysite")
    app.release_dir(RID).mkdir(parents=True)
    m = release.Manifest("a" * 40, "refs/heads/main", RID, 3, "ann", 1.0, tag="v1", state="good")
    m.save(app.release_dir(RID))
    return app, m


def test_a_rollback_names_its_kept_release_and_its_commit(tmp_path: Path):
    app, m = kept(tmp_path)
    out = Reporter(io.StringIO())
    d = Deploy.for_rollback(app, HostConfig(branch="prod"), 7, RID, m, out, pusher="bo", options={})
    assert (d.kind, d.release_id, d.sha, d.tag, d.ref) == (
        "rollback",
        RID,
        m.sha,
        "v1",
        "refs/heads/prod",
    )
    assert isinstance(d.processes, ProcessState) and d.processes.running is None


def test_a_journal_note_gives_back_the_interrupted_deploy(tmp_path: Path):
    app, _ = kept(tmp_path)
    note = {"deploy": 4, "sha": "b" * 40, "release": RID, "phase": "restart", "reused": True}
    d = Deploy.from_note(app, HostConfig(), Reporter(io.StringIO()), note, "deploy #5")
    assert (d.number, d.release_id, d.reused, d.ref) == (4, RID, True, "refs/heads/main")
    assert d.recovery["by"] == "deploy #5" and d.recovery["phase"] == "restart"


def test_the_live_release_is_described_by_its_manifest(tmp_path: Path):
    app, m = kept(tmp_path)
    d = Deploy.of_live(app, HostConfig(), Reporter(io.StringIO()), RID)
    assert (d.number, d.sha, d.pusher, d.release_id) == (3, m.sha, "ann", RID)
    d = Deploy.for_request(
        app, HostConfig(), Reporter(io.StringIO()), sha=m.sha, ref=m.ref, number=3,
        release_id=RID, pusher="p", tag=None, options={}, kind="push",
    )  # fmt: skip
    assert d.peer and d.release_id == RID
