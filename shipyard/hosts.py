"""The hosts of an app as the operating commands see them: config, scale, restart, run, logs.

With peers, a change of settings or counts is two-step on every host::

    stage (every host, in parallel) → restart (host by host, health-checked) → settle

``stage`` writes the new file on each host (the primary's own, the peers' through their
receivers' ``stage`` route), after writing down on that host what puts the old file
back (``run/staged-<token>.json``, 0600: the old ``.env`` holds secrets). If any host
cannot take it, every host that did puts its old file back and nothing has restarted
anywhere. The restart then rolls host by host (the primary first), each one's health
check passing before the next starts; a host that fails stops the roll, every host puts
its old file back and those that had restarted restart again onto it. ``settle`` drops
the records. Docs: docs/hosts.md (Operating many hosts).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from shipyard.receiver.client import Peer, PeerError

from . import lock
from .app import App
from .cluster import active_peers, cluster_secret, local_name
from .config import HostConfig
from .errors import HostFailed, ShipyardError
from .group import Group
from .handover import check_type, handover
from .report import Reporter, Skip

TOKEN = re.compile(r"^(config|scale)-\d{1,9}-[0-9a-f]{8}$")
HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\[\]-]{0,99}$")  # a name or ADDR:PORT
LOCK_WAIT = 5.0
THIS_HOST = "this host"


# --- one file changed with its undo written down first ---------------------------------


def replace(path: Path, text: str, mode: int = 0o600) -> None:
    """``path`` replaced atomically by ``text`` (a temp file, fsync'd, renamed over it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def record_path(app: App, token: str) -> Path:
    return app.run / f"staged-{check_token(token)}.json"


def check_token(token: str) -> str:
    if not TOKEN.match(token):
        raise ShipyardError(f"invalid change token {token[:40]!r}")
    return token


def stage(app: App, token: str, path: Path, text: str, mode: int = 0o600) -> None:
    """Write ``text`` to ``path``, once what puts the old file back is on disk (staged again
    under the same token, the first record stands: it holds the file from before)."""
    record = record_path(app, token)
    if not record.exists():
        try:
            old: str | None = path.read_text()
        except FileNotFoundError:
            old = None
        note = {"path": str(path), "old": old, "mode": mode, "at": time.time()}
        replace(record, json.dumps(note), 0o600)
    replace(path, text, mode)


def settle(app: App, token: str, keep: bool) -> bool:
    """Keep the staged file (drop its record) or put the old one back; False if none was staged."""
    record = record_path(app, token)
    try:
        note = json.loads(record.read_text())
    except FileNotFoundError:
        return False
    if not keep:
        path = Path(note["path"])
        if note.get("old") is None:
            path.unlink(missing_ok=True)
        else:
            replace(path, note["old"], int(note.get("mode", 0o600)))
    record.unlink()
    return True


# what a kind of change writes on a host, made from the request: (path, text, mode)
Staged = Callable[[App, dict], tuple[Path, str, int]]


def new_token(kind: str, number: int | None) -> str:
    return f"{kind}-{number or 0}-{secrets.token_hex(4)}"


# --- the app's hosts --------------------------------------------------------------------


@dataclass
class Member:
    """One host of the app: this one (``peer`` None) or a peer, by its receiver."""

    label: str
    address: str
    peer: object | None = None
    staged: bool = False
    restarted: bool = False

    def said(self, message: str) -> str:
        """``message`` about this host, named once (a peer's errors often start with its
        address already)."""
        if self.peer is not None and message.startswith(self.address):
            rest = message[len(self.address) :].lstrip(": ")
            return f"{self.where}: {rest}" if self.label != self.address else message
        return f"{self.where}: {message}"

    @property
    def where(self) -> str:
        if self.peer is None:
            return f"{self.label} (this host)"
        return self.address if self.label == self.address else f"{self.label} ({self.address})"


@dataclass
class Fleet:
    app: App
    host: HostConfig
    members: list[Member]
    drained: list[str] = field(default_factory=list)
    named: bool = False

    @classmethod
    def load(cls, app: App, host: HostConfig) -> Fleet:
        active = active_peers(host)
        secret = cluster_secret(app, host) if active else None
        members = [Member(local_name(host), THIS_HOST)]
        for address in active:
            peer = Peer(address, app.name, secret, host.peer_timeout, host.peer_tls.get(address))
            members.append(Member(address, address, peer))
        return cls(app, host, members, [p for p in host.drained if p in host.peers])

    @property
    def peers(self) -> list[Member]:
        return self.members[1:]

    def warn_drained(self, out: Reporter, what: str) -> None:
        for address in self.drained:
            out.warn(f"peer {address} is drained: skipped ({what} it there by hand if need be)")

    def learn_names(self) -> dict[str, str]:
        """Ask every peer its name (``info``); returns the errors of those that did not answer."""
        errors: dict[str, str] = {}

        def one(m: Member) -> None:
            try:
                m.label = m.peer.call("GET", "info", retries=1).get("name") or m.address
            except PeerError as exc:
                errors[m.address] = exc.message

        Group(self.peers).run(one).raise_first()
        self.named = True
        return errors

    def require_all(self) -> None:
        """Every peer answers (and is named), or the command stops before touching any host."""
        errors = self.learn_names()
        if errors:
            raise HostFailed(
                "; ".join(m.said(errors[m.address]) for m in self.peers if m.address in errors),
                "nothing was changed on any host; bring it back, or drain it "
                f"(drained = [...] in {self.app.config_file})",
            )

    def pick(self, name: str | None) -> list[Member]:
        """Every host, or the one ``--host NAME`` names (its name or its address)."""
        if name is None:
            return list(self.members)
        if not HOST_NAME.match(name):
            raise ShipyardError(
                f"--host {name[:60]!r} is not a host name",
                "give a host's name as `shipyard peers APP` lists it (e.g. web2), or ADDR:PORT",
            )
        if name in (self.members[0].label, THIS_HOST):
            return [self.members[0]]
        for m in self.peers:
            if name == m.address:
                return [m]
        errors = self.learn_names() if self.peers else {}
        for m in self.members:
            if name == m.label:
                return [m]
        known = ", ".join(m.label for m in self.members)
        silent = "".join(f"; {a} did not answer ({e})" for a, e in errors.items())
        raise ShipyardError(
            f"no host {name!r} among {self.app.name}'s hosts: {known}{silent}",
            f"see `shipyard peers {self.app.name}`",
        )


def stage_everywhere(
    fleet: Fleet, out: Reporter, token: str, request: dict, path: Path, text: str, mode: int
) -> None:
    """Step ``stage``: every host writes the new file (undo written down first), or none does."""
    failures: dict[str, str] = {}
    started = time.monotonic()

    def one(m: Member) -> None:
        try:
            if m.peer is None:
                stage(fleet.app, token, path, text, mode)
            else:
                answer = m.peer.call(
                    "POST", "stage", {**request, "token": token}, retries=1, idempotent=False
                )
                m.label = answer.get("name") or m.label
                if not answer.get("ok"):
                    raise ShipyardError(str(answer.get("error") or "refused"))
            m.staged = True
        except (PeerError, ShipyardError, OSError) as exc:
            failures[m.address] = exc.message if isinstance(exc, ShipyardError) else str(exc)

    Group(fleet.members).run(one).raise_first()
    if failures:
        unstage(fleet, out, token)
        fleet.learn_names()  # to name the hosts that refused (their refusals do not)
        which = [m for m in fleet.members if m.address in failures]
        out.fail("stage", time.monotonic() - started, ", ".join(m.label for m in which))
        raise HostFailed(
            "; ".join(m.said(failures[m.address]) for m in which),
            f"nothing changed anywhere; fix {', '.join(m.label for m in which)} and try again"
            + (
                f', or drain it (drained = ["{which[0].address}"] in {fleet.app.config_file})'
                if which[0].peer
                else ""
            ),
        )
    names = ", ".join(m.label for m in fleet.members)
    out.ok("stage", time.monotonic() - started, f"{len(fleet.members)} hosts: {names}")


def unstage(fleet: Fleet, out: Reporter, token: str, keep: bool = False) -> None:
    """Undo of ``stage`` (or, ``keep``, its end): every host that staged settles, the peers
    first and this host last, so that its record outlives theirs (``finish_interrupted``)."""

    def one(m: Member) -> None:
        if not m.staged:
            return
        try:
            if m.peer is None:
                settle(fleet.app, token, keep)
            else:
                m.peer.call("POST", "settle", {"token": token, "keep": keep})
            m.staged = False
        except (PeerError, ShipyardError, OSError) as exc:
            message = exc.message if isinstance(exc, ShipyardError) else str(exc)
            what = "drop its undo record" if keep else "put its old file back"
            out.warn(
                f"{m.where}: could not {what} ({message}); its record is in "
                f"{fleet.app.run.name}/staged-{token}.json there"
            )

    if keep and fleet.members[0].staged:
        decide(fleet.app, token)  # from here on, an interrupted change is finished, not undone
    Group(fleet.peers).run(one).raise_first()
    one(fleet.members[0])
    if not keep:
        out.line("  ↩ every host that took it has its old file back")


def decide(app: App, token: str) -> None:
    """Write down on this host that the change is kept (every host took it and restarted)."""
    record = record_path(app, token)
    note = json.loads(record.read_text())
    replace(record, json.dumps({**note, "keep": True}), 0o600)


def interrupted(app: App) -> list[tuple[str, bool]]:
    """The changes this host staged and never settled (the primary died): (token, kept)."""
    found = []
    for path in sorted(app.run.glob("staged-*.json")):
        token = path.name.removeprefix("staged-").removesuffix(".json")
        if TOKEN.match(token):
            try:
                found.append((token, bool(json.loads(path.read_text()).get("keep"))))
            except (OSError, ValueError):
                continue
    return found


def finish_interrupted(fleet: Fleet, out: Reporter) -> bool:
    """Before a change: one that was interrupted is finished on every host as its record says,
    kept if it had been decided, else every host's old file put back; True if there was one."""
    found = interrupted(fleet.app)
    for token, keep in found:
        how = "kept on" if keep else "undone on"
        out.warn(f"an interrupted change ({token}) is {how} every host first")
        for m in fleet.members:
            m.staged = True  # a peer without the record answers found=False: nothing to do
        unstage(fleet, out, token, keep)
        if not keep:
            out.warn(
                f"a host that had restarted onto it runs its settings until restarted "
                f"(`shipyard restart {fleet.app.name}`)"
            )
    return bool(found)


def restart_one(fleet: Fleet, m: Member, out: Reporter, restart: bool | list[str]) -> str:
    """One host's handover (health check included); raises HostFailed naming it."""
    started = time.monotonic()
    label = f"[{m.label}] restart"
    try:
        if m.peer is None:
            types = restart if isinstance(restart, bool) else frozenset(restart)
            detail = handover(fleet.app, fleet.host, out, types)
        else:
            answer = m.peer.call(
                "POST",
                "restart",
                {"restart": restart},
                on_line=lambda line: out.line(f"  [{m.label}] {line.strip()}"),
                idempotent=False,
            )
            if not answer.get("ok"):
                raise ShipyardError(str(answer.get("error") or "restart failed"))
            detail = answer.get("detail") or ""
            if answer.get("skipped"):
                detail = Skip(detail)
    except (PeerError, ShipyardError) as exc:
        out.fail(label, time.monotonic() - started, exc.message)
        raise HostFailed(m.said(exc.message), exc.hint) from None
    m.restarted = True
    if isinstance(detail, Skip):
        out.skip(label, detail)
    else:
        out.ok(label, time.monotonic() - started, detail)
    return detail


def roll(
    fleet: Fleet, out: Reporter, restart: bool | list[str], on_fail: Callable | None = None
) -> list[Member]:
    """Restart host by host, the primary first; a failing host stops the roll (HostFailed)."""
    done: list[Member] = []
    for m in fleet.members:
        try:
            restart_one(fleet, m, out, restart)
        except HostFailed as exc:
            rest = [x.label for x in fleet.members if x is not m and x not in done]
            kept = ", ".join(x.label for x in done) or "none"
            exc.hint = (
                f"the roll stopped at {m.label}, which kept its previous processes; "
                f"restarted before it: {kept}; not restarted: {', '.join(rest) or 'none'}"
            )
            if on_fail:
                on_fail(done, exc)
            raise
        done.append(m)
    return done


def apply(
    fleet: Fleet,
    out: Reporter,
    token: str,
    request: dict,
    path: Path,
    text: str,
    mode: int,
    restart: bool | list[str] | None,
) -> list[str]:
    """stage → restart (``None``: none) → settle on every host; returns the hosts' names."""
    stage_everywhere(fleet, out, token, request, path, text, mode)
    if restart is not None:

        def back(done: list[Member], exc: HostFailed) -> None:
            unstage(fleet, out, token)
            again = []
            for m in done:  # they run the new settings: onto the old ones again
                try:
                    restart_one(fleet, m, out, restart)
                    again.append(m.label)
                except HostFailed as more:
                    exc.hint += f"; and restarting {m.label} onto its old file failed: {more}"
            exc.hint += (
                "; every host has its old file back"
                + (f", {', '.join(again)} restarted onto it" if again else "")
                + ": nothing changed anywhere"
            )

        roll(fleet, out, restart, on_fail=back)
    else:
        out.skip("restart", "--no-restart: every host's processes get it at their next restart")
    unstage(fleet, out, token, keep=True)
    return [m.label for m in fleet.members]


# --- the peer's side: the receiver's routes stage, settle, restart -----------------------


def held(app: App, what: str):
    """The peer's deploy lock, briefly: a change never waits behind a deploy."""
    info = {"deploy": f"receiver {what}", "pusher": "primary", "since": time.time()}
    return lock.exclusive(app.deploy_lock, info, timeout=LOCK_WAIT)


def take(app: App, host: HostConfig, data: dict, kinds: dict[str, Staged]) -> dict:
    """Route ``stage``: the new ``.env`` (the same keys set and unset as on the primary) or
    the new counts, written on this host with its undo record. ``kinds`` makes the file
    from the request, by the token's kind (``settings.staged``, ``scale.staged``)."""
    token = check_token(str(data.get("token", "")))
    kind = token.split("-", 1)[0]
    with held(app, f"{kind} stage"):
        path, text, mode = kinds[kind](app, data)
        stage(app, token, path, text, mode)
    return {"ok": True, "name": local_name(host)}


def settle_here(app: App, host: HostConfig, data: dict) -> dict:
    """Route ``settle``: keep what ``stage`` wrote, or put the old file back."""
    token = check_token(str(data.get("token", "")))
    with held(app, "settle"):
        found = settle(app, token, bool(data.get("keep")))
    return {"ok": True, "found": found, "name": local_name(host)}


def restart_here(app: App, host: HostConfig, data: dict, out: Reporter) -> dict:
    """Route ``restart``: this host's handover onto its live release, health check included."""
    wanted = data.get("restart", True)
    if isinstance(wanted, list):
        if not all(isinstance(t, str) for t in wanted):
            raise ShipyardError("restart must be true, false or a list of process types")
        for kind in wanted:
            check_type(app, kind)
        wanted = frozenset(wanted)
    elif not isinstance(wanted, bool):
        raise ShipyardError("restart must be true, false or a list of process types")
    with held(app, "restart"):
        detail = handover(app, host, out, wanted)
    return {"ok": True, "detail": str(detail), "skipped": isinstance(detail, Skip)}
