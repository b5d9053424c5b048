"""Test hosts as Linux network namespaces on one machine (used by tests/e2e and bench/run.py).

Each host gets a namespace ``sy-<pid>-<n>`` and a veth pair from the root
namespace (where the primary runs) in its own 10.231.<x>.0/24, a subnet that
exists only on these links: the root side is .1, the host is .2. Nothing is
routed anywhere else. ``Net.close`` kills what was started in them and deletes
them; namespaces left by a run that died are removed by the next one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from conftest import HOSTS, Host, free_port, processes_under, run
from httpload import fetch

LOCK = Path("/tmp/shipyard-netns.lock")
NAME = re.compile(r"^sy-(\d+)-(\d+)$")


def available() -> str | None:
    """Why namespaces cannot be used here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if not shutil.which("ip"):
        return "iproute2 (`ip`) is not installed (tests/system-deps.sh installs it)"
    return None


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and result.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale() -> None:
    """Delete namespaces (and so their links) left by test runs whose process is gone."""
    for line in ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        match = NAME.match(name)
        if match and not _alive(int(match.group(1))):
            ip("netns", "del", name, check=False)
            ip("link", "del", f"sy{match.group(1)}r{match.group(2)}", check=False)


@dataclass
class Node:
    ns: str
    link: str  # the root-namespace end of its veth pair
    inner: str  # the end inside the namespace
    address: str  # its own address, 10.231.x.2
    procs: list[subprocess.Popen] = field(default_factory=list)

    def cmd(self, *args: str | Path) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *map(str, args)]

    def start(self, *args: str | Path, log: Path, env: dict | None = None) -> subprocess.Popen:
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                self.cmd(*args), stdout=out, stderr=out, stdin=subprocess.DEVNULL, env=env
            )
        self.procs.append(proc)
        return proc

    def cut(self) -> None:
        """Pull the cable at the host's end: the root side keeps its route (now without
        carrier), so packets for the host are dropped here and never take another route."""
        ip("-n", self.ns, "link", "set", self.inner, "down")

    def mend(self) -> None:
        ip("-n", self.ns, "link", "set", self.inner, "up")


class Net:
    """The namespaces of one test run; ``close()`` removes them all."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.nodes: list[Node] = []
        remove_stale()

    def add(self) -> Node:
        n = len(self.nodes) + 1
        ns, link, inner = f"sy-{self.pid}-{n}", f"sy{self.pid}r{n}", f"sy{self.pid}p{n}"
        LOCK.touch(exist_ok=True)
        with open(LOCK) as held:
            fcntl.flock(held, fcntl.LOCK_EX)
            used = set(re.findall(r"inet 10\.231\.(\d+)\.", ip("-4", "addr").stdout))
            x = next(str(i) for i in range(1, 255) if str(i) not in used)
            ip("netns", "add", ns)
            node = Node(ns, link, inner, f"10.231.{x}.2")
            self.nodes.append(node)
            ip("link", "add", link, "type", "veth", "peer", "name", inner)
            ip("link", "set", inner, "netns", ns)
            ip("addr", "add", f"10.231.{x}.1/24", "dev", link)
            ip("link", "set", link, "up")
            ip("-n", ns, "addr", "add", f"10.231.{x}.2/24", "dev", inner)
            ip("-n", ns, "link", "set", inner, "up")
            ip("-n", ns, "link", "set", "lo", "up")
        return node

    def close(self) -> None:
        for node in self.nodes:
            for proc in node.procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in node.procs:
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            # anything else still running inside the namespace
            pids = ip("netns", "pids", node.ns, check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            ip("link", "del", node.link, check=False)
            ip("netns", "del", node.ns, check=False)
        self.nodes.clear()


def wait_listening(address: str, port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((address, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# --- a primary (this namespace) and peers (one namespace each) for one app --

SECRET = "test-cluster-secret-0123456789abcdef"
PORT = 7070
# GET / from inside a peer's namespace, where its web listens on 127.0.0.1:8000
FETCH = (
    "import urllib.request, sys; sys.stdout.write("
    "urllib.request.urlopen('http://127.0.0.1:8000/', timeout=10).read().decode())"
)


def set_config(path: Path, **values: object) -> None:
    """Set top-level keys of a host shipyard.toml (strings, numbers, lists of strings)."""

    def toml(value: object) -> str:
        if isinstance(value, list):
            return "[" + ", ".join(toml(v) for v in value) + "]"
        return f'"{value}"' if isinstance(value, str) else str(value)

    lines = [ln for ln in path.read_text().splitlines() if ln.split("=")[0].strip() not in values]
    lines += [f"{key} = {toml(value)}" for key, value in values.items()]
    path.write_text("\n".join(lines) + "\n")


@dataclass
class PeerHost:
    node: Node
    root: Path
    name: str
    app: str
    log: Path
    proc: subprocess.Popen | None = None
    args: tuple[str, ...] = ()  # more `shipyard receiver` options (TLS, limits)

    @property
    def address(self) -> str:
        return f"{self.node.address}:{PORT}"

    @property
    def dir(self) -> Path:
        return self.root / self.app

    def live(self) -> str | None:
        try:
            return Path(os.readlink(self.dir / "current")).name
        except OSError:
            return None


class Cluster:
    """The primary's deploy root in the root namespace, peers with receivers in namespaces."""

    def __init__(self, net: Net, base: Path, bin_dir: Path, app: str = "mysite") -> None:
        self.net, self.base, self.bin, self.app = net, base, bin_dir, app
        base.mkdir(parents=True, exist_ok=True)
        self.secret_file = base / "cluster.secret"
        self.secret_file.write_text(SECRET + "\n")
        self.secret_file.chmod(0o600)
        self.root = base / "web1"
        self.init(self.root, "web1", port=free_port())
        HOSTS.append(Host(self.root, app))  # its supervisord is stopped at session end
        self.peers: list[PeerHost] = []
        self.env = {
            **os.environ,
            "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
            "UV_OFFLINE": "1",  # the namespaces reach nothing outside: uv uses its warm cache
        }

    @property
    def dir(self) -> Path:
        return self.root / self.app

    @property
    def config(self) -> Path:
        return self.dir / "shipyard.toml"

    def init(self, root: Path, name: str, port: int = 8000) -> None:
        subprocess.run(
            # the suite runs as root; deploys refuse to unless the host allows it
            [self.bin / "shipyard", "--root", root, "init", self.app, "--port", str(port)]
            + ["--allow-root"],
            check=True,
            capture_output=True,
        )
        config = root / self.app / "shipyard.toml"
        set_config(config, secret_file=str(self.secret_file), name=name, peer_timeout=5)

    def add_peer(self, join: bool = True, args: tuple[str, ...] = ()) -> PeerHost:
        node = self.net.add()
        name = f"web{len(self.peers) + 2}"
        root = self.base / name
        self.init(root, name)
        peer = PeerHost(node, root, name, self.app, self.base / f"{name}-receiver.log", args=args)
        self.peers.append(peer)
        self.start(peer)
        if join:
            self.join(peer)
        return peer

    def join(self, *peers: PeerHost) -> None:
        current = [p.address for p in self.peers if p.address in self.peer_list()]
        set_config(self.config, peers=current + [p.address for p in peers])

    def peer_list(self) -> list[str]:
        import tomllib

        return tomllib.loads(self.config.read_text()).get("peers", [])

    def start(self, peer: PeerHost) -> None:
        peer.proc = peer.node.start(
            self.bin / "shipyard",
            "--root",
            peer.root,
            "receiver",
            "--listen",
            peer.address,
            *peer.args,
            log=peer.log,
            env=self.env,
        )
        wait_listening(peer.node.address, PORT)

    def kill(self, peer: PeerHost) -> None:
        if peer.proc and peer.proc.poll() is None:
            peer.proc.kill()
            peer.proc.wait()

    def live(self) -> str | None:
        try:
            return Path(os.readlink(self.dir / "current")).name
        except OSError:
            return None

    @property
    def port(self) -> int:
        """The primary's web port (peers' are 8000, each in its own namespace)."""
        for line in self.config.read_text().splitlines():
            if line.split("=")[0].strip() == "port":
                return int(line.split("=")[1])
        return 8000

    def hosts(self) -> list[PeerHost | None]:
        """Every host: None for the primary, then the peers."""
        return [None, *self.peers]

    def serves(self, peer: PeerHost | None = None) -> str:
        """What GET / answers on the host (the primary when ``peer`` is None)."""
        if peer is None:
            status, body = fetch(self.port)
            assert status == 200, body
            return body
        return run(*peer.node.cmd(sys.executable, "-c", FETCH)).stdout

    def running(self, peer: PeerHost | None = None) -> set[str]:
        """The releases the host's app processes run in (their /proc/<pid>/cwd)."""
        app_dir = self.dir if peer is None else peer.dir
        releases = os.path.realpath(app_dir / "releases")
        found = set()
        for pid in processes_under(app_dir.parent):
            with contextlib.suppress(OSError):
                cwd = os.readlink(f"/proc/{pid}/cwd")
                if cwd.startswith(releases + "/"):
                    found.add(cwd[len(releases) + 1 :].split("/")[0])
        return found

    def assert_serving(self, text: str, release: str | None = None, out: str = "") -> None:
        """Every host: ``current`` is ``release`` (default: the primary's), GET / answers with
        ``text`` in it, and its processes run that release only (an old web drains for a
        moment after a handover: waited for, up to 30 s)."""
        release = release or self.live()
        for peer in self.hosts():
            name = peer.name if peer else "web1"
            live = peer.live() if peer else self.live()
            assert live == release, (name, live, release, out)
            page = self.serves(peer)
            assert text in page, (name, page, text, out)
            deadline = time.monotonic() + 30
            while self.running(peer) != {release} and time.monotonic() < deadline:
                time.sleep(0.1)
            assert self.running(peer) == {release}, (name, self.running(peer), release, out)
