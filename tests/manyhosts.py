"""An app of many hosts for the operating tests (tests/e2e/test_operate_hosts.py and
tests/faults/test_many_hosts_operate.py): a primary and two peers, each peer a real network
namespace with its receiver and its own supervisord, running the smallest WSGI app (gunicorn)
that answers with a setting of its environment, and a worker."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import netns
from conftest import BIN, Host, Work, processes_under, run, shipyard
from httpload import Load, fetch

NAMES = ("web1", "web2", "web3")

APP = """\
import os
import sys
import time

time.sleep(float(os.environ.get("SLOW_START", "0")))  # set in a host's .env: a slow start
if os.environ.get("BROKEN"):  # set in a host's shared/.env: its web cannot start
    raise SystemExit("BROKEN is set on this host")


def app(environ, start_response):
    path = environ.get("PATH_INFO")
    body = b"ok" if path == "/healthz" else f"color={os.environ.get('COLOR', '-')}".encode()
    if path != "/healthz":
        print(f"served {path}", flush=True)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""
WORKER = "import time\nwhile True:\n    time.sleep(1)\n"
FILES = {
    "app.py": APP,
    "worker.py": WORKER,
    "requirements.txt": "gunicorn>=23\n",
    "Procfile": "web: gunicorn app:app --workers 1 --bind 127.0.0.1:$PORT\n"
    "worker: python worker.py\n",
    "shipyard.toml": 'shared = [".env"]\n\n[health]\npath = "/healthz"\n',
}


class Hosts:
    """The module's cluster: the primary (web1) and its two peers (web2, web3)."""

    def __init__(
        self, base: Path, net: netns.Net, files: dict | None = None, what="a web and a worker"
    ) -> None:
        self.cluster = netns.Cluster(net, base, BIN)
        self.peers = [self.cluster.add_peer(), self.cluster.add_peer()]
        self.work = Work(base / "work")
        self.work.path.mkdir()
        self.work.git("init", "-q", "-b", "main")
        self.work.commit(what, **(FILES if files is None else files))
        self.work.git("remote", "add", "production", str(self.cluster.dir / "repo.git"))

    def peer(self, name: str) -> netns.PeerHost:
        return next(p for p in self.peers if p.name == name)

    def dir(self, name: str) -> Path:
        return self.cluster.dir if name == "web1" else self.peer(name).dir

    def env(self, name: str) -> Path:
        return self.dir(name) / "shared" / ".env"

    def serves(self, name: str, path: str = "/") -> str:
        if name == "web1":
            status, body = fetch(self.cluster.port, path)
            assert status == 200, body
            return body
        code = netns.FETCH.replace("8000/'", f"8000{path}'")
        return run(*self.peer(name).node.cmd(sys.executable, "-c", code)).stdout

    def every_host_serves(self, text: str, out: str = "") -> None:
        """Every host answers ``text`` and its processes run the live release only."""
        self.cluster.assert_serving(text, self.cluster.live(), out)

    def app_pids(self, name: str) -> set[int]:
        """The pids of the host's app processes (their cwd in a release)."""
        releases = os.path.realpath(self.dir(name) / "releases") + "/"
        found = set()
        for pid in processes_under(self.dir(name).parent):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/cwd").startswith(releases):
                    found.add(pid)
        return found

    def environs(self, name: str, key: str) -> set[str | None]:
        """The value of ``key`` in the environment of each of the host's web and worker
        processes (``/proc/<pid>/environ``; None where it is not set)."""
        found: set[str | None] = set()
        for pid in self.app_pids(name):
            with contextlib.suppress(OSError):
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                launcher = b"shipyard/launch.py" in cmdline or b"shipyard.launch" in cmdline
                if launcher or (b"gunicorn" not in cmdline and b"worker.py" not in cmdline):
                    continue  # the log stamper: the launcher's environment (and argv), before .env
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                values = [
                    e.split(b"=", 1)[1].decode() for e in env if e.startswith(f"{key}=".encode())
                ]
                found.add(values[0] if values else None)
        return found

    def workers(self, name: str) -> int:
        count = 0
        for pid in processes_under(self.dir(name).parent):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            count += b"worker.py" in cmdline
        return count

    def shipyard(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return shipyard("--root", self.cluster.root, *args, check=False, **kw)

    def history(self, name: str = "web1") -> list[dict]:
        path = self.dir(name) / "deploys" / "deploys.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def out_of(result: subprocess.CompletedProcess) -> str:
    return result.stdout + result.stderr


def files(hosts: Hosts, name: str) -> dict[str, bytes | None]:
    """The host's .env and scale.json as they are on disk."""
    found = {}
    for path in (hosts.env(name), hosts.dir(name) / "scale.json"):
        found[path.name] = path.read_bytes() if path.exists() else None
    return found


def everyone(hosts: Hosts) -> dict[str, dict]:
    return {name: files(hosts, name) for name in ("web1", "web2", "web3")}


@contextlib.contextmanager
def operated(base: Path) -> Iterator[Hosts]:
    """The cluster, pushed once (every host serves ``color=-``); torn down after."""
    net = netns.Net()
    try:
        made = Hosts(base, net)
        out = made.work.push().out
        assert "shipyard ▸ live" in out, out
        made.every_host_serves("color=-", out)
        yield made
    finally:
        net.close()  # the peers' receivers and supervisords, in their namespaces
        Host(base / "web1").stop_processes()


def broken(hosts: Hosts, name: str):
    """The host's next web cannot start (BROKEN=1 in its .env, by hand), until the block ends."""
    return appended(hosts, name, "BROKEN=1\n")


@contextlib.contextmanager
def appended(hosts: Hosts, name: str, text: str) -> Iterator[None]:
    env = hosts.env(name)
    good = env.read_text()
    env.write_text(good + text)
    try:
        yield
    finally:
        env.write_text(good)


CLONE_NEWNET = 0x40000000


def enter(ns: str) -> None:
    """Move the calling thread (only it) into the network namespace ``ns`` (setns(2))."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    with open(f"/run/netns/{ns}") as handle:
        if libc.setns(handle.fileno(), CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {ns}")


@contextlib.contextmanager
def under_load(hosts: Hosts, rate: float = 20) -> Iterator[dict[str, Load]]:
    """GET / on every host at once, each from a thread inside that host's namespace."""
    loads = {"web1": Load(hosts.cluster.port, rate=rate, seconds=120)}
    for peer in hosts.peers:
        loads[peer.name] = Load(8000, rate=rate, seconds=120)

    def run(name: str) -> None:
        if name != "web1":
            enter(hosts.peer(name).node.ns)
        loads[name].run()

    threads = [threading.Thread(target=run, args=(n,), daemon=True) for n in loads]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        yield loads
    finally:
        time.sleep(0.5)
        for load in loads.values():
            load.stop.set()
        for t in threads:
            t.join(timeout=60)


def wait_for(predicate, what: str, timeout: float = 30.0) -> None:
    """Until ``predicate()`` holds (the processes before a handover drain first), bounded."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
