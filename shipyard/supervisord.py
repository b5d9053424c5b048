"""One app's supervisord, through its XML-RPC interface on the unix socket (a call a
connection, ``rpc``), never through ``supervisorctl``: the programs, the state file, the
calls; starting and stopping it; its logs' tails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from supervisor.states import STOPPED_STATES, ProcessStates

from . import exchange, lock
from . import programs as prov
from .app import App
from .config import HostConfig, load_host_config
from .errors import AppError, Fault, PhaseError
from .orphans import alive, is_supervisord, read_pid, stop_orphans
from .programs import Listener, Program
from .stamp import unstamp

STARTING, RUNNING = ProcessStates.STARTING, ProcessStates.RUNNING
DOWN = STOPPED_STATES  # STOPPED, EXITED, FATAL, UNKNOWN
RPC_TIMEOUT = 30.0
SETTLE_WAIT = 5.0  # seconds a supervisord that does not answer may take to answer or go
LOG_TAIL = 20


# --- talking to supervisord ---------------------------------------------------


def _marshal(value: object) -> str:
    """One argument of a call (supervisord's take strings, booleans and integers)."""
    if isinstance(value, bool):
        return f"<boolean>{int(value)}</boolean>"
    if isinstance(value, int):
        return f"<int>{value}</int>"
    if isinstance(value, str):
        text = value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        return f"<string>{text}</string>"
    raise TypeError(f"no XML-RPC form for {type(value).__name__} here")


def request(method: str, args: tuple) -> bytes:
    """The HTTP/1.0 POST of ``supervisor.<method>(*args)``: supervisord closes after the
    answer, so the answer is everything read until the end."""
    params = "".join(f"<param><value>{_marshal(a)}</value></param>" for a in args)
    body = (
        f"<?xml version='1.0'?><methodCall><methodName>supervisor.{method}</methodName>"
        f"<params>{params}</params></methodCall>"
    ).encode()
    head = f"POST /RPC2 HTTP/1.0\r\nContent-Type: text/xml\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


SCALARS = {
    "int": int, "i4": int, "i8": int, "boolean": lambda t: t.strip() == "1",
    "string": str, "name": str, "double": float, "nil": lambda _t: None,
}  # fmt: skip


def answer(raw: bytes) -> object:
    """The value of supervisord's HTTP answer to ``request``; a fault raises ``Fault``,
    anything else unexpected ``ValueError`` (``call`` says supervisord is not reachable)."""
    from xml.parsers import expat

    head, _, body = raw.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split()
    if len(status) < 2 or status[1] != b"200":
        raise ValueError(f"HTTP answer {b' '.join(status[1:]).decode(errors='replace') or '?'}")
    values: list = []
    marks: list[int] = []  # where each open <value>, <array> or <struct> began in ``values``
    text: list[str] = []
    fault = False

    def start(tag: str, _attrs: dict) -> None:
        text.clear()
        if tag in ("value", "array", "struct"):
            marks.append(len(values))

    def end(tag: str) -> None:
        nonlocal fault
        if tag in SCALARS:
            values.append(SCALARS[tag]("".join(text)))
        elif tag == "value":
            if marks.pop() == len(values):  # a bare <value>text</value> is a string
                values.append("".join(text))
        elif tag in ("array", "struct"):
            at = marks.pop()
            items, values[at:] = values[at:], []
            pairs = zip(items[::2], items[1::2], strict=True)  # a struct: name, value, …
            values.append(items if tag == "array" else dict(pairs))
        elif tag == "fault":
            fault = True
        text.clear()

    parser = expat.ParserCreate("UTF-8")
    parser.StartElementHandler, parser.EndElementHandler = start, end
    parser.CharacterDataHandler = text.append
    try:
        parser.Parse(body, True)
    except expat.ExpatError as exc:
        raise ValueError(f"an answer that is not XML-RPC ({exc})") from None
    if len(values) != 1:
        raise ValueError("an answer that is not XML-RPC (no single value)")
    if fault:
        raise Fault(values[0].get("faultCode", 0), values[0].get("faultString", ""))
    return values[0]


def rpc(path: Path, method: str, args: tuple, timeout: float) -> object:
    """One XML-RPC call over supervisord's unix socket, a connection each.

    Written here rather than taken from ``xmlrpc.client``: its imports (http.client, email,
    ssl, decimal: ~15 ms) came before every handover's first call, i.e. before the new web
    could start; this needs ``socket`` and expat. Raises ``Fault``, ``OSError``, ``ValueError``.
    """
    with exchange.connect(str(path), timeout) as sock:
        sock.sendall(request(method, args))
        chunks = []
        while chunk := sock.recv(1 << 16):
            chunks.append(chunk)
    return answer(b"".join(chunks))


def _faults() -> type:
    """supervisord's fault codes, imported when a call has failed with one."""
    from supervisor.xmlrpc import Faults

    return Faults


class Supervisor:
    """One app's view of its supervisord: programs.conf, the state file and the RPC calls."""

    def __init__(self, app: App, host: HostConfig, timeout: float = RPC_TIMEOUT) -> None:
        self.app = app
        self.host = host
        self.settings = prov.settings(app, host)
        self.listeners: list[Listener] = []
        self.stopping: list[Program] = []  # sent TERM, not yet waited for (``reap``)
        self.timeout = timeout

    # RPC

    def call(self, method: str, *args: object) -> object:
        try:
            return rpc(self.settings.socket, method, args, self.timeout)
        except (OSError, ValueError) as exc:
            raise self.unreachable(exc) from None

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
        if self.answers_once_settled():
            return "running"
        orphans = stop_orphans(self.app)
        self.start_embedded()
        if orphans:
            return f"started (the previous one had died; stopped {orphans} process(es) it left)"
        return "started"

    def answers_once_settled(self, wait: float = SETTLE_WAIT) -> bool:
        """The embedded supervisord did not answer, yet its process is still there: one being
        killed (its socket already closed, the process not yet gone) or still starting. Wait,
        bounded, until it answers or is gone: until then its session is not yet told apart as
        orphans, and a new supervisord would start beside what it left running."""
        pid = read_pid(prov.pid_file(self.app))
        deadline = time.monotonic() + wait
        while pid and is_supervisord(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
            if self.reachable():
                return True
        return False

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
        """The programs that should run (``run/processes.json``); also loads ``listeners``
        and ``stopping``."""
        try:
            data = json.loads(prov.state_file(self.app).read_text())
        except (OSError, ValueError):
            data = {}
        self.listeners = [Listener.from_dict(x) for x in data.get("listeners", [])]
        self.stopping = [Program.from_dict(p) for p in data.get("stopping", [])]
        return [Program.from_dict(p) for p in data.get("programs", [])]

    def save_state(self, programs: list[Program]) -> None:
        state = {
            "programs": [p.to_dict() for p in programs],
            "listeners": [x.to_dict() for x in self.listeners],
        }
        if self.stopping:
            state["stopping"] = [p.to_dict() for p in self.stopping]
        prov.write_atomic(prov.state_file(self.app), json.dumps(state, indent=2) + "\n")

    def apply(
        self, programs: list[Program], listeners: list[Listener] | None = None, reread: bool = True
    ) -> None:
        """Record what should run, write programs.conf and have supervisord re-read it
        (``reread``: only a group added next needs it; one removed goes by its own call)."""
        if listeners is not None:
            self.listeners = list(listeners)
        self.save_state(programs)
        prov.write_programs(self.app, self.settings, programs, self.listeners)
        if not reread:
            return
        try:
            self.call("reloadConfig")
        except Fault as fault:
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
        except Fault as fault:
            faults = _faults()
            if fault.faultCode == faults.BAD_NAME:
                raise PhaseError(
                    f"supervisord does not know {group} after re-reading its config",
                    f"does its [include] list {self.settings.include}?",
                ) from None
            if fault.faultCode != faults.ALREADY_ADDED:
                raise PhaseError(f"supervisord refused {group}: {fault.faultString}") from None
            self.stop(program)
            self.call("addProcessGroup", group)
        return offsets

    def stop(self, *programs: Program | Listener, grace: float | None = None) -> None:
        """TERM every process of the programs (KILL after stop_grace), wait, remove their groups."""
        groups = self.term(*programs)
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
            self.group_call("removeProcessGroup", group, verb="remove")
        for program in programs:  # gunicorn leaves inherited sockets' paths behind
            if isinstance(program, Program):
                for i in range(1, program.count + 1):
                    path = program.socket(self.app, i)
                    if path is not None:
                        path.unlink(missing_ok=True)

    def term(self, *programs: Program | Listener) -> list[str]:
        """Ask supervisord to stop the programs' groups (TERM, its KILL after stop_grace),
        without waiting; returns the groups it knows."""
        groups = [program.group(self.app) for program in programs]
        return [g for g in groups if self.group_call("stopProcessGroup", g, False, verb="stop")]

    def group_call(self, method: str, group: str, *args: object, verb: str) -> bool:
        """Call ``method`` on a process group; False when supervisord does not know the group."""
        try:
            self.call(method, group, *args)
        except Fault as fault:
            if fault.faultCode == _faults().BAD_NAME:
                return False
            raise PhaseError(f"could not {verb} {group}: {fault.faultString}") from None
        return True

    def retire(self, running: list[Program], leaving: list[Program]) -> None:
        """Stop ``leaving`` without waiting for it: written down as stopping first (whoever
        converges next waits for it, if ``reap`` never ran), then sent TERM."""
        self.stopping = [*self.stopping, *leaving]
        self.apply(running, reread=False)  # supervisord keeps the group until it is removed
        self.term(*leaving)

    def reap(self) -> int:
        """Wait for what ``retire`` stopped to be gone, remove its groups; how many it was.
        Hold ``handover_lock``: the next handover may start the same group again."""
        programs = self.load_state()
        if not self.stopping:
            return 0
        leaving, self.stopping = self.stopping, []
        self.stop(*leaving)
        self.save_state(programs)
        return len(leaving)

    def is_up(self, program: Program | Listener, infos: dict[str, dict] | None = None) -> bool:
        """Every process of ``program`` starting or running (``infos``: a fresh ``infos()``)."""
        infos = self.infos() if infos is None else infos
        return all(
            infos.get(ns, {}).get("state") in (STARTING, RUNNING)
            for ns in program.namespecs(self.app)
        )


@contextmanager
def handover_lock(app: App) -> Iterator[None]:
    """One handover of an app's processes at a time: a deploy's, and the wait for what the
    previous one stopped (``Supervisor.reap``), which may run after that deploy's lock."""
    with lock.exclusive(app.run / "handover.lock", {"pid": os.getpid()}):
        yield


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


def host_of(app: App) -> HostConfig:
    return load_host_config(app.config_file)


def start(app: App) -> str:
    sv = Supervisor(app, host_of(app))
    return sv.ensure()


def shutdown(app: App, timeout: float = 60) -> bool:
    """Stop the app's processes and, when embedded, its supervisord. True if one was running."""
    host = host_of(app) if app.config_file.is_file() else HostConfig()
    sv = Supervisor(app, host)
    if not sv.reachable():
        return False
    if not sv.settings.embedded:
        programs = sv.load_state()
        sv.stop(*programs, *sv.stopping, *sv.listeners)
        if sv.stopping:
            sv.stopping = []
            sv.save_state(programs)
        return True
    pid = read_pid(prov.pid_file(app))
    sv.call("shutdown")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not (pid and alive(pid)) and not sv.reachable():
            return True
        time.sleep(0.05)
    raise AppError(f"supervisord for {app.name} (pid {pid}) did not stop in {timeout:.0f}s")
