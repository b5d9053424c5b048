"""A receiver's work off the switch's path: pruning once idle, and its repo kept open."""

from __future__ import annotations

import io
import subprocess
import threading
import time
from pathlib import Path

import pytest

from shipyard import lock, release
from shipyard import release_phases as rp
from shipyard.app import App
from shipyard.config import HostConfig
from shipyard.context import Deploy
from shipyard.receiver import objects
from shipyard.receiver.server import Tidier
from shipyard.report import Reporter

IDS = [f"20260101T00000{n}Z-{c * 7}" for n, c in enumerate("abcd")]


def releases_of(app: App) -> list[str]:
    return [rid for rid, _ in release.releases(app)]


@pytest.fixture
def app(tmp_path: Path) -> App:
    app = App(tmp_path, "mysite")
    for n, rid in enumerate(IDS[:3]):
        app.release_dir(rid).mkdir(parents=True)
        release.Manifest("a" * 40, "r", rid, n, "p", n, state="good", live_at=n).save(
            app.release_dir(rid)
        )
    release.switch(app, IDS[2])
    return app


@pytest.fixture
def tidier(monkeypatch):
    monkeypatch.setattr(Tidier, "IDLE", 0.2)
    closing = threading.Event()
    yield Tidier(closing)
    closing.set()


def wait_for(check, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def test_a_peer_finish_leaves_the_prune_to_its_receiver(app: App):
    asked = []
    d = Deploy(app, HostConfig(keep=1), 3, "a" * 40, "refs/heads/main", Reporter(io.StringIO()))
    d.release_id, d.previous, d.committed = IDS[2], IDS[1], False
    d.manifest = release.Manifest.load(app.release_dir(IDS[2]))
    d.prune_later = lambda keep, protect: asked.append((keep, protect))
    assert rp.finish_peer(d) == "kept 1, pruned when idle"
    assert release.Manifest.load(app.release_dir(IDS[2])).state == "good"
    assert asked == [(1, {IDS[1]})]  # what it would go back to stays until the cluster commits
    assert releases_of(app) == IDS[:3]  # nothing pruned on the switch's path


def test_the_receiver_prunes_once_idle_not_while_serving(app: App, tidier: Tidier):
    tidier.busy(+1)  # a request being served
    tidier.later(app, 1, {IDS[1]})
    time.sleep(3 * Tidier.IDLE)
    assert releases_of(app) == IDS[:3]
    tidier.busy(-1)
    assert wait_for(lambda: releases_of(app) == IDS[1:3])


def test_a_release_prepared_before_the_prune_ran_is_kept(app: App, tidier: Tidier):
    tidier.busy(+1)
    tidier.later(app, 1, set())
    app.release_dir(IDS[3]).mkdir()
    release.Manifest("b" * 40, "r", IDS[3], 4, "p", 4, state="prepared").save(
        app.release_dir(IDS[3])
    )
    tidier.protect(app, IDS[3])  # the next deploy's prepare, before its switch
    tidier.busy(-1)
    assert wait_for(lambda: releases_of(app) == [IDS[2], IDS[3]])


def test_the_prune_waits_for_a_deploy_holding_the_lock(app: App, tidier: Tidier):
    with lock.exclusive(app.deploy_lock, {"deploy": "receiver prepare"}):
        tidier.later(app, 1, set())
        time.sleep(4 * Tidier.IDLE)
        assert releases_of(app) == IDS[:3]
    assert wait_for(lambda: releases_of(app) == [IDS[2]])


def git(*args: str | Path, cwd: Path | None = None) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin"}  # fmt: skip
    return subprocess.run(
        ["git", *map(str, args)], cwd=cwd, env=env, check=True, capture_output=True, text=True
    ).stdout.strip()


def test_the_repo_kept_open_sees_objects_and_refs_others_wrote(tmp_path: Path):
    bare, work = tmp_path / "repo.git", tmp_path / "work"
    git("init", "-q", "--bare", bare)
    git("init", "-q", "-b", "main", work)
    (work / "f").write_text("1\n")
    git("add", "f", cwd=work)
    git("commit", "-qm", "one", cwd=work)
    git("push", "-q", bare, "main", cwd=work)
    first = git("rev-parse", "HEAD", cwd=work)
    assert objects.has(bare, first)
    (work / "f").write_text("2\n")
    git("commit", "-qam", "two", cwd=work)
    second = git("rev-parse", "HEAD", cwd=work)
    assert not objects.has(bare, second)
    git("push", "-q", bare, "main", cwd=work)  # another process writes to the repo
    git("--git-dir", bare, "repack", "-adq")  # and packs it: the old packs vanish
    assert objects.has(bare, second) and objects.has(bare, first)
    assert objects.tips(bare)["refs/heads/main"] == second
    objects.set_ref(bare, "refs/heads/main", first)
    assert git("--git-dir", bare, "rev-parse", "main") == first


def test_the_host_config_is_read_again_when_it_or_its_secret_changes(tmp_path: Path):
    from types import SimpleNamespace

    from shipyard.errors import ConfigError
    from shipyard.receiver.server import Receiver

    app = App(tmp_path, "mysite")
    app.dir.mkdir()
    secret = tmp_path / "cluster.secret"
    secret.write_text("s" * 32 + "\n")
    secret.chmod(0o600)
    app.config_file.write_text(f'secret_file = "{secret}"\nname = "web2"\n')
    server = SimpleNamespace(configs={}, configs_lock=threading.Lock())
    read = lambda: Receiver.config_of(server, app)  # noqa: E731
    host, key = read()
    assert (host.name, key) == ("web2", b"s" * 32)
    assert read()[0] is host  # unchanged: not parsed again
    secret.write_text("t" * 33 + "\n")  # a rotated secret counts from the next request
    assert read()[1] == b"t" * 33
    app.config_file.write_text(f'secret_file = "{secret}"\nname = "web9"\n')
    assert read()[0].name == "web9"
    secret.chmod(0o644)  # readable by others: refused, cached or not
    with pytest.raises(ConfigError, match="others can read it"):
        read()


def test_releases_in_use_by_a_process_cwd_or_only_a_mapped_file(tmp_path: Path):
    import sys

    app = App(tmp_path, "mysite")
    for rid in IDS[:3]:
        app.release_dir(rid).mkdir(parents=True)
    (app.release_dir(IDS[1]) / "data.bin").write_bytes(b"x" * 4096)
    mapper = (
        "import mmap, sys, time\n"
        "f = open(sys.argv[1], 'rb'); m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)\n"
        "f.close(); print('mapped', flush=True); time.sleep(60)\n"
    )
    by_cwd = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                              cwd=app.release_dir(IDS[0]))  # fmt: skip
    by_map = subprocess.Popen(
        [sys.executable, "-c", mapper, app.release_dir(IDS[1]) / "data.bin"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert by_map.stdout.readline().strip() == "mapped"
        assert release.running_from(app) == {IDS[0], IDS[1]}
    finally:
        for proc in (by_cwd, by_map):
            proc.kill()
            proc.wait()
    assert release.running_from(app) == set()


def test_the_receiver_packs_its_repo_once_idle(app: App, tidier: Tidier, tmp_path: Path):
    """Each deploy's objects arrive as a pack of their own: after a prune, git gc --auto."""
    work = tmp_path / "work"
    git("init", "-q", "--bare", app.repo)
    git("--git-dir", app.repo, "config", "gc.autoPackLimit", "2")
    git("init", "-q", "-b", "main", work)
    before: list[str] = []
    for n in range(3):
        (work / "f").write_text(f"{n}\n")
        git("add", "f", cwd=work)
        git("commit", "-qm", str(n), cwd=work)
        sha = git("rev-parse", "HEAD", cwd=work)
        _, pack = objects.pack_missing(work / ".git", sha, before)
        objects.add_pack(app.repo, io.BytesIO(pack), sha)
        before = [sha]
    packs = lambda: list((app.repo / "objects" / "pack").glob("*.pack"))  # noqa: E731
    assert len(packs()) == 3
    tidier.later(app, 1, set())
    assert wait_for(lambda: len(packs()) == 1)
    assert objects.has(app.repo, before[0])  # the repo kept open finds the new pack
