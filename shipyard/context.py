"""The deploy's context: what one deploy knows (``Deploy``) and one step of its plan (``Phase``).

The lowest layer of the deploy: every phase module (migrate, data, supervise, peers, …),
the engine that runs phases (engine.py) and the plans (deploy.py) import it, and it
imports none of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .app import App
from .config import AppConfig, HostConfig
from .lock import Held
from .release import Manifest
from .report import Reporter


@dataclass
class Deploy:
    """Everything one deploy knows; phases read it and fill it in."""

    app: App
    host: HostConfig
    number: int
    sha: str
    ref: str
    out: Reporter
    pusher: str = "unknown"
    tag: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    kind: str = "push"  # push | deploy (`shipyard deploy`) | rollback
    release_id: str = ""  # preset: make exactly this kept release live (a rollback)
    notes: list[str] = field(default_factory=list)  # warnings shown under the title
    reused: bool = False
    config: AppConfig = field(default_factory=AppConfig)
    procfile: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    previous: str | None = None
    venv_key: str | None = None
    migrations: list[str] = field(default_factory=list)
    migrations_known: bool = True  # False: a migrate command ran that cannot list what it did
    problems: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    manifest: Manifest | None = None
    processes: dict = field(default_factory=dict)  # supervise: what ran before, what runs now
    cluster: Any = None  # peers.Cluster while peers are prepared and switched
    switched_at: float | None = None  # wall clock when `current` moved (switch skew)
    journal: Held | None = None  # the deploy lock's note: how far this deploy got
    recovery: dict | None = None  # set when this run completes an interrupted deploy
    maintenance_was_on: bool = False  # `-o maintenance` found the page on: leave it on
    committed: bool = True  # False on a peer: the other hosts may still send it back
    peer: bool = False  # run by a receiver for its primary: only jobs naming this host (cron.py)
    trash: list[Path] | None = None  # a list: pruned dirs renamed aside, deleted after the outcome

    @property
    def release(self) -> Path:
        return self.app.release_dir(self.release_id)

    @property
    def short(self) -> str:
        label = f"{self.sha[:7]} ({self.tag})" if self.tag else self.sha[:7]
        return label


@dataclass(frozen=True)
class Phase:
    """One named step of a plan, with the undo of what it changed (None: nothing to undo)."""

    name: str
    run: Callable[[Deploy], str]
    undo: Callable[[Deploy], None] | None = None
    fatal: bool = True  # False: a failure is reported, the deploy goes on
