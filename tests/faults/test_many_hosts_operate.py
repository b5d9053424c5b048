"""Operating an app of many hosts when a host cannot follow: a peer down, a peer whose .env does
not parse, a host whose processes do not come up, an unknown or malformed --host.

A change of settings or counts reaches every host or none (what every host serves over HTTP
and each host's files are compared before and after); a restart stops at the host that fails
and names it, the others keep serving. The cluster is tests/manyhosts.py's: a primary and two
peers, each in a real network namespace with its receiver and its own supervisord.
"""

from __future__ import annotations

import subprocess
import sys

import faultlib
import pytest
from conftest import BIN, REPO

sys.path.insert(0, str(REPO / "tests"))
import manyhosts  # noqa: E402
import netns  # noqa: E402
from manyhosts import Hosts, everyone, out_of  # noqa: E402

pytestmark = pytest.mark.skipif(netns.available() is not None, reason=str(netns.available()))
observe = faultlib.observe


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with manyhosts.operated(tmp_path_factory.mktemp("manyops")) as made:
        yield made


@pytest.fixture
def hosts(cluster: Hosts) -> Hosts:
    """Every host serving color=blue before and after a case."""
    result = cluster.shipyard("config", "set", "mysite", "COLOR=blue")
    assert result.returncode == 0, out_of(result)
    cluster.every_host_serves("color=blue")
    yield cluster
    for peer in cluster.peers:
        if peer.proc is None or peer.proc.poll() is not None:
            cluster.cluster.start(peer)
    cluster.every_host_serves("color=blue")


def first_line(result) -> str:
    return next(ln for ln in result.stderr.splitlines() if ln.strip())


@pytest.mark.parametrize(
    "words", [["config", "set", "mysite", "COLOR=red"], ["scale", "mysite", "worker=2"]]
)
def test_a_peer_that_is_down_changes_nothing_anywhere(hosts: Hosts, observe, words):
    row = observe("fault", f"`shipyard {' '.join(words)}` while a peer's receiver is down")
    web3 = hosts.peer("web3")
    before = everyone(hosts)
    hosts.cluster.kill(web3)
    result = hosts.shipyard(*words)
    out = out_of(result)
    assert result.returncode == 1, out
    assert web3.address in first_line(result) and "connection refused" in out, out
    assert "nothing changed anywhere" in out, out
    assert everyone(hosts) == before, out  # web1 and web2 took it, then put their old file back
    for name in ("web1", "web2"):
        assert not list((hosts.dir(name) / "run").glob("staged-*")), name
        assert hosts.serves(name) == "color=blue", name
    assert hosts.history()[-1]["outcome"] == "failed"
    row["outcome"] = (
        "status 1, every host's file as it was (the hosts that took it put it back), nothing "
        f"restarted: `{first_line(result)[:160]}…`"
    )


def test_a_peer_that_cannot_take_the_change_changes_nothing_anywhere(hosts: Hosts, observe):
    row = observe("fault", "`config set` while a peer's own `.env` does not parse")
    with manyhosts.appended(hosts, "web3", "THIS LINE IS NOT KEY=VALUE 'oops\n"):
        before = everyone(hosts)
        result = hosts.shipyard("config", "set", "mysite", "COLOR=red")
        out = out_of(result)
        assert result.returncode == 1 and "web3" in first_line(result), out
        assert "cannot parse" in out and "nothing changed anywhere" in out, out
        assert everyone(hosts) == before
    for name in manyhosts.NAMES:
        assert hosts.serves(name) == "color=blue", name
    row["outcome"] = f"status 1, nothing changed on any host: `{first_line(result)[:160]}…`"


def test_a_host_failing_its_restart_puts_every_host_back(hosts: Hosts, observe):
    row = observe("fault", "`config set` when the last peer's processes cannot come up")
    with manyhosts.broken(hosts, "web3"):
        before = everyone(hosts)
        result = hosts.shipyard("config", "set", "mysite", "COLOR=green")
        out = out_of(result)
        assert result.returncode == 1, out
        assert "✓ [web1] restart" in out and "✗ [web3] restart" in out, out
        assert "web3" in first_line(result) and "nothing changed anywhere" in out, out
        assert everyone(hosts) == before
        for name in manyhosts.NAMES:  # web1 and web2 restarted again onto blue
            assert hosts.serves(name) == "color=blue", (name, out)
            manyhosts.wait_for(lambda n=name: hosts.environs(n, "COLOR") == {"blue"}, name)
    row["outcome"] = (
        "status 1, every host's `.env` back, web1 and web2 restarted onto it again, web3 kept "
        "its processes: every host serves the old value"
    )


def test_restart_stops_at_the_failing_host(hosts: Hosts, observe):
    row = observe("fault", "`restart` when the second host's processes cannot come up")
    pids = hosts.app_pids("web3")
    with manyhosts.broken(hosts, "web2"):
        result = hosts.shipyard("restart", "mysite", "--process", "web")
        out = out_of(result)
        assert result.returncode == 1, out
        assert "✓ [web1] restart" in out and "✗ [web2] restart" in out, out
        assert "[web3] restart" not in out, out
        assert "the roll stopped at web2" in out and "not restarted: web3" in out, out
        for name in manyhosts.NAMES:  # the others keep serving; web2 its previous web
            assert hosts.serves(name) == "color=blue", (name, out)
        assert pids <= hosts.app_pids("web3")  # web3 untouched
    row["outcome"] = f"status 1, web3 not touched, every host serving: `{first_line(result)}`"


def test_restart_with_a_peer_down_restarts_nothing(hosts: Hosts, observe):
    row = observe("fault", "`restart` while a peer's receiver is down")
    pids = {n: hosts.app_pids(n) for n in ("web1", "web2")}
    hosts.cluster.kill(hosts.peer("web3"))
    result = hosts.shipyard("restart", "mysite")
    assert result.returncode == 1 and "connection refused" in first_line(result), out_of(result)
    assert "nothing was changed on any host" in result.stderr
    for name in ("web1", "web2"):
        assert pids[name] <= hosts.app_pids(name), name
    row["outcome"] = f"status 1, nothing restarted: `{first_line(result)[:160]}…`"


BAD_HOST = [
    (["run", "mysite", "--host", "web9", "--", "true"], "no host 'web9' among mysite's hosts"),
    (["run", "mysite", "--host", "../web2", "--", "true"], "is not a host name"),
    (["logs", "mysite", "--host", "web9"], "no host 'web9' among mysite's hosts"),
    (["logs", "mysite", "--host", "/etc/passwd"], "is not a host name"),
    (["run", "mysite", "--host", "web2", "--", "no-such-command"], "command not found"),
]


def test_bad_host_input(hosts: Hosts, observe):
    row = observe(
        "bad input",
        "`run`/`logs --host` with an unknown host, a path for a name, a command the peer lacks",
    )
    before = everyone(hosts)
    for words, message in BAD_HOST:
        result = hosts.shipyard(*words)
        assert result.returncode != 0 and message in result.stderr, (words, out_of(result))
        assert len(result.stderr.strip().splitlines()) <= 2, result.stderr  # a line (and a hint)
    assert everyone(hosts) == before
    line = first_line(hosts.shipyard(*BAD_HOST[0][0])).split("; see")[0]
    row["outcome"] = f"non-zero status, one line each, nothing changed: `{line}`"


def test_run_and_logs_with_a_peer_down(hosts: Hosts, observe):
    row = observe("fault", "`run --host` and `logs` while a peer's receiver is down")
    web3 = hosts.peer("web3")
    hosts.cluster.kill(web3)
    result = hosts.shipyard("run", "mysite", "--host", web3.address, "--", "true")
    assert result.returncode == 1 and "connection refused" in result.stderr, out_of(result)
    assert len(result.stderr.strip().splitlines()) <= 2, result.stderr
    logs = hosts.shipyard("logs", "mysite", "-n", "50")
    assert logs.returncode == 1, out_of(logs)
    assert "its lines are missing" in logs.stderr and web3.address in logs.stderr, logs.stderr
    assert any(ln.startswith("web1 ") for ln in logs.stdout.splitlines()), logs.stdout
    assert any(ln.startswith("web2 ") for ln in logs.stdout.splitlines()), logs.stdout
    row["outcome"] = (
        f"`run`: status 1, `{first_line(result)[:120]}…`; `logs`: the other hosts' lines, "
        "one line on stderr for web3, status 1"
    )


def test_the_primary_killed_during_a_change_is_finished_by_the_next(hosts: Hosts, observe):
    row = observe("fault", "the primary killed during `config set`'s restart roll (SIGKILL)")
    with manyhosts.appended(hosts, "web3", "SLOW_START=4\n"):  # the roll is at web3 a while
        change = subprocess.Popen(
            [
                BIN / "shipyard",
                "--root",
                hosts.cluster.root,
                "config",
                "set",
                "mysite",
                "COLOR=red",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        seen = ""
        while "✓ [web2] restart" not in seen:
            line = change.stdout.readline()
            assert line, seen
            seen += line
        change.kill()
        change.wait()
        staged = {n: list((hosts.dir(n) / "run").glob("staged-*")) for n in manyhosts.NAMES}
        assert all(staged.values()), (staged, seen)  # every host still has its undo record
        result = hosts.shipyard("config", "set", "mysite", "COLOR=green")
        out = out_of(result)
        assert result.returncode == 0, out
        assert "interrupted change" in out and "is undone on every host first" in out, out
        hosts.every_host_serves("color=green", out)
        for name in manyhosts.NAMES:
            assert not list((hosts.dir(name) / "run").glob("staged-*")), name
            assert "COLOR=green" in hosts.env(name).read_text(), name
    assert hosts.shipyard("config", "set", "mysite", "COLOR=blue").returncode == 0
    row["outcome"] = (
        "each host kept its undo record; the next change put the old file back on every host "
        "first (`an interrupted change (…) is undone on every host first`), then applied itself"
    )
