"""supervisord programs for an app, rendered from its Procfile and ``[processes]`` counts.

Every Procfile type but ``release`` becomes one supervisor program (its own
process group), ``numprocs`` = the type's count (default 1, 0 = not run). The
``web`` type, when its command is a plain ``gunicorn …``, runs as one of two
alternating programs, ``web-blue`` and ``web-green``, that accept from one
listening socket held by a third program, ``listen-<port>`` (see
``shipyard/listen.py``): a deploy starts the new release next to the old one,
probes it on a private unix socket, and stops the old one only when the new
one answers.

A program is pinned to one release: its ``directory`` is that release and its
command is shipyard's launcher (``shipyard.launch``), which reads the
release's Procfile and ``shared/.env`` at start and execs the command with the
release's virtualenv first on PATH. So secrets never land in supervisor's
config, and a program started for release X runs release X even while
``current`` points elsewhere.

Two ways to run supervisord (``[supervisor]`` in the host's shipyard.toml):

* ``mode = "embedded"`` (default): shipyard starts a supervisord of its own for
  the app, listening on ``run/supervisord.sock``, its config in
  ``run/supervisord.conf`` including ``run/programs.conf``.
* ``mode = "system"``: the host's supervisord; shipyard writes the programs to
  ``include`` (default ``run/programs.conf``, which the system config includes)
  and talks to ``socket`` (default ``/var/run/supervisor.sock``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import sys
import tempfile  # not in replace_file: it also runs as another user (owner.call_as)
from dataclasses import asdict, dataclass
from pathlib import Path

from .app import App
from .config import SUPERVISOR_MODES, HostConfig, load_host_config, parse_procfile
from .errors import ConfigError, ShipyardError
from .guard import allowed_root_stamp

SYSTEM_SOCKET = "/var/run/supervisor.sock"
COLORS = ("blue", "green")
RELEASE_TYPE = "release"
LAUNCHER = "shipyard.launch"  # what every program runs (shipyard/launch.py) …
LAUNCH_SCRIPT = str(Path(__file__).with_name("launch.py"))  # … as a file: python -I -S
LISTENER = "shipyard.listen"  # … and the port's socket holder (shipyard/listen.py)
# A unix socket path must fit in sockaddr_un.sun_path (108 bytes with the NUL).
MAX_SOCKET_PATH = 107
LOG_MAXBYTES = "10MB"
LOG_BACKUPS = 3
STARTSECS = 1  # supervisord's: up this long before RUNNING (converge counts it from the exec)


@dataclass(frozen=True)
class Settings:
    """Where this app's supervisord is and where its programs are written."""

    mode: str
    socket: Path
    include: Path
    user: str | None

    @property
    def embedded(self) -> bool:
        return self.mode == "embedded"


def logs_dir(app: App) -> Path:
    return app.dir / "logs"


def main_conf(app: App) -> Path:
    return app.run / "supervisord.conf"


def pid_file(app: App) -> Path:
    return app.run / "supervisord.pid"


def supervisord_log(app: App) -> Path:
    return app.run / "supervisord.log"


def state_file(app: App) -> Path:
    return app.run / "processes.json"


def settings(app: App, host: HostConfig) -> Settings:
    table = getattr(host, "supervisor", None) or {}
    mode = table.get("mode", "embedded")
    if mode not in SUPERVISOR_MODES:
        raise ConfigError(
            f"{app.config_file}: [supervisor] mode must be 'embedded' or 'system', not {mode!r}"
        )
    default_socket = app.run / "supervisord.sock" if mode == "embedded" else Path(SYSTEM_SOCKET)
    socket = Path(table["socket"]) if table.get("socket") else default_socket
    include = Path(table["include"]) if table.get("include") else app.run / "programs.conf"
    if not socket.is_absolute():
        socket = app.dir / socket
    if not include.is_absolute():
        include = app.dir / include
    return Settings(mode, socket, include, table.get("user"))


def probe_socket(app: App, color: str, index: int) -> Path:
    """The private unix socket a blue/green web instance also listens on, for the health probe."""
    return app.run / f"web-{color}.{index}.sock"


def control_socket(app: App, color: str, index: int) -> Path:
    return app.run / f"web-{color}.{index}.ctl"


def listen_socket(app: App, port: int) -> Path:
    """Where the port's holder hands out the listening socket."""
    return app.run / f"listen-{port}.sock"


def check_socket_path(path: Path, what: str, reserve: int = 0) -> None:
    """Refuse a socket path the kernel would refuse (``reserve``: bytes a binder appends)."""
    size = len(os.fsencode(path))
    if size + reserve > MAX_SOCKET_PATH:
        raise ConfigError(
            f"{what} path {path} is {size} bytes; unix sockets allow "
            f"{MAX_SOCKET_PATH - reserve} here",
            "use a shorter deploy root (--root / SHIPYARD_ROOT)",
        )


# --- what runs ---------------------------------------------------------------


@dataclass(frozen=True)
class Program:
    """One Procfile type as run for one release."""

    type: str
    release: str
    count: int
    stop_grace: float = 30
    port: int | None = None  # web only: given as $PORT
    host: str | None = None  # web only: the address the shared socket listens on
    handover: bool = False  # web run blue/green on one shared socket (gunicorn)
    compound: bool = False  # a shell pipeline / list: signals go to the whole group
    color: str | None = None
    stop_signal: str = "TERM"  # supervisord's stopsignal (uwsgi: INT; TERM reloads it)

    @property
    def name(self) -> str:
        return f"{self.type}-{self.color}" if self.color else self.type

    def group(self, app: App) -> str:
        return f"{app.name}-{self.name}"

    def processes(self) -> list[str]:
        return [f"{self.type}.{n}" for n in range(1, self.count + 1)]

    def namespecs(self, app: App) -> list[str]:
        return [f"{self.group(app)}:{p}" for p in self.processes()]

    def log(self, app: App, index: int) -> Path:
        return logs_dir(app) / f"{self.name}.{index}.log"

    def socket(self, app: App, index: int) -> Path | None:
        """The private unix socket of a blue/green web instance (None for other programs)."""
        if not (self.handover and self.color):
            return None
        return probe_socket(app, self.color, index)

    def listener(self) -> Listener | None:
        return Listener(self.host or "0.0.0.0", self.port) if self.handover else None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Program:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def same_as(self, other: Program) -> bool:
        """Would run the same thing (colour aside)?"""
        mine, theirs = self.to_dict(), other.to_dict()
        mine.pop("color"), theirs.pop("color")
        return mine == theirs


@dataclass(frozen=True)
class Listener:
    """The program holding the web port's listening socket (shipyard/listen.py)."""

    host: str
    port: int
    stop_grace: float = 5

    @property
    def name(self) -> str:
        return f"listen-{self.port}"

    def group(self, app: App) -> str:
        return f"{app.name}-{self.name}"

    def namespecs(self, app: App) -> list[str]:
        return [f"{self.group(app)}:{self.name}"]

    def log(self, app: App, index: int = 1) -> Path:
        return logs_dir(app) / f"{self.name}.log"

    def socket(self, app: App) -> Path:
        return listen_socket(app, self.port)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Listener:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def check_counts(procfile: dict[str, str], counts: dict[str, int], source: str = "") -> None:
    """A ``[processes]`` count must name a Procfile type (and never ``release``)."""
    where = f"{source}: " if source else ""
    for name in counts:
        if name == RELEASE_TYPE:
            raise ConfigError(
                f"{where}[processes] release: the release command runs once per deploy "
                "and takes no count",
                "remove `release` from [processes]",
            )
        if name not in procfile and not (name == "web" and counts[name] == 0):
            types = ", ".join(sorted(t for t in procfile if t != RELEASE_TYPE)) or "none"
            raise ConfigError(
                f"{where}[processes] {name} = {counts[name]}, but the Procfile has no "
                f"`{name}:` (its types: {types})",
                f"add a `{name}:` line to the Procfile or remove `{name}` from [processes]",
            )


def check_keeps_web(
    app: App, procfile: dict[str, str] | None, counts: dict[str, int], commit: str
) -> None:
    """Refuse a Procfile without ``web:`` that would stop the site (or never start it).

    Unless asked for: ``[processes] web = 0`` in the app's shipyard.toml, or
    ``web = 0`` in the host's. A commit with no Procfile at all is refused by its
    own check (proc-receive); an app whose web is not running now keeps running so.
    """
    if procfile is None or "web" in procfile or "web" in counts:
        return
    host = load_host_config(app.config_file)
    if host.web == 0:
        return
    try:
        running = {p.get("type") for p in json.loads(state_file(app).read_text())["programs"]}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        running = set()
    if running and "web" not in running:
        return
    effect = "would stop web" if running else f"would leave port {host.port} with no web process"
    raise ConfigError(
        f"{commit[:7]}'s Procfile has no `web:` line: deploying it {effect}",
        f"add a `web:` line to the Procfile, or set `web = 0` in {app.config_file} "
        "to run without one",
    )


def plan(
    procfile: dict[str, str],
    counts: dict[str, int],
    release: str,
    port: int,
    stop_grace: float,
    signals: dict[str, str] | None = None,
) -> dict[str, Program]:
    """The programs a release asks for, by type (``release:`` is a one-off, not a program).

    ``signals``: stop signals by type (``[processes.TYPE] stop_signal``); otherwise TERM, or
    INT for uwsgi, which reloads on TERM (uwsgi's ``--stop`` sends INT)."""
    check_counts(procfile, counts)
    programs = {}
    for name, command in procfile.items():
        if name == RELEASE_TYPE:
            continue
        count = counts.get(name, 1)
        if count < 1:
            continue
        web = name == "web"
        compound = is_compound(command)
        handover = web and not compound and is_gunicorn(command)
        programs[name] = Program(
            type=name,
            release=release,
            count=count,
            stop_grace=stop_grace,
            port=port if web else None,
            host=bind_host(command) if handover else None,
            handover=handover,
            compound=compound,
            stop_signal=(signals or {}).get(name) or default_stop_signal(command),
        )
    return programs


# --- commands ----------------------------------------------------------------

ASSIGNMENT = re.compile(r"""^(?:[A-Za-z_][A-Za-z0-9_]*=(?:'[^']*'|"[^"]*"|[^\s'"])*\s+)*""")
COMPOUND_TOKENS = (";", "|", "(", ")", "`")
BIND_OPTION = re.compile(r"(?:^|\s)(?:-b|--bind)(?:[=\s]|$)")


def is_compound(command: str) -> bool:
    """A list, pipeline or subshell rather than one simple command?"""
    if "\n" in command or "`" in command or "$(" in command:
        return True
    try:
        lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
        tokens = list(lexer)
    except ValueError:
        return True
    for token in tokens:
        operator = bool(token) and all(c in "();<>|&" for c in token)
        if operator and (any(c in token for c in COMPOUND_TOKENS) or token in ("&", "&&")):
            return True
    return False


def split_assignments(command: str) -> tuple[str, str]:
    """(leading ``NAME=value`` words, the rest) of a simple command."""
    match = ASSIGNMENT.match(command.strip())
    prefix = match.group(0) if match else ""
    return prefix, command.strip()[len(prefix) :]


def program_words(command: str) -> list[str]:
    """The words of a simple command after its ``NAME=value`` assignments."""
    try:
        return shlex.split(split_assignments(command)[1])
    except ValueError:
        return []


def default_stop_signal(command: str) -> str:
    """INT for uwsgi (TERM makes uwsgi 2.0 reload, unless --die-on-term), else TERM."""
    words = program_words(command)
    first = os.path.basename(words[0]) if words else ""
    uwsgi = first == "uwsgi" or (first.startswith("python") and words[1:3] == ["-m", "uwsgi"])
    if uwsgi and "--die-on-term" not in words:
        return "INT"
    return "TERM"


def is_gunicorn(command: str) -> bool:
    """Does it start gunicorn: ``gunicorn …``, ``…/gunicorn …`` or ``python -m gunicorn …``?"""
    _, rest = split_assignments(command)
    try:
        words = shlex.split(rest)
    except ValueError:
        return False
    if not words:
        return False
    first = os.path.basename(words[0])
    if first == "gunicorn":
        return True
    return first.startswith("python") and words[1:3] == ["-m", "gunicorn"]


def shell_script(command: str, extra: str = "") -> str:
    """The ``sh -c`` script for a Procfile command.

    A simple command is exec'd (``NAME=value exec cmd …``), so the process
    supervisord watches, signals and shipyard verifies is the program itself,
    not a shell. A compound one runs as is; its program stops as a group.
    """
    if is_compound(command):
        return command
    prefix, rest = split_assignments(command)
    return f"{prefix}exec {rest}{extra}"


def bind_host(command: str) -> str:
    """The host of the command's TCP bind on $PORT (its first TCP bind), else gunicorn's default.

    A blue/green web instance listens on the shared socket instead of its own
    binds; the socket keeps the address the command asked for.
    """
    try:
        words = shlex.split(split_assignments(command)[1])
    except ValueError:
        return "0.0.0.0"
    binds = []
    for i, word in enumerate(words):
        if word in ("-b", "--bind") and i + 1 < len(words):
            binds.append(words[i + 1])
        elif word.startswith("--bind="):
            binds.append(word.split("=", 1)[1])
        elif word.startswith("-b") and len(word) > 2:
            binds.append(word[2:])
    tcp = [b for b in binds if not b.startswith(("unix:", "fd://"))]
    chosen = next((b for b in tcp if "PORT" in b), tcp[0] if tcp else None)
    if chosen is None:
        return "0.0.0.0"
    chosen = chosen.removeprefix("tcp://").removeprefix("http://")
    host = chosen.rsplit(":", 1)[0] if ":" in chosen else chosen
    host = host.strip("[]")
    return "0.0.0.0" if host in ("", "*") else ("127.0.0.1" if host == "localhost" else host)


def gunicorn_version(venv: Path) -> tuple[int, ...] | None:
    """gunicorn's version in a virtualenv, from its dist-info (None if not installed)."""
    for info in sorted(venv.glob("lib/python*/site-packages/gunicorn-*.dist-info")):
        version = info.name[len("gunicorn-") : -len(".dist-info")]
        parts = re.findall(r"\d+", version)[:3]
        if parts:
            return tuple(int(p) for p in parts)
    return None


# --- rendering ---------------------------------------------------------------


def _value(text: str | Path) -> str:
    """A value for supervisor's config: % is its interpolation character."""
    return str(text).replace("%", "%%")


def _command(args: list[str], script: str | None = None) -> str:
    """supervisord's ``command``: ``%(process_num)d`` in ``args`` expanded, every other % as
    written; ``script`` (a Procfile command) last and never expanded, as ``--run SCRIPT``."""
    text = _value(shlex.join(args)).replace("%%(process_num)d", "%(process_num)d")
    return text if script is None else f"{text} --run {_value(shlex.quote(script))}"


def launch_options(
    app: App, release: str, kind: str, color: str | None, port: int | None, index: str
) -> tuple[list[str], str]:
    """What the launcher would work out from the release at each start: its options, and
    the script ``sh -c`` runs (``--run``).

    The release's Procfile and virtualenv never change, so this is decided once, when
    ``programs.conf`` is written, and holds for every later start of the program (a crash
    restarted by supervisord, a reboot): the log, and for a blue/green web instance the
    socket paths (``index``: its number, or supervisord's ``%(process_num)d``).
    """
    release_dir = app.release_dir(release)
    procfile = parse_procfile((release_dir / "Procfile").read_text(), "Procfile")
    if kind not in procfile:
        raise ConfigError(f"releases/{release}/Procfile has no `{kind}:` entry")
    command = procfile[kind]
    name = f"{kind}-{color}" if color else kind  # as Program.name
    options = ["--log", str(logs_dir(app) / f"{name}.{index}.log")]
    if color and port and is_gunicorn(command) and not is_compound(command):
        options += ["--listen", str(listen_socket(app, port))]
        options += ["--probe", str(probe_socket(app, color, index))]
        version = gunicorn_version(release_dir / ".venv")
        if version and version >= (25, 1):  # its own control socket, not the per-user default
            options += ["--control", str(control_socket(app, color, index))]
    return options, shell_script(command)


def render_program(
    app: App, program: Program, user: str | None = None, root_ok: str | None = None
) -> str:
    """``root_ok``: the host config's stamp when it allows root and this runs as root."""
    release = app.releases / program.release
    args = [sys.executable, "-I", "-S", LAUNCH_SCRIPT, str(app.dir), program.release, program.type]
    args += ["--index", "%(process_num)d"]
    if program.color:
        args += ["--color", program.color]
    if program.port is not None:
        args += ["--port", str(program.port)]
    if root_ok:
        args += ["--root-ok", root_ok]
    script = None
    try:
        options, script = launch_options(
            app, program.release, program.type, program.color, program.port, "%(process_num)d"
        )
        args += options
    except (ShipyardError, OSError):
        pass  # the launcher tries again at start, and says why it cannot
    log = logs_dir(app) / f"{program.name}.%(process_num)d.log"
    lines = [
        f"[program:{program.group(app)}]",
        f"command = {_command(args, script)}",
        f"process_name = {program.type}.%(process_num)d",
        f"numprocs = {program.count}",
        "numprocs_start = 1",
        f"directory = {_value(release)}",
        "priority = 200",
        "autostart = true",
        "autorestart = true",
        f"startsecs = {STARTSECS}",
        "startretries = 3",
        f"stopsignal = {program.stop_signal}",
        f"stopwaitsecs = {max(1, round(program.stop_grace))}",
        f"stopasgroup = {'true' if program.compound else 'false'}",
        "killasgroup = true",
        "redirect_stderr = true",
        f"stdout_logfile = {_value(log).replace('%%(process_num)d', '%(process_num)d')}",
        f"stdout_logfile_maxbytes = {LOG_MAXBYTES}",
        f"stdout_logfile_backups = {LOG_BACKUPS}",
    ]
    if user:
        lines.append(f"user = {user}")
    return "\n".join(lines) + "\n"


def render_listener(app: App, listener: Listener, user: str | None = None) -> str:
    args = [sys.executable, "-m", LISTENER, str(app.dir)]
    args += ["--host", listener.host, "--port", str(listener.port)]
    lines = [
        f"[program:{listener.group(app)}]",
        f"command = {_command(args)}",
        f"process_name = {listener.name}",
        f"directory = {_value(app.dir)}",
        "priority = 100",  # before the web instances that ask it for the socket
        "autostart = true",
        "autorestart = true",
        f"startsecs = {STARTSECS}",
        "stopsignal = TERM",
        f"stopwaitsecs = {max(1, round(listener.stop_grace))}",
        "redirect_stderr = true",
        f"stdout_logfile = {_value(listener.log(app))}",
        "stdout_logfile_maxbytes = 1MB",
        "stdout_logfile_backups = 1",
    ]
    if user:
        lines.append(f"user = {user}")
    return "\n".join(lines) + "\n"


def render_programs(
    app: App,
    programs: list[Program],
    listeners: list[Listener] = (),
    user: str | None = None,
) -> str:
    head = (
        f"; supervisor programs for {app.name}, written by shipyard on every deploy; do not edit.\n"
        f"; Each program is pinned to one release; see `shipyard processes {app.name}`.\n"
    )
    sections = [render_listener(app, listener, user) for listener in listeners]
    root_ok = allowed_root_stamp(app) if programs else None
    sections += [render_program(app, p, user, root_ok) for p in programs]
    body = "\n".join(sections)
    return head + ("\n" + body if body else "")


def render_main(app: App, sv: Settings) -> str:
    """The embedded supervisord's own config: socket, pid and log in run/, programs included."""
    include = sv.include
    if include.is_relative_to(app.run):  # relative to this file: no spaces to split on
        include = Path(os.path.relpath(include, main_conf(app).parent))
    return f"""\
; supervisord for {app.name}, started by shipyard; rewritten on every start.
[unix_http_server]
file = {_value(sv.socket)}
chmod = 0700

[supervisord]
logfile = {_value(supervisord_log(app))}
logfile_maxbytes = 5MB
logfile_backups = 2
loglevel = info
pidfile = {_value(pid_file(app))}
childlogdir = {_value(logs_dir(app))}
identifier = shipyard-{app.name}

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl = unix://{_value(sv.socket)}

[include]
files = {_value(include)}
"""


def write_atomic(path: Path, text: str) -> bool:
    """Write ``path`` via rename; returns whether the content changed."""
    try:
        if path.read_text() == text:
            return False
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_file(path, text)
    return True


def replace_file(path: Path | str, text: str, mode: int = 0o644) -> None:
    """A new file of ``mode`` renamed over ``path``: its temp file is new (``O_EXCL``), so a
    link planted under a temp name is never written through."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            os.fchmod(f.fileno(), mode)
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_programs(
    app: App, sv: Settings, programs: list[Program], listeners: list[Listener] = ()
) -> bool:
    logs_dir(app).mkdir(parents=True, exist_ok=True)
    return write_atomic(sv.include, render_programs(app, programs, listeners, sv.user))


def write_main(app: App, sv: Settings) -> None:
    write_atomic(main_conf(app), render_main(app, sv))
