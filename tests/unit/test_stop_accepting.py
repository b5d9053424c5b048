"""The old web's stop before a deploy's answer (converge.stop_accepting): its master closes
the shared socket first and signals its workers after; a worker accepts until it has that
signal, so the handover sends it the same TERM once the master has closed the socket."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

from shipyard import converge
from shipyard.ports import holds, listening_sockets

# a "master" on the shared socket with one "worker" that answers "old" to every connection:
# on TERM the master closes its socket, and signals its worker only 2 s later (a master not
# scheduled again for a while, on a loaded machine); the worker exits on TERM
MASTER = r"""
import os, signal, socket, sys, time
sock = socket.socket(fileno=int(sys.argv[1]))
worker = os.fork()
if worker == 0:
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    while True:
        conn, _ = sock.accept()
        conn.sendall(b"old")
        conn.close()
def stop(*_):
    sock.close()
    time.sleep(2)
    os.kill(worker, signal.SIGTERM)
    os.waitpid(worker, 0)
    os._exit(0)
signal.signal(signal.SIGTERM, stop)
print(worker, flush=True)
while True:
    time.sleep(1)
"""


def test_after_the_old_masters_close_no_old_worker_takes_a_request():
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    master = subprocess.Popen(
        [sys.executable, "-c", MASTER, str(listener.fileno())],
        pass_fds=[listener.fileno()],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        worker = int(master.stdout.readline())
        with socket.create_connection(("127.0.0.1", port), timeout=5) as before:
            assert before.recv(16) == b"old"  # the old web serves until its TERM
        sockets = listening_sockets(port)
        assert sockets and holds(worker, sockets)
        master.send_signal(signal.SIGTERM)
        started = time.monotonic()
        converge.stop_accepting([master.pid], sockets)
        assert time.monotonic() - started < 1.5  # it did not wait for the master's own signal
        # the listener stays open here: the new web's, which has not accepted yet
        with socket.create_connection(("127.0.0.1", port), timeout=5) as after:
            after.settimeout(0.5)
            try:
                got = after.recv(16)
            except TimeoutError:
                got = b"(queued for the new web)"
        assert got != b"old"
    finally:
        master.kill()
        master.wait()
        listener.close()
