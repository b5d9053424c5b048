"""The primary's side of the conversation with a peer's receiver: signed calls with timeouts.

Answers stream: ``L <text>`` progress lines, ``H`` keep-alives while a long step
runs, ``N <name>`` (how the peer names itself, first in a prepare's answer), and
one final ``R <mac> <json>`` line signed over the request's nonce and everything
before it. A call that could not be sent (connection refused, no
route, connect timeout) is retried; one that was sent is retried only when it is
idempotent.

Each request is signed for the peer's address as the primary's ``peers`` lists
it; a request with a body first sends its signed headers alone (``Expect:
100-continue``) and the body only once the receiver has accepted them, so a
refusal arrives before the body is sent. With a pin (``peer_tls``) the
connection is TLS and the peer's certificate must be the pinned one.
"""

from __future__ import annotations

import errno
import io
import json
import socket
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import urlencode

from shipyard import exchange
from shipyard.errors import NoAnswer, ShipyardError

from . import auth, tls

if TYPE_CHECKING:  # imported where TLS is pinned
    import ssl

API = f"/{auth.VERSION}/apps"
CONNECT_TIMEOUT = 3.0
EXPECT = {"Expect": "100-continue"}  # the body goes once the signed headers are accepted


class PeerError(ShipyardError):
    """A peer could not be reached, refused a call, or answered something we cannot trust.

    ``sent`` is False when the request never left (nothing can have happened there)."""

    def __init__(self, message: str, hint: str = "", sent: bool = True) -> None:
        super().__init__(message, hint)
        self.sent = sent


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class Peer:
    """One peer's receiver, for one app."""

    def __init__(
        self,
        address: str,
        app: str,
        secret: bytes,
        timeout: float = 15.0,
        pin: str | None = None,
    ) -> None:
        self.address = address
        self.pin = pin  # peer_tls: a sha256 fingerprint or a certificate file; None: plain HTTP
        self.host, self.port = split_address(address)
        self.app = app
        self.secret = secret
        self.timeout = timeout
        self.down = False  # the last call could not reach it: do not insist on the next ones
        self.name = ""  # as it names itself (its answer's ``N`` line)

    def call(
        self,
        method: str,
        action: str,
        payload: dict | bytes | None = None,
        query: dict | None = None,
        on_line: Callable[[str], None] | None = None,
        retries: int = 2,
        idempotent: bool = True,
    ) -> dict:
        """One signed call; returns the verified result. Raises PeerError."""
        body = payload if isinstance(payload, bytes) else json.dumps(payload or {}).encode()
        path = f"{API}/{self.app}/{action}" + (f"?{urlencode(query)}" if query else "")
        # as bytes, an ASCII name or address skips the idna codec (and its import)
        where = self.host.encode() if self.host.isascii() else self.host
        attempt = 0
        retries = 0 if self.down else retries
        while True:
            sent = False
            try:
                conn = socket.create_connection((where, self.port), CONNECT_TIMEOUT)
                try:
                    if self.pin:
                        conn = self._tls(conn)
                    conn.settimeout(self.timeout)
                    headers = auth.sign(self.secret, method, path, body, to=self.address)
                    headers["Content-Type"] = (
                        "application/octet-stream"
                        if isinstance(payload, bytes)
                        else "application/json"
                    )
                    headers = {"Host": self.address, "Accept-Encoding": "identity", **headers}
                    sent = True
                    if body:
                        conn.sendall(exchange.head(method, path, {**headers, **EXPECT}))
                        self._go_ahead(conn, headers[auth.H_NONCE], action)
                        conn.sendall(body)
                    else:
                        conn.sendall(exchange.head(method, path, headers))
                    with conn.makefile("rb") as stream:
                        answer = exchange.read_answer(stream)
                        self.down = False
                        return self._answer(stream, answer, headers[auth.H_NONCE], on_line, action)
                finally:
                    conn.close()
            except PeerError:
                raise
            except OSError as exc:
                attempt += 1
                if attempt > retries or (sent and not idempotent):
                    self.down = True
                    raise PeerError(self.describe(exc, action, sent), sent=sent) from None
                time.sleep(0.3 * attempt)

    def _tls(self, sock: socket.socket) -> ssl.SSLSocket:
        """TLS to the peer; its certificate must be the pinned one (never retried if not)."""
        try:
            pin = tls.pin_of(self.pin or "")
        except ShipyardError as exc:
            message = f"{self.address}: peer_tls: {exc.message}"
            raise PeerError(message, exc.hint, sent=False) from None
        wrapped = tls.client_context().wrap_socket(sock)
        seen = tls.presented(wrapped)
        if not tls.matches(seen, pin):
            wrapped.close()
            raise PeerError(
                f"{self.address} presented the certificate {seen}, not the pinned {pin}",
                "someone is in between, or the peer's certificate was replaced: "
                "check it there before changing peer_tls",
                sent=False,
            )
        return wrapped

    def _go_ahead(self, sock: socket.socket, nonce: str, action: str) -> None:
        """Wait for the receiver's 100 Continue; anything else is its refusal, raised."""
        got = b""
        while len(got) < len(auth.CONTINUE):
            chunk = sock.recv(len(auth.CONTINUE) - len(got))
            if not chunk:
                break
            got += chunk
        if got == auth.CONTINUE:
            return
        while chunk and len(got) < 64 * 1024:  # a refusal: the receiver closes after it
            chunk = sock.recv(64 * 1024)
            got += chunk
        stream = io.BytesIO(got)
        self._answer(stream, exchange.read_answer(stream), nonce, None, action)
        raise PeerError(f"{self.address} answered {action} before taking its body")

    def _answer(
        self, stream: BinaryIO, answer: exchange.Answer, nonce: str, on_line, action: str
    ) -> dict:
        if answer.status != 200:
            raw = exchange.read_body(stream, answer, 64 * 1024)
            try:
                error = json.loads(raw)["error"]
            except (ValueError, KeyError, TypeError):
                error = raw.decode(errors="replace").strip()[:200] or answer.reason
            raise PeerError(f"{self.address} refused the call ({answer.status}): {error}")
        before = b""
        while True:
            line = stream.readline(1024 * 1024)
            if not line:
                raise PeerError(
                    f"{self.address}: connection lost during {action} (receiver stopped?)"
                )
            if line.startswith(b"R "):
                _, mac, result = line.rstrip(b"\n").split(b" ", 2)
                expected = auth.result_mac(self.secret, nonce, before, result)
                if not auth.hmac.compare_digest(mac.decode(), expected):
                    raise PeerError(f"{self.address} sent an answer with a bad signature")
                return json.loads(result)
            before += line
            if line.startswith(b"N "):
                self.name = line[2:].decode(errors="replace").strip()
            if line.startswith(b"L ") and on_line:
                on_line(line[2:].decode(errors="replace").rstrip("\n"))

    def describe(self, exc: BaseException, action: str, sent: bool) -> str:
        ssl = sys.modules.get("ssl")  # not loaded: no TLS was spoken, so no TLS error

        where = f"{self.address} unreachable"
        if isinstance(exc, ConnectionRefusedError):
            return f"{where}: connection refused (is `shipyard receiver` running there?)"
        if isinstance(exc, socket.timeout | TimeoutError):
            if not sent:
                return f"{where}: no answer to connect within {CONNECT_TIMEOUT:.0f}s (host down?)"
            return f"{self.address}: no word for {self.timeout:.0f}s during {action} (network cut?)"
        if ssl and isinstance(exc, ssl.SSLError):
            return f"{where}: TLS failed: {exc.reason or exc} (does it serve TLS?)"
        if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return f"{where}: no route to host"
        if sent:
            lost = f"{self.address}: connection lost during {action} ({exc or type(exc).__name__})"
            if isinstance(exc, NoAnswer) and not self.pin:
                lost += "; if it serves TLS, pin its certificate in peer_tls"  # closed unanswered
            return lost
        return f"{where}: {exc or type(exc).__name__}"
