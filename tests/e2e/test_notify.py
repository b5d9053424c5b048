"""Deploy webhooks, end to end: real pushes, a real loopback HTTP server receiving them.

The server records every request; the tests check what a receiver would: the
signature over timestamp + body, the fields, that no secret is in the body,
that a refused connection is retried, and that a webhook nobody answers leaves
the deploy's outcome (and the push's exit status) alone.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import Host, Work, free_port, shipyard
from httpload import fetch
from test_operator import wait_for

pytestmark = pytest.mark.e2e

WEBHOOK_SECRET = "whsec-0123456789abcdef"
APP_SECRET = "s3cr3t-app-value-42"


class Receiver:
    """A loopback webhook endpoint: bound at once, listening when ``start`` is called."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        received = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append({"headers": dict(self.headers), "body": body})
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
        self.server.server_bind()  # bound, not listening: a connection is refused until start()
        self.port = self.server.server_address[1]
        self.thread = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/T000/B000/tokenpart"

    def start(self) -> Receiver:
        self.server.server_activate()
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.thread:
            self.server.shutdown()
        self.server.server_close()

    def bodies(self) -> list[dict]:
        return [json.loads(r["body"]) for r in self.requests]


@pytest.fixture
def receiver():
    made = Receiver()
    yield made
    made.stop()


def add_webhooks(host: Host, *hooks: str, retries: int = 3) -> None:
    config = host.dir / "shipyard.toml"
    config.write_text(
        config.read_text() + f"\n[notify]\ntimeout = 3\nretries = {retries}\n" + "".join(hooks)
    )


def webhook(url: str, events: str = '["started", "live", "failed"]', secret: str = "") -> str:
    line = f'secret = "{secret}"\n' if secret else ""
    return f'\n[[notify.webhook]]\nurl = "{url}"\nevents = {events}\n{line}'


def deliveries(host: Host) -> list[dict]:
    path = host.dir / "deploys" / "notify.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def history(host: Host) -> list[dict]:
    return [
        json.loads(x) for x in (host.dir / "deploys" / "deploys.jsonl").read_text().splitlines()
    ]


def test_webhooks_are_signed_and_carry_the_deploy_without_secrets(
    host: Host, work: Work, receiver: Receiver
):
    receiver.start()
    add_webhooks(host, webhook(receiver.url, secret=WEBHOOK_SECRET))
    (host.dir / "shared").mkdir(exist_ok=True)
    (host.dir / "shared" / ".env").write_text(f"SECRET_KEY={APP_SECRET}\n")
    sha = work.commit("fast", **{"shipyard.toml": ""})
    pushed = work.push("-o", f"message=rotate {APP_SECRET}", "main")
    assert "live:" in pushed.out
    wait_for(lambda: len(receiver.requests) >= 2, what="started and live webhooks")

    for request in receiver.requests:
        headers, body = request["headers"], request["body"]
        assert headers["Content-Type"] == "application/json"
        stamp = headers["X-Shipyard-Timestamp"]
        assert abs(int(stamp) - time.time()) < 300
        expected = hmac.new(WEBHOOK_SECRET.encode(), f"{stamp}.".encode() + body, hashlib.sha256)
        assert headers["X-Shipyard-Signature"] == f"sha256={expected.hexdigest()}"
        forged = hmac.new(b"not-the-secret-at-all", f"{stamp}.".encode() + body, hashlib.sha256)
        assert headers["X-Shipyard-Signature"] != f"sha256={forged.hexdigest()}"
        assert APP_SECRET.encode() not in body and WEBHOOK_SECRET.encode() not in body
    started, live = receiver.bodies()
    assert started["event"] == "started" and started["deploy"] == 1
    assert live["event"] == "live" and live["outcome"] == "live"
    for field in ("app", "deploy", "sha", "tag", "who", "outcome", "duration", "failed_phase"):
        assert field in live, field
    assert live["app"] == "mysite" and live["sha"] == sha and live["duration"] > 0
    assert live["text"].startswith(f"mysite: deploy #1 {sha[:7]} by ") and "is live" in live["text"]
    assert live["message"] == "rotate ********"

    # a failing deploy: the `failed` event names the phase; the deploy's outcome is its own
    work.commit("broken build", **{"shipyard.toml": 'build = ["exit 3"]\n'})
    work.push(check=False)
    assert history(host)[-1]["outcome"] == "failed"
    wait_for(lambda: len(receiver.requests) >= 4, what="the failed webhook")
    failed = next(b for b in receiver.bodies() if b["event"] == "failed")
    assert failed["event"] == "failed" and failed["failed_phase"] == "build"
    assert "failed at build" in failed["text"]
    assert all(e["ok"] for e in deliveries(host) if e.get("ok") is not None)


def test_a_refused_webhook_is_retried_and_an_unreachable_one_changes_no_outcome(
    host: Host, work: Work, receiver: Receiver
):
    nobody = free_port()  # nothing ever listens here
    add_webhooks(
        host,
        webhook(receiver.url, events='["live"]'),
        webhook(f"http://127.0.0.1:{nobody}/hook", events='["live"]'),
        retries=3,
    )
    work.commit("fast", **{"shipyard.toml": ""})
    pushed = work.push()  # exit status 0: the deploy went live whatever the webhooks do
    assert "live:" in pushed.out
    assert history(host)[-1]["outcome"] == "live"
    assert fetch(host.port, "/healthz")[0] == 200

    # the first attempt was refused (the receiver is bound, not listening); now it listens
    wait_for(
        lambda: any(e.get("error") == "connection refused" for e in deliveries(host)),
        what="a refused attempt",
    )
    receiver.start()
    wait_for(lambda: receiver.requests, what="the retried webhook")
    assert receiver.bodies()[0]["event"] == "live"

    def final(port: int) -> dict | None:
        done = [e for e in deliveries(host) if e.get("ok") is not None]
        return next((e for e in done if e["webhook"] == f"http://127.0.0.1:{port}"), None)

    wait_for(lambda: final(nobody), timeout=90, what="the unreachable webhook to give up")
    assert final(receiver.port)["ok"] is True and final(receiver.port)["attempts"] >= 2
    gave_up = final(nobody)
    assert gave_up["ok"] is False and gave_up["attempts"] == 4
    assert gave_up["error"] == "connection refused"
    assert history(host)[-1]["outcome"] == "live"  # unchanged by the webhook
    status = shipyard("--root", host.root, "status", "mysite").stdout
    line = next(ln for ln in status.splitlines() if "webhook" in ln)
    assert f"webhook http://127.0.0.1:{nobody}: #1 live not delivered (connection refused" in line
    assert "tokenpart" not in status  # a webhook's path (its token) is never shown
    assert f":{receiver.port}" not in status  # delivered: nothing to say
    data = json.loads(shipyard("--root", host.root, "status", "mysite", "--json").stdout)
    assert [(n["webhook"], n["attempts"]) for n in data["notify"]] == [
        (f"http://127.0.0.1:{nobody}", 4)
    ]
