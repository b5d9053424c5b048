"""Shared test fixtures: real deploy roots, real git clients pushing, the example apps."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from portpick import free_port  # noqa: F401 (the tests import it from here)

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
BIN = Path(sys.executable).parent

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Alice",
    "GIT_AUTHOR_EMAIL": "alice@example.com",
    "GIT_COMMITTER_NAME": "Alice",
    "GIT_COMMITTER_EMAIL": "alice@example.com",
    "GIT_CONFIG_NOSYSTEM": "1",
    "NO_COLOR": "1",
}


@pytest.fixture(autouse=True, scope="session")
def _environment():
    """shipyard and git on PATH; one uv cache for the whole run, so each venv downloads once.

    At the end, stop every app's supervisord any test left running.
    """
    os.environ["PATH"] = f"{BIN}:{os.environ['PATH']}"
    os.environ.setdefault("UV_CACHE_DIR", str(Path.home() / ".cache" / "uv"))
    os.environ.update(GIT_ENV)
    os.environ.pop("SHIPYARD_ROOT", None)
    # As on a real host: hooks must flush their own output, and bytecode is written.
    os.environ.pop("PYTHONUNBUFFERED", None)
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    yield
    for host in list(HOSTS):
        host.stop_processes()


def stop(proc: subprocess.Popen, grace: float = 10) -> None:
    """TERM a process the tests started, KILL it after ``grace`` seconds, and reap it."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def processes_under(root: Path) -> list[int]:
    """Pids of processes running in (a release under) ``root``: the ones a test started."""
    base = os.path.realpath(root)
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            cwd = os.readlink(f"/proc/{pid}/cwd")
            if (cwd == base or cwd.startswith(base + "/")) and int(pid) != os.getpid():
                found.append(int(pid))
    return found


def user_pids(uid: int) -> list[int]:
    """The live processes of ``uid`` (zombies are gone already; only their parent can reap them)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid != uid:
                    continue
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if state != "Z":
                pids.append(int(entry.name))
    return pids


def end_user_processes(uid: int) -> None:
    """TERM, then KILL, every process the test user owns (by pid), until none is left."""
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
        for pid in user_pids(uid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while user_pids(uid) and time.monotonic() < deadline:
            time.sleep(0.05)


def remove_user(name: str) -> None:
    """A throw-away deploy user gone: its processes (by pid), home, and provisioned venv."""
    import pwd

    try:
        uid = pwd.getpwnam(name).pw_uid
    except KeyError:
        return
    end_user_processes(uid)
    subprocess.run(["userdel", "-r", name], capture_output=True)
    shutil.rmtree(f"/usr/local/lib/shipyard/{name}", ignore_errors=True)
    unit = Path("/etc/systemd/system") / f"shipyard-{name}.service"  # provision's boot start
    (unit.parent / "multi-user.target.wants" / unit.name).unlink(missing_ok=True)
    unit.unlink(missing_ok=True)
    assert not Path(f"/home/{name}").exists()


def run(
    *args: str | Path, cwd: Path | None = None, check: bool = True, **kw
) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, **kw)
    if check and result.returncode:
        raise AssertionError(
            f"{args} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result


def shipyard(*args: str | Path, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return run(BIN / "shipyard", *args, check=check, **kw)


@dataclass
class Host:
    """A deploy root with one app in it, as `shipyard init` makes it."""

    root: Path
    name: str = "mysite"

    @property
    def dir(self) -> Path:
        return self.root / self.name

    @property
    def repo(self) -> Path:
        return self.dir / "repo.git"

    def live(self) -> Path:
        return (self.dir / "current").resolve()

    def releases(self) -> list[str]:
        return sorted(
            p.name for p in (self.dir / "releases").iterdir() if not p.name.startswith(".")
        )

    def branch(self, ref: str = "main") -> str | None:
        result = run("git", "--git-dir", self.repo, "rev-parse", "--verify", "-q", ref, check=False)
        return result.stdout.strip() or None

    @property
    def port(self) -> int:
        for line in (self.dir / "shipyard.toml").read_text().splitlines():
            if line.split("=")[0].strip() == "port":
                return int(line.split("=")[1])
        return 8000

    def set_host_config(self, **values: object) -> None:
        """Set top-level keys (written above any [table], where TOML wants them)."""
        path = self.dir / "shipyard.toml"
        lines = [
            ln for ln in path.read_text().splitlines() if ln.split("=")[0].strip() not in values
        ]
        first_table = next((i for i, ln in enumerate(lines) if ln.startswith("[")), len(lines))
        new = [f"{key} = {value!r}".replace("'", '"') for key, value in values.items()]
        lines[first_table:first_table] = new
        path.write_text("\n".join(lines) + "\n")

    def stop_processes(self) -> None:
        """Stop the app's supervisord and its programs; then anything left in the root."""
        from shipyard import supervisord
        from shipyard.app import App

        with contextlib.suppress(Exception):
            supervisord.shutdown(App(self.root, self.name))
        for pid in processes_under(self.root):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ValueError):
            HOSTS.remove(self)


@dataclass
class Work:
    """A developer's clone of an example app, with `production` pointing at a Host."""

    path: Path

    def git(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run("git", *args, cwd=self.path, check=check)

    def commit(self, message: str = "change", **files: str) -> str:
        for name, text in files.items():
            target = self.path / name.replace("__", "/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)
        return self.git("rev-parse", "HEAD").stdout.strip()

    def write(self, name: str, text: str) -> None:
        (self.path / name).write_text(text)

    def tracking(self, branch: str = "main") -> str | None:
        """Where the clone's remote-tracking ref `production/<branch>` points (None: absent)."""
        ref = f"refs/remotes/production/{branch}"
        return self.git("rev-parse", "--verify", "-q", ref, check=False).stdout.strip() or None

    def push_in_background(self, *args: str) -> subprocess.Popen:
        """`git push production …` in its own process group (so a test can kill the client)."""
        return subprocess.Popen(
            ["git", "push", "production", *(args or ("main",))],
            cwd=self.path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

    def push(
        self, *args: str, check: bool = True, fails: bool = False
    ) -> subprocess.CompletedProcess:
        """`git push production …`; the result's .out holds what the pusher saw.

        ``fails``: the deploy is expected to fail, and with it the push (git's
        `[remote rejected]` line, a non-zero exit).
        """
        result = self.git("push", "production", *(args or ("main",)), check=False)
        result.out = result.stdout + result.stderr
        if fails:
            assert result.returncode != 0 and "[remote rejected]" in result.out, result.out
        elif check and result.returncode:
            raise AssertionError(f"push failed ({result.returncode}):\n{result.out}")
        return result


HOSTS: list[Host] = []


def make_host(root: Path, name: str = "mysite") -> Host:
    """`shipyard init`, with the web port set to a free one; its processes stop at session end.

    The suite runs as root in CI, and deploys refuse to run as root unless the host
    allows it: these test hosts do (`--allow-root`).
    """
    shipyard("--root", root, "init", name, "--port", str(free_port()), "--allow-root")
    host = Host(root, name)
    HOSTS.append(host)
    return host


def make_work(path: Path, host: Host, example: str = "mysite") -> Work:
    shutil.copytree(
        EXAMPLES / example,
        path,
        ignore=shutil.ignore_patterns("__pycache__", ".venv", "db.sqlite3"),
    )
    work = Work(path)
    work.git("init", "-q", "-b", "main")
    work.git("add", "-A")
    work.git("commit", "-q", "-m", "initial")
    work.git("remote", "add", "production", str(host.repo))
    return work


@pytest.fixture
def host(tmp_path: Path) -> Host:
    """A fresh app; its supervisord (if a deploy started one) is stopped after the test."""
    made = make_host(tmp_path / "apps")
    yield made
    made.stop_processes()


@pytest.fixture
def work(tmp_path: Path, host: Host) -> Work:
    return make_work(tmp_path / "work", host)
