"""Rendering supervisor programs, reading Procfile commands, the socket hand-over, /proc checks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from shipyard import launch, listen, process_views, supervisord
from shipyard import programs as prov
from shipyard.app import App
from shipyard.config import HostConfig, parse_app_config, parse_host_config
from shipyard.errors import ConfigError, Fault
from shipyard.health import Answer, Health, final_answer, health_for, health_hint
from shipyard.ports import holds, listening_sockets, port_owner
from shipyard.supervise import check_process
from shipyard.supervisord import Supervisor, excerpt

APP = App(Path("/srv/apps"), "mysite")
RELEASE = "20261129T013000Z-1a2b3c4"


def test_plan_one_program_per_type_release_is_no_program():
    procfile = {
        "web": "gunicorn mysite.wsgi --bind 127.0.0.1:$PORT",
        "worker": "python worker.py",
        "beat": "celery beat",
        "release": "python manage.py migrate",
    }
    programs = prov.plan(procfile, {"worker": 3, "beat": 0}, RELEASE, 8123, 12)
    assert set(programs) == {"web", "worker"}
    web, worker = programs["web"], programs["worker"]
    assert (web.count, web.port, web.host, web.handover) == (1, 8123, "127.0.0.1", True)
    assert (worker.count, worker.port, worker.handover, worker.stop_grace) == (3, None, False, 12)
    assert worker.processes() == ["worker.1", "worker.2", "worker.3"]
    assert web.listener() == prov.Listener("127.0.0.1", 8123)


@pytest.mark.parametrize(
    "counts, message",
    [
        ({"beat": 1}, "[processes] beat = 1, but the Procfile has no `beat:` (its types: web)"),
        ({"release": 1}, "the release command runs once per deploy and takes no count"),
    ],
)
def test_counts_must_name_procfile_types(counts, message):
    with pytest.raises(ConfigError) as err:
        prov.check_counts({"web": "gunicorn x", "release": "true"}, counts, "shipyard.toml")
    assert message in str(err.value)


@pytest.mark.parametrize(
    "command, gunicorn, compound",
    [
        ("gunicorn mysite.wsgi --workers 2 --bind 127.0.0.1:$PORT", True, False),
        ("DJANGO_DEBUG=0 .venv/bin/gunicorn mysite.wsgi", True, False),
        ("python -m gunicorn mysite.wsgi 2>&1", True, False),
        ("uvicorn app:app --port $PORT", False, False),
        ("cd src && gunicorn app:app", False, True),
        ("gunicorn app:app | tee log", False, True),
        ("python worker.py; sleep 1", False, True),
        ("python worker.py &", False, True),
        ("gunicorn $(cat args)", False, True),
    ],
)
def test_command_kinds(command, gunicorn, compound):
    assert prov.is_compound(command) is compound
    assert (prov.is_gunicorn(command) and not prov.is_compound(command)) is gunicorn


def test_simple_commands_are_execd_assignments_kept():
    assert prov.shell_script("gunicorn x") == "exec gunicorn x"
    assert prov.shell_script('A="b c" D=1 python w.py') == 'A="b c" D=1 exec python w.py'
    assert prov.shell_script("a && b") == "a && b"
    assert prov.shell_script("gunicorn x", " --flag") == "exec gunicorn x --flag"


@pytest.mark.parametrize(
    "command, host",
    [
        ("gunicorn x --bind 127.0.0.1:$PORT", "127.0.0.1"),
        ("gunicorn x -b unix:/tmp/s --bind=localhost:${PORT}", "127.0.0.1"),
        ("gunicorn x -b[::1]:$PORT", "::1"),
        ("gunicorn x", "0.0.0.0"),
        ("gunicorn x -b :$PORT", "0.0.0.0"),
    ],
)
def test_bind_host(command, host):
    assert prov.bind_host(command) == host


def test_render_programs_pins_releases_and_keeps_secrets_out():
    web = prov.Program("web", RELEASE, 2, 45, port=8123, host="127.0.0.1", handover=True)
    web = web.__class__(**{**web.to_dict(), "color": "green"})
    worker = prov.Program("worker", RELEASE, 1, 10, compound=True)
    text = prov.render_programs(APP, [web, worker], [web.listener()], user="deploy")
    assert "[program:mysite-listen-8123]" in text
    assert "shipyard.listen /srv/apps/mysite --host 127.0.0.1 --port 8123" in text
    assert "[program:mysite-web-green]" in text and "[program:mysite-worker]" in text
    assert f"directory = /srv/apps/mysite/releases/{RELEASE}" in text
    assert (
        f"-I -S {prov.LAUNCH_SCRIPT} /srv/apps/mysite {RELEASE} web --index "
        "'%(process_num)d' --color green --port 8123"
    ) in text
    assert "--run" not in text  # no release there to decide from: the launcher does at start
    assert "numprocs = 2" in text and "stopwaitsecs = 45" in text
    assert "process_name = web.%(process_num)d" in text
    assert "stdout_logfile = /srv/apps/mysite/logs/web-green.%(process_num)d.log" in text
    assert "stopasgroup = true" in text.split("[program:mysite-worker]")[1]
    assert text.count("user = deploy") == 3
    assert "environment" not in text  # .env is read by the launcher at start


def test_percent_in_paths_is_escaped():
    app = App(Path("/srv/100%apps"), "mysite")
    text = prov.render_programs(app, [prov.Program("worker", RELEASE, 1)])
    assert "directory = /srv/100%%apps/mysite/releases/" in text


def test_render_main_embedded(tmp_path):
    app = App(tmp_path, "mysite")
    sv = prov.settings(app, HostConfig())
    text = prov.render_main(app, sv)
    assert f"file = {tmp_path}/mysite/run/supervisord.sock" in text
    assert f"pidfile = {tmp_path}/mysite/run/supervisord.pid" in text
    assert "files = programs.conf" in text


def test_settings_modes():
    embedded = prov.settings(APP, HostConfig())
    assert embedded.embedded and embedded.socket == Path("/srv/apps/mysite/run/supervisord.sock")
    host = parse_host_config('[supervisor]\nmode = "system"\nuser = "deploy"\n', "host.toml")
    system = prov.settings(APP, host)
    assert not system.embedded and system.socket == Path("/var/run/supervisor.sock")
    assert system.include == Path("/srv/apps/mysite/run/programs.conf") and system.user == "deploy"
    custom = parse_host_config('[supervisor]\nsocket = "run/s.sock"\n', "host.toml")
    assert prov.settings(APP, custom).socket == Path("/srv/apps/mysite/run/s.sock")


def test_long_socket_paths_refused():
    with pytest.raises(ConfigError, match="unix sockets allow 107"):
        prov.check_socket_path(Path("/" + "x" * 120), "supervisord socket")


@pytest.mark.parametrize(
    "text, message",
    [
        ('[supervisor]\nmode = "docker"', "supervisor.mode must be 'embedded' or 'system'"),
        ("[supervisor]\nsokcet = 1", "unknown key 'supervisor.sokcet'"),
        ("port = 70000", "port must be 1-65535"),
    ],
)
def test_host_config_refusals(text, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        parse_host_config(text, "host.toml")


def test_stop_grace_and_health_merge():
    config = parse_app_config('stop_grace = 5\n[health]\npath = "healthz"\ntimeout = 3\n')
    assert config.stop_grace == 5
    with pytest.raises(ConfigError, match="stop_grace must be >= 0"):
        parse_app_config("stop_grace = -1")
    host = parse_host_config("[health]\nstatus = 204\n", "host.toml")
    health = health_for(config.health, host)
    assert (health.path, health.status, health.timeout, health.retries) == ("/healthz", 204, 3, 60)
    assert str(health) == "GET /healthz 204" and health.interval == 0.1


def test_check_process_on_this_process():
    venv = Path(sys.prefix).resolve()
    here = Path.cwd()
    if not Path(sys.argv[0]).resolve().is_relative_to(venv) and sys.prefix == sys.base_prefix:
        pytest.skip("not running from a virtualenv")
    assert check_process(os.getpid(), here, venv, compound=False) == ""
    assert check_process(os.getpid(), Path("/"), venv, compound=False).startswith(
        f"runs in {here}, not in /"
    )
    problem = check_process(os.getpid(), here, Path("/nonexistent/venv"), compound=False)
    assert "not the release's virtualenv /nonexistent/venv" in problem


def test_check_process_in_a_directory_of_the_release(tmp_path):
    """`gunicorn --chdir backend`, `cd backend && …`: the release's code, run from below it."""
    app = App.at("mysite", tmp_path)
    release, other = app.releases / "20261201T000000Z-aaaaaaa", tmp_path / "other"
    (release / "backend").mkdir(parents=True)
    (other / "backend").mkdir(parents=True)
    sleeper = subprocess.Popen(["sleep", "30"], cwd=release / "backend")
    try:
        assert check_process(sleeper.pid, release, tmp_path / "venv", compound=False) == ""
        problem = check_process(sleeper.pid, other, tmp_path / "venv", compound=False)
        assert problem.startswith(f"runs in {release / 'backend'}, not in {other}")
        sibling = release.with_name(release.name + "-b")  # a name that starts like it
        assert check_process(sleeper.pid, sibling, tmp_path / "venv", compound=False)
        assert process_views.release_of(app, str(release / "backend")) == release.name
    finally:
        sleeper.kill()
        sleeper.wait()


def test_holder_hands_out_its_very_socket(tmp_path):
    listener = listen.bind("127.0.0.1", 0)
    path = tmp_path / "listen.sock"
    threading.Thread(target=listen.serve, args=(listener, path), daemon=True).start()
    fd = launch.fetch_listener(path, wait=5)
    with socket.socket(fileno=fd) as shared:
        assert shared.getsockname() == listener.getsockname()
        client = socket.create_connection(listener.getsockname())
        conn, _ = shared.accept()  # the queue is one: accepted through the handed-over fd
        conn.close()
        client.close()
    listener.close()


def test_process_env(tmp_path):
    app = App(tmp_path, "mysite")
    (app.shared).mkdir(parents=True)
    (app.shared / ".env").write_text("SECRET_KEY=s3cret\n")
    app.config_file.write_text("allow_root = true\n")  # commands refuse root without it
    release = app.releases / RELEASE
    env = launch.process_env(str(app.dir), RELEASE, "web", 2, 8123)
    assert env["PORT"] == "8123" and env["SECRET_KEY"] == "s3cret"
    assert env["SHIPYARD_PROCESS"] == "web.2" and env["SHIPYARD_RELEASE"] == RELEASE
    assert env["PATH"].startswith(f"{release}/.venv/bin:")
    assert "PORT" not in launch.process_env(str(app.dir), RELEASE, "worker", 1, None)
    from shipyard.release import command_env, shared_env  # what every pushed command gets

    shipyard_env = command_env(app, release, shared_env(app))
    shipyard_env.update(PYTHONUNBUFFERED="1", SHIPYARD_PROCESS="web.2", PORT="8123")
    assert env == {k: v for k, v in shipyard_env.items() if k not in launch.DROPPED}


def test_log_excerpt_keeps_the_cause_when_it_scrolled_out():
    cause = ["Traceback (most recent call last):", '  File "wsgi.py", line 1, in <module>']
    cause += ['    raise RuntimeError("boom")', "RuntimeError: boom"]
    log = ["booting", *cause, *(f"gunicorn says {i}" for i in range(30))]
    lines = excerpt(log, 20).splitlines()
    assert len(lines) == 20 and lines[:4] == cause and lines[4] == "…"
    assert lines[-1] == "gunicorn says 29"
    assert excerpt(log[:10], 20).splitlines() == log[:10]


def test_health_statuses_host_and_proto():
    config = parse_app_config(
        '[health]\nstatus = [200, 302]\nhost = "www.example.com"\nhttps = true\n'
    )
    health = health_for(config.health, parse_host_config("", "host.toml"))
    assert health.accepts == (200, 302) and str(health) == "GET / 200/302"
    assert health.headers()["Host"] == "www.example.com"
    assert health.headers()["X-Forwarded-Proto"] == "https"
    assert "X-Forwarded-Proto" not in health_for({}, parse_host_config("", "h")).headers()
    # with domains, the probe asks as the front door forwards: the first domain, over https
    fronted = parse_host_config('domains = ["www.example.org", "example.org"]\n', "h")
    assert health_for({}, fronted).headers()["Host"] == "www.example.org"
    assert health_for({}, fronted).headers()["X-Forwarded-Proto"] == "https"
    assert health_for(config.health, fronted).headers()["Host"] == "www.example.com"
    plain = parse_host_config('domains = ["example.org"]\n[proxy]\ntls = "off"\n', "h")
    assert "X-Forwarded-Proto" not in health_for({}, plain).headers()
    for bad in ("status = []", 'status = ["ok"]', "status = [200, 9000]", 'host = "a b"'):
        with pytest.raises(ConfigError, match=r"health\.(status|host)"):
            parse_app_config(f"[health]\n{bad}\n")


@pytest.mark.parametrize(
    ("status", "location", "final", "hint"),
    [
        (400, "", True, "ALLOWED_HOSTS"),
        (301, "https://x/", True, "SECURE_SSL_REDIRECT"),
        (302, "/accounts/login/?next=/", True, "[health] status = [200, 302]"),
        (403, "", True, "needs a login"),
        (404, "", False, None),  # a route that may appear: keep waiting
        (429, "", False, None),
        (503, "", False, None),
    ],
)
def test_answers_that_waiting_will_not_change(status, location, final, hint):
    health = Health()
    answer = Answer(status, location)
    assert final_answer(answer, health) is final
    if hint:
        assert hint in health_hint(answer, health, "shipyard.toml")
    assert not final_answer(Answer(302, "/login"), Health(status=[200, 302]))


def test_stop_signals_per_type_and_uwsgi_by_default(tmp_path):
    config = parse_app_config(
        '[processes.worker]\ncount = 2\nstop_signal = "sigquit"\n'
        '[processes.web]\nstop_signal = "HUP"\n'
    )
    assert config.processes == {"worker": 2} and config.signals == {"worker": "QUIT", "web": "HUP"}
    procfile = {"web": "uwsgi --http :$PORT --wsgi-file app.py", "worker": "celery worker"}
    programs = prov.plan(procfile, config.processes, RELEASE, 8000, 30, config.signals)
    assert programs["web"].stop_signal == "HUP" and programs["worker"].count == 2
    defaults = prov.plan(procfile, {}, RELEASE, 8000, 30)
    assert (defaults["web"].stop_signal, defaults["worker"].stop_signal) == ("INT", "TERM")
    assert prov.default_stop_signal("uwsgi --die-on-term --http :1") == "TERM"
    assert prov.default_stop_signal("A=1 python -m uwsgi --ini x.ini") == "INT"
    app = App(tmp_path, "site")
    assert "stopsignal = INT\n" in prov.render_program(app, defaults["web"])
    with pytest.raises(ConfigError, match=r"\[processes\] must map"):
        parse_app_config('[processes.web]\nstop_signal = "STOP"\n')


def test_web_zero_needs_no_web_line():
    """`[processes] web = 0` is how an app says it runs without web; other types keep the check."""
    prov.check_counts({"worker": "sleep 9"}, {"web": 0}, "shipyard.toml")
    assert set(prov.plan({"worker": "sleep 9"}, {"web": 0}, RELEASE, 8123, 12)) == {"worker"}
    with pytest.raises(ConfigError, match="web = 1, but the Procfile has no `web:`"):
        prov.check_counts({"worker": "sleep 9"}, {"web": 1}, "shipyard.toml")
    with pytest.raises(ConfigError, match="beat = 0, but the Procfile has no `beat:`"):
        prov.check_counts({"worker": "sleep 9"}, {"beat": 0}, "shipyard.toml")


def test_what_is_stopping_is_kept_in_the_state_file(tmp_path):
    """The old web sent TERM without a wait is written down, for whoever reaps it."""
    app = App(tmp_path, "mysite")
    app.run.mkdir(parents=True)
    web = prov.plan({"web": "gunicorn x"}, {}, RELEASE, 8123, 5)["web"]
    sv = Supervisor(app, HostConfig())
    sv.stopping = [web]
    sv.save_state([])
    again = Supervisor(app, HostConfig())
    assert again.load_state() == [] and again.stopping == [web]
    again.stopping = []
    again.save_state([web])
    assert "stopping" not in prov.state_file(app).read_text()
    assert Supervisor(app, HostConfig()).load_state() == [web]


def test_who_holds_a_listening_socket():
    """What restart waits for once the old web is sent TERM: its master lets go of the socket."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    sockets = listening_sockets(port)
    assert len(sockets) == 1 and holds(os.getpid(), sockets)
    assert port_owner(port).endswith(f"(pid {os.getpid()})")
    listener.close()
    assert listening_sockets(port) == set() and not holds(os.getpid(), sockets)
    assert not holds(2**22 + 1, sockets)  # no such process


# --- the XML-RPC client ---------------------------------------------------------------


def http_answer(body: str, status: str = "200 OK") -> bytes:
    return f"HTTP/1.0 {status}\r\nContent-Type: text/xml\r\n\r\n{body}".encode()


def test_rpc_answers_read_as_xmlrpc_client_reads_them():
    import xmlrpc.client

    infos = [
        {"name": "web.1", "group": "mysite-web-blue", "pid": 4242, "state": 20,
         "statename": "RUNNING", "description": "pid 4242, uptime 0:00:03", "exitstatus": 0,
         "spawnerr": "", "stdout_logfile": "/srv/a & b/<web>.log", "now": 1764547200,
         "ratio": 0.5, "flag": True, "none": False},
        {"name": "wörker.1", "group": "g", "pid": 0, "state": -1, "statename": "",
         "description": "", "nested": [[1, "two"], {"k": []}]},
    ]  # fmt: skip
    for value in (infos, True, 7, "", "<&>", [], {}):
        body = xmlrpc.client.dumps((value,), methodresponse=True)
        assert supervisord.answer(http_answer(body)) == value
    fault = xmlrpc.client.dumps(xmlrpc.client.Fault(10, "BAD_NAME: mysite-web"))
    with pytest.raises(Fault) as caught:
        supervisord.answer(http_answer(fault))
    assert (caught.value.faultCode, caught.value.faultString) == (10, "BAD_NAME: mysite-web")


@pytest.mark.parametrize(
    "raw",
    [
        http_answer("", "500 Internal Server Error"),
        b"",
        http_answer("<methodResponse><params>"),
        http_answer("not xml at all"),
        http_answer("<methodResponse><params></params></methodResponse>"),
    ],
)
def test_rpc_answers_that_are_not_xmlrpc_say_so(raw):
    with pytest.raises(ValueError):
        supervisord.answer(raw)


def test_rpc_requests_read_as_xmlrpc_client_reads_them():
    import xmlrpc.client

    raw = supervisord.request("stopProcessGroup", ("a&b <c>", False, 3))
    head, body = raw.split(b"\r\n\r\n", 1)
    assert head.startswith(b"POST /RPC2 HTTP/1.0\r\n")
    assert f"Content-Length: {len(body)}".encode() in head
    assert xmlrpc.client.loads(body) == (("a&b <c>", False, 3), "supervisor.stopProcessGroup")
    with pytest.raises(TypeError):
        supervisord.request("addProcessGroup", (1.5,))


def test_rpc_against_a_real_supervisord(tmp_path):
    sock = tmp_path / "s.sock"
    conf = tmp_path / "supervisord.conf"
    conf.write_text(
        f"[unix_http_server]\nfile={sock}\n[supervisord]\nlogfile={tmp_path / 'log'}\n"
        f"pidfile={tmp_path / 'pid'}\nnodaemon=true\n"
        "[rpcinterface:supervisor]\n"
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n"
        f"[program:sleeper]\ncommand=sleep 60\nstartsecs=0\n"
    )
    daemon = subprocess.Popen([sys.executable, "-m", "supervisor.supervisord", "-c", str(conf)])
    try:
        deadline = time.monotonic() + 15
        while not sock.exists() and daemon.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert supervisord.rpc(sock, "getState", (), 5) == {"statecode": 1, "statename": "RUNNING"}
        (info,) = supervisord.rpc(sock, "getAllProcessInfo", (), 5)
        assert (info["name"], info["group"]) == ("sleeper", "sleeper")
        with pytest.raises(Fault) as caught:
            supervisord.rpc(sock, "stopProcessGroup", ("no-such-group", False), 5)
        assert caught.value.faultCode == 10  # supervisor.xmlrpc.Faults.BAD_NAME
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
