"""Many hosts: a push deploys a primary and its peers, each peer a real network namespace
with its own deploy root and receiver; failures leave nothing switched anywhere."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import BIN, REPO, Host, Work, make_work, run, shipyard

sys.path.insert(0, str(REPO / "tests"))
import netns  # noqa: E402

pytestmark = pytest.mark.skipif(netns.available() is not None, reason=str(netns.available()))

SLOW_IF_MARKED = "if [ -e ../../shared/slow ]; then sleep 6; fi"
FAIL_IF_MARKED = "if [ -e ../../shared/fail-build ]; then echo marker found; exit 7; fi"
V1, V2 = "Hello from mysite v1", "v2"  # what GET / answers before and after the v2 commit


@pytest.fixture
def net():
    network = netns.Net()
    yield network
    network.close()


@pytest.fixture
def cluster(tmp_path: Path, net: netns.Net) -> netns.Cluster:
    return netns.Cluster(net, tmp_path, BIN)


def work_for(tmp_path: Path, cluster: netns.Cluster, build: list[str] | None = None) -> Work:
    work = make_work(tmp_path / "work", Host(cluster.root))
    steps = ", ".join(json.dumps(s) for s in (build or []))
    work.write("shipyard.toml", f'shared = [".env", "media/"]\nbuild = [{steps}]\n')
    work.commit("host-dependent build steps")
    return work


def releases(path: Path) -> list[str]:
    return sorted(p.name for p in (path / "releases").iterdir() if not p.name.startswith("."))


def follow_until(proc: subprocess.Popen, needle: str, timeout: float = 120) -> str:
    seen = ""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        assert time.monotonic() < deadline, f"{needle!r} never appeared:\n{seen}"
        chunk = proc.stdout.readline()
        assert chunk, f"push ended before {needle!r}:\n{seen}"
        seen += chunk
    return seen


def push_async(work: Work) -> subprocess.Popen:
    return subprocess.Popen(
        ["git", "push", "production", "main"],
        cwd=work.path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_a_push_deploys_every_host_and_sends_only_new_objects(tmp_path, cluster):
    peers = [cluster.add_peer(), cluster.add_peer()]
    work = work_for(tmp_path, cluster)
    first = work.push()
    live = cluster.live()
    assert live and f"shipyard ▸ live: {live[-7:]}" in first.out
    for peer in peers:
        assert peer.live() == live, first.out
        assert f"[{peer.name}] ✓ venv" in first.out and f"[{peer.name}] ✓ switch" in first.out
    assert "✓ prepare-peers" in first.out and "3 hosts on" in first.out
    cluster.assert_serving(V1, live, first.out)

    work.commit("v2", **{"mysite/version.py": 'GREETING = "Hello from v2"\n'})
    second = work.push()
    live = cluster.live()
    for host_dir in [cluster.dir] + [p.dir for p in peers]:
        assert Path((host_dir / "current").resolve()).name == live
        assert "v2" in (host_dir / "current" / "mysite" / "version.py").read_text()
    for peer in peers:
        line = next(ln for ln in second.out.splitlines() if f"[{peer.name}] ✓ objects" in ln)
        count = int(line.split("objects")[1].split()[1])
        sent = line.split(",")[1].split("sent")[0].strip()
        assert count <= 5 and sent.endswith(" B"), line  # commit, trees, one blob: bytes, not KiB
        assert f"[{peer.name}] ✓ venv" in second.out and "reused" in second.out
    status = json.loads(shipyard("--root", cluster.root, "peers", "mysite", "--json").stdout)
    assert [r["state"] for r in status] == ["live", "in sync", "in sync"]
    assert {r["host"] for r in status} == {"web1", "web2", "web3"}
    cluster.assert_serving("Hello from v2", live, second.out)  # each host serves v2
    status = shipyard("--root", cluster.root, "status", "mysite").stdout
    assert "hosts      web1 (primary)" in status and f"web2 ({peers[0].address})" in status


def requests_in(peer: netns.PeerHost, since: int) -> list[str]:
    """The endpoints its receiver served after the first ``since`` bytes of its log."""
    lines = peer.log.read_text()[since:].splitlines()
    return [ln.split("/v1/apps/mysite/")[1].split()[0] for ln in lines if "/v1/apps/mysite/" in ln]


def test_objects_go_with_the_prepare_and_a_peer_that_lacks_them_is_asked(tmp_path, cluster):
    web2 = cluster.add_peer()
    work = work_for(tmp_path, cluster)
    work.push()
    web3 = cluster.add_peer()  # a new host: its repo lacks the live commit the pack is made on
    work.commit("v2", **{"mysite/version.py": 'GREETING = "v2"\n'})
    seen = {p.name: len(p.log.read_text()) for p in (web2, web3)}
    result = work.push()
    objects = {p.name: next(ln for ln in result.out.splitlines() if f"[{p.name}] ✓ objects" in ln)
               for p in (web2, web3)}  # fmt: skip
    assert "sent with the prepare" in objects["web2"], result.out
    assert "sent with the prepare" not in objects["web3"], result.out
    assert requests_in(web2, seen["web2"]) == ["prepare", "switch"]  # no info, no objects
    assert requests_in(web3, seen["web3"]) == ["prepare", "info", "objects", "prepare", "switch"]
    assert f"[{web2.name}] ✓ venv" in result.out and f"[{web3.name}] ✓ switch" in result.out
    cluster.assert_serving(V2, cluster.live(), result.out)


def test_a_peer_whose_build_fails_aborts_the_deploy_everywhere(tmp_path, cluster):
    peers = [cluster.add_peer(), cluster.add_peer()]
    work = work_for(tmp_path, cluster, [FAIL_IF_MARKED])
    work.push()
    before = {p.name: p.live() for p in peers}
    live = cluster.live()
    good = run("git", "--git-dir", cluster.dir / "repo.git", "rev-parse", "main")
    (peers[1].dir / "shared" / "fail-build").write_text("")
    sha = work.commit("v2", **{"mysite/version.py": 'GREETING = "v2"\n'})
    result = work.push(fails=True)
    assert "✗ prepare-peers" in result.out and "web3" in result.out and "exit 7" in result.out
    assert "[web3] │ marker found" in result.out
    assert f"still live: {live}" in result.out
    assert cluster.live() == live and {p.name: p.live() for p in peers} == before
    cluster.assert_serving(V1, live, result.out)
    for path in [cluster.dir] + [p.dir for p in peers]:
        assert not [r for r in releases(path) if r.endswith(sha[:7])], path  # discarded
    now = run("git", "--git-dir", cluster.dir / "repo.git", "rev-parse", "main").stdout
    assert now == good.stdout  # reset, so a plain re-push retries

    # the primary's own build fails while the peers prepare: they discard what they made
    (peers[1].dir / "shared" / "fail-build").unlink()
    (cluster.dir / "shared" / "fail-build").write_text("")
    work.git("commit", "-q", "--amend", "-m", "v2 again")
    sha = work.git("rev-parse", "HEAD").stdout.strip()
    result = work.push(fails=True)
    assert "✗ build" in result.out and f"still live: {live}" in result.out
    deadline = time.monotonic() + 20
    while any(r.endswith(sha[:7]) for p in peers for r in releases(p.dir)):
        assert time.monotonic() < deadline, [releases(p.dir) for p in peers]
        time.sleep(0.2)
    assert cluster.live() == live and {p.name: p.live() for p in peers} == before
    cluster.assert_serving(V1, live, result.out)


def test_a_receiver_killed_during_prepare_aborts_the_deploy(tmp_path, cluster):
    peers = [cluster.add_peer(), cluster.add_peer()]
    work = work_for(tmp_path, cluster, [SLOW_IF_MARKED])
    work.push()
    live = cluster.live()
    (peers[0].dir / "shared" / "slow").write_text("")
    work.commit("v2", **{"mysite/version.py": 'GREETING = "v2"\n'})
    push = push_async(work)
    seen = follow_until(push, "[web2] ✓ venv")
    time.sleep(0.5)  # inside the slow build step now
    cluster.kill(peers[0])
    out = seen + push.communicate(timeout=120)[0]
    assert push.returncode != 0  # the deploy failed, and so did the push (it exited 0 before)
    assert "✗ prepare-peers" in out and "web2" in out, out
    assert "connection lost during prepare" in out, out
    cluster.assert_serving(V1, live, out)
    # back up, marker gone: the same commit deploys everywhere on a re-push
    (peers[0].dir / "shared" / "slow").unlink()
    cluster.start(peers[0])
    work.git("commit", "-q", "--amend", "-m", "v2 again")
    again = work.push()
    assert "shipyard ▸ live" in again.out, again.out
    assert cluster.live() != live
    cluster.assert_serving(V2, cluster.live(), again.out)


def test_a_peer_cut_off_during_prepare_aborts_the_deploy(tmp_path, cluster):
    peers = [cluster.add_peer(), cluster.add_peer()]
    work = work_for(tmp_path, cluster, [SLOW_IF_MARKED])
    work.push()
    live = cluster.live()
    (peers[0].dir / "shared" / "slow").write_text("")
    work.commit("v2", **{"mysite/version.py": 'GREETING = "v2"\n'})
    push = push_async(work)
    seen = follow_until(push, "[web2] ✓ venv")
    peers[0].node.cut()
    try:
        out = seen + push.communicate(timeout=120)[0]
    finally:
        peers[0].node.mend()
    assert "✗ prepare-peers" in out and "web2" in out, out
    assert "no word for 5s during prepare" in out
    assert "could not discard" in out  # the abort could not reach it either, and says so
    cluster.assert_serving(V1, live, out)
    rows = json.loads(shipyard("--root", cluster.root, "peers", "mysite", "--json").stdout)
    assert [r["state"] for r in rows] == ["live", "in sync", "in sync"]


def test_a_peer_cut_off_before_its_switch_switches_everyone_back(tmp_path, cluster):
    peers = [cluster.add_peer(), cluster.add_peer()]
    work = work_for(tmp_path, cluster, [SLOW_IF_MARKED])
    work.push()
    live = cluster.live()
    (peers[0].dir / "shared" / "slow").write_text("")  # web2 prepares slowly…
    work.commit("v2", **{"mysite/version.py": 'GREETING = "v2"\n'})
    push = push_async(work)
    seen = follow_until(push, "[web3] ✓ build")  # …so web3 is prepared and waits for its switch
    time.sleep(0.5)
    peers[1].node.cut()
    try:
        out = seen + push.communicate(timeout=120)[0]
    finally:
        peers[1].node.mend()
    assert "✗ rollout" in out and "web3" in out and "unreachable" in out, out
    assert "[web2] ✓ switch" in out and "[web1] ✓ switch" in out  # they had switched…
    cluster.assert_serving(V1, live, out)  # …and went back, processes too
    sync = shipyard("--root", cluster.root, "sync", "mysite")
    assert "every host is on" in sync.stdout
    cluster.assert_serving(V1, live, sync.stdout)


def test_added_and_drained_peers_converge(tmp_path, cluster):
    web2 = cluster.add_peer()
    work = work_for(tmp_path, cluster)
    work.push()
    first = cluster.live()
    netns.set_config(cluster.config, drained=[web2.address])
    work.commit("v2", **{"mysite/version.py": 'GREETING = "v2"\n'})
    result = work.push()
    assert f"peer {web2.address} is drained: skipped" in result.out
    assert cluster.live() != first and web2.live() == first
    assert V2 in cluster.serves() and V1 in cluster.serves(web2)
    web3 = cluster.add_peer(join=False)
    netns.set_config(cluster.config, drained=[])
    cluster.join(web3)
    rows = json.loads(shipyard("--root", cluster.root, "peers", "mysite", "--json").stdout)
    assert [r["state"] for r in rows] == ["live", "differs", "differs"]
    sync = shipyard("--root", cluster.root, "sync", "mysite")
    assert "[web3] ✓ objects" in sync.stdout and "[web2] ✓ switch" in sync.stdout
    cluster.assert_serving(V2, cluster.live(), sync.stdout)
    again = shipyard("--root", cluster.root, "sync", "mysite")
    assert again.stdout.count("✓ in sync") == 2


def test_a_peer_back_after_a_deploy_converges_without_a_push(tmp_path, cluster):
    """`shipyard sync APP --every N` (what `provision --sync APP` runs): no push needed."""
    web2 = cluster.add_peer()
    work = work_for(tmp_path, cluster)
    work.push()
    first = cluster.live()
    cluster.kill(web2)  # down: the operator drains it so that deploys go on
    netns.set_config(cluster.config, drained=[web2.address])
    work.commit("v2", **{"mysite/version.py": 'GREETING = "Hello from v2"\n'})
    work.push()
    assert web2.live() == first != cluster.live()
    log = tmp_path / "sync.log"
    with open(log, "w") as out:
        watcher = subprocess.Popen(
            [BIN / "shipyard", "--root", cluster.root, "sync", "mysite", "--every", "1"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        time.sleep(2)  # rounds with web2 drained and down: nothing to do
        assert "behind" not in log.read_text() and web2.live() == first
        cluster.start(web2)
        netns.wait_listening(web2.node.address, netns.PORT)
        netns.set_config(cluster.config, drained=[])
        deadline = time.monotonic() + 90
        while web2.live() != cluster.live():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
    finally:
        watcher.terminate()
        code = watcher.wait(timeout=90)
    assert code == 0, log.read_text()
    text = log.read_text()
    assert "behind: web2" in text and "[web2] ✓ switch" in text and "every host is on" in text
    cluster.assert_serving("Hello from v2", cluster.live(), text)
    bad = shipyard("--root", cluster.root, "sync", "mysite", "--every", "0", check=False)
    assert bad.returncode == 1 and "--every 0: not a number of seconds above 0" in bad.stderr


def test_rolling_batches_switch_back_when_the_second_host_fails_verify(tmp_path, cluster):
    peers = [cluster.add_peer(), cluster.add_peer()]
    netns.set_config(cluster.config, rolling=1)
    work = work_for(tmp_path, cluster)
    work.push()
    live = cluster.live()
    # web2's web process cannot start: its health check fails after its switch
    (peers[0].dir / "shared" / ".env").write_text("DJANGO_SETTINGS_MODULE=no.such.settings\n")
    work.commit("v2", **{"mysite/version.py": 'GREETING = "v2"\n'})
    result = work.push(fails=True)
    assert "batch 1/3" in result.out and "batch 2/3" in result.out
    assert "batch 3/3" not in result.out and "✗ rollout" in result.out
    cluster.assert_serving(V1, live, result.out)


def signed_call(peer: netns.PeerHost, path: str, body: bytes = b"{}", **change) -> tuple:
    from shipyard.receiver import auth

    headers = auth.sign(netns.SECRET.encode(), "POST", path, body, to=peer.address)
    headers.update(change.pop("headers", {}))
    conn = http.client.HTTPConnection(peer.node.address, netns.PORT, timeout=5)
    conn.request("POST", path, body=change.pop("send", body), headers=headers)
    resp = conn.getresponse()
    return resp.status, resp.read().decode(), headers


def test_forged_stale_and_replayed_requests_are_refused(cluster):
    from shipyard.receiver import auth

    peer = cluster.add_peer()
    path = "/v1/apps/mysite/abort"
    body = json.dumps({"release": "20261129T013000Z-1a2b3c4"}).encode()
    status, text, headers = signed_call(peer, path, body)
    assert status == 200 and text.startswith("R ")
    conn = http.client.HTTPConnection(peer.node.address, netns.PORT, timeout=5)
    conn.request("POST", path, body=body, headers=headers)  # the same request again
    replay = conn.getresponse()
    assert replay.status == 401 and "replayed" in replay.read().decode()
    assert signed_call(peer, path, body, headers={auth.H_TIME: "1"})[0] == 401  # breaks the MAC
    stale = auth.sign(
        netns.SECRET.encode(), "POST", path, body, now=time.time() - 120, to=peer.address
    )
    assert "stale request" in signed_call(peer, path, body, headers=stale)[1]
    forged = auth.sign(b"not-the-cluster-secret-at-all!!", "POST", path, body, to=peer.address)
    assert "bad signature" in signed_call(peer, path, body, headers=forged)[1]
    assert "bad signature" in signed_call(peer, path, body, send=body.replace(b"1a", b"2b"))[1]
    unsigned = http.client.HTTPConnection(peer.node.address, netns.PORT, timeout=5)
    unsigned.request("POST", path, body=body)
    assert unsigned.getresponse().status == 401
    assert signed_call(peer, "/v1/apps/../etc/abort")[0] == 404
    assert signed_call(peer, "/v1/apps/..%2fetc/abort")[0] == 400
    assert signed_call(peer, path, headers={"Content-Length": str(65 * 1024)})[0] == 413
    status, text, _ = signed_call(peer, path, b'{"release": "../../etc"}')
    assert status == 200 and "invalid release name" in text
    log = peer.log.read_text()
    for reason in ("replayed", "stale request", "bad signature", "unsigned request"):
        assert f"refused {cluster.net.nodes[0].address[:-1]}1" in log and reason in log, reason
