"""Operating the app over SSH, as a key holder: config, restart, run, logs, scale, reboot.

Reuses test_ssh.py's private sshd and provisioned deploy user (one per module),
and its example app, changed to serve a setting of its .env.
"""

from __future__ import annotations

import json
import re
import shlex
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from conftest import Work, run
from httpload import Load, fetch
from test_ssh import Server, clone_example, push, server  # noqa: F401 - the module's sshd

from shipyard import lock, supervise
from shipyard.app import App

pytestmark = pytest.mark.e2e

VIEWS = """\
import os

from django.http import HttpResponse

from mysite.version import GREETING


def index(request):
    return HttpResponse(f"{os.environ.get('GREETING', GREETING)}\\n", content_type="text/plain")


def healthz(request):
    return HttpResponse("ok\\n", content_type="text/plain")
"""


@pytest.fixture(scope="module")
def site(server: Server, tmp_path_factory) -> Work:  # noqa: F811
    """The example app, deployed over SSH, serving $GREETING when .env sets it."""
    work = clone_example(tmp_path_factory.mktemp("op-work") / "mysite", server.url())
    work.commit("greeting from the environment", **{"polls/views.py": VIEWS})
    push(server, work)
    return work


def port(server: Server) -> int:  # noqa: F811
    text = (server.app / "shipyard.toml").read_text()
    return int(re.search(r"(?m)^port = (\d+)$", text).group(1))


@contextmanager
def under_load(server: Server) -> Iterator[Load]:  # noqa: F811
    load = Load(port(server), rate=40, seconds=120)
    thread = threading.Thread(target=load.run, daemon=True)
    thread.start()
    try:
        time.sleep(0.5)
        yield load
    finally:
        time.sleep(0.5)
        load.stop.set()
        thread.join(timeout=60)


def pids(server: Server, kind: str = "web") -> set[int]:  # noqa: F811
    """The pids supervisord runs for a process type (what `shipyard processes` lists)."""
    rows = supervise.status(App(server.home / "apps", "mysite"))
    return {r["pid"] for r in rows if r["process"].startswith(f"{kind}.") and r["pid"]}


def ssh_ok(server: Server, *command: str, key: str = "alice") -> str:  # noqa: F811
    result = server.ssh("shipyard", *command, key=key)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


# --- config ----------------------------------------------------------------------------


def test_config_set_serves_the_new_value_with_no_failed_request(server: Server, site: Work):  # noqa: F811
    status, body = fetch(port(server))
    assert (status, body.strip()) == (200, "Hello from mysite v1")
    value = "from config: it's $set"
    with under_load(server) as load:
        out = ssh_ok(server, "config", "set", "mysite", shlex.quote(f"GREETING={value}"))
    assert load.results and not load.failures(), load.failures()[:5]
    assert fetch(port(server)) == (200, value + "\n")
    assert load.results[-1][3] == value
    assert "config #" in out and "set GREETING by alice" in out and value not in out
    env = server.app / "shared" / ".env"
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    assert env.stat().st_uid == server.home.stat().st_uid

    listed = ssh_ok(server, "config", "mysite")
    assert "GREETING" in listed and value not in listed and "********" in listed
    assert ssh_ok(server, "config", "get", "mysite", "GREETING") == value + "\n"
    history = ssh_ok(server, "history", "mysite")
    line = next(ln for ln in history.splitlines() if " config " in ln)
    assert "applied" in line and "alice" in line and value not in history
    entry = json.loads((server.app / "deploys" / "deploys.jsonl").read_text().splitlines()[-1])
    assert entry["kind"] == "config" and entry["keys"] == ["GREETING"]
    assert value not in json.dumps(entry)
    assert "from config" not in (server.home / ".shipyard" / "ssh.log").read_text()


def test_config_secret_from_stdin_and_unset(server: Server, site: Work):  # noqa: F811
    result = run(
        "ssh",
        *server.ssh_options(),
        f"{server.user}@127.0.0.1",
        "shipyard config set mysite API_TOKEN --stdin --no-restart",
        input="t0p-s3cret\n",
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "t0p-s3cret" not in result.stdout + result.stderr
    assert "--no-restart" in result.stdout
    assert "API_TOKEN=t0p-s3cret" in (server.app / "shared" / ".env").read_text()
    ssh_ok(server, "config", "unset", "mysite", "API_TOKEN", "--no-restart")
    assert "API_TOKEN" not in (server.app / "shared" / ".env").read_text()


@pytest.mark.parametrize(
    "command, message",
    [
        (["config", "set", "mysite", "GREETING"], "has no '='"),
        (["config", "set", "mysite", "9LIVES=1"], "not a valid environment variable name"),
        (["config", "set", "nosuchapp", "A=1"], "no shipyard app"),
        (["config", "set", "mysite", "A=${HOME}"], "would not read back"),
        (["restart", "mysite", "--process", "nosuch"], "no process type 'nosuch'"),
        (["config", "--root", "/", "mysite"], "refused"),
        (["config", "set", "mysite", "../x=1"], "refused"),
    ],
)
def test_bad_input_over_ssh(server: Server, site: Work, command, message: str):  # noqa: F811
    env = server.app / "shared" / ".env"
    before = env.read_bytes()
    history = (server.app / "deploys" / "deploys.jsonl").read_bytes()
    result = server.ssh("shipyard", *command)
    assert result.returncode != 0
    assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert env.read_bytes() == before
    assert (server.app / "deploys" / "deploys.jsonl").read_bytes() == history


def test_config_is_refused_while_a_deploy_holds_the_lock(server: Server, site: Work):  # noqa: F811
    env = server.app / "shared" / ".env"
    before = env.read_bytes()
    note = {"deploy": 99, "sha": "f" * 40, "pusher": "bob", "since": time.time()}
    with lock.exclusive(server.app / "run" / "deploy.lock", note):
        result = server.ssh("shipyard", "config", "set", "mysite", "GREETING=locked")
    assert result.returncode == 1
    assert "deploy #99 (fffffff by bob" in result.stderr and "nothing was changed" in result.stderr
    assert result.stderr.count("\n") == 1
    assert env.read_bytes() == before


# --- restart ---------------------------------------------------------------------------


def test_restart_under_load(server: Server, site: Work):  # noqa: F811
    before = pids(server)
    with under_load(server) as load:
        out = ssh_ok(server, "restart", "mysite")
    assert load.results and not load.failures(), load.failures()[:5]
    assert "restarted on releases/" in out and "web ×1 healthy" in out
    after = pids(server)
    assert after and not after & before
    web_only = ssh_ok(server, "restart", "mysite", "--process", "web")
    assert "web ×1 healthy" in web_only


def test_processes_start_and_stop_over_ssh(server: Server, site: Work):  # noqa: F811
    stopped = ssh_ok(server, "processes", "mysite", "--stop")
    assert "stopped" in stopped
    with pytest.raises(OSError):
        fetch(port(server), timeout=2)
    started = ssh_ok(server, "processes", "mysite", "--start")
    assert "supervisord started" in started
    deadline = time.monotonic() + 60
    while True:
        try:
            if fetch(port(server), timeout=5)[0] == 200:
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, "the app did not come back"
        time.sleep(0.2)


def test_a_pty_is_refused_for_anything_but_run(server: Server, site: Work):  # noqa: F811
    result = server.ssh("shipyard", "status", "mysite", options=("-tt",))
    assert result.returncode != 0
    assert "only allowed for `shipyard run`" in result.stdout + result.stderr


_ = subprocess  # used by later tests
