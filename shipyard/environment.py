"""The environment pushed code runs in: the deploy's own minus git's and any virtualenv's,
the app's ``.env``, where things are (``SHIPYARD_*``), the release's virtualenv first on PATH.

Plain strings and the standard library only: the launcher of every process
(shipyard/launch.py, under ``python -S``) builds it too, before the program's own start.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing's, without importing typing (or collections): the launcher
if TYPE_CHECKING:
    from collections.abc import Mapping


def layout(app: str, release_dir: str, shared_dir: str) -> dict[str, str]:
    """Where things are, for the app's commands and processes: e.g. SQLite in SHIPYARD_SHARED."""
    return {
        "SHIPYARD_APP": app,
        "SHIPYARD_RELEASE": os.path.basename(release_dir),
        "SHIPYARD_SHARED": shared_dir,
    }


def for_release(
    environ: Mapping[str, str], dotenv: dict[str, str], app: str, release_dir: str, shared_dir: str
) -> dict[str, str]:
    """``environ`` as a command of the release at ``release_dir`` gets it, ``dotenv`` loaded."""
    base = {k: v for k, v in environ.items() if not k.startswith(("GIT_", "VIRTUAL_ENV"))}
    venv_dir = os.path.join(release_dir, ".venv")
    merged = {**base, **dotenv}
    merged.update(layout(app, release_dir, shared_dir))
    merged["VIRTUAL_ENV"] = venv_dir
    merged["PATH"] = f"{os.path.join(venv_dir, 'bin')}:{base.get('PATH', '/usr/bin:/bin')}"
    merged.pop("PYTHONHOME", None)
    return merged
