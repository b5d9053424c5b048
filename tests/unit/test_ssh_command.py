"""The forced command's decisions: what an SSH_ORIGINAL_COMMAND may run (no sshd needed)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from conftest import run

from shipyard import repo
from shipyard.app import App
from shipyard.errors import ShipyardError
from shipyard.provision.shell import NotAllowed, decide, main

SHIPYARD = [sys.executable, "-m", "shipyard"]


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """One deploy root for the module: the decisions only read it."""
    home = tmp_path_factory.mktemp("home")
    repo.create(App.at("mysite", home / "apps"))
    return home


def allowed(command: str, home: Path) -> list[str]:
    return decide(command, home, home / "apps", SHIPYARD).argv


@pytest.mark.parametrize(
    "path",
    [
        "apps/mysite/repo.git",
        "'apps/mysite/repo.git'",
        "~/apps/mysite/repo.git",
        "'~/apps/mysite/repo.git'",
        "apps/mysite/repo.git/",
        "{home}/apps/mysite/repo.git",
    ],
)
@pytest.mark.parametrize("verb", ["git-receive-pack", "git-upload-pack"])
def test_git_commands_on_app_repos_are_allowed(home: Path, verb: str, path: str):
    argv = allowed(f"{verb} {path.format(home=home)}", home)
    assert argv[1:] == [verb.removeprefix("git-"), str(home / "apps" / "mysite" / "repo.git")]
    assert argv[0].endswith("git")


@pytest.mark.parametrize(
    "command, reason",
    [
        (None, "interactive logins are disabled"),
        ("", "interactive logins are disabled"),
        ("id", "'id' is not allowed"),
        ("sh -c id", "'sh' is not allowed"),
        ("/bin/bash", "'/bin/bash' is not allowed"),
        ("git-receive-pack '../etc'", "contains '..'"),
        ("git-receive-pack 'apps/mysite/repo.git/../../../etc'", "contains '..'"),
        ("git-receive-pack apps/../apps/mysite/repo.git", "contains '..'"),
        ("git-upload-pack /etc", "is not an app repository"),
        ("git-upload-pack apps/mysite", "is not an app repository"),
        ("git-upload-pack apps/other/repo.git", "no app 'other' on this host"),
        ("git-upload-pack apps/My Site/repo.git", "takes exactly one repository path"),
        ("git-upload-pack 'apps/My Site/repo.git'", "invalid app name"),
        ("git-upload-pack ~root/apps/mysite/repo.git", "only ~/"),
        ("git-receive-pack apps/mysite/repo.git extra", "takes exactly one"),
        ("git-receive-pack", "takes exactly one"),
        ("git-receive-pack 'unterminated", "cannot parse"),
        ("git receive-pack apps/mysite/repo.git", "'git' is not allowed"),
        ("git-upload-archive apps/mysite/repo.git", "not allowed"),
        ("git-receive-pack '$(id)'", "is not an app repository"),
        ("shipyard", "shipyard without a command is not allowed"),
        ("shipyard init evil", "shipyard init is not allowed"),
        ("shipyard provision --user x", "shipyard provision is not allowed"),
        ("shipyard run-deploy mysite", "shipyard run-deploy is not allowed"),
        ("shipyard ssh-command bob", "shipyard ssh-command is not allowed"),
        ("shipyard --root / status mysite", "shipyard --root is not allowed"),
        ("shipyard status ../../etc", "is not allowed"),
        ("shipyard log mysite --root=/", "is not allowed"),
        ("shipyard status 'my site'", "is not allowed"),
        ("shipyard status /etc/passwd", "is not allowed"),
    ],
)
def test_everything_else_is_refused(home: Path, command: str | None, reason: str):
    with pytest.raises(NotAllowed, match=reason.replace("(", r"\(").replace("$", r"\$")):
        decide(command, home, home / "apps", SHIPYARD)


def test_symlinked_app_out_of_the_root_is_refused(tmp_path: Path):
    elsewhere = App.at("secret", tmp_path / "elsewhere")
    repo.create(elsewhere)
    (tmp_path / "apps").mkdir()
    (tmp_path / "apps" / "link").symlink_to(elsewhere.dir)
    with pytest.raises(NotAllowed, match="does not resolve inside"):
        allowed("git-upload-pack apps/link/repo.git", tmp_path)


@pytest.mark.parametrize("command", ["status", "releases", "history", "log", "rollback", "doctor"])
def test_operator_commands_run_shipyard_on_the_deploy_root(home: Path, command: str):
    argv = allowed(f"shipyard {command} mysite", home)
    assert argv == [*SHIPYARD, "--root", str(home / "apps"), command, "mysite"]
    assert allowed("shipyard deploy mysite main", home)[-3:] == ["deploy", "mysite", "main"]
    assert allowed("shipyard log mysite 3", home)[-1] == "3"


def test_main_refuses_in_one_line_and_logs_it(tmp_path: Path, monkeypatch, capsys):
    home = tmp_path
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("SSH_ORIGINAL_COMMAND", "cat /etc/shadow")
    monkeypatch.setenv("SSH_CLIENT", "192.0.2.7 50000 22")
    assert main("alice", home / "apps") == 126
    err = capsys.readouterr().err
    assert err.startswith("shipyard: refused: 'cat' is not allowed") and err.count("\n") == 1
    log = (home / ".shipyard" / "ssh.log").read_text()
    assert "key=alice from=192.0.2.7 refused ('cat' is not allowed): 'cat /etc/shadow'" in log
    assert (home / ".shipyard" / "ssh.log").stat().st_mode & 0o077 == 0


def test_forced_command_execs_git_with_the_pusher(home: Path):
    """Through the real CLI: SHIPYARD_PUSHER reaches git (and so the hooks)."""
    env = {
        "HOME": str(home),
        "PATH": "/usr/bin:/bin",
        "SSH_ORIGINAL_COMMAND": "git-upload-pack 'apps/mysite/repo.git'",
    }
    result = run(
        sys.executable,
        "-m",
        "shipyard",
        "ssh-command",
        "alice",
        env=env,
        input="0000",  # a flush: the client wants nothing
    )
    assert "capabilities" in result.stdout or result.stdout.startswith("0000")
    assert "allowed" in (home / ".shipyard" / "ssh.log").read_text()


@pytest.mark.parametrize(
    "command, tail",
    [
        ("shipyard config mysite", ["config", "mysite"]),
        ("shipyard config mysite --show", ["config", "mysite", "--show"]),
        (
            "shipyard config set mysite 'URL=postgres://u:p@db/x?a=1 b' DEBUG=0",
            ["config", "set", "mysite", "URL=postgres://u:p@db/x?a=1 b", "DEBUG=0"],
        ),
        (
            "shipyard config set mysite TOKEN --stdin",
            ["config", "set", "mysite", "TOKEN", "--stdin"],
        ),
        ("shipyard config unset mysite A B", ["config", "unset", "mysite", "A", "B"]),
        ("shipyard restart mysite --process web", ["restart", "mysite", "--process", "web"]),
        ("shipyard processes mysite --start", ["processes", "mysite", "--start"]),
        (
            "shipyard run mysite --host web2 -- python manage.py check",
            ["run", "mysite", "--host", "web2", "--", "python", "manage.py", "check"],
        ),
        (
            "shipyard logs mysite --host 10.0.0.2:7070",
            ["logs", "mysite", "--host", "10.0.0.2:7070"],
        ),
        ("shipyard logs mysite -n 50 --host=web3", ["logs", "mysite", "-n", "50", "--host=web3"]),
    ],
)
def test_operating_commands_pass_with_their_data(home: Path, command: str, tail: list[str]):
    argv = allowed(command, home)
    assert argv == [*SHIPYARD, "--root", str(home / "apps"), *tail]


@pytest.mark.parametrize(
    "command, reason",
    [
        ("shipyard config set mysite ../x=1", "'../x=1' is not allowed"),
        ("shipyard config --root=/ set mysite A=1", "is not allowed"),
        ("shipyard config set /etc A=1", "'/etc' is not allowed"),
        ("shipyard config mysite 'A=b c'", "is not allowed"),  # a value only after `set APP`
        ("shipyard restart mysite --process ../web", "is not allowed"),
        ("shipyard processes ../../etc --start", "is not allowed"),
        ("shipyard run mysite --host ../web2 -- ls", "'../web2' is not allowed"),
        ("shipyard run mysite --host /etc/passwd -- ls", "'/etc/passwd' is not allowed"),
        ("shipyard logs mysite --host=~/x", "'--host=~/x' is not allowed"),
        ("shipyard logs mysite --host 'web2 --root=/'", "is not allowed"),
    ],
)
def test_operating_commands_refuse_paths_and_root(home: Path, command: str, reason: str):
    with pytest.raises(NotAllowed, match=reason.replace("(", r"\(")):
        decide(command, home, home / "apps", SHIPYARD)


def test_a_terminal_only_for_run(home: Path):
    with pytest.raises(NotAllowed, match="only allowed for `shipyard run`"):
        decide("shipyard status mysite", home, home / "apps", SHIPYARD, tty=True)
    with pytest.raises(NotAllowed, match="only allowed for `shipyard run`"):
        decide("git-upload-pack apps/mysite/repo.git", home, home / "apps", SHIPYARD, tty=True)


def test_the_log_hides_config_values(tmp_path: Path, monkeypatch):
    from shipyard.provision.shell import loggable

    assert loggable("shipyard config set mysite 'TOKEN=s3cret x' A=1") == (
        "shipyard config set mysite 'TOKEN=***' 'A=***'"
    )
    assert loggable("shipyard status mysite") == "shipyard status mysite"


@pytest.mark.parametrize(
    "command, tail",
    [
        (
            "shipyard domains mysite add www.example.com",
            ["domains", "mysite", "add", "www.example.com"],
        ),
        ("shipyard domains mysite list", ["domains", "mysite", "list"]),
        ("shipyard maintenance mysite on", ["maintenance", "mysite", "on"]),
        ("shipyard tls mysite", ["tls", "mysite"]),
        ("shipyard tls --all", ["tls", "--all"]),
    ],
)
def test_front_door_commands_over_ssh(home: Path, command: str, tail: list[str]):
    assert allowed(command, home) == [*SHIPYARD, "--root", str(home / "apps"), *tail]


def test_tls_files_are_not_given_over_ssh(home: Path):
    """The certificate and key are paths on the host: installed there, not named over SSH."""
    with pytest.raises(NotAllowed, match="is not allowed"):
        decide(
            "shipyard tls mysite --certificate /etc/shadow --key /k", home, home / "apps", SHIPYARD
        )


def test_the_forced_command_runs_without_building_the_parser(monkeypatch, tmp_path):
    from shipyard import cli
    from shipyard.provision import shell

    called = []
    monkeypatch.setattr(cli, "build_parser", lambda *_: pytest.fail("the parser was built"))

    def forced(name, root, run=None):
        called.append((name, root))
        return 126

    monkeypatch.setattr(shell, "main", forced)
    monkeypatch.setenv("SHIPYARD_ROOT", str(tmp_path))
    with pytest.raises(SystemExit) as stop:
        cli.main(["ssh-command", "alice"])
    assert (stop.value.code, called) == (126, [("alice", tmp_path)])
    assert cli.forced_command(["ssh-command", "--help"]) is None  # the parser's, as before
    assert cli.forced_command(["ssh-command", "alice", "x"]) is None


def test_an_allowed_shipyard_command_runs_in_the_forced_commands_process(home: Path, monkeypatch):
    """No second interpreter: the command runs in `shipyard ssh-command`'s own process, with
    the environment the exec would have had (no GIT_*/SHIPYARD_* of the client's, the pusher)
    and the deploy root; its exit status is the session's."""
    import atexit

    from shipyard import cli

    environ = {
        "HOME": str(home),
        "PATH": "/usr/bin:/bin",
        "SSH_ORIGINAL_COMMAND": "shipyard rollback mysite",
        "SHIPYARD_NOTIFY": "http://elsewhere/",
        "SHIPYARD_PUSHER": "mallory",
        "GIT_DIR": "/tmp/other.git",
        "GIT_PROTOCOL": "version=2",
    }
    monkeypatch.setattr(os, "environ", environ)  # a copy the forced command may rewrite

    def no_exec(*args):
        raise AssertionError(f"exec'd {args[1]}")

    seen = {}

    def rollback(args):
        seen.update(env=dict(os.environ), root=args.root, app=args.app, release=args.release)
        return 3

    def exit_now(code):
        raise SystemExit(code)  # the process would end here, the interpreter not torn down

    monkeypatch.setattr(os, "execve", no_exec)
    monkeypatch.setattr(os, "_exit", exit_now)
    monkeypatch.setattr(atexit, "_run_exitfuncs", lambda: None)  # pytest's own stay registered
    monkeypatch.setattr(cli, "cmd_rollback", rollback)
    with pytest.raises(SystemExit) as exit:
        cli.main(["ssh-command", "alice"])
    assert exit.value.code == 3
    assert seen == {
        "env": {
            "HOME": str(home),
            "PATH": "/usr/bin:/bin",
            "SSH_ORIGINAL_COMMAND": "shipyard rollback mysite",
            "GIT_PROTOCOL": "version=2",
            "SHIPYARD_PUSHER": "alice",
        },
        "root": home / "apps",
        "app": "mysite",
        "release": None,
    }
    assert (
        "key=alice from=- allowed: 'shipyard rollback mysite'"
        in (home / ".shipyard" / "ssh.log").read_text()
    )

    def failing(args):
        raise ShipyardError("nothing to roll back to")

    monkeypatch.setattr(cli, "cmd_rollback", failing)
    with pytest.raises(SystemExit) as exit:
        cli.main(["ssh-command", "alice"])
    assert exit.value.code == 1


def test_the_in_process_command_ends_the_process_once_done(monkeypatch):
    """Output flushed and exit handlers run, then os._exit; a normal exit while a thread runs."""
    import atexit
    import threading

    from shipyard.teardown import exit_now

    ended, handled = [], []
    monkeypatch.setattr(os, "_exit", ended.append)
    monkeypatch.setattr(atexit, "_run_exitfuncs", lambda: handled.append("ran"))
    exit_now(3)
    assert ended == [3] and handled == ["ran"]
    release = threading.Event()
    worker = threading.Thread(target=release.wait)
    worker.start()
    try:
        assert exit_now(4) == 4 and ended == [3]
    finally:
        release.set()
        worker.join()
