"""The app's TLS certificate: issued and renewed by ACME (certbot), or files the operator gives.

Certificates live in ``<app>/tls/``: each installed pair in its own directory
(``tls/<stamp>/fullchain.pem`` + ``privkey.pem``), ``tls/live`` a symlink to
the one the site serves, switched atomically once the new pair is checked
(key matches, every domain covered, not expired) and the proxy accepted the
site. A failed issue or a refused pair changes nothing: the site keeps serving
its old certificate.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from . import proxy
from .app import App, default_root
from .config import HostConfig, load_host_config
from .errors import ConfigError, ShipyardError


def tls_dir(app: App) -> Path:
    return app.dir / "tls"


installed = proxy.live_pair


def source(app: App) -> str | None:
    try:
        return json.loads((tls_dir(app) / "live" / "source.json").read_text()).get("source")
    except (OSError, ValueError):
        return None


def _openssl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["openssl", *args], capture_output=True, text=True)


def check_pair(certificate: Path, key: Path, domains: list[str]) -> None:
    """Refuse a certificate that does not match its key, misses a domain, or has expired."""
    cert_key = _openssl("x509", "-in", str(certificate), "-noout", "-pubkey")
    if cert_key.returncode:
        raise ConfigError(f"{certificate}: not a PEM certificate", "give the full chain, PEM")
    priv = _openssl("pkey", "-in", str(key), "-pubout")
    if priv.returncode:
        raise ConfigError(f"{key}: not a PEM private key", "give the unencrypted key, PEM")
    if cert_key.stdout.strip() != priv.stdout.strip():
        raise ConfigError(
            f"{certificate} does not match the key {key}",
            "give the key the certificate was made for",
        )
    for name in domains:
        check = _openssl("x509", "-in", str(certificate), "-noout", "-checkhost", name)
        if "does match" not in check.stdout:
            raise ConfigError(
                f"{certificate} does not cover {name}",
                "get a certificate for every domain of the app (`shipyard domains APP list`)",
            )
    if _openssl("x509", "-in", str(certificate), "-noout", "-checkend", "0").returncode:
        raise ConfigError(f"{certificate} has expired", "renew it, or let ACME issue one")


def install(app: App, host: HostConfig, certificate: Path, key: Path, origin: str) -> str:
    """Check the pair, copy it in, point the site at it and reload; undone if the proxy refuses."""
    check_pair(certificate, key, host.domains)
    base = tls_dir(app)
    base.mkdir(mode=0o700, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{os.getpid()}"
    pair = base / stamp
    pair.mkdir(mode=0o755)
    shutil.copyfile(certificate, pair / "fullchain.pem")
    fd = os.open(pair / "privkey.pem", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key.read_bytes())
    (pair / "source.json").write_text(json.dumps({"source": origin, "installed": time.time()}))
    live = base / "live"
    previous = os.readlink(live) if live.is_symlink() else None
    _point(live, stamp)
    try:
        proxy.apply(app, host, installed(app), force=True)
    except BaseException:
        if previous:
            _point(live, previous)
        else:
            live.unlink(missing_ok=True)
        shutil.rmtree(pair, ignore_errors=True)
        raise
    for old in base.iterdir():  # keep the live pair and the one before it
        if old.name not in (stamp, previous, "live", "acme") and not old.name.startswith("."):
            shutil.rmtree(old, ignore_errors=True)
    return stamp


def _point(link: Path, target: str) -> None:
    tmp = link.with_name(f".live-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    os.replace(tmp, link)


def certbot_command(app: App, host: HostConfig) -> list[str]:
    s = proxy.settings(host)
    state = tls_dir(app) / "acme"
    command = [
        *s["certbot"],
        "certonly",
        "--non-interactive",
        "--agree-tos",
        "--webroot",
        "-w",
        str(proxy.acme_webroot(app)),
        "--cert-name",
        app.name,
        "--server",
        s["acme_directory"],
        "--config-dir",
        str(state),
        "--work-dir",
        str(state / "work"),
        "--logs-dir",
        str(state / "logs"),
        "--keep-until-expiring",
        "--expand",
    ]
    command += (
        ["--email", s["acme_email"]] if s["acme_email"] else ["--register-unsafely-without-email"]
    )
    for name in host.domains:
        command += ["-d", name]
    return command


ACME_PROBLEM = re.compile(r"urn:ietf:params:acme:error:(\S+) :: (.*)")
# what certbot says around a reason, not the reason (certbot 2.1 on Python 3.11 even masks
# the ACME server's error with josepy's "AttributeError: can't set attribute")
NOT_A_REASON = ("An unexpected error occurred", "can't set attribute", "Ask for help", "See the")


def acme_reason(output: str, log: Path) -> str:
    """Why certbot failed, in one line: the ACME server's problem if it sent one, else the
    error certbot logged (its last run in ``log``), else its last line of output."""
    try:
        text = log.read_text(errors="replace")
        text = text[text.rfind("certbot version:") :]
    except OSError:
        text = ""
    found = [m for m in ACME_PROBLEM.finditer(output + "\n" + text)]
    if found:
        kind, detail = found[-1].groups()
        return f"{detail.strip()} ({kind})"
    candidates = [
        ln.split(":ERROR:certbot._internal.log:", 1)[-1].strip()
        for ln in (output + "\n" + text).splitlines()
        if "Detail:" in ln or ":ERROR:" in ln or "rror" in ln
    ]
    candidates = [c for c in candidates if c and not any(n in c for n in NOT_A_REASON)]
    if candidates:
        return candidates[-1]
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    return lines[-1] if lines else "certbot failed without saying why"


def certify(app: App, host: HostConfig) -> str:
    """Issue or renew by ACME (certbot renews within 30 days of expiry) and install if new."""
    if not host.domains:
        raise ConfigError(f"{app.name} has no domains", "add one: `shipyard domains APP add NAME`")
    proxy.apply(app, host)  # the HTTP site answers the challenges
    env = dict(os.environ)
    bundle = proxy.settings(host)["acme_ca_bundle"]
    if bundle:
        env["REQUESTS_CA_BUNDLE"] = bundle
    (tls_dir(app) / "acme").mkdir(parents=True, mode=0o700, exist_ok=True)
    result = subprocess.run(certbot_command(app, host), capture_output=True, text=True, env=env)
    if result.returncode:
        log = tls_dir(app) / "acme" / "logs" / "letsencrypt.log"
        why = acme_reason(result.stderr + result.stdout, log)
        keeps = (
            "the site keeps its current certificate" if installed(app) else "the site stays HTTP"
        )
        raise ShipyardError(
            f"ACME certificate for {', '.join(host.domains)} failed: {why}",
            f"{keeps}; see {log}",
        )
    live = tls_dir(app) / "acme" / "live" / app.name
    current = installed(app)
    if (
        current
        and Path(current["certificate"]).read_bytes() == (live / "fullchain.pem").read_bytes()
    ):
        return "unchanged"
    install(app, host, live / "fullchain.pem", live / "privkey.pem", "acme")
    return "installed"


def check_mode(app: App, host: HostConfig, files: bool) -> None:
    """Refuse what ``[proxy] tls`` rules out: any certificate when off, ACME when "files"."""
    mode = proxy.settings(host)["tls"]
    if mode == "off":
        raise ConfigError(
            f'{app.name} has tls = "off" in [proxy] of {app.config_file}: it is served over '
            "HTTP only",
            'set tls = "acme" there (or "files", with --certificate and --key) to serve HTTPS',
        )
    if mode == "files" and not files:
        raise ConfigError(
            f'{app.name} has tls = "files" in [proxy] of {app.config_file}: no ACME',
            'give --certificate and --key, or set tls = "acme" there',
        )


def renew(app: App, host: HostConfig, acme: bool = False) -> str:
    """ACME's certificate renewed when due (``acme``: also in place of operator files); the
    outcome in a few words."""
    if source(app) == "files" and not acme:
        return "serves operator-provided files; nothing to renew (`--acme` switches to ACME)"
    outcome = certify(app, host)
    what = "certificate unchanged (not due)" if outcome == "unchanged" else "new certificate live"
    return f"{what} for {', '.join(host.domains)}"


def renew_all(root: Path) -> int:
    """`shipyard tls --all`, what the provisioned schedule runs daily: renew every app's ACME
    certificate that is due. Apps without one (no domains, tls off or files) are skipped; one
    app's failure is reported and the others still renewed."""
    failed = 0
    for config in sorted(root.glob("*/shipyard.toml")):
        app = App.at(config.parent.name, root)
        try:
            host = load_host_config(config)
            if not host.domains or proxy.settings(host)["tls"] != "acme" or source(app) != "acme":
                continue
            print(f"shipyard ▸ {app.name}: {renew(app, host)}", flush=True)
        except ShipyardError as exc:
            failed += 1
            print(f"shipyard: error: {app.name}: {exc}", file=sys.stderr, flush=True)
    return 1 if failed else 0


def command(
    root: Path | None,
    app_name: str | None,
    every: bool = False,
    certificate: Path | None = None,
    key: Path | None = None,
    acme: bool = False,
) -> int:
    """``shipyard tls [APP] [--all] [--certificate F --key F] [--acme]``."""
    if every:
        if app_name or certificate or key or acme:
            raise ConfigError("--all renews every app's certificate: give no app or files")
        return renew_all(Path(root).absolute() if root else default_root())
    if not app_name:
        raise ConfigError("name the app (`shipyard tls APP`), or renew every app with --all")
    app = App.at(app_name, root).require()
    host = load_host_config(app.config_file)
    if bool(certificate) != bool(key):
        raise ConfigError("give both --certificate and --key, or neither (ACME)")
    if acme and certificate:
        raise ConfigError("--acme gets a certificate by ACME: give no --certificate or --key")
    check_mode(app, host, bool(certificate))
    if certificate:
        install(app, host, certificate, key, "files")
        print(f"shipyard ▸ {app.name}: serving {certificate} over HTTPS")
        return 0
    print(f"shipyard ▸ {app.name}: {renew(app, host, acme)}")
    return 0


def lifetime(certificate: Path) -> tuple[float, float]:
    """(notBefore, notAfter) of a PEM certificate, in seconds since the epoch."""
    import ssl

    dates = _openssl("x509", "-in", str(certificate), "-noout", "-startdate", "-enddate").stdout
    found = dict(line.split("=", 1) for line in dates.splitlines() if "=" in line)
    return ssl.cert_time_to_seconds(found["notBefore"]), ssl.cert_time_to_seconds(found["notAfter"])


def renewal_file(user: str, etc: Path = Path("/etc")) -> Path:
    """The cron entry that renews ``user``'s certificates (``shipyard doctor`` looks for it)."""
    return etc / "cron.d" / f"shipyard-tls-{user}"


def renewal_check(
    app: App, host: HostConfig | None, etc: Path = Path("/etc")
) -> tuple[str, str, str]:
    """`shipyard doctor`'s view of the certificate: (status, detail, fix).

    An ACME certificate needs the renewal provision schedules (``/etc/cron.d/shipyard-tls-USER``
    running ``tls --all`` for this deploy root), and must not be closer to its end than a
    renewal would have let it get (a third of its lifetime, at most 20 days): then renewal
    is failing.
    """
    import pwd

    if host is None or not host.domains:
        return "skip", "no domains: not behind the proxy", ""
    mode = proxy.settings(host)["tls"]
    pair = installed(app)
    if mode == "off":
        return "skip", 'tls = "off": served over HTTP only', ""
    if pair is None:
        return "warn", "no certificate yet: served over HTTP", f"`shipyard tls {app.name}`"
    start, end = lifetime(Path(pair["certificate"]))
    left = end - time.time()
    days = f"{left / 86400:.1f} days" if left > 86400 else f"{left / 3600:.1f} hours"
    if left <= 0:
        return "fail", "the certificate has expired", f"`shipyard tls {app.name}` says why"
    if source(app) != "acme":
        if left < 14 * 86400:
            return (
                "warn",
                f"operator-provided certificate expires in {days}",
                (f"install a new one: `shipyard tls {app.name} --certificate … --key …`"),
            )
        return "ok", f"operator-provided certificate, {days} left (not renewed by shipyard)", ""
    user = pwd.getpwuid(os.geteuid()).pw_name  # doctor run by root checks as the app's owner
    schedule = renewal_file(user, etc)
    try:
        entry = schedule.read_text()
    except OSError:
        entry = ""
    if "tls --all" not in entry or f"--root {app.root} " not in entry:
        return (
            "fail",
            f"ACME certificate ({days} left) but no renewal scheduled in {schedule}",
            (f"as root: `shipyard provision --user {user} --proxy` writes it"),
        )
    if left < min(20 * 86400, (end - start) / 3):
        return (
            "fail",
            f"ACME certificate expires in {days}: renewal is failing",
            (f"`shipyard tls {app.name}` says why"),
        )
    return "ok", f"ACME certificate, {days} left; renewed by {schedule}", ""
