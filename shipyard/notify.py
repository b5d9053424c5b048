"""Deploy notifications: webhooks named in the host's ``[notify]``, told of a deploy's events.

A deploy never waits for a webhook: ``send`` hands the bodies to a detached
process (its own session, no descriptor of the deploy's) and returns. That
process posts each one with a short timeout and a few retries with backoff,
then records how it went in ``deploys/notify.jsonl``, which `shipyard status`
reads. It ends when its deliveries do, so it outlives the deploy by seconds.

The body is Slack-compatible (``text``) with the structured fields beside it;
with a ``secret``, ``X-Shipyard-Signature: sha256=HMAC(secret, "<timestamp>." + body)``
and ``X-Shipyard-Timestamp`` let the receiver check it and refuse replays.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import ipaddress
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .app import App
from .config import HostConfig
from .release import shared_env
from .report import Masker

USER_AGENT = "shipyard-notify"
BACKOFF = 1.0  # seconds before the first retry; doubled after each


def log_file(app: App) -> Path:
    return app.deploys / "notify.jsonl"


def event_of(kind: str, outcome: str) -> str | None:
    """The notification event a deploy's outcome is (None: nobody is told, e.g. superseded)."""
    if outcome == "live":
        return "rolled-back" if kind == "rollback" else "live"
    if outcome in ("failed", "interrupted"):
        return "failed"
    return None


def where(url: str) -> str:
    """A webhook's address without its path: chat webhook URLs carry their token in the path."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


def text_of(fields: dict[str, Any]) -> str:
    """The one line a chat shows."""
    label = (fields.get("sha") or "")[:7] + (f" ({fields['tag']})" if fields.get("tag") else "")
    what = "rollback" if fields.get("kind") == "rollback" else "deploy"
    head = f"{fields['app']}: {what} #{fields.get('deploy')} {label} by {fields.get('who')}"
    event = fields["event"]
    if event == "started":
        return f"{head} started"
    if event == "config-changed":
        return f"{fields['app']}: config changed by {fields.get('who')}: {fields.get('detail', '')}"
    took = f" in {fields['duration']:.1f}s" if fields.get("duration") is not None else ""
    if event == "failed":
        at = f" at {fields['failed_phase']}" if fields.get("failed_phase") else ""
        error = f": {fields['error']}" if fields.get("error") else ""
        return f"{head} failed{at}{took}{error}"
    return f"{head} {'rolled back' if event == 'rolled-back' else 'is live'}{took}"


def body_of(fields: dict[str, Any], mask: Masker) -> bytes:
    """The JSON body: ``text`` and the fields, every string masked like the deploy's output."""
    masked = {k: mask(v) if isinstance(v, str) else v for k, v in fields.items()}
    masked["text"] = mask(text_of(fields))
    return json.dumps(masked, sort_keys=True).encode()


def sign(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={digest.hexdigest()}"


def send(
    app: App, host: HostConfig, event: str, fields: dict[str, Any], mask: Masker | None = None
) -> subprocess.Popen | None:
    """Hand ``event`` to the webhooks that want it, in the background; never raises."""
    try:
        hooks = [w for w in host.notify.get("webhook", []) if event in w.events]
        if not hooks:
            return None
        secrets = [w.secret for w in hooks if w.secret]
        mask = mask or Masker()
        masked = Masker({f"SECRET{i}": s for i, s in enumerate(secrets)})
        fields = {"app": app.name, "host": host.name or socket.gethostname(), **fields}
        fields["event"] = event
        body = body_of(fields, lambda text: masked(mask(text)))
        job = {
            "root": str(app.root),
            "app": app.name,
            "deploy": fields.get("deploy"),
            "event": event,
            "timeout": host.notify.get("timeout", 5),
            "retries": host.notify.get("retries", 3),
            "deliveries": [{"url": w.url, "secret": w.secret} for w in hooks],
            "body": body.decode(),
        }
        return spawn(job)
    except Exception as exc:  # noqa: BLE001 - a notification never fails a deploy
        with contextlib.suppress(Exception):
            record(app, {"event": event, "ok": False, "error": f"not sent: {exc}"})
        return None


def deploy_event(d: Any, outcome: str, seconds: float, extra: dict) -> None:
    """Tell the webhooks of a deploy's start (``outcome`` "started") or of its outcome."""
    event = "started" if outcome == "started" else event_of(d.kind, outcome)
    if event is None:
        return
    fields = {
        "deploy": d.number,
        "kind": d.kind,
        "sha": d.sha,
        "tag": d.tag,
        "who": d.pusher,
        "outcome": outcome,
        "duration": None if event == "started" else round(seconds, 3),
        "failed_phase": extra.get("failed_phase"),
        "error": extra.get("error"),
        "release": d.release_id or None,
        "previous": d.previous,
        "message": d.options.get("message"),
    }
    send(d.app, d.host, event, fields, d.out.mask)


def config_changed(app: App, host: HostConfig, who: str, detail: str) -> None:
    """For the commands that change an app's configuration on the host (e.g. its .env)."""
    try:
        mask = Masker(shared_env(app))
    except Exception:  # noqa: BLE001 - an .env that does not parse: mask what we can
        mask = Masker()
    send(app, host, "config-changed", {"who": who, "detail": detail}, mask)


def spawn(job: dict) -> subprocess.Popen:
    """The delivering process: detached, its input the job (secrets never on its command line)."""
    child = subprocess.Popen(
        [sys.executable, "-m", "shipyard.notify"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # Ctrl-C, a hung-up pusher or a recovery's kill spare it
        close_fds=True,  # in particular not the deploy's log, whose hold says "deploy running"
        cwd="/",
    )
    with contextlib.suppress(OSError):
        child.stdin.write(json.dumps(job).encode())
    with contextlib.suppress(OSError):
        child.stdin.close()
    return child


def opener(url: str) -> urllib.request.OpenerDirector:
    """No proxy for a loopback or private address (the host's own network), else the usual."""
    import urllib.request  # here: http.client and email are a deploy's slowest import

    hostname = urlsplit(url).hostname or ""
    try:
        direct = hostname == "localhost" or not ipaddress.ip_address(hostname).is_global
    except ValueError:
        direct = False
    handlers = [urllib.request.ProxyHandler({})] if direct else []
    return urllib.request.build_opener(*handlers)


def post(url: str, body: bytes, secret: str | None, timeout: float) -> None:
    """One attempt; raises OSError (URLError, HTTPError, timeout) when it did not get a 2xx."""
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    if secret:
        now = int(time.time())
        headers["X-Shipyard-Timestamp"] = str(now)
        headers["X-Shipyard-Signature"] = sign(secret, now, body)
    import urllib.request

    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    with opener(url).open(request, timeout=timeout) as response:
        response.read(65536)


def reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    if isinstance(exc, urllib.error.URLError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else exc
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    return str(getattr(exc, "strerror", None) or exc) or type(exc).__name__


def retryable(exc: BaseException) -> bool:
    """A 4xx other than 408/429 will not get better by asking again."""
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code >= 500 or exc.code in (408, 429)
    return True


def deliver(app: App, job: dict, sleep=time.sleep) -> list[dict]:
    """Post the job's body to each webhook, retrying with backoff; record each result."""
    body = job["body"].encode()
    results = []
    for target in job["deliveries"]:
        errors: list[str] = []
        attempts = 1 + max(0, int(job.get("retries", 3)))
        for attempt in range(attempts):
            try:
                post(target["url"], body, target.get("secret"), float(job.get("timeout", 5)))
                break
            except Exception as exc:  # noqa: BLE001 - whatever it is, it is one failed attempt
                errors.append(reason(exc))
                if attempt + 1 == attempts or not retryable(exc):
                    break
                record(
                    app,
                    {**base(job, target), "ok": None, "attempt": attempt + 1, "error": errors[-1]},
                )
                sleep(BACKOFF * 2**attempt)
        ok = len(errors) < attempt + 1
        entry = {**base(job, target), "ok": ok, "attempts": attempt + 1}
        if errors:
            entry["errors"] = errors
            entry["error"] = errors[-1]
        record(app, entry)
        results.append(entry)
    return results


def base(job: dict, target: dict) -> dict:
    return {"deploy": job.get("deploy"), "event": job["event"], "webhook": where(target["url"])}


def record(app: App, entry: dict) -> None:
    """Append one line to ``deploys/notify.jsonl`` (one write, like the deploy history)."""
    line = json.dumps({"time": time.time(), **entry}, sort_keys=True) + "\n"
    fd = os.open(log_file(app), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def entries(app: App) -> list[dict]:
    try:
        lines = log_file(app).read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out


def problems(app: App) -> list[dict]:
    """The last finished delivery per webhook, where it failed (what `shipyard status` shows)."""
    last: dict[str, dict] = {}
    for entry in entries(app):
        if entry.get("ok") is not None:
            last[entry.get("webhook") or "?"] = entry
    return [e for e in last.values() if not e.get("ok")]


def main() -> int:
    """``python -m shipyard.notify``: the detached delivering process (job on stdin)."""
    job = json.loads(sys.stdin.read())
    app = App.at(job["app"], job["root"])
    # one delivering process per app at a time: `started` goes out before `live`
    with open(app.run / "notify.lock", "a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        deliver(app, job)
    return 0


if __name__ == "__main__":
    sys.exit(main())
