"""Shared test fixtures: real deploy roots, real git clients pushing, the example apps."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

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
    """shipyard and git on PATH; one uv cache for the whole run, so each venv downloads once."""
    os.environ["PATH"] = f"{BIN}:{os.environ['PATH']}"
    os.environ.setdefault("UV_CACHE_DIR", str(Path.home() / ".cache" / "uv"))
    os.environ.update(GIT_ENV)
    os.environ.pop("SHIPYARD_ROOT", None)


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

    def set_host_config(self, **values: object) -> None:
        path = self.dir / "shipyard.toml"
        lines = [
            ln for ln in path.read_text().splitlines() if ln.split("=")[0].strip() not in values
        ]
        for key, value in values.items():
            lines.append(f"{key} = {value!r}".replace("'", '"'))
        path.write_text("\n".join(lines) + "\n")


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

    def push(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """`git push production …`; the result's .out holds what the pusher saw."""
        result = self.git("push", "production", *(args or ("main",)), check=False)
        result.out = result.stdout + result.stderr
        if check and result.returncode:
            raise AssertionError(f"push failed ({result.returncode}):\n{result.out}")
        return result


def make_host(root: Path, name: str = "mysite") -> Host:
    shipyard("--root", root, "init", name)
    return Host(root, name)


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
    return make_host(tmp_path / "apps")


@pytest.fixture
def work(tmp_path: Path, host: Host) -> Work:
    return make_work(tmp_path / "work", host)
