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
from conftest import REPO, Host, free_port, make_work, run, shipyard

from shipyard.receiver import auth, objects
from shipyard.receiver.client import Peer

sys.path.insert(0, str(REPO / "tests"))
import netns  # noqa: E402
import test_hosts  # noqa: E402

net, cluster = test_hosts.net, test_hosts.cluster  # fixtures: a primary, peers in namespaces

pytestmark = pytest.mark.skipif(netns.available() is not None, reason=str(netns.available()))

SECRET = netns.SECRET.encode()


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
    # one more connection than the cap, none sending a byte (a slot may still be held by the
    # start-up probe for a moment: then two are refused, which is as good)
    idle = [open_to(peer) for _ in range(4)]
    slow = None
    try:
        answers = [answer_of(sock) for sock in idle]
        refused = [a for a in answers if a]
        assert refused and all(a.startswith(b"HTTP/1.0 503") for a in refused), answers
        assert b"" in answers  # the others: closed by the receiver after --request-timeout
        assert "connections open already" in peer.log.read_text()
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


def make_cert(peer_dir: Path, address: str) -> tuple[Path, Path, str]:
    """What `shipyard provision --receiver ADDR` runs as the deploy user; (cert, key, pin)."""
    cert, key = peer_dir / "tls" / "cert.pem", peer_dir / "tls" / "key.pem"
    made = shipyard(
        "receiver", "--listen", address, "--tls-cert", cert, "--tls-key", key, "--make-cert"
    ).stdout
    assert made.startswith(f"made {cert}") and oct(key.stat().st_mode)[-3:] == "600"
    line = made.splitlines()[-1]
    assert line.startswith(f'peer_tls = {{ "{address}" = "sha256:'), made
    return cert, key, line.split('"')[3]


def pin(cluster: netns.Cluster, pins: dict[str, str]) -> None:
    text = "".join(
        ln + "\n" for ln in cluster.config.read_text().splitlines() if "peer_tls" not in ln
    )
    table = ", ".join(f'"{address}" = "{value}"' for address, value in pins.items())
    cluster.config.write_text(text + f"peer_tls = {{ {table} }}\n")


def test_hosts_talk_tls_to_a_pinned_certificate(tmp_path, cluster):
    node = cluster.net.add()  # the certificate is made before the receiver first starts
    address = f"{node.address}:{netns.PORT}"
    cert, key, fingerprint = make_cert(tmp_path / "web2-tls", address)
    web2 = netns_peer(cluster, node, ("--tls-cert", str(cert), "--tls-key", str(key)))
    deadline = time.monotonic() + 10  # it logs just after it starts listening
    while "listening on" not in web2.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "listening on" in web2.log.read_text() and "(TLS;" in web2.log.read_text()

    # without a pin the primary speaks plain HTTP, which a TLS receiver does not answer
    rows = json.loads(
        shipyard("--root", cluster.root, "peers", "mysite", "--json", check=False).stdout
    )
    assert rows[1]["state"] == "unreachable", rows
    pin(cluster, {web2.address: fingerprint})
    work = make_work(tmp_path / "work", Host(cluster.root))
    first = work.push()
    assert "[web2] ✓ switch" in first.out, first.out
    assert web2.live() == cluster.live()
    assert "Hello" in cluster.serves(web2)

    # what crosses the network is ciphertext: no path, no release id, no JSON
    relay = Relay((web2.node.address, netns.PORT))
    release = f"20300101T000000Z-{cluster.live()[-7:]}"
    assert relay.client(web2, fingerprint).call("POST", "abort", {"release": release})["ok"]
    assert relay.sent and b"/v1/apps" not in relay.sent and release.encode() not in relay.sent

    # another certificate (a receiver replaced, someone in between) is refused, never retried
    _, _, other = make_cert(tmp_path / "other-tls", address)
    pin(cluster, {web2.address: other})
    work.commit("v2", **{"mysite/version.py": 'GREETING = "Hello from v2"\n'})
    second = work.push(fails=True)
    assert f"{web2.address} presented the certificate {fingerprint}, not the pinned {other}" in (
        second.out
    ), second.out
    assert "✗ prepare-peers" in second.out and web2.live() == cluster.live()
    # the certificate file itself may be pinned instead of its fingerprint
    pin(cluster, {web2.address: str(cert)})
    rows = json.loads(shipyard("--root", cluster.root, "peers", "mysite", "--json").stdout)
    assert [r["state"] for r in rows] == ["live", "in sync"], rows


def netns_peer(cluster: netns.Cluster, node: netns.Node, args: tuple[str, ...]) -> netns.PeerHost:
    """A peer on an existing namespace (whose address its certificate was made for)."""
    name = f"web{len(cluster.peers) + 2}"
    root = cluster.base / name
    cluster.init(root, name)
    peer = netns.PeerHost(node, root, name, cluster.app, cluster.base / f"{name}.log", args=args)
    cluster.peers.append(peer)
    cluster.start(peer)
    cluster.join(peer)
    return peer


def test_a_receiver_on_every_interface_is_refused_unless_asked_for(tmp_path):
    port = free_port()
    for listen in (f"0.0.0.0:{port}", f"[::]:{port}"):
        # bounded: a receiver that did start would be stopped by the timeout, and fail the test
        refused = shipyard(
            "--root", tmp_path, "receiver", "--listen", listen, check=False, timeout=60
        )
        assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
        assert "refusing to listen on every interface" in refused.stderr
        assert "--all-interfaces" in refused.stderr
    nameless = shipyard(
        "--root",
        tmp_path,
        "receiver",
        "--listen",
        f"0.0.0.0:{port}",
        "--all-interfaces",
        check=False,
        timeout=60,
    )
    assert nameless.returncode == 1 and "add --alias ADDR:PORT" in nameless.stderr
