"""The front door: the app's nginx site, its domains, reloads and the maintenance page.

The deploy user writes the site (``<sites>/<app>.conf``) into a directory the
host's nginx includes; root only runs a fixed helper (``shipyard proxy-reload``)
that checks every site there is exactly what :func:`render` makes of the spec
in its first line, then ``nginx -t`` and a graceful reload. So a deploy user
can change *which* domains, ports and paths its site serves, but cannot write
arbitrary nginx configuration that root's nginx would act on.

Static files and the maintenance page are read by nginx through the ``current``
symlink and a flag file on every request: a deploy's switch moves them with the
code, and maintenance on/off needs no reload.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

from .app import App
from .config import (
    PROXY_SCHEMA,
    HostConfig,
    check_domain,
    load_host_config,
)
from .errors import ConfigError, ShipyardError

HEADER = "# shipyard-site "
DEFAULT_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Down for maintenance</title></head>
<body><h1>Down for maintenance</h1><p>{message}</p></body></html>
"""
DEFAULT_MESSAGE = "We are upgrading this site and will be back in a few minutes."


def settings(host: HostConfig) -> dict[str, Any]:
    """The ``[proxy]`` table with its defaults filled in."""
    values = {key: default for key, (_type, default) in PROXY_SCHEMA.items()}
    values.update(host.proxy)
    return values


def sites_dir(host: HostConfig) -> Path:
    """This deploy user's directory of sites: ``[proxy] sites``/<user> (provision makes it)."""
    import getpass  # with termios: only where a proxy is configured

    return Path(settings(host)["sites"]) / getpass.getuser()


def site_file(app: App, host: HostConfig) -> Path:
    return sites_dir(host) / f"{app.name}.conf"


def maintenance_page(app: App) -> Path:
    """Present while maintenance is on; nginx checks for it on each request."""
    return app.run / "maintenance" / "page.html"


def acme_webroot(app: App) -> Path:
    return app.run / "acme"


def live_pair(app: App) -> dict[str, str] | None:
    """The certificate pair the site serves (``tls/live``, kept by shipyard/tls.py), or None."""
    live = app.dir / "tls" / "live"
    if not (live / "fullchain.pem").is_file():
        return None
    return {"certificate": str(live / "fullchain.pem"), "key": str(live / "privkey.pem")}


# --- the site -----------------------------------------------------------------


def spec(app: App, host: HostConfig, tls: dict[str, str] | None) -> dict[str, Any]:
    """Everything the site depends on: the input of :func:`render` (and of its check)."""
    s = settings(host)
    static = s["static"].strip("/")
    return {
        "app": app.name,
        "domains": list(host.domains),
        "upstream": host.port,
        "address": s["address"],
        "http_port": s["http_port"],
        "https_port": s["https_port"],
        "static_url": "/" + s["static_url"].strip("/") + "/",
        "static_dir": str(app.current / static) if static else "",
        "maintenance": str(maintenance_page(app)),
        "acme_webroot": str(acme_webroot(app)),
        "tls": tls,
        "hsts": bool(s["hsts"]),
        "retry_after": int(s["retry_after"]),
    }


def _listen(address: str, port: int, extra: str = "") -> str:
    where = f"{address}:{port}" if address else str(port)
    return f"    listen {where}{extra};\n"


def _proxy_block(sp: dict[str, Any], security: str) -> str:
    return (
        f"        proxy_pass http://127.0.0.1:{sp['upstream']};\n"
        "        proxy_http_version 1.1;\n"
        '        proxy_set_header Connection "";\n'
        "        proxy_set_header Host $host;\n"
        "        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n"
        "        proxy_set_header X-Forwarded-Proto $scheme;\n"
        "        proxy_set_header X-Forwarded-Host $host;\n"
        "        proxy_set_header X-Real-IP $remote_addr;\n"
        "        proxy_read_timeout 300s;\n" + security
    )


def _serve(sp: dict[str, Any], security: str) -> str:
    """The locations that serve the app: maintenance, static files, the app itself."""
    name = sp["app"].replace("-", "_")
    out = (
        f"    error_page 503 /.shipyard-maintenance;\n"
        f"    location = /.shipyard-maintenance {{\n"
        f"        internal;\n"
        f"        alias {sp['maintenance']};\n"
        f"        default_type text/html;\n"
        f"        add_header Retry-After {sp['retry_after']} always;\n"
        f'        add_header Cache-Control "no-store" always;\n' + security + "    }\n"
    )
    if sp["static_dir"]:
        out += (
            f"    location ^~ {sp['static_url']} {{\n"
            f"        alias {sp['static_dir']}/;\n"
            f"        add_header Cache-Control $shipyard_cache_{name};\n"
            + security
            + f"        try_files $uri @shipyard_{name};\n"
            "    }\n"
        )
    out += (
        f"    location @shipyard_{name} {{\n"
        + _proxy_block(sp, security)
        + "    }\n"
        + "    location / {\n"
        + f"        if (-f {sp['maintenance']}) {{ return 503; }}\n"
        + _proxy_block(sp, security)
        + "    }\n"
    )
    return out


def render(sp: dict[str, Any]) -> str:
    """The nginx site for ``sp``: HTTP (ACME challenges, then a redirect once TLS is on) + HTTPS."""
    name = sp["app"].replace("-", "_")
    names = " ".join(sp["domains"])
    tls = sp["tls"]
    out = (
        f"map $uri $shipyard_cache_{name} {{\n"
        '    "~\\.[0-9a-f]{8,}\\.[A-Za-z0-9]+$" "public, max-age=31536000, immutable";\n'
        '    default "public, max-age=300";\n'
        "}\n"
        "server {\n" + _listen(sp["address"], sp["http_port"]) + f"    server_name {names};\n"
        "    location = /.well-known/shipyard-site {\n"
        f'        default_type text/plain;\n        return 200 "{digest(sp)}\\n";\n'
        "    }\n"
        "    location ^~ /.well-known/acme-challenge/ {\n"
        f"        root {sp['acme_webroot']};\n"
        "        default_type text/plain;\n"
        "    }\n"
    )
    if tls:
        port = "" if sp["https_port"] == 443 else f":{sp['https_port']}"
        out += f"    location / {{ return 308 https://$host{port}$request_uri; }}\n}}\n"
        security = (
            '        add_header Strict-Transport-Security "max-age=31536000" always;\n'
            if sp["hsts"]
            else ""
        )
        out += (
            "server {\n"
            + _listen(sp["address"], sp["https_port"], " ssl http2")
            + f"    server_name {names};\n"
            f"    ssl_certificate {tls['certificate']};\n"
            f"    ssl_certificate_key {tls['key']};\n"
            "    ssl_protocols TLSv1.2 TLSv1.3;\n"
            "    ssl_session_cache shared:shipyard_ssl:10m;\n" + _serve(sp, security) + "}\n"
        )
    else:
        out += _serve(sp, "") + "}\n"
    return out


def digest(sp: dict[str, Any]) -> str:
    """What the site answers at /.well-known/shipyard-site: which spec nginx is serving."""
    import hashlib

    return hashlib.sha256(json.dumps(sp, sort_keys=True).encode()).hexdigest()[:16]


def serves_pair(sp: dict[str, Any]) -> bool:
    """Whether HTTPS hands out the certificate of ``sp`` (nginx reads certificates on reload)."""
    import socket
    import ssl

    if not sp["tls"]:
        return True
    with open(sp["tls"]["certificate"]) as f:
        pem = f.read()
    end = "-----END CERTIFICATE-----"
    wanted = ssl.PEM_cert_to_DER_cert(pem[: pem.index(end) + len(end)])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # not trusting it: comparing it with the file
    address = sp["address"] or "127.0.0.1"
    sock = socket.create_connection((address, sp["https_port"]), timeout=2)
    with context.wrap_socket(sock, server_hostname=sp["domains"][0]) as tls:
        return tls.getpeercert(binary_form=True) == wanted


def wait_serving(sp: dict[str, Any], seconds: float = 15.0) -> None:
    """Return once nginx serves ``sp``: `nginx -s reload` returns before new workers answer."""
    import http.client
    import time

    address = sp["address"] or "127.0.0.1"
    deadline = time.monotonic() + seconds
    while True:
        try:
            conn = http.client.HTTPConnection(address, sp["http_port"], timeout=2)
            conn.request("GET", "/.well-known/shipyard-site", headers={"Host": sp["domains"][0]})
            if conn.getresponse().read().decode().strip() == digest(sp) and serves_pair(sp):
                return
        except (OSError, ValueError, http.client.HTTPException):
            pass
        finally:
            conn.close()
        if time.monotonic() > deadline:
            raise ShipyardError(
                f"the proxy did not start serving the new site within {seconds:.0f}s",
                f"check nginx's error log and `curl -H 'Host: {sp['domains'][0]}' "
                f"http://{address}:{sp['http_port']}/.well-known/shipyard-site`",
            )
        time.sleep(0.1)


def site_text(sp: dict[str, Any]) -> str:
    return HEADER + json.dumps(sp, sort_keys=True) + "\n" + render(sp)


SAFE_PATH = re.compile(r"^/[A-Za-z0-9._/@+-]*\Z")
SPEC_TYPES = {
    "app": str,
    "domains": list,
    "upstream": int,
    "address": str,
    "http_port": int,
    "https_port": int,
    "static_url": str,
    "static_dir": str,
    "maintenance": str,
    "acme_webroot": str,
    "tls": (dict, type(None)),
    "hsts": bool,
    "retry_after": int,
}


def verify_site(text: str, home: Path) -> dict[str, Any]:
    """The spec of a site file, if the file is exactly what :func:`render` makes of it.

    Every path must lie under ``home`` (the site owner's home, or the deploy root
    for tests) and contain nothing nginx would read as syntax: this is what lets
    root's nginx include files the deploy user writes.
    """
    first, _, _rest = text.partition("\n")
    if not first.startswith(HEADER):
        raise ConfigError("not a shipyard site (no spec in its first line)")
    try:
        sp = json.loads(first[len(HEADER) :])
    except ValueError:
        raise ConfigError("the site's spec is not JSON") from None
    if not isinstance(sp, dict) or set(sp) != set(SPEC_TYPES):
        raise ConfigError("the site's spec has unknown or missing keys")
    for key, kind in SPEC_TYPES.items():
        if not isinstance(sp[key], kind) or (kind is int and isinstance(sp[key], bool)):
            raise ConfigError(f"the site's spec has a bad {key!r}")
    if not re.match(r"^[a-z0-9][a-z0-9_-]{0,62}\Z", sp["app"]):
        raise ConfigError("the site's spec has a bad app name")
    for name in sp["domains"]:
        if not isinstance(name, str):
            raise ConfigError("the site's spec has a bad domain")
        check_domain(name)
    if sp["address"] and not re.match(r"^[0-9.]+\Z|^\[[0-9a-f:]+\]\Z", sp["address"]):
        raise ConfigError("the site's spec has a bad address")
    if not re.match(r"^/[A-Za-z0-9._/-]*/\Z", sp["static_url"]):
        raise ConfigError("the site's spec has a bad static_url")
    paths = [sp["maintenance"], sp["acme_webroot"]] + (
        [sp["static_dir"]] if sp["static_dir"] else []
    )
    if sp["tls"] is not None:
        if set(sp["tls"]) != {"certificate", "key"}:
            raise ConfigError("the site's spec has a bad tls")
        paths += [sp["tls"]["certificate"], sp["tls"]["key"]]
    base = str(home).rstrip("/") + "/"
    for path in paths:
        if not isinstance(path, str) or not SAFE_PATH.match(path) or "/../" in path + "/":
            raise ConfigError(f"the site's spec has an unsafe path {path!r}")
        if not path.startswith(base):
            raise ConfigError(f"the site names {path!r}, outside {home}")
    if text != site_text(sp):
        raise ConfigError("the site is not what shipyard renders from its spec")
    return sp


def read_spec(path: Path) -> dict[str, Any] | None:
    try:
        first = path.read_text().partition("\n")[0]
        return json.loads(first[len(HEADER) :]) if first.startswith(HEADER) else None
    except (OSError, ValueError):
        return None


def claims(app: App, host: HostConfig) -> dict[str, str]:
    """Domains other apps on this host serve or configured: domain -> ``app`` (or its site)."""
    taken: dict[str, str] = {}
    sites = Path(settings(host)["sites"])
    for path in sorted(sites.glob("*/*.conf")):
        sp = read_spec(path)
        if sp and path != site_file(app, host):
            for name in sp.get("domains", []):
                taken[name] = f"{sp.get('app')} ({path})"
    for other in sorted(app.root.glob("*/shipyard.toml")):
        if other.parent.name == app.name:
            continue
        try:
            for name in load_host_config(other).domains:
                taken[name] = other.parent.name
        except (ShipyardError, OSError):
            continue
    return taken


def check_claims(app: App, host: HostConfig) -> None:
    taken = claims(app, host)
    for name in host.domains:
        if name in taken:
            owner = taken[name].split()[0]
            raise ConfigError(
                f"{name} is already served by app {taken[name]} on this host",
                f"remove it there first (`shipyard domains {owner} remove {name}`)",
            )


def write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    import tempfile  # here: every deploy imports this module, few write a site

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def reload(host: HostConfig) -> None:
    """Check and reload the proxy through the narrow path (``[proxy] reload``)."""
    command = settings(host)["reload"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        lines = (result.stderr or result.stdout).strip().splitlines() or ["(no output)"]
        raise ShipyardError(
            f"the proxy refused the new site: {lines[-1]}",
            f"`{' '.join(command)}` failed; the previous site is back in place",
        )


def apply(
    app: App, host: HostConfig, tls: dict[str, str] | None = None, force: bool = False
) -> str:
    """Write the app's site for ``host`` (none without domains) and reload; undone if refused.

    ``tls`` is the certificate pair to serve; by default the one installed for the app.
    ``force`` reloads even when the site is unchanged (nginx reads certificates on reload).
    """
    check_claims(app, host)
    path = site_file(app, host)
    before = path.read_text() if path.is_file() else None
    sp = None
    if host.domains:
        acme_webroot(app).mkdir(parents=True, exist_ok=True)
        if tls is None and settings(host)["tls"] != "off":
            tls = live_pair(app)
        sp = spec(app, host, tls)
    after = site_text(sp) if sp else None
    if after == before and not force:
        return "unchanged"
    if after is None:
        path.unlink()
    else:
        write_atomic(path, after)
    try:
        reload(host)
        if sp:
            wait_serving(sp)
    except ShipyardError:
        if before is None:
            path.unlink(missing_ok=True)
        else:
            write_atomic(path, before)
        raise
    return "removed" if after is None else "written"


# --- maintenance --------------------------------------------------------------


def maintenance_on(app: App, message: str | None = None) -> None:
    """503 with Retry-After and a page: the live release's ``maintenance.html``, or a plain one."""
    import html

    own = app.current / "maintenance.html"
    if own.is_file() and message is None:
        page = own.read_text(errors="replace")
    else:
        page = DEFAULT_PAGE.format(message=html.escape(message or DEFAULT_MESSAGE))
    write_atomic(maintenance_page(app), page)


def maintenance_off(app: App) -> bool:
    try:
        maintenance_page(app).unlink()
        return True
    except FileNotFoundError:
        return False


def in_maintenance(app: App) -> bool:
    return maintenance_page(app).is_file()


# the deploy's phases for `-o maintenance[=MESSAGE]` (deploy.PHASES): on around the migrations.
# Whether the deploy turned the page on is kept in its journal (the deploy lock's note), so
# that whoever recovers it when it is killed turns the page off again (recover.resume).


def maintenance_start(d) -> str:
    """Turn the page on before the migrations, unless it was on already (then leave it to you)."""
    d.maintenance_was_on = in_maintenance(d.app)
    if d.maintenance_was_on:
        return "already on; left on after the deploy"
    if d.journal is not None:  # before the page goes on: a kill in between finds it noted
        d.journal.update(maintenance="on")
    maintenance_on(d.app, d.options.get("maintenance") or None)
    return "on: the proxy answers 503 with Retry-After"


def maintenance_end(d) -> str:
    if d.maintenance_was_on:
        return "left on (it was on before the deploy): `shipyard maintenance APP off`"
    maintenance_undo(d)
    return "off"


def maintenance_undo(d) -> None:
    if not d.maintenance_was_on:
        maintenance_off(d.app)
        if d.journal is not None:
            d.journal.update(maintenance=None)


def turned_on_by(note: dict) -> bool:
    """Whether the deploy of a deploy-lock note turned the maintenance page on (and not off)."""
    return note.get("maintenance") == "on"


def end_interrupted(app: App, note: dict) -> str | None:
    """A killed deploy's page off again (called by recovery, whatever became of the deploy)."""
    if turned_on_by(note) and maintenance_off(app):
        return "the maintenance page it turned on: off"
    return None


# --- the root helper -----------------------------------------------------------


def read_no_follow(path: Path) -> tuple[str, int]:
    """A file's text and owner, opened without following a link (root reads users' files)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd) as f:
        return f.read(), os.fstat(f.fileno()).st_uid


def reload_sites(
    sites: Path, checked: Path, nginx: list[str], home: Path | None = None
) -> list[str]:
    """The root helper's body: verify every site under ``sites``, copy it to ``checked``
    (root's, what nginx includes), ``nginx -t``, reload; the previous set is put back if refused.

    nginx never reads a file the deploy user can still change after the check. Each site's
    paths must lie in its directory owner's home (``home`` overrides, for tests).
    """
    import pwd

    wanted: dict[str, str] = {}
    for path in sorted(sites.glob("*/*.conf")):
        owner = path.parent.stat().st_uid
        base = home or Path(pwd.getpwuid(owner).pw_dir)
        try:
            text, uid = read_no_follow(path)
            if uid != owner:
                raise ConfigError(f"not a file of {path.parent}'s owner")
            verify_site(text, base)
        except (OSError, ConfigError) as exc:
            raise ConfigError(
                f"{path}: {getattr(exc, 'message', exc)}", "rewrite it with `shipyard domains APP`"
            ) from None
        wanted[f"{path.parent.name}--{path.name}"] = text
    checked.mkdir(mode=0o755, exist_ok=True)
    before = {p.name: p.read_text() for p in checked.glob("*.conf")}

    def install(files: dict[str, str]) -> None:
        for name, text in files.items():
            write_atomic(checked / name, text)
        for old in checked.glob("*.conf"):
            if old.name not in files:
                old.unlink()

    install(wanted)
    for step in (["-t", "-q"], ["-s", "reload"]):
        result = subprocess.run([*nginx, *step], capture_output=True, text=True)
        if result.returncode:
            install(before)
            lines = (result.stderr or result.stdout).strip().splitlines() or ["(no output)"]
            raise ShipyardError(f"nginx {' '.join(step)}: {lines[-1]}")
    return sorted(wanted)


def reload_command(
    sites: Path,
    prefix: str | None = None,
    conf: str | None = None,
    home: Path | None = None,
    checked: Path | None = None,
) -> int:
    """``shipyard proxy-reload`` (root's helper): check the deploy users' sites, reload nginx."""
    nginx = ["nginx", *(["-p", prefix] if prefix else [])]
    nginx += ["-c", conf] if conf else []
    reload_sites(sites, checked or Path(f"{str(sites).rstrip('/')}.checked"), nginx, home)
    return 0
