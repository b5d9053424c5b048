"""Switching many hosts when one fails its health check: everyone who switched goes back.

These tests run the peers' receivers in this process, on loopback, with a verify
phase that fails where the host's shared/ holds a marker, and an app without a
Procfile (real processes are covered in test_hosts.py). The primary is a real push.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest
from conftest import REPO, make_host, make_work

from shipyard import deploy
from shipyard.errors import PhaseError
from shipyard.receiver.server import Receiver

sys.path.insert(0, str(REPO / "tests"))
import netns  # noqa: E402


def verify_unless_marked(d: deploy.Deploy) -> str:
    if (d.app.shared / "fail-verify").exists():
        raise PhaseError("GET /healthz answered 500 (marker fail-verify)")
    return "healthy"


@pytest.fixture
def hosts(tmp_path: Path, monkeypatch):
    phases = [
        deploy.Phase("verify", verify_unless_marked) if p.name == "verify" else p
        for p in deploy.PHASES
    ]
    monkeypatch.setattr(deploy, "PHASES", phases)  # what the receivers below run
    secret = tmp_path / "secret"
    secret.write_text(netns.SECRET)
    secret.chmod(0o600)
    servers, all_hosts = [], []
    for name in ("web1", "web2", "web3"):
        host = make_host(tmp_path / name)
        netns.set_config(host.dir / "shipyard.toml", secret_file=str(secret), name=name)
        all_hosts.append(host)
        if name != "web1":
            server = Receiver(("127.0.0.1", 0), host.root, 1 << 20)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            servers.append(server)
    addresses = [f"127.0.0.1:{s.server_address[1]}" for s in servers]
    netns.set_config(all_hosts[0].dir / "shipyard.toml", peers=addresses, peer_timeout=5)
    yield all_hosts
    for server in servers:
        server.shutdown()
        server.server_close()


def test_rolling_batches_of_one_switch_the_first_host_back(tmp_path, hosts):
    primary, web2, web3 = hosts
    netns.set_config(primary.dir / "shipyard.toml", rolling=1)
    work = make_work(tmp_path / "work", primary)
    work.write("shipyard.toml", "")
    work.git("rm", "-q", "Procfile")
    work.commit("no build step, no processes")
    work.push()
    live = primary.live()
    assert web2.live().name == web3.live().name == live.name
    (web2.dir / "shared" / "fail-verify").write_text("")
    sha = work.commit("v2", **{"mysite/version.py": 'GREETING = "v2"\n'})
    result = work.push(fails=True)
    out = result.out
    assert "batch 1/3: web1" in out and "batch 2/3: web2" in out, out
    assert "batch 3/3" not in out and "[web3] ✓ switch" not in out.split("deploy #2")[1]
    assert "[web1] ✓ switch" in out.split("deploy #2")[1]  # the first batch went live…
    assert "[web2] ✗ verify" in out and "✗ rollout" in out and "marker fail-verify" in out
    assert primary.live() == live  # …and went back
    assert web2.live().name == web3.live().name == live.name
    for host in hosts:  # the failed release is discarded everywhere
        assert not [r for r in host.releases() if r.endswith(sha[:7])], host


def test_all_at_once_every_host_goes_back_when_one_fails(tmp_path, hosts):
    primary, web2, web3 = hosts
    work = make_work(tmp_path / "work", primary)
    work.write("shipyard.toml", "")
    work.git("rm", "-q", "Procfile")
    work.commit("no build step, no processes")
    work.push()
    live = primary.live()
    (web3.dir / "shared" / "fail-verify").write_text("")
    work.commit("v2", **{"mysite/version.py": 'GREETING = "v2"\n'})
    out = work.push(fails=True).out
    assert "[web2] ✓ switch" in out and "[web3] ✗ verify" in out and "✗ rollout" in out
    assert "web3 (127.0.0.1:" in out.splitlines()[-3] or "failed at rollout: web3" in out
    assert primary.live() == live and web2.live().name == web3.live().name == live.name
    (web3.dir / "shared" / "fail-verify").unlink()
    work.git("commit", "-q", "--amend", "-m", "v2 again")
    again = work.push().out
    assert "switch skew" in again and web3.live().name == primary.live().name != live.name
