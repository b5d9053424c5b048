"""GETs on loopback, one or a steady stream: what a user of the app sees during a deploy.

Used by the end-to-end tests, the fault suite and `make bench` (bench/run.py).
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


def fetch(port: int, path: str = "/", timeout: float = 10.0) -> tuple[int, str]:
    """GET ``path`` from 127.0.0.1:``port`` on a fresh connection: (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


@dataclass
class Load:
    """A bounded stream of GETs (about ``rate``/s); stops by itself at ``seconds`` or ``limit``.

    ``results``: (seconds since the start, latency, status or error, body) per request.
    """

    port: int
    rate: float = 50
    seconds: float = 90
    limit: int = 4500
    results: list[tuple[float, float, int | str, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    get: Callable[[], tuple[int, str]] | None = None  # another GET (e.g. HTTPS via the proxy)

    def run(self) -> None:
        started = time.monotonic()
        next_at = started
        while not self.stop.is_set() and len(self.results) < self.limit:
            now = time.monotonic()
            if now - started > self.seconds:
                break
            if now < next_at:
                time.sleep(next_at - now)
            next_at = max(next_at + 1 / self.rate, time.monotonic() - 1)
            t0 = time.monotonic()
            try:
                status, body = self.get() if self.get else fetch(self.port, timeout=30)
            except (OSError, http.client.HTTPException) as exc:
                status, body = f"{type(exc).__name__}: {exc}", ""
            self.results.append((t0 - started, time.monotonic() - t0, status, body.strip()))

    def failures(self) -> list[tuple[float, float, int | str, str]]:
        return [r for r in self.results if r[2] != 200]
