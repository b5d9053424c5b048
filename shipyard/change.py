"""A change to a live app that is not a deploy: new settings, new process counts, a restart.

It runs under the app's deploy lock like a deploy (so it never races one, and
a push that arrives meanwhile waits for it), but never waits for the lock: a
deploy in progress refuses it in one line, before anything changed. Changes
that alter what runs (``config``, ``scale``) take a deploy number and a
history line of their own, ``kind`` config or scale, outcome ``applied``, with
what changed but never a value.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TextIO

from . import history, lock, notify, release
from .app import App
from .config import HostConfig, load_host_config
from .errors import LockTimeout, ShipyardError
from .guard import check_not_root
from .operate import Tee, pusher
from .options import wants_color
from .report import Masker, Reporter

APPLIED = "applied"


@dataclass
class Change:
    """One change being made: its app, who makes it, its number (if recorded) and its output."""

    app: App
    host: HostConfig
    kind: str
    out: Reporter
    by: str
    number: int | None = None
    started: float = field(default_factory=time.time)
    recorded: bool = False

    def record(self, summary: str, outcome: str = APPLIED, **extra: object) -> None:
        """The history line (no values: ``extra`` holds key names and counts only)."""
        if self.number is None or self.recorded:
            return
        self.recorded = True
        live = self.app.live_release()
        manifest = release.Manifest.load(self.app.release_dir(live)) if live else None
        history.record(
            self.app,
            {
                "deploy": self.number,
                "kind": self.kind,
                "sha": manifest.sha if manifest else None,
                "tag": manifest.tag if manifest else None,
                "release": live,
                "pusher": self.by,
                "start": self.started,
                "duration": round(time.time() - self.started, 3),
                "outcome": outcome,
                "options": {"message": summary},
                **extra,
            },
        )
        if outcome == APPLIED and self.kind in ("config", "scale"):  # webhooks that want it
            notify.config_changed(self.app, self.host, self.by, summary)


def check_unlocked(app: App) -> None:
    """Refuse (one line) while a deploy holds the app's lock."""
    path = app.deploy_lock
    if lock.is_held(path):
        raise ShipyardError(
            f"{lock.describe(lock.holder(path))} is running on {app.name}: nothing was changed",
            f"wait for it (`shipyard status {app.name}`) and try again",
        )


@contextlib.contextmanager
def making(
    app: App, kind: str, numbered: bool = True, term: TextIO | None = None
) -> Iterator[Change]:
    """Hold the deploy lock for a change (refused if a deploy holds it); give it a number."""
    host = load_host_config(app.config_file)
    check_not_root(app, host)
    check_unlocked(app)
    term = sys.stdout if term is None else term
    by = pusher()
    note = {"deploy": kind, "sha": "-", "pusher": by, "since": time.time(), "pid": os.getpid()}
    try:
        with lock.exclusive(app.deploy_lock, note, timeout=0) as held:
            if held.stale:
                raise ShipyardError(
                    f"deploy #{held.stale.get('deploy', '?')} of {app.name} was interrupted: "
                    "nothing was changed",
                    f"finish it first with `shipyard recover {app.name}`",
                )
            color = wants_color({}, dict(os.environ)) and term.isatty()
            if not numbered:
                yield Change(app, host, kind, Reporter(term, color=color), by)
                return
            number = history.claim_number(app)
            held.update(deploy=number)
            with history.open_log(app, number) as log:
                out = Reporter(Tee(log, term), color=color)
                with contextlib.suppress(ShipyardError, OSError):
                    out.mask = Masker(release.shared_env(app))
                change = Change(app, host, kind, out, by, number)
                try:
                    yield change
                except ShipyardError as exc:
                    change.record(f"{kind} failed", "failed", error=out.mask(exc.message))
                    raise
                change.record(kind)  # a change that recorded nothing more specific
    except LockTimeout:
        check_unlocked(app)  # says who holds it
        raise
