"""Root never runs what the deploy user controls: shipyard commands run as root against files a
pusher could have planted (links in the deploy user's home, a swapped venv, a rewritten hook
interpreter), and a receiver started as root asked to run pushed code.

Each planted program writes its uid to a marker file: the test fails if uid 0 wrote it. Every
file root owns that a plant points at is compared before and after (owner, mode, content).
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import faultlib
import pytest
from conftest import BIN, REPO, free_port, make_host, run

sys.path.insert(0, str(REPO / "tests"))
import netns  # noqa: E402

observe = faultlib.observe
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the cases are root's")


def snapshot(*paths: Path) -> dict:
    """Owner, mode and content of each path (a directory: of everything in it)."""
    seen = {}
    for top in paths:
        for path in [top, *(sorted(top.rglob("*")) if top.is_dir() else [])]:
            st = path.lstat()
            body = path.read_bytes() if path.is_file() and not path.is_symlink() else None
            seen[str(path)] = (st.st_uid, st.st_gid, st.st_mode, body)
    return seen


def uids_in(marker: Path) -> list[int]:
    return [int(x) for x in marker.read_text().split()] if marker.exists() else []


# ---------------------------------------------------------------- the receiver


def signed(port: int, path: str, body: dict) -> tuple[int, str]:
    from shipyard.receiver import auth

    raw = json.dumps(body).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(
            "POST", path, body=raw, headers=auth.sign(netns.SECRET.encode(), "POST", path, raw)
        )
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    finally:
        conn.close()


def test_a_receiver_run_as_root_runs_no_pushed_code(tmp_path, observe):
    row = observe(
        "security",
        "a receiver started as root; a signed `prepare` for an app "
        "without `allow_root` whose build step records its uid",
    )
    host = make_host(tmp_path / "apps")
    config = host.dir / "shipyard.toml"
    secret = tmp_path / "cluster.secret"
    secret.write_text(netns.SECRET + "\n")
    secret.chmod(0o600)
    netns.set_config(config, secret_file=str(secret), name="web2")
    lines = config.read_text().splitlines(keepends=True)
    config.write_text("".join(ln for ln in lines if not ln.startswith("allow_root")))
    marker = tmp_path / "marker"
    work = tmp_path / "work"
    work.mkdir()
    (work / "requirements.txt").write_text("# nothing\n")
    (work / "shipyard.toml").write_text(f'build = [{{ run = "id -u >> {marker}" }}]\n')
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "x"]):
        run("git", *args, cwd=work)
    sha = run("git", "rev-parse", "HEAD", cwd=work).stdout.strip()
    run("git", "--git-dir", host.repo, "fetch", "-q", work, "main:refs/heads/incoming")
    port = free_port()
    log = open(tmp_path / "receiver.log", "wb")  # noqa: SIM115 - closed in the finally
    receiver = subprocess.Popen(
        [BIN / "shipyard", "--root", host.root, "receiver", "--listen", f"127.0.0.1:{port}"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        netns.wait_listening("127.0.0.1", port)
        rid = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{sha[:7]}"
        deploy = {"sha": sha, "release": rid, "number": 1}
        seen = {
            action: signed(port, f"/v1/apps/mysite/{action}", deploy)
            for action in ("prepare", "switch", "revert", "abort")
        }
    finally:
        receiver.terminate()
        receiver.wait(timeout=30)
        log.close()
    assert uids_in(marker) == [], "the build step ran as root"
    assert not [p for p in (host.dir / "releases").iterdir()], "a release was checked out"
    for action, (status, text) in seen.items():
        assert status == 403, (action, status, text)
        error = json.loads(text)["error"]
        assert error.startswith("refusing to deploy as root: the pushed code would run as root;")
        assert "allow_root = true" in error and "\n" not in error
    assert "refusing to deploy as root" in (tmp_path / "receiver.log").read_text()
    row["outcome"] = (
        f"403 `{error[:62]}…` for prepare, switch, revert and abort; the build step never ran, "
        "nothing was checked out"
    )
