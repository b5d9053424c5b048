"""A group runs one call on every host and gives back each host's result."""

from __future__ import annotations

import threading

import pytest

from shipyard.errors import ShipyardError
from shipyard.group import Group


def test_every_host_has_its_result_in_order_and_a_failure_is_that_hosts_alone():
    def call(h: int) -> int:
        if h == 2:
            raise ShipyardError("host 2 is down")
        return h * 10

    results = Group([1, 2, 3]).run(call)
    assert [r.host for r in results] == [1, 2, 3]
    assert [r.value for r in results.succeeded] == [10, 30]
    assert [(r.host, r.error) for r in results.failed] == [(2, "host 2 is down")]
    with pytest.raises(ShipyardError, match="host 2 is down"):
        results.raise_first()
    assert Group([]).run(call) == []


def test_the_calls_run_at_once_and_in_the_background():
    barrier = threading.Barrier(3, timeout=10)  # each call waits for the others: in parallel
    assert Group("abc").run(lambda h: barrier.wait() is not None).values() == [True] * 3
    go = threading.Event()
    running = Group([1, 2]).start(lambda h: go.wait(10) and h)
    go.set()
    assert running.join().values() == [1, 2]


def test_rolling_batches_keep_the_order():
    assert [g.hosts for g in Group(range(5)).batches(2)] == [[0, 1], [2, 3], [4]]
    assert [g.hosts for g in Group(range(3)).batches(None)] == [[0, 1, 2]]


def test_a_large_group_runs_at_most_max_threads_calls_at_once():
    from shipyard.group import MAX_THREADS

    lock, now, most = threading.Lock(), [0], [0]
    barrier = threading.Barrier(MAX_THREADS, timeout=10)  # the first MAX_THREADS meet

    def call(h: int) -> int:
        with lock:
            now[0] += 1
            most[0] = max(most[0], now[0])
        if h < MAX_THREADS:
            barrier.wait()
        with lock:
            now[0] -= 1
        return h

    hosts = list(range(MAX_THREADS + 8))
    assert Group(hosts).run(call).values() == hosts
    assert most[0] == MAX_THREADS
