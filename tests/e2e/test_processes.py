"""Processes under a real supervisord running real gunicorn: served, handed over, switched back.

Most tests share one deployed app (module scope) and leave it serving a good
release; each test that pushes a bad release asserts the switch-back and then
resets the clone to the good commit.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import Host, Work, make_host, make_work, shipyard
from httpload import Load, fetch

from shipyard import fault_injection, process_views, supervisord
from shipyard.app import App

WORKER = """\
import os, time
print(f"worker {os.environ['SHIPYARD_PROCESS']} on {os.environ['SHIPYARD_RELEASE']}", flush=True)
while True:
    time.sleep(1)
"""
FIGURES = Path(os.environ.get("SHIPYARD_FIGURES", "/dev/null"))


def greeting(port: int) -> str:
    status, body = fetch(port)
    assert status == 200, body
    return body.strip()


def rows(host: Host) -> dict[str, dict]:
    """The app's processes (not the port's socket holder), by name."""
    found = process_views.status(App(host.root, host.name))
    return {r["process"]: r for r in found if r["release"] is not None}


def cwd(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/cwd")


def interpreter_dir(pid: int) -> str:
    """The directory of the interpreter a process was started as (a bare name found on its PATH)."""
    argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    if "/" not in argv0:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        path = next(e[5:].decode() for e in environ if e.startswith(b"PATH="))
        argv0 = next(f"{d}/{argv0}" for d in path.split(":") if os.path.isfile(f"{d}/{argv0}"))
    return os.path.realpath(os.path.dirname(argv0))


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def gone(pid: int, timeout: float = 30) -> bool:
    """Has ``pid`` exited within ``timeout``? (An old web drains after the push returns.)"""
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def record(name: str, value: object) -> None:
    """Figures for the record (set SHIPYARD_FIGURES=path to collect them)."""
    if str(FIGURES) != "/dev/null":
        with open(FIGURES, "a") as f:
            f.write(json.dumps({name: value}) + "\n")


@dataclass
class Site:
    host: Host
    work: Work
    first: str

    @property
    def port(self) -> int:
        return self.host.port

    def good(self) -> str:
        return self.work.git("rev-parse", "HEAD").stdout.strip()

    def back_to(self, sha: str) -> None:
        self.work.git("reset", "-q", "--hard", sha)


@pytest.fixture(scope="module")
def deployed(tmp_path_factory) -> Site:
    base = tmp_path_factory.mktemp("proc")
    host = make_host(base / "apps")
    work = make_work(base / "work", host)
    work.commit(
        "a worker",
        **{
            "worker.py": WORKER,
            "Procfile": (work.path / "Procfile").read_text() + "worker: python worker.py\n",
        },
    )
    try:
        first = work.push().out
        yield Site(host, work, first)
    finally:
        host.stop_processes()


@pytest.fixture
def site(deployed: Site) -> Site:
    """The shared app; afterwards the clone is reset to what the host has (a bad push is undone)."""
    yield deployed
    tip = deployed.host.branch()
    if tip:
        deployed.back_to(tip)


def test_push_ends_with_the_app_served(site: Site):
    out = site.first
    assert re.search(r"✓ restart +\d+\.\d\ds  web ×1 healthy \(GET /healthz 200\) on blue", out)
    assert "worker ×1 running" in out and "✓ verify" in out
    assert greeting(site.port) == "Hello from mysite v1"
    live = str(site.host.live())
    procs = rows(site.host)
    assert set(procs) == {"web.1", "worker.1"}
    for row in procs.values():
        assert row["state"] == "RUNNING" and row["live"]
        assert cwd(row["pid"]) == live
        assert interpreter_dir(row["pid"]) == os.path.realpath(f"{live}/.venv/bin")
    listing = shipyard("--root", site.host.root, "processes", "mysite").stdout
    release = Path(live).name
    assert re.search(rf"web\.1 +RUNNING +{procs['web.1']['pid']} +0:00:\d\d  {release}", listing)
    assert re.search(rf"worker\.1 +RUNNING +{procs['worker.1']['pid']} .* {release}", listing)
    assert "blue" in listing and f":{site.port}" in listing
    assert re.search(rf"listen-{site.port} +RUNNING .*holds 127\.0\.0\.1:{site.port}", listing)


def test_redeploy_serves_the_change_and_moves_every_process(site: Site):
    before = rows(site.host)
    site.work.commit("v2", **{"mysite/version.py": 'GREETING = "Hello from mysite v2"\n'})
    started = time.monotonic()
    out = site.work.push().out
    record("push_to_served_s", round(time.monotonic() - started, 2))
    assert greeting(site.port) == "Hello from mysite v2"
    assert "healthy (GET /healthz 200) on green" in out
    live = str(site.host.live())
    after = rows(site.host)
    for name in ("web.1", "worker.1"):
        old, new = before[name]["pid"], after[name]["pid"]
        assert new != old and gone(old), name
        assert cwd(new) == live and after[name]["release"] == Path(live).name
        assert interpreter_dir(new) == os.path.realpath(f"{live}/.venv/bin")
    log = (site.host.dir / "logs" / "worker.1.log").read_text()
    assert f"worker worker.1 on {Path(live).name}" in log


def test_release_command_runs_once_before_the_switch(site: Site):
    procfile = (site.work.path / "Procfile").read_text()
    site.work.commit(
        "release step",
        Procfile=procfile + "release: echo released $(basename $PWD) >> media/released.log\n",
    )
    out = site.work.push().out
    assert out.index("✓ release") < out.index("✓ switch")
    released = (site.host.dir / "shared" / "media" / "released.log").read_text().split()
    assert released == ["released", site.host.live().name]
    programs = (site.host.dir / "run" / "programs.conf").read_text()
    names = re.findall(r"^\[program:(\S+)\]", programs, re.M)
    assert len(names) == 3 and names[0] == f"mysite-listen-{site.port}"
    assert names[1] in ("mysite-web-blue", "mysite-web-green")
    assert names[2] == "mysite-worker"  # the release command is no program


def test_no_restart_switches_but_leaves_processes(site: Site):
    before = rows(site.host)
    site.work.commit("v3", **{"mysite/version.py": 'GREETING = "Hello from mysite v3"\n'})
    out = site.work.push("-o", "no-restart", "main").out
    assert "- restart" in out and "-o no-restart" in out
    assert site.host.live().name.endswith(site.good()[:7])
    assert greeting(site.port) == "Hello from mysite v2"
    assert rows(site.host)["web.1"]["pid"] == before["web.1"]["pid"]
    assert "NOT LIVE" in shipyard("--root", site.host.root, "processes", "mysite").stdout
    site.work.commit("restart")
    site.work.push()
    assert greeting(site.port) == "Hello from mysite v3"


def test_web_crashing_on_start_is_switched_back(site: Site):
    live, serving = site.host.live(), greeting(site.port)
    web = rows(site.host)["web.1"]["pid"]
    env = site.host.dir / "shared" / ".env"
    env.write_text("SECRET_KEY=topsecret-0123456789\n")
    wsgi = (site.work.path / "mysite" / "wsgi.py").read_text()
    boom = (
        "import os\n"
        'raise RuntimeError("boom: MYSITE_QUEUE is not set; key " + os.environ["SECRET_KEY"])\n'
    )
    site.work.commit("broken", **{"mysite/wsgi.py": boom + wsgi})
    try:
        out = site.work.push(fails=True).out
    finally:
        env.unlink()
    assert re.search(r"✗ restart .* web\.1 on releases/\S+ exited on start \(", out)
    # the new process's log, with the app's secrets masked
    assert "RuntimeError: boom: MYSITE_QUEUE is not set; key ********" in out
    assert "topsecret" not in out
    assert f"still live: {live.name}" in out
    assert site.host.live() == live and greeting(site.port) == serving
    assert rows(site.host)["web.1"]["pid"] == web  # the old one never stopped serving


def test_worker_crashing_on_start_switches_the_web_back_too(site: Site):
    live, serving = site.host.live(), greeting(site.port)
    site.work.commit(
        "bad worker",
        **{
            "worker.py": 'raise SystemExit("worker: cannot reach the queue")\n',
            "mysite/version.py": 'GREETING = "Hello from a bad release"\n',
        },
    )
    out = site.work.push(fails=True).out
    assert re.search(r"worker\.1 on releases/\S+ exited on start \(", out)
    assert "worker: cannot reach the queue" in out
    assert "the previous release kept serving" in out
    assert site.host.live() == live and greeting(site.port) == serving
    for row in rows(site.host).values():
        assert row["state"] == "RUNNING" and cwd(row["pid"]) == str(live)


def test_failing_health_check_is_switched_back(site: Site):
    live, serving = site.host.live(), greeting(site.port)
    views = (site.work.path / "polls" / "views.py").read_text()
    site.work.commit(
        "unhealthy",
        **{
            "polls/views.py": views.replace(
                'return JsonResponse({"ok": True})',
                'return JsonResponse({"ok": False}, status=503)',
            ),
            "shipyard.toml": (site.work.path / "shipyard.toml").read_text()
            + "timeout = 60\nretries = 3\n",
        },
    )
    started = time.monotonic()
    out = site.work.push(fails=True).out
    record("health_fail_push_s", round(time.monotonic() - started, 2))
    failed = re.search(r"health check \(GET /healthz: got 503, wanted 200, after (\S+)s", out)
    assert failed, out
    record("health_fail_detected_after_s", float(failed.group(1)))
    assert site.host.live() == live and greeting(site.port) == serving
    assert cwd(rows(site.host)["web.1"]["pid"]) == str(live)


def test_failing_verify_hands_the_processes_back(site: Site):
    """Healthy on its private port, broken on the public one: verify fails, restart is undone."""
    live, serving = site.host.live(), greeting(site.port)
    views = (site.work.path / "polls" / "views.py").read_text()
    site.work.commit(
        "broken on the public port",
        **{
            "polls/views.py": "import socket\n"
            + views.replace(
                '    return JsonResponse({"ok": True})',
                '    if request.META["gunicorn.socket"].family != socket.AF_UNIX:\n'
                '        return JsonResponse({"ok": False}, status=500)\n'
                '    return JsonResponse({"ok": True})',
            )
        },
    )
    out = site.work.push(fails=True).out
    assert "✓ restart" in out and "✗ verify" in out
    assert f"port {site.port} answers GET /healthz with 500" in out
    back = re.search(rf"↩ processes back on releases/{live.name}: web ×1 healthy.* in (\S+)s", out)
    assert back, out
    record("verify_fail_switch_back_s", float(back.group(1)))
    assert site.host.live() == live and greeting(site.port) == serving
    for row in rows(site.host).values():
        assert cwd(row["pid"]) == str(live)


def test_bad_process_counts_and_procfile_refused_before_the_ref_moves(site: Site):
    good = site.good()
    site.work.commit(
        "count",
        **{
            "shipyard.toml": (site.work.path / "shipyard.toml").read_text()
            + "\n[processes]\nweb = 1\nbeat = 1\n"
        },
    )
    out = site.work.push(check=False).out
    assert "[processes] beat = 1, but the Procfile has no `beat:`" in out
    assert site.host.branch() == good and "deploy #" not in out
    site.back_to(good)
    site.work.commit("syntax", Procfile="web gunicorn mysite.wsgi\n")
    out = site.work.push(check=False).out
    assert "Procfile:1: cannot read 'web gunicorn mysite.wsgi'" in out
    assert site.host.branch() == good


def test_zero_downtime_under_load(site: Site):
    """~50 requests/s while three deploys switch the web process, one with new requirements."""
    load = Load(site.port)
    thread = threading.Thread(target=load.run, daemon=True)
    thread.start()
    try:
        time.sleep(1)
        pushes = []
        requirements = (site.work.path / "requirements.txt").read_text()
        changes = [
            {"mysite/version.py": 'GREETING = "Hello from load 1"\n'},
            {
                "mysite/version.py": 'GREETING = "Hello from load 2"\n',
                "requirements.txt": requirements + "python-dotenv>=1.0\n",
            },
            {"mysite/version.py": 'GREETING = "Hello from load 3"\n'},
        ]
        for i, files in enumerate(changes, 1):
            site.work.commit(f"load {i}", **files)
            t0 = time.monotonic()
            out = site.work.push().out
            pushes.append(round(time.monotonic() - t0, 2))
            assert "shipyard ▸ live" in out, out
            if i == 2:
                assert "✓ venv" in out and "built" in out.split("✓ venv")[1].splitlines()[0]
        time.sleep(1)
    finally:
        load.stop.set()
        thread.join(timeout=60)
    total = len(load.results)
    failed = load.failures()
    latencies = sorted(r[1] for r in load.results)
    record(
        "zero_downtime",
        {
            "requests": total,
            "failed": len(failed),
            "seconds": round(load.results[-1][0], 1) if load.results else 0,
            "p50_ms": round(latencies[total // 2] * 1000, 1) if total else None,
            "max_ms": round(latencies[-1] * 1000, 1) if total else None,
            "pushes_s": pushes,
        },
    )
    assert total > 300, total
    assert not failed, f"{len(failed)} of {total} requests failed: {failed[:5]}"
    seen = [r[3] for r in load.results]
    firsts = [seen.index(f"Hello from load {i}") for i in (1, 2, 3)]
    assert firsts == sorted(firsts)  # each deploy's code was served, in order
    assert seen[-1] == "Hello from load 3"
    live = str(site.host.live())
    venv = os.path.realpath(f"{live}/.venv/bin")
    assert interpreter_dir(rows(site.host)["web.1"]["pid"]) == venv  # the new requirements' venv


SLOW_VIEW = """

def slow(request):
    \"\"\"Holds its request until the test's flag file exists (20 s at most).\"\"\"
    import os, time

    flag = request.GET["flag"]
    open(flag + ".started", "w").close()
    deadline = time.monotonic() + 20
    while not os.path.exists(flag) and time.monotonic() < deadline:
        time.sleep(0.05)
    return HttpResponse(f"slow {GREETING}\\n", content_type="text/plain")
"""


def supervised(host: Host) -> list[str]:
    """The states of what the app's supervisord runs (as supervisorctl lists it), sorted."""
    app = App(host.root, host.name)
    infos = supervisord.Supervisor(app, supervisord.host_of(app)).infos()
    return sorted(info["statename"] for info in infos.values())


def settled(host: Host, timeout: float = 60) -> list[str]:
    """``supervised`` once only the socket holder, web and worker are left (bounded wait)."""
    deadline = time.monotonic() + timeout
    while len(supervised(host)) > 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    return supervised(host)


def test_the_push_answers_while_the_old_web_drains(site: Site, tmp_path: Path):
    """Once the new web is healthy the old one is sent TERM and the push answers: a request
    still in flight on the old one is answered after the push returned, and it then stops."""
    views = (site.work.path / "polls" / "views.py").read_text()
    urls = (site.work.path / "mysite" / "urls.py").read_text()
    site.work.commit(
        "a slow page",
        **{
            "polls/views.py": views + SLOW_VIEW,
            "mysite/urls.py": urls.replace("]", '    path("slow", views.slow),\n]'),
        },
    )
    site.work.push()
    old = rows(site.host)["web.1"]["pid"]
    flag, started = tmp_path / "go", tmp_path / "go.started"
    answers: list[tuple[int, str]] = []
    slow = threading.Thread(target=lambda: answers.append(fetch(site.port, f"/slow?flag={flag}")))
    slow.start()
    try:
        deadline = time.monotonic() + 30  # bounded: until the old web holds the request
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert started.exists()
        site.work.commit("drained", **{"mysite/version.py": 'GREETING = "Hello after a drain"\n'})
        out = site.work.push().out
        assert "shipyard ▸ live" in out
        assert slow.is_alive() and alive(old)  # answered while the old web still drains
        assert greeting(site.port) == "Hello after a drain"
        assert rows(site.host)["web.1"]["pid"] != old
    finally:
        flag.touch()
        slow.join(timeout=60)
    assert len(answers) == 1 and answers[0][0] == 200 and answers[0][1].startswith("slow ")
    assert gone(old)
    assert settled(site.host) == ["RUNNING"] * 3  # the worker removed the old web's group


def test_a_worker_killed_before_the_old_web_stopped_leaves_it_to_the_next_deploy(site: Site):
    """Killed after its answer, before it waited for the old web: the old web stops anyway
    (it was sent TERM), and the next handover removes what is left of it first."""
    run_dir = site.host.dir / "run"
    old = rows(site.host)["web.1"]["pid"]
    fault_injection.arm(run_dir, {"at": "settle", "action": "kill"})
    try:
        site.work.commit("killed", **{"mysite/version.py": 'GREETING = "Hello, killed"\n'})
        assert "shipyard ▸ live" in site.work.push().out
        assert greeting(site.port) == "Hello, killed"
        deadline = time.monotonic() + 30  # bounded: the fault fires once the push answered
        while (run_dir / "faults.json").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not (run_dir / "faults.json").exists()
    finally:
        fault_injection.disarm(run_dir)
    assert gone(old)
    assert supervised(site.host) == ["RUNNING"] * 3 + ["STOPPED"]  # its group is left
    site.work.commit("next", **{"mysite/version.py": 'GREETING = "Hello, next"\n'})
    assert "shipyard ▸ live" in site.work.push().out
    assert greeting(site.port) == "Hello, next"
    assert settled(site.host) == ["RUNNING"] * 3


def test_a_web_that_dies_later_is_started_again_on_its_release_with_its_sockets(site: Site):
    """supervisord starts a crashed web again with the command programs.conf gave it (the
    launcher's options decided when it was written): same release, the shared socket, the
    private probe socket; and the next deploy hands over from it as from any other."""
    before = rows(site.host)["web.1"]
    live = str(site.host.live())
    probe = next((site.host.dir / "run").glob("web-*.1.sock"))
    # the whole instance dies (the OOM killer, say): a master killed alone leaves its workers
    # serving from the inherited socket until they notice, which is gunicorn's to handle
    workers = [int(c) for c in Path(f"/proc/{before['pid']}/task/{before['pid']}/children")
               .read_text().split()]  # fmt: skip
    for pid in [before["pid"], *workers]:
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while True:
        now = rows(site.host).get("web.1", {})
        if now.get("state") == "RUNNING" and now["pid"] != before["pid"] and probe.exists():
            break
        assert time.monotonic() < deadline, f"web.1 not started again: {now}"
        time.sleep(0.1)
    assert cwd(now["pid"]) == live and now["release"] == Path(live).name
    version = (Path(live) / "mysite" / "version.py").read_text()
    assert greeting(site.port) == version.split("=", 1)[1].strip().strip('"')  # the same port
    log = (site.host.dir / "logs" / f"{probe.name.split('.')[0]}.1.log").read_text()
    assert log.count(f"starting on releases/{Path(live).name}") >= 2
    site.work.commit("after the crash", **{"mysite/version.py": 'GREETING = "Hello again"\n'})
    site.work.push()
    assert greeting(site.port) == "Hello again"


def test_processes_stop_and_start(site: Site):
    root, serving = site.host.root, greeting(site.port)
    assert "stopped" in shipyard("--root", root, "processes", "mysite", "--stop").stdout
    with pytest.raises(OSError):
        fetch(site.port, timeout=2)
    result = shipyard("--root", root, "processes", "mysite", check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"shipyard: error: supervisord for mysite is not running (socket "
        f"{site.host.dir / 'run' / 'supervisord.sock'}); "
        "start it with `shipyard processes mysite --start`"
    )
    started = shipyard("--root", root, "processes", "mysite", "--start").stdout
    assert "supervisord started" in started and "web.1" in started
    deadline = time.monotonic() + 30
    while True:
        try:
            assert greeting(site.port) == serving
            break
        except (OSError, AssertionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


# --- fresh apps -------------------------------------------------------------


def test_port_in_use_at_first_start(host: Host, work: Work):
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", host.port))
    squatter.listen()
    try:
        out = work.push(fails=True).out
    finally:
        squatter.close()
    line = next(ln for ln in out.splitlines() if "✗ restart" in ln)
    assert f"port {host.port} is already in use by " in line and f"(pid {os.getpid()})" in line
    assert "nothing is live yet" in out
    retry = work.push().out
    assert "shipyard ▸ live" in retry and greeting(host.port) == "Hello from mysite v1"


def test_supervisord_not_reachable(host: Host, work: Work, tmp_path: Path):
    missing = tmp_path / "nope.sock"
    with open(host.dir / "shipyard.toml", "a") as f:
        f.write(f'\n[supervisor]\nmode = "system"\nsocket = "{missing}"\n')
    out = work.push(fails=True).out
    assert "✗ restart" in out
    assert f"supervisord not reachable at {missing}: No such file or directory" in out
    assert "nothing is live yet" in out
    result = shipyard("--root", host.root, "processes", "mysite", check=False)
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "supervisord for mysite is not running" in result.stderr
