"""Who may deploy: never root unless the host says so.

A deploy runs the pushed code (build steps, migrations, the release command,
the processes) as the user the deploy runs as. As root, a push could do
anything to the host, so deploys refuse to run as root unless the host's
``shipyard.toml`` sets ``allow_root = true`` (throwaway containers, the test
suite); ``shipyard init --allow-root`` writes it.

``check_not_root`` is the one check: every way in that runs pushed code calls
it first (proc-receive, the deploy worker, ``deploy``/``rollback``/``recover``/
``processes --start``, each receiver request), and so does
``release.command_env``, the environment every pushed command runs in, so a
way in that forgot it still cannot run pushed code as root.
"""

from __future__ import annotations

import os

from .app import App
from .errors import RootRefused

TYPE_CHECKING = False  # typing's, without importing typing: the forced SSH command's path
if TYPE_CHECKING:
    from .config import HostConfig

REFUSAL = "refusing to deploy as root: the pushed code would run as root"


def root_problem(app: App, host: HostConfig | None = None) -> str | None:
    if os.geteuid() != 0:
        return None
    if host is None:
        from .config import load_host_config  # see ALLOWED_LOCAL in tests/unit/test_layers.py

        try:
            host = load_host_config(app.config_file)
        except OSError:  # no host config: nothing allows root
            return REFUSAL
    return None if host.allow_root else REFUSAL


def check_not_root(app: App, host: HostConfig | None = None) -> None:
    """Raise the one-line refusal when running as root on a host that does not allow it."""
    problem = root_problem(app, host)
    if problem:
        raise RootRefused(problem, root_hint(app))


def root_hint(app: App) -> str:
    return (
        "deploy as an unprivileged user (`shipyard provision` creates one), "
        f"or set `allow_root = true` in {app.config_file}"
    )


def safe_umask() -> None:
    """Files a deploy creates are never group- or world-writable, whatever umask it inherited."""
    os.umask(os.umask(0o022) | 0o022)
