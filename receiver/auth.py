"""Signed requests between a primary and its peers' receivers.

Every request carries a timestamp, a random nonce, the receiver it is meant for
(the peer's address as the primary's ``peers`` lists it), the body's length and
SHA-256, and an HMAC-SHA256 over method, path (with query), destination,
timestamp, nonce, length and digest, keyed with the app's cluster secret. All of
it is in the headers, so the receiver checks the whole signature **before** it
reads a byte of the body, then checks the body against the signed digest while
it stores it. It refuses a request that is unsigned, mis-signed, outside the
clock-skew window, addressed to another host, or whose nonce it has already
seen within that window. The last line of every answer is signed the same way
over the request's nonce and everything the answer said before it, so a result
cannot be forged or replayed either.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
import os
import threading
import time

VERSION = "v1"  # of the API (its paths)
SCHEME = "v2"  # of the signature; v1 signed neither the destination nor the body's length
WINDOW = 30.0  # seconds of clock skew accepted either way; nonces are kept this long
H_TIME, H_NONCE, H_SIG = "X-Shipyard-Time", "X-Shipyard-Nonce", "X-Shipyard-Signature"
H_TO, H_DIGEST = "X-Shipyard-To", "X-Shipyard-Digest"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"  # the receiver's go-ahead for a signed body


class Unauthenticated(Exception):
    """A request that failed authentication; the message says why (and is logged)."""


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def destination(address: str) -> str:
    """``HOST:PORT`` as compared: lower case, IPv6 without brackets and in its short form."""
    host, _, port = address.strip().rpartition(":")
    host = host.strip("[]").lower()
    with contextlib.suppress(ValueError):
        host = str(ipaddress.ip_address(host))
    return f"{host}:{port}"


def _message(
    method: str, path: str, to: str, stamp: str, nonce: str, length: int, digest: str
) -> bytes:
    parts = ("shipyard-" + SCHEME, method.upper(), path, to, stamp, nonce, str(length), digest)
    return "\n".join(parts).encode()


def sign(
    secret: bytes, method: str, path: str, body: bytes, now: float | None = None, to: str = ""
) -> dict:
    """The headers that sign one request to the receiver at ``to`` (HOST:PORT)."""
    stamp = f"{time.time() if now is None else now:.3f}"
    nonce = os.urandom(16).hex()  # secrets.token_hex's, without importing random for it
    to, digest = destination(to) if to else "", body_digest(body)
    message = _message(method, path, to, stamp, nonce, len(body), digest)
    mac = hmac.new(secret, message, "sha256")
    return {
        H_TIME: stamp,
        H_NONCE: nonce,
        H_TO: to,
        H_DIGEST: digest,
        "Content-Length": str(len(body)),
        H_SIG: f"{SCHEME}={mac.hexdigest()}",
    }


def declared_length(headers) -> int:
    """The body's length as the request declares it (0 for a body-less GET)."""
    raw = headers.get("Content-Length") or "0"
    if not (raw.isascii() and raw.isdigit()):
        raise Unauthenticated("malformed Content-Length")
    return int(raw)


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
            raise Unauthenticated("unsigned request")
        now = time.time() if now is None else now
        try:
            stamp = float(headers[H_TIME])
        except ValueError:
            raise Unauthenticated("malformed timestamp") from None
        if abs(now - stamp) > self.window:
            raise Unauthenticated(
                f"stale request: its timestamp is {now - stamp:+.0f}s off this host's clock "
                f"(window ±{self.window:.0f}s); check NTP on both hosts"
            )

    def verify(
        self,
        secret: bytes,
        method: str,
        path: str,
        headers,
        digest: str | None = None,
        me: frozenset[str] | None = None,
    ) -> str:
        """Verify the signed headers; returns the nonce. Nothing here needs the body: its
        digest, when known, must be the signed one; ``me`` (this receiver's addresses),
        when given, must include the signed destination."""
        self.check_fresh(headers)
        nonce, given = headers[H_NONCE], headers[H_SIG]
        if not given.startswith(f"{SCHEME}="):
            scheme = given.partition("=")[0]
            raise Unauthenticated(
                f"signature scheme {scheme[:8]!r} is not {SCHEME!r}: "
                "run the same shipyard version on the primary and its peers"
            )
        signed = headers.get(H_DIGEST) or ""
        if len(nonce) != 32 or len(signed) != 64:
            raise Unauthenticated("malformed signature headers")
        to = headers.get(H_TO) or ""
        length = declared_length(headers)
        message = _message(method, path, to, headers[H_TIME], nonce, length, signed)
        mac = hmac.new(secret, message, "sha256")
        if not hmac.compare_digest(given[len(SCHEME) + 1 :], mac.hexdigest()):
            raise Unauthenticated("bad signature (is the cluster secret the same on both hosts?)")
        if digest is not None:
            check_body(headers, digest)
        if me is not None and destination(to) not in me:
            raise Unauthenticated(
                f"request signed for {to or 'no host'!r}, and this receiver is "
                f"{', '.join(sorted(me))}: replayed from another peer, or the primary lists "
                "this host under another address (start the receiver with --alias HOST:PORT)"
            )
        self._remember(nonce)
        return nonce

    def _remember(self, nonce: str) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._seen) > self.max_nonces // 2:
                self._seen = {n: t for n, t in self._seen.items() if t > now}
            if self._seen.get(nonce, 0) > now:
                raise Unauthenticated("replayed request (nonce already used)")
            if len(self._seen) >= self.max_nonces:
                raise Unauthenticated("too many requests in the replay window")
            # kept for twice the window: a stamp may be up to `window` in the future
            self._seen[nonce] = now + 2 * self.window


def check_body(headers, digest: str) -> None:
    """The body read matches the digest its headers signed (called once it is all in)."""
    if not hmac.compare_digest(digest, headers.get(H_DIGEST) or ""):
        raise Unauthenticated("bad signature: the body is not the one signed")


def result_mac(secret: bytes, nonce: str, before: bytes, result: bytes) -> str:
    """Signs an answer's final line: bound to the request's nonce and all the lines before it."""
    message = b"\n".join((b"shipyard-result", nonce.encode(), body_digest(before).encode(), result))
    return hmac.new(secret, message, "sha256").hexdigest()
