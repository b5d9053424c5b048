"""Operating the app over SSH, as a key holder: config, restart, run, logs, scale, reboot.

Reuses test_ssh.py's private sshd and provisioned deploy user (one per module),
and its example app, changed to serve a setting of its .env.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import Work, end_user_processes, run, user_pids
from httpload import Load, fetch
from test_ssh import (  # noqa: F401 - server: the module's sshd
    Server,
    clone_example,
    push,
    server,
)

from shipyard import lock, process_views
from shipyard.app import App

pytestmark = pytest.mark.e2e

VIEWS = """\
import os

from django.http import HttpResponse

from mysite.version import GREETING


def index(request):
    print(f"served {request.path}", flush=True)
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
    rows = process_views.status(App(server.home / "apps", "mysite"))
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
        (["run", "mysite", "--host", "../web2", "--", "ls"], "refused"),
        (["logs", "mysite", "--host", "/etc/passwd"], "refused"),
        (["run", "mysite", "--host", "web2", "--", "ls"], "no host 'web2' among mysite's hosts"),
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


# --- run -------------------------------------------------------------------------------


def ssh_run(server: Server, *words: str, input: str | None = None):  # noqa: F811
    return run(
        "ssh",
        *server.ssh_options(),
        f"{server.user}@127.0.0.1",
        shlex.join(["shipyard", *words]),
        input=input,
        check=False,
        timeout=120,
    )


def test_run_in_the_live_release(server: Server, site: Work):  # noqa: F811
    ssh_ok(server, "config", "set", "mysite", "RUN_TOKEN=abcd-1234-secret", "--no-restart")
    live = (server.app / "current").resolve()
    script = "import os, sys; print(os.getcwd(), sys.prefix); print(os.environ['RUN_TOKEN'])"
    result = ssh_run(server, "run", "mysite", "--", "python", "-c", script)
    assert result.returncode == 0, result.stderr
    cwd, prefix = result.stdout.splitlines()[0].split()
    assert cwd == str(live) and Path(prefix).resolve() == (live / ".venv").resolve()
    assert result.stdout.splitlines()[1] == "********"  # masked like deploy output
    assert "abcd-1234-secret" not in result.stdout + result.stderr

    django = ssh_run(
        server,
        "run",
        "mysite",
        "--",
        "python",
        "manage.py",
        "shell",
        "-c",
        "import os; from django.conf import settings; print(settings.DATA_DIR)",
    )
    assert django.returncode == 0, django.stderr
    assert django.stdout.splitlines()[-1] == str(server.app / "shared")

    failed = ssh_run(server, "run", "mysite", "--", "python", "-c", "import sys; sys.exit(3)")
    assert failed.returncode == 3
    piped = ssh_run(
        server, "run", "mysite", "--", "python", "-c", "print(input()[::-1])", input="abc\n"
    )
    assert piped.stdout == "cba\n"
    log = (server.home / ".shipyard" / "ssh.log").read_text().splitlines()
    assert any("key=alice" in ln and "allowed" in ln and "sys.exit(3)" in ln for ln in log)


def test_run_interactive_under_a_pty(server: Server, site: Work):  # noqa: F811
    """`ssh -t … shipyard run mysite -- python manage.py shell`, driven through `script`:
    a line typed at the shell's prompt is evaluated, then `exit()` ends it."""
    ssh = shlex.join(
        [
            "ssh",
            "-tt",
            *server.ssh_options(),
            f"{server.user}@127.0.0.1",
            "shipyard run mysite -- python manage.py shell",
        ]
    )
    session = subprocess.Popen(
        ["script", "-q", "-e", "-c", ssh, "/dev/null"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    seen = bytearray()
    reader = threading.Thread(
        target=lambda: [seen.extend(b) for b in iter(lambda: session.stdout.read1(4096), b"")],
        daemon=True,
    )
    reader.start()

    def prompt(count: int) -> None:
        deadline = time.monotonic() + 90
        while seen.count(b">>> ") < count:
            assert session.poll() is None and time.monotonic() < deadline, seen.decode()
            time.sleep(0.05)

    try:
        prompt(1)
        session.stdin.write(b"import sys; print(6 * 7, sys.stdin.isatty())\r")
        session.stdin.flush()
        prompt(2)
        session.stdin.write(b"exit()\r")
        session.stdin.flush()
        assert session.wait(timeout=60) == 0, seen.decode()
    finally:
        if session.poll() is None:
            session.kill()
            session.wait()
    reader.join(timeout=10)
    out = seen.decode(errors="replace").replace("\r", "")
    assert re.search(r"(?m)^42 True$", out), out
    assert "refused" not in out


def test_run_waits_for_a_migration_or_refuses(server: Server, site: Work):  # noqa: F811
    note = {
        "deploy": 98,
        "sha": "e" * 40,
        "pusher": "bob",
        "since": time.time(),
        "phase": "migrate",
    }
    with lock.exclusive(server.app / "run" / "deploy.lock", note):
        refused = ssh_run(server, "run", "mysite", "--no-wait", "--", "python", "-c", "print(1)")
        assert refused.returncode == 1
        assert "deploy #98 (eeeeeee by bob" in refused.stderr and "migrating" in refused.stderr
        assert refused.stdout == ""
        waiting = subprocess.Popen(
            [
                "ssh",
                *server.ssh_options(),
                f"{server.user}@127.0.0.1",
                "shipyard run mysite -- python -c 'print(\"ran\")'",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 60
        log = server.home / ".shipyard" / "ssh.log"
        while 'print("ran")' not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1)
        assert waiting.poll() is None  # still waiting for the migration
    out, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 0 and out == "ran\n", err
    assert "waiting: deploy #98" in err


def test_run_in_a_kept_release(server: Server, site: Work):  # noqa: F811
    first = (server.app / "current").resolve().name
    site.commit("v2", **{"mysite/version.py": 'GREETING = "Hello from mysite v2"\n'})
    push(server, site)
    show = ["python", "-c", "from mysite.version import GREETING; print(GREETING)"]
    assert ssh_run(server, "run", "mysite", "--", *show).stdout == "Hello from mysite v2\n"
    old = ssh_run(server, "run", "mysite", "--release", first, "--", *show)
    assert old.returncode == 0 and old.stdout == "Hello from mysite v1\n", old.stderr


@pytest.mark.parametrize(
    "words, message",
    [
        (["run", "mysite"], "no command given"),
        (["run", "mysite", "--"], "no command given"),
        (["run", "nosuchapp", "--", "ls"], "no shipyard app"),
        (["run", "mysite", "--release", "nosuch", "--", "ls"], "no release 'nosuch'"),
        (["run", "mysite", "--", "no-such-command"], "command not found"),
        (["run", "mysite", "--root", "/", "--", "ls"], "refused"),
    ],
)
def test_run_bad_input(server: Server, site: Work, words, message: str):  # noqa: F811
    result = ssh_run(server, *words)
    assert result.returncode != 0
    assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr


# --- logs ------------------------------------------------------------------------------

LOG_LINE = re.compile(r"^\d\d-\d\d \d\d:\d\d:\d\d (web\.1 (?:blue|green)) +(\w{7}|-) +│ (.*)$")


def test_logs_last_lines(server: Server, site: Work):  # noqa: F811
    for _ in range(3):
        fetch(port(server), "/?from=logs-test")
    out = ssh_ok(server, "logs", "mysite", "-n", "5")
    lines = out.splitlines()
    assert len(lines) == 5, out
    parsed = [LOG_LINE.match(ln) for ln in lines]
    assert all(parsed), out
    sha = (server.app / "current").resolve().name.rsplit("-", 1)[1]
    assert parsed[-1][2] == sha and parsed[-1][3] == "served /"
    assert "served /" in ssh_ok(server, "logs", "mysite", "--process", "web", "-n", "3")
    coloured = ssh_ok(server, "logs", "mysite", "-n", "1", "--color")
    assert coloured.startswith("\x1b[") and "served /" in coloured
    conf = (server.app / "run" / "programs.conf").read_text()
    assert "stdout_logfile_maxbytes = 10MB" in conf and "stdout_logfile_backups = 3" in conf


def test_logs_follow_across_a_deploy(server: Server, site: Work):  # noqa: F811
    follow = subprocess.Popen(
        ["ssh", *server.ssh_options(), f"{server.user}@127.0.0.1", "shipyard logs mysite -f -n 1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(iter(follow.stdout.readline, "")))
    reader.daemon = True
    reader.start()
    try:
        sha = site.commit("v3", **{"mysite/version.py": 'GREETING = "Hello from mysite v3"\n'})
        push(server, site)
        deadline = time.monotonic() + 60
        while not any(f" {sha[:7]} " in ln and "served /" in ln for ln in seen):
            assert follow.poll() is None and time.monotonic() < deadline, "".join(seen)
            fetch(port(server))
            time.sleep(0.2)
    finally:
        follow.kill()
        follow.wait()
    mine = [LOG_LINE.match(ln.rstrip("\n")) for ln in seen]
    assert all(mine), seen
    releases = {m[2] for m in mine}
    assert sha[:7] in releases
    assert any("starting on releases/" in m[3] and m[2] == sha[:7] for m in mine)


@pytest.mark.parametrize(
    "words, message",
    [
        (["logs", "mysite", "--process", "nosuch"], "no process type 'nosuch'"),
        (["logs", "mysite", "-n", "-1"], "give a number of lines"),
        (["logs", "nosuchapp"], "no shipyard app"),
    ],
)
def test_logs_bad_input(server: Server, site: Work, words, message: str):  # noqa: F811
    result = server.ssh("shipyard", *words)
    assert result.returncode != 0
    assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr


# --- scale -----------------------------------------------------------------------------

WORKER = 'worker: python -c "import time; time.sleep(10**6)"\n'


def test_scale_under_load_survives_the_next_deploy(server: Server, site: Work):  # noqa: F811
    procfile = (site.path / "Procfile").read_text()
    site.commit("a worker", Procfile=procfile + WORKER)
    push(server, site)
    assert len(pids(server, "worker")) == 1
    with under_load(server) as load:
        out = ssh_ok(server, "scale", "mysite", "web=3")
    assert load.results and not load.failures(), load.failures()[:5]
    assert "web ×3 healthy" in out and "worker ×1 kept" in out
    assert len(pids(server)) == 3
    listed = ssh_ok(server, "ps", "mysite")
    assert all(f"web.{i} " in listed for i in (1, 2, 3)) and "web=3" in listed
    history = ssh_ok(server, "history", "mysite")
    assert any(" scale " in ln and "web=3" in ln for ln in history.splitlines())

    worker = pids(server, "worker")
    webs = pids(server)
    ssh_ok(server, "scale", "mysite", "worker=0")
    assert pids(server, "worker") == set() and pids(server) == webs  # the web kept running

    site.commit("v4", **{"mysite/version.py": 'GREETING = "Hello from mysite v4"\n'})
    push(server, site)
    live = (server.app / "current").resolve()
    after = pids(server)
    assert len(after) == 3 and not after & webs
    assert all(os.readlink(f"/proc/{pid}/cwd") == str(live) for pid in after)
    assert pids(server, "worker") == set() and worker

    with under_load(server) as load:
        ssh_ok(server, "scale", "mysite", "web=1", "worker=default")
    assert load.results and not load.failures(), load.failures()[:5]
    assert len(pids(server)) == 1 and len(pids(server, "worker")) == 1
    assert json.loads((server.app / "scale.json").read_text()) == {"web": 1}


@pytest.mark.parametrize(
    "words, message",
    [
        (["scale", "mysite", "web=-1"], "write TYPE=COUNT"),
        (["scale", "mysite", "web=abc"], "write TYPE=COUNT"),
        (["scale", "mysite", "web"], "write TYPE=COUNT"),
        (["scale", "mysite", "nosuch=1"], "no process type 'nosuch'"),
        (["scale", "nosuchapp", "web=1"], "no shipyard app"),
    ],
)
def test_scale_bad_input(server: Server, site: Work, words, message: str):  # noqa: F811
    scale = server.app / "scale.json"
    before = scale.read_bytes() if scale.exists() else None
    result = server.ssh("shipyard", *words)
    assert result.returncode != 0
    assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert (scale.read_bytes() if scale.exists() else None) == before


# --- reboot ----------------------------------------------------------------------------


def unit_command(unit: Path) -> tuple[str, list[str], dict[str, str], Path]:
    """(User, ExecStart, Environment, WorkingDirectory) of a systemd unit, as systemd reads them."""
    fields = dict(
        line.split("=", 1) for line in unit.read_text().splitlines() if re.match(r"^\w+=", line)
    )
    env = dict(pair.split("=", 1) for pair in shlex.split(fields["Environment"]))
    return fields["User"], shlex.split(fields["ExecStart"]), env, Path(fields["WorkingDirectory"])


def test_apps_come_back_after_a_reboot(server: Server, site: Work):  # noqa: F811
    unit = Path("/etc/systemd/system") / f"shipyard-{server.user}.service"
    assert f"write {unit}" in server.provision_out
    assert f"enable {unit.name}" in server.provision_out
    assert (unit.parent / "multi-user.target.wants" / unit.name).resolve() == unit
    assert "✓ boot" in ssh_ok(server, "doctor", "mysite")
    live = (server.app / "current").resolve()
    before = fetch(port(server))
    assert before[0] == 200

    uid = server.home.stat().st_uid
    end_user_processes(uid)  # the power goes off: nothing of the deploy user survives
    assert not user_pids(uid)
    with pytest.raises(OSError):
        fetch(port(server), timeout=2)

    user, command, env, cwd = unit_command(unit)  # the boot: what systemd runs
    assert user == server.user
    booted = subprocess.Popen(
        ["runuser", "-u", user, "--", *command],
        cwd=cwd,
        env={**env, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if fetch(port(server), timeout=5) == before:
                    break
            except OSError:
                pass
            assert booted.poll() is None and time.monotonic() < deadline, (
                server.home / ".shipyard" / "boot.log"
            ).read_text()
            time.sleep(0.2)
        assert all(os.readlink(f"/proc/{pid}/cwd") == str(live) for pid in pids(server))
        boot_log = (server.home / ".shipyard" / "boot.log").read_text()
        assert "shipyard boot ▸ mysite: supervisord started" in boot_log
        assert "live" in ssh_ok(server, "ps", "mysite")
    finally:
        booted.terminate()
        booted.wait(timeout=30)
