"""[notify] parsing, the webhook body and signature, and delivery's retries (with a fake post)."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import urllib.error

import pytest

from shipyard import notify
from shipyard.app import App
from shipyard.config import Webhook, parse_host_config
from shipyard.errors import ConfigError
from shipyard.report import Masker

HOOK = '[notify]\nretries = 2\n\n[[notify.webhook]]\nurl = "{url}"\nevents = {events}\n'


def host_config(url: str = "https://chat.example/hook", events: str = '["live"]', extra: str = ""):
    return parse_host_config(HOOK.format(url=url, events=events) + extra, "shipyard.toml")


def test_webhooks_parse_with_their_events():
    host = host_config(events='["started", "failed"]', extra='secret = "0123456789abcdef0"\n')
    assert host.notify["retries"] == 2
    assert host.notify["webhook"] == [
        Webhook("https://chat.example/hook", ("started", "failed"), "0123456789abcdef0")
    ]
    assert parse_host_config("", "x").notify == {}


@pytest.mark.parametrize(
    "url, events, extra, message",
    [
        ("ftp://chat.example/hook", '["live"]', "", "is not an http(s) URL"),
        ("chat.example/hook", '["live"]', "", "is not an http(s) URL"),
        ("https://", '["live"]', "", "is not an http(s) URL"),
        ("https://chat.example/", '["deployed"]', "", "unknown webhook event 'deployed'"),
        ("https://chat.example/", "[]", "", "events must be a list of event names"),
        ("https://chat.example/", '["live"]', 'secret = "short"\n', "at least 16 characters"),
        ("https://chat.example/", '["live"]', 'token = "x"\n', "unknown key 'token'"),
    ],
)
def test_a_bad_webhook_is_one_line_with_its_line(url, events, extra, message):
    with pytest.raises(ConfigError) as err:
        host_config(url, events, extra)
    assert message in str(err.value)
    assert str(err.value).startswith("shipyard.toml:5:")  # the url's line
    assert "\n" not in str(err.value)


def test_events_of_outcomes():
    assert notify.event_of("push", "live") == "live"
    assert notify.event_of("rollback", "live") == "rolled-back"
    assert notify.event_of("deploy", "failed") == "failed"
    assert notify.event_of("push", "superseded") is None


def test_body_is_slack_compatible_and_masked():
    fields = {"app": "mysite", "event": "failed", "deploy": 7, "sha": "a" * 40, "tag": "v1",
              "who": "alice", "duration": 3.25, "failed_phase": "build",
              "error": "build step failed: password hunter2hunter2"}  # fmt: skip
    body = json.loads(notify.body_of(fields, Masker({"DB_PASSWORD": "hunter2hunter2"})))
    assert body["text"] == (
        "mysite: deploy #7 aaaaaaa (v1) by alice failed at build in 3.2s: "
        "build step failed: password ********"
    )
    assert body["error"].endswith("********") and body["failed_phase"] == "build"


def test_signature_is_hmac_sha256_over_timestamp_and_body():
    body = b'{"text": "x"}'
    expected = hmac.new(b"k" * 16, b"1700000000." + body, hashlib.sha256).hexdigest()
    assert notify.sign("k" * 16, 1700000000, body) == f"sha256={expected}"


def test_where_drops_the_token_in_the_path():
    assert notify.where("https://hooks.slack.com/services/T0/B0/XyZ") == "https://hooks.slack.com"
    assert notify.where("http://127.0.0.1:9000/h?k=1") == "http://127.0.0.1:9000"


def job(*urls: str, retries: int = 2) -> dict:
    deliveries = [{"url": u, "secret": None} for u in urls]
    return {"event": "live", "deploy": 3, "retries": retries, "timeout": 1,
            "deliveries": deliveries, "body": "{}"}  # fmt: skip


def test_delivery_retries_with_backoff_then_records(tmp_path, monkeypatch):
    app = App(tmp_path, "mysite")
    app.deploys.mkdir(parents=True)
    calls, slept = [], []

    def post(url, body, secret, timeout):
        calls.append(url)
        if url.endswith("down") or len(calls) < 2:
            raise urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))

    monkeypatch.setattr(notify, "post", post)
    results = notify.deliver(app, job("http://a/up", "http://b/down"), sleep=slept.append)
    assert [r["ok"] for r in results] == [True, False]
    assert results[0]["attempts"] == 2 and results[1]["attempts"] == 3
    assert slept == [1.0, 1.0, 2.0]  # a/up once; b/down twice (doubling)
    assert results[1]["error"] == "connection refused"
    assert [p["webhook"] for p in notify.problems(app)] == ["http://b"]


def test_a_client_error_is_not_retried(tmp_path, monkeypatch):
    app = App(tmp_path, "mysite")
    app.deploys.mkdir(parents=True)

    def post(url, body, secret, timeout):
        raise urllib.error.HTTPError(url, 404, "Not Found", {}, None)

    monkeypatch.setattr(notify, "post", post)
    [result] = notify.deliver(app, job("http://a/gone"), sleep=lambda s: None)
    assert result["attempts"] == 1 and result["error"] == "HTTP 404"


def test_send_without_a_webhook_for_the_event_starts_nothing(tmp_path):
    host = host_config(events='["failed"]')
    assert notify.send(App(tmp_path, "mysite"), host, "live", {}) is None


def test_a_webhook_secret_in_a_file_others_can_read_is_refused(tmp_path):
    from shipyard.config import load_host_config

    path = tmp_path / "shipyard.toml"
    path.write_text(
        HOOK.format(url="https://x.example/", events='["live"]') + 'secret = "' + "k" * 20 + '"\n'
    )
    path.chmod(0o640)
    with pytest.raises(ConfigError) as err:
        load_host_config(path)
    assert "holds a webhook secret but others can read it (mode 0640)" in str(err.value)
    assert f"chmod 600 {path}" in str(err.value)
    path.chmod(0o600)
    assert load_host_config(path).notify["webhook"][0].secret == "k" * 20


def test_a_config_change_is_sent_with_its_keys_only(tmp_path, monkeypatch):
    """`shipyard config set` / `scale` (change.Change.record) fire config-changed, no values."""
    from shipyard.change import Change
    from shipyard.report import Reporter

    jobs = []
    monkeypatch.setattr(notify, "spawn", jobs.append)
    app = App.at("mysite", tmp_path)
    (app.dir / "deploys").mkdir(parents=True)
    (app.dir / "shared").mkdir()
    (app.dir / "shared" / ".env").write_text("API_TOKEN=s3cr3t-value\n")
    host = host_config(events='["config-changed"]')
    change = Change(app, host, "config", Reporter(io.StringIO()), "alice", number=3)
    change.record("set API_TOKEN", keys=["API_TOKEN"], change="set")
    (job,) = jobs
    body = json.loads(job["body"])
    assert body["event"] == "config-changed" and body["who"] == "alice"
    assert "API_TOKEN" in body["text"] and "s3cr3t-value" not in job["body"]
