"""How many of each process type run on this host: the live release's types, and the host's
own counts (``<app>/scale.json``, written by ``shipyard scale``) that win over the app's
``[processes]`` in every deploy."""

from __future__ import annotations

import json
from pathlib import Path

from .app import App
from .config import load_procfile
from .errors import ConfigError
from .programs import RELEASE_TYPE


def path(app: App) -> Path:
    return app.dir / "scale.json"


def counts(app: App) -> dict[str, int]:
    """The host's counts (``{}`` when none were set)."""
    try:
        data = json.loads(path(app).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path(app)}: cannot read it ({exc})", "fix or remove it") from None
    if not isinstance(data, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in data.values()
    ):
        raise ConfigError(f"{path(app)}: must map process types to counts", "fix or remove it")
    return data


def counts_for(app: App, procfile: dict[str, str], app_counts: dict[str, int]) -> dict[str, int]:
    """What a release runs: the app's ``[processes]``, then the host's counts of its types."""
    host = {t: n for t, n in counts(app).items() if t in procfile}
    return {**app_counts, **host}


def types(app: App) -> list[str]:
    """The process types the live release's Procfile runs (``release:`` is not one)."""
    rid = app.live_release()
    procfile = load_procfile(app.release_dir(rid)) if rid else {}
    return [t for t in procfile if t != RELEASE_TYPE]
