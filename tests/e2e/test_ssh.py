"""A provisioned deploy user behind a real sshd on loopback: push over SSH, forced command, doctor.

The module starts one private sshd (its own config, host key and pid file in
a temp dir; never the system's) and provisions one throw-away deploy user
(``sydeploy`` + random suffix). Both are removed at the end, the user's
processes ended by pid and the user deleted with ``userdel -r``, even when a
test fails.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import EXAMPLES, Work, remove_user, run, shipyard, stop
from httpload import fetch
from portpick import free_port
from test_outcome import break_at

from shipyard import fault_injection
from shipyard.repo import hook_interpreter

pytestmark = pytest.mark.e2e

SSHD = Path("/usr/sbin/sshd")
MIGRATION = """from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("polls", "0002_choice")]
    operations = [migrations.AddField("question", "votes", models.IntegerField(default=0))]
"""
# the machine's TLS/proxy settings, handed to the deploy user's sessions (sshd starts them with
# an empty environment) so that its deploys can reach the package index from here too
PASS_ENV = (
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "UV_INDEX_URL",
    "UV_DEFAULT_INDEX",
    "UV_EXTRA_INDEX_URL",
    "UV_NATIVE_TLS",
)


def keygen(path: Path, comment: str) -> Path:
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path)
    return path


@dataclass
class Server:
    user: str
    port: int
    dir: Path
    keys: dict[str, Path]
    provision_out: str = ""
    provision_seconds: float = 0.0

    @property
    def home(self) -> Path:
        return Path(pwd.getpwnam(self.user).pw_dir)

    @property
    def app(self) -> Path:
        return self.home / "apps" / "mysite"

    def url(self, app: str = "mysite") -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}/~/apps/{app}/repo.git"

    def ssh_options(self, key: str = "alice") -> list[str]:
        return [
            "-i",
            str(self.keys[key]),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-p",
            str(self.port),
        ]

    def git_ssh(self, key: str = "alice") -> str:
        return "ssh " + " ".join(self.ssh_options(key))

    def ssh(self, *command: str, key: str = "alice", options: tuple[str, ...] = ()):
        return run(
            "ssh",
            *self.ssh_options(key),
            *options,
            f"{self.user}@127.0.0.1",
            *command,
            check=False,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )

    def provision(self, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
        keys = [f"--key=alice={self.keys['alice']}.pub"]
        return shipyard(
            "provision", "--user", self.user, *keys, "--app", "mysite", *extra, check=check
        )

    def as_user(self, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess:
        env = {"HOME": str(self.home), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
        return run("runuser", "-u", self.user, "--", *args, check=check, env=env)


def sshd_config(directory: Path, port: int, user: str) -> str:
    passed = [
        f"{name}={os.environ[name]}"
        for name in PASS_ENV
        if os.environ.get(name) and re.fullmatch(r"[\w./:,=@+-]+", os.environ[name])
    ]
    return "\n".join(
        [
            f"Port {port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {directory / 'ssh_host_ed25519_key'}",
            f"PidFile {directory / 'sshd.pid'}",
            "UsePAM no",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes",
            "AuthorizedKeysFile .ssh/authorized_keys",
            "StrictModes yes",
            "PermitRootLogin no",
            f"AllowUsers {user}",
            "LogLevel VERBOSE",
            *([f"SetEnv {' '.join(passed)}"] if passed else []),
            "",
        ]
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("needs root: creates a deploy user and runs a private sshd")
    if not SSHD.exists() or not shutil.which("ssh"):
        pytest.skip("openssh-server/client not installed (make system-deps installs them)")
    directory = tmp_path_factory.mktemp("sshd")
    user = f"sydeploy{secrets.token_hex(3)}"
    port = free_port()
    keys = {name: keygen(directory / name, f"{name}@laptop") for name in ("alice", "bob", "eve")}
    host_key = directory / "ssh_host_ed25519_key"
    keygen(host_key, "test-host")
    (directory / "sshd_config").write_text(sshd_config(directory, port, user))
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    log = open(directory / "sshd.log", "wb")  # noqa: SIM115 - closed in the finally
    sshd = None
    srv = Server(user, port, directory, keys)
    try:
        started = time.monotonic()
        srv.provision_out = srv.provision().stdout
        srv.provision_seconds = time.monotonic() - started
        config = srv.home / "apps" / "mysite" / "shipyard.toml"  # 8000 may be taken here
        config.write_text(re.sub(r"(?m)^port = \d+$", f"port = {free_port()}", config.read_text()))
        sshd = subprocess.Popen(
            [str(SSHD), "-D", "-f", str(directory / "sshd_config"), "-e"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while True:
            if sshd.poll() is not None:
                raise AssertionError(f"sshd exited:\n{(directory / 'sshd.log').read_text()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield srv
    finally:
        if sshd is not None:
            stop(sshd)
        log.close()
        remove_user(user)


def clone_example(path: Path, url: str) -> Work:
    shutil.copytree(
        EXAMPLES / "mysite",
        path,
        ignore=shutil.ignore_patterns("__pycache__", ".venv", "db.sqlite3"),
    )
    work = Work(path)
    work.git("init", "-q", "-b", "main")
    work.git("add", "-A")
    work.git("commit", "-q", "-m", "initial")
    work.git("remote", "add", "production", url)
    return work


def push(server: Server, work: Work, *args: str, key: str = "alice", check: bool = True):
    started = time.monotonic()
    result = run(
        "git",
        "push",
        "production",
        *(args or ("main",)),
        cwd=work.path,
        check=False,
        env={**os.environ, "GIT_SSH_COMMAND": server.git_ssh(key)},
        timeout=300,
    )
    result.out = result.stdout + result.stderr
    result.seconds = time.monotonic() - started
    if check and result.returncode:
        raise AssertionError(f"push failed ({result.returncode}):\n{result.out}")
    return result


@pytest.fixture(scope="module")
def work(server: Server, tmp_path_factory) -> Work:
    return clone_example(tmp_path_factory.mktemp("ssh-work") / "mysite", server.url())


@pytest.fixture(scope="module")
def first_push(server: Server, work: Work):
    return push(server, work)


def remote_lines(out: str) -> list[str]:
    """What the pusher read after `remote:`, without colour codes."""
    plain = re.sub(r"\x1b\[[0-9;]*m", "", out)
    return [
        ln.removeprefix("remote: ").rstrip()
        for ln in plain.splitlines()
        if ln.startswith("remote:")
    ]


def test_provision_creates_user_key_and_app(server: Server):
    out = server.provision_out
    assert f"create user {server.user}" in out
    assert "authorise key alice (ssh-ed25519) with the forced command" in out
    assert "create app mysite" in out
    assert "Next steps:" in out and f"{server.user}@" in out
    entry = pwd.getpwnam(server.user)
    assert (server.app / "repo.git" / "hooks" / "post-receive").stat().st_uid == entry.pw_uid
    keys = (server.home / ".ssh" / "authorized_keys").read_text()
    line = next(ln for ln in keys.splitlines() if "ssh-command alice" in ln)
    for option in ("no-port-forwarding", "no-X11-forwarding", "no-agent-forwarding", "restrict"):
        assert option in line
    assert oct((server.home / ".ssh" / "authorized_keys").stat().st_mode & 0o777) == "0o600"
    venv = Path("/usr/local/lib/shipyard") / server.user / "venv"
    assert venv.stat().st_uid == 0  # the deploy user runs shipyard but cannot change it
    assert (server.home / ".shipyard" / "venv").resolve() == venv  # where earlier hooks look
    hook = (server.app / "repo.git" / "hooks" / "post-receive").read_text()
    assert hook_interpreter(hook) == f"{venv}/bin/python"  # post-receive: a shell wrapper


def test_push_over_ssh_deploys_the_example_app_by_alice(server: Server, work: Work, first_push):
    lines = remote_lines(first_push.out)
    sha = work.git("rev-parse", "HEAD").stdout.strip()
    assert f"shipyard ▸ deploy #1: main {sha[:7]} by alice" in lines
    for phase in ("checkout", "link", "venv", "build", "switch", "finish"):
        assert any(re.match(rf"^\s+✓ {phase}\s+\d+\.\d\ds\s", ln) for ln in lines), phase
    assert re.match(rf"^shipyard ▸ live: {sha[:7]} in \d+\.\ds$", lines[-1]), lines[-1]
    live = (server.app / "current").resolve()
    assert live.name.endswith(sha[:7])
    assert live.stat().st_uid == pwd.getpwnam(server.user).pw_uid
    manifest = json.loads((live / ".shipyard" / "release.json").read_text())
    assert manifest["pusher"] == "alice" and manifest["state"] == "good"
    assert (live / "static" / "polls" / "style.css").is_file()

    work.commit("v2", **{"mysite/version.py": 'GREETING = "v2 over ssh"\n'})
    second = push(server, work, "-o", "color=never", "main")
    assert "requirements unchanged" in second.out and "\x1b[" not in second.out
    assert "v2 over ssh" in (server.app / "current" / "mysite" / "version.py").read_text()
    print(
        f"\nprovision {server.provision_seconds:.1f}s; first push over ssh "
        f"{first_push.seconds:.1f}s; code-only push over ssh {second.seconds:.2f}s"
    )


def test_every_key_records_its_own_name(server: Server, work: Work, first_push):
    added = shipyard(
        "provision",
        "--user",
        server.user,
        f"--key=bob={server.keys['bob']}.pub",
    )
    assert "authorise key bob" in added.stdout
    keys = (server.home / ".ssh" / "authorized_keys").read_text()
    assert "ssh-command alice" in keys and "ssh-command bob" in keys  # alice kept
    sha = work.commit("by bob", **{"mysite/bob.py": "B = 1\n"})
    result = push(server, work, key="bob")
    assert "deploy #" in result.out and f"{sha[:7]} by bob" in result.out
    history = (server.app / "deploys" / "deploys.jsonl").read_text().splitlines()
    assert json.loads(history[-1])["pusher"] == "bob"


def test_a_key_that_is_not_authorised_is_refused(server: Server, work: Work, first_push):
    live = (server.app / "current").resolve()
    work.commit("by eve", **{"mysite/eve.py": "E = 1\n"})
    result = push(server, work, key="eve", check=False)
    assert result.returncode != 0
    assert "Permission denied (publickey)" in result.out
    assert "shipyard ▸" not in result.out
    assert (server.app / "current").resolve() == live
    assert server.ssh("shipyard", "status", "mysite", key="eve").returncode == 255


@pytest.mark.parametrize(
    "command",
    [
        ["id"],
        ["sh", "-c", "id"],
        ["git-receive-pack '../etc'"],
        ["git-upload-pack '/etc'"],
        ["git-receive-pack 'apps/mysite/repo.git/../../../etc'"],
        ["git-receive-pack 'apps/mysite/repo.git' extra"],
        ["git-receive-pack 'apps/mysite/repo.git'; id"],
        ["git-upload-pack '$(id)'"],
        ["shipyard", "init", "evil"],
        ["shipyard", "--root", "/", "status"],
        ["cat", ".ssh/authorized_keys"],
        [],
    ],
    ids=lambda c: " ".join(c) or "(login)",
)
def test_the_deploy_user_gets_no_shell(server: Server, command: list[str]):
    result = server.ssh(*command)
    assert result.returncode != 0
    assert "uid=" not in result.stdout + result.stderr
    assert "ssh-ed25519" not in result.stdout
    refusals = [ln for ln in result.stderr.splitlines() if ln.startswith("shipyard: refused: ")]
    assert len(refusals) == 1 and result.stderr.count("\n") == 1, result.stderr
    log = (server.home / ".shipyard" / "ssh.log").read_text().splitlines()
    assert "refused" in log[-1] and "key=alice" in log[-1]


def test_no_pty_and_no_forwarding(server: Server):
    tty = server.ssh("bash", options=("-tt",))
    assert tty.returncode != 0 and "uid=" not in tty.stdout
    forward = server.ssh(options=("-W", f"127.0.0.1:{server.port}"))
    assert forward.returncode == 255  # stdio forwarding (-W, like -L) is refused


def test_fetch_and_allowed_operator_commands_pass(server: Server, work: Work, first_push):
    listed = run(
        "git",
        "ls-remote",
        f"{server.user}@127.0.0.1:apps/mysite/repo.git",  # scp-like form, relative to home
        env={**os.environ, "GIT_SSH_COMMAND": server.git_ssh()},
    )
    assert "refs/heads/main" in listed.stdout
    # handed to shipyard (which may not have the command in this build), never refused
    status = server.ssh("shipyard", "status", "mysite")
    assert "shipyard: refused" not in status.stderr


def test_provision_twice_changes_nothing(server: Server):
    keys = server.home / ".ssh" / "authorized_keys"
    stamp = server.home / ".shipyard" / "venv" / "shipyard-install.json"
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (keys, stamp)}
    again = shipyard(
        "provision",
        "--user",
        server.user,
        f"--key=alice={server.keys['alice']}.pub",
        f"--key=bob={server.keys['bob']}.pub",
        "--app",
        "mysite",
    )
    assert f"{server.user} is already provisioned; nothing to do" in again.stdout
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (keys, stamp)} == before
    dry = shipyard(
        "provision", "--user", server.user, f"--key=eve={server.keys['eve']}.pub", "--dry-run"
    )
    assert "would authorise key eve" in dry.stdout and "nothing was changed" in dry.stdout
    assert "ssh-command eve" not in keys.read_text()


def test_doctor_over_ssh_reports_a_removed_hook(server: Server, first_push):
    healthy = server.ssh("shipyard", "doctor", "mysite")
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert "✓ hooks" in healthy.stdout and "all checks passed" in healthy.stdout
    hook = server.app / "repo.git" / "hooks" / "post-receive"
    hook.unlink()
    try:
        broken = server.ssh("shipyard", "doctor", "mysite")
        assert broken.returncode == 1
        line = next(ln for ln in broken.stdout.splitlines() if "hooks" in ln)
        assert "✗" in line and "hooks/post-receive is missing" in line
        assert "fix: shipyard init mysite" in broken.stdout
    finally:
        server.as_user(server.home / ".shipyard" / "venv" / "bin" / "shipyard", "init", "mysite")
    assert server.ssh("shipyard", "doctor", "mysite").returncode == 0


# --- the push tells the truth over SSH: exit status, git's ref lines, tracking ref ----------


def remote_tip(server: Server, app: str = "mysite") -> str | None:
    """The server's deploy branch as the pusher sees it (git ls-remote over SSH)."""
    listed = run(
        "git",
        "ls-remote",
        server.url(app),
        "refs/heads/main",
        env={**os.environ, "GIT_SSH_COMMAND": server.git_ssh()},
    ).stdout.split()
    return listed[0] if listed else None


def served(server: Server, app: str = "mysite") -> str:
    text = (server.home / "apps" / app / "shipyard.toml").read_text()
    status, body = fetch(int(re.search(r"(?m)^port = (\d+)$", text).group(1)))
    assert status == 200, body
    return body.strip()


def deploys(server: Server, app: str = "mysite") -> list[dict]:
    path = server.home / "apps" / app / "deploys" / "deploys.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def arm_pause(server: Server, at: str, number: int) -> None:
    """Pause deploy ``number`` at ``at`` (the faults file must be the deploy user's own)."""
    run_dir = server.app / "run"
    fault_injection.arm(run_dir, {"at": at, "action": "pause", "deploy": number})
    entry = pwd.getpwnam(server.user)
    os.chown(run_dir / fault_injection.FILE, entry.pw_uid, entry.pw_gid)


def wait_until(predicate, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def background_push(server: Server, work: Work, *args: str) -> subprocess.Popen:
    work.git("config", "core.sshCommand", server.git_ssh())
    return work.push_in_background(*args)


def fetch_over_ssh(server: Server, clone: Work) -> None:
    clone.git("config", "core.sshCommand", server.git_ssh())
    clone.git("fetch", "-q", "production")


def greet(work: Work, text: str) -> str:
    return work.commit(text, **{"mysite/version.py": f'GREETING = "{text}"\n'})


@pytest.mark.parametrize("phase", ["venv", "migrate", "verify"])
def test_a_failed_deploy_fails_the_push_over_ssh(server: Server, work: Work, first_push, phase):
    live, serving = remote_tip(server), served(server)
    work.git("reset", "-q", "--hard", live)
    fetch_over_ssh(server, work)
    number = len(deploys(server)) + 1
    break_at(work, phase)
    result = push(server, work, check=False)
    assert result.returncode != 0, result.out
    phases = "(restart|verify)" if phase == "verify" else phase
    assert re.search(
        rf"! \[remote rejected\] main -> main \(deploy #{number} failed at {phases}: ", result.out
    ), result.out
    assert remote_tip(server) == live and work.tracking() == live and served(server) == serving
    work.git("reset", "-q", "--hard", live)
    sha = greet(work, f"over ssh after a failed {phase}")
    again = push(server, work)
    assert again.returncode == 0 and remote_tip(server) == sha == work.tracking()
    assert served(server) == f"over ssh after a failed {phase}"


def test_a_superseded_push_fails_over_ssh(server: Server, work: Work, first_push, tmp_path):
    work.git("reset", "-q", "--hard", remote_tip(server))
    number = len(deploys(server)) + 1
    greet(work, "first over ssh")
    arm_pause(server, "checkout", number)
    first = background_push(server, work)
    wait_until(lambda: (server.app / "run" / fault_injection.PAUSED).exists())
    other = clone_example(tmp_path / "other", server.url())
    fetch_over_ssh(server, other)
    other.git("reset", "-q", "--hard", "production/main")
    queued_sha = greet(other, "queued over ssh")
    queued = background_push(server, other)
    wait_until(lambda: remote_tip(server) == queued_sha)
    newer_sha = other.commit("newer", **{"mysite/c.py": "C = 1\n"})
    newer = background_push(server, other)
    wait_until(lambda: remote_tip(server) == newer_sha)
    (server.app / "run" / fault_injection.PAUSED).unlink()
    outs = [p.communicate(timeout=240)[0] for p in (first, queued, newer)]
    assert first.returncode == 0 and newer.returncode == 0, outs
    assert queued.returncode != 0, outs[1]
    assert re.search(r"! \[remote rejected\] main -> main \(deploy #\d+ superseded: ", outs[1])
    assert other.tracking() == newer_sha and served(server) == "queued over ssh"
    fetch_over_ssh(server, work)


def test_client_killed_mid_deploy_over_ssh(server: Server, work: Work, first_push):
    work.git("reset", "-q", "--hard", remote_tip(server))
    fetch_over_ssh(server, work)
    number = len(deploys(server)) + 1
    sha = greet(work, "ssh client gone")
    arm_pause(server, "switch", number)
    client = background_push(server, work)
    wait_until(lambda: (server.app / "run" / fault_injection.PAUSED).exists())
    os.killpg(client.pid, signal.SIGKILL)
    client.wait(timeout=30)
    (server.app / "run" / fault_injection.PAUSED).unlink()
    wait_until(lambda: any(e["deploy"] == number for e in deploys(server)))
    assert deploys(server)[-1]["outcome"] == "live" and served(server) == "ssh client gone"
    replay = server.ssh("shipyard", "log", "mysite", str(number))
    assert f"shipyard ▸ live: {sha[:7]}" in replay.stdout
    after = greet(work, "after the killed ssh client")
    again = push(server, work)
    assert again.returncode == 0 and work.tracking() == after == remote_tip(server)


def test_full_build_output_in_the_log_and_no_ansi_through_ssh(
    server: Server, work: Work, first_push
):
    live = remote_tip(server)
    work.git("reset", "-q", "--hard", live)
    number = len(deploys(server)) + 1
    step = "python -c \\\"[print(f'line {i}') for i in range(1, 61)]\\\"; exit 4"
    toml = f'build = ["{step}"]\nshared = [".env", "media/"]\n\n[health]\npath = "/healthz"\n'
    work.commit("noisy", **{"shipyard.toml": toml})
    result = push(server, work, "-o", "color=always", "main", check=False)
    assert result.returncode != 0 and f"(deploy #{number} failed at build: " in result.out
    shown = [ln for ln in remote_lines(result.out) if "│ line " in ln]
    assert len(shown) == 20 and shown[-1].endswith("line 60")
    assert f"40 earlier line(s) of this output are in the log: `shipyard log mysite {number}`" in (
        result.out
    )
    replay = server.ssh("shipyard", "log", "mysite", str(number)).stdout  # no tty: a pipe
    assert "\x1b[" not in replay and "✗ build" in replay
    assert [ln.split("│ ")[1] for ln in replay.splitlines() if "│ line " in ln] == [
        f"line {i}" for i in range(1, 61)
    ]
    work.git("reset", "-q", "--hard", live)


def test_rollback_over_ssh_says_only_what_is_true(server: Server, work: Work, first_push):
    out = server.ssh("shipyard", "rollback", "mysite")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "skip-migrate" not in out.stdout
    assert "- migrate           -    a rollback runs no migrations" in out.stdout
    # run in the forced command's own process, with the key's name as the pusher
    assert out.stdout.splitlines()[0].endswith(" by alice")
    entry = json.loads((server.app / "deploys" / "deploys.jsonl").read_text().splitlines()[-1])
    assert (entry["kind"], entry["outcome"], entry["pusher"]) == ("rollback", "live", "alice")
    assert (server.app / "current").resolve().name == entry["release"]
    refused = server.ssh("shipyard", "rollback", "mysite", "--root=/tmp")
    assert refused.returncode == 126 and "is not allowed" in refused.stderr
    push(server, work, "-f", "main")  # forward again


def test_first_push_of_an_annotated_tag_to_an_empty_host_over_ssh(server: Server, tmp_path):
    shipyard_bin = server.home / ".shipyard" / "venv" / "bin" / "shipyard"
    server.as_user(shipyard_bin, "init", "tagged", "--port", str(free_port()))
    tagged = clone_example(tmp_path / "tagged", server.url("tagged"))
    tagged.commit("fast", **{"shipyard.toml": 'shared = [".env", "media/"]\n'})
    sha = tagged.git("rev-parse", "HEAD").stdout.strip()
    tagged.git("tag", "-a", "v1.0", "-m", "first release")
    result = push(server, tagged, "v1.0:main")
    assert result.returncode == 0
    assert "* [new branch]      v1.0 -> main" in result.out
    assert f"shipyard ▸ live: {sha[:7]} (v1.0) in" in result.out
    assert remote_tip(server, "tagged") == sha == tagged.tracking()
    # pinning it again after a migration names what stays applied, as a rollback does
    old = (server.home / "apps" / "tagged" / "current").resolve().name
    tagged.commit("migration", **{"polls/migrations/0003_votes.py": MIGRATION})
    push(server, tagged)
    pinned = push(server, tagged, "-f", "v1.0:main")
    assert f"1 migration(s) applied since {old} stay applied: polls.0003_votes;" in pinned.out


def test_doctor_reports_a_stopped_supervisord(server: Server, work: Work, first_push):
    pid_file = server.app / "run" / "supervisord.pid"
    assert pid_file.is_file(), "the example app's Procfile should have started supervisord"
    running = server.ssh("shipyard", "doctor", "mysite")
    assert "✓ supervisord" in running.stdout
    os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)
    deadline = time.monotonic() + 10
    while (server.app / "run" / "supervisord.sock").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    stopped = server.ssh("shipyard", "doctor", "mysite")
    assert stopped.returncode == 1
    assert "✗ supervisord" in stopped.stdout and "not reachable" in stopped.stdout
