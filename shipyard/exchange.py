"""One HTTP/1.x exchange on a socket: the request's head out, the answer's status line and
headers in, its body read as it comes.

Written here rather than taken from ``http.client``: that module, with ``email.parser``
and ``ssl``, cost ~16 ms of CPU in the process that first imported it, and every deploy
with peers (the receiver calls) or processes (the health probe) paid it on the push's path.
What shipyard speaks HTTP to is its own receiver and an app's server behind a health
probe: one request per connection, answers read to their end or their length. No
keep-alive, no chunked decoding (a probe reads no body it needs), no proxies.
"""

from __future__ import annotations

import socket
from typing import BinaryIO

from .errors import BadAnswer, NoAnswer

MAX_HEAD = 64 * 1024  # status line and headers together


def head(method: str, path: str, headers: dict[str, str]) -> bytes:
    """A request's line and headers, ready to send (a header's value never holds a CR/LF)."""
    lines = [f"{method} {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items())]
    if any("\r" in line or "\n" in line for line in lines):
        raise ValueError("a request line or header with a line break")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class Answer:
    """An answer's status line and headers (names in lower case; a repeated header's last
    value). A plain class: a dataclass writes its methods with an ``exec`` each at import."""

    __slots__ = ("status", "reason", "headers")

    def __init__(self, status: int, reason: str, headers: dict[str, str]) -> None:
        self.status, self.reason, self.headers = status, reason, headers

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)


def read_answer(stream: BinaryIO) -> Answer:
    """The status line and headers from ``stream`` (the socket's buffered reader), a 100
    Continue skipped. Raises ``NoAnswer`` when it closes first, ``BadAnswer`` on what is
    not HTTP."""
    while True:
        line = stream.readline(MAX_HEAD)
        if not line:
            raise NoAnswer("the connection closed without an answer")
        parts = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise BadAnswer(f"not an HTTP answer: {line[:60]!r}")
        status, reason = int(parts[1]), parts[2] if len(parts) > 2 else ""
        headers: dict[str, str] = {}
        size = len(line)
        while (line := stream.readline(MAX_HEAD)) not in (b"\r\n", b"\n"):
            size += len(line)
            if not line or size > MAX_HEAD:
                raise BadAnswer("an answer's headers cut short or over 64 KiB")
            name, colon, value = line.decode("latin-1").partition(":")
            if colon:
                headers[name.strip().lower()] = value.strip()
        if status != 100:
            return Answer(status, reason, headers)


def read_body(stream: BinaryIO, answer: Answer, limit: int) -> bytes:
    """The answer's body: its Content-Length, or up to the close; at most ``limit`` bytes."""
    length = answer.header("content-length")
    want = min(int(length), limit) if length.isdigit() else limit
    chunks, got = [], 0
    while got < want and (chunk := stream.read1(want - got)):
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def connect(address: str | int, timeout: float) -> socket.socket:
    """A connection to a unix socket's path, or to 127.0.0.1:``address`` (a port)."""
    if isinstance(address, int):
        return socket.create_connection(("127.0.0.1", address), timeout=timeout)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


def get(address: str | int, path: str, headers: dict[str, str], timeout: float) -> Answer:
    """GET ``path`` once (``Connection: close``); its body read and dropped (up to 1 MiB: a
    socket closed on what it has not read resets the connection, which a server may log)."""
    with connect(address, timeout) as sock:
        sent = {"Accept-Encoding": "identity", **headers, "Connection": "close"}
        sock.sendall(head("GET", path, sent))
        with sock.makefile("rb") as stream:
            answer = read_answer(stream)
            read_body(stream, answer, 1 << 20)
    return answer
