"""The ``shipyard`` command: a thin layer over functions the tests call directly."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from . import __version__
from .app import App
from .errors import ShipyardError

# argparse, json, signal, threading: imported where used, off the forced SSH command's way
# to git-receive-pack (tests/unit/test_startup_imports.py)
TYPE_CHECKING = False  # typing's, without importing typing
if TYPE_CHECKING:
    import argparse


def cmd_init(args: argparse.Namespace) -> int:
    from . import repo
    from .config import load_host_config
    from .programs import check_socket_path, listen_socket

    app = App.at(args.app, args.root)
    # before anything is created: the first deploy would fail at restart on such a root
    check_socket_path(app.run / "supervisord.sock", "supervisord socket", reserve=8)
    check_socket_path(listen_socket(app, 65535), "web socket")
    changed = repo.create(app, branch=args.branch, port=args.port, allow_root=args.allow_root)
    for line in changed:
        print(f"  {line}")
    if os.geteuid() == 0 and not load_host_config(app.config_file).allow_root:
        print(
            "  note: you are root, and deploys refuse to run as root; push as an unprivileged "
            "user (`shipyard provision`), or run `shipyard init --allow-root` on a throwaway host"
        )
    print(
        f"shipyard ▸ {app.name} is ready at {app.dir}"
        if changed
        else f"shipyard ▸ {app.name} at {app.dir} is already complete; nothing to do"
    )
    print("Add it as a git remote in your project, then push:")
    for line in repo.remote_lines(app):
        print(f"  {line}")
    print(f"  git push production {load_host_config(app.config_file).branch}")
    return 0


def cmd_recover(args: argparse.Namespace) -> int:
    """Complete or close a deploy that was killed (the post-receive hook runs this too)."""
    from . import guard, recover
    from .config import load_host_config
    from .options import wants_color
    from .report import Reporter

    app = existing_app(args)
    host = load_host_config(app.config_file)
    guard.check_not_root(app, host)
    out = Reporter(sys.stdout, wants_color({}, dict(os.environ)), heartbeat=host.heartbeat)
    lost = None
    if args.number:
        lost = {"deploy": args.number, "sha": args.sha, "ref": args.ref, "since": time.time()}
    return 0 if recover.run(app, host, out, into_log=args.into_log, lost=lost) else 1


def existing_app(args: argparse.Namespace) -> App:
    return App.at(args.app, args.root).require()


def emit(data: object, text: str, as_json: bool) -> int:
    """Print a view; a message or tag from a push shows its control characters spelled out."""
    import json

    from .report import escape

    safe = "\n".join(escape(line) for line in text.split("\n"))
    print(json.dumps(data, indent=2, sort_keys=True, default=str) if as_json else safe)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from . import views

    data = views.status(existing_app(args))
    return emit(data, views.render_status(data), args.json)


def cmd_releases(args: argparse.Namespace) -> int:
    from . import views

    data = views.releases(existing_app(args))
    return emit(data, views.render_releases(data), args.json)


def cmd_history(args: argparse.Namespace) -> int:
    from . import views

    data = views.deploy_history(existing_app(args), args.limit)
    return emit(data, views.render_history(data), args.json)


def deploy_number(text: str) -> int:
    digits = text.removeprefix("#")
    if not digits.isdigit() or int(digits) < 1:
        import argparse

        raise argparse.ArgumentTypeError(f"{text!r} is not a deploy number (e.g. 42 or #42)")
    return int(digits)


def cmd_log(args: argparse.Namespace) -> int:
    from . import history
    from .hooks.worker import Lines, copy_log

    app = existing_app(args)
    number = args.deploy or history.last_number(app)
    if not number:
        raise ShipyardError(f"{app.name} has no deploys yet")
    path = history.log_path(app, number)
    if not path.is_file():
        last = history.last_number(app)
        raise ShipyardError(
            f"no deploy #{number} in {app.name}",
            f"deploys are numbered 1 to {last}" if last else "nothing was deployed yet",
        )

    def finished() -> bool:
        entry = history.find(app, number)
        return entry is None or entry.get("outcome") not in ("running", "waiting")

    # colour as the deploy wrote it only onto a terminal that wants it (a pipe, ssh without -t)
    colour = sys.stdout.isatty() and "NO_COLOR" not in os.environ
    sys.stdout.flush()
    copy_log(
        path,
        finished if args.follow else lambda: True,
        poll=0.1,
        lines=Lines(strip_ansi=not colour),
    )
    entry = history.find(app, number) or {}
    if entry.get("outcome") == "interrupted":
        print(f"shipyard ▸ deploy #{number} was interrupted: it stopped without an outcome")
    return 0


def push_options(raw: list[str] | None) -> dict[str, str]:
    from .options import parse_options

    return parse_options(raw or [])


def cmd_deploy(args: argparse.Namespace) -> int:
    from . import operate
    from .config import load_host_config
    from .guard import check_not_root

    app = existing_app(args)
    host = load_host_config(app.config_file)
    check_not_root(app, host)
    options = push_options(args.option)
    ref = args.ref or f"refs/heads/{host.branch}"
    sha, tag = operate.resolve(app, ref)
    return 0 if operate.run_foreground(app, sha, tag, "deploy", options, detach=True) else 1


def cmd_rollback(args: argparse.Namespace) -> int:
    from . import operate
    from .config import load_host_config
    from .guard import check_not_root

    app = existing_app(args)
    check_not_root(app, load_host_config(app.config_file))
    options = push_options(args.option)
    ok = operate.rollback(app, args.release, options, run_release=args.run_release, detach=True)
    return 0 if ok else 1


def cmd_processes(args: argparse.Namespace) -> int:
    """Show what runs (pid, uptime, release); --start / --stop the app's supervisord."""
    from . import process_views, supervisord

    app = App.at(args.app, args.root).require()
    if args.stop:
        stopped = supervisord.shutdown(app)
        print(f"shipyard ▸ {app.name}: {'stopped' if stopped else 'nothing was running'}")
        return 0
    if args.start:
        from . import guard

        guard.check_not_root(app, supervisord.host_of(app))
        how = supervisord.start(app)
        print(f"shipyard ▸ {app.name}: supervisord {how}")
    for line in process_views.format_status(app, process_views.status(app)):
        print(line)
    from .scale import describe

    counts = describe(app)
    if counts:
        print(counts)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from . import settings

    return settings.command(args.words, args.root, args.show, args.stdin, not args.no_restart)


def cmd_restart(args: argparse.Namespace) -> int:
    from . import restart

    restart.run(existing_app(args), args.process)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from . import oneoff

    app, wait = existing_app(args), not args.no_wait
    return oneoff.run(app, args.command, args.release, wait=wait, host_name=args.host)


def cmd_logs(args: argparse.Namespace) -> int:
    from . import logs

    color = True if args.color else None
    return logs.show(existing_app(args), args.lines, args.follow, args.process, color, args.host)


def cmd_scale(args: argparse.Namespace) -> int:
    from . import scale

    scale.run(existing_app(args), args.counts)
    return 0


def cmd_boot(args: argparse.Namespace) -> int:
    from . import boot
    from .app import default_root

    return boot.start_all((args.root or default_root()).absolute())


def cmd_cron(args: argparse.Namespace) -> int:
    """List the app's scheduled jobs; `run NAME` runs one now; `exec NAME` is what cron runs."""
    from . import cron
    from .config import JOB_NAME, load_host_config
    from .guard import check_not_root

    app = existing_app(args)
    host = load_host_config(app.config_file)
    if args.action is None:
        data = cron.listing(app, host)
        return emit(data, cron.render(data), args.json)
    if not args.name or not JOB_NAME.match(args.name):
        raise ShipyardError(
            f"{args.name!r} is not a job name" if args.name else "name the job",
            f"e.g. shipyard cron {app.name} {args.action} clear-sessions "
            f"(`shipyard cron {app.name}` lists them)",
        )
    check_not_root(app, host)
    return cron.execute(app, args.name, echo=sys.stdout if args.action == "run" else None)


def cmd_peers(args: argparse.Namespace) -> int:
    from .peers import disagreements, peers_status

    app = App.at(args.app, args.root).require()
    rows = peers_status(app, processes=True)
    if args.json:
        import json

        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        name = r["host"] or "?"
        print(
            f"{name:<16} {r['address']:<22} {r['role']:<8} {r['state']:<12} "
            f"{r['live'] or '-'}" + (f"  ({r['error']})" if r.get("error") else "")
        )
    disagree = disagreements(rows)
    for problem in disagree:
        print(f"! {problem}")
    return 0 if not disagree and all(r["state"] != "unreachable" for r in rows) else 1


def cmd_sync(args: argparse.Namespace) -> int:
    from .options import wants_color
    from .peers import keep_in_sync, sync
    from .report import Reporter

    app = App.at(args.app, args.root).require()
    out = Reporter(sys.stdout, color=wants_color({}, dict(os.environ)) and sys.stdout.isatty())
    if args.every is None:
        return 0 if sync(app, out) else 1
    if not args.every > 0:  # also NaN
        raise ShipyardError(f"--every {args.every:g}: not a number of seconds above 0")
    import signal
    import threading

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):  # a sync under way finishes first
        signal.signal(signum, lambda *_: stop.set())
    keep_in_sync(app, out, args.every, stop)
    return 0


def cmd_receiver(args: argparse.Namespace) -> int:
    from .receiver.server import main

    return main(args)


def cmd_provision(args: argparse.Namespace) -> int:
    from .provision.host import main

    return main(args)


def cmd_ssh_command(args: argparse.Namespace) -> int:
    from .provision.shell import main

    return main(args.name, args.root, run=run)


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import main

    return main(args)


def cmd_domains(args) -> int:
    from . import domains

    return domains.command(existing_app(args), args.action, args.domains)


def cmd_maintenance(args) -> int:
    from . import domains

    return domains.maintenance(existing_app(args), args.state, args.message)


def cmd_tls(args) -> int:
    from . import tls

    return tls.command(args.root, args.app, args.all, args.certificate, args.key, args.acme)


def cmd_proxy_reload(args) -> int:
    from . import proxy

    return proxy.reload_command(args.sites, args.prefix, args.conf, args.home, args.checked)


class _Ignored:
    """A command's parser that is not built: every call on it does nothing."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: self


class _OnlyOne:
    """The sub-parsers with only ``command``'s built (about 1 ms instead of 6 for them all)."""

    def __init__(self, sub: argparse._SubParsersAction, command: str) -> None:
        self.sub, self.command = sub, command

    def add_parser(self, name: str, **kwargs):
        if self.command in (name, *kwargs.get("aliases", ())):
            return self.sub.add_parser(name, **kwargs)
        return _Ignored()


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The CLI's parser; ``only``: with that command's sub-parser alone (it is known)."""
    import argparse

    parser = argparse.ArgumentParser(prog="shipyard", description="git push-to-deploy")
    parser.add_argument("--version", action="version", version=f"shipyard {__version__}")
    parser.add_argument(
        "--root", type=Path, default=None, help="deploy root (default: $SHIPYARD_ROOT or ~/apps)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    if only:
        sub = _OnlyOne(sub, only)

    p = sub.add_parser("init", help="create (or repair) an app: bare repo, hooks, layout")
    p.add_argument("app")
    p.add_argument(
        "--branch",
        help="the branch whose pushes deploy (default main); on an existing app, changes it",
    )
    p.add_argument(
        "--port",
        type=int,
        help="where the web process listens (default 8000); on an existing app, changes it",
    )
    p.add_argument(
        "--allow-root",
        action="store_true",
        help="let deploys run as root (writes allow_root = true; throwaway hosts, tests)",
    )
    p.set_defaults(func=cmd_init)

    option_help = "as `git push -o`: skip-migrate, no-restart, color=…, message=…"

    p = sub.add_parser("status", help="what is live, whether a deploy is running, processes")
    p.add_argument("app")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("releases", help="the kept releases, the live one marked")
    p.add_argument("app")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_releases)

    p = sub.add_parser("history", help="recent deploys and their outcomes")
    p.add_argument("app")
    p.add_argument("-n", "--limit", type=int, default=20, help="how many (default 20)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_history)

    p = sub.add_parser("log", help="replay a deploy's log (the latest by default)")
    p.add_argument("app")
    p.add_argument("deploy", nargs="?", type=deploy_number, help="deploy number, e.g. 42")
    p.add_argument("-f", "--follow", action="store_true", help="tail a running deploy to its end")
    p.set_defaults(func=cmd_log)

    p = sub.add_parser("deploy", help="deploy a ref already in the repo, here and now")
    p.add_argument("app")
    p.add_argument("ref", nargs="?", help="branch, tag or commit (default: the deploy branch)")
    p.add_argument("-o", "--option", action="append", metavar="OPTION", help=option_help)
    p.set_defaults(func=cmd_deploy)

    p = sub.add_parser("rollback", help="make a kept release live again (the previous one)")
    p.add_argument("app")
    p.add_argument("release", nargs="?", help="release id, commit or tag (default: previous)")
    p.add_argument("-o", "--option", action="append", metavar="OPTION", help=option_help)
    p.add_argument(
        "--run-release",
        action="store_true",
        help="also run the Procfile's release: command (a rollback runs it only when asked)",
    )
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser(
        "recover", help="complete (after its switch) or close a deploy that was killed"
    )
    p.add_argument("app")
    # from post-receive: the output goes to the deploy's log; which deploy's worker died
    p.add_argument("--into-log", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--number", type=int, help=argparse.SUPPRESS)
    p.add_argument("--sha", help=argparse.SUPPRESS)
    p.add_argument("--ref", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_recover)

    p = sub.add_parser(
        "processes", aliases=["ps"], help="the app's processes: state, pid, uptime, release"
    )
    p.add_argument("app")
    what = p.add_mutually_exclusive_group()
    what.add_argument(
        "--start", action="store_true", help="start the app's supervisord (after a reboot)"
    )
    what.add_argument(
        "--stop", action="store_true", help="stop the processes and the app's own supervisord"
    )
    p.set_defaults(func=cmd_processes)

    p = sub.add_parser(
        "config",
        help="the app's settings (shared/.env): list, set, unset, get",
        usage="shipyard config APP [--show] | config set APP KEY=VALUE… [--no-restart] | "
        "config set APP KEY --stdin | config unset APP KEY… | config get APP KEY",
    )
    p.add_argument("words", nargs="+", metavar="[set|unset|get] APP ARG")
    p.add_argument("--show", action="store_true", help="print the values (hidden by default)")
    p.add_argument("--stdin", action="store_true", help="read the one KEY's value from stdin")
    p.add_argument("--no-restart", action="store_true", help="change .env, restart nothing")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("restart", help="hand the processes over again (zero downtime), no deploy")
    p.add_argument("app")
    p.add_argument("--process", metavar="TYPE", help="only this Procfile type, e.g. web")
    p.set_defaults(func=cmd_restart)

    p = sub.add_parser(
        "run",
        help="a one-off command in the live release (its venv, .env, directory)",
        usage="shipyard run APP [--release ID] [--host NAME] [--no-wait] -- COMMAND [ARGS…]",
    )
    p.add_argument("app")
    p.add_argument("--release", help="run in this kept release instead (id, commit or tag)")
    p.add_argument("--host", metavar="NAME", help="many hosts: run on this peer (default: here)")
    p.add_argument(
        "--no-wait", action="store_true", help="fail instead of waiting for a running migration"
    )
    p.add_argument("command", nargs=argparse.REMAINDER, help="after --: the command and its args")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("logs", help="the processes' output, merged by time (-f to follow)")
    p.add_argument("app")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    p.add_argument("-n", "--lines", type=int, default=100, help="how many lines (default 100)")
    p.add_argument("--process", metavar="TYPE", help="one Procfile type (web) or process (web.1)")
    p.add_argument("--color", action="store_true", help="colour even without a terminal (ssh)")
    p.add_argument("--host", metavar="NAME", help="many hosts: only this host's lines")
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("scale", help="host-side process counts, e.g. web=3 worker=0")
    p.add_argument("app")
    p.add_argument("counts", nargs="*", metavar="TYPE=COUNT", help="a count, or TYPE=default")
    p.set_defaults(func=cmd_scale)

    p = sub.add_parser(
        "boot", help="start every app's processes (run at boot by provision's set-up)"
    )
    p.set_defaults(func=cmd_boot)

    p = sub.add_parser("cron", help="the app's scheduled jobs; `run NAME` runs one now")
    p.add_argument("app")
    p.add_argument(
        "action", nargs="?", choices=("run", "exec"), help="run: now, here; exec: as cron"
    )
    p.add_argument("name", nargs="?", help="the job, as named in [cron]")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_cron)

    # the host commands: provision, ssh-command, doctor
    p = sub.add_parser(
        "provision", help="set up this host (as root): deploy user, shipyard, SSH keys"
    )
    p.add_argument("--user", default="deploy", help="the deploy user (default: deploy)")
    p.add_argument(
        "--key",
        action="append",
        metavar="NAME=FILE",
        help="authorise a public key; deploys pushed with it are recorded as by NAME",
    )
    p.add_argument("--app", action="append", metavar="APP", help="also create this app")
    p.add_argument(
        "--port", type=int, help="the web port of the --app (shipyard init APP --port P)"
    )
    p.add_argument(
        "--source", help="what to install: a checkout, wheel/sdist, or requirement (default: this)"
    )
    p.add_argument("--python", help="the interpreter for the deploy user's shipyard")
    p.add_argument(
        "--supervisor",
        choices=("auto", "system", "none"),
        default="auto",
        help="supervisord: the system's (Debian package) when present, or shipyard's own",
    )
    p.add_argument(
        "--receiver",
        metavar="ADDR:PORT",
        help="many hosts, on a peer: run `shipyard receiver --listen ADDR:PORT` under supervisord",
    )
    p.add_argument(
        "--sync",
        action="append",
        metavar="APP",
        help="many hosts, on the primary: keep APP's peers on its live release (every 30 s)",
    )
    p.add_argument(
        "--proxy",
        action="store_true",
        help="the front door: nginx and certbot, the user's sites dir and its reload helper",
    )
    p.add_argument("--dry-run", action="store_true", help="print what would change; change nothing")
    p.set_defaults(func=cmd_provision)

    p = sub.add_parser(
        "ssh-command",
        help="the forced command of provisioned SSH keys (reads SSH_ORIGINAL_COMMAND)",
    )
    p.add_argument("name", help="the key's name, recorded as the pusher")
    p.set_defaults(func=cmd_ssh_command)

    p = sub.add_parser("doctor", help="check this host for an app: git, hooks, permissions, …")
    p.add_argument("app")
    p.set_defaults(func=cmd_doctor)

    from .receiver.options import add_arguments as add_receiver_arguments

    p = sub.add_parser("receiver", help="serve this host's apps to their primary (many hosts)")
    add_receiver_arguments(p)
    p.set_defaults(func=cmd_receiver)
    p = sub.add_parser("peers", help="every host of an app with its live release")
    p.add_argument("app")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_peers)
    p = sub.add_parser("sync", help="bring every peer to this host's live release")
    p.add_argument("app")
    p.add_argument(
        "--every",
        type=float,
        metavar="SECONDS",
        help="keep doing it: sync the peers that are behind every SECONDS (until stopped)",
    )
    p.set_defaults(func=cmd_sync)

    # the front door: domains, maintenance, tls and root's proxy-reload helper
    p = sub.add_parser("domains", help="the domains the proxy serves the app on")
    p.add_argument("app")
    p.add_argument("action", choices=("list", "add", "remove"))
    p.add_argument("domains", nargs="*", metavar="DOMAIN")
    p.set_defaults(func=cmd_domains)
    p = sub.add_parser("maintenance", help="answer 503 with a maintenance page (processes run on)")
    p.add_argument("app")
    p.add_argument("state", choices=("on", "off"))
    p.add_argument("--message", help="the text of the plain maintenance page")
    p.set_defaults(func=cmd_maintenance)
    p = sub.add_parser("tls", help="get or renew the app's certificate, or install given files")
    p.add_argument("app", nargs="?")
    p.add_argument("--all", action="store_true", help="renew every app's ACME certificate (cron)")
    p.add_argument("--certificate", type=Path, help="a PEM certificate chain (operator-provided)")
    p.add_argument("--key", type=Path, help="its private key")
    p.add_argument("--acme", action="store_true", help="by ACME, in place of operator files")
    p.set_defaults(func=cmd_tls)
    p = sub.add_parser("proxy-reload", help="(root) check the deploy users' sites, reload nginx")
    p.add_argument("--sites", type=Path, default=Path("/etc/nginx/shipyard"))
    for hidden in ("--prefix", "--conf"):  # the tests' own nginx
        p.add_argument(hidden, help=argparse.SUPPRESS)
    p.add_argument("--home", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--checked", type=Path, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_proxy_reload)
    return parser


def forced_command(argv: list[str]) -> argparse.Namespace | None:
    """``ssh-command NAME``, the forced command of every push over SSH, read without the
    parser: building every command's parser first (or importing argparse) cost each push
    more than deciding."""
    if len(argv) == 2 and argv[0] == "ssh-command" and not argv[1].startswith("-"):
        from types import SimpleNamespace

        return SimpleNamespace(root=None, name=argv[1], func=cmd_ssh_command)  # as parsed
    return None


def run(argv: list[str] | None = None, only: str | None = None) -> int:
    """Parse ``argv`` and run its command; its exit status. The forced SSH command runs the
    command it allows through here, in its own process (``only``: that command)."""
    argv = sys.argv[1:] if argv is None else argv
    args = forced_command(argv) or build_parser(only).parse_args(argv)
    if args.root is None and os.environ.get("SHIPYARD_ROOT"):
        args.root = Path(os.environ["SHIPYARD_ROOT"])
    try:
        return args.func(args)
    except ShipyardError as exc:
        print(f"shipyard: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def main(argv: list[str] | None = None) -> None:
    from .guard import safe_umask

    safe_umask()
    sys.exit(run(argv))
