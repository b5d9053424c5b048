"""The options of `shipyard receiver`, apart from the server: every `shipyard` command builds
its parser with them, and must not import the server (and the deploy) to do so."""

from __future__ import annotations

import argparse
from pathlib import Path

MAX_CONNECTIONS = 64
REQUEST_TIMEOUT = 10.0  # seconds from accept to an authenticated request (TLS, headers)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `shipyard receiver` (the subcommand is added by shipyard/peers.py)."""
    p.add_argument("--listen", required=True, metavar="ADDR:PORT")
    p.add_argument("--max-pack", type=int, default=512, metavar="MiB", help="largest pack taken")
    p.add_argument(
        "--alias",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="another address the primary's `peers` may list this host under",
    )
    p.add_argument(
        "--all-interfaces",
        action="store_true",
        help="allow --listen 0.0.0.0:PORT or [::]:PORT (then name this host with --alias)",
    )
    p.add_argument("--tls-cert", type=Path, metavar="FILE", help="serve TLS with this certificate")
    p.add_argument("--tls-key", type=Path, metavar="FILE", help="… and this private key")
    p.add_argument(
        "--make-cert",
        action="store_true",
        help="create --tls-cert/--tls-key (self-signed) unless they exist, print its pin, exit",
    )
    p.add_argument("--max-connections", type=int, default=MAX_CONNECTIONS, metavar="N")
    p.add_argument(
        "--request-timeout",
        type=float,
        default=REQUEST_TIMEOUT,
        metavar="SECONDS",
        help="time a client has to send a signed request's headers",
    )
