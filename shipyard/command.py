"""Commands of the app's own, run in a release: build steps, the ``release:`` command."""

from __future__ import annotations

import subprocess

from . import release
from .context import Deploy
from .errors import PhaseError


def run_in_release(d: Deploy, command: str, what: str, timeout: float | None = None) -> str:
    """Run a shell command in the release with its venv and the app's .env; fail with its output."""
    env = release.command_env(d.app, d.release, d.env)
    try:
        result = subprocess.run(
            command,
            shell=True,
            cwd=d.release,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        raise PhaseError(
            f"{what} did not finish within {timeout:.0f}s and was stopped",
            output=(exc.stdout or b"").decode(errors="replace")
            if isinstance(exc.stdout, bytes)
            else exc.stdout or "",
        ) from None
    if result.returncode:
        raise PhaseError(f"{what} failed (exit {result.returncode})", output=result.stdout)
    return result.stdout
