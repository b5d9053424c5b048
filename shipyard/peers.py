"""Many hosts: the primary drives its peers' receivers through a two-phase deploy.

    … build → prepare-peers → migrate → rollout (switch → restart → verify on every host) → finish

``prepare-peers`` sends each peer the objects it lacks and has it run the same
checkout/link/venv/build phases the primary ran (deploy.PEER_PREPARE, run by its
receiver); if any peer fails, every prepared release is discarded and nothing
has switched. ``rollout`` then runs the switch, restart and verify phases on
every host, all at once or in batches of ``rolling`` hosts; when a host fails,
every host that switched goes back. Protocol and failure handling: docs/hosts.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import threading
import time

from shipyard.receiver import objects
from shipyard.receiver.client import Peer, PeerError

from . import fault_injection, lock, process_views, release
from .app import App
from .cluster import Cluster, PeerState, Prepared, Switched, active_peers, local_name
from .config import HostConfig, load_host_config, read_secret
from .context import Deploy, Phase
from .engine import attempt, revert
from .errors import PhaseError, ShipyardError
from .group import Group
from .report import Reporter, Skip

# --- the primary's own lines, tagged like a peer's --------------------------


class Prefixed(io.TextIOBase):
    """A stream that hands each complete line to another Reporter, tagged ``[host]``."""

    def __init__(self, out: Reporter, label: str) -> None:
        self.target, self.label, self.buf = out, label, ""

    def write(self, text: str) -> int:
        self.buf += text
        while "\n" in self.buf:
            line, self.buf = self.buf.split("\n", 1)
            self.target.relay(f"  [{self.label}] {line.strip()}")  # made safe by its reporter
        return len(text)


def size(n: int) -> str:
    return f"{n} B" if n < 1024 else f"{n / 1024:.1f} KiB" if n < 1 << 20 else f"{n >> 20} MiB"


def send_objects(d: Deploy, p: PeerState, r: Prepared, out: Reporter) -> None:
    """Info (what the peer has), then a pack of only the objects it lacks."""
    info = p.client.call("GET", "info", query={"want": d.sha})
    r.name, r.live_before = info.get("name") or "", info.get("live")
    label = r.name or p.address
    if info.get("has_want"):
        out.line(f"  [{label}] - {'objects':<14}    -    has {d.sha[:7]} already")
        return
    t0 = time.monotonic()
    haves = frozenset(info.get("refs", {}).values())
    with d.cluster.packing:  # peers at the same commit (the usual case) share one pack
        if haves not in d.cluster.packs:
            d.cluster.packs[haves] = objects.pack_missing(d.app.repo, d.sha, sorted(haves))
        r.objects, pack = d.cluster.packs[haves]
    p.client.call("POST", "objects", pack, query={"want": d.sha})
    r.bytes_sent = len(pack)
    seconds = time.monotonic() - t0
    out.line(
        f"  [{label}] ✓ {'objects':<14} {seconds:5.2f}s  {r.objects} objects, "
        f"{size(r.bytes_sent)} sent"
    )


def prepare_one(d: Deploy, p: PeerState, out: Reporter) -> Prepared:
    """One peer's prepare (in a thread of its own): the objects, then its checkout/build.

    With a live commit on this host (``cluster.base``), the objects go with the prepare, a
    pack made against that commit, which every peer in sync has: two requests per deploy
    (prepare, switch), not four. A peer that lacks the base answers ``lacks``; it is then
    asked what it has and sent what it lacks (``send_objects``), and asked again."""
    r = Prepared()
    try:
        quick = d.cluster.base is not None
        if quick:
            quick_pack(d)  # made while the primary checks out
        else:
            send_objects(d, p, r, out)
        d.cluster.ready.wait()  # the primary's checkout has chosen the release id
        if d.cluster.cancelled:
            return r
        result = ask_prepare(d, p, r, out, quick)
        if result.get("lacks") and quick:
            send_objects(d, p, r, out)
            result = ask_prepare(d, p, r, out, False)
    except PeerError as exc:
        r.error = exc.message
        return r
    except Exception as exc:  # in a thread: anything unexpected must still fail the deploy
        r.error = f"{type(exc).__name__}: {exc}"
        return r
    if result.get("ok"):
        r.prepared, r.reused = True, bool(result.get("reused"))
    else:
        r.error = result.get("error") or "prepare failed"
    return r


def quick_pack(d: Deploy) -> tuple[int, bytes]:
    """(count, pack) of what ``d.sha`` needs beyond ``cluster.base``: one for every peer."""
    base = frozenset({d.cluster.base})
    with d.cluster.packing:
        if base not in d.cluster.packs:
            d.cluster.packs[base] = objects.pack_missing(d.app.repo, d.sha, sorted(base))
        return d.cluster.packs[base]


def ask_prepare(d: Deploy, p: PeerState, r: Prepared, out: Reporter, quick: bool) -> dict:
    """POST prepare, with the pack against ``cluster.base`` when ``quick``; fills in the
    peer's name and the release live there before (from the answer)."""
    request = {
        "sha": d.sha,
        "ref": d.ref,
        "release": d.release_id,
        "number": d.number,
        "pusher": d.pusher,
        "tag": d.tag,
        "options": d.options,
        "kind": d.kind,  # a rollback: the peer must have this release, good, as it is
    }
    body: dict | bytes = request
    count, pack = 0, b""
    if quick:
        count, pack = quick_pack(d)
        body = json.dumps({**request, "base": [d.cluster.base]}).encode() + b"\n" + pack
        if d.cluster.cancelled:  # given up while the pack was made
            return {"ok": False, "error": "cancelled"}
    t0 = time.monotonic()
    result = p.client.call(
        "POST",
        "prepare",
        body,
        on_line=lambda line: out.line(f"  [{r.name or p.client.name or p.address}] {line.strip()}"),
        idempotent=False,
    )
    r.name = r.name or result.get("name") or p.client.name
    if "live" in result:
        r.live_before = result.get("live")
    if count and not result.get("lacks"):
        r.objects, r.bytes_sent = count, len(pack)
        out.line(
            f"  [{r.name or p.address}] ✓ {'objects':<14} {time.monotonic() - t0:5.2f}s  "
            f"{count} objects, {size(r.bytes_sent)} sent with the prepare"
        )
    return result


def begin(d: Deploy, ready: bool = True) -> None:
    """Start every peer's prepare in the background: objects go out at once, the prepare
    itself once the release id is known (``cluster.ready``), so the peers fetch, check out
    and build while the primary checks out, links and builds its own."""
    try:
        d.cluster = cluster = Cluster.load(d.app, d.host)
    except ShipyardError as exc:
        d.cluster = Cluster([], [], error=exc)
        return
    if ready:
        cluster.ready.set()
    # the objects go with the prepare, against this host's live commit
    if cluster.peers and d.kind != "rollback":
        live = d.app.live_release()
        m = release.Manifest.load(d.app.release_dir(live)) if live else None
        cluster.base = m.sha if m and objects.is_sha(m.sha) else None
    out = d.out
    cluster.preparing = Group(cluster.peers).start(lambda p: prepare_one(d, p, out))


def prepare(d: Deploy) -> str:
    """Phase ``prepare-peers``: wait until every peer has prepared; all or none."""
    if d.cluster is None:
        begin(d)
    cluster: Cluster = d.cluster
    if cluster.error:
        raise cluster.error
    for address in cluster.drained:
        d.out.warn(f"peer {address} is drained: skipped (remove it from `drained` to deploy it)")
    if not cluster.peers:
        return Skip("all peers drained" if cluster.drained else "no peers")
    for r in cluster.preparing.join():
        r.host.took(r.value if r.ok else Prepared(error=r.error))
    failed = [p for p in cluster.peers if p.error or not p.prepared]
    if failed:
        abort(d)
        names = ", ".join(p.label for p in failed)
        what = (
            f"roll back to a release every host still has (`shipyard releases {d.app.name}`)"
            if d.kind == "rollback"
            else f"fix {names} and push again"
        )
        raise PhaseError(
            "; ".join(f"{p.label} ({p.address}): {p.error or 'not prepared'}" for p in failed),
            f"nothing switched anywhere; {what}, or drain {names} "
            f'(drained = ["{failed[0].address}"] in {d.app.config_file})',
        )
    sent = sum(p.bytes_sent for p in cluster.peers)
    names = ", ".join(p.label for p in cluster.peers)
    return f"{len(cluster.peers)} ready: {names} ({size(sent)} of objects sent)"


def abort(d: Deploy) -> None:
    """Undo of prepare-peers: every peer discards the release it prepared (or is preparing)
    for this deploy; one still building discards it when done."""
    cluster = d.cluster
    if not cluster or not d.release_id:
        return
    cluster.cancelled = True

    def one(p: PeerState) -> bool:
        if p.aborted:
            return True
        try:
            p.client.call("POST", "abort", {"release": d.release_id})
            return True
        except PeerError as exc:
            d.out.warn(
                f"{p.label}: could not discard {d.release_id} ({exc.message}); "
                "its next deploy prunes it"
            )
            return False

    for r in Group(cluster.peers).run(one).raise_first():
        if r.value:
            r.host.prepared, r.host.aborted = False, True


def with_peers(checkout: Phase) -> Phase:
    """The checkout phase, which with peers also starts their prepare (and aborts it on undo)."""

    def run(d: Deploy) -> str:
        begin(d, ready=False)
        try:
            detail = checkout.run(d)
        except BaseException:
            d.cluster.cancelled = True  # nothing was prepared: the threads just stop
            raise
        finally:
            d.cluster.ready.set()
        return detail

    def undo(d: Deploy) -> None:
        abort(d)
        if checkout.undo:
            checkout.undo(d)

    return Phase(checkout.name, run, undo)


def switch_one(d: Deploy, p: PeerState, out: Reporter, label: str = "") -> Switched:
    """One peer's switch → restart → verify → finish (in a thread of its own); its lines
    tagged ``[label]`` (by default, the name it gave at its prepare)."""
    label = label or p.label
    try:
        result = p.client.call(
            "POST",
            "switch",
            {"release": d.release_id, "sha": d.sha, "options": d.options},
            on_line=lambda line: out.line(f"  [{label}] {line.strip()}"),
            # not repeated once sent: a lost answer leaves it unknown, and revert uses the
            # live release the peer reported before the deploy
            idempotent=False,
        )
    except PeerError as exc:
        return Switched(None if exc.sent else False, error=exc.message)  # unknown, or not
    except Exception as exc:
        return Switched(None, error=f"{type(exc).__name__}: {exc}")
    error = None if result.get("ok") else result.get("error") or "switch failed"
    return Switched(
        bool(result.get("switched")), result.get("switched_at"), result.get("previous"), error
    )


def switch_local(d: Deploy, label: str, local: list[Phase]) -> str | None:
    """The primary's own switch → restart → verify (``local``), its lines tagged like a peer's."""
    out = d.out
    d.out = Reporter(Prefixed(out, label), color=out.color, heartbeat=out.heartbeat)
    d.out.mask = out.mask
    try:
        failure = attempt(d, local, d.cluster.local_done)
    finally:
        d.out = out
    return str(failure) if failure else None


def rollout(d: Deploy, local: list[Phase]) -> str:
    """Phase ``rollout``: switch, restart and verify (``local`` on this host) every host, at
    once or in batches."""
    cluster: Cluster = d.cluster
    here = local_name(d.host)
    hosts: Group[PeerState | None] = Group([None, *cluster.peers])  # None: this host
    per = d.host.rolling or len(hosts)
    batches = hosts.batches(per)
    out = d.out
    failures: list[str] = []
    times: list[float] = []
    if d.journal is not None:  # whoever recovers this deploy if it dies sends every host back
        d.journal.update(peers=[p.note() for p in cluster.peers])
    for number, batch in enumerate(batches, 1):
        fault_injection.point(d.app.run, f"batch-{number}", "start", d.number)
        if len(batches) > 1:
            labels = ", ".join(here if h is None else h.label for h in batch)
            out.line(f"  … batch {number}/{len(batches)}: {labels}")

        def one(h: PeerState | None) -> str | Switched | None:
            if h is None:
                try:
                    return switch_local(d, here, local)
                except Exception as exc:  # never leave the other hosts switched
                    return f"{type(exc).__name__}: {exc}"
            return switch_one(d, h, out)

        failures = []
        for r in batch.run(one).raise_first():
            if r.host is None:
                if r.value:
                    failures.append(f"{here} (this host): {r.value}")
                continue
            r.host.took_switch(r.value)
            if r.host.error:
                failures.append(f"{r.host.label} ({r.host.address}): {r.host.error}")
        times += [d.switched_at for h in batch if h is None and d.switched_at]
        times += [h.switched_at for h in batch if h is not None and h.switched_at]
        if failures:
            rollback(d)
            raise PhaseError(
                "; ".join(failures),
                "every host that switched went back; nothing else changed",
            )
    cluster.skew = skew = (max(times) - min(times)) * 1000 if times else 0.0
    how = "at once" if len(batches) == 1 else f"in {len(batches)} batches of {per}"
    return f"{len(hosts)} hosts on {d.release_id} {how}, switch skew {skew:.0f} ms"


def rollback(d: Deploy) -> None:
    """Undo of rollout: every host that switched (or may have) goes back to its previous."""
    cluster: Cluster = d.cluster
    revert(d, cluster.local_done)
    cluster.local_done.clear()

    back = Group(p for p in cluster.peers if p.switched is not False)
    for r in back.run(
        lambda p: revert_peer(d.app, p, d.release_id, p.previous if p.switched else p.live_before)
    ).raise_first():
        r.host.error_reverting = r.value
        if r.value:
            warn_not_back(d.app, r.host, d.out)
        else:
            r.host.switched = False


def revert_peer(app: App, p: PeerState, rid: str, previous: str | None) -> str | None:
    """Have a peer go back from ``rid`` (if live there) and discard it unless it was kept;
    None when it did, else why not."""
    try:
        result = p.client.call(
            "POST", "revert", {"release": rid, "previous": previous, "discard": not p.reused}
        )
    except PeerError as exc:
        return exc.message
    return None if result.get("ok") else str(result.get("error"))


def warn_not_back(app: App, p: PeerState, out: Reporter) -> None:
    out.warn(
        f"{p.label}: could not switch back ({p.error_reverting}); it converges to "
        f"{app.live_release() or 'the live release'} on the next deploy or "
        f"`shipyard sync {app.name}`"
    )


def go_back(app: App, host: HostConfig, rid: str, noted: list[dict], out: Reporter) -> list[str]:
    """Every peer of an interrupted rollout (as its journal noted them) goes back from ``rid``;
    returns the labels of those that could not be reached."""
    secret = read_secret(host, app.config_file) if noted else None
    states = Group(PeerState.from_note(n, app, secret, host) for n in noted)
    lost = []
    for r in states.run(lambda p: revert_peer(app, p, rid, p.live_before)).raise_first():
        r.host.error_reverting = r.value
        if r.value:
            warn_not_back(app, r.host, out)
            lost.append(r.host.label)
    return lost


# --- status and sync (outside deploys) --------------------------------------


def peers_status(app: App, processes: bool = False) -> list[dict]:
    """Every host of the app with its live release and health; the primary first.

    With ``processes``, each row also has ``serving``: the releases its app processes
    run in (from /proc), None where that cannot be told.
    """
    host = load_host_config(app.config_file)
    live = app.live_release()
    manifest = release.Manifest.load(app.release_dir(live)) if live else None
    rows = [
        {
            "host": local_name(host),
            "address": "this host",
            "role": "primary",
            "live": live,
            "sha": manifest.sha if manifest else None,
            "state": "live" if live else "nothing live",
            "error": None,
        }
    ]
    if processes:
        rows[0]["serving"] = process_views.serving(app)
    secret = read_secret(host, app.config_file) if host.peers else None
    query = {"processes": "1"} if processes else None

    def one(address: str) -> dict:
        row = {"host": "", "address": address, "role": "peer", "live": None, "sha": None}
        if address in host.drained:
            row.update(state="drained", error=None)
        try:
            pin = host.peer_tls.get(address)
            info = Peer(address, app.name, secret or b"", min(host.peer_timeout, 5), pin).call(
                "GET", "info", query=query, retries=1
            )
        except (PeerError, ShipyardError) as exc:
            if address not in host.drained:
                row.update(state="unreachable", error=exc.message)
            return row
        row.update(host=info.get("name") or "", live=info.get("live"), sha=info.get("live_sha"))
        if processes:
            row["serving"] = info.get("serving")
        if address not in host.drained:
            row.update(state="in sync" if info.get("live") == live else "differs", error=None)
        return row

    return rows + Group(host.peers).run(one).raise_first().values()


def disagreements(rows: list[dict]) -> list[str]:
    """Where the hosts of ``peers_status(app, processes=True)`` do not serve one release."""
    primary = rows[0]["live"] if rows else None
    found = []
    for r in rows:
        name = r.get("host") or r["address"]
        serving = r.get("serving")
        if r.get("live") and serving and serving != [r["live"]]:
            found.append(f"{name} serves {', '.join(serving)} (current {r['live']})")
        if r["role"] == "peer" and r.get("state") == "differs":
            found.append(f"{name} has {r.get('live') or 'nothing'} live, this host {primary}")
    return found


def sync(app: App, out: Reporter) -> bool:
    """Bring every peer (not drained) to the primary's live release; True if all are there."""
    host = load_host_config(app.config_file)
    with lock.exclusive(app.deploy_lock, {"deploy": "sync", "pusher": "shipyard sync"}):
        live = app.live_release()
        if not live:
            out.final("nothing is live on this host yet: push first", good=False)
            return False
        d = Deploy.of_live(app, host, out, live)
        d.cluster = cluster = Cluster.load(app, host)
        cluster.ready.set()
        for address in cluster.drained:
            out.warn(f"peer {address} is drained: skipped")

        def one(p: PeerState) -> tuple[str, str | None]:
            """(its name, why it is not on ``live``), in a thread of its own."""
            try:
                info = p.client.call("GET", "info", query={"want": d.sha})
            except PeerError as exc:
                return "", exc.message
            name = info.get("name") or ""
            if info.get("live") == live:
                out.line(f"  [{name or p.address}] ✓ in sync        {live}")
                return name, None
            prepared = prepare_one(d, p, out)
            error = prepared.error
            if not error:
                error = switch_one(d, p, out, name or p.address).error  # back if it failed
            if error and prepared.prepared and not prepared.reused:
                with contextlib.suppress(PeerError):
                    p.client.call("POST", "abort", {"release": live})
            return name, error

        for r in Group(cluster.peers).run(one).raise_first():
            r.host.name, r.host.error = r.value
    failed = [p for p in cluster.peers if p.error]
    for p in failed:
        out.line(f"  ✗ {p.label} ({p.address}): {p.error}")
    if failed:
        out.final(f"{len(failed)} of {len(cluster.peers)} peers not on {live}", good=False)
        return False
    out.final(f"every host is on {live}", good=True)
    return True


def behind(app: App) -> list[str]:
    """The peers (not drained) that answer with another live release than this host's."""
    live = app.live_release()
    if not live:
        return []
    return [
        r["host"] or r["address"]
        for r in peers_status(app)
        if r["role"] == "peer" and r["state"] == "differs"
    ]


def keep_in_sync(app: App, out: Reporter, every: float, stop: threading.Event) -> None:
    """Every ``every`` seconds, sync the peers that are behind (`shipyard sync --every`).

    A peer that was down or drained during a deploy, or was just added, converges to
    the live release as soon as it answers again, without a push. A round is skipped
    while a deploy holds the lock: the deploy itself brings every peer along.
    """
    while not stop.is_set():
        try:
            host = load_host_config(app.config_file)
            if active_peers(host) and not lock.is_held(app.deploy_lock, fcntl.LOCK_EX):
                late = behind(app)
                if late:
                    out.line(f"{time.strftime('%H:%M:%S')} behind: {', '.join(late)}")
                    sync(app, out)
        except ShipyardError as exc:
            out.line(f"{time.strftime('%H:%M:%S')} sync: {exc}")
        stop.wait(every)
