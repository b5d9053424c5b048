"""The forced command of every key `shipyard provision` adds: what an SSH login may run.

sshd runs ``shipyard ssh-command NAME`` instead of whatever the client asked
for, and puts the client's request in ``SSH_ORIGINAL_COMMAND``. This module
parses that request strictly (shlex, no shell), allows only

* ``git-receive-pack PATH`` / ``git-upload-pack PATH`` where PATH is the bare
  repo of an existing app under the deploy root (``~/apps/<app>/repo.git``);
* ``shipyard COMMAND ARGS…`` for the operator commands in ``OPERATOR_COMMANDS``,
  with plain arguments (besides ``config set``'s values and ``run``'s command);
* a terminal (``ssh -t``) for ``shipyard run`` only;

and runs it with ``SHIPYARD_PUSHER=NAME``, so every deploy records whose key
pushed it: git by exec, a ``shipyard`` command in this same process when the
CLI hands ``main`` its dispatcher (a second interpreter and CLI import would be
most of a quick command's time), with the environment it would have been exec'd
with. Anything else gets one line on stderr, a non-zero exit and a line in
``~/.shipyard/ssh.log``.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

from shipyard.app import APP_NAME, App, default_root
from shipyard.teardown import exit_now

GIT_COMMANDS = {"git-receive-pack": "receive-pack", "git-upload-pack": "upload-pack"}
# Read-only or deploy-shaped commands an operator may run over SSH; never init, provision
# or anything that takes a path.
OPERATOR_COMMANDS = (
    "status",
    "releases",
    "history",
    "log",
    "rollback",
    "deploy",
    "doctor",
    "config",
    "run",
    "logs",
    "scale",
    "restart",
    "processes",
    "ps",
    "cron",
)
# `config set APP KEY=VALUE`: the value is data (a URL, a sentence), never a path or an option
SETTING = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
OPERATOR_COMMANDS += ("domains", "maintenance", "tls")  # the front door (shipyard/domains.py)
KEY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
SAFE_ARG = re.compile(r"^[A-Za-z0-9._:=#@+-]{1,200}$")
REFUSED_EXIT = 126
SHIPYARD_ARGV = [sys.executable, "-m", "shipyard"]  # how an allowed shipyard command is exec'd
ALLOWED = (
    "git push/fetch of ~/apps/APP/repo.git and `shipyard " + "|".join(OPERATOR_COMMANDS) + " APP …`"
)


class NotAllowed(Exception):
    """The request is not allowed; the message says why, on one line."""


class Decision:
    """What to run for an allowed request (a plain class: ``dataclasses`` and its imports
    were most of this command's time before it execs git-receive-pack)."""

    def __init__(self, argv: list[str], what: str, verb: str | None = None) -> None:
        self.argv = argv
        self.what = what  # for the log: the app or command it was about
        self.verb = verb  # a shipyard command's (status, rollback, …)


def which_git() -> str:
    """``git`` on PATH as ``shutil.which`` finds it (shutil, with bz2 and lzma, is not
    imported for it), else /usr/bin/git."""
    for directory in os.environ.get("PATH", os.defpath).split(os.pathsep):
        path = os.path.join(directory or os.curdir, "git")
        if os.access(path, os.F_OK | os.X_OK) and not os.path.isdir(path):
            return path
    return "/usr/bin/git"


def log_path(home: Path) -> Path:
    return home / ".shipyard" / "ssh.log"


def resolve_repo(raw: str, home: Path, root: Path) -> App:
    """The app whose bare repo ``raw`` names, as git clients send it; NotAllowed otherwise.

    Clients send ``apps/mysite/repo.git`` (scp-like ``host:apps/…``),
    ``~/apps/mysite/repo.git`` (``ssh://host/~/apps/…``) or an absolute path.
    """
    if not raw or "\0" in raw or "\n" in raw:
        raise NotAllowed("empty or malformed repository path")
    path = raw
    if path.startswith("~/"):
        path = path[2:]
    elif path.startswith("~"):
        raise NotAllowed(f"repository path {raw!r}: only ~/ (this account's home) is allowed")
    if ".." in Path(path).parts:
        raise NotAllowed(f"repository path {raw!r} contains '..'")
    candidate = Path(path) if Path(path).is_absolute() else home / path
    candidate = Path(os.path.normpath(candidate))
    if candidate.name != "repo.git" or candidate.parent.parent != root:
        raise NotAllowed(f"{raw!r} is not an app repository ({root}/APP/repo.git)")
    name = candidate.parent.name
    if not APP_NAME.match(name):
        raise NotAllowed(f"{raw!r}: invalid app name {name!r}")
    app = App(root, name)
    if not app.exists():
        raise NotAllowed(f"no app {name!r} on this host (create it with `shipyard init {name}`)")
    # no symlink may lead the repo out of the deploy root
    if app.repo.resolve() != root.resolve() / name / "repo.git":
        raise NotAllowed(f"{raw!r} does not resolve inside {root}")
    return app


def check_operator_args(args: list[str]) -> None:
    """Plain words only (no paths, no --root), except the values of ``config set`` and the
    command after ``run … --``, which are handed over as single argv words, never to a shell."""
    verb = args[0]
    free = len(args)
    if verb == "run" and "--" in args:
        free = args.index("--")
    for i, arg in enumerate(args[1:free], 1):
        if "\0" in arg:
            raise NotAllowed("an argument contains a NUL byte")
        if verb == "config" and args[1:2] == ["set"] and i > 2 and SETTING.match(arg):
            continue
        if not SAFE_ARG.match(arg) or arg.startswith("--root") or ".." in arg:
            raise NotAllowed(f"argument {arg!r} is not allowed")
    if any("\0" in arg for arg in args[free:]):
        raise NotAllowed("an argument contains a NUL byte")


def decide(
    command: str | None, home: Path, root: Path, shipyard_argv: list[str], tty: bool = False
) -> Decision:
    """What to exec for the client's ``command``; raises NotAllowed for anything not allowed.

    ``tty``: the client asked for a terminal (``ssh -t``), which only ``shipyard run`` gets.
    """
    if command is None or not command.strip():
        raise NotAllowed("interactive logins are disabled for this key")
    if len(command) > 4096:
        raise NotAllowed("command too long")
    try:
        words = shlex.split(command, comments=False, posix=True)
    except ValueError as exc:
        raise NotAllowed(f"cannot parse the command ({exc})") from None
    if not words:
        raise NotAllowed("empty command")
    head, args = words[0], words[1:]
    if tty and not (head == "shipyard" and args[:1] == ["run"]):
        raise NotAllowed("a terminal (ssh -t) is only allowed for `shipyard run`")
    if head in GIT_COMMANDS:
        if len(args) != 1:
            raise NotAllowed(f"{head} takes exactly one repository path")
        app = resolve_repo(args[0], home, root)
        git = which_git()
        return Decision([git, GIT_COMMANDS[head], str(app.repo)], f"{head} {app.name}")
    if head == "shipyard":
        if not args or args[0] not in OPERATOR_COMMANDS:
            given = f"shipyard {args[0]}" if args else "shipyard without a command"
            raise NotAllowed(f"{given} is not allowed over SSH")
        check_operator_args(args)
        return Decision(
            [*shipyard_argv, "--root", str(root), *args], "shipyard " + " ".join(args[:2]), args[0]
        )
    raise NotAllowed(f"{head!r} is not allowed")


def loggable(command: str | None) -> str | None:
    """The request as the log shows it: the values of ``config set`` hidden (they are secrets)."""
    try:
        words = shlex.split(command or "", posix=True)
    except ValueError:
        return command
    if words[:2] != ["shipyard", "config"] or not any(SETTING.match(w) for w in words):
        return command
    return shlex.join(w.split("=", 1)[0] + "=***" if SETTING.match(w) else w for w in words)


def record(home: Path, name: str, command: str | None, verdict: str) -> None:
    """One line per request in ~/.shipyard/ssh.log (and syslog's auth facility)."""
    client = (os.environ.get("SSH_CLIENT") or "-").split(" ")[0]
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    line = f"{stamp} key={name} from={client} {verdict}: {loggable(command)!r}"
    try:
        path = log_path(home)
        path.parent.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a") as log:
            log.write(line + "\n")
    except OSError:
        pass
    try:
        import syslog

        syslog.openlog("shipyard-ssh", 0, syslog.LOG_AUTH)
        syslog.syslog(syslog.LOG_NOTICE if verdict == "allowed" else syslog.LOG_WARNING, line)
    except Exception:  # noqa: BLE001 - logging must never stop a push
        pass


def main(
    name: str, root: Path | None = None, run: Callable[[list[str], str], int] | None = None
) -> int:
    """Entry point: ``shipyard ssh-command NAME`` (the forced command).

    ``run``: the CLI's dispatcher (``cli.run``, given the arguments and the command); an
    allowed ``shipyard`` command runs through it here, else in a second interpreter.
    """
    home = Path(os.environ.get("HOME") or Path.home())
    root = (root or default_root()).absolute()
    command = os.environ.get("SSH_ORIGINAL_COMMAND")
    if not KEY_NAME.match(name):
        print(f"shipyard: refused: this key's name {name!r} is invalid", file=sys.stderr)
        return REFUSED_EXIT
    try:
        tty = bool(os.environ.get("SSH_TTY"))
        decision = decide(command, home, root, SHIPYARD_ARGV, tty=tty)
    except NotAllowed as exc:
        record(home, name, command, f"refused ({exc})")
        print(f"shipyard: refused: {exc}; this key may only run {ALLOWED}", file=sys.stderr)
        return REFUSED_EXIT
    record(home, name, command, "allowed")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "SHIPYARD_"))}
    if os.environ.get("GIT_PROTOCOL"):  # protocol v2 negotiation, when sshd accepts it
        env["GIT_PROTOCOL"] = os.environ["GIT_PROTOCOL"]
    env["SHIPYARD_PUSHER"] = name
    sys.stdout.flush()
    sys.stderr.flush()
    if run is not None and decision.verb:
        os.environ.clear()  # exactly what the exec would have passed (putenv follows)
        os.environ.update(env)
        return exit_now(run(decision.argv[len(SHIPYARD_ARGV) :], decision.verb))
    os.execve(decision.argv[0], decision.argv, env)
    return 0  # not reached
