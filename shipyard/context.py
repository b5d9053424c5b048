"""The deploy's context: what one deploy knows (``Deploy``), made by one factory per way a
deploy starts (a push, a rollback, a recovery's journal note, a receiver's request, the
live release); the handover's state (``ProcessState``); one step of a plan (``Phase``).

The lowest layer of the deploy: every phase module (migrate, data, supervise, peers, …),
the engine that runs phases (engine.py) and the plans (deploy.py) import it, and it
imports none of them (the cluster's type is a noun of its own, cluster.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .app import App
from .cluster import Cluster
from .config import AppConfig, HostConfig
from .lock import Held
from .programs import Program
from .release import Manifest
from .report import Reporter


@dataclass
class ProcessState:
    """The handover of a deploy's processes, as restart leaves it for verify and its undo."""

    before: list[Program] | None = None  # what ran before (restart_previous hands back to it)
    running: list[Program] | None = None  # what the handover started; None: nothing to undo
    pids: dict[str, int] = field(default_factory=dict)  # namespec → pid right after it
    # the old web's graceful stop is waited for after the deploy's answer (supervise.settle)
    settle_later: bool = False


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
    processes: ProcessState = field(default_factory=ProcessState)
    cluster: Cluster | None = None  # while peers are prepared and switched (peers.py)
    switched_at: float | None = None  # wall clock when `current` moved (switch skew)
    journal: Held | None = None  # the deploy lock's note: how far this deploy got
    recovery: dict | None = None  # set when this run completes an interrupted deploy
    maintenance_was_on: bool = False  # `-o maintenance` found the page on: leave it on
    committed: bool = True  # False on a peer: the other hosts may still send it back
    peer: bool = False  # run by a receiver for its primary: only jobs naming this host (cron.py)
    trash: list[Path] | None = None  # a list: pruned dirs renamed aside, deleted after the outcome
    data_probe: Any = None  # data.Pending: the data probe running beside the build steps
    # a receiver's: finish hands it (keep, protect) to prune once idle, not on the switch's path
    prune_later: Callable[[int, set[str]], None] | None = None

    @property
    def keep(self) -> int:
        """How many good releases ``finish`` keeps: the host's ``keep``, the app's if lower."""
        return self.host.keep if self.config.keep is None else min(self.host.keep, self.config.keep)

    @classmethod
    def for_push(
        cls,
        app: App,
        host: HostConfig,
        number: int,
        sha: str,
        ref: str,
        out: Reporter,
        *,
        pusher: str,
        tag: str | None,
        options: dict[str, str],
        kind: str = "push",
        notes: list[str] | None = None,
    ) -> Deploy:
        """A push (the post-receive worker) or ``shipyard deploy`` (kind ``deploy``) of
        ``sha`` to ``ref``."""
        return cls(app, host, number, sha, ref, out, pusher, tag, options, kind, notes=notes or [])

    @classmethod
    def for_rollback(
        cls,
        app: App,
        host: HostConfig,
        number: int,
        release_id: str,
        kept: Manifest,
        out: Reporter,
        *,
        pusher: str,
        options: dict[str, str],
        notes: list[str] | None = None,
    ) -> Deploy:
        """``shipyard rollback``: the kept release ``release_id`` (``kept`` its manifest) made
        live again, as it is."""
        ref = f"refs/heads/{host.branch}"
        d = cls.for_push(
            app, host, number, kept.sha, ref, out, pusher=pusher, tag=kept.tag, options=options,
            kind="rollback", notes=notes,
        )  # fmt: skip
        d.release_id = release_id
        return d

    @classmethod
    def from_note(cls, app: App, host: HostConfig, out: Reporter, note: dict, by: str) -> Deploy:
        """The interrupted deploy a journal note (the deploy lock's) describes, for recovery."""
        d = cls(
            app,
            host,
            note["deploy"],
            note["sha"],
            note.get("ref") or f"refs/heads/{host.branch}",
            out,
            note.get("pusher") or "unknown",
            note.get("tag"),
            note.get("options") or {},
            note.get("kind") or "push",
            note["release"],
        )
        d.reused = bool(note.get("reused"))
        d.previous = note.get("previous")
        d.recovery = {"by": by, "phase": note.get("phase"), "at": time.time()}
        return d

    @classmethod
    def for_request(
        cls,
        app: App,
        host: HostConfig,
        out: Reporter,
        *,
        sha: str,
        ref: str,
        number: int,
        release_id: str,
        pusher: str,
        tag: str | None,
        options: dict[str, str],
        kind: str,
    ) -> Deploy:
        """A peer's part of its primary's deploy (receiver/server.py checks the request)."""
        return cls(
            app, host, number, sha, ref, out, pusher, tag, options, kind, release_id, peer=True
        )

    @classmethod
    def of_live(cls, app: App, host: HostConfig, out: Reporter, release_id: str) -> Deploy:
        """A deploy-shaped view of a release already live (restart, config, scale, sync):
        its identity from its manifest when it has one."""
        m = Manifest.load(app.release_dir(release_id))
        if m is None:
            return cls(app, host, 0, "", "", out, release_id=release_id)
        return cls(app, host, m.deploy, m.sha, m.ref, out, m.pusher, m.tag, release_id=release_id)

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
