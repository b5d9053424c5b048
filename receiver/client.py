"""The primary's side of the conversation with a peer's receiver: signed calls with timeouts.

Answers stream: ``L <text>`` progress lines, ``H`` keep-alives while a long step
runs, and one final ``R <mac> <json>`` line signed over the request's nonce and
everything before it. A call that could not be sent (connection refused, no
route, connect timeout) is retried; one that was sent is retried only when it is
idempotent.
"""

from __future__ import annotations

import errno
import http.client
import json
import socket
import time
from collections.abc import Callable
from urllib.parse import urlencode

from shipyard.errors import ShipyardError

from . import auth

API = f"/{auth.VERSION}/apps"
CONNECT_TIMEOUT = 3.0


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

    def __init__(self, address: str, app: str, secret: bytes, timeout: float = 15.0) -> None:
        self.address = address
        self.host, self.port = split_address(address)
        self.app = app
        self.secret = secret
        self.timeout = timeout
        self.down = False  # the last call could not reach it: do not insist on the next ones

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
        attempt = 0
        retries = 0 if self.down else retries
        while True:
            sent = False
            try:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=CONNECT_TIMEOUT)
                try:
                    conn.connect()
                    conn.sock.settimeout(self.timeout)
                    headers = auth.sign(self.secret, method, path, body)
                    headers["Content-Type"] = (
                        "application/octet-stream"
                        if isinstance(payload, bytes)
                        else "application/json"
                    )
                    sent = True
                    conn.request(method, path, body=body, headers=headers)
                    resp = conn.getresponse()
                    self.down = False
                    return self._answer(resp, headers[auth.H_NONCE], on_line, action)
                finally:
                    conn.close()
            except PeerError:
                raise
            except (OSError, http.client.HTTPException) as exc:
                attempt += 1
                if attempt > retries or (sent and not idempotent):
                    self.down = True
                    raise PeerError(self.describe(exc, action, sent), sent=sent) from None
                time.sleep(0.3 * attempt)

    def _answer(self, resp: http.client.HTTPResponse, nonce: str, on_line, action: str) -> dict:
        if resp.status != 200:
            raw = resp.read(64 * 1024)
            try:
                error = json.loads(raw)["error"]
            except (ValueError, KeyError, TypeError):
                error = raw.decode(errors="replace").strip()[:200] or resp.reason
            raise PeerError(f"{self.address} refused the call ({resp.status}): {error}")
        before = b""
        while True:
            line = resp.readline(1024 * 1024)
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
            if line.startswith(b"L ") and on_line:
                on_line(line[2:].decode(errors="replace").rstrip("\n"))

    def describe(self, exc: BaseException, action: str, sent: bool) -> str:
        where = f"{self.address} unreachable"
        if isinstance(exc, ConnectionRefusedError):
            return f"{where}: connection refused (is `shipyard receiver` running there?)"
        if isinstance(exc, socket.timeout | TimeoutError):
            if not sent:
                return f"{where}: no answer to connect within {CONNECT_TIMEOUT:.0f}s (host down?)"
            return f"{self.address}: no word for {self.timeout:.0f}s during {action} (network cut?)"
        if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return f"{where}: no route to host"
        if sent:
            return f"{self.address}: connection lost during {action} ({exc or type(exc).__name__})"
        return f"{where}: {exc or type(exc).__name__}"
