"""README.md's quickstart, tried from scratch as a new user would: its commands taken from the page.

A fresh host is a deploy user that does not exist yet and a private sshd on loopback (as in
test_ssh.py). Root's commands run in a clean root shell, the developer's in a terminal (a pty) on
"their machine": a HOME of its own whose ``~/.ssh/config`` says where ``server`` is. The app is a
stock ``django-admin startproject mysite .``. What the test changes in the page's commands, and
why: the deploy user's name (one of its own, ``deploy`` may exist), ``/opt/shipyard`` and
``/path/to/shipyard`` (a temp dir; a copy of this checkout), the web port (a free one, added as
``--port``: 8000 may be taken on this machine), and ``apt-get install`` becomes a check that the
packages are installed (tests/system-deps.sh installs them; apt's lock is the machine's).
"""

from __future__ import annotations

import contextlib
import os
import pty
import pwd
import re
import secrets
import select
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
import test_realapps
from conftest import REPO, processes_under, remove_user, run, stop
from httpload import fetch
from netns import wait_listening
from test_realapps import admin_login, cmdline
from test_ssh import SSHD, free_port, keygen, sshd_config

tools = test_realapps.tools  # the frameworks' command-line tools

pytestmark = pytest.mark.e2e

README = REPO / "README.md"
SERVER_MD = REPO / "docs" / "server.md"
ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PASSWORD = "quick-Start-pw-4711"


def quickstart() -> dict[str, list[str]]:
    """The page's shell blocks: the host's (as root), the machine's, the operator's, pinning's."""
    text = README.read_text()
    section = text.split("## Quickstart on a real server", 1)[1].split("\n## ", 1)[0]
    setup, rest = section.split("### Operating the app without a shell", 1)
    operating, pinning = rest.split("### Pinning a release, rolling back", 1)
    blocks = re.findall(r"```sh\n(.*?)```", setup, re.S)
    assert len(blocks) == 2, "the quickstart has a root block and a block for your machine"
    blocks += [re.search(r"```sh\n(.*?)```", part, re.S)[1] for part in (operating, pinning)]
    lines = [re.findall(r"(?m)^\S.*$", block) for block in blocks]
    return dict(zip(("root", "machine", "operating", "pinning"), lines, strict=True))


def test_server_md_installs_shipyard_as_the_readme_does():
    """docs/server.md's step 1 is the quickstart's, with one more key: the same commands."""
    text = SERVER_MD.read_text().split("## 1. Provision the host (as root)", 1)[1]
    block = re.search(r"```sh\n(.*?)```", text, re.S)[1].splitlines()
    readme = quickstart()["root"]
    assert block[:2] == readme[:2]
    assert block[2].replace(" --key ci=ci.pub", "") == readme[2]


def env_as_root() -> str:
    """docs/server.md's way to write the app's shared/.env as root on the host."""
    after = SERVER_MD.read_text().split("or, on the host as root:", 1)[1]
    return re.search(r"```sh\n(.*?)```", after, re.S)[1]


def in_terminal(
    command: str,
    cwd: Path,
    env: dict,
    answers: tuple[tuple[str, str], ...] = (),
    until: str | None = None,
) -> tuple[int, str]:
    """``sh -c command`` in a terminal of its own; each prompt seen gets its answer typed, and
    Ctrl-C is typed once ``until`` shows (for a command that runs until stopped)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: exec at once
        os.chdir(cwd)
        os.execve("/bin/sh", ["sh", "-c", command], env)
    out, seen, pending = b"", 0, list(answers)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            if not select.select([fd], [], [], 1)[0]:
                continue
            try:
                data = os.read(fd, 65536)
            except OSError:  # EIO: the terminal's other side is closed
                break
            if not data:
                break
            out += data
            if until and until.encode() in out:
                os.write(fd, b"\x03")
                until = None
            if pending and pending[0][0].encode() in out[seen:]:
                seen = out.index(pending[0][0].encode(), seen) + len(pending[0][0])
                os.write(fd, pending.pop(0)[1].encode() + b"\n")
        else:
            os.kill(pid, signal.SIGKILL)
            raise AssertionError(f"{command!r} did not end:\n{out.decode(errors='replace')}")
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace")


def as_seen(raw: str) -> str:
    """What the terminal shows: colours dropped, each line's \\r-overwritten progress settled."""
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw).replace("\r\n", "\n")
    return "\n".join(line.rsplit("\r", 1)[-1] for line in text.split("\n"))


@contextlib.contextmanager
def private_sshd(directory: Path, user: str, wrap: tuple[str, ...] = ()):
    """An sshd on a free loopback port that lets ``user`` in (who may not exist yet); its port.

    The user's sessions get none of this machine's SSL_CERT_* (a fresh host has none set).
    ``wrap``: a command that execs sshd after it, e.g. in a mount namespace of its own.
    """
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    keygen(directory / "ssh_host_ed25519_key", "test-host")
    config = re.sub(r" SSL_CERT_(FILE|DIR)=\S+", "", sshd_config(directory, port, user))
    (directory / "sshd_config").write_text(re.sub(r"(?m)^SetEnv$\n", "", config))
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    log = open(directory / "sshd.log", "wb")  # noqa: SIM115 - closed in the finally
    sshd = subprocess.Popen(
        [*wrap, str(SSHD), "-D", "-f", str(directory / "sshd_config"), "-e"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_listening("127.0.0.1", port)
        yield port
    finally:
        stop(sshd)
        log.close()


def need_root_and_sshd() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: creates a deploy user and runs a private sshd")
    if not SSHD.exists() or not shutil.which("ssh"):
        pytest.skip("openssh-server/client not installed (make system-deps installs them)")


@pytest.fixture
def fresh_host(tmp_path):
    """A deploy user's name nobody has, and a private sshd that will let it in."""
    need_root_and_sshd()
    user = f"syquick{secrets.token_hex(3)}"
    try:
        with private_sshd(tmp_path / "sshd", user) as port:
            yield {"user": user, "port": port}
    finally:
        remove_user(user)


def source_copy(path: Path) -> Path:
    """This checkout as a download of shipyard would be (no venv, no git, no caches)."""
    ignore = shutil.ignore_patterns(".venv", ".git", "__pycache__", "*.egg-info", "build", "demo")
    shutil.copytree(REPO, path, ignore=ignore)
    return path


def test_readme_quickstart_on_a_fresh_host_deploys_a_startproject_and_keeps_its_data(
    tmp_path, fresh_host, tools
):
    steps = quickstart()
    user, app_port = fresh_host["user"], free_port()
    admin = tmp_path / "root"  # where root has alice.pub
    admin.mkdir()
    opt = tmp_path / "opt-shipyard"
    source = source_copy(tmp_path / "shipyard-src")

    # --- once, as root on the host -------------------------------------------------------
    laptop = tmp_path / "laptop"  # alice's machine: her HOME, her key
    (laptop / ".ssh").mkdir(parents=True, mode=0o700)
    key = keygen(laptop / ".ssh" / "id_ed25519", "alice@laptop")
    shutil.copy(f"{key}.pub", admin / "alice.pub")
    keep = ("LANG", "SSL_CERT_FILE", "SSL_CERT_DIR", "PIP_CERT", "HTTPS_PROXY", "https_proxy")
    root_env = {k: os.environ[k] for k in keep if k in os.environ}
    root_env |= {"PATH": ROOT_PATH, "HOME": "/root", "USER": "root", "LANG": "C.UTF-8"}
    provisioned = ""
    for line in steps["root"]:
        if line.startswith("apt-get update && apt-get install -y "):
            line = "dpkg-query -W " + line.removeprefix("apt-get update && apt-get install -y ")
        line = line.replace("/opt/shipyard", str(opt)).replace("/path/to/shipyard", str(source))
        if " provision " in line:
            line += f" --user {user} --port {app_port}"
        done = subprocess.run(
            ["sh", "-c", line], cwd=admin, env=root_env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, f"{line}:\n{done.stdout}\n{done.stderr}"
        provisioned += done.stdout
    assert f"create app mysite at /home/{user}/apps/mysite" in provisioned, provisioned
    assert "Authorised keys: alice" in provisioned
    (tmp_path / "provision.txt").write_text(provisioned)
    home = Path(f"/home/{user}")
    app = home / "apps" / "mysite"
    # the app's settings in shared/.env, written as docs/server.md says (its example value is
    # a placeholder: a setting of the test's own instead)
    script = env_as_root().replace("deploy", user)
    script = re.sub(r"(?m)^DATABASE_URL=.*$", "GREETING=set by root", script)
    done = subprocess.run(["sh", "-c", script], cwd=admin, env=root_env, capture_output=True)
    assert done.returncode == 0, done
    written = (app / "shared" / ".env").stat()
    assert written.st_mode & 0o777 == 0o600 and written.st_uid == pwd.getpwnam(user).pw_uid

    # --- on alice's machine: a stock startproject app in a repository of its own ------------
    (laptop / ".ssh" / "config").write_text(
        "Host server\n"
        "  HostName 127.0.0.1\n"
        f"  Port {fresh_host['port']}\n"
        f"  IdentityFile {key}\n"
        "  IdentitiesOnly yes\n"
        "  StrictHostKeyChecking accept-new\n"
        f"  UserKnownHostsFile {laptop / '.ssh' / 'known_hosts'}\n"
    )
    # ssh reads ~/.ssh of the uid's home in /etc/passwd, not $HOME (this test runs as root):
    # her ssh is told where her config is, so root's own ~/.ssh is never read nor written
    bin_dir = laptop / "bin"
    bin_dir.mkdir()
    (bin_dir / "ssh").write_text(f'#!/bin/sh\nexec /usr/bin/ssh -F {laptop}/.ssh/config "$@"\n')
    (bin_dir / "ssh").chmod(0o755)
    (laptop / ".gitconfig").write_text("[user]\n\tname = Alice\n\temail = alice@example.com\n")
    env = {
        "HOME": str(laptop),
        "PATH": f"{bin_dir}:{tools}:{ROOT_PATH}",  # django-admin: as `pip install django` gave it
        "LANG": "C.UTF-8",
        "TERM": "xterm-256color",
        "USER": "alice",
    }
    site = laptop / "mysite"
    site.mkdir()
    for command in ("django-admin startproject mysite .", "git init -q -b main", "git add -A"):
        run("sh", "-c", command, cwd=site, env=env)
    run("git", "commit", "-q", "-m", "startproject", cwd=site, env=env)

    pushes, session = [], tmp_path / "session.txt"  # what she saw, kept for reading
    for line in steps["machine"]:
        line = line.replace("deploy@", f"{user}@")
        status, out = in_terminal(line, site, env)
        with session.open("a") as seen:
            seen.write(f"$ {line}\n{as_seen(out).lstrip(chr(10))}")
        assert status == 0, f"{line}:\n{out}"
        if line.startswith("git push"):
            pushes.append(as_seen(out).lstrip("\n"))
        elif " status mysite" in line:
            assert re.search(r"live\b.*\b[0-9a-f]{7}\b", out), out
    [first] = pushes
    first_sha = run("git", "rev-parse", "HEAD", cwd=site).stdout.strip()  # deploy #1's commit
    (tmp_path / "quickstart-push.txt").write_text(f"$ git push production main\n{first}")
    assert "shipyard ▸ deploy #1: main" in first and "by alice" in first, first
    assert "db.sqlite3 (Django DATABASES['default']['NAME']) is inside the release" in first
    assert re.search(r"✓ migrate .*18 applied", first)
    assert "shipyard ▸ live:" in first and "* [new branch]      main -> main" in first
    assert (app / "shared" / "db.sqlite3").is_file()
    assert fetch(app_port, "/")[0] == 200
    # provision's "Next steps" end with checking the host
    status, out = in_terminal(f"ssh {user}@server shipyard doctor mysite", site, env)
    (tmp_path / "doctor.txt").write_text(as_seen(out))
    assert status == 0 and "shipyard doctor ▸ all checks passed" in out, out

    # --- data written through the app's own command, as the README shows it --------------
    [createsuperuser] = [ln for ln in steps["operating"] if "createsuperuser" in ln]
    answers = (
        ("Username", "admin"),
        ("Email address:", "admin@example.com"),
        ("Password:", PASSWORD),
        ("Password (again):", PASSWORD),
    )
    status, out = in_terminal(createsuperuser.replace("deploy@", f"{user}@"), site, env, answers)
    assert status == 0 and "Superuser created successfully." in out, out
    assert admin_login(app_port, "admin", PASSWORD) == (302, "/admin/")

    # --- a change, pushed as the README says: the data is still there --------------------
    (site / "mysite" / "urls.py").write_text(
        (site / "mysite" / "urls.py").read_text() + "\n# the second deploy\n"
    )
    run("git", "commit", "-q", "-am", "a change", cwd=site, env=env)
    [push] = [ln for ln in steps["machine"] if ln.startswith("git push")]
    status, out = in_terminal(push, site, env)
    second = as_seen(out).lstrip("\n")
    (tmp_path / "quickstart-push-2.txt").write_text(f"$ {push}\n{second}")
    assert status == 0 and "shipyard ▸ deploy #2" in second, second
    assert "is inside the release" not in second
    assert re.search(r"✓ data .*db\.sqlite3 linked from shared/", second), second
    assert "nothing pending (Django: 18 applied" in second
    users = sqlite3.connect(app / "shared" / "db.sqlite3").execute("SELECT username FROM auth_user")
    assert users.fetchall() == [("admin",)]
    assert admin_login(app_port, "admin", PASSWORD) == (302, "/admin/")
    assert admin_login(app_port, "admin", "not the password")[0] == 200
    live = (app / "current").resolve()
    assert live.name.endswith(run("git", "rev-parse", "--short=7", "HEAD", cwd=site).stdout.strip())
    web = [p for p in processes_under(app / "releases") if b"gunicorn" in cmdline(p)]
    assert web and {os.path.realpath(f"/proc/{p}/cwd") for p in web} == {str(live)}

    # --- and the README's other operator commands, each as written ---------------------
    (site / "secret.txt").write_text(secrets.token_urlsafe(40) + "\n")
    stops = {"logs mysite -f": "Booting worker"}  # followed until Ctrl-C
    for line in steps["operating"]:
        if "createsuperuser" in line:
            continue
        line = line.replace("deploy@", f"{user}@")
        until = next((text for cmd, text in stops.items() if cmd in line), None)
        status, out = in_terminal(line, site, env, until=until)
        with session.open("a") as seen:
            seen.write(f"$ {line}\n{as_seen(out).lstrip(chr(10))}")
        assert status == 0 or (until and until in out), f"{line}:\n{out}"
    assert fetch(app_port, "/")[0] == 200
    assert admin_login(app_port, "admin", PASSWORD) == (302, "/admin/")
    env_file = (app / "shared" / ".env").read_text()
    assert "GREETING='set by root'" in env_file or "GREETING=set by root" in env_file
    assert "ALLOWED_HOSTS='example.com www.example.com'" in env_file, env_file

    # --- pinning and rolling back, as the README shows: tags of her own, a kept release's id
    run("git", "commit", "-q", "--allow-empty", "-m", "v1.2", cwd=site, env=env)
    run("git", "tag", "v1.1", first_sha, cwd=site, env=env)
    run("git", "tag", "-a", "v1.2", "-m", "v1.2", cwd=site, env=env)
    kept = sorted(p.name for p in (app / "releases").iterdir() if not p.name.startswith("."))
    for line in steps["pinning"]:
        line = line.replace("deploy@", f"{user}@").replace("20261129T013000Z-1a2b3c4", kept[0])
        status, out = in_terminal(line, site, env)
        with session.open("a") as seen:
            seen.write(f"$ {line}\n{as_seen(out).lstrip(chr(10))}")
        assert status == 0, f"{line}:\n{out}"
        if "v1.2:main" in line:
            assert "shipyard ▸ live:" in out, out
    assert (app / "current").resolve().name == kept[0]  # the last line's release is live
    assert admin_login(app_port, "admin", PASSWORD) == (302, "/admin/")  # code-only: data kept
