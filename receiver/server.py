"""`shipyard receiver --listen ADDR:PORT`: a peer's side of a many-host deploy.

Endpoints (all under /v1/apps/<app>/, all signed with that app's cluster secret):

    GET  info?want=SHA   name, live release, refs (what this repo has), whether SHA is here
    GET  status          info plus the releases on disk and their states
    POST objects?want=SHA  body: a git pack (thin allowed) of the objects this host lacks
    POST prepare         run checkout → link → venv → build for the primary's release id
    POST switch          run switch → restart → verify → finish for a prepared release
    POST revert          go back to the previous release (after another host failed)
    POST abort           discard a prepared release that never went live

Answers stream ``L`` lines (the phases' progress), ``H`` keep-alives and one
signed ``R`` result line. The phases are the primary's own (deploy.PHASES), run
under the app's deploy lock. Refusals are logged to stderr with the reason.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import signal
import socket
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from shipyard import __version__, lock, peers, release
from shipyard.app import App, check_release_id
from shipyard.config import load_host_config, parse_address, read_secret
from shipyard.deploy import Deploy, discard, revert
from shipyard.errors import RootRefused, ShipyardError
from shipyard.guard import check_not_root
from shipyard.options import parse_options
from shipyard.report import Reporter

from . import auth, objects

ROUTE = re.compile(r"^/v1/apps/([^/]+)/(info|status|objects|prepare|switch|revert|abort)$")
METHODS = {"info": "GET", "status": "GET"}
MAX_JSON = 64 * 1024
KEEPALIVE = 2.0
LOCK_WAIT = 120.0
REF = re.compile(r"^refs/(heads|tags)/[A-Za-z0-9._/-]{1,200}$")


def log(message: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    sys.stderr.write(f"{stamp} receiver: {message}\n")
    sys.stderr.flush()


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Stream:
    """The answer: progress lines, keep-alives while work runs, and the signed result."""

    def __init__(self, handler: BaseHTTPRequestHandler, secret: bytes, nonce: str) -> None:
        self.handler, self.secret, self.nonce = handler, secret, nonce
        self.sent = b""
        self.gone = False
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.beat = threading.Thread(target=self._keepalive, daemon=True)
        self.beat.start()

    def _raw(self, data: bytes) -> None:
        with self.lock:
            self.sent += data
            if self.gone:
                return
            try:
                self.handler.wfile.write(data)
                self.handler.wfile.flush()
            except OSError:
                self.gone = True  # the primary went away; the work goes on and is undone later

    def _keepalive(self) -> None:
        while not self.stop.wait(KEEPALIVE):
            self._raw(b"H\n")

    def write(self, text: str) -> int:  # a Reporter writes whole lines here
        for line in text.splitlines():
            self._raw(b"L " + line.encode() + b"\n")
        return len(text)

    def flush(self) -> None:
        pass

    def result(self, value: dict) -> None:
        self.stop.set()
        self.beat.join()
        body = json.dumps(value, sort_keys=True).encode()
        with self.lock:
            mac = auth.result_mac(self.secret, self.nonce, self.sent, body)
        self._raw(b"R " + mac.encode() + b" " + body + b"\n")


class Handler(BaseHTTPRequestHandler):
    server: Receiver
    protocol_version = "HTTP/1.0"
    timeout = 30  # reading a request (headers and body) never waits longer
    server_version = f"shipyard-receiver/{__version__}"

    def setup(self) -> None:
        super().setup()
        # progress goes out as many small writes: without this, Nagle's algorithm and the
        # primary's delayed ACKs hold each one back by up to 40 ms
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass  # we log each request ourselves, with its outcome

    def do_GET(self) -> None:  # noqa: N802
        self.dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self.dispatch("POST")

    def refuse(self, status: int, message: str) -> None:
        log(f"refused {self.client_address[0]} {self.command} {self.path[:200]}: {message}")
        body = json.dumps({"error": message}).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass

    def dispatch(self, method: str) -> None:
        try:
            url = urlsplit(self.path)
            match = ROUTE.match(url.path)
            if not match:
                raise BadRequest(404, "no such endpoint")
            name, action = match.groups()
            if METHODS.get(action, "POST") != method:
                raise BadRequest(405, f"{action} takes {METHODS.get(action, 'POST')}")
            app = App.at(name, self.server.root)
            if not app.exists():
                raise BadRequest(404, f"no app {name!r} on this host")
            host = load_host_config(app.config_file)
            secret = read_secret(host, app.config_file)
            if not secret:
                raise BadRequest(403, f"no cluster secret is configured for {name} on this host")
            self.server.verifier.check_fresh(self.headers)
            spool, digest = self.read_body(action)
            nonce = self.server.verifier.verify(secret, method, self.path, self.headers, digest)
            check_not_root(app, host)  # a receiver run as root runs nothing for this app
        except BadRequest as exc:
            return self.refuse(exc.status, str(exc))
        except auth.Refused as exc:
            return self.refuse(401, str(exc))
        except RootRefused as exc:
            return self.refuse(403, str(exc))
        except ShipyardError as exc:
            return self.refuse(400 if "invalid" in exc.message else 500, str(exc))
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        started = time.monotonic()
        with spool:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.end_headers()
            stream = Stream(self, secret, nonce)
            try:
                result = getattr(self, f"on_{action}")(app, host, query, spool, stream)
            except (ShipyardError, OSError, ValueError, KeyError, TypeError) as exc:
                message = exc.message if isinstance(exc, ShipyardError) else str(exc)
                result = {"ok": False, "error": message}
            stream.result(result)
        outcome = "ok" if result.get("ok", True) else f"failed: {result.get('error')}"
        log(
            f"{self.client_address[0]} {method} {url.path} "
            f"{time.monotonic() - started:.2f}s {outcome}"
        )

    def read_body(self, action: str):
        limit = self.server.max_pack if action == "objects" else MAX_JSON
        raw = self.headers.get("Content-Length")
        if raw is None:
            if self.command == "GET":
                raw = "0"
            else:
                raise BadRequest(411, "Content-Length required")
        try:
            length = int(raw)
        except ValueError:
            raise BadRequest(400, "bad Content-Length") from None
        if length < 0 or length > limit:
            raise BadRequest(413, f"body of {length} bytes is over the limit of {limit}")
        spool = tempfile.SpooledTemporaryFile(max_size=8 << 20)  # noqa: SIM115 (caller closes)
        digest = hashlib.sha256()
        left = length
        while left:
            chunk = self.rfile.read(min(left, 1 << 16))
            if not chunk:
                spool.close()
                raise BadRequest(400, "body shorter than its Content-Length")
            digest.update(chunk)
            spool.write(chunk)
            left -= len(chunk)
        spool.seek(0)
        return spool, digest.hexdigest()

    # --- the endpoints -------------------------------------------------------

    def info(self, app: App, host, want: str | None = None) -> dict:
        live = app.live_release()
        manifest = release.Manifest.load(app.release_dir(live)) if live else None
        info = {
            "ok": True,
            "name": peers.local_name(host),
            "version": __version__,
            "app": app.name,
            "live": live,
            "live_sha": manifest.sha if manifest else None,
            "refs": objects.tips(app.repo),
            "time": time.time(),
        }
        if want:
            info["has_want"] = objects.is_sha(want) and objects.has(app.repo, want)
        return info

    def on_info(self, app, host, query, spool, stream) -> dict:
        return self.info(app, host, query.get("want"))

    def on_status(self, app, host, query, spool, stream) -> dict:
        info = self.info(app, host)
        info["releases"] = [
            {"release": rid, "sha": m.sha if m else None, "state": m.state if m else "unreadable"}
            for rid, m in release.releases(app)
        ]
        return info

    def on_objects(self, app, host, query, spool, stream) -> dict:
        want = query.get("want", "")
        if not objects.is_sha(want):
            return {"ok": False, "error": "want must be a full commit sha"}
        with self.locked(app, "objects"):
            objects.add_pack(app.repo, spool, want)
        return {"ok": True}

    def body(self, spool) -> dict:
        data = json.loads(spool.read() or b"{}")
        if not isinstance(data, dict):
            raise ValueError("the body must be a JSON object")
        return data

    def deploy_for(self, app, host, data: dict, stream: Stream) -> Deploy:
        sha, ref = str(data.get("sha", "")), str(data.get("ref") or f"refs/heads/{host.branch}")
        if not objects.is_sha(sha):
            raise ValueError("sha must be a full commit sha")
        if not REF.match(ref) or ".." in ref:
            raise ValueError(f"invalid ref {ref[:60]!r}")
        number = data.get("number", 0)
        if not isinstance(number, int):
            raise ValueError("number must be an integer")
        options = data.get("options") or {}
        if not isinstance(options, dict) or not all(isinstance(v, str) for v in options.values()):
            raise ValueError("options must map names to strings")
        options = parse_options([f"{k}={v}" if v else k for k, v in options.items()])
        return Deploy(
            app=app,
            host=host,
            number=number,
            sha=sha,
            ref=ref,
            out=Reporter(stream, color=False),
            pusher=str(data.get("pusher") or "unknown")[:100],
            tag=str(data["tag"])[:200] if data.get("tag") else None,
            options=options,
            release_id=check_release_id(str(data.get("release", ""))),
            peer=True,
        )

    @contextlib.contextmanager
    def locked(self, app: App, what: str):
        info = {"deploy": f"receiver {what}", "pusher": "primary", "since": time.time()}
        with lock.exclusive(app.run / "deploy.lock", info, timeout=LOCK_WAIT):
            yield

    def on_prepare(self, app, host, query, spool, stream) -> dict:
        d = self.deploy_for(app, host, self.body(spool), stream)
        key = (app.name, d.release_id)
        with self.locked(app, "prepare"):
            self.server.aborted.discard(key)
            existing = release.Manifest.load(d.release) if d.release.exists() else None
            if existing and existing.sha == d.sha and existing.state == "prepared":
                stream.write(f"  - prepare        -    {d.release_id} is prepared already\n")
                return {"ok": True, "reused": False, "release": d.release_id}
            if d.release.exists() and not (existing and existing.state == "good"):
                release.remove(app, d.release_id)  # a half-made attempt: start again
            if not objects.has(app.repo, d.sha):
                return {"ok": False, "error": f"commit {d.sha[:7]} is not in this host's repo"}
            error = peers.run_phases(d, peers.PREPARE)
            if error:
                return {"ok": False, "error": error}
            if not d.reused:
                d.manifest.state = "prepared"
                d.manifest.save(d.release)
            objects.set_ref(app.repo, objects.PREPARED_REF.decode(), d.sha)
            if key in self.server.aborted:  # the primary gave up while we were building
                discard(d)
                return {"ok": False, "error": "aborted by the primary"}
        return {"ok": True, "reused": d.reused, "release": d.release_id}

    def on_switch(self, app, host, query, spool, stream) -> dict:
        data = self.body(spool)
        d = self.deploy_for(app, host, data, stream)
        with self.locked(app, "switch"):
            manifest = release.Manifest.load(d.release) if d.release.is_dir() else None
            if not manifest or manifest.sha != d.sha or manifest.state not in ("prepared", "good"):
                return {
                    "ok": False,
                    "switched": False,
                    "error": f"{d.release_id} is not prepared on this host",
                }
            d.reused = manifest.state == "good"
            peers.load_release(d)
            previous = app.live_release()
            error = peers.run_phases(d, peers.ON_PEER_SWITCH)
            if error:
                return {"ok": False, "switched": False, "error": error, "previous": previous}
            objects.set_ref(app.repo, f"refs/heads/{host.branch}", d.sha)
        return {
            "ok": True,
            "switched": True,
            "switched_at": d.switched_at,
            "previous": previous,
            "release": d.release_id,
        }

    def on_revert(self, app, host, query, spool, stream) -> dict:
        data = self.body(spool)
        rid = check_release_id(str(data.get("release", "")))
        previous = data.get("previous")
        previous = check_release_id(str(previous)) if previous else None
        with self.locked(app, "revert"):
            if app.live_release() == rid:
                m = release.Manifest.load(app.release_dir(rid))
                d = self.deploy_for(app, host, {"sha": m.sha, "release": rid}, stream)
                peers.load_release(d)
                has_previous = previous and app.release_dir(previous).is_dir()
                d.previous = previous if has_previous else None
                revert(d, [peers.phase("switch"), peers.phase("restart")])
                back = release.Manifest.load(app.release_dir(d.previous)) if d.previous else None
                if back:
                    objects.set_ref(app.repo, f"refs/heads/{host.branch}", back.sha)
                stream.write(f"  ✓ switch back    current → {d.previous or '(nothing)'}\n")
            if data.get("discard") and app.live_release() != rid:
                release.remove(app, rid)
        return {"ok": True, "live": app.live_release()}

    def on_abort(self, app, host, query, spool, stream) -> dict:
        rid = check_release_id(str(self.body(spool).get("release", "")))
        try:
            with lock.exclusive(app.run / "deploy.lock", {"deploy": "abort"}, timeout=2):
                m = release.Manifest.load(app.release_dir(rid))
                if app.live_release() != rid and (m is None or m.state != "good"):
                    release.remove(app, rid)
        except ShipyardError:  # still preparing: it discards itself when done
            self.server.aborted.add((app.name, rid))
        return {"ok": True}


class Receiver(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], root: Path, max_pack: int) -> None:
        self.root = root
        self.max_pack = max_pack
        self.verifier = auth.Verifier()
        self.aborted: set[tuple[str, str]] = set()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, Handler)


def serve(listen: str, root: Path | None, max_pack: int = 512 << 20) -> int:
    from shipyard.app import default_root

    address = parse_address(listen)
    if address is None:
        raise ShipyardError(f"--listen {listen!r} is not ADDR:PORT", "e.g. 10.0.0.2:7070")
    root = (root or default_root()).absolute()
    server = Receiver(address, root, max_pack)

    def stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    log(f"listening on {listen} for apps under {root} (shipyard {__version__})")
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        log("stopping")
    finally:
        server.server_close()
    return 0
