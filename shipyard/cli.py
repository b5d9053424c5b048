"""The ``shipyard`` command: a thin layer over functions the tests call directly."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import signal
import sys
from pathlib import Path

from . import __version__
from .app import App
from .errors import ShipyardError


def cmd_init(args: argparse.Namespace) -> int:
    from . import repo

    app = App.at(args.app, args.root)
    changed = repo.create(app, branch=args.branch, port=args.port)
    for line in changed:
        print(f"  {line}")
    print(
        f"shipyard ▸ {app.name} is ready at {app.dir}"
        if changed
        else f"shipyard ▸ {app.name} at {app.dir} is already complete; nothing to do"
    )
    print("Add it as a git remote in your project, then push:")
    for line in repo.remote_lines(app):
        print(f"  {line}")
    print(f"  git push production {args.branch}")
    return 0


def pushed_tag(app: App, sha: str) -> str | None:
    """The tag a push named (recorded by proc-receive), else a tag on the commit."""
    from .release import git

    record = app.run / "tags" / sha
    if record.is_file():
        try:
            return json.loads(record.read_text()).get("tag")
        finally:
            record.unlink(missing_ok=True)
    tags = git(app.repo, "tag", "--points-at", sha).split()
    return tags[-1] if tags else None


def cmd_run_deploy(args: argparse.Namespace) -> int:
    """The detached deploy worker started by the post-receive hook."""
    from .config import load_host_config
    from .deploy import Deploy, execute
    from .options import parse_options, wants_color
    from .report import Reporter

    def stop(signum: int, _frame: object) -> None:
        raise ShipyardError(f"deploy stopped by signal {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    app = App.at(args.app, args.root).require()
    options = parse_options(args.option or [])
    out = Reporter(sys.stdout, color=wants_color(options, dict(os.environ)))
    d = Deploy(
        app=app,
        host=load_host_config(app.config_file),
        number=args.number,
        sha=args.sha,
        ref=args.ref,
        out=out,
        pusher=os.environ.get("SHIPYARD_PUSHER") or getpass.getuser(),
        tag=pushed_tag(app, args.sha),
        options=options,
    )
    return 0 if execute(d) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shipyard", description="git push-to-deploy")
    parser.add_argument("--version", action="version", version=f"shipyard {__version__}")
    parser.add_argument(
        "--root", type=Path, default=None, help="deploy root (default: $SHIPYARD_ROOT or ~/apps)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("init", help="create (or repair) an app: bare repo, hooks, layout")
    p.add_argument("app")
    p.add_argument("--branch", default="main", help="the branch whose pushes deploy")
    p.add_argument("--port", type=int, default=8000, help="where the web process listens")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("run-deploy", help=argparse.SUPPRESS)
    p.add_argument("app")
    p.add_argument("--number", type=int, required=True)
    p.add_argument("--sha", required=True)
    p.add_argument("--ref", required=True)
    p.add_argument("--option", action="append")
    p.set_defaults(func=cmd_run_deploy)

    from .peers import add_commands  # many hosts: receiver, peers, sync

    add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.root is None and os.environ.get("SHIPYARD_ROOT"):
        args.root = Path(os.environ["SHIPYARD_ROOT"])
    try:
        code = args.func(args)
    except ShipyardError as exc:
        print(f"shipyard: error: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
