"""Entry points that programs.conf files written by older deploys still name keep working:
``python -m shipyard.provision.launch`` and ``…provision.listen`` (shims; see their docstrings)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from shipyard import launch, programs
from shipyard.app import App

RID = "20260101T000000Z-aaaaaaa"


@pytest.fixture
def app(tmp_path: Path) -> App:
    app = App(tmp_path, "mysite")
    (app.dir / "run").mkdir(parents=True)
    app.config_file.write_text("allow_root = true\n")  # commands refuse root without it
    app.release_dir(RID).mkdir(parents=True)
    (app.release_dir(RID) / "Procfile").write_text("worker: echo hello from $SHIPYARD_PROCESS\n")
    return app


@pytest.mark.parametrize("module", ["shipyard.provision.launch", programs.LAUNCHER])
def test_the_launcher_runs_the_program_under_its_old_name_and_its_new_one(app: App, module):
    ran = subprocess.run(
        [sys.executable, "-m", module, str(app.dir), RID, "worker"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr
    assert "hello from worker" in ran.stdout


@pytest.mark.parametrize("module", ["shipyard.provision.listen", programs.LISTENER])
def test_the_port_holder_hands_out_its_socket_under_its_old_name_and_its_new_one(app, module):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    holder = subprocess.Popen(
        [sys.executable, "-m", module, str(app.dir), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert "listening on" in holder.stdout.readline()
        fd = launch.fetch_listener(programs.listen_socket(app, port), wait=10)
        with socket.socket(fileno=fd) as shared:
            assert shared.getsockname() == ("127.0.0.1", port)
    finally:
        holder.terminate()
        holder.wait(timeout=10)
        holder.stdout.close()
