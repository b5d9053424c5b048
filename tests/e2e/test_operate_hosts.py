"""Operating an app of many hosts: config, scale, restart, run and logs reach every host.

The cluster is tests/manyhosts.py's (a primary and two peers, each peer a real network
namespace with its receiver and its own supervisord) for the whole module. The tests check
what every host *serves* over HTTP, which release and how many processes run there (/proc),
each host's files and the primary's history. When a host cannot follow:
tests/faults/test_many_hosts_operate.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import BIN, REPO

sys.path.insert(0, str(REPO / "tests"))
import manyhosts  # noqa: E402
import netns  # noqa: E402
from manyhosts import Hosts, everyone, out_of  # noqa: E402

pytestmark = pytest.mark.skipif(netns.available() is not None, reason=str(netns.available()))


@pytest.fixture(scope="module")
def hosts(tmp_path_factory) -> Hosts:
    with manyhosts.operated(tmp_path_factory.mktemp("operate")) as made:
        yield made


def test_config_set_reaches_every_host_before_any_restarts(hosts: Hosts):
    before = len(hosts.history())
    with manyhosts.under_load(hosts) as loads:
        result = hosts.shipyard("config", "set", "mysite", "COLOR=blue")
    out = out_of(result)
    assert result.returncode == 0, out
    for name, load in loads.items():  # every host served throughout its restart
        assert load.results and not load.failures(), (name, load.failures()[:5])
        assert load.results[-1][3] == "color=blue", (name, load.results[-1])
    assert "✓ stage" in out and "3 hosts: web1, web2, web3" in out, out
    stage = out.index("✓ stage")
    assert all(out.index(f"[{h}] restart") > stage for h in ("web1", "web2", "web3")), out
    assert out.index("[web1] restart") < out.index("[web2] restart") < out.index("[web3] restart")
    hosts.every_host_serves("color=blue", out)
    for name in ("web1", "web2", "web3"):
        # every web and worker process has it (those from before the handover drain first)
        manyhosts.wait_for(lambda n=name: hosts.environs(n, "COLOR") == {"blue"}, name)
        env = hosts.env(name)
        assert "COLOR=blue" in env.read_text() and env.stat().st_mode & 0o777 == 0o600, name
        assert not list((hosts.dir(name) / "run").glob("staged-*")), name  # settled
    added = hosts.history()[before:]
    assert len(added) == 1 and added[0]["kind"] == "config", added
    assert added[0]["keys"] == ["COLOR"] and added[0]["hosts"] == ["web1", "web2", "web3"]
    recorded = (hosts.dir("web1") / "deploys" / "deploys.jsonl").read_text()
    assert "blue" not in recorded  # keys, never values
    shown = hosts.shipyard("history", "mysite").stdout
    line = next(ln for ln in shown.splitlines() if " config " in ln)
    assert "applied" in line and "set CO" in line and "blue" not in shown, shown
    for name in ("web2", "web3"):  # recorded once, in the primary's history
        assert not [e for e in hosts.history(name) if e.get("kind") == "config"], name


def test_restart_rolls_host_by_host(hosts: Hosts):
    hosts.shipyard("config", "set", "mysite", "COLOR=blue")
    before = {n: hosts.app_pids(n) for n in manyhosts.NAMES}
    with manyhosts.under_load(hosts) as loads:
        result = hosts.shipyard("restart", "mysite")
    out = out_of(result)
    for name, load in loads.items():
        assert load.results and not load.failures(), (name, load.failures()[:5])
    assert result.returncode == 0 and "restarted on 3 hosts, one by one" in out, out
    assert out.index("[web1] restart") < out.index("[web2] restart") < out.index("[web3] restart")
    hosts.every_host_serves("color=blue", out)
    for name in manyhosts.NAMES:  # every host's processes are new ones
        assert not before[name] & hosts.app_pids(name), name


def test_config_set_no_restart_writes_every_host_and_restarts_none(hosts: Hosts):
    hosts.shipyard("config", "set", "mysite", "COLOR=blue")
    before = {n: hosts.app_pids(n) for n in manyhosts.NAMES}
    result = hosts.shipyard("config", "set", "mysite", "COLOR=cyan", "--no-restart")
    out = out_of(result)
    assert result.returncode == 0 and "- restart" in out and "] restart" not in out, out
    for name in manyhosts.NAMES:
        assert "COLOR=cyan" in hosts.env(name).read_text(), name
        assert hosts.serves(name) == "color=blue", name  # the processes get it when restarted
        assert before[name] <= hosts.app_pids(name), name
    assert hosts.history()[-1]["restarted"] is False
    hosts.shipyard("restart", "mysite")
    hosts.every_host_serves("color=cyan")
    hosts.shipyard("config", "set", "mysite", "COLOR=blue")


def test_scale_applies_to_every_host(hosts: Hosts):
    hosts.shipyard("config", "set", "mysite", "COLOR=blue")
    before = len(hosts.history())
    with manyhosts.under_load(hosts) as loads:
        result = hosts.shipyard("scale", "mysite", "worker=2", "web=2")
    out = out_of(result)
    for name, load in loads.items():
        assert load.results and not load.failures(), (name, load.failures()[:5])
    assert result.returncode == 0 and "on 3 hosts" in out, out
    for name in ("web1", "web2", "web3"):
        assert json.loads((hosts.dir(name) / "scale.json").read_text()) == {"web": 2, "worker": 2}
        line = next(ln for ln in out.splitlines() if f"[{name}] restart" in ln)
        assert "web ×2 healthy" in line, line
        deadline = time.monotonic() + 30
        while hosts.workers(name) != 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert hosts.workers(name) == 2, (name, out)
    added = hosts.history()[before:]
    assert (
        len(added) == 1
        and added[0]["kind"] == "scale"
        and added[0]["counts"] == {"web": 2, "worker": 2}
    )
    hosts.every_host_serves("color=blue", out)
    result = hosts.shipyard("scale", "mysite", "worker=default", "web=default")
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
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(follow.stdout), daemon=True)
    reader.start()

    def shown(name: str, text: str) -> bool:
        return any(ln.startswith(f"{name} ") and text in ln for ln in list(lines))

    def wait_until_every_host_shows(text: str) -> None:
        deadline = time.monotonic() + 60
        while not all(shown(name, text) for name in manyhosts.NAMES):
            assert time.monotonic() < deadline and follow.poll() is None, (text, lines)
            time.sleep(0.1)

    try:
        time.sleep(2)  # following every host now
        for name in manyhosts.NAMES:
            hosts.serves(name, f"/follow-{name}")
        wait_until_every_host_shows("/follow-")  # each line with its host's name in front
        for name in manyhosts.NAMES:
            assert shown(name, f"/follow-{name}"), (name, lines)
        # across a deploy: the processes it starts on every host are followed too
        hosts.work.commit("a new release", **{"worker.py": WORKER_V2})
        assert "shipyard ▸ live" in hosts.work.push().out
        wait_until_every_host_shows(f"starting on releases/{hosts.cluster.live()}")
    finally:
        follow.terminate()
        follow.wait(timeout=10)
        reader.join(timeout=10)


WORKER_V2 = "import time\n\nwhile True:  # v2\n    time.sleep(1)\n"


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
