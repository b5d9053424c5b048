"""Who may deploy: never root unless the host says so.

A deploy runs the pushed code (build steps, migrations, the release command,
the processes) as the user the deploy runs as. As root, a push could do
anything to the host, so deploys refuse to run as root unless the host's
``shipyard.toml`` sets ``allow_root = true`` (throwaway containers, the test
suite); ``shipyard init --allow-root`` writes it.
"""

from __future__ import annotations

import os

from .app import App
from .config import HostConfig
from .errors import ShipyardError


def root_problem(app: App, host: HostConfig) -> str | None:
    if os.geteuid() == 0 and not host.allow_root:
        return "refusing to deploy as root: the pushed code would run as root"
    return None


def check_not_root(app: App, host: HostConfig) -> None:
    problem = root_problem(app, host)
    if problem:
        raise ShipyardError(problem, root_hint(app))


def root_hint(app: App) -> str:
    return (
        "deploy as an unprivileged user (`shipyard provision` creates one), "
        f"or set `allow_root = true` in {app.config_file}"
    )


def safe_umask() -> None:
    """Files a deploy creates are never group- or world-writable, whatever umask it inherited."""
    os.umask(os.umask(0o022) | 0o022)
