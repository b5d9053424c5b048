"""The receiver between hosts: a request signed for another receiver, an unauthenticated
upload, more connections than the cap and clients too slow to send their headers."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time

import faultlib
import pytest
from conftest import make_host

from shipyard.receiver import auth
from shipyard.receiver.server import Receiver

observe = faultlib.observe
SECRET = "fault-suite-secret-0123456789abcdef"


@pytest.fixture
def receivers(tmp_path):
    """Two receivers on loopback, web2 and web3, one app with the same cluster secret."""
    secret = tmp_path / "cluster.secret"
    secret.write_text(SECRET + "\n")
    secret.chmod(0o600)
    servers = []
    for name in ("web2", "web3"):
        host = make_host(tmp_path / name)
        with open(host.dir / "shipyard.toml", "a") as config:
            config.write(f'secret_file = "{secret}"\nname = "{name}"\n')
        server = Receiver(("127.0.0.1", 0), host.root, 512 << 20, max_connections=2)
        server.request_timeout = 1.0
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    yield servers
    for server in servers:
        server.shutdown()
        server.server_close()


def address(server: Receiver) -> str:
    return f"127.0.0.1:{server.server_address[1]}"


def exchange(server: Receiver, data: bytes) -> bytes:
    """Send ``data``, then read what the receiver says until it closes."""
    with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=20) as sock:
        sock.sendall(data)
        return read_all(sock)


def read_all(sock: socket.socket) -> bytes:
    answer = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def request(path: str, headers: dict, body: bytes = b"") -> bytes:
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return f"POST {path} HTTP/1.0\r\n{lines}\r\n".encode() + body


def test_a_request_signed_for_another_receiver(receivers, observe):
    row = observe("security", "a signed receiver request replayed to another peer")
    web2, web3 = receivers
    path = "/v1/apps/mysite/abort"
    body = json.dumps({"release": "20261129T013000Z-1a2b3c4"}).encode()
    raw = request(path, auth.sign(SECRET.encode(), "POST", path, body, to=address(web2)), body)
    replayed = exchange(web3, raw)
    assert replayed.startswith(b"HTTP/1.0 401"), replayed
    assert f"request signed for '{address(web2)}'".encode() in replayed
    assert exchange(web2, raw).startswith(b"HTTP/1.0 200")  # where it was meant to go
    row["outcome"] = "401 `request signed for '<web2>', and this receiver is <web3>`; web2 takes it"


def test_unauthenticated_bytes_and_connections_are_bounded(receivers, observe):
    row = observe(
        "security",
        "receiver: forged 200 MiB upload, connections past the cap, clients silent for long",
    )
    server = receivers[0]
    path = f"/v1/apps/mysite/objects?want={'a' * 40}"
    forged = auth.sign(b"not-the-cluster-secret-at-all!!", "POST", path, b"", to=address(server))
    forged["Content-Length"] = str(200 << 20)
    answer = exchange(server, request(path, forged))  # headers only: the answer comes anyway
    assert answer.startswith(b"HTTP/1.0 401") and b"bad signature" in answer, answer
    idle = [socket.create_connection(("127.0.0.1", server.server_address[1])) for _ in range(3)]
    try:
        answers = []
        for sock in idle:  # one past the cap of 2, none sending a byte
            sock.settimeout(20)
            answers.append(read_all(sock))
    finally:
        for sock in idle:
            sock.close()
    refused = [a for a in answers if a]
    assert refused and all(a.startswith(b"HTTP/1.0 503") for a in refused), answers
    assert b"" in answers  # the others: closed by the receiver after its request timeout
    for _ in range(100):  # the slots are given back as their threads end: served again
        again = exchange(server, request(path, {"Content-Length": "0"}))
        if not again.startswith(b"HTTP/1.0 503"):
            break
        time.sleep(0.1)
    assert again.startswith(b"HTTP/1.0 401") and b"unsigned request" in again, again
    row["outcome"] = (
        "401 `bad signature` before one byte of the body is sent; connections past a cap of 2 "
        "answered 503 and closed; silent ones closed after the request timeout"
    )
