"""Hosts trust each other only as far as the signature says: a request signed for one peer is
refused by another, an unauthenticated request costs neither body bytes nor a thread for long,
and traffic between hosts can be TLS with a pinned certificate. Real receivers in network
namespaces, a real primary (this namespace) and real pushes."""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import BIN, REPO, Host, make_work, run

from shipyard.receiver import auth, objects
from shipyard.receiver.client import Peer

sys.path.insert(0, str(REPO / "tests"))
import netns  # noqa: E402

pytestmark = pytest.mark.skipif(netns.available() is not None, reason=str(netns.available()))

SECRET = netns.SECRET.encode()
FETCH = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:8000/').read())"


@pytest.fixture
def net():
    network = netns.Net()
    yield network
    network.close()


@pytest.fixture
def cluster(tmp_path: Path, net: netns.Net) -> netns.Cluster:
    return netns.Cluster(net, tmp_path, BIN)


class Relay:
    """A TCP relay on loopback to a peer that records what the primary sent through it: what
    someone on the network between two hosts would see (and could replay)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.sent = b""
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            client, _ = self.listener.accept()
            upstream = socket.create_connection(self.target, timeout=10)
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()
            self._pump(client, upstream, True)

    def _pump(self, src: socket.socket, dst: socket.socket, record: bool) -> None:
        with contextlib.suppress(OSError):
            while chunk := src.recv(65536):
                if record:
                    self.sent += chunk
                dst.sendall(chunk)
            dst.shutdown(socket.SHUT_WR)

    def client(self, peer: netns.PeerHost, pin: str | None = None) -> Peer:
        """The primary's client for ``peer``, connecting through this relay."""
        client = Peer(peer.address, peer.app, SECRET, 10, *([pin] if pin else []))
        client.host, client.port = "127.0.0.1", self.port
        return client


def replay(peer: netns.PeerHost, raw: bytes) -> tuple[int, str]:
    """Send recorded request bytes verbatim to ``peer``; its status and body."""
    with socket.create_connection((peer.node.address, netns.PORT), timeout=20) as sock:
        sock.sendall(raw)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode(errors="replace")


def prepare(cluster: netns.Cluster, peer: netns.PeerHost, release: str) -> None:
    """Have ``peer`` prepare the live commit under another release id, as a deploy would."""
    sha = run("git", "--git-dir", cluster.dir / "repo.git", "rev-parse", "main").stdout.strip()
    client = Peer(peer.address, peer.app, SECRET, 30)
    info = client.call("GET", "info", query={"want": sha})
    _, pack = objects.pack_missing(cluster.dir / "repo.git", sha, list(info["refs"].values()))
    if pack:
        client.call("POST", "objects", pack, query={"want": sha})
    body = {"sha": sha, "ref": "refs/heads/main", "release": release, "number": 9}
    result = client.call("POST", "prepare", body, idempotent=False)
    assert result["ok"], result


def test_a_request_signed_for_one_peer_is_refused_by_another(tmp_path, cluster):
    web2, web3 = cluster.add_peer(), cluster.add_peer()
    work = make_work(tmp_path / "work", Host(cluster.root))
    work.push()
    live = cluster.live()
    assert web2.live() == web3.live() == live
    release = f"20300101T000000Z-{live[-7:]}"
    for peer in (web2, web3):
        prepare(cluster, peer, release)
        assert (peer.dir / "releases" / release).is_dir()

    # the primary aborts web2's prepared release; someone on the network records the request…
    relay = Relay((web2.node.address, netns.PORT))
    assert relay.client(web2).call("POST", "abort", {"release": release}) == {"ok": True}
    assert not (web2.dir / "releases" / release).exists()
    assert b"/v1/apps/mysite/abort" in relay.sent
    # …and replays it to web3 within the clock window: refused, web3's release is intact
    status, text = replay(web3, relay.sent)
    assert status == 401, text
    assert f"request signed for '{web2.address}'" in text, text
    assert (web3.dir / "releases" / release).is_dir()
    manifest = json.loads(
        (web3.dir / "releases" / release / ".shipyard" / "release.json").read_text()
    )
    assert manifest["state"] == "prepared"
    assert "request signed for" in web3.log.read_text()
    # web3 still takes what is signed for it
    assert Peer(web3.address, "mysite", SECRET).call("POST", "abort", {"release": release})["ok"]
    assert not (web3.dir / "releases" / release).exists()


def open_to(peer: netns.PeerHost) -> socket.socket:
    return socket.create_connection((peer.node.address, netns.PORT), timeout=30)


def answer_of(sock: socket.socket) -> bytes:
    """What the receiver says before it closes (b"" if it closed without a word)."""
    answer = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_an_unauthenticated_upload_is_refused_before_its_body_is_sent(cluster):
    peer = cluster.add_peer()
    path = f"/v1/apps/mysite/objects?want={'a' * 40}"
    size = 200 << 20
    fresh = auth.sign(b"not-the-cluster-secret-at-all!!", "POST", path, b"x" * 64)
    # fresh and well-formed, for this peer, but not made with the cluster secret
    forged = {**fresh, "X-Shipyard-To": peer.address}
    for headers, reason in (
        (forged, "bad signature"),
        ({}, "unsigned request"),
        ({**forged, auth.H_TIME: f"{time.time() - 3600:.3f}"}, "stale request"),
    ):
        headers = {
            **headers,
            "Content-Length": str(size),
            "Content-Type": "application/octet-stream",
        }
        head = f"POST {path} HTTP/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        with open_to(peer) as sock:
            sock.sendall(head.encode() + b"\r\n")  # the headers only: not one byte of the body
            answer = answer_of(sock)  # before the fix it waited for 200 MiB, and said nothing
            assert answer.startswith(b"HTTP/1.0 401"), (reason, answer[:300])
            assert reason in answer.decode(errors="replace")
            sent = 0  # the receiver has closed: the body goes nowhere
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                while sent < size:
                    sent += sock.send(b"\0" * (1 << 20))
            assert sent < size
    assert peer.log.read_text().count("refused 10.231.") == 3


def test_connections_past_the_cap_and_slow_clients_are_turned_away(cluster):
    peer = cluster.add_peer(args=("--max-connections", "3", "--request-timeout", "3"))
    idle = [open_to(peer) for _ in range(3)]  # connected, never sending a byte
    slow = None
    try:
        with open_to(peer) as extra:  # one more than the cap: answered 503 and closed at once
            assert answer_of(extra).startswith(b"HTTP/1.0 503"), peer.log.read_text()
        assert "connections open already" in peer.log.read_text()
        for sock in idle:  # idle past --request-timeout: closed by the receiver, not held
            assert answer_of(sock) == b""
        slow = open_to(peer)  # slowloris: a header byte every 0.2 s never ends the request
        head = b"GET /v1/apps/mysite/info HTTP/1.0\r\nX-Padding: " + b"x" * 200
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            for byte in head:
                slow.send(bytes([byte]))
                time.sleep(0.2)
    finally:
        for sock in [*idle, slow]:
            if sock:
                sock.close()
    # and the receiver still serves what is signed
    assert Peer(peer.address, "mysite", SECRET).call("GET", "info")["ok"]
