"""The disk fills up during a deploy: the whole deploy root on a small tmpfs.

A small app without processes (quick deploys), whose only requirement is already in
uv's cache. The disk is filled to the point wanted with a filler file beside the app.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess

import faultlib
import pytest
from conftest import Work, make_host, run
from faultlib import entries, last_line, sy

observe = faultlib.observe
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs: needs root")
SIZE_MB = 96


@pytest.fixture(scope="module")
def disk(tmp_path_factory):
    base = tmp_path_factory.mktemp("disk")
    mount = base / "fs"
    mount.mkdir()
    run("mount", "-t", "tmpfs", "-o", f"size={SIZE_MB}m,mode=0755", "tmpfs", mount)
    host = None
    try:
        host = make_host(mount / "apps")
        host.set_host_config(keep=1)  # what the disk holds is the live release and one more
        work = Work(base / "work")
        work.path.mkdir()
        work.git("init", "-q", "-b", "main")
        work.commit(
            "tiny app",
            **{
                "requirements.txt": "python-dotenv>=1.0\n",
                "app.py": "print('hello')\n",
                "shipyard.toml": 'migrate = ""\n',
            },
        )
        work.git("remote", "add", "production", str(host.repo))
        assert "shipyard ▸ live" in work.push().out
        yield host, work, mount
    finally:
        if host is not None:
            host.stop_processes()
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(mount, leave_mb: float) -> None:
    """Fill the filesystem, leaving about ``leave_mb`` MB free."""
    filler = mount / "filler"
    filler.unlink(missing_ok=True)
    free = os.statvfs(mount).f_bavail * os.statvfs(mount).f_frsize
    size = max(0, free - int(leave_mb * 1024 * 1024))
    with open(filler, "wb") as f:
        chunk = b"\0" * (1 << 20)
        while size > 0:
            f.write(chunk[: min(size, len(chunk))])
            size -= len(chunk)


def top_up(mount) -> None:
    """Fill whatever is still free (a few pages), until the disk refuses."""
    fd = os.open(mount / "filler", os.O_WRONLY | os.O_APPEND)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)


def free_up(mount) -> None:
    with contextlib.suppress(FileNotFoundError):
        (mount / "filler").unlink()


@pytest.fixture
def clean(disk):
    """Each case starts from the clone at what the host has, with the disk not full."""
    host, work, mount = disk
    free_up(mount)
    work.git("reset", "-q", "--hard", host.branch())
    yield host, work, mount
    free_up(mount)


def detail(line: str) -> str:
    """What a phase line says after its mark, name and time."""
    return re.sub(r"^.*[✓✗] \S+\s+\d+\.\d+s\s+", "", line).strip()


def after_checks(host, before: str) -> None:
    assert host.live().name == before
    releases = host.dir / "releases"
    sha = json.loads((host.live() / ".shipyard" / "release.json").read_text())["sha"]
    spare = f".next-{sha}"  # the live commit's spare, whole, made after the answer
    assert not [p.name for p in releases.iterdir() if p.name.startswith(".") and p.name != spare]
    assert not [p.name for p in (host.dir / "venvs").iterdir() if p.name.startswith(".")]
    assert sy(host, "status", "mysite").returncode == 0


def test_disk_full_during_checkout(clean, observe):
    host, work, mount = clean
    row = observe("fault", f"disk full during checkout (deploy root on a {SIZE_MB} MB tmpfs)")
    before = host.live().name
    # 24 MB of zeros: a tiny pack to receive, 24 MB to check out
    sha = work.commit("big", **{"zeros.bin": "\0" * (24 << 20)})
    fill(mount, 12)
    try:
        n = len(entries(host))
        out = work.push(fails=True).out
    finally:
        free_up(mount)
    line = next(ln for ln in out.splitlines() if "✗ checkout" in ln)
    assert "No space left on device" in line and "disk is full" in out, out
    after_checks(host, before)
    entry = entries(host)[n]
    assert entry["outcome"] == "failed" and entry["failed_phase"] == "checkout"
    assert host.branch() != sha  # reset: a plain re-push retries
    retry = work.push().out
    assert last_line(retry).startswith(f"shipyard ▸ live: {sha[:7]}"), retry
    row["outcome"] = (
        f"failed at checkout: `{detail(line)[:120]}`; half checkout removed, "
        "recorded `failed`, branch reset; with space freed the re-push deployed"
    )
    work.git("rm", "-q", "zeros.bin")
    work.commit("drop zeros")
    work.push()


def test_disk_full_during_venv_build(clean, observe):
    host, work, mount = clean
    row = observe("fault", "disk full during the venv build (uv installing Django)")
    before = host.live().name
    sha = work.commit("django", **{"requirements.txt": "python-dotenv>=1.0\ndjango>=5.1,<5.3\n"})
    fill(mount, 15)
    try:
        n = len(entries(host))
        out = work.push(fails=True).out
    finally:
        free_up(mount)
    line = next(ln for ln in out.splitlines() if "✗ venv" in ln)
    assert "disk is full" in out, out
    after_checks(host, before)
    assert entries(host)[n]["outcome"] == "failed"
    assert len(list((host.dir / "venvs").iterdir())) == 1  # no half-built venv kept
    retry = work.push().out
    assert last_line(retry).startswith(f"shipyard ▸ live: {sha[:7]}"), retry
    python = host.live() / ".venv" / "bin" / "python"
    assert run(python, "-c", "import django, dotenv").returncode == 0
    row["outcome"] = (
        f"failed at venv: `{detail(line)[:100]}` + the hint `the disk is full`; the "
        "half-built venv removed (never renamed into venvs/); with space freed the re-push "
        "built it whole"
    )


def test_disk_full_when_the_push_arrives(clean, observe):
    host, work, mount = clean
    row = observe("fault", "disk full while git receives the pack")
    before = host.live().name
    tip = host.branch()
    work.commit("random", **{"noise.txt": os.urandom(6 << 20).hex()})
    fill(mount, 2)
    try:
        result = work.push(check=False)
    finally:
        free_up(mount)
    assert result.returncode != 0
    assert host.branch() == tip and host.live().name == before
    reason = next(
        (ln for ln in result.out.splitlines() if "No space left" in ln or "unpack" in ln), "?"
    )
    row["outcome"] = f"git refused the push (status {result.returncode}): `{reason.strip()[:100]}`"
    retry = work.push().out
    assert "shipyard ▸ live" in retry


def test_disk_full_at_finish(clean, observe):
    """After the switch: the undo must run even though nothing can be written any more."""
    host, work, mount = clean
    row = observe("fault", "disk completely full at finish (after the switch; logs unwritable)")
    before = host.live().name
    n = len(entries(host)) + 1
    sha = work.commit("full at finish", **{"app.py": "print('full')\n"})
    faultlib.arm(host, {"at": "finish", "action": "pause"})
    client = faultlib.background_push(work)
    faultlib.paused(host)
    fill(mount, 0)
    faultlib.resume(host)  # frees the pause file's page: take it back before the worker wakes
    top_up(mount)
    try:
        out = client.communicate(timeout=180)[0]
    finally:
        free_up(mount)
    faultlib.settled(host)
    assert host.live().name == before, out
    assert host.branch() != sha or entries(host)[-1]["deploy"] != n
    status = sy(host, "status", "mysite").stdout
    recorded = [e for e in entries(host) if e["deploy"] == n]
    row["outcome"] = (
        f"`current` back on the previous release; the push read `{last_line(out)[:90]}`; "
        + (
            f"recorded `{recorded[0]['outcome']}`"
            if recorded
            else "no history line could be written (`status` infers `interrupted`)"
        )
    )
    assert f"#{n} " in status
    retry = work.push().out
    assert last_line(retry).startswith(f"shipyard ▸ live: {sha[:7]}"), retry
    row["outcome"] += "; with space freed the re-push deployed"
