"""The small HTTP/1.x client of the health probe and the receiver calls (shipyard/exchange.py),
against a real socket and against answers written by hand."""

from __future__ import annotations

import io
import socket
import threading
from pathlib import Path

import pytest

from shipyard import exchange, health
from shipyard.errors import BadAnswer, NoAnswer


def serve_once(path: Path, answer: bytes) -> tuple[threading.Thread, list[bytes]]:
    """A unix-socket server that reads one request's head, writes ``answer`` and closes."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    got: list[bytes] = []

    def run() -> None:
        conn, _ = server.accept()
        with conn, server:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(4096)
            got.append(data)
            conn.sendall(answer)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, got


def test_a_probe_sends_one_closing_get_and_reads_status_and_location(tmp_path: Path):
    sock = tmp_path / "web.sock"
    thread, got = serve_once(
        sock,
        b"HTTP/1.1 302 Found\r\nLocation: https://example.com/\r\nContent-Length: 3\r\n\r\nabc",
    )
    answer = health.probe(
        sock, "/healthz", 5.0, {"Host": "example.com", "X-Forwarded-Proto": "https"}
    )
    thread.join(5)
    assert answer == health.Answer(302, "https://example.com/")
    request = got[0].decode()
    assert request.startswith("GET /healthz HTTP/1.1\r\n")
    assert "\r\nHost: example.com\r\n" in request and "\r\nConnection: close\r\n" in request
    assert "\r\nX-Forwarded-Proto: https\r\n" in request


def test_a_probe_of_a_port_that_does_not_listen_is_refused():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening
        with pytest.raises(ConnectionRefusedError):
            health.probe(port, "/", 1.0)


def test_an_answer_after_a_100_continue_and_the_body_that_follows():
    stream = io.BufferedReader(
        io.BytesIO(
            b"HTTP/1.1 100 Continue\r\n\r\n"
            b"HTTP/1.0 404 Not Found\r\nContent-Type: text/plain\r\nX-A:  spaced \r\n"
            b"Content-Length: 4\r\n\r\nmiss and more"
        )
    )
    answer = exchange.read_answer(stream)
    assert (answer.status, answer.reason) == (404, "Not Found")
    assert answer.header("x-a") == "spaced" and answer.header("Content-Type") == "text/plain"
    assert exchange.read_body(stream, answer, 1024) == b"miss"  # its length, not the rest


def test_a_body_without_a_length_is_read_to_the_close_within_its_limit():
    answer = exchange.Answer(200, "OK", {})
    assert exchange.read_body(io.BufferedReader(io.BytesIO(b"x" * 10)), answer, 1024) == b"x" * 10
    assert exchange.read_body(io.BufferedReader(io.BytesIO(b"x" * 10)), answer, 4) == b"xxxx"


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"", NoAnswer),  # closed at once: e.g. a TLS receiver spoken to in plain HTTP
        (b"SSH-2.0-OpenSSH_9.2\r\n", BadAnswer),
        (b"HTTP/1.1 abc OK\r\n\r\n", BadAnswer),
        (b"HTTP/1.1 200 OK\r\nServer: x\r\n", BadAnswer),  # closed inside the headers
        (b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"p" * 70000 + b"\r\n\r\n", BadAnswer),
    ],
)
def test_what_is_not_an_http_answer_is_an_os_error_that_says_so(raw: bytes, error: type):
    with pytest.raises(error) as caught:
        exchange.read_answer(io.BufferedReader(io.BytesIO(raw)))
    assert isinstance(caught.value, OSError)  # handled where a connection that failed is


def test_a_header_with_a_line_break_is_never_sent():
    assert exchange.head("GET", "/", {"Host": "a"}) == b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
    with pytest.raises(ValueError, match="line break"):
        exchange.head("GET", "/", {"Host": "a\r\nX-Evil: 1"})
