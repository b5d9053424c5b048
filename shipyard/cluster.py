"""The cluster as a primary sees it during one deploy: its peers (``PeerState``), the
drained ones, the packs it sends, and the primary's own part of the rollout.

A noun of its own, below the deploy's context (context.py types ``Deploy.cluster`` with
it); peers.py drives it.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field

from shipyard.receiver.client import Peer

from .app import App
from .config import HostConfig, read_secret
from .errors import PhaseError, ShipyardError
from .group import Running


@dataclass
class Prepared:
    """What one peer's prepare came to: made in its thread, taken in by the primary's."""

    name: str = ""
    live_before: str | None = None
    objects: int = 0
    bytes_sent: int = 0
    prepared: bool = False
    reused: bool = False
    error: str | None = None


@dataclass
class Switched:
    """What one peer's switch came to (``switched`` None: unknown, the answer was lost)."""

    switched: bool | None = None
    switched_at: float | None = None
    previous: str | None = None
    error: str | None = None


def local_name(host: HostConfig) -> str:
    return host.name or socket.gethostname()


def active_peers(host: HostConfig) -> list[str]:
    return [p for p in host.peers if p not in host.drained]


@dataclass
class PeerState:
    """One peer during one deploy."""

    client: object
    address: str
    name: str = ""
    live_before: str | None = None
    prepared: bool = False
    reused: bool = False
    switched: bool | None = False  # None: unknown (the answer to switch was lost)
    switched_at: float | None = None
    previous: str | None = None
    error: str | None = None
    objects: int = 0
    bytes_sent: int = 0
    aborted: bool = False
    error_reverting: str | None = None

    @property
    def label(self) -> str:
        return self.name or self.address

    def took(self, r: Prepared) -> None:
        """What its prepare came to (peers.prepare_one, in its thread)."""
        self.name, self.live_before = r.name or self.name, r.live_before
        self.objects, self.bytes_sent = r.objects, r.bytes_sent
        self.prepared, self.reused, self.error = r.prepared, r.reused, r.error

    def took_switch(self, r: Switched) -> None:
        """What its switch came to (peers.switch_one, in its thread)."""
        self.switched, self.switched_at, self.previous = r.switched, r.switched_at, r.previous
        self.error = r.error

    def note(self) -> dict:
        """What the journal keeps of it: enough to send it back after the primary died."""
        return {
            "address": self.address,
            "name": self.name,
            "live_before": self.live_before,
            "reused": self.reused,
        }

    @classmethod
    def from_note(cls, note: dict, app: App, secret: bytes | None, host: HostConfig) -> PeerState:
        address = str(note.get("address"))
        pin = host.peer_tls.get(address)
        return cls(
            Peer(address, app.name, secret or b"", host.peer_timeout, pin),
            address,
            name=str(note.get("name") or ""),
            live_before=note.get("live_before"),
            reused=bool(note.get("reused")),
        )


@dataclass
class Cluster:
    peers: list[PeerState]
    drained: list[str]
    local_done: list = field(default_factory=list)
    skew: float = 0.0
    packs: dict = field(default_factory=dict)
    packing: threading.Lock = field(default_factory=threading.Lock)
    error: ShipyardError | None = None  # the peers could not even be set up (no secret…)
    cancelled: bool = False
    ready: threading.Event = field(default_factory=threading.Event)
    preparing: Running | None = None  # the peers' prepares, started with the checkout
    base: str | None = None  # this host's live commit: the objects go with the prepare

    @classmethod
    def load(cls, app: App, host: HostConfig) -> Cluster:
        active = active_peers(host)
        secret = cluster_secret(app, host) if active else None
        peers = [
            PeerState(Peer(a, app.name, secret, host.peer_timeout, host.peer_tls.get(a)), a)
            for a in active
        ]
        return cls(peers, [p for p in host.drained if p in host.peers])


def cluster_secret(app: App, host: HostConfig) -> bytes:
    """The secret that signs the requests to the app's peers; refused when there is none."""
    secret = read_secret(host, app.config_file)
    if not secret:
        raise PhaseError(
            f"{app.config_file} lists peers but no cluster secret",
            "set secret_file (a file only the deploy user can read) on every host; "
            "see docs/hosts.md",
        )
    return secret
