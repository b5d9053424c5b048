"""Many hosts going back: when a rollout fails anywhere, every host serves the old release.

One primary and two peers (each peer a real network namespace with its receiver and
its own supervisord) for the whole module, deploying the smallest WSGI app (gunicorn):
each test starts with every host serving one good release, breaks one host, pushes,
and checks what every host *serves* (GET / over HTTP) and which release its processes
run (/proc/<pid>/cwd), not only where ``current`` points; then it repairs the host and
leaves the cluster on one good release again.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, Host, shipyard

from shipyard import fault_injection

sys.path.insert(0, str(REPO / "tests"))
import manyhosts  # noqa: E402
import netns  # noqa: E402

pytestmark = pytest.mark.skipif(netns.available() is not None, reason=str(netns.available()))

APP = """\
import os

from version import GREETING

if os.environ.get("BROKEN"):  # set in a host's shared/.env: its web cannot start
    raise SystemExit("BROKEN is set on this host")


def app(environ, start_response):
    body = b"ok" if environ.get("PATH_INFO") == "/healthz" else GREETING.encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""
FILES = {
    "app.py": APP,
    "version.py": 'GREETING = "v0"\n',
    "requirements.txt": "gunicorn>=23\n",
    "Procfile": "web: gunicorn app:app --workers 1 --bind 127.0.0.1:$PORT\n",
    "shipyard.toml": 'shared = [".env"]\n\n[health]\npath = "/healthz"\n',
}


class Hosts(manyhosts.Hosts):
    """The module's cluster: the primary (web1) and its two peers, and the clone."""

    def __init__(self, base: Path, net: netns.Net) -> None:
        super().__init__(base, net, FILES, "the smallest WSGI app")
        self.version = 0

    @property
    def dirs(self) -> dict[str, Path]:
        return {"web1": self.cluster.dir, **{p.name: p.dir for p in self.peers}}

    def next_version(self) -> str:
        self.version += 1
        text = f"<v{self.version}>"
        self.work.commit(text, **{"version.py": f'GREETING = "{text}"\n'})
        return text

    def push(self, fails: bool = False) -> str:
        return self.work.push(fails=fails).out

    def serves(self, name: str) -> str:
        return self.cluster.serves(None if name == "web1" else self.peer(name))

    def running(self, name: str) -> set[str]:
        return self.cluster.running(None if name == "web1" else self.peer(name))

    def live(self, name: str) -> str | None:
        return self.cluster.live() if name == "web1" else self.peer(name).live()

    def assert_every_host_serves(self, greeting: str, release: str, out: str = "") -> None:
        self.cluster.assert_serving(greeting, release, out)

    def good(self) -> tuple[str, str]:
        """Push a new version that every host takes; (its greeting, its release)."""
        text = self.next_version()
        out = self.push()
        assert "shipyard ▸ live" in out, out
        live = self.live("web1")
        self.assert_every_host_serves(text, live, out)
        return text, live


@pytest.fixture(scope="module")
def hosts(tmp_path_factory) -> Hosts:
    net = netns.Net()
    base = tmp_path_factory.mktemp("rollout")
    try:
        made = Hosts(base, net)
        made.good()  # every host builds its venv once
        yield made
    finally:
        net.close()  # the peers' receivers and supervisords, in their namespaces
        Host(base / "web1").stop_processes()


@pytest.fixture
def clean(hosts: Hosts):
    """Put back what a test changed on the hosts: rolling, markers, keep, armed faults."""
    yield hosts
    netns.set_config(hosts.cluster.config, rolling=0)
    for name, path in hosts.dirs.items():
        (path / "shared" / ".env").unlink(missing_ok=True)
        fault_injection.disarm(path / "run")
        if name != "web1":
            netns.set_config(path / "shipyard.toml", keep=5)


def break_web(hosts: Hosts, name: str) -> None:
    """The host's web cannot start any more (as a settings module that does not exist would)."""
    (hosts.dirs[name] / "shared" / ".env").write_text("BROKEN=1\n")


BROKEN = {"action": "break web"}  # not a fault: break_web
FAILING = {
    "all at once, the last host's web cannot start": (
        {"rolling": 0},
        ("web3", BROKEN),
        ["[web2] ✓ restart", "[web3] ✗ restart"],
    ),
    "all at once, the primary fails verify": (
        {"rolling": 0},
        ("web1", {"at": "verify", "when": "end", "action": "fail"}),
        ["[web1] ✗ verify", "[web2] ✓ finish"],
    ),
    "rolling batches of 1, the third host fails verify": (
        {"rolling": 1},
        ("web3", {"at": "verify", "action": "fail"}),
        ["batch 3/3: web3", "[web3] ✗ verify", "injected", "[web1] ✓ verify", "[web2] ✓ verify"],
    ),
    "a peer raises an unexpected exception after its switch": (
        {"rolling": 0},
        ("web2", {"at": "restart", "when": "end", "action": "raise"}),
        ["[web2] ✗ restart", "internal error"],
    ),
    "keep = 1 on the peers, the last host's web cannot start": (
        {"rolling": 0, "keep": 1},
        ("web3", BROKEN),
        ["[web2] ✓ finish", "[web3] ✗ restart"],
    ),
}


@pytest.mark.parametrize("case", list(FAILING))
def test_a_failing_host_sends_every_host_back(clean, case):
    hosts = clean
    config, (name, fault), expected = FAILING[case]
    netns.set_config(hosts.cluster.config, rolling=config["rolling"])
    for peer in hosts.peers:
        netns.set_config(peer.dir / "shipyard.toml", keep=config.get("keep", 5))
    greeting, live = hosts.good()
    if fault is BROKEN:
        break_web(hosts, name)
    else:
        fault_injection.arm(hosts.dirs[name] / "run", fault)
    hosts.next_version()
    out = hosts.push(fails=True)
    assert "✗ rollout" in out and all(line in out for line in expected), out
    hosts.assert_every_host_serves(greeting, live, out)


def test_rollback_with_peers_makes_the_target_live_on_every_host(clean):
    hosts = clean
    old_greeting, old = hosts.good()
    greeting, live = hosts.good()
    result = shipyard("--root", hosts.cluster.root, "rollback", "mysite", check=False)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    hosts.assert_every_host_serves(old_greeting, old, out)

    # web3 lost the release to go back to: refused, naming it, before anyone switched
    shipyard("--root", hosts.cluster.root, "rollback", "mysite", live)  # back to the newest
    hosts.assert_every_host_serves(greeting, live)
    shutil.rmtree(hosts.dirs["web3"] / "releases" / old)
    result = shipyard("--root", hosts.cluster.root, "rollback", "mysite", old, check=False)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    last = [ln for ln in out.splitlines() if ln.strip()][-1]
    assert "web3" in last and old in last and "not on disk" in last, out
    assert "✓ switch" not in out, out
    hosts.assert_every_host_serves(greeting, live, out)


def entries(path: Path) -> list[dict]:
    history = path / "deploys" / "deploys.jsonl"
    return [json.loads(line) for line in history.read_text().splitlines() if line.strip()]


def test_the_primary_killed_during_the_rollout_leaves_every_host_on_one_release(clean):
    hosts = clean
    netns.set_config(hosts.cluster.config, rolling=1)
    greeting, live = hosts.good()
    fault_injection.arm(hosts.cluster.dir / "run", {"at": "batch-3", "action": "kill"})
    hosts.next_version()
    push = subprocess.Popen(
        ["git", "push", "production", "main"],
        cwd=hosts.work.path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out = push.communicate(timeout=240)[0]
    assert "[web2] ✓ verify" in out and "batch 3/3" not in out, out
    number = int(re.search(r"deploy #(\d+): main", out).group(1))
    deadline = time.monotonic() + 120  # post-receive started `shipyard recover`
    while not any(e["deploy"] == number for e in entries(hosts.cluster.dir)):
        assert time.monotonic() < deadline, out
        time.sleep(0.2)
    entry = next(e for e in entries(hosts.cluster.dir) if e["deploy"] == number)
    assert entry["outcome"] == "interrupted" and entry["failed_phase"] == "rollout", entry
    assert entry["live"] == live and live in entry["error"], entry
    hosts.assert_every_host_serves(greeting, live, out)
    history = shipyard("--root", hosts.cluster.root, "history", "mysite").stdout
    assert f"↳ every host went back to {live}" in history, history
    # and the next deploy goes ahead on every host
    hosts.good()


def test_a_rollback_killed_during_the_rollout_is_undone_by_the_next_deploy(clean):
    """No hook to start `shipyard recover` here: the next deploy finds the note and recovers."""
    hosts = clean
    netns.set_config(hosts.cluster.config, rolling=1)
    hosts.good()
    greeting, live = hosts.good()
    fault_injection.arm(hosts.cluster.dir / "run", {"at": "batch-3", "action": "kill"})
    killed = shipyard("--root", hosts.cluster.root, "rollback", "mysite", check=False)
    assert killed.returncode == -9 and "[web2] ✓ verify" in killed.stdout, killed.stdout
    number = int(re.search(r"rollback #(\d+):", killed.stdout).group(1))
    result = shipyard("--root", hosts.cluster.root, "deploy", "mysite", check=False)
    out = result.stdout + result.stderr
    assert result.returncode == 0 and "every host went back" in out, out
    entry = next(e for e in entries(hosts.cluster.dir) if e["deploy"] == number)
    assert entry["outcome"] == "interrupted" and entry["live"] == live, entry
    assert entry["recovered"]["by"].startswith("deploy #"), entry
    hosts.assert_every_host_serves(greeting, live, out)


def test_status_says_plainly_when_the_hosts_disagree(clean):
    hosts = clean
    old_greeting, old = hosts.good()
    greeting, live = hosts.good()
    status = shipyard("--root", hosts.cluster.root, "status", "mysite").stdout
    assert "disagree" not in status, status
    # web2's current is put back by hand; its processes still serve the newer release
    web2 = hosts.dirs["web2"]
    tmp = web2 / ".current-by-hand"
    tmp.symlink_to(Path("releases") / old)
    tmp.rename(web2 / "current")
    assert hosts.serves("web2") == greeting and hosts.running("web2") == {live}
    status = shipyard("--root", hosts.cluster.root, "status", "mysite").stdout
    assert "! the hosts disagree" in status, status
    assert f"web2 serves {live} (current {old})" in status, status
    assert f"web2 has {old} live, this host {live}" in status, status
    peers = shipyard("--root", hosts.cluster.root, "peers", "mysite", check=False)
    assert peers.returncode == 1 and f"! web2 serves {live}" in peers.stdout, peers.stdout
    result = shipyard("--root", hosts.cluster.root, "deploy", "mysite", check=False)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    hosts.assert_every_host_serves(greeting, live, out)
    assert "disagree" not in shipyard("--root", hosts.cluster.root, "status", "mysite").stdout
