"""`shipyard doctor APP`: check a host end to end, one line per check, each failure with its fix.

Run on the host as the deploy user (or over SSH: ``ssh deploy@host shipyard doctor APP``).
Exit status 1 when any check fails; warnings do not fail.

Run as root, it runs its checks as the app's owner (``owner.first_owner``):
some checks run the deploy user's files (a hook's ``#!`` interpreter), and
root runs nothing the deploy user could have written.

Three checks depend on features that live elsewhere and go through an adapter
each, so they can follow those features without touching the rest:
``supervisor_check`` (the processes feature, ``shipyard.supervise``) and
``receivers_check`` (peers in the host config) and ``tls_check`` (the front door's
certificate and its renewal, ``shipyard.tls``).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import owner, supervisord, venv
from .app import App, default_root
from .boot import started_by
from .config import HostConfig, load_host_config
from .errors import ShipyardError
from .repo import HOOKS, hook_interpreter, proc_receive_refs
from .tls import renewal_check

MIN_GIT = (2, 29)
MIN_FREE = 1 << 30  # below this a venv build or checkout may fail half-way
LOW_FREE = 5 << 30
SECRET_NAMES = re.compile(r"^\.env(\..*)?$|\.(key|pem)$|secret", re.I)
MAX_WALK = 500_000

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"
MARKS = {OK: "✓", WARN: "!", FAIL: "✗", SKIP: "·"}


@dataclass
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""


@dataclass
class Context:
    app: App
    host: HostConfig | None
    init_command: str


# ---------------------------------------------------------------- the checks


def git_check(ctx: Context) -> Check:
    try:
        out = subprocess.run(["git", "--version"], capture_output=True, text=True).stdout
    except OSError:
        return Check("git", FAIL, "git is not installed", "apt-get install git")
    match = re.search(r"(\d+)\.(\d+)", out)
    version = (int(match.group(1)), int(match.group(2))) if match else (0, 0)
    need = ".".join(map(str, MIN_GIT))
    text = out.strip().removeprefix("git version ")
    if version < MIN_GIT:
        return Check(
            "git",
            FAIL,
            f"git {text} is too old: the proc-receive hook needs ≥ {need}",
            "install a newer git (Debian 12 / Ubuntu 22.04 have 2.39 / 2.34)",
        )
    return Check("git", OK, f"git {text} (proc-receive needs ≥ {need})")


def layout_check(ctx: Context) -> Check:
    app = ctx.app
    missing = [
        p.name
        for p in (app.releases, app.venvs, app.shared, app.deploys, app.run)
        if not p.is_dir()
    ]
    if missing:
        return Check(
            "layout", FAIL, f"missing: {', '.join(m + '/' for m in missing)}", ctx.init_command
        )
    if ctx.host is None:
        try:
            load_host_config(app.config_file)
        except ShipyardError as exc:
            return Check("layout", FAIL, str(exc.message), exc.hint or "fix shipyard.toml")
    problem = app.current_problem()
    if problem:
        fix = f"the next deploy replaces it (push again, or `shipyard deploy {app.name}`)"
        if not app.current.is_symlink():
            fix = f"move it away (mv {app.current} {app.current}.old); then {fix}"
        return Check(
            "layout",
            FAIL,
            f"no valid live release: {problem}",
            f"{fix}; or point it at a release: ln -sfn releases/<id> {app.current}",
        )
    live = app.live_release()
    return Check("layout", OK, f"live: {live}" if live else "complete; nothing deployed yet")


def hooks_check(ctx: Context) -> Check:
    problems = []
    for name, module in HOOKS.items():
        path = ctx.app.repo / "hooks" / name
        if not path.is_file():
            problems.append(f"hooks/{name} is missing")
            continue
        if not os.access(path, os.X_OK):
            problems.append(f"hooks/{name} is not executable")
            continue
        text = path.read_text(errors="replace")
        interpreter = hook_interpreter(text)
        if not interpreter or not os.access(interpreter, os.X_OK):
            problems.append(f"hooks/{name} runs {interpreter or '(nothing)'}, which does not exist")
            continue
        if module not in text:
            problems.append(f"hooks/{name} is not shipyard's (does not run {module})")
            continue
        changeable = owner.untrusted(path) + owner.untrusted(Path(interpreter))
        if os.geteuid() == 0 and changeable:
            problems.append(f"hooks/{name}: {interpreter} not run as root ({changeable[0]})")
            continue
        probe = subprocess.run(
            [interpreter, "-c", f"import {module}"], capture_output=True, text=True, timeout=60
        )
        if probe.returncode:
            last = (probe.stderr.strip().splitlines() or ["?"])[-1]
            problems.append(f"hooks/{name}: {interpreter} cannot import {module} ({last})")
    if problems:
        return Check("hooks", FAIL, "; ".join(problems), ctx.init_command)
    return Check("hooks", OK, f"{', '.join(HOOKS)} installed and runnable")


def git_config_check(ctx: Context) -> Check:
    if ctx.host is None:
        return Check("git config", SKIP, "host shipyard.toml unreadable")
    refs = proc_receive_refs(ctx.host)
    wanted = {"receive.procReceiveRefs": refs, "receive.advertisePushOptions": ["true"]}
    wrong = []
    for key, values in wanted.items():
        result = subprocess.run(
            ["git", "config", "--file", str(ctx.app.repo / "config"), "--get-all", key],
            capture_output=True,
            text=True,
        )
        have = result.stdout.split()
        if not all(v.lower() in (h.lower() for h in have) for v in values):
            wrong.append(f"{key} is {', '.join(have) or 'unset'}, not {', '.join(values)}")
    if wrong:
        return Check("git config", FAIL, "; ".join(wrong), ctx.init_command)
    return Check("git config", OK, f"receive.procReceiveRefs = {', '.join(refs)}")


def _walk(top: Path):
    count = 0
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            count += 1
            if count > MAX_WALK:
                return
            yield Path(dirpath) / name


def permissions_check(ctx: Context) -> Check:
    app = ctx.app
    writable: list[Path] = []
    for top in (app.dir, app.repo / "hooks", app.releases, app.venvs, app.shared, app.run):
        if top.is_dir() and not top.is_symlink() and top.stat().st_mode & stat.S_IWOTH:
            writable.append(top)
    for top in (app.releases, app.venvs, app.repo / "hooks"):
        for path in _walk(top) if top.is_dir() else ():
            try:
                st = path.lstat()
            except OSError:
                continue
            if stat.S_ISLNK(st.st_mode) or not st.st_mode & stat.S_IWOTH:
                continue
            if path.name == ".lock" and path.parent.parent == app.venvs:
                continue  # uv's lock file in each venv: its content is never read
            writable.append(path)
    readable: list[Path] = []
    candidates = [p for p in _walk(app.shared) if SECRET_NAMES.search(p.name)]
    if app.config_file.is_file() and re.search(r"(?m)^\s*secret\s*=", app.config_file.read_text()):
        candidates.append(app.config_file)
    for path in candidates:
        try:
            st = path.lstat()
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_mode & stat.S_IROTH:
            readable.append(path)
    problems, fixes = [], []
    if writable:
        shown = ", ".join(str(p.relative_to(app.dir)) or "." for p in writable[:3])
        more = f" and {len(writable) - 3} more" if len(writable) > 3 else ""
        problems.append(f"world-writable: {shown}{more}")
        fixes.append(f"chmod -R o-w {app.dir}")
    if readable:
        shown = ", ".join(str(p.relative_to(app.dir)) for p in readable[:3])
        problems.append(f"secrets readable by every user: {shown}")
        fixes.append("chmod o-rwx " + " ".join(str(p) for p in readable[:3]))
    if problems:
        return Check("permissions", FAIL, "; ".join(problems), "; ".join(fixes))
    return Check("permissions", OK, "releases/venvs not world-writable; secrets not world-readable")


def supervisor_check(ctx: Context) -> Check:
    """Is the supervisord that runs this app's processes reachable?"""
    if ctx.host is None:
        return Check("supervisord", SKIP, "host shipyard.toml unreadable")
    live = ctx.app.live_release()
    if not live or not (ctx.app.releases / live / "Procfile").is_file():
        return Check("supervisord", SKIP, "not configured (no Procfile in the live release)")
    try:
        sv = supervisord.Supervisor(ctx.app, ctx.host)
        if sv.reachable():
            return Check("supervisord", OK, f"reachable at {sv.settings.socket}")
        where = sv.settings.socket
        return Check(
            "supervisord",
            FAIL,
            f"not reachable at {where}",
            f"push again or run `shipyard deploy {ctx.app.name}` (starts shipyard's own), "
            "or start the system supervisord (service supervisor start)",
        )
    except Exception as exc:  # noqa: BLE001 - a broken adapter is a failed check, not a crash
        return Check("supervisord", FAIL, f"cannot check: {exc}", "see shipyard.toml [supervisor]")


def boot_check(ctx: Context) -> Check:
    """Will the app's processes come back after a reboot?"""
    live = ctx.app.live_release()
    if not live or not (ctx.app.releases / live / "Procfile").is_file():
        return Check("boot", SKIP, "no processes to start")
    if ctx.host is not None and (ctx.host.supervisor or {}).get("mode") == "system":
        return Check("boot", SKIP, "the system supervisord runs the processes")
    by, fix = started_by(ctx.app)
    if by:
        return Check("boot", OK, f"processes started at boot by {by}")
    return Check("boot", WARN, "nothing starts the processes at boot: down until a push", fix)


def disk_check(ctx: Context) -> Check:
    usage = shutil.disk_usage(ctx.app.dir)
    free_gib = usage.free / (1 << 30)
    text = f"{free_gib:.1f} GiB free of {usage.total / (1 << 30):.0f} GiB"
    fix = f"free space, or keep fewer releases (`keep` in {ctx.app.config_file})"
    if usage.free < MIN_FREE:
        return Check("disk", FAIL, f"{text}: a deploy may run out", fix)
    if usage.free < LOW_FREE:
        return Check("disk", WARN, f"{text}: getting low", fix)
    return Check("disk", OK, text)


def tls_check(ctx: Context) -> Check:
    """The front door's certificate and its scheduled renewal (an adapter: shipyard.tls)."""
    return Check("tls", *renewal_check(ctx.app, ctx.host))


def _peer_address(peer: str) -> tuple[str, int] | None:
    match = re.match(r"^(?:https?://)?\[?([^\]/]+?)\]?:(\d+)/?$", peer)
    return (match.group(1), int(match.group(2))) if match else None


def receivers_check(ctx: Context, timeout: float = 3.0) -> Check:
    """Adapter to the many-hosts feature: can we reach each peer's receiver (TCP connect)?"""
    peers = ctx.host.peers if ctx.host else []
    if not peers:
        return Check("receivers", SKIP, "no peers configured")
    down = []
    for peer in peers:
        address = _peer_address(peer)
        if address is None:
            down.append(f"{peer} (not ADDR:PORT)")
            continue
        try:
            socket.create_connection(address, timeout=timeout).close()
        except OSError as exc:
            down.append(f"{peer} ({exc.strerror or exc})")
    if down:
        return Check(
            "receivers",
            FAIL,
            f"unreachable: {', '.join(down)}",
            "start the receiver on those hosts and check the firewall",
        )
    return Check("receivers", OK, f"{len(peers)} reachable")


def ssh_keys_check(ctx: Context) -> Check:
    """Keys that log in as this user without shipyard's forced command get a shell."""
    path = Path(os.environ.get("HOME") or Path.home()) / ".ssh" / "authorized_keys"
    if not path.is_file():
        return Check("ssh keys", SKIP, "no ~/.ssh/authorized_keys")
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        return Check("ssh keys", SKIP, f"cannot read {path}: {exc.strerror}")
    keys = [ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    open_ = [
        n
        for n, ln in enumerate(lines, 1)
        if ln.strip() and not ln.lstrip().startswith("#") and "command=" not in ln
    ]
    if open_:
        return Check(
            "ssh keys",
            WARN,
            f"{path} lines {', '.join(map(str, open_))} have no forced command (a shell login)",
            "re-add them with `shipyard provision --key NAME=FILE`, or accept it for admins",
        )
    return Check("ssh keys", OK, f"{len(keys)} key(s), each limited to push and shipyard commands")


def index_check(ctx: Context, timeout: float = 10.0) -> Check:
    """Can this user reach the package index, with the settings and CAs uv will be given?"""
    import http.client
    import ssl
    from urllib.parse import urlsplit

    if (ctx.host.installer if ctx.host else "uv") != "uv":
        return Check("index", SKIP, "installer is pip: pip reads its own configuration")
    if os.environ.get("UV_OFFLINE"):
        return Check("index", SKIP, "UV_OFFLINE is set: venvs are built from uv's cache only")
    env = {**os.environ, **venv.uv_environment()}
    index = env.get("UV_INDEX_URL") or env.get("UV_DEFAULT_INDEX") or "https://pypi.org/simple"
    parts = urlsplit(index)
    where = venv.carried() or "uv's defaults"
    if parts.scheme not in ("http", "https"):
        return Check("index", OK, f"{index} (a local index; {where})")
    insecure = parts.hostname in env.get("UV_INSECURE_HOST", "").split()
    context = ssl.create_default_context(cafile=env.get("SSL_CERT_FILE") or None)
    if insecure:
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(
            parts.hostname, parts.port, timeout=timeout, context=context
        )
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request("HEAD", parts.path.rstrip("/") + "/pip/", headers={"User-Agent": "shipyard"})
        status = conn.getresponse().status
    except (OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", None) or exc
        return Check(
            "index",
            FAIL,
            f"{index} cannot be reached as {os.environ.get('USER') or os.getuid()}: {reason} "
            f"({where})",
            "add the index's CA to the system store (update-ca-certificates) or set cert = … in "
            "/etc/pip.conf; a proxy goes in HTTPS_PROXY for the deploy user",
        )
    finally:
        conn.close()
    return Check("index", OK, f"{index} answers (HTTP {status}; {where})")


CHECKS: list[Callable[[Context], Check]] = [
    git_check,
    layout_check,
    hooks_check,
    git_config_check,
    permissions_check,
    supervisor_check,
    boot_check,
    disk_check,
    receivers_check,
    ssh_keys_check,
    index_check,
    tls_check,
]


def run_checks(app: App, root_given: bool = False) -> list[Check]:
    app.require()
    try:
        host = load_host_config(app.config_file)
    except ShipyardError:
        host = None
    root = f" --root {app.root}" if root_given else ""
    ctx = Context(app, host, f"shipyard{root} init {app.name} (repairs hooks, config, layout)")
    results = []
    for check in CHECKS:
        try:
            results.append(check(ctx))
        except Exception as exc:  # noqa: BLE001 - one broken check must not hide the others
            results.append(Check(check.__name__.removesuffix("_check"), FAIL, f"error: {exc}"))
    return results


def report(app: App, results: list[Check], out=sys.stdout) -> int:
    print(f"shipyard doctor ▸ {app.name} at {app.dir}", file=out)
    for c in results:
        print(f"  {MARKS[c.status]} {c.name:<12} {c.detail}", file=out)
        if c.fix and c.status in (FAIL, WARN):
            print(f"    {'':<12} fix: {c.fix}", file=out)
    failed = [c.name for c in results if c.status == FAIL]
    if failed:
        print(f"shipyard doctor ▸ {len(failed)} problem(s): {', '.join(failed)}", file=out)
        return 1
    print("shipyard doctor ▸ all checks passed", file=out)
    return 0


def main(args) -> int:
    app = App.at(args.app, args.root)
    root_given = app.root != default_root().absolute()
    user = owner.first_owner(app.dir) if os.geteuid() == 0 else None
    if user is not None:  # root: check as the app's owner
        # what the checks import when they first talk to supervisord or over HTTP, loaded
        # while we can read it all: the owner may not read root's Python (e.g. under /root)
        import http.client  # noqa: F401
        import xmlrpc.client  # noqa: F401

        import supervisor.xmlrpc  # noqa: F401

        return owner.call_as(user, lambda: report(app, run_checks(app, root_given=root_given)))
    return report(app, run_checks(app, root_given=root_given))
