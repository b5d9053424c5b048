"""Signed requests between a primary and its peers' receivers.

Every request carries a timestamp, a random nonce and an HMAC-SHA256 over
method, path (with query), timestamp, nonce and the SHA-256 of the body, keyed
with the app's cluster secret. The receiver refuses a request that is unsigned,
mis-signed, outside the clock-skew window, or whose nonce it has already seen
within that window. The last line of every answer is signed the same way over
the request's nonce and everything the answer said before it, so a result
cannot be forged or replayed either.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time

VERSION = "v1"
WINDOW = 30.0  # seconds of clock skew accepted either way; nonces are kept this long
H_TIME, H_NONCE, H_SIG = "X-Shipyard-Time", "X-Shipyard-Nonce", "X-Shipyard-Signature"


class Refused(Exception):
    """A request that failed authentication; the message says why (and is logged)."""


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def _message(method: str, path: str, stamp: str, nonce: str, digest: str) -> bytes:
    return "\n".join(("shipyard-" + VERSION, method.upper(), path, stamp, nonce, digest)).encode()


def sign(secret: bytes, method: str, path: str, body: bytes, now: float | None = None) -> dict:
    """The headers that sign one request."""
    stamp = f"{time.time() if now is None else now:.3f}"
    nonce = secrets.token_hex(16)
    mac = hmac.new(secret, _message(method, path, stamp, nonce, body_digest(body)), "sha256")
    return {H_TIME: stamp, H_NONCE: nonce, H_SIG: f"{VERSION}={mac.hexdigest()}"}


class Verifier:
    """Checks signatures and remembers nonces for the window (one per receiver process)."""

    def __init__(self, window: float = WINDOW, max_nonces: int = 100_000) -> None:
        self.window = window
        self.max_nonces = max_nonces
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def check_fresh(self, headers, now: float | None = None) -> None:
        """Cheap checks before the body is read: signed at all, and within the window."""
        if not all(headers.get(h) for h in (H_TIME, H_NONCE, H_SIG)):
            raise Refused("unsigned request")
        now = time.time() if now is None else now
        try:
            stamp = float(headers[H_TIME])
        except ValueError:
            raise Refused("malformed timestamp") from None
        if abs(now - stamp) > self.window:
            raise Refused(
                f"stale request: its timestamp is {now - stamp:+.0f}s off this host's clock "
                f"(window ±{self.window:.0f}s); check NTP on both hosts"
            )

    def verify(self, secret: bytes, method: str, path: str, headers, digest: str) -> str:
        """Verify the signature over the body's ``digest``; returns the nonce."""
        self.check_fresh(headers)
        nonce, given = headers[H_NONCE], headers[H_SIG]
        if len(nonce) != 32 or not given.startswith(f"{VERSION}="):
            raise Refused("malformed signature headers")
        mac = hmac.new(secret, _message(method, path, headers[H_TIME], nonce, digest), "sha256")
        if not hmac.compare_digest(given[len(VERSION) + 1 :], mac.hexdigest()):
            raise Refused("bad signature (is the cluster secret the same on both hosts?)")
        self._remember(nonce)
        return nonce

    def _remember(self, nonce: str) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._seen) > self.max_nonces // 2:
                self._seen = {n: t for n, t in self._seen.items() if t > now}
            if self._seen.get(nonce, 0) > now:
                raise Refused("replayed request (nonce already used)")
            if len(self._seen) >= self.max_nonces:
                raise Refused("too many requests in the replay window")
            # kept for twice the window: a stamp may be up to `window` in the future
            self._seen[nonce] = now + 2 * self.window


def result_mac(secret: bytes, nonce: str, before: bytes, result: bytes) -> str:
    """Signs an answer's final line: bound to the request's nonce and all the lines before it."""
    message = b"\n".join((b"shipyard-result", nonce.encode(), body_digest(before).encode(), result))
    return hmac.new(secret, message, "sha256").hexdigest()
