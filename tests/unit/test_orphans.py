"""What a dead embedded supervisord left: found by its session, stopped before a new one."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from shipyard import programs as prov
from shipyard.app import App
from shipyard.orphans import alive, orphans, stop_orphans

# A session leader (the "supervisord") that leaves a worker and a "master" behind and exits;
# the master, sent TERM, forks a new worker into the same session and goes on, as a gunicorn
# master does for the workers it loses before it acts on its own TERM.
SESSION = r"""
import os, signal, sys, time
def worker():
    if os.fork() == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(60)
        os._exit(0)
if os.fork() == 0:  # the master
    def lost_one(*_):
        worker()
    signal.signal(signal.SIGTERM, lost_one)
    worker()
    print(os.getpid(), flush=True)
    while True:
        time.sleep(0.01)
time.sleep(0.3)
"""


def test_what_a_master_forks_while_it_is_stopped_is_stopped_too(tmp_path: Path):
    app = App(tmp_path, "mysite")
    app.dir.mkdir()
    app.run.mkdir()
    leader = subprocess.Popen(
        [sys.executable, "-c", SESSION], cwd=app.dir, start_new_session=True,
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    master = int(leader.stdout.readline())
    prov.pid_file(app).write_text(f"{leader.pid}\n")
    leader.wait(timeout=10)  # the leader is gone: what is left of its session are orphans
    left = orphans(app)
    try:
        assert master in left and len(left) == 2  # the master and its first worker
        assert stop_orphans(app, grace=0.5) >= 3  # the worker forked on TERM counted too
        deadline = time.monotonic() + 5
        while orphans(app) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert orphans(app) == []
        assert not any(alive(pid) for pid in left)
    finally:
        for pid in orphans(app):
            os.kill(pid, 9)


def test_a_supervisord_that_does_not_answer_is_waited_for_until_it_is_gone(tmp_path: Path):
    from shipyard.config import HostConfig
    from shipyard.supervisord import Supervisor

    app = App(tmp_path, "mysite")
    app.run.mkdir(parents=True)
    sv = Supervisor(app, HostConfig())
    stranger = subprocess.Popen(["sleep", "30"])  # a pid file's number, reused: no wait
    try:
        prov.pid_file(app).write_text(f"{stranger.pid}\n")
        started = time.monotonic()
        assert not sv.answers_once_settled(wait=5)
        assert time.monotonic() - started < 1
    finally:
        stranger.kill()
        stranger.wait()
    # one on its way out (here: named supervisord, gone after 0.3 s): waited for, then not
    dying = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.3)", "supervisord"])
    prov.pid_file(app).write_text(f"{dying.pid}\n")
    started = time.monotonic()
    assert not sv.answers_once_settled(wait=5)  # its exit (a zombie here) ends the wait
    assert 0.2 < time.monotonic() - started < 4
    dying.wait()
