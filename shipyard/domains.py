"""`shipyard domains`, `maintenance`, `tls` and `proxy-reload`: the front door's commands.

Changing domains touches three things that must agree: the host config, the
nginx site and (on ACME) the certificate. Each is changed in that order and
put back in reverse when a later one is refused, so a refusal leaves nothing
half-applied.
"""

from __future__ import annotations

import json

from . import proxy
from . import tls as certificates
from .app import App
from .config import HostConfig, check_domain, load_host_config, parse_host_config
from .errors import ConfigError
from .proxy import apply, check_claims, settings, write_atomic

# --- domains ------------------------------------------------------------------


def with_domains(text: str, domains: list[str]) -> str:
    """Host config text with its top-level ``domains`` line set (above any table)."""
    lines = [ln for ln in text.splitlines() if ln.split("=")[0].strip() != "domains"]
    first_table = next((i for i, ln in enumerate(lines) if ln.lstrip().startswith("[")), len(lines))
    lines.insert(first_table, "domains = " + json.dumps(domains))
    return "\n".join(lines) + "\n"


def set_domains(app: App, action: str, names: list[str]) -> HostConfig:
    """Add or remove domains: host config and site change together, or neither does."""
    text = app.config_file.read_text()
    host = parse_host_config(text, str(app.config_file))
    domains = list(host.domains)
    for name in names:
        check_domain(name)
        if action == "add" and name not in domains:
            domains.append(name)
        elif action == "remove":
            if name not in domains:
                raise ConfigError(f"{name} is not a domain of {app.name}", "see `domains list`")
            domains.remove(name)
    new_text = with_domains(text, domains)
    new_host = parse_host_config(new_text, str(app.config_file))
    check_claims(app, new_host)
    write_atomic(app.config_file, new_text, 0o600)
    try:
        apply(app, new_host)
        if action == "add" and expands_certificate(app, new_host):
            certificates.certify(app, new_host)
    except BaseException:
        write_atomic(app.config_file, text, 0o600)
        apply(app, host)
        raise
    return new_host


def expands_certificate(app: App, host: HostConfig) -> bool:
    """An app already on an ACME certificate gets one for its new domains at once."""
    return settings(host)["tls"] == "acme" and certificates.source(app) == "acme"


def command(app: App, action: str, names: list[str]) -> int:
    """``shipyard domains APP list|add|remove [DOMAIN…]``."""
    if action == "list":
        for name in load_host_config(app.config_file).domains:
            print(name)
        return 0
    if not names:
        raise ConfigError(f"name the domains to {action}", "e.g. `domains APP add www.example.com`")
    host = set_domains(app, action, names)
    shown = ", ".join(host.domains) or "none (the proxy no longer serves it)"
    print(f"shipyard ▸ {app.name} domains: {shown}")
    return 0


def maintenance(app: App, state: str, message: str | None = None) -> int:
    """``shipyard maintenance APP on|off [--message TEXT]``."""
    if state == "on":
        proxy.maintenance_on(app, message)
        print(f"shipyard ▸ {app.name}: maintenance on (503 with Retry-After; processes untouched)")
    else:
        was = proxy.maintenance_off(app)
        print(f"shipyard ▸ {app.name}: maintenance off" + ("" if was else " (it was not on)"))
    return 0
