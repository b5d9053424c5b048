"""shipyard.toml (app side and host side) and Procfile: parsed, typed, validated.

Both files are refused as a whole when anything in them is off, with the file,
the line and what to write instead, because a half-understood config is how
deploys go wrong silently.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

# key -> (type, default); a dict value is a sub-table with its own schema.
HEALTH_SCHEMA: dict[str, tuple[type | tuple[type, ...], Any]] = {
    "path": (str, "/"),
    "status": ((int, list), 200),  # or a list of accepted statuses, e.g. [200, 302]
    "timeout": ((int, float), 30),
    "retries": (int, 60),
    "host": (str, ""),  # the Host header the probe sends (the app's domain); "" = localhost
    "https": (bool, False),  # served over TLS: the probe sends X-Forwarded-Proto: https
}
APP_SCHEMA: dict[str, Any] = {
    "requirements": (str, None),
    "installer": (str, None),
    "python": (str, None),
    "build": (list, []),
    "shared": (list, [".env"]),
    "keep": (int, None),
    "migrate": (str, None),
    "migrate_check": (str, None),
    "post_migrate": (str, None),
    "migrate_timeout": ((int, float), 600),
    "health": HEALTH_SCHEMA,
    "processes": dict,
    "stop_grace": ((int, float), 30),
    "cron": (dict, {}),  # name -> { schedule, run, timeout, host } (shipyard/cron.py)
}
# Host side: which supervisord runs the app's processes (see docs/processes.md).
SUPERVISOR_SCHEMA: dict[str, tuple[type | tuple[type, ...], Any]] = {
    "mode": (str, "embedded"),
    "socket": (str, None),
    "include": (str, None),
    "user": (str, None),
}
SUPERVISOR_MODES = ("embedded", "system")
# Host side: the front door (shipyard/proxy.py, docs/server.md "domains and TLS").
PROXY_SCHEMA: dict[str, tuple[type | tuple[type, ...], Any]] = {
    "sites": (str, "/etc/nginx/shipyard"),
    "reload": (list, ["sudo", "-n", "/usr/local/sbin/shipyard-proxy-reload"]),
    "address": (str, ""),
    "http_port": (int, 80),
    "https_port": (int, 443),
    "static": (str, "static"),
    "static_url": (str, "/static/"),
    "tls": (str, "acme"),
    "acme_directory": (str, "https://acme-v02.api.letsencrypt.org/directory"),
    "acme_email": (str, None),
    "acme_ca_bundle": (str, None),
    "certbot": (list, ["certbot"]),
    "hsts": (bool, False),
    "retry_after": (int, 120),
}
TLS_MODES = ("acme", "files", "off")
LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
HOSTNAME = re.compile(rf"^(?=.{{1,253}}\Z){LABEL}(\.{LABEL})+\Z")
# Host side: deploy webhooks (shipyard/notify.py, docs/notify.md).
NOTIFY_SCHEMA: dict[str, tuple[type | tuple[type, ...], Any]] = {
    "webhook": (list, []),
    "timeout": ((int, float), 5),
    "retries": (int, 3),
}
NOTIFY_EVENTS = ("started", "live", "failed", "rolled-back", "config-changed")
HOST_SCHEMA: dict[str, Any] = {
    "branch": (str, "main"),
    "keep": (int, 5),
    "installer": (str, "uv"),
    "port": (int, 8000),
    "peers": (list, []),
    "secret": (str, None),
    "heartbeat": ((int, float), 10),
    "allow_root": (bool, False),
    "push_wait": (bool, True),  # false: every push as `-o no-wait` (docs/pinning.md)
    "web": (int, None),  # 0: this host runs the app without a web process, on purpose
    # --- many hosts (shipyard/peers.py, docs/hosts.md) ---
    "secret_file": (str, None),
    "name": (str, None),
    "drained": (list, []),
    "rolling": (int, 0),
    "peer_timeout": ((int, float), 15),
    "peer_tls": (dict, {}),  # peer address → pinned certificate (receiver/tls.py)
    # ---
    "health": HEALTH_SCHEMA,
    "supervisor": SUPERVISOR_SCHEMA,
    "domains": (list, []),
    "proxy": PROXY_SCHEMA,
    "notify": NOTIFY_SCHEMA,
}
INSTALLERS = ("uv", "pip")


@dataclass(frozen=True)
class BuildStep:
    """A build command; with ``inputs`` and ``outputs`` its outputs are reused while inputs hold."""

    run: str
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()

    @property
    def cacheable(self) -> bool:
        return bool(self.inputs and self.outputs)


@dataclass(frozen=True)
class CronJob:
    """A scheduled command of the app (``[cron]``), run by the host's cron daemon."""

    name: str
    schedule: str
    run: str
    timeout: float = 3600
    host: str | None = None  # with peers: the host (its `name`) that runs it; else the primary


@dataclass(frozen=True)
class Webhook:
    """Where deploy notifications go (``[[notify.webhook]]``) and which events it wants."""

    url: str
    events: tuple[str, ...] = ("live", "failed", "rolled-back")
    secret: str | None = None


@dataclass
class AppConfig:
    """What the app's repo asks for; every field has a default found by detection."""

    requirements: str | None = None
    installer: str | None = None
    python: str | None = None
    build: list[BuildStep] = field(default_factory=list)
    shared: list[str] = field(default_factory=lambda: [".env"])
    keep: int | None = None
    migrate: str | None = None
    migrate_check: str | None = None
    post_migrate: str | None = None
    migrate_timeout: float = 600
    health: dict[str, Any] = field(default_factory=dict)
    processes: dict[str, int] = field(default_factory=dict)
    stop_grace: float = 30
    signals: dict[str, str] = field(default_factory=dict)  # [processes.TYPE] stop_signal
    cron: dict[str, CronJob] = field(default_factory=dict)


@dataclass
class HostConfig:
    """How this host runs the app: <root>/<app>/shipyard.toml, written by `shipyard init`."""

    branch: str = "main"
    keep: int = 5
    installer: str = "uv"
    port: int = 8000
    peers: list[str] = field(default_factory=list)
    secret: str | None = None
    heartbeat: float = 10
    allow_root: bool = False  # deploy even as root (tests, throwaway containers)
    push_wait: bool = True  # the push waits for the deploy's outcome (false: as -o no-wait)
    web: int | None = None  # 0: no web process here (a worker host); a web-less Procfile is fine
    # --- many hosts (shipyard/peers.py, docs/hosts.md) ---
    secret_file: str | None = None
    name: str | None = None
    drained: list[str] = field(default_factory=list)
    rolling: int = 0
    peer_timeout: float = 15
    peer_tls: dict[str, str] = field(default_factory=dict)
    # ---
    health: dict[str, Any] = field(default_factory=dict)
    supervisor: dict[str, Any] = field(default_factory=dict)
    domains: list[str] = field(default_factory=list)  # served by the proxy (shipyard/proxy.py)
    proxy: dict[str, Any] = field(default_factory=dict)
    notify: dict[str, Any] = field(default_factory=dict)  # webhooks: list[Webhook]


def _line_of(text: str, key: str, table: str | None) -> int:
    """Best-effort line number of ``key`` (inside ``[table]`` when given), for error messages."""
    lines = text.splitlines()
    start = 0
    if table:
        for i, line in enumerate(lines):
            if re.match(rf"^\s*\[\s*{re.escape(table)}\s*\]", line):
                start = i + 1
                break
    pattern = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=|^\s*\[\s*{re.escape(key)}\s*\]")
    for i in range(start, len(lines)):
        if pattern.match(lines[i]):
            return i + 1
    return 1


STOP_SIGNALS = ("TERM", "INT", "QUIT", "HUP", "KILL", "USR1", "USR2")  # supervisord's


def _process_entry(value: object) -> bool:
    """A count, or a table with ``count`` and/or ``stop_signal``."""
    if isinstance(value, dict):
        count = value.get("count", 1)
        signal = value.get("stop_signal", "TERM")
        return (
            not set(value) - {"count", "stop_signal"}
            and isinstance(count, int)
            and not isinstance(count, bool)
            and count >= 0
            and isinstance(signal, str)
            and signal.upper().removeprefix("SIG") in STOP_SIGNALS
        )
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _type_name(expected: type | tuple[type, ...]) -> str:
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        list: "a list",
        dict: "a table",
        bool: "true or false",
    }
    if isinstance(expected, tuple):
        return " or ".join(names[t] for t in expected)
    return names[expected]


class _At:
    """``source:line`` of a key, for an error message: looked for only when one is written
    (each key's own regular expression cost every parse of a valid file ~0.5 ms)."""

    def __init__(self, source: str, text: str, key: str, table: str | None) -> None:
        self.source, self.text, self.key, self.table = source, text, key, table

    def __str__(self) -> str:
        return f"{self.source}:{_line_of(self.text, self.key, self.table)}"


def _validate(data: dict, schema: dict, text: str, source: str, table: str | None = None) -> dict:
    out: dict[str, Any] = {}
    for key, value in data.items():
        where = _At(source, text, key, table)
        dotted = f"{table}.{key}" if table else key
        if key not in schema:
            known = ", ".join(sorted(schema))
            raise ConfigError(f"{where}: unknown key {dotted!r}", f"known keys here: {known}")
        spec = schema[key]
        if spec is dict:
            if not isinstance(value, dict) or not all(_process_entry(v) for v in value.values()):
                raise ConfigError(
                    f"{where}: [{dotted}] must map process names to counts",
                    "write e.g. `web = 2` under it, or [processes.web] with count = 2 and "
                    'stop_signal = "QUIT"',
                )
            out[key] = value
        elif isinstance(spec, dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: {dotted!r} must be a table", f"write it as [{dotted}]")
            out[key] = _validate(value, spec, text, source, dotted)
        else:
            expected = spec[0]
            if (isinstance(value, bool) and expected is not bool) or not isinstance(
                value, expected
            ):
                raise ConfigError(
                    f"{where}: {dotted!r} must be {_type_name(expected)}, "
                    f"not {type(value).__name__}",
                    f"see `{dotted}` in docs/configuration.md",
                )
            if key == "build" and not table:
                out[key] = [_build_step(v, where) for v in value]
                continue
            if key == "cron" and not table:
                out[key] = _cron_jobs(value, text, source)
                continue
            if key == "webhook" and table == "notify":
                urls = [n + 1 for n, ln in enumerate(text.splitlines()) if URL_LINE.match(ln)]
                out[key] = [
                    _webhook(v, f"{source}:{urls[n] if n < len(urls) else 1}")
                    for n, v in enumerate(value)
                ]
                continue
            if expected is list and not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{where}: {dotted!r} must be a list of strings")
            out[key] = value
    return out


def _load(text: str, source: str, schema: dict) -> dict:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"at line (\d+)", str(exc))
        line = match.group(1) if match else "1"
        reason = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc))
        raise ConfigError(
            f"{source}:{line}: not valid TOML: {reason}",
            "fix the syntax (see https://toml.io)",
        ) from None
    return _validate(data, schema, text, source)


def _build_step(value: object, where: str | _At) -> BuildStep:
    hint = 'write a command, or { run = "...", inputs = ["glob"], outputs = ["dir"] }'
    if isinstance(value, str):
        return BuildStep(value)
    if not isinstance(value, dict) or not isinstance(value.get("run"), str):
        raise ConfigError(f"{where}: each build step must be a command or a table with `run`", hint)
    unknown = set(value) - {"run", "inputs", "outputs"}
    if unknown:
        raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r} in a build step", hint)
    lists = {}
    for key in ("inputs", "outputs"):
        items = value.get(key, [])
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise ConfigError(f"{where}: build step {key!r} must be a list of strings", hint)
        for item in items:
            _check_relative(item, where)
        lists[key] = tuple(items)
    if bool(lists["inputs"]) != bool(lists["outputs"]):
        raise ConfigError(
            f"{where}: a build step needs both `inputs` and `outputs`, or neither", hint
        )
    return BuildStep(value["run"], lists["inputs"], lists["outputs"])


def _check_health(data: dict, text: str, source: str) -> None:
    status = data.get("health", {}).get("status", 200)
    statuses = status if isinstance(status, list) else [status]
    if not statuses or not all(
        isinstance(s, int) and not isinstance(s, bool) and 100 <= s <= 599 for s in statuses
    ):
        raise ConfigError(
            f"{source}:{_line_of(text, 'status', 'health')}: health.status must be an HTTP "
            "status or a list of them",
            "e.g. status = 200, or status = [200, 302]",
        )
    host = data.get("health", {}).get("host", "")
    if host and not re.fullmatch(r"[A-Za-z0-9.-]+(:\d{1,5})?|\[[0-9A-Fa-f:.]+\](:\d{1,5})?", host):
        raise ConfigError(
            f"{source}:{_line_of(text, 'host', 'health')}: health.host {host!r} is not a host name",
            'write the domain the app serves, e.g. host = "www.example.com"',
        )


def parse_app_config(text: str, source: str = "shipyard.toml") -> AppConfig:
    data = _load(text, source, APP_SCHEMA)
    _check_health(data, text, source)
    installer = data.get("installer")
    if installer is not None and installer not in INSTALLERS:
        raise ConfigError(
            f"{source}:{_line_of(text, 'installer', None)}: installer must be 'uv' or 'pip'"
        )
    if data.get("keep") is not None and data["keep"] < 1:
        raise ConfigError(f"{source}:{_line_of(text, 'keep', None)}: keep must be at least 1")
    if data.get("migrate_timeout", 1) <= 0:
        raise ConfigError(
            f"{source}:{_line_of(text, 'migrate_timeout', None)}: migrate_timeout must be "
            "a number of seconds above 0",
            "e.g. migrate_timeout = 600",
        )
    if data.get("stop_grace", 30) < 0:
        raise ConfigError(f"{source}:{_line_of(text, 'stop_grace', None)}: stop_grace must be >= 0")
    for path in data.get("shared", []):
        _check_relative(path, _At(source, text, "shared", None))
    if data.get("requirements"):
        _check_relative(data["requirements"], _At(source, text, "requirements", None))
    processes, signals = {}, {}
    for name, value in data.get("processes", {}).items():
        if isinstance(value, dict):
            if "count" in value:
                processes[name] = value["count"]
            if "stop_signal" in value:
                signals[name] = value["stop_signal"].upper().removeprefix("SIG")
        else:
            processes[name] = value
    data["processes"], data["signals"] = processes, signals
    return AppConfig(**data)


def parse_host_config(text: str, source: str) -> HostConfig:
    data = _load(text, source, HOST_SCHEMA)
    _check_health(data, text, source)
    if data.get("installer", "uv") not in INSTALLERS:
        raise ConfigError(f"{source}: installer must be 'uv' or 'pip'")
    if data.get("keep", 5) < 1:
        raise ConfigError(f"{source}:{_line_of(text, 'keep', None)}: keep must be at least 1")
    if not 0 < data.get("port", 8000) < 65536:
        raise ConfigError(f"{source}:{_line_of(text, 'port', None)}: port must be 1-65535")
    if data.get("web", 0) != 0:
        raise ConfigError(
            f"{source}:{_line_of(text, 'web', None)}: web = {data['web']}: the only value is 0 "
            "(run the app here without a web process)",
            "set the number of web processes under [processes] in the app's shipyard.toml",
        )
    mode = data.get("supervisor", {}).get("mode", "embedded")
    if mode not in SUPERVISOR_MODES:
        raise ConfigError(
            f"{source}:{_line_of(text, 'mode', 'supervisor')}: "
            f"supervisor.mode must be 'embedded' or 'system', not {mode!r}"
        )
    _check_peers(data, text, source)
    _check_front_door(data, text, source)
    return HostConfig(**data)


def check_domain(name: str) -> str:
    """``name`` if it is a hostname the proxy can serve (lowercase, dotted, no IP, no wildcard)."""
    if not HOSTNAME.match(name) or name.rsplit(".", 1)[-1].isdigit():
        raise ConfigError(
            f"{name!r} is not a domain name",
            "write a hostname such as www.example.com (lowercase, no scheme, port or path)",
        )
    return name


def _check_front_door(data: dict, text: str, source: str) -> None:
    where = _At(source, text, "domains", None)
    domains = data.get("domains", [])
    for name in domains:
        try:
            check_domain(name)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc.message}", exc.hint) from None
    if len(set(domains)) != len(domains):
        raise ConfigError(f"{where}: a domain is listed twice")
    proxy = data.get("proxy", {})
    if proxy.get("tls", "acme") not in TLS_MODES:
        raise ConfigError(
            f"{source}:{_line_of(text, 'tls', 'proxy')}: proxy.tls must be 'acme', 'files' "
            f"or 'off', not {proxy['tls']!r}"
        )
    for key in ("http_port", "https_port"):
        if not 0 < proxy.get(key, 80) < 65536:
            raise ConfigError(f"{source}:{_line_of(text, key, 'proxy')}: {key} must be 1-65535")


def load_app_config(release_dir: Path) -> AppConfig:
    path = release_dir / "shipyard.toml"
    if not path.is_file():
        return AppConfig()
    return parse_app_config(path.read_text(errors="replace"))


def load_host_config(path: Path) -> HostConfig:
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text", "rewrite it as UTF-8 TOML") from None
    host = parse_host_config(text, str(path))
    check_secret_access(host, path)
    check_webhook_secret_access(host, path)
    return host


def _check_relative(path: str, where: str | _At) -> None:
    parts = Path(path).parts
    if not path or Path(path).is_absolute() or ".." in parts:
        raise ConfigError(
            f"{where}: {path!r} must be a relative path inside the repository",
            "remove any leading '/' and '..'",
        )


PROCFILE_LINE = re.compile(r"^([A-Za-z0-9_-]+)\s*:\s*(\S.*)$")


def load_procfile(release: Path) -> dict[str, str]:
    """A release's Procfile, parsed ({} when it has none)."""
    path = release / "Procfile"
    return parse_procfile(path.read_text(), "Procfile") if path.is_file() else {}


def parse_procfile(text: str, source: str = "Procfile") -> dict[str, str]:
    """``name: command`` per line, the convention Heroku, Dokku and Piku share."""
    processes: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = PROCFILE_LINE.match(line)
        if not match:
            raise ConfigError(
                f"{source}:{number}: cannot read {line[:60]!r}",
                "each line must be `name: command`, e.g. `web: gunicorn mysite.wsgi`",
            )
        name, command = match.groups()
        if name in processes:
            raise ConfigError(f"{source}:{number}: process {name!r} is defined twice")
        processes[name] = command
    return processes


# --- many hosts: peer addresses and the cluster secret (docs/hosts.md) -------

PIN = re.compile(r"^sha256:[0-9A-Fa-f]{2}(:?[0-9A-Fa-f]{2}){31}$")  # as receiver/tls.py takes
PEER_ADDRESS = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]*):(\d{1,5})$")


def parse_address(address: str) -> tuple[str, int] | None:
    """(host, port) of ``HOST:PORT`` (a name, an IPv4 or an [IPv6] address); None if it is not."""
    match = PEER_ADDRESS.match(address)
    if not match or not 0 < int(match.group(2)) < 65536:
        return None
    return match.group(1).strip("[]"), int(match.group(2))


def _check_peers(data: dict, text: str, source: str) -> None:
    for key in ("peers", "drained"):
        for address in data.get(key, []):
            if parse_address(address) is None:
                raise ConfigError(
                    f"{source}:{_line_of(text, key, None)}: {address!r} is not a peer address",
                    'write HOST:PORT, e.g. "10.0.0.2:7070"',
                )
    if len(set(data.get("peers", []))) != len(data.get("peers", [])):
        raise ConfigError(f"{source}:{_line_of(text, 'peers', None)}: a peer is listed twice")
    if data.get("rolling", 0) < 0:
        raise ConfigError(f"{source}:{_line_of(text, 'rolling', None)}: rolling must be >= 0")
    if data.get("peer_timeout", 15) <= 0:
        raise ConfigError(f"{source}:{_line_of(text, 'peer_timeout', None)}: must be > 0")
    if data.get("secret") is not None and data.get("secret_file") is not None:
        raise ConfigError(f"{source}: set `secret` or `secret_file`, not both")
    for address, pin in data.get("peer_tls", {}).items():
        where = _At(source, text, address, "peer_tls")
        if address not in data.get("peers", []):
            raise ConfigError(
                f"{where}: peer_tls names {address!r}, which is not in `peers`",
                "write the peer's address exactly as `peers` lists it",
            )
        if not isinstance(pin, str) or not (PIN.match(pin) or Path(pin).is_absolute()):
            raise ConfigError(
                f'{where}: peer_tls for {address} must be "sha256:…" or a certificate\'s path',
                "copy the pin `shipyard provision --receiver` printed on that peer",
            )


def secret_path(host: HostConfig, config_file: Path) -> Path | None:
    """The file that holds the cluster secret: ``secret_file``, or the host config itself."""
    if host.secret_file:
        path = Path(host.secret_file)
        return path if path.is_absolute() else config_file.parent / path
    return config_file if host.secret is not None else None


def check_secret_access(host: HostConfig, config_file: Path) -> None:
    """Refuse a cluster secret that anyone but the deploy user can read."""
    path = secret_path(host, config_file)
    if path is None:
        return
    try:
        info = path.stat()
    except OSError as exc:
        raise ConfigError(
            f"{config_file}: secret_file {str(path)!r} cannot be read: {exc.strerror}",
            "create it with the cluster secret (e.g. `openssl rand -hex 32`) and chmod 600 it",
        ) from None
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077 or info.st_uid != os.getuid():
        what = "holds `secret`" if path == config_file else "holds the cluster secret"
        alt = "; or move the secret to a file named by `secret_file`" if path == config_file else ""
        raise ConfigError(
            f"{path} {what} but others can read it (mode {mode:04o}, owner uid {info.st_uid})",
            f"make it the deploy user's alone: chmod 600 {path}{alt}",
        )


def check_webhook_secret_access(host: HostConfig, config_file: Path) -> None:
    """A webhook secret signs what receivers trust: the file that holds it is the user's alone."""
    if not any(w.secret for w in host.notify.get("webhook", [])):
        return
    info = config_file.stat()
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077 or info.st_uid != os.getuid():
        raise ConfigError(
            f"{config_file} holds a webhook secret but others can read it (mode {mode:04o})",
            f"make it the deploy user's alone: chmod 600 {config_file}",
        )


def read_secret(host: HostConfig, config_file: Path) -> bytes | None:
    """The cluster secret's bytes (load_host_config has checked who can read it)."""
    path = secret_path(host, config_file)
    if path is None:
        return None
    value = path.read_text().strip() if host.secret_file else (host.secret or "").strip()
    if len(value) < 16:
        raise ConfigError(
            f"{config_file}: the cluster secret is too short ({len(value)} characters)",
            "use at least 16 random characters, e.g. `openssl rand -hex 32`",
        )
    return value.encode()


# --- scheduled jobs ([cron], app side) and deploy webhooks ([notify], host side) ---

URL_LINE = re.compile(r"^\s*url\s*=")
JOB_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}\Z")
CRON_FIELDS = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 7),
)
CRON_NAMES = {
    3: ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"],
    4: ["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
}


def cron_values(schedule: str) -> list[set[int]] | None:
    """The five fields of a cron schedule as sets of values; None if cron would not read it."""
    macros = {
        "@hourly": "0 * * * *",
        "@daily": "0 0 * * *",
        "@midnight": "0 0 * * *",
        "@weekly": "0 0 * * 0",
        "@monthly": "0 0 1 * *",
        "@yearly": "0 0 1 1 *",
        "@annually": "0 0 1 1 *",
    }
    fields = macros.get(schedule.strip(), schedule).split()
    if len(fields) != 5:
        return None
    out = []
    for index, (text, (_, low, high)) in enumerate(zip(fields, CRON_FIELDS, strict=True)):
        values: set[int] = set()
        for part in text.lower().split(","):
            # as cron reads a field: `*`, N or N-M, a step only after `*` or a range
            match = re.fullmatch(r"(\*|([a-z0-9]+)-([a-z0-9]+)|[a-z0-9]+)(?:/(\d+))?", part)
            if not match or (match.group(4) and not (match.group(2) or part[0] == "*")):
                return None
            step = int(match.group(4) or 1)
            if match.group(1) == "*":
                start, end = low, high
            else:
                start = _cron_number(match.group(2) or match.group(1), index)
                end = _cron_number(match.group(3), index) if match.group(3) else start
            if None in (start, end) or not low <= start <= end <= high or step < 1:
                return None
            values.update(range(start, end + 1, step))
        out.append(values)
    out[4] = {0 if v == 7 else v for v in out[4]}  # 7 is Sunday too
    return out


def _cron_number(text: str, index: int) -> int | None:
    if text.isdigit():
        return int(text)
    names = CRON_NAMES.get(index, [])
    if text in names:
        return names.index(text) + (1 if index == 3 else 0)
    return None


def _cron_jobs(value: dict, text: str, source: str) -> dict[str, CronJob]:
    example = '{ schedule = "*/15 * * * *", run = "python manage.py clearsessions" }'
    jobs = {}
    for name, spec in value.items():
        where = _At(source, text, name, "cron")
        if not JOB_NAME.match(name):
            raise ConfigError(
                f"{where}: cron job name {name!r} is not a name",
                "use lowercase letters, digits, '-' and '_' (at most 40), e.g. clear-sessions",
            )
        if not isinstance(spec, dict) or not isinstance(spec.get("run"), str) or not spec["run"]:
            raise ConfigError(
                f"{where}: cron job {name!r} needs a command", f"write {name} = {example}"
            )
        unknown = set(spec) - {"schedule", "run", "timeout", "host"}
        if unknown:
            raise ConfigError(
                f"{where}: unknown key {sorted(unknown)[0]!r} in cron job {name!r}",
                "known keys: schedule, run, timeout, host",
            )
        schedule = spec.get("schedule")
        if not isinstance(schedule, str) or cron_values(schedule) is None:
            raise ConfigError(
                f"{where}: cron job {name!r}: schedule {schedule!r} is not a cron schedule",
                'write five fields, minute hour day month weekday, e.g. "*/15 * * * *" '
                "(every 15 minutes), or @hourly/@daily/@weekly",
            )
        timeout = spec.get("timeout", 3600)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ConfigError(
                f"{where}: cron job {name!r}: timeout must be a number of seconds above 0",
                "write e.g. timeout = 600",
            )
        host = spec.get("host")
        if host is not None and not isinstance(host, str):
            raise ConfigError(f"{where}: cron job {name!r}: host must be a host's `name`")
        jobs[name] = CronJob(name, " ".join(schedule.split()), spec["run"], timeout, host)
    return jobs


def _webhook(value: object, where: str) -> Webhook:
    hint = 'write [[notify.webhook]] with url = "https://…" and events = ["live", "failed"]'
    if not isinstance(value, dict) or not isinstance(value.get("url"), str):
        raise ConfigError(f"{where}: each [[notify.webhook]] needs a `url`", hint)
    unknown = set(value) - {"url", "events", "secret"}
    if unknown:
        raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r} in a webhook", hint)
    url = value["url"]
    if not re.fullmatch(r"https?://[^/\s?#]+[^\s]*", url):
        raise ConfigError(
            f"{where}: webhook url {url[:60]!r} is not an http(s) URL",
            "write the full address, e.g. https://hooks.slack.com/services/…",
        )
    events = value.get("events", list(Webhook.events))
    if not isinstance(events, list) or not events or not all(isinstance(e, str) for e in events):
        raise ConfigError(f"{where}: webhook events must be a list of event names", hint)
    for event in events:
        if event not in NOTIFY_EVENTS:
            raise ConfigError(
                f"{where}: unknown webhook event {event!r}",
                f"events are: {', '.join(NOTIFY_EVENTS)}",
            )
    secret = value.get("secret")
    if secret is not None and (not isinstance(secret, str) or len(secret) < 16):
        raise ConfigError(
            f"{where}: a webhook secret must be at least 16 characters",
            "e.g. `openssl rand -hex 32`",
        )
    return Webhook(url, tuple(events), secret)
