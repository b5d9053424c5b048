"""Security: no deploy as root unless allowed, nothing world-writable, secrets kept out of
logs and history, a world-readable receiver secret refused, unsigned receiver requests."""

from __future__ import annotations

import os
import stat
import subprocess
import time

import faultlib
import pytest
from conftest import HOSTS, Host, free_port, make_host, make_work, shipyard
from faultlib import check_invariants, entries, last_line, sy

observe = faultlib.observe


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the refusal is of deploys as root")
def test_deploys_refuse_to_run_as_root(tmp_path, observe):
    row = observe("security", "a deploy as root on a host that does not allow it")
    root = tmp_path / "apps"
    init = shipyard("--root", root, "init", "mysite", "--port", str(free_port()))
    assert "note: you are root, and deploys refuse to run as root" in init.stdout
    host = Host(root)
    HOSTS.append(host)
    work = make_work(tmp_path / "work", host)
    result = work.push(check=False)
    assert result.returncode != 0
    line = next(ln for ln in result.out.splitlines() if "[remote rejected]" in ln)
    assert "refusing to deploy as root: the pushed code would run as root" in line
    assert "allow_root = true" in line
    assert host.branch() is None and not (host.dir / "current").exists()
    for args in (["deploy", "mysite", "main"], ["processes", "mysite", "--start"]):
        refused = sy(host, *args, check=False)
        assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused
        assert "refusing to deploy as root" in refused.stderr
    assert not (host.dir / "deploys" / "deploys.jsonl").exists()
    row["outcome"] = (
        f"push refused before the branch moved: `{line.split('(', 1)[1].rstrip(')')}`; "
        "`shipyard deploy` and `processes --start` refused (status 1); nothing recorded"
    )
    with open(host.dir / "shipyard.toml", "a") as config:
        config.write("allow_root = true\n")
    assert "shipyard ▸ live" in work.push().out
    host.stop_processes()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    with faultlib.deployed(tmp_path_factory.mktemp("sec"), push=False) as (host, work):
        yield host, work


def world_writable(*tops) -> list[str]:
    found = []
    for top in tops:
        for dirpath, dirnames, filenames in os.walk(top):
            for name in dirnames + filenames:
                path = os.path.join(dirpath, name)
                mode = os.lstat(path).st_mode
                if not stat.S_ISLNK(mode) and mode & stat.S_IWOTH:
                    found.append(path)
    return found


def test_nothing_world_writable_even_with_umask_000(site, observe):
    host, work = site
    row = observe("security", "a push with umask 000 (files in releases and venvs)")
    (work.path / "tool.sh").write_text("#!/bin/sh\n")
    (work.path / "tool.sh").chmod(0o777)
    sha = work.commit("executable")
    requirements = (work.path / "requirements.txt").read_text()
    # the first deploy builds a venv; the second adds a package: a venv built beside the
    # live one, whose bytecode is linked while the o+w sweep runs
    for n, commit in enumerate((sha, None)):
        if commit is None:
            commit = work.commit("added", **{"requirements.txt": requirements + "six\n"})
        result = subprocess.run(
            ["git", "push", "production", "main"],
            cwd=work.path,
            capture_output=True,
            text=True,
            preexec_fn=lambda: os.umask(0),
        )
        out = result.stdout + result.stderr
        assert last_line(out).startswith(f"shipyard ▸ live: {commit[:7]}"), out
        assert n == 0 or "built" in out.split("✓ venv")[1].splitlines()[0], out
        check_invariants(host)
        bad = world_writable(host.dir / "releases", host.dir / "venvs", host.dir / "run")
        assert not bad, bad[:5]
    release = host.live()
    assert os.stat(release / "tool.sh").st_mode & 0o777 == 0o555  # releases are read-only
    row["outcome"] = (
        "no world-writable file or directory under releases/, venvs/, run/ "
        f"(a 0777 file in the repo checked out {oct(os.stat(release / 'tool.sh').st_mode & 0o777)})"
    )


def test_receiver_secret_readable_by_others(site, observe):
    host, work = site
    row = observe("security", "host shipyard.toml holding a receiver `secret`, mode 0644")
    config = host.dir / "shipyard.toml"
    original = config.read_text()
    host.set_host_config(secret="s3cr3t-receiver-key")
    config.chmod(0o644)
    try:
        work.commit("any", **{"mysite/version.py": 'GREETING = "secret"\n'})
        tip, n = host.branch(), len(entries(host))
        result = work.push(check=False)
        assert result.returncode != 0 and host.branch() == tip and len(entries(host)) == n
        line = next(ln for ln in result.out.splitlines() if "[remote rejected]" in ln)
        assert "holds `secret` but others can read it (mode 0644" in line
        assert f"chmod 600 {config}" in line and "s3cr3t" not in result.out
        status = sy(host, "status", "mysite").stdout  # read-only: still shows what is live
        assert "! fix: make it the deploy user's alone: chmod 600" in status
        assert "mysite: live" in status
        config.chmod(0o600)
        assert "shipyard ▸ live" in work.push().out
        row["outcome"] = (
            f"push refused before the branch moved: `{line.split('(', 1)[1][:110]}…`; "
            "`status` shows the problem and the fix; after `chmod 600` the push deploys"
        )
    finally:
        config.write_text(original)
        config.chmod(0o600)


def test_init_writes_the_host_config_private(site):
    host, _ = site
    assert stat.S_IMODE((host.dir / "shipyard.toml").stat().st_mode) == 0o600


def test_receiver_refuses_unsigned_requests(tmp_path, observe):
    row = observe("security", "receiver requests unsigned, mis-signed, stale, replayed")
    import http.client
    import threading

    from shipyard.receiver import auth
    from shipyard.receiver.server import Receiver

    host = make_host(tmp_path / "apps")
    secret = tmp_path / "cluster.secret"
    secret.write_text("fault-suite-secret-0123456789abcdef\n")
    secret.chmod(0o600)
    with open(host.dir / "shipyard.toml", "a") as config:
        config.write(f'secret_file = "{secret}"\nname = "web2"\n')
    server = Receiver(("127.0.0.1", 0), host.root, 1 << 20)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    path = "/v1/apps/mysite/info"

    def get(headers: dict) -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
        try:
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            return response.status, response.read().decode(errors="replace")
        finally:
            conn.close()

    key = secret.read_text().strip().encode()
    to = f"127.0.0.1:{server.server_address[1]}"  # requests are signed for this receiver
    try:
        seen = {}
        seen["unsigned"] = get({})
        seen["mis-signed"] = get(
            auth.sign(b"not-the-cluster-secret-at-all!!", "GET", path, b"", to=to)
        )
        seen["stale"] = get(auth.sign(key, "GET", path, b"", now=time.time() - 3600, to=to))
        headers = auth.sign(key, "GET", path, b"", to=to)
        seen["signed"] = get(headers)
        seen["replayed"] = get(headers)
        assert seen["signed"][0] == 200, seen["signed"]
        for what in ("unsigned", "mis-signed", "stale", "replayed"):
            assert seen[what][0] == 401, (what, seen[what])
        assert "unsigned request" in seen["unsigned"][1]
        assert "bad signature" in seen["mis-signed"][1]
        assert "stale request" in seen["stale"][1] and "replayed" in seen["replayed"][1]
    finally:
        server.shutdown()
        server.server_close()
    row["outcome"] = (
        "401 for each (`unsigned request`, `bad signature`, `stale request`, `replayed`); "
        "the signed one 200"
    )
