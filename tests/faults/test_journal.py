"""The deploy lock's note as a journal, and the fault switch itself (no deploys: fast)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import faultlib

from shipyard import fault_injection, lock

observe = faultlib.observe

HOLD_AND_DIE = """
import os, signal, sys
from pathlib import Path
from shipyard import lock
with lock.exclusive(Path(sys.argv[1]), {"deploy": 7, "sha": "ab" * 20, "recoverable": True}) as h:
    h.update(phase="restart", release="20261129T013000Z-1a2b3c4")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def killed_holder(path) -> None:
    proc = subprocess.run([sys.executable, "-c", HOLD_AND_DIE, str(path)])
    assert proc.returncode == -signal.SIGKILL


def test_a_killed_holders_note_reaches_the_next_holder_that_can_resume_it(tmp_path, observe):
    row = observe("fault", "deploy holding the lock SIGKILLed; a lock user that cannot resume it")
    path = tmp_path / "deploy.lock"
    killed_holder(path)
    assert not lock.is_held(path)  # the kernel dropped the flock: no stale lock
    with lock.exclusive(path, {"deploy": "receiver prepare"}) as held:
        assert held.stale["deploy"] == 7 and held.stale["phase"] == "restart"
        note = lock.holder(path)
        assert note["deploy"] == "receiver prepare" and note["stale"]["deploy"] == 7
    assert lock.pending(lock.holder(path))["deploy"] == 7  # kept for the next holder
    with lock.exclusive(path, {"deploy": 8, "recoverable": True}) as held:
        assert held.stale["release"] == "20261129T013000Z-1a2b3c4"
        held.replace({"deploy": 8, "recoverable": True})  # took it over
    assert path.read_text() == ""
    row["outcome"] = (
        "the kernel drops the flock (no stale lock); the dead deploy's note survives other lock "
        "holders until one that can resume it takes it over, then the file is empty"
    )


def test_note_updates_are_never_half_written(tmp_path):
    path = tmp_path / "deploy.lock"
    with lock.exclusive(path, {"deploy": 1, "long": "x" * 500}) as held:
        held.replace({"deploy": 1})
        raw = path.read_bytes()
        assert json.loads(raw) == {"deploy": 1} and raw == raw.rstrip(b" ")
        held.update(phase="venv")
        assert json.loads(path.read_bytes())["phase"] == "venv"


def test_faults_file_is_trusted_only_from_the_deploy_user(tmp_path, observe):
    row = observe("security", "run/faults.json world-writable, or a symlink")
    run = tmp_path / "run"
    fault_injection.arm(run, {"at": "venv", "action": "pause", "timeout": 0.01})
    path = run / fault_injection.FILE
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    path.chmod(0o646)
    fault_injection.point(run, "venv")  # ignored: would otherwise pause
    assert path.exists() and not (run / fault_injection.PAUSED).exists()
    path.chmod(0o600)
    target = tmp_path / "elsewhere.json"
    os.rename(path, target)
    path.symlink_to(target)
    fault_injection.point(run, "venv")  # a symlink: ignored
    assert path.is_symlink()
    path.unlink()
    fault_injection.arm(run, {"at": "venv", "action": "pause", "timeout": 0.01}, {"at": "finish"})
    fault_injection.point(run, "checkout")  # not armed there
    fault_injection.point(run, "venv")  # fires once, the other fault stays
    assert json.loads(path.read_text()) == [{"at": "finish"}]
    row["outcome"] = "ignored (owner, mode, no symlinks); an armed fault fires once"
