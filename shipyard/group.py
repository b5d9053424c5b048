"""A group of hosts and what one call did on each (Fabric's ``ThreadingGroup``/``GroupResult``).

``Group(hosts).run(call)`` calls ``call(host)`` for every host at once, each in a thread
of its own, and returns a ``GroupResult``: one ``HostResult`` per host, in the group's
order, holding what the call returned or, if it raised, its message. The threads only
call; whoever ran the group reads the results and decides (all or none, go back…), so
no state is shared between them. ``batches`` makes the rolling groups of a rollout;
``start`` runs the calls in the background (a peer's prepare, while the primary builds).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from .errors import ShipyardError

H = TypeVar("H")
MAX_THREADS = 32


@dataclass(frozen=True)
class HostResult(Generic[H]):
    """What one call did on one host: its value, or the message of what it raised."""

    host: H
    value: Any = None
    error: str | None = None
    exception: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class GroupResult(list[HostResult[H]]):
    """The results of one call on a group, one per host, in the group's order."""

    @property
    def failed(self) -> list[HostResult[H]]:
        return [r for r in self if not r.ok]

    @property
    def succeeded(self) -> list[HostResult[H]]:
        return [r for r in self if r.ok]

    def values(self) -> list[Any]:
        return [r.value for r in self]

    def raise_first(self) -> GroupResult[H]:
        """Raise what the first failed call raised (for calls whose own failures are
        values, so that what raised is a bug, never swallowed)."""
        for r in self:
            if r.exception is not None:
                raise r.exception
        return self


def message(exc: BaseException) -> str:
    """An exception as the line a host's failure is reported by."""
    if isinstance(exc, ShipyardError):
        return exc.message
    return f"{type(exc).__name__}: {exc}"


def call_on(host: H, call: Callable[[H], Any]) -> HostResult[H]:
    try:
        return HostResult(host, call(host))
    except Exception as exc:  # noqa: BLE001 - in a thread: any failure is that host's result
        return HostResult(host, error=message(exc), exception=exc)


class Running(Generic[H]):
    """A group's calls running in the background (daemon threads: a failed deploy never
    waits for a slow host); ``join`` waits for all and gives their results."""

    def __init__(self, hosts: list[H], call: Callable[[H], Any]) -> None:
        self.results: list[HostResult[H] | None] = [None] * len(hosts)
        self.threads = [
            threading.Thread(target=self._one, args=(i, h, call), daemon=True)
            for i, h in enumerate(hosts)
        ]
        for t in self.threads:
            t.start()

    def _one(self, i: int, host: H, call: Callable[[H], Any]) -> None:
        self.results[i] = call_on(host, call)

    def join(self) -> GroupResult[H]:
        for t in self.threads:
            t.join()
        return GroupResult(r for r in self.results if r is not None)


class Group(Generic[H]):
    """Hosts to run one call on, all at once."""

    def __init__(self, hosts: Iterable[H]) -> None:
        self.hosts = list(hosts)

    def __len__(self) -> int:
        return len(self.hosts)

    def __iter__(self):
        return iter(self.hosts)

    def run(self, call: Callable[[H], Any]) -> GroupResult[H]:
        """``call`` on every host in parallel (at most MAX_THREADS at a time); returns when
        every call has, even when this thread is interrupted meanwhile (a signal's error is
        raised once they are done). Threads of its own, not ``concurrent.futures``: that
        import (with ``logging``) cost every deploy with peers ~6 ms of CPU."""
        if not self.hosts:
            return GroupResult()
        results: list[HostResult[H] | None] = [None] * len(self.hosts)
        todo = iter(enumerate(self.hosts))
        taking = threading.Lock()

        def work() -> None:
            while True:
                with taking:
                    item = next(todo, None)
                if item is None:
                    return
                results[item[0]] = call_on(item[1], call)

        threads = [threading.Thread(target=work) for _ in range(min(MAX_THREADS, len(self)))]
        for t in threads:
            t.start()
        try:
            for t in threads:
                t.join()
        except BaseException:  # a signal's error: raised once every call has returned
            for t in threads:
                t.join()
            raise
        return GroupResult(r for r in results if r is not None)

    def start(self, call: Callable[[H], Any]) -> Running[H]:
        """``call`` on every host in the background; ``join`` the result when needed."""
        return Running(self.hosts, call)

    def batches(self, per: int | None) -> list[Group[H]]:
        """The rolling groups of ``per`` hosts each, in order (None or 0: one group of all)."""
        per = per or len(self.hosts) or 1
        return [Group(self.hosts[i : i + per]) for i in range(0, len(self.hosts), per)]
