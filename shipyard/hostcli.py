"""The host commands' arguments: provision, ssh-command and doctor.

Only argparse here; each command imports its module when it runs, so that
every other shipyard invocation (hooks, the deploy worker, the forced command)
does not pay for their imports.
"""

from __future__ import annotations

import argparse


def _provision(args: argparse.Namespace) -> int:
    from .provision.host import main

    return main(args)


def _ssh_command(args: argparse.Namespace) -> int:
    from .provision.shell import main

    return main(args.name, args.root)


def _doctor(args: argparse.Namespace) -> int:
    from .doctor import main

    return main(args)


def register(sub) -> None:
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
    p.set_defaults(func=_provision)

    p = sub.add_parser(
        "ssh-command",
        help="the forced command of provisioned SSH keys (reads SSH_ORIGINAL_COMMAND)",
    )
    p.add_argument("name", help="the key's name, recorded as the pusher")
    p.set_defaults(func=_ssh_command)

    p = sub.add_parser("doctor", help="check this host for an app: git, hooks, permissions, …")
    p.add_argument("app")
    p.set_defaults(func=_doctor)
