"""The health check: what a release asks for (``[health]``), one probe of a process's
private socket or the public port, and what an answer says."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from . import exchange
from .config import HEALTH_SCHEMA, HostConfig

# --- health -------------------------------------------------------------------


@dataclass(frozen=True)
class Health:
    path: str = "/"
    status: int | list[int] = 200
    timeout: float = 30
    retries: int = 60
    host: str = ""  # the Host header sent; "" = localhost
    https: bool = False  # X-Forwarded-Proto: https (the app is served over TLS)

    @property
    def interval(self) -> float:
        return min(1.0, max(0.1, self.timeout / max(1, self.retries)))

    @property
    def accepts(self) -> tuple[int, ...]:
        return tuple(self.status) if isinstance(self.status, list) else (self.status,)

    @property
    def wanted(self) -> str:
        return " or ".join(map(str, self.accepts))

    def headers(self) -> dict[str, str]:
        sent = {"Host": self.host or "localhost", "User-Agent": "shipyard-health"}
        if self.https:
            sent["X-Forwarded-Proto"] = "https"
        return sent

    def __str__(self) -> str:
        return f"GET {self.path} {'/'.join(map(str, self.accepts))}"


def health_for(app_health: dict, host: HostConfig) -> Health:
    """Defaults, then the app's [health], then the host's [health] (the operator's word is last)."""
    merged = {k: default for k, (_, default) in HEALTH_SCHEMA.items()}
    if host.domains:  # behind the front door: probe as the proxy forwards a request
        merged["host"] = host.domains[0]
        merged["https"] = (host.proxy or {}).get("tls", "acme") != "off"
    merged.update(app_health or {})
    merged.update(host.health or {})
    if not str(merged["path"]).startswith("/"):
        merged["path"] = "/" + str(merged["path"])
    return Health(**merged)


@dataclass(frozen=True)
class Answer:
    status: int
    location: str = ""  # a redirect's Location


def probe(
    address: Path | int, path: str, timeout: float = 5.0, headers: dict[str, str] | None = None
) -> Answer:
    """GET ``path`` from a unix socket or 127.0.0.1:port, as the health check sends it."""
    where = str(address) if isinstance(address, Path) else address
    sent = {"Host": "localhost", "User-Agent": "shipyard-health", **(headers or {})}
    answer = exchange.get(where, path, sent, timeout)
    return Answer(answer.status, answer.header("Location"))


def final_answer(answer: Answer, health: Health) -> bool:
    """An answer waiting will not change: a client error (not 404/429) or an unwanted redirect."""
    if answer.status in health.accepts:
        return False
    if 300 <= answer.status < 400:
        return True
    return 400 <= answer.status < 500 and answer.status not in (404, 408, 429)


def health_hint(answer: Answer, health: Health, where: str) -> str:
    """The likely cause of an answer that will not change, and the setting that fixes it."""
    status, location = answer.status, answer.location
    sent = health.host or "localhost"
    if status == 400:
        return (
            f"a 400 to Host: {sent} is what Django answers a host not in ALLOWED_HOSTS: set "
            f'[health] host = "your.domain" in {where} to a host the app allows, or add '
            f"{sent} to ALLOWED_HOSTS"
        )
    if 300 <= status < 400 and location.startswith("https://") and not health.https:
        return (
            f"it redirects plain HTTP to {location} (SECURE_SSL_REDIRECT or the like): set "
            f"[health] https = true in {where} (sends X-Forwarded-Proto: https; Django also "
            "needs SECURE_PROXY_SSL_HEADER = ('HTTP_X_FORWARDED_PROTO', 'https'))"
        )
    if 300 <= status < 400 and "login" in location.lower():
        return (
            f"{health.path} redirects to a login page ({location}): set [health] path in "
            f"{where} to a page that needs no login (e.g. /healthz), or accept it: "
            f"[health] status = [{health.wanted.replace(' or ', ', ')}, {status}]"
        )
    if 300 <= status < 400:
        return (
            f"{health.path} redirects to {location or '?'}: set [health] path in {where} to "
            f"where it leads, or accept it: [health] status = [200, {status}]"
        )
    if status in (401, 403):
        return f"{health.path} needs a login: set [health] path in {where} to a public page"
    if status == 404:
        return (
            f"the app has no page at {health.path} (a Django project with DEBUG = False and no "
            f"view there answers 404): set [health] path in {where} to one that answers "
            f'{health.wanted}, e.g. path = "/admin/login/" or a /healthz view of its own'
        )
    return f"set [health] path (and status) in {where} to a page that answers {health.wanted}"


def public_status(port: int, health: Health, attempts: int = 3) -> int | str:
    last: int | str = "no answer"
    for attempt in range(attempts):
        try:
            last = probe(port, health.path, min(5.0, health.timeout), health.headers()).status
        except OSError as exc:
            last = f"{type(exc).__name__}: {exc}"
        if last in health.accepts:
            return last
        if attempt + 1 < attempts:
            time.sleep(health.interval)
    return last
