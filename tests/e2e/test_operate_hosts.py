"""Operating an app of many hosts: config, scale, restart, run and logs reach every host.

One primary and two peers (each peer a real network namespace with its receiver and its
own supervisord) for the whole module, running the smallest WSGI app (gunicorn) that
answers with a setting of its environment, and a worker. The tests check what every host
*serves* over HTTP, which release and how many processes run there (/proc), the files on
each host and the primary's history; a change one host cannot take changes nothing
anywhere.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import BIN, REPO, Host, Work, processes_under, run, shipyard
from httpload import fetch

sys.path.insert(0, str(REPO / "tests"))
import netns  # noqa: E402

pytestmark = pytest.mark.skipif(netns.available() is not None, reason=str(netns.available()))

APP = """\
import os
import sys

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

    def __init__(self, base: Path, net: netns.Net) -> None:
        self.cluster = netns.Cluster(net, base, BIN)
        self.peers = [self.cluster.add_peer(), self.cluster.add_peer()]
        self.work = Work(base / "work")
        self.work.path.mkdir()
        self.work.git("init", "-q", "-b", "main")
        self.work.commit("a web and a worker", **FILES)
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


@pytest.fixture(scope="module")
def hosts(tmp_path_factory) -> Hosts:
    net = netns.Net()
    base = tmp_path_factory.mktemp("operate")
    try:
        made = Hosts(base, net)
        out = made.work.push().out
        assert "shipyard ▸ live" in out, out
        made.every_host_serves("color=-", out)
        yield made
    finally:
        net.close()  # the peers' receivers and supervisords, in their namespaces
        Host(base / "web1").stop_processes()


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


def test_config_set_reaches_every_host_before_any_restarts(hosts: Hosts):
    before = len(hosts.history())
    result = hosts.shipyard("config", "set", "mysite", "COLOR=blue")
    out = out_of(result)
    assert result.returncode == 0, out
    assert "✓ stage" in out and "3 hosts: web1, web2, web3" in out, out
    stage = out.index("✓ stage")
    assert all(out.index(f"[{h}] restart") > stage for h in ("web1", "web2", "web3")), out
    assert out.index("[web1] restart") < out.index("[web2] restart") < out.index("[web3] restart")
    hosts.every_host_serves("color=blue", out)
    for name in ("web1", "web2", "web3"):
        env = hosts.env(name)
        assert "COLOR=blue" in env.read_text() and env.stat().st_mode & 0o777 == 0o600, name
        assert not list((hosts.dir(name) / "run").glob("staged-*")), name  # settled
    added = hosts.history()[before:]
    assert len(added) == 1 and added[0]["kind"] == "config", added
    assert added[0]["keys"] == ["COLOR"] and added[0]["hosts"] == ["web1", "web2", "web3"]
    recorded = (hosts.dir("web1") / "deploys" / "deploys.jsonl").read_text()
    assert "blue" not in recorded  # keys, never values
    for name in ("web2", "web3"):  # recorded once, in the primary's history
        assert not [e for e in hosts.history(name) if e.get("kind") == "config"], name


def test_a_peer_that_is_down_changes_nothing_anywhere(hosts: Hosts):
    hosts.shipyard("config", "set", "mysite", "COLOR=blue")
    hosts.every_host_serves("color=blue")
    web3 = hosts.peer("web3")
    before = everyone(hosts)
    hosts.cluster.kill(web3)
    try:
        for words in (["config", "set", "mysite", "COLOR=red"], ["scale", "mysite", "worker=2"]):
            result = hosts.shipyard(*words)
            out = out_of(result)
            assert result.returncode == 1, out
            last = [ln for ln in result.stderr.splitlines() if ln.strip()][0]
            assert "web3" in last or web3.address in last, out
            assert "connection refused" in out and "nothing changed anywhere" in out, out
            assert everyone(hosts) == before, out  # web2 took it, then put its old file back
            for name in ("web1", "web2"):
                assert not list((hosts.dir(name) / "run").glob("staged-*")), name
            assert hosts.cluster.serves() == "color=blue"
            assert hosts.serves("web2") == "color=blue"
    finally:
        hosts.cluster.start(web3)
    hosts.every_host_serves("color=blue")


def test_a_peer_that_cannot_take_the_change_changes_nothing_anywhere(hosts: Hosts):
    hosts.shipyard("config", "set", "mysite", "COLOR=blue")
    env = hosts.env("web3")
    good = env.read_text()
    env.write_text(good + "THIS LINE IS NOT KEY=VALUE 'oops\n")  # web3's .env does not parse
    before = everyone(hosts)
    try:
        result = hosts.shipyard("config", "set", "mysite", "COLOR=red")
        out = out_of(result)
        assert result.returncode == 1 and "web3" in result.stderr, out
        assert "cannot parse" in out and "nothing changed anywhere" in out, out
        assert everyone(hosts) == before
    finally:
        env.write_text(good)
    hosts.every_host_serves("color=blue", out)
    assert hosts.history()[-1]["outcome"] == "failed"


def test_a_host_failing_its_restart_puts_every_host_back(hosts: Hosts):
    hosts.shipyard("config", "set", "mysite", "COLOR=blue")
    env = hosts.env("web3")
    good = env.read_text()
    env.write_text(good + "BROKEN=1\n")  # web3's next web cannot start
    before = everyone(hosts)
    try:
        result = hosts.shipyard("config", "set", "mysite", "COLOR=green")
        out = out_of(result)
        assert result.returncode == 1, out
        assert "[web1] restart" in out and "✗ [web3] restart" in out, out
        assert "web3" in result.stderr and "nothing changed anywhere" in out, out
        assert everyone(hosts) == before
        for name in ("web1", "web2", "web3"):  # web1 and web2 restarted again onto blue
            assert hosts.serves(name) == "color=blue", (name, out)
    finally:
        env.write_text(good)
    hosts.shipyard("restart", "mysite")
    hosts.every_host_serves("color=blue")


def test_restart_rolls_host_by_host_and_stops_at_a_failing_one(hosts: Hosts):
    hosts.shipyard("config", "set", "mysite", "COLOR=blue")
    result = hosts.shipyard("restart", "mysite")
    out = out_of(result)
    assert result.returncode == 0 and "restarted on 3 hosts, one by one" in out, out
    assert out.index("[web1] restart") < out.index("[web2] restart") < out.index("[web3] restart")
    hosts.every_host_serves("color=blue", out)

    env = hosts.env("web2")
    good = env.read_text()
    env.write_text(good + "BROKEN=1\n")
    pids = set(processes_under(hosts.dir("web3").parent))
    try:
        result = hosts.shipyard("restart", "mysite", "--process", "web")
        out = out_of(result)
        assert result.returncode == 1, out
        assert "✗ [web2] restart" in out and "[web3] restart" not in out, out
        assert "the roll stopped at web2" in out and "not restarted: web3" in out, out
        for name in ("web1", "web2", "web3"):  # the others keep serving; web2 its old web
            assert hosts.serves(name) == "color=blue", (name, out)
        assert pids <= set(processes_under(hosts.dir("web3").parent))  # web3 not touched
    finally:
        env.write_text(good)
    hosts.every_host_serves("color=blue")


def test_scale_applies_to_every_host(hosts: Hosts):
    hosts.shipyard("config", "set", "mysite", "COLOR=blue")
    before = len(hosts.history())
    result = hosts.shipyard("scale", "mysite", "worker=2")
    out = out_of(result)
    assert result.returncode == 0 and "on 3 hosts" in out, out
    for name in ("web1", "web2", "web3"):
        assert json.loads((hosts.dir(name) / "scale.json").read_text()) == {"worker": 2}
        deadline = time.monotonic() + 30
        while hosts.workers(name) != 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert hosts.workers(name) == 2, (name, out)
    added = hosts.history()[before:]
    assert len(added) == 1 and added[0]["kind"] == "scale" and added[0]["counts"] == {"worker": 2}
    hosts.every_host_serves("color=blue", out)
    result = hosts.shipyard("scale", "mysite", "worker=default")
    assert result.returncode == 0, out_of(result)
    for name in ("web1", "web2", "web3"):
        assert json.loads((hosts.dir(name) / "scale.json").read_text()) == {}
        deadline = time.monotonic() + 30
        while hosts.workers(name) != 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert hosts.workers(name) == 1, name


CWD = "import os, sys; print(os.getcwd()); print('to stderr', file=sys.stderr); sys.exit(3)"


def test_run_on_the_primary_or_on_a_named_host(hosts: Hosts):
    hosts.shipyard("config", "set", "mysite", "COLOR=blue")
    here = hosts.shipyard("run", "mysite", "--", "python", "-c", CWD)
    assert here.returncode == 3, out_of(here)
    assert here.stdout.startswith(str(hosts.dir("web1") / "releases")), here.stdout
    assert "to stderr" in here.stderr
    there = hosts.shipyard("run", "mysite", "--host", "web2", "--", "python", "-c", CWD)
    assert there.returncode == 3, out_of(there)  # the exit status passed through
    live = hosts.peer("web2").live()
    assert there.stdout.strip() == str(hosts.dir("web2") / "releases" / live), out_of(there)
    assert there.stderr.strip() == "to stderr"
    by_address = hosts.shipyard(
        "run", "mysite", "--host", hosts.peer("web3").address, "--", "python", "-c", "print(7)"
    )
    assert by_address.returncode == 0 and by_address.stdout == "7\n", out_of(by_address)
    env = hosts.shipyard(
        "run",
        "mysite",
        "--host=web3",
        "--",
        "python",
        "-c",
        "import os; print(os.environ['COLOR'])",
    )
    assert env.returncode == 0 and env.stdout == "blue\n", out_of(env)  # web3's own .env


@pytest.mark.parametrize(
    "words, message",
    [
        (["run", "mysite", "--host", "web9", "--", "true"], "no host 'web9' among mysite's hosts"),
        (["run", "mysite", "--host", "../web2", "--", "true"], "is not a host name"),
        (["logs", "mysite", "--host", "web9"], "no host 'web9' among mysite's hosts"),
        (["logs", "mysite", "--host", "/etc/passwd"], "is not a host name"),
        (["run", "mysite", "--host", "web2", "--", "no-such-command"], "command not found"),
    ],
)
def test_bad_host_input(hosts: Hosts, words, message: str):
    before = everyone(hosts)
    result = hosts.shipyard(*words)
    assert result.returncode != 0 and message in result.stderr, out_of(result)
    assert everyone(hosts) == before


def test_run_on_a_peer_that_is_down(hosts: Hosts):
    web3 = hosts.peer("web3")
    hosts.cluster.kill(web3)
    try:
        result = hosts.shipyard("run", "mysite", "--host", web3.address, "--", "true")
        assert result.returncode == 1, out_of(result)
        assert "connection refused" in result.stderr and len(result.stderr.splitlines()) <= 2
    finally:
        hosts.cluster.start(web3)


def test_logs_show_every_hosts_lines_with_its_name(hosts: Hosts):
    for name in ("web1", "web2", "web3"):
        hosts.serves(name, f"/mark-{name}")
    deadline = time.monotonic() + 10
    while True:
        result = hosts.shipyard("logs", "mysite", "-n", "200")
        if all(f"served /mark-{n}" in result.stdout for n in ("web1", "web2", "web3")):
            break
        assert time.monotonic() < deadline, out_of(result)
        time.sleep(0.2)
    assert result.returncode == 0, out_of(result)
    for name in ("web1", "web2", "web3"):
        line = next(ln for ln in result.stdout.splitlines() if f"served /mark-{name}" in ln)
        assert line.startswith(f"{name} "), line  # the host's name in front
    few = hosts.shipyard("logs", "mysite", "-n", "5")
    assert len(few.stdout.splitlines()) == 5, few.stdout  # -n across the hosts
    only = hosts.shipyard("logs", "mysite", "-n", "200", "--host", "web2")
    lines = only.stdout.splitlines()
    assert lines and all(ln.startswith("web2 ") for ln in lines), only.stdout
    assert "served /mark-web2" in only.stdout and "/mark-web3" not in only.stdout

    follow = subprocess.Popen(
        [BIN / "shipyard", "--root", hosts.cluster.root, "logs", "mysite", "-f", "-n", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(2)  # following every host now
        for name in ("web1", "web2", "web3"):
            hosts.serves(name, f"/follow-{name}")
        seen = ""
        deadline = time.monotonic() + 20
        while not all(f"/follow-{n}" in seen for n in ("web1", "web2", "web3")):
            assert time.monotonic() < deadline, seen
            seen += follow.stdout.readline()
        for name in ("web1", "web2", "web3"):
            line = next(ln for ln in seen.splitlines() if f"/follow-{name}" in ln)
            assert line.startswith(f"{name} "), line
    finally:
        follow.terminate()
        follow.wait(timeout=10)


def signed(peer: netns.PeerHost, action: str, payload: dict, secret: str = netns.SECRET):
    import http.client

    from shipyard.receiver import auth

    path, body = f"/v1/apps/mysite/{action}", json.dumps(payload).encode()
    headers = auth.sign(secret.encode(), "POST", path, body, to=peer.address)
    conn = http.client.HTTPConnection(peer.node.address, netns.PORT, timeout=10)
    conn.request("POST", path, body=body, headers=headers)
    resp = conn.getresponse()
    return resp.status, resp.read().decode()


STAGE = {"token": "config-99-0123abcd", "values": {"COLOR": "forged"}, "unset": []}
RUN = {"argv": ["touch", "/tmp/shipyard-forged-run"]}


def test_the_new_routes_are_authenticated_like_the_others(hosts: Hosts):
    web2 = hosts.peer("web2")
    before = everyone(hosts)
    for action, payload in (("stage", STAGE), ("restart", {}), ("run", RUN)):
        status, text = signed(web2, action, payload, secret="not-the-cluster-secret-at-all!!")
        assert status == 401 and "bad signature" in text, (action, text)
    import http.client

    unsigned = http.client.HTTPConnection(web2.node.address, netns.PORT, timeout=10)
    unsigned.request("GET", "/v1/apps/mysite/logs?lines=5")
    assert unsigned.getresponse().status == 401
    config = web2.dir / "shipyard.toml"
    text = config.read_text()
    config.write_text(text.replace("allow_root = true", "allow_root = false"))  # it runs as root
    try:
        for action, payload in (("stage", STAGE), ("run", RUN)):
            status, answer = signed(web2, action, payload)
            assert status == 403 and "root" in answer, (action, answer)
    finally:
        config.write_text(text)
    assert everyone(hosts) == before and not Path("/tmp/shipyard-forged-run").exists()
    status, answer = signed(web2, "stage", {**STAGE, "token": "../../shipyard.toml"})
    assert status == 200 and "invalid change token" in answer and everyone(hosts) == before
