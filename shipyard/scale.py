"""Host-side process counts: ``shipyard scale APP web=3 worker=0``.

The counts live on the host, in ``<app>/scale.json``, not in the app's repo:
every deploy reads them, and they win over the app's ``[processes]`` (a type
the pushed Procfile no longer has is ignored, not an error). A change is
applied like a restart, under the deploy lock and numbered in history, but
only the types whose count changed start afresh (the web through the
blue/green handover: no request fails); ``TYPE=default`` drops a host count.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from .app import App
from .change import making
from .counts import counts, path, types
from .errors import ConfigError, ShipyardError
from .handover import check_type, handover
from .hosts import Fleet, apply, finish_interrupted, new_token, replace

COUNT = re.compile(r"^([A-Za-z0-9_]+)=(\d{1,3}|default)$")
MAX = 100


def parse(app: App, words: list[str]) -> dict[str, int | None]:
    """``web=3 worker=0`` (``None``: back to the app's count); refuses anything else."""
    if not words:
        raise ConfigError("name at least one TYPE=COUNT", "e.g. shipyard scale mysite web=2")
    wanted: dict[str, int | None] = {}
    for word in words:
        match = COUNT.match(word)
        if not match or (match[2] != "default" and int(match[2]) > MAX):
            raise ConfigError(
                f"{word!r}: write TYPE=COUNT with a count from 0 to {MAX} (or TYPE=default)",
                "e.g. web=3 worker=0",
            )
        check_type(app, match[1])
        wanted[match[1]] = None if match[2] == "default" else int(match[2])
    return wanted


def text(data: dict[str, int]) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def merged(app: App, wanted: dict[str, int | None]) -> dict[str, int]:
    """The host's counts with ``wanted`` applied (``None``: the host count dropped)."""
    return {t: n for t, n in {**counts(app), **wanted}.items() if n is not None}


def write(app: App, data: dict[str, int]) -> None:
    replace(path(app), text(data), 0o644)


def describe(app: App) -> str:
    """One line for `processes`: the host's counts, if any."""
    host = counts(app)
    if not host:
        return ""
    shown = " ".join(f"{t}={n}" for t, n in sorted(host.items()))
    return f"  scale (host, wins over the app's [processes]): {shown}"


def run(app: App, words: list[str], term=None) -> None:
    """``shipyard scale``: new counts, applied with zero failed requests."""
    if not words:
        for t in types(app):
            print(f"{t}={counts(app).get(t, 'default')}")
        return
    wanted = parse(app, words)
    with making(app, "scale", term=term) as c:
        old = counts(app)
        new = merged(app, wanted)
        what = "scale " + " ".join(
            f"{t}={'default' if n is None else n}" for t, n in wanted.items()
        )
        c.out.title(f"scale #{c.number}: {what.removeprefix('scale ')} by {c.by}")
        fleet = Fleet.load(app, c.host)
        if fleet.peers:  # every host gets its new counts before any restarts
            fleet.warn_drained(c.out, "scale")
            if finish_interrupted(fleet, c.out):  # it changed scale.json: count again
                new = merged(app, wanted)
            token = new_token("scale", c.number)
            request = {"counts": wanted}
            names = apply(fleet, c.out, token, request, path(app), text(new), 0o644, False)
            c.record(what.removeprefix("scale "), counts=new, hosts=names)
            c.out.final(f"{app.name}: {what} on {len(names)} hosts", True)
            return
        existed = path(app).exists()
        write(app, new)
        started = time.monotonic()
        try:
            detail = handover(app, c.host, c.out, restart=False)
        except Exception:
            if existed:
                write(app, old)
            else:
                path(app).unlink()
            c.out.line(f"  ↩ {path(app).name} back as it was")
            raise
        c.out.ok("restart", time.monotonic() - started, detail)
        c.record(what.removeprefix("scale "), counts=new)
        c.out.final(f"{app.name}: {what}", True)


def staged(app: App, data: dict) -> tuple[Path, str, int]:
    """A peer's new counts for the receiver's ``stage`` route, merged into this host's own."""
    wanted = data.get("counts") or {}
    if not isinstance(wanted, dict) or not all(
        isinstance(k, str) and (v is None or (isinstance(v, int) and not isinstance(v, bool)))
        for k, v in wanted.items()
    ):
        raise ShipyardError("counts must map process types to counts")
    words = [f"{t}={'default' if n is None else n}" for t, n in wanted.items()]
    return path(app), text(merged(app, parse(app, words))), 0o644
