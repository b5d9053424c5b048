"""Many hosts, the parts that need no network: signing, host config, object packs, phases."""

from __future__ import annotations

import io
import subprocess
import time
from pathlib import Path

import pytest

from shipyard.config import HostConfig, load_host_config, parse_host_config, read_secret
from shipyard.context import Deploy, Phase
from shipyard.deploy import PUSH, plan
from shipyard.errors import ConfigError
from shipyard.peers import Prefixed
from shipyard.receiver import auth, objects
from shipyard.report import Reporter

SECRET = b"0123456789abcdef0123456789abcdef"
PATH = "/v1/apps/mysite/prepare"


def headers_for(body: bytes = b"{}", **kw) -> dict:
    return auth.sign(SECRET, "POST", PATH, body, **kw)


def test_a_signed_request_verifies_once():
    verifier = auth.Verifier()
    headers = headers_for()
    nonce = verifier.verify(SECRET, "POST", PATH, headers, auth.body_digest(b"{}"))
    assert nonce == headers[auth.H_NONCE]
    with pytest.raises(auth.Unauthenticated, match="replayed"):
        verifier.verify(SECRET, "POST", PATH, headers, auth.body_digest(b"{}"))


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"method": "GET"}, "bad signature"),
        ({"path": "/v1/apps/other/prepare"}, "bad signature"),
        ({"body": b'{"x": 1}'}, "bad signature"),
        ({"secret": b"another-secret-of-some-length"}, "bad signature"),
    ],
)
def test_anything_changed_breaks_the_signature(change, reason):
    headers = headers_for()
    with pytest.raises(auth.Unauthenticated, match=reason):
        auth.Verifier().verify(
            change.get("secret", SECRET),
            change.get("method", "POST"),
            change.get("path", PATH),
            headers,
            auth.body_digest(change.get("body", b"{}")),
        )


def test_stale_future_and_unsigned_requests_are_refused():
    verifier = auth.Verifier(window=30)
    digest = auth.body_digest(b"{}")
    for skew in (-31, 31):
        with pytest.raises(auth.Unauthenticated, match="stale request"):
            verifier.verify(SECRET, "POST", PATH, headers_for(now=time.time() + skew), digest)
    with pytest.raises(auth.Unauthenticated, match="unsigned"):
        verifier.verify(SECRET, "POST", PATH, {}, digest)
    verifier.verify(SECRET, "POST", PATH, headers_for(now=time.time() - 25), digest)


def test_result_lines_are_bound_to_the_request():
    mac = auth.result_mac(SECRET, "a" * 32, b"L line\n", b'{"ok": true}')
    assert mac != auth.result_mac(SECRET, "b" * 32, b"L line\n", b'{"ok": true}')
    assert mac != auth.result_mac(SECRET, "a" * 32, b"L other\n", b'{"ok": true}')


def test_host_config_checks_peer_addresses():
    host = parse_host_config('peers = ["10.0.0.2:7070", "[fd00::2]:7070", "web3:7070"]\n', "t")
    assert len(host.peers) == 3 and host.rolling == 0 and host.drained == []
    for bad in ('"10.0.0.2"', '"10.0.0.2:0"', '"../x:7070"', '"a b:1"'):
        with pytest.raises(ConfigError, match="is not a peer address"):
            parse_host_config(f"peers = [{bad}]\n", "t")
    with pytest.raises(ConfigError, match="listed twice"):
        parse_host_config('peers = ["h:1", "h:1"]\n', "t")
    with pytest.raises(ConfigError, match="rolling must be"):
        parse_host_config("rolling = -1\n", "t")


def test_a_secret_others_can_read_is_refused(tmp_path: Path):
    config = tmp_path / "shipyard.toml"
    config.write_text(f'secret = "{SECRET.decode()}"\n')
    config.chmod(0o644)
    with pytest.raises(ConfigError, match="others can read it") as err:
        load_host_config(config)
    assert "chmod 600" in str(err.value) and "secret_file" in str(err.value)
    config.chmod(0o600)
    assert read_secret(load_host_config(config), config) == SECRET

    secret = tmp_path / "cluster.secret"
    secret.write_text("short\n")
    secret.chmod(0o640)
    config.write_text('secret_file = "cluster.secret"\n')
    with pytest.raises(ConfigError, match="others can read it"):
        load_host_config(config)
    secret.chmod(0o600)
    with pytest.raises(ConfigError, match="too short"):
        read_secret(load_host_config(config), config)
    config.write_text('secret_file = "missing"\n')
    with pytest.raises(ConfigError, match="cannot be read"):
        load_host_config(config)


def git(repo: Path, *args: str) -> str:
    env = {
        "GIT_AUTHOR_NAME": "a",
        "GIT_AUTHOR_EMAIL": "a@b",
        "GIT_COMMITTER_NAME": "a",
        "GIT_COMMITTER_EMAIL": "a@b",
        "PATH": "/usr/bin:/bin",
    }
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=env
    ).stdout.strip()


def test_only_missing_objects_travel(tmp_path: Path):
    src, dst = tmp_path / "src", tmp_path / "dst.git"
    git(tmp_path, "init", "-q", "-b", "main", str(src))
    for i in range(50):
        (src / f"pkg{i % 5}").mkdir(exist_ok=True)
        (src / f"pkg{i % 5}" / f"m{i}.py").write_text(f"VALUE = {i}\n" * 50)
    git(src, "add", "-A")
    git(src, "commit", "-qm", "one")
    first = git(src, "rev-parse", "HEAD")
    git(tmp_path, "init", "-q", "--bare", str(dst))

    count, pack = objects.pack_missing(src / ".git", first, [])
    assert count == 50 + 5 + 1 + 1  # blobs, trees, root tree, commit
    objects.add_pack(dst, io.BytesIO(pack), first)
    assert objects.tips(dst) == {"refs/shipyard/prepared": first}

    (src / "pkg1" / "m1.py").write_text("VALUE = 'changed'\n")
    git(src, "commit", "-qam", "two")
    second = git(src, "rev-parse", "HEAD")
    count, small = objects.pack_missing(src / ".git", second, list(objects.tips(dst).values()))
    assert count == 4 and len(small) < len(pack) / 3  # commit, root tree, pkg1 tree, one blob
    unknown = "f" * 40  # a peer's tip the primary never had
    assert objects.pack_missing(src / ".git", second, [unknown, first])[0] == 4
    assert objects.pack_missing(src / ".git", second, [unknown])[0] == 57 + 4  # both commits, whole
    objects.add_pack(dst, io.BytesIO(small), second)
    assert objects.has(dst, second)
    assert objects.pack_missing(src / ".git", second, [second]) == (0, b"")
    with pytest.raises(ValueError, match="did not contain"):
        objects.add_pack(dst, io.BytesIO(small), "f" * 40)


def test_peer_lines_are_tagged_with_the_host():
    buf = io.StringIO()
    out = Reporter(buf)
    inner = Reporter(Prefixed(out, "web2"))
    inner.ok("venv", 0.01, "reused 3f9c2e")
    assert buf.getvalue() == "  [web2] ✓ venv            0.01s  reused 3f9c2e\n"


def test_with_peers_switch_restart_verify_become_one_rollout(tmp_path: Path):
    d = Deploy(None, HostConfig(), 1, "a" * 40, "refs/heads/main", Reporter(io.StringIO()))
    assert plan(d) == PUSH
    d.host = HostConfig(peers=["h:1"], drained=["h:1"])
    assert plan(d) == PUSH
    d.host = HostConfig(peers=["h:1", "g:1"], drained=["h:1"])
    names = [p.name for p in plan(d)]
    assert names == [
        "checkout",
        "link",
        "venv",
        "data",
        "build",
        "prepare-peers",
        "migrate",
        "release",
        "data-check",
        "rollout",
        "post-migrate",
        "finish",
    ]


def test_an_unexpected_exception_in_a_phase_is_undone_by_the_one_runner(tmp_path: Path):
    """What a receiver runs for a peer's switch: a bug in a phase after the switch (not a
    ShipyardError or OSError) is reported and the switch undone, like any failure."""
    from shipyard import engine
    from shipyard.app import App

    undone = []

    def bug(d: Deploy) -> str:
        raise RuntimeError("a bug")

    plan = [
        Phase("switch", lambda d: "switched", lambda d: undone.append("switch")),
        Phase("restart", bug, lambda d: undone.append("restart")),
    ]
    out = io.StringIO()
    d = Deploy(App(tmp_path, "mysite"), HostConfig(), 1, "a" * 40, "refs/heads/main", Reporter(out))
    failure = engine.attempt(d, plan)
    assert str(failure).startswith("restart failed: internal error: RuntimeError: a bug")
    assert undone == ["switch"] and "✗ restart" in out.getvalue()


def test_a_phase_that_ran_is_undone_when_what_follows_it_fails(tmp_path: Path):
    """An exception after a phase returned (its journal note, a fault point) undoes it too."""
    from shipyard import engine, fault_injection
    from shipyard.app import App

    undone = []
    plan = [
        Phase("switch", lambda d: "switched", lambda d: undone.append("switch")),
        Phase("restart", lambda d: "restarted", lambda d: undone.append("restart")),
    ]
    app = App(tmp_path, "mysite")
    fault_injection.arm(app.run, {"at": "restart", "when": "end", "action": "raise"})
    d = Deploy(app, HostConfig(), 1, "a" * 40, "refs/heads/main", Reporter(io.StringIO()))
    failure = engine.attempt(d, plan)
    assert failure.phase.name == "restart" and "Injected" in failure.message
    assert undone == ["restart", "switch"]


def test_a_peer_keeps_the_release_it_would_go_back_to_until_the_cluster_commits(tmp_path: Path):
    from shipyard import release
    from shipyard import release_phases as deploy
    from shipyard.app import App

    app = App(tmp_path, "mysite")
    for n, rid in enumerate(("20260101T000000Z-aaaaaaa", "20260101T000001Z-bbbbbbb")):
        app.release_dir(rid).mkdir(parents=True)
        release.Manifest("a" * 40, "r", rid, n, "p", n, state="good", live_at=n).save(
            app.release_dir(rid)
        )
    old, new = (r for r, _ in release.releases(app))
    release.switch(app, new)
    d = Deploy(app, HostConfig(keep=1), 2, "a" * 40, "refs/heads/main", Reporter(io.StringIO()))
    d.release_id, d.previous, d.committed = new, old, False
    d.manifest = release.Manifest.load(app.release_dir(new))
    deploy.finish(d)
    assert [r for r, _ in release.releases(app)] == [old, new]  # a revert still has it
    d.committed = True
    deploy.finish(d)
    assert [r for r, _ in release.releases(app)] == [new]
