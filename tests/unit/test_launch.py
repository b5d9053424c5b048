"""The launcher as programs.conf runs it (``python -I -S …/launch.py`` with the options decided
when the file was written): the program's script, its environment, the web sockets, the root
guard, a .env beyond plain lines."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from shipyard import guard, launch, listen
from shipyard import programs as prov
from shipyard.app import App

RID = "20260101T000000Z-aaaaaaa"
AS_ROOT = os.geteuid() == 0

# a stand-in for gunicorn in the release's venv: what it inherited, then its exit
FAKE_GUNICORN = """#!{python}
import os, socket, sys
shared = socket.socket(fileno=3)
private = socket.socket(fileno=4)
print("fds", os.environ["LISTEN_FDS"], os.environ["LISTEN_PID"] == str(os.getpid()))
print("shared", shared.getsockname()[1], "private", private.getsockname())
print("argv", " ".join(sys.argv[1:]), "port", os.environ["PORT"])
"""


@pytest.fixture
def app(tmp_path: Path) -> App:
    app = App(tmp_path, "mysite")
    for where in ("run", "logs", "shared"):
        (app.dir / where).mkdir(parents=True)
    app.config_file.write_text("allow_root = true\n")  # commands refuse root without it
    release = app.release_dir(RID)
    (release / ".venv" / "bin").mkdir(parents=True)
    (release / "Procfile").write_text(
        "worker: echo 100% from $SHIPYARD_PROCESS in $SHIPYARD_RELEASE, key $SECRET_KEY\n"
        "web: gunicorn mysite.wsgi --workers 2 --bind 127.0.0.1:$PORT\n"
    )
    gunicorn = release / ".venv" / "bin" / "gunicorn"
    gunicorn.write_text(FAKE_GUNICORN.format(python=sys.executable))
    gunicorn.chmod(0o755)
    (app.shared / ".env").write_text("SECRET_KEY=s3cret\n")
    return app


def command(app: App, kind: str, index: int = 1, color=None, port=None, root_ok=None) -> list:
    """The command programs.conf gives supervisord, %(process_num)d expanded as it does."""
    program = prov.Program(kind, RID, 1, port=port, color=color, handover=bool(color))
    line = next(
        ln for ln in prov.render_program(app, program, root_ok=root_ok).splitlines()
        if ln.startswith("command = ")
    )  # fmt: skip
    text = line.removeprefix("command = ").replace("%(process_num)d", str(index))
    return shlex.split(text.replace("%%", "%"))


def run(args: list, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, **kwargs)


def test_the_worker_runs_its_procfile_command_as_decided_when_programs_conf_was_written(app):
    args = command(app, "worker", index=2)
    assert args[1:4] == ["-I", "-S", prov.LAUNCH_SCRIPT]
    assert "--run" in args and "--root-ok" not in args  # no stamp given: the guard parses
    ran = run(args)
    assert ran.returncode == 0, ran.stderr + ran.stdout
    assert f"100% from worker.2 in {RID}, key s3cret" in ran.stdout  # % as written
    assert f"worker.2 starting on releases/{RID}" in ran.stdout


def test_a_web_instance_gets_the_shared_socket_and_its_private_one(app):
    listener = listen.bind("127.0.0.1", 0)
    port = listener.getsockname()[1]
    holder = prov.listen_socket(app, port)
    threading.Thread(target=listen.serve, args=(listener, holder), daemon=True).start()
    args = command(app, "web", color="green", port=port)
    ran = run(args)
    assert ran.returncode == 0, ran.stderr + ran.stdout
    assert "fds 2 True" in ran.stdout
    assert f"shared {port} private {prov.probe_socket(app, 'green', 1)}" in ran.stdout
    assert f"argv mysite.wsgi --workers 2 --bind 127.0.0.1:{port} port {port}" in ran.stdout
    listener.close()


def test_a_dotenv_beyond_plain_lines_is_read_by_python_dotenv(app):
    (app.shared / ".env").write_text("export SECRET_KEY='two words'  # quoted\n")
    ran = run(command(app, "worker"))
    assert ran.returncode == 0, ran.stderr + ran.stdout
    assert "key two words" in ran.stdout
    (app.shared / ".env").write_text("SECRET_KEY='unterminated\n")
    ran = run(command(app, "worker"))
    assert ran.returncode == launch.EX_CONFIG
    assert ".env:1: cannot parse this line of .env" in ran.stdout + ran.stderr


@pytest.mark.skipif(not AS_ROOT, reason="the root guard refuses root only")
def test_as_root_the_stamp_of_the_config_that_allowed_it_must_still_match(app):
    stamp = guard.allowed_root_stamp(app)
    assert stamp
    ran = run(command(app, "worker", root_ok=stamp))
    assert ran.returncode == 0, ran.stderr + ran.stdout
    app.config_file.write_text("allow_root = false\n")  # root no longer allowed
    assert guard.allowed_root_stamp(app) is None
    ran = run(command(app, "worker", root_ok=stamp))
    assert ran.returncode == launch.EX_CONFIG
    assert guard.REFUSAL in ran.stdout + ran.stderr
    assert run(command(app, "worker", root_ok="forged")).returncode == launch.EX_CONFIG


def test_a_release_without_the_type_fails_to_start_with_why(app):
    (app.release_dir(RID) / "Procfile").write_text("web: gunicorn x\n")
    args = command(app, "worker")
    assert "--run" not in args  # the launcher works it out at start, and says why not
    ran = run(args)
    assert ran.returncode == launch.EX_CONFIG
    assert f"releases/{RID}/Procfile has no `worker:` entry" in ran.stdout + ran.stderr
