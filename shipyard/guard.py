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

from .errors import RootRefused

TYPE_CHECKING = False  # typing's, without importing typing: the forced SSH command's path
if TYPE_CHECKING:  # nor app's dataclasses and pathlib: the launcher of every process's
    from .app import App
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


def config_stamp(path: str | os.PathLike) -> str:
    """The host config file as it is now (device, inode, size, times; '' when it is not there).

    ``programs.conf`` hands the launcher the stamp of the config that allowed root when it
    was written: while the file is that very one, unchanged, the launcher need not parse it
    again (tomllib and the config's parser) to know that root is still allowed."""
    try:
        st = os.stat(path)
    except OSError:
        return ""
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def allowed_root_stamp(app: App) -> str | None:
    """The stamp of the host config for the launcher, running as root where it allows root."""
    if os.geteuid() != 0:
        return None
    stamp = config_stamp(app.config_file)
    return stamp if stamp and root_problem(app) is None else None


def root_hint(app: App) -> str:
    return (
        "deploy as an unprivileged user (`shipyard provision` creates one), "
        f"or set `allow_root = true` in {app.config_file}"
    )


def safe_umask() -> None:
    """Files a deploy creates are never group- or world-writable, whatever umask it inherited."""
    os.umask(os.umask(0o022) | 0o022)
