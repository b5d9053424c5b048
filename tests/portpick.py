"""Ports for the tests' servers, chosen so that two test processes never race for one.

The kernel's pick (binding port 0) comes from the ephemeral range, which every outgoing
connection also draws from, and another test process may pick the same port in the moment
between the probe and its server's bind: a server then "could not listen". Each test process
(pytest-xdist's ``gw0``, ``gw1``, …) picks from a block of its own below the ephemeral range
(``net.ipv4.ip_local_port_range`` starts at 32768), never the same port twice.
"""

from __future__ import annotations

import os
import random
import re
import socket

BASE, BLOCK, BLOCKS = 20000, 2000, 6  # 20000–31999
_given: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on, from this test process's own block."""
    match = re.fullmatch(r"gw(\d+)", os.environ.get("PYTEST_XDIST_WORKER", ""))
    block = int(match[1]) % (BLOCKS - 1) if match else BLOCKS - 1
    start = BASE + block * BLOCK
    candidates = [p for p in range(start, start + BLOCK) if p not in _given]
    random.shuffle(candidates)
    for port in candidates:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        _given.add(port)
        return port
    raise RuntimeError(f"no free port left in {start}–{start + BLOCK - 1}")
