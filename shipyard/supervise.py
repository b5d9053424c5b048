"""The app's processes under supervisord: restart onto the new release, verify, switch back.

Everything goes through supervisord's XML-RPC interface on its unix socket
(``supervisor.xmlrpc.SupervisorTransport``), never through ``supervisorctl``.

restart
    The web process is handed over blue/green: the new release starts as the
    *other* colour, taking connections from the same listening socket (held
    by the port's ``listen`` program, see shipyard/listen.py), is probed on
    its private unix socket until the health check passes, and only then is
    the old colour sent TERM (gunicorn drains in-flight requests; what is still
    queued goes to the new one; KILL after ``stop_grace``). Other types are
    stopped (TERM, KILL after ``stop_grace``) and started on the new release.
    If anything fails, the processes are put back as they were before the
    phase reports the failure.
verify
    Every process must be RUNNING with the pid restart saw, in the new release
    (``/proc/<pid>/cwd``) with the release's virtualenv (the interpreter it was
    started as, resolved through ``.venv``), and the public port must answer
    the health check.
restart_previous
    The undo: the same handover, back to the previous release.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import xmlrpc.client
from dataclasses import dataclass, replace
from pathlib import Path

from supervisor.states import STOPPED_STATES, ProcessStates
from supervisor.xmlrpc import Faults, SupervisorTransport, UnixStreamHTTPConnection

from . import programs as prov
from .app import App
from .command import run_in_release
from .config import HEALTH_SCHEMA, HostConfig, load_app_config, load_host_config
from .context import Deploy
from .counts import counts_for  # the host's counts (`shipyard scale`) win
from .errors import AppError, PhaseError, ShipyardError
from .programs import Listener, Program
from .report import Skip
from .stamp import unstamp

STARTING, RUNNING = ProcessStates.STARTING, ProcessStates.RUNNING
DOWN = STOPPED_STATES  # STOPPED, EXITED, FATAL, UNKNOWN
CRASHED = (ProcessStates.BACKOFF, ProcessStates.EXITED, ProcessStates.FATAL)
RPC_TIMEOUT = 30.0
START_TIMEOUT = 30.0  # a non-web process must reach RUNNING (startsecs=1) within this
LOG_TAIL = 20
# the launcher as programs.conf names it; the second, written before it moved, runs the shim
LAUNCHERS = (prov.LAUNCHER.encode(), b"shipyard.provision.launch")
SAME_ANSWERS = 3  # the same unwanted final answer this many times in a row fails at once


# --- talking to supervisord ---------------------------------------------------


class _UnixConnection(UnixStreamHTTPConnection):
    def connect(self) -> None:  # pragma: no cover - exercised by every e2e test
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socketfile)


class _Transport(SupervisorTransport):
    """supervisor's own transport, with a timeout so a wedged supervisord cannot hang a deploy."""

    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__(None, None, f"unix://{path}")

        def connect() -> _UnixConnection:
            conn = _UnixConnection("localhost", timeout=timeout)
            conn.socketfile = str(path)
            return conn

        self._get_connection = connect


class Supervisor:
    """One app's view of its supervisord: programs.conf, the state file and the RPC calls."""

    def __init__(self, app: App, host: HostConfig, timeout: float = RPC_TIMEOUT) -> None:
        self.app = app
        self.host = host
        self.settings = prov.settings(app, host)
        self.listeners: list[Listener] = []
        self.transport = _Transport(self.settings.socket, timeout)
        self.proxy = xmlrpc.client.ServerProxy("http://localhost", transport=self.transport)

    # RPC

    def call(self, method: str, *args: object) -> object:
        try:
            return getattr(self.proxy.supervisor, method)(*args)
        except xmlrpc.client.Fault:
            raise
        except (OSError, http.client.HTTPException, xmlrpc.client.ProtocolError) as exc:
            raise self.unreachable(exc) from None
        finally:
            self.transport.close()

    def unreachable(self, exc: BaseException) -> PhaseError:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        reason = reason or type(exc).__name__
        if self.settings.embedded:
            hint = f"see {prov.supervisord_log(self.app)}; `shipyard processes {self.app.name}`"
        else:
            hint = (
                "is the system supervisord running, with its [unix_http_server] socket at that "
                "path and writable by this user? (see [supervisor] in the host's shipyard.toml)"
            )
        return PhaseError(f"supervisord not reachable at {self.settings.socket}: {reason}", hint)

    def reachable(self) -> bool:
        try:
            self.call("getState")
        except PhaseError:
            return False
        return True

    def ensure(self) -> str:
        """Make sure supervisord answers; start the embedded one if it is not running yet."""
        # supervisord binds "<socket>.<pid>" first, then links it into place
        prov.check_socket_path(self.settings.socket, "supervisord socket", reserve=8)
        prov.check_socket_path(prov.listen_socket(self.app, 65535), "web socket")
        if self.reachable():
            return "running"
        if not self.settings.embedded:
            self.call("getState")  # raises the unreachable error with its reason
        orphans = stop_orphans(self.app)
        self.start_embedded()
        if orphans:
            return f"started (the previous one had died; stopped {orphans} process(es) it left)"
        return "started"

    def start_embedded(self) -> None:
        app = self.app
        app.run.mkdir(parents=True, exist_ok=True)
        prov.logs_dir(app).mkdir(parents=True, exist_ok=True)
        prov.write_programs(app, self.settings, self.load_state(), self.listeners)
        prov.write_main(app, self.settings)
        # The deploy's own variables (GIT_*, SHIPYARD_PUSHER, …) are no business of the app's.
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("GIT_", "VIRTUAL_ENV", "SHIPYARD_"))
        }
        out = app.run / "supervisord.out"
        with open(out, "ab") as log:
            result = subprocess.run(
                [sys.executable, "-m", "supervisor.supervisord", "-c", str(prov.main_conf(app))],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=app.dir,
                env=env,
                start_new_session=True,
                timeout=60,
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.reachable():
                return
            if result.returncode:
                break
            time.sleep(0.05)
        raise PhaseError(
            f"could not start supervisord for {app.name} (exit {result.returncode})",
            f"see {out} and {prov.supervisord_log(app)}",
            output=tail(out, 0),
        )

    def infos(self) -> dict[str, dict]:
        """Every process supervisord knows, by ``group:name``."""
        return {f"{i['group']}:{i['name']}": i for i in self.call("getAllProcessInfo")}

    # programs.conf and the state file

    def load_state(self) -> list[Program]:
        """The programs that should run (``run/processes.json``); also loads ``listeners``."""
        try:
            data = json.loads(prov.state_file(self.app).read_text())
        except (OSError, ValueError):
            data = {}
        self.listeners = [Listener.from_dict(x) for x in data.get("listeners", [])]
        return [Program.from_dict(p) for p in data.get("programs", [])]

    def save_state(self, programs: list[Program]) -> None:
        state = {
            "programs": [p.to_dict() for p in programs],
            "listeners": [x.to_dict() for x in self.listeners],
        }
        prov.write_atomic(prov.state_file(self.app), json.dumps(state, indent=2) + "\n")

    def apply(self, programs: list[Program], listeners: list[Listener] | None = None) -> None:
        """Record what should run, write programs.conf and have supervisord re-read it."""
        if listeners is not None:
            self.listeners = list(listeners)
        self.save_state(programs)
        prov.write_programs(self.app, self.settings, programs, self.listeners)
        try:
            self.call("reloadConfig")
        except xmlrpc.client.Fault as fault:
            raise PhaseError(
                f"supervisord could not read its config: {fault.faultString}",
                f"check {self.settings.include}",
            ) from None

    # groups

    def start(self, program: Program | Listener) -> dict[int, int]:
        """Add the program's group (it autostarts); returns each log's size before the start."""
        group = program.group(self.app)
        count = getattr(program, "count", 1)
        offsets = {i: _size(program.log(self.app, i)) for i in range(1, count + 1)}
        if isinstance(program, Program):
            for i in offsets:
                path = program.socket(self.app, i)
                if path is not None:
                    path.unlink(missing_ok=True)
        try:
            self.call("addProcessGroup", group)
        except xmlrpc.client.Fault as fault:
            if fault.faultCode == Faults.BAD_NAME:
                raise PhaseError(
                    f"supervisord does not know {group} after re-reading its config",
                    f"does its [include] list {self.settings.include}?",
                ) from None
            if fault.faultCode != Faults.ALREADY_ADDED:
                raise PhaseError(f"supervisord refused {group}: {fault.faultString}") from None
            self.stop(program)
            self.call("addProcessGroup", group)
        return offsets

    def stop(self, *programs: Program | Listener, grace: float | None = None) -> None:
        """TERM every process of the programs (KILL after stop_grace), wait, remove their groups."""
        groups = []
        for program in programs:
            group = program.group(self.app)
            try:
                self.call("stopProcessGroup", group, False)
            except xmlrpc.client.Fault as fault:
                if fault.faultCode == Faults.BAD_NAME:
                    continue
                raise PhaseError(f"could not stop {group}: {fault.faultString}") from None
            groups.append(group)
        longest = max((p.stop_grace for p in programs), default=0)
        deadline = time.monotonic() + (grace if grace is not None else longest) + 15
        while groups:
            infos = self.infos().values()
            if all(i["state"] in DOWN for i in infos if i["group"] in groups):
                break
            if time.monotonic() > deadline:
                raise PhaseError(f"{', '.join(groups)} did not stop", "see `shipyard processes`")
            time.sleep(0.05)
        for group in groups:
            try:
                self.call("removeProcessGroup", group)
            except xmlrpc.client.Fault as fault:
                if fault.faultCode != Faults.BAD_NAME:
                    raise PhaseError(f"could not remove {group}: {fault.faultString}") from None
        for program in programs:  # gunicorn leaves inherited sockets' paths behind
            if isinstance(program, Program):
                for i in range(1, program.count + 1):
                    path = program.socket(self.app, i)
                    if path is not None:
                        path.unlink(missing_ok=True)

    def is_up(self, program: Program | Listener) -> bool:
        infos = self.infos()
        return all(
            infos.get(ns, {}).get("state") in (STARTING, RUNNING)
            for ns in program.namespecs(self.app)
        )


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def tail(path: Path, offset: int, lines: int = LOG_TAIL) -> str:
    """What a process logged since ``offset``, cut to ``lines`` (the Reporter masks it)."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            start = offset if offset <= size else 0
            start = max(start, size - 256 * 1024)
            f.seek(start)
            data = f.read().decode(errors="replace")
    except OSError:
        return ""
    return excerpt(unstamp(data).rstrip().splitlines(), lines)


def excerpt(text: list[str], lines: int = LOG_TAIL) -> str:
    """The last ``lines`` lines; when the first traceback (the cause, usually) scrolled out of
    them, its last frame and exception line first, then the end."""
    if len(text) <= lines:
        return "\n".join(text)
    cause: list[str] = []
    for i, line in enumerate(text):
        if line.startswith("Traceback (most recent call last):"):
            end = i + 1
            while end < len(text) and text[end].startswith((" ", "\t")):
                end += 1
            frames = text[max(i + 1, end - 2) : end]
            cause = [line, *frames, *text[end : end + 1]]
            break
    if not cause or len(text) - text.index(cause[0]) <= lines:
        return "\n".join(text[-lines:])
    return "\n".join([*cause, "…", *text[-(lines - len(cause) - 1) :]])


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


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


@dataclass(frozen=True)
class Answer:
    status: int
    location: str = ""  # a redirect's Location


def probe(
    address: Path | int, path: str, timeout: float = 5.0, headers: dict[str, str] | None = None
) -> Answer:
    """GET ``path`` from a unix socket or 127.0.0.1:port, as the health check sends it."""
    if isinstance(address, Path):
        conn: http.client.HTTPConnection = _UnixHTTPConnection(address, timeout)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", address, timeout=timeout)
    try:
        sent = {"Host": "localhost", "User-Agent": "shipyard-health", **(headers or {})}
        conn.request("GET", path, headers={**sent, "Connection": "close"})
        response = conn.getresponse()
        response.read()
        return Answer(response.status, response.getheader("Location") or "")
    finally:
        conn.close()


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


# --- ports ----------------------------------------------------------------------


def port_owner(port: int) -> str:
    """Who listens on a TCP port (best effort, from /proc): 'gunicorn (pid 123)' or ''."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            listening = len(fields) > 9 and fields[3] == "0A"
            if listening and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return ""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            for fd in fds:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    name = Path(f"/proc/{pid}/comm").read_text().strip()
                    return f"{name} (pid {pid})"
        except OSError:
            continue
    return ""


def check_port_free(app: App, port: int, host: str = "0.0.0.0") -> None:
    """Before the first web process: is the port taken by something that is not ours?"""
    probe = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
    except OSError as exc:
        owner = port_owner(port)
        by = f" by {owner}" if owner else ""
        raise PhaseError(
            f"port {port} is already in use{by}: the web process cannot listen there",
            f"stop that program, or set `port` in {app.config_file} to a free port",
        ) from exc
    finally:
        probe.close()


# --- the handover ---------------------------------------------------------------


class Failed(PhaseError):
    """A process that did not come up; ``output`` holds its last log lines."""


def _crashed(sv: Supervisor, program: Program, info: dict, offsets: dict[int, int]) -> Failed:
    index = int(info["name"].rsplit(".", 1)[1])
    log = program.log(sv.app, index)
    if info.get("exitstatus"):
        how = f"exit status {info['exitstatus']}"
    else:
        how = info.get("spawnerr") or info["statename"]
        how = how.replace(" (process log may have details)", "")
    return Failed(
        f"{info['name']} on releases/{program.release} exited on start ({how})",
        f"its log: {log}",
        output=tail(log, offsets.get(index, 0)),
    )


def probe_address(sv: Supervisor, program: Program, index: int, tcp: bool) -> Path | int | None:
    """Where to probe one instance: its private unix socket, or (no handover) the public port."""
    if tcp:
        return program.port
    path = program.socket(sv.app, index)
    return path if path is not None and path.exists() else None  # None: not started far enough


def wait_healthy(
    sv: Supervisor, program: Program, health: Health, offsets: dict[int, int], tcp: bool
) -> None:
    """Probe each instance (its private socket, or the public port) until it answers ``health``."""
    app = sv.app
    pending = set(range(1, program.count + 1))
    started = time.monotonic()
    deadline = started + health.timeout
    wrong, last = 0, "no answer yet"
    final, same = None, 0  # the last answer and how many times in a row it came
    while pending:
        infos = sv.infos()
        for ns in program.namespecs(app):
            info = infos.get(ns)
            if info is None:
                raise Failed(f"{ns} is not in supervisord any more")
            if info["state"] in CRASHED:
                raise _crashed(sv, program, info, offsets)
        pause = 0.1
        for index in sorted(pending):
            address = probe_address(sv, program, index, tcp)
            if address is None:
                continue
            remaining = max(0.5, deadline - time.monotonic())
            try:
                answer = probe(address, health.path, min(5.0, remaining), health.headers())
            except (ConnectionRefusedError, FileNotFoundError):
                continue  # still booting: not listening yet
            except (OSError, http.client.HTTPException) as exc:
                wrong, last = wrong + 1, f"{type(exc).__name__}: {exc}"
                pause = health.interval
                continue
            if answer.status in health.accepts:
                pending.discard(index)
                continue
            to = f" → {answer.location}" if answer.location else ""
            wrong, last = wrong + 1, f"got {answer.status}{to}"
            pause = health.interval
            same = same + 1 if answer == final else 1
            final = answer
            if final_answer(answer, health) and same >= SAME_ANSWERS:
                log = program.log(app, index)
                raise Failed(
                    f"{program.type}.{index} on releases/{program.release} failed the health "
                    f"check (GET {health.path} with Host: {health.host or 'localhost'}: {last}, "
                    f"wanted {health.wanted}; an answer that waiting will not change)",
                    health_hint(answer, health, "shipyard.toml"),
                    output=tail(log, offsets.get(index, 0)),
                )
        if not pending:
            return
        now = time.monotonic()
        if now >= deadline or wrong > health.retries:
            index = min(pending)
            log = program.log(app, index)
            waited = f"{now - started:.1f}s" if now < deadline else f"{health.timeout:g}s"
            hint = f"its log: {log}"
            if final is not None and final.status == 404 and last == "got 404":  # answered 404
                hint = f"{health_hint(final, health, 'shipyard.toml')}; {hint}"
            raise Failed(
                f"{program.type}.{index} on releases/{program.release} failed the health check "
                f"(GET {health.path}: {last}, wanted {health.wanted}, after {waited})",
                hint,
                output=tail(log, offsets.get(index, 0)),
            )
        time.sleep(pause)


def launched(pid: int) -> bool:
    """Has the launcher exec'd the program yet (RUNNING only means up for startsecs)?"""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # gone (supervisord will say so) or not ours to read
    return not any(launcher in command for launcher in LAUNCHERS)


def wait_running(sv: Supervisor, programs: list[Program], offsets: dict[str, dict[int, int]]):
    """Wait until every process is RUNNING (up for startsecs) as itself; fail fast on a crash."""
    deadline = time.monotonic() + START_TIMEOUT
    waiting = {ns: p for p in programs for ns in p.namespecs(sv.app)}
    while waiting:
        infos = sv.infos()
        for ns, program in list(waiting.items()):
            info = infos.get(ns)
            if info is None:
                raise Failed(f"{ns} is not in supervisord any more")
            if info["state"] == RUNNING and launched(info["pid"]):
                del waiting[ns]
            elif info["state"] in CRASHED:
                raise _crashed(sv, program, info, offsets[program.name])
        if waiting and time.monotonic() > deadline:
            raise Failed(f"{', '.join(waiting)} did not reach RUNNING in {START_TIMEOUT:.0f}s")
        if waiting:
            time.sleep(0.05)


def _health_of(app: App, host: HostConfig, release: str) -> Health:
    try:
        config = load_app_config(app.release_dir(release))
    except ShipyardError:
        return health_for({}, host)
    return health_for(config.health, host)


def converge(
    sv: Supervisor, wanted: dict[str, Program], restart_same: bool | frozenset[str] = True
) -> tuple[list[Program], list[str]]:
    """Bring supervisord from what runs (the state file) to ``wanted``, web without downtime.

    With ``restart_same`` false (switching back), a program already running
    exactly what is wanted is left alone; a set of types restarts only those
    (`shipyard restart --process`). Returns the programs now running and a
    summary per type.
    """
    app, host = sv.app, sv.host

    def again(kind: str) -> bool:
        return restart_same is True or (not isinstance(restart_same, bool) and kind in restart_same)

    running = sv.load_state()
    summary: list[str] = []
    leaving: list[Program] = []  # stopped together with the other types, once the web is over

    # 1. web: blue/green from the port's shared socket, else stop-then-start.
    old_web = [p for p in running if p.type == "web"]
    new_web = wanted.get("web")
    if new_web is None:
        leaving = old_web
        summary.extend(["web stopped"] if old_web else [])
    elif not again("web") and any(p.same_as(new_web) and sv.is_up(p) for p in old_web):
        summary.append(f"web ×{new_web.count} kept")
    else:
        health = _health_of(app, host, new_web.release)
        want = new_web.listener()  # None: not gunicorn, no handover
        # Whatever holds the new port otherwise (an old non-handover web, a socket on another
        # address, web instances whose socket holder died) must go first: a short
        # interruption, only when that setup changes or broke.
        holder_lost = any(x == want and not sv.is_up(x) for x in sv.listeners)
        clash = [
            p
            for p in old_web
            if p.port == new_web.port and (want is None or p.listener() != want or holder_lost)
        ]
        clash_sockets = [
            x for x in sv.listeners if x.port == new_web.port and (x != want or holder_lost)
        ]
        interrupted = bool(clash and any(sv.is_up(p) for p in clash))
        if clash or clash_sockets:
            sv.stop(*clash, *clash_sockets)
            running = [p for p in running if p not in clash]
            sv.apply(running, [x for x in sv.listeners if x not in clash_sockets])
        serving = [p for p in running if p.type == "web" and sv.is_up(p)]
        if want is not None:
            ensure_listener(sv, running, want)
        elif not any(p.port == new_web.port for p in serving):
            check_port_free(app, new_web.port)
        used = {p.color for p in running if p.type == "web"}
        color = next((c for c in prov.COLORS if c not in used), prov.COLORS[0])
        program = replace(new_web, color=color if want else None)
        stale = [p for p in running if p.name == program.name]  # both colours left by a crash
        if stale:
            sv.stop(*stale)
            running = [p for p in running if p not in stale]
        sv.apply([*running, program])
        offsets = sv.start(program)
        try:
            wait_healthy(sv, program, health, offsets, tcp=want is None)
        except ShipyardError:
            sv.stop(program)
            sv.apply(running)
            drop_unused_listeners(sv, running)
            raise
        leaving = [p for p in running if p.type == "web"]
        running.append(program)
        how = f" on {color}" if want else " (restarted: not gunicorn, no handover)"
        if interrupted and want:
            why = "its socket holder had died" if holder_lost else "the port's set-up changed"
            how += f" (stopped first: {why})"
        summary.append(f"web ×{program.count} healthy ({health}){how}")

    # 2. the old web (TERM: it drains) and every other type stop together, gracefully;
    #    then the other types start on the new release.
    others_old = [p for p in running if p.type != "web"]
    others_new = [p for t, p in wanted.items() if t != "web"]
    kept = [
        p
        for p in others_new
        if not again(p.type) and any(p.same_as(o) and sv.is_up(o) for o in others_old)
    ]
    stopping = leaving + [o for o in others_old if not any(o.same_as(k) for k in kept)]
    starting = [p for p in others_new if p not in kept]
    if stopping:
        sv.stop(*stopping)
        running = [p for p in running if p not in stopping]
        sv.apply(running)
    drop_unused_listeners(sv, running)
    if starting:
        sv.apply([*running, *starting])
        offsets = {p.name: sv.start(p) for p in starting}
        running.extend(starting)
        wait_running(sv, starting, offsets)
    for program in others_new:
        verb = "kept" if program in kept else "running"
        summary.append(f"{program.type} ×{program.count} {verb}")
    gone = {o.type for o in others_old} - {p.type for p in others_new}
    summary.extend(f"{t} stopped" for t in sorted(gone))
    return running, summary


def ensure_listener(sv: Supervisor, running: list[Program], want: Listener) -> None:
    """The holder of the web port's socket is up (started, after a port check, if not)."""
    existing = next((x for x in sv.listeners if x == want), None)
    if existing is not None and sv.is_up(existing):
        return
    if existing is not None:
        sv.stop(existing)
    check_port_free(sv.app, want.port, want.host)
    sv.apply(running, [x for x in sv.listeners if x != want] + [want])
    offsets = sv.start(want)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.settimeout(5)
                probe.connect(str(want.socket(sv.app)))
            return
        except OSError:
            pass
        info = sv.infos().get(want.namespecs(sv.app)[0])
        if info is None or info["state"] in CRASHED or time.monotonic() > deadline:
            log = want.log(sv.app)
            sv.stop(want)
            sv.apply(running, [x for x in sv.listeners if x != want])
            raise Failed(
                f"could not listen on {want.host}:{want.port}",
                f"its log: {log}",
                output=tail(log, offsets.get(1, 0)),
            )
        time.sleep(0.05)


def drop_unused_listeners(sv: Supervisor, running: list[Program]) -> None:
    """Stop the socket holders no web program of ``running`` takes its socket from."""
    used = {p.listener() for p in running if p.type == "web"}
    unused = [x for x in sv.listeners if x not in used]
    if unused:
        sv.stop(*unused)
        sv.apply(running, [x for x in sv.listeners if x in used])


# --- the phases -----------------------------------------------------------------


def wanted_programs(d: Deploy) -> dict[str, Program]:
    prov.check_counts(d.procfile, d.config.processes, "shipyard.toml")
    counts = counts_for(d.app, d.procfile, d.config.processes)
    if d.host.web == 0:  # a worker host runs no web, whatever the counts say
        counts["web"] = 0
    return prov.plan(
        d.procfile, counts, d.release_id, d.host.port, d.config.stop_grace, d.config.signals
    )


def _previous_programs(d: Deploy) -> dict[str, Program]:
    return {p.type: replace(p, color=None) for p in d.processes.before or []}


def _pids(sv: Supervisor, programs: list[Program]) -> dict[str, int]:
    infos = sv.infos()
    return {ns: infos[ns]["pid"] for p in programs for ns in p.namespecs(sv.app) if ns in infos}


def restart(d: Deploy) -> str:
    """Hand the processes over to the new release; on failure put back what ran before."""
    wanted = wanted_programs(d)
    sv = Supervisor(d.app, d.host)
    before = sv.load_state()
    if not wanted and not before:
        return Skip("no Procfile processes")
    if "no-restart" in d.options:
        return Skip("-o no-restart: processes left as they were")
    how = sv.ensure()
    if d.processes.before is None:  # a recovery presets the previous release's
        d.processes.before = before
    if d.manifest is not None:  # the undo's half of the journal: see deploy.load_undo
        undo = d.manifest.undo or {}
        d.manifest.undo = {**undo, "processes": [p.to_dict() for p in d.processes.before]}
        d.manifest.save(d.release)
    try:
        running, summary = converge(sv, wanted)
    except ShipyardError as exc:
        try:
            converge(sv, _previous_programs(d), restart_same=False)
        except ShipyardError as again:
            exc.hint = f"{exc.hint}; and putting the previous processes back failed: {again}"
        else:
            what = "the previous release kept serving" if before else "nothing was running"
            exc.hint = f"{what}; {exc.hint}" if exc.hint else what
        raise
    d.processes.running = running
    d.processes.pids = _pids(sv, running)
    if how.startswith("started ("):
        summary.insert(0, f"supervisord {how}")
    return ", ".join(summary) if summary else "no processes"


def load_undo(d: Deploy, undo: dict) -> None:
    """The processes restart handed over, as its manifest note says (another process's undo)."""
    if "processes" in undo:
        d.processes.before = [Program.from_dict(p) for p in undo["processes"]]
        d.processes.running = Supervisor(d.app, d.host).load_state()  # what runs now


def restart_previous(d: Deploy) -> None:
    """Undo of restart: hand the processes back to the release that ran before."""
    if d.processes.running is None:
        return
    started = time.monotonic()
    sv = Supervisor(d.app, d.host)
    previous = _previous_programs(d)
    _, summary = converge(sv, previous, restart_same=False)
    d.processes.running = None
    release = next(iter(previous.values())).release if previous else None
    where = f"releases/{release}" if release else "nothing (no processes ran before)"
    done = ", ".join(summary) or "nothing to do"
    d.out.line(f"  ↩ processes back on {where}: {done} in {time.monotonic() - started:.2f}s")


def verify(d: Deploy) -> str:
    """The processes run the new release with its venv, and the public port answers."""
    running: list[Program] = d.processes.running or []
    if not running:
        if "no-restart" in d.options and d.procfile:
            return Skip("-o no-restart: processes not checked")
        return Skip("no processes to check")
    sv = Supervisor(d.app, d.host)
    infos = sv.infos()
    release = d.release
    venv = (release / ".venv").resolve()
    checked = 0
    for program in running:
        for ns in program.namespecs(d.app):
            index = int(ns.rsplit(".", 1)[1])
            info = infos.get(ns)
            log = program.log(d.app, index)
            if info is None or info["state"] not in (STARTING, RUNNING):
                state = info["statename"] if info else "missing"
                raise Failed(f"{ns} is {state}, not RUNNING", output=tail(log, 0))
            expected = d.processes.pids.get(ns)
            if expected and info["pid"] != expected:
                raise Failed(
                    f"{ns} restarted since the handover (pid {expected} → {info['pid']})",
                    f"it probably crashed; its log: {log}",
                    output=tail(log, 0),
                )
            problem = check_process(info["pid"], release, venv, program.compound)
            if problem:
                raise Failed(f"{program.type}.{index} (pid {info['pid']}) {problem}")
            checked += 1
    detail = f"{checked} process(es) in releases/{d.release_id} with .venv → {venv.name[:6]}"
    web = next((p for p in running if p.type == "web"), None)
    if web is not None:
        health = _health_of(d.app, d.host, web.release)
        status = public_status(web.port, health)
        if status not in health.accepts:
            raise Failed(f"port {web.port} answers GET {health.path} with {status}")
        detail += f"; :{web.port} GET {health.path} {status}"
    return detail


def public_status(port: int, health: Health, attempts: int = 3) -> int | str:
    last: int | str = "no answer"
    for attempt in range(attempts):
        try:
            last = probe(port, health.path, min(5.0, health.timeout), health.headers()).status
        except (OSError, http.client.HTTPException) as exc:
            last = f"{type(exc).__name__}: {exc}"
        if last in health.accepts:
            return last
        if attempt + 1 < attempts:
            time.sleep(health.interval)
    return last


def check_process(pid: int, release: Path, venv: Path, compound: bool) -> str:
    """'' when pid runs in ``release`` with its venv's interpreter; else what is wrong."""
    proc = Path("/proc") / str(pid)
    try:
        cwd = os.readlink(proc / "cwd")
    except OSError as exc:
        return f"cannot be inspected: {exc.strerror}"
    real = os.path.realpath(release)
    if cwd != real and not cwd.startswith(real + os.sep):  # below it: `gunicorn --chdir backend`
        return f"runs in {cwd}, not in {release}"
    if compound:
        return ""  # a shell running a pipeline: the shell is not the app's interpreter
    try:
        argv = (proc / "cmdline").read_bytes().split(b"\0")
        exe = os.path.realpath(proc / "exe")
        environ = (proc / "environ").read_bytes().split(b"\0")
    except OSError as exc:
        return f"cannot be inspected: {exc.strerror}"
    if not Path(exe).name.startswith(("python", "pypy")):
        return ""  # not a Python program: no interpreter to check
    program = os.fsdecode(argv[0]) if argv and argv[0] else ""
    if "/" not in program:
        path = next(
            (os.fsdecode(e[5:]) for e in environ if e.startswith(b"PATH=")), os.defpath
        ).split(":")
        found = [Path(p) / program for p in path if p and (Path(p) / program).is_file()]
        program = str(found[0]) if found else program
    elif not os.path.isabs(program):
        program = os.path.join(cwd, program)
    bindir = os.path.realpath(os.path.dirname(program)) if "/" in program else ""
    if bindir == str(venv / "bin") or exe.startswith(f"{venv}/"):
        return ""
    return f"runs {program or '?'} ({exe}), not the release's virtualenv {venv}"


def release_command(d: Deploy) -> str:
    """The Procfile's ``release:`` command: once per deploy, in the new release, before switch."""
    command = d.procfile.get(prov.RELEASE_TYPE)
    if not command:
        return Skip("no release: command in Procfile")
    output = run_in_release(d, command, "release command", timeout=d.config.migrate_timeout)
    last = output.strip().splitlines()[-1:] if output.strip() else []
    return f"`{command}` ran" + (f": {last[0]}" if last else "")


def release_command_on_rollback(d: Deploy) -> str:
    """A rollback's release phase: ``release:`` runs only when asked (``--run-release``)."""
    command = d.procfile.get(prov.RELEASE_TYPE)
    if command and "run-release" not in d.options:
        return Skip(f"a rollback runs no `{command}` (shipyard rollback --run-release does)")
    return release_command(d)


# --- `shipyard processes` -------------------------------------------------------


def _host(app: App) -> HostConfig:
    return load_host_config(app.config_file)


def _uptime(seconds: float) -> str:
    seconds = int(max(0, seconds))
    days, rest = divmod(seconds, 86400)
    text = f"{rest // 3600}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}d {text}" if days else text


def status(app: App) -> list[dict]:
    """What runs: one row per process with state, pid, uptime and the release it runs."""
    sv = Supervisor(app, _host(app))
    programs = sv.load_state()
    if not sv.reachable():
        if not programs and sv.settings.embedded:
            return []
        raise AppError(
            f"supervisord for {app.name} is not running (socket {sv.settings.socket})",
            f"start it with `shipyard processes {app.name} --start`"
            if sv.settings.embedded
            else "start the system supervisord",
        )
    infos = sv.infos()
    live = app.live_release()
    rows = []
    for listener in sv.listeners:
        info = infos.get(listener.namespecs(app)[0], {})
        pid = info.get("pid") or 0
        rows.append(
            {
                "process": listener.name,
                "program": listener.group(app),
                "state": info.get("statename", "MISSING"),
                "pid": pid,
                "uptime": info["now"] - info["start"] if pid else 0,
                "release": None,
                "live": None,
                "color": None,
                "port": listener.port,
                "address": f"{listener.host}:{listener.port}",
            }
        )
    for program in programs:
        for ns in program.namespecs(app):
            info = infos.get(ns, {})
            pid = info.get("pid") or 0
            release = program.release
            if pid:
                with contextlib.suppress(OSError):
                    release = release_of(app, os.readlink(f"/proc/{pid}/cwd"))
            rows.append(
                {
                    "process": ns.split(":", 1)[1],
                    "program": program.group(app),
                    "state": info.get("statename", "MISSING"),
                    "pid": pid,
                    "uptime": info["now"] - info["start"] if pid else 0,
                    "release": release,
                    "live": release == live,
                    "color": program.color,
                    "port": program.port,
                }
            )
    return rows


def release_of(app: App, cwd: str) -> str:
    """The release a process whose cwd is ``cwd`` runs: the release dir or a directory in it."""
    base = os.path.realpath(app.releases) + os.sep
    return cwd[len(base) :].split(os.sep, 1)[0] if cwd.startswith(base) else Path(cwd).name


def serving(app: App) -> list[str] | None:
    """The releases the app's processes run in (their /proc/<pid>/cwd); None if unknown."""
    try:
        rows = status(app)
    except (ShipyardError, OSError, xmlrpc.client.Error):
        return None
    return sorted({r["release"] for r in rows if r["release"] is not None and r["pid"]})


def format_status(app: App, rows: list[dict]) -> list[str]:
    sv = Supervisor(app, _host(app))
    kind = "embedded" if sv.settings.embedded else "system"
    if not rows:
        return [f"{app.name}: no processes (nothing with a Procfile deployed yet)"]
    lines = [
        f"{app.name}: supervisord ({kind}) at {sv.settings.socket}",
        f"  {'PROCESS':<12} {'STATE':<9} {'PID':>7}  {'UPTIME':>9}  RELEASE",
    ]
    for row in rows:
        if row["release"] is None:  # the web port's socket holder
            lines.append(
                f"  {row['process']:<12} {row['state']:<9} {row['pid'] or '-':>7}  "
                f"{_uptime(row['uptime']) if row['pid'] else '-':>9}  "
                f"(holds {row['address']} for the web processes)"
            )
            continue
        extra = []
        if row["color"]:
            extra.append(row["color"])
        if row["port"]:
            extra.append(f":{row['port']}")
        extra.append("live" if row["live"] else "NOT LIVE")
        lines.append(
            f"  {row['process']:<12} {row['state']:<9} {row['pid'] or '-':>7}  "
            f"{_uptime(row['uptime']) if row['pid'] else '-':>9}  {row['release']}"
            f"  ({', '.join(extra)})"
        )
    return lines


def start(app: App) -> str:
    sv = Supervisor(app, _host(app))
    return sv.ensure()


def shutdown(app: App, timeout: float = 60) -> bool:
    """Stop the app's processes and, when embedded, its supervisord. True if one was running."""
    host = _host(app) if app.config_file.is_file() else HostConfig()
    sv = Supervisor(app, host)
    if not sv.reachable():
        return False
    if not sv.settings.embedded:
        programs = sv.load_state()
        sv.stop(*programs, *sv.listeners)
        return True
    pid = _read_pid(prov.pid_file(app))
    sv.call("shutdown")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not (pid and _alive(pid)) and not sv.reachable():
            return True
        time.sleep(0.05)
    raise AppError(f"supervisord for {app.name} (pid {pid}) did not stop in {timeout:.0f}s")


def _session(pid: str | int) -> int | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else int(fields[3])


def orphans(app: App) -> list[int]:
    """Processes an embedded supervisord that died (SIGKILL, OOM) left running.

    supervisord leads its own session and its programs stay in it: with the leader
    (run/supervisord.pid) dead, what is left of that session in the app's directory
    is its orphans — the web port's socket holder and the app's processes, still
    holding the port, and invisible to a new supervisord.
    """
    pid = _read_pid(prov.pid_file(app))
    if pid is None or _alive(pid):
        return []
    base = os.path.realpath(app.dir)
    found = []
    for name in filter(str.isdigit, os.listdir("/proc")):
        if int(name) == os.getpid() or _session(name) != pid:
            continue
        try:
            cwd = os.readlink(f"/proc/{name}/cwd")
        except OSError:
            continue
        if cwd == base or cwd.startswith(base + "/"):
            found.append(int(name))
    return found


def stop_orphans(app: App, grace: float = 5.0) -> int:
    """TERM (gunicorn drains), then KILL, what a dead supervisord left; how many there were."""
    found = orphans(app)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in found:
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_alive(p) for p in found):
            time.sleep(0.05)
    return len(found)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
