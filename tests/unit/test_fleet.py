"""The operating commands on many hosts: a staged file and its undo, picking a host, the
all-or-nothing stage and the host-by-host restart (peers faked; e2e: test_operate_hosts)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from shipyard import hosts, repo, settings
from shipyard.app import App
from shipyard.config import HostConfig
from shipyard.errors import ShipyardError
from shipyard.receiver.client import PeerError
from shipyard.report import Reporter


@pytest.fixture
def app(tmp_path: Path) -> App:
    app = App.at("mysite", tmp_path / "apps")
    repo.create(app, allow_root=True)
    settings.env_file(app).write_text("A=1\n")
    return app


def test_a_staged_file_is_kept_or_put_back_from_its_record(app: App):
    env = settings.env_file(app)
    hosts.stage(app, "config-3-0123abcd", env, "A=2\n")
    assert env.read_text() == "A=2\n" and env.stat().st_mode & 0o777 == 0o600
    record = app.run / "staged-config-3-0123abcd.json"
    assert json.loads(record.read_text())["old"] == "A=1\n"
    assert record.stat().st_mode & 0o777 == 0o600  # the old .env holds secrets
    assert hosts.settle(app, "config-3-0123abcd", keep=False)
    assert env.read_text() == "A=1\n" and not record.exists()
    assert not hosts.settle(app, "config-3-0123abcd", keep=False)  # nothing staged: no-op

    counts = app.dir / "scale.json"
    hosts.stage(app, "scale-4-0123abcd", counts, "{}\n", 0o644)
    hosts.settle(app, "scale-4-0123abcd", keep=False)
    assert not counts.exists()  # there was none before
    hosts.stage(app, "scale-5-0123abcd", counts, '{"web": 2}\n', 0o644)
    hosts.settle(app, "scale-5-0123abcd", keep=True)
    assert counts.read_text() == '{"web": 2}\n' and not list(app.run.glob("staged-*"))


@pytest.mark.parametrize("token", ["../../etc/passwd", "config-1-xyz", "deploy-1-0123abcd", ""])
def test_a_token_is_never_a_path(app: App, token: str):
    with pytest.raises(ShipyardError, match="invalid change token"):
        hosts.settle(app, token, keep=True)


class FakePeer:
    """A receiver that answers each action as told (an exception: raised)."""

    def __init__(self, name: str, **answers) -> None:
        self.name, self.answers, self.calls = name, answers, []

    def call(self, method, action, payload=None, **kw) -> dict:
        self.calls.append((action, payload))
        answer = self.answers.get(action, {"ok": True})
        if isinstance(answer, Exception):
            raise answer
        return {"name": self.name, **answer}


def fleet_of(app: App, *peers: FakePeer) -> hosts.Fleet:
    members = [hosts.Member("web1", hosts.THIS_HOST)]
    members += [
        hosts.Member(f"10.0.0.{i}:7070", f"10.0.0.{i}:7070", p) for i, p in enumerate(peers, 2)
    ]
    return hosts.Fleet(app, HostConfig(name="web1", allow_root=True), members)


def reporter() -> tuple[Reporter, io.StringIO]:
    buf = io.StringIO()
    return Reporter(buf), buf


def test_one_host_that_cannot_take_it_puts_every_other_back(app: App):
    web2 = FakePeer("web2")
    web3 = FakePeer("web3", stage=PeerError("10.0.0.3:7070 unreachable: connection refused"))
    fleet = fleet_of(app, web2, web3)
    out, buf = reporter()
    env = settings.env_file(app)
    with pytest.raises(hosts.HostFailed, match="connection refused") as failed:
        hosts.apply(fleet, out, "config-7-0123abcd", {}, env, "A=2\n", 0o600, True)
    assert "nothing changed anywhere" in failed.value.hint
    assert env.read_text() == "A=1\n"  # this host put its old file back
    assert failed.value.message.startswith("web3 (10.0.0.3:7070): unreachable: connection")
    assert [a for a, p in web2.calls if a != "info"] == ["stage", "settle"]  # and so did web2
    assert web2.calls[1][1] == {"token": "config-7-0123abcd", "keep": False}
    assert "restart" not in [a for a, _ in web2.calls + web3.calls]  # nobody restarted


def test_a_failing_restart_stops_the_roll_and_everyone_goes_back(app: App, monkeypatch):
    restarted = []
    monkeypatch.setattr(
        "shipyard.hosts.handover", lambda *a, **kw: restarted.append(a[0].name) or "web ×1"
    )
    web2 = FakePeer("web2", restart={"ok": False, "error": "web did not come up"})
    web3 = FakePeer("web3")
    fleet = fleet_of(app, web2, web3)
    out, buf = reporter()
    env = settings.env_file(app)
    with pytest.raises(hosts.HostFailed, match="web did not come up") as failed:
        hosts.apply(fleet, out, "config-8-0123abcd", {}, env, "A=2\n", 0o600, True)
    hint = failed.value.hint
    assert "the roll stopped at web2" in hint and "not restarted: web3" in hint, hint
    assert "web1 restarted onto it" in hint and "nothing changed anywhere" in hint, hint
    assert env.read_text() == "A=1\n"
    assert restarted == ["mysite", "mysite"]  # this host: onto the new file, then the old one
    assert [a for a, _ in web3.calls] == ["stage", "settle"]  # staged, never restarted
    assert buf.getvalue().index("[web1] restart") < buf.getvalue().index("[web2] restart")


def test_a_change_every_host_takes_is_settled_everywhere(app: App, monkeypatch):
    monkeypatch.setattr("shipyard.hosts.handover", lambda *a, **kw: "web ×1")
    web2, web3 = FakePeer("web2"), FakePeer("web3")
    out, _ = reporter()
    env = settings.env_file(app)
    names = hosts.apply(
        fleet_of(app, web2, web3), out, "config-9-0123abcd", {}, env, "A=2\n", 0o600, True
    )
    assert names == ["web1", "web2", "web3"] and env.read_text() == "A=2\n"
    for peer in (web2, web3):
        assert [a for a, _ in peer.calls] == ["stage", "restart", "settle"]
        assert peer.calls[2][1]["keep"] is True
    assert not list(app.run.glob("staged-*"))


def test_picking_a_host(app: App):
    fleet = fleet_of(app, FakePeer("web2"), FakePeer("web3", info=PeerError("down")))
    assert fleet.pick(None) == fleet.members
    assert fleet.pick("web1") == fleet.members[:1]
    assert fleet.pick("10.0.0.3:7070") == fleet.members[2:]  # by address: no call
    assert fleet.pick("web2") == fleet.members[1:2]
    with pytest.raises(ShipyardError, match=r"no host 'web9' .* 10.0.0.3:7070 did not answer"):
        fleet.pick("web9")
    for bad in ("../web2", "/etc/passwd", "web2 x", "-x"):
        with pytest.raises(ShipyardError, match="is not a host name"):
            fleet.pick(bad)


def test_staged_twice_under_one_token_the_first_record_stands(app: App):
    env = settings.env_file(app)
    hosts.stage(app, "config-3-0123abcd", env, "A=2\n")
    hosts.stage(app, "config-3-0123abcd", env, "A=2\n")  # a retried request
    hosts.settle(app, "config-3-0123abcd", keep=False)
    assert env.read_text() == "A=1\n"


def test_an_interrupted_change_is_undone_or_kept_everywhere_as_its_record_says(app: App):
    env = settings.env_file(app)
    web2 = FakePeer("web2")
    out, buf = reporter()
    hosts.stage(app, "config-3-0123abcd", env, "A=2\n")  # and then the primary died
    assert hosts.finish_interrupted(fleet_of(app, web2), out)
    assert env.read_text() == "A=1\n" and not list(app.run.glob("staged-*"))
    assert web2.calls == [("settle", {"token": "config-3-0123abcd", "keep": False})]
    assert "interrupted change (config-3-0123abcd) is undone on every host" in buf.getvalue()

    hosts.stage(app, "config-4-0123abcd", env, "A=3\n")
    hosts.decide(app, "config-4-0123abcd")  # every host had taken it and restarted: kept
    web2.calls.clear()
    assert hosts.finish_interrupted(fleet_of(app, web2), out)
    assert env.read_text() == "A=3\n" and not list(app.run.glob("staged-*"))
    assert web2.calls == [("settle", {"token": "config-4-0123abcd", "keep": True})]
    assert not hosts.finish_interrupted(fleet_of(app, web2), out)  # nothing left to finish


def test_a_host_is_named_once_in_what_is_said_about_it():
    peer = hosts.Member("10.0.0.3:7070", "10.0.0.3:7070", FakePeer("web3"))
    refused = "10.0.0.3:7070 unreachable: connection refused"
    assert peer.said(refused) == refused
    peer.label = "web3"
    assert peer.said(refused) == "web3 (10.0.0.3:7070): unreachable: connection refused"
    assert peer.said("cannot parse") == "web3 (10.0.0.3:7070): cannot parse"
    assert hosts.Member("web1", hosts.THIS_HOST).said("x") == "web1 (this host): x"
