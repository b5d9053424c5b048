"""`shipyard receiver --listen ADDR:PORT`: a peer's side of a many-host deploy.

Endpoints (all under /v1/apps/<app>/, all signed with that app's cluster secret):

    GET  info?want=SHA   name, live release, refs (what this repo has), whether SHA is here
    GET  status          info plus the releases on disk and their states
    POST objects?want=SHA  body: a git pack (thin allowed) of the objects this host lacks
    POST prepare         store the pack after its JSON (if any), then run checkout → link →
                         venv → build for the primary's release id ("lacks": send objects)
    POST switch          run switch → restart → verify → finish for a prepared release
    POST revert          go back to the previous release (after another host failed)
    POST abort           discard a prepared release that never went live
    POST stage           config/scale: write the new .env or counts, its undo written first
    POST settle          keep what stage wrote, or put the old file back
    POST restart         hand the processes over again (health check included)
    POST run             a one-off command in the live release, its output streamed
    GET  logs?lines=N    the processes' last lines (follow=1: and then new ones)

Answers stream ``L`` lines (the phases' progress), ``H`` keep-alives and one
signed ``R`` result line. The phases are the primary's own (deploy.PEER_PREPARE,
PEER_SWITCH), run under the app's deploy lock. Refusals are logged to stderr with the reason.

Before a request is authenticated it costs little: at most ``max_connections``
connections are served at once (the next ones get a 503 and are closed), the
request line and headers may take ``MAX_HEAD`` bytes and ``request_timeout``
seconds in all (a slow client is cut off), and the whole signature, which covers
the body's length and digest, is checked before a byte of the body is read.
With ``--tls-cert``/``--tls-key`` every connection is TLS (receiver/tls.py).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import re
import signal
import socket
import ssl
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from shipyard import (
    __version__,
    deploy,
    hosts,
    lock,
    logs,
    oneoff,
    peers,
    process_views,
    release,
    repo,
    scale,
    settings,
)
from shipyard.app import App, check_release_id, default_root
from shipyard.config import HostConfig, load_host_config, parse_address, read_secret, secret_path
from shipyard.context import Deploy
from shipyard.engine import attempt, revert
from shipyard.errors import RootRefused, ShipyardError
from shipyard.guard import check_not_root, config_stamp
from shipyard.options import parse_options
from shipyard.release_phases import discard, load_release, load_undo, prune
from shipyard.report import Reporter

from . import auth, objects, tls
from .options import MAX_CONNECTIONS, REQUEST_TIMEOUT

ACTIONS = "info|status|objects|prepare|switch|revert|abort|stage|settle|restart|run|logs"
ROUTE = re.compile(rf"^/v1/apps/([^/]+)/({ACTIONS})$")
METHODS = {"info": "GET", "status": "GET", "logs": "GET"}
MAX_JSON = 64 * 1024
KEEPALIVE = 2.0
LOCK_WAIT = 120.0
REF = re.compile(r"^refs/(heads|tags)/[A-Za-z0-9._/-]{1,200}$")
MAX_HEAD = 64 * 1024  # bytes of request line and headers read before authentication
LINGER = 64 * 1024  # of a refused request's body, at most this much is read (and dropped)
BUSY = b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n\r\n"
WILDCARDS = ("0.0.0.0", "::")
KINDS = ("push", "deploy", "rollback")
ABORTED_FOR = 60.0  # s: a prepare that arrives after its abort is refused this long


def stat_key(path: Path | None) -> str | None:
    """What changes when a file is written, replaced, chmod'ed or chown'ed (its ctime)."""
    return None if path is None else config_stamp(path)


def log(message: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    sys.stderr.write(f"{stamp} receiver: {message}\n")
    sys.stderr.flush()


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class HeadTooLarge(OSError):
    """More than MAX_HEAD bytes of request line and headers: the connection is dropped."""


class Budget:
    """The request's reader, with a cap on the bytes read before authentication."""

    def __init__(self, raw, limit: int) -> None:
        self.raw, self.left = raw, limit

    def _size(self, size: int | None) -> int:
        if self.left is None:
            return -1 if size is None else size
        if self.left <= 0:
            raise HeadTooLarge(f"over {MAX_HEAD} bytes before authentication")
        return self.left if size is None or size < 0 else min(size, self.left)

    def _count(self, data: bytes) -> bytes:
        if self.left is not None:
            self.left -= len(data)
        return data

    def readline(self, size: int | None = -1) -> bytes:
        return self._count(self.raw.readline(self._size(size)))

    def read(self, size: int | None = -1) -> bytes:
        return self._count(self.raw.read(self._size(size)))

    def lift(self) -> None:
        self.left = None

    def __getattr__(self, name: str):
        return getattr(self.raw, name)


class Stream:
    """The answer: progress lines, keep-alives while work runs, and the signed result."""

    def __init__(self, handler: BaseHTTPRequestHandler, secret: bytes, nonce: str) -> None:
        self.handler, self.secret, self.nonce = handler, secret, nonce
        self.sent = b""
        self.gone = False
        self.lock = threading.Lock()
        self.started = time.monotonic()
        self.stop = threading.Event()  # set before the result is signed: no keep-alive after it
        BEATS.add(self)

    def keep_alive(self) -> None:
        """Send ``H`` every ``KEEPALIVE`` s from a thread of its own (a write may block on a
        primary that reads slowly: no other answer waits for it) until the result."""
        threading.Thread(target=self._keepalive, daemon=True).start()

    def _keepalive(self) -> None:
        self._raw(b"H\n", beat=True)
        while not self.stop.wait(KEEPALIVE):
            self._raw(b"H\n", beat=True)

    def _raw(self, data: bytes, beat: bool = False) -> None:
        with self.lock:
            if beat and self.stop.is_set():
                return
            self.sent += data
            if self.gone:
                return
            try:
                self.handler.wfile.write(data)
                self.handler.wfile.flush()
            except OSError:
                self.gone = True  # the primary went away; the work goes on and is undone later

    def named(self, name: str) -> None:
        """``N <name>``: how the primary labels the lines that follow."""
        self._raw(b"N " + " ".join(name.split())[:100].encode() + b"\n")

    def write(self, text: str) -> int:  # a Reporter writes whole lines here
        for line in text.splitlines():
            self._raw(b"L " + line.encode() + b"\n")
        return len(text)

    def flush(self) -> None:
        pass

    def result(self, value: dict) -> None:
        BEATS.remove(self)
        self.stop.set()
        body = json.dumps(value, sort_keys=True).encode()
        with self.lock:
            mac = auth.result_mac(self.secret, self.nonce, self.sent, body)
        self._raw(b"R " + mac.encode() + b" " + body + b"\n")


class Beats:
    """The answers under way, watched by one thread (started with the first answer): one
    still running after ``KEEPALIVE`` s gets its keep-alive thread; the many short ones
    (a deploy's prepare and switch take milliseconds) cost no thread of their own."""

    def __init__(self) -> None:
        self.streams: set[Stream] = set()
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def add(self, stream: Stream) -> None:
        with self.lock:
            self.streams.add(stream)
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, daemon=True, name="keepalive")
                self.thread.start()

    def remove(self, stream: Stream) -> None:
        with self.lock:
            self.streams.discard(stream)

    def _run(self) -> None:
        while True:
            time.sleep(KEEPALIVE / 4)
            now = time.monotonic()
            with self.lock:
                late = [s for s in self.streams if s.started < now - KEEPALIVE * 3 / 4]
                self.streams.difference_update(late)
            for stream in late:
                stream.keep_alive()


BEATS = Beats()


class Tidier:
    """What a receiver prunes once it has been idle for ``IDLE`` seconds: the releases and
    venvs beyond ``keep`` after a switch (``release_phases.finish_peer``), off the switch's
    path; a burst of deploys prunes once, after the last. Under the app's deploy lock (a
    deploy holding it: tried again at the next idle); a release prepared since is kept.
    Then ``git gc --auto`` on the app's repo, as the primary runs after each deploy: every
    deploy's objects arrive as a pack of their own, and a lookup of an object not there
    reads every pack's index."""

    IDLE = 1.0

    def __init__(self, closing: threading.Event) -> None:
        self.pending: dict[Path, tuple[App, int, set[str]]] = {}
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.closing = closing
        self.active = 0  # requests being served
        self.last = time.monotonic()  # when the last one started or ended
        threading.Thread(target=self._run, daemon=True, name="receiver-tidier").start()

    def later(self, app: App, keep: int, protect: set[str]) -> None:
        with self.lock:
            self.pending[app.dir] = (app, keep, set(protect))
        self.wake.set()

    def protect(self, app: App, release_id: str) -> None:
        """A release prepared (or to roll back to) since the prune was asked: kept."""
        with self.lock:
            if app.dir in self.pending:
                self.pending[app.dir][2].add(release_id)

    def busy(self, delta: int) -> None:
        with self.lock:
            self.active += delta
            self.last = time.monotonic()

    def _idle_for(self) -> float:
        with self.lock:
            return 0.0 if self.active else time.monotonic() - self.last

    def _run(self) -> None:
        while not self.closing.is_set():
            self.wake.wait(0.5)
            if not self.pending:
                self.wake.clear()
                continue
            idle = self._idle_for()
            if idle < self.IDLE:
                self.closing.wait(self.IDLE - idle)
                continue
            with self.lock:
                todo, self.pending = self.pending, {}
                self.wake.clear()
            for key, (app, keep, protect) in todo.items():
                if not self.prune(app, keep, protect):
                    with self.lock:
                        self.pending.setdefault(key, (app, keep, protect))
                    continue
                problem = app.repo.is_dir() and repo.collect_garbage(app)  # a pack each deploy
                if problem:
                    log(f"git gc --auto in {app.repo} failed: {problem}")

    def prune(self, app: App, keep: int, protect: set[str]) -> bool:
        """Prune now; False when the deploy lock is taken (or a dead holder's note waits)."""
        info = {"deploy": "receiver prune", "pusher": "primary", "since": time.time()}
        try:
            with lock.exclusive(app.deploy_lock, info, timeout=0) as held:
                if held.stale:
                    return False
                if self._idle_for() < self.IDLE:  # a request came meanwhile
                    return False
                removed = prune(app, keep, protect)
        except ShipyardError:
            return False
        except OSError as exc:
            log(f"prune {app.name}: {exc}")
            return True
        if removed:
            log(f"pruned {app.name}: {', '.join(removed)}")
        return True


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
        self.rfile = Budget(self.rfile, MAX_HEAD)
        self.unread = 0  # bytes of the body declared and not read

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
            self.wfile.flush()
        except OSError:
            return
        self.linger()

    def linger(self) -> None:
        """Read and drop a little of a refused request's body (never more than LINGER), so
        that the answer is not lost to a reset; the connection is closed after it."""
        left = min(self.unread, LINGER)
        with contextlib.suppress(OSError, ValueError):
            socket.socket.shutdown(self.connection, socket.SHUT_WR)
            self.connection.settimeout(1)
            self.rfile.lift()
            while left > 0:
                chunk = self.rfile.read1(min(left, 1 << 14))
                if not chunk:
                    break
                left -= len(chunk)

    def dispatch(self, method: str) -> None:
        self.server.tidier.busy(+1)
        try:
            self.serve(method)
        finally:
            self.server.tidier.busy(-1)

    def serve(self, method: str) -> None:
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
            length = self.declared(action)
            self.server.verifier.check_fresh(self.headers)
            host, secret = self.server.config_of(app)
            if not secret:
                raise BadRequest(403, f"no cluster secret is configured for {name} on this host")
            me = self.server.me
            nonce = self.server.verifier.verify(secret, method, self.path, self.headers, me=me)
            check_not_root(app, host)  # a receiver run as root runs nothing for this app
            self.server.trusted(self.connection)
            self.rfile.lift()
            if length and self.headers.get("Expect", "").lower() == "100-continue":
                self.wfile.write(auth.CONTINUE)
                self.wfile.flush()
            spool = self.read_body()
        except BadRequest as exc:
            return self.refuse(exc.status, str(exc))
        except auth.Unauthenticated as exc:
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

    def declared(self, action: str) -> int:
        """The body's declared length, refused (411, 400, 413) before anything is read."""
        limit = self.server.max_pack if action in ("objects", "prepare") else MAX_JSON
        raw = self.headers.get("Content-Length")
        if raw is None:
            if self.command == "GET":
                raw = "0"
            else:
                raise BadRequest(411, "Content-Length required")
        if not (raw.isascii() and raw.isdigit()):
            raise BadRequest(400, "bad Content-Length")
        self.unread = int(raw)
        if self.unread > limit:
            raise BadRequest(413, f"body of {self.unread} bytes is over the limit of {limit}")
        return self.unread

    def read_body(self):
        """The body, spooled and hashed as it comes; refused (and dropped) unless it is the
        one whose digest the request signed."""
        spool = tempfile.SpooledTemporaryFile(max_size=8 << 20)  # noqa: SIM115 (caller closes)
        digest = hashlib.sha256()
        while self.unread:
            chunk = self.rfile.read(min(self.unread, 1 << 16))
            if not chunk:
                spool.close()
                raise BadRequest(400, "body shorter than its Content-Length")
            digest.update(chunk)
            spool.write(chunk)
            self.unread -= len(chunk)
        try:
            auth.check_body(self.headers, digest.hexdigest())
        except auth.Unauthenticated:
            spool.close()
            raise
        spool.seek(0)
        return spool

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
        info = self.info(app, host, query.get("want"))
        if query.get("processes"):  # what its processes run, for `shipyard status`
            info["serving"] = process_views.serving(app)
        return info

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
        kind = str(data.get("kind") or "push")
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}")
        return Deploy.for_request(
            app,
            host,
            Reporter(stream, color=False),
            sha=sha,
            ref=ref,
            number=number,
            release_id=check_release_id(str(data.get("release", ""))),
            pusher=str(data.get("pusher") or "unknown")[:100],
            tag=str(data["tag"])[:200] if data.get("tag") else None,
            options=options,
            kind=kind,
        )

    @contextlib.contextmanager
    def locked(self, app: App, what: str):
        info = {"deploy": f"receiver {what}", "pusher": "primary", "since": time.time()}
        with lock.exclusive(app.deploy_lock, info, timeout=LOCK_WAIT) as held:
            yield held

    def on_prepare(self, app, host, query, spool, stream) -> dict:
        """Objects (when the body brings a pack), then checkout → link → venv → build.

        The answer starts with this host's name (an ``N`` line, for the primary's labels) and
        says which release was live here before (``live``). ``lacks``: the commit is not here
        (nor the pack's ``base``): the primary sends info and objects, then asks again."""
        data, pack = self.prepare_body(spool)
        d = self.deploy_for(app, host, data, stream)
        key = (app.name, d.release_id)
        stream.named(peers.local_name(host))
        with self.locked(app, "prepare") as held:
            here = {"name": peers.local_name(host), "live": app.live_release()}
            d.journal = held
            when = self.server.aborted.pop(key, None)
            given_up = when is not None and when > time.monotonic() - ABORTED_FOR
            if given_up and d.kind != "rollback":  # the abort came first; a rollback makes none
                return {"ok": False, "error": "aborted by the primary", **here}
            self.server.tidier.protect(app, d.release_id)
            existing = release.Manifest.load(d.release) if d.release.exists() else None
            if existing and existing.sha == d.sha and existing.state == "prepared":
                stream.write(f"  - prepare        -    {d.release_id} is prepared already\n")
                return {"ok": True, "reused": False, "release": d.release_id, **here}
            if d.release.exists() and not (existing and existing.state == "good"):
                release.remove(app, d.release_id)  # a half-made attempt: start again
            base = data.get("base") or []
            if pack and not objects.has(app.repo, d.sha):
                if not all(isinstance(b, str) and objects.is_sha(b) for b in base):
                    raise ValueError("base must list full commit shas")
                if all(objects.has(app.repo, b) for b in base):  # the pack is made against them
                    objects.add_pack(app.repo, io.BytesIO(pack), d.sha)
            if not objects.has(app.repo, d.sha):
                error = f"commit {d.sha[:7]} is not in this host's repo"
                return {"ok": False, "lacks": True, "error": error, **here}
            failure = attempt(d, deploy.peer_prepare(d))
            if failure:
                return {"ok": False, "error": str(failure), **here}
            if not d.reused:
                d.manifest.state = "prepared"
                d.manifest.save(d.release)
            objects.set_ref(app.repo, objects.PREPARED_REF.decode(), d.sha)
            if self.server.aborted.pop(key, None):  # the primary gave up while we were building
                discard(d)
                return {"ok": False, "error": "aborted by the primary", **here}
        return {"ok": True, "reused": d.reused, "release": d.release_id, **here}

    def prepare_body(self, spool) -> tuple[dict, bytes]:
        """A prepare's body: its JSON object, then (after a newline) a pack, if any."""
        head, _, pack = spool.read().partition(b"\n")
        if len(head) > MAX_JSON:
            raise ValueError(f"the prepare's JSON is over {MAX_JSON} bytes")
        data = json.loads(head or b"{}")
        if not isinstance(data, dict):
            raise ValueError("the body must be a JSON object")
        return data, pack

    def on_switch(self, app, host, query, spool, stream) -> dict:
        data = self.body(spool)
        d = self.deploy_for(app, host, data, stream)
        with self.locked(app, "switch") as held:
            manifest = release.Manifest.load(d.release) if d.release.is_dir() else None
            if not manifest or manifest.sha != d.sha or manifest.state not in ("prepared", "good"):
                return {
                    "ok": False,
                    "switched": False,
                    "error": f"{d.release_id} is not prepared on this host",
                }
            d.reused = manifest.state == "good"
            d.journal = held
            d.prune_later = lambda keep, protect: self.server.tidier.later(app, keep, protect)
            d.committed = False  # until every host has verified, it may be sent back
            load_release(d)
            previous = app.live_release()
            failure = attempt(d, deploy.PEER_SWITCH)
            if failure:  # undone here; "switched" says where its undo left it
                return {
                    "ok": False,
                    "switched": app.live_release() == d.release_id,
                    "error": str(failure),
                    "previous": previous,
                }
            objects.set_ref(app.repo, f"refs/heads/{host.branch}", d.sha)
        return {
            "ok": True,
            "switched": True,
            "switched_at": d.switched_at,
            "previous": previous,
            "release": d.release_id,
        }

    def on_revert(self, app, host, query, spool, stream) -> dict:
        """Back from ``release`` if it is live here, as its switch and restart wrote down (the
        previous release and the programs that ran): not from the primary's memory."""
        data = self.body(spool)
        rid = check_release_id(str(data.get("release", "")))
        asked = data.get("previous")
        asked = check_release_id(str(asked)) if asked else None
        with self.locked(app, "revert"):
            if app.live_release() == rid:
                m = release.Manifest.load(app.release_dir(rid))
                d = self.deploy_for(app, host, {"sha": m.sha, "release": rid}, stream)
                d.previous = asked
                load_undo(d)
                if d.previous and not app.release_dir(d.previous).is_dir():
                    return {
                        "ok": False,
                        "live": rid,
                        "error": f"cannot go back: release {d.previous} is not on this host",
                    }
                revert(d, deploy.PEER_REVERT)
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
            with lock.exclusive(app.deploy_lock, {"deploy": "abort"}, timeout=2):
                m = release.Manifest.load(app.release_dir(rid))
                if not app.release_dir(rid).exists():  # its prepare may be on its way still
                    self.server.abort(app, rid)
                elif app.live_release() != rid and (m is None or m.state != "good"):
                    release.remove(app, rid)
        except ShipyardError:  # still preparing: it discards itself when done
            self.server.abort(app, rid)
        return {"ok": True}

    # --- operating commands (shipyard/hosts.py): config, scale, restart, run, logs ----

    def on_stage(self, app, host, query, spool, stream) -> dict:
        return hosts.take(
            app, host, self.body(spool), {"config": settings.staged, "scale": scale.staged}
        )

    def on_settle(self, app, host, query, spool, stream) -> dict:
        return hosts.settle_here(app, host, self.body(spool))

    def on_restart(self, app, host, query, spool, stream) -> dict:
        return hosts.restart_here(app, host, self.body(spool), Reporter(stream, color=False))

    def on_run(self, app, host, query, spool, stream) -> dict:
        return oneoff.serve(app, self.body(spool), stream)

    def on_logs(self, app, host, query, spool, stream) -> dict:
        return logs.serve(app, query, stream)


class Receiver(ThreadingHTTPServer):
    """The standard library's threading server, bounded: a thread per connection but at most
    ``max_connections`` of them, a deadline for each connection until its request is
    authenticated (a watchdog shuts down those past it), and TLS when given a context."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        root: Path,
        max_pack: int,
        aliases: tuple[str, ...] = (),
        context: ssl.SSLContext | None = None,
        max_connections: int = MAX_CONNECTIONS,
        request_timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        self.root = root
        self.max_pack = max_pack
        self.verifier = auth.Verifier()
        # (app, release) the primary gave up: when (monotonic); a prepare of it is refused
        self.aborted: dict[tuple[str, str], float] = {}
        self.context = context
        self.max_connections = max_connections
        self.request_timeout = request_timeout
        self.slots = threading.BoundedSemaphore(max_connections)
        self.pending: dict[int, float] = {}  # fd of an unauthenticated connection: its deadline
        self.pending_lock = threading.Lock()
        self.closing = threading.Event()
        self.tidier = Tidier(self.closing)
        self.configs: dict[Path, tuple] = {}  # config file: (stat keys, secret file, host, secret)
        self.configs_lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, Handler)
        port = self.server_address[1]
        names = [] if address[0] in WILDCARDS else [f"{address[0]}:{port}"]
        # the signed destination must be one of these: the --listen address, and aliases
        self.me = frozenset(auth.destination(a) for a in (*names, *aliases))
        threading.Thread(target=self._watch, daemon=True, name="receiver-watchdog").start()

    def process_request(self, request: socket.socket, client_address) -> None:
        if not self.slots.acquire(blocking=False):
            log(f"refused {client_address[0]}: {self.max_connections} connections open already")
            if self.context is None:
                with contextlib.suppress(OSError):
                    request.setblocking(False)
                    request.send(BUSY + b'{"error": "busy: too many connections"}')
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: socket.socket, client_address) -> None:
        fd = request.fileno()
        with self.pending_lock:
            self.pending[fd] = time.monotonic() + self.request_timeout
        try:
            if self.context is not None:
                request.settimeout(Handler.timeout)
                request = self.context.wrap_socket(
                    request, server_side=True, do_handshake_on_connect=False
                )
                request.do_handshake()
            self.finish_request(request, client_address)
        except Exception as exc:
            self.handle_error(request, client_address, exc)
        finally:
            with self.pending_lock:
                self.pending.pop(fd, None)
            self.shutdown_request(request)
            self.slots.release()

    def handle_error(self, request, client_address, exc: BaseException | None = None) -> None:
        exc = exc or sys.exc_info()[1]
        if isinstance(exc, OSError | ssl.SSLError):  # gone, cut off, too long, bad handshake
            log(f"closed {client_address[0]}: {exc}")
        else:
            super().handle_error(request, client_address)

    def abort(self, app: App, release_id: str) -> None:
        """Note that the primary gave up ``release_id``: a prepare of it still under way
        discards it when done, one that arrives after the abort (within ``ABORTED_FOR`` s)
        is refused."""
        now = time.monotonic()
        for key, when in list(self.aborted.items()):
            if when < now - ABORTED_FOR:
                self.aborted.pop(key, None)
        self.aborted[(app.name, release_id)] = now

    def config_of(self, app: App) -> tuple[HostConfig, bytes | None]:
        """The app's host config and cluster secret, checked as ``load_host_config`` does;
        read again only when the config or the secret file changed (or was chmod'ed)."""
        path = app.config_file
        with self.configs_lock:
            cached = self.configs.get(path)
        if cached and cached[0] == (stat_key(path), stat_key(cached[1])):
            return cached[2], cached[3]
        before = stat_key(path)  # taken before reading: a change meanwhile is read next time
        host = load_host_config(path)
        held = secret_path(host, path)
        key = (before, stat_key(held))
        secret = read_secret(host, path)
        with self.configs_lock:
            self.configs[path] = (key, held, host, secret)
        return host, secret

    def trusted(self, connection: socket.socket) -> None:
        """The request is authenticated: no deadline any more (a build may take long)."""
        with self.pending_lock:
            self.pending.pop(connection.fileno(), None)

    def _watch(self) -> None:
        """Shut down connections still unauthenticated past their deadline (slow clients)."""
        while not self.closing.wait(0.25):
            now = time.monotonic()
            with self.pending_lock:  # held while shutting down: the fd cannot be reused meanwhile
                for fd in [fd for fd, deadline in self.pending.items() if deadline < now]:
                    del self.pending[fd]
                    with contextlib.suppress(OSError), socket.socket(fileno=os.dup(fd)) as sock:
                        sock.shutdown(socket.SHUT_RDWR)

    def server_close(self) -> None:
        self.closing.set()
        super().server_close()


def main(args: argparse.Namespace) -> int:
    """`shipyard receiver`: check the options, then serve (or only make the certificate)."""
    address = parse_address(args.listen)
    if address is None:
        raise ShipyardError(f"--listen {args.listen!r} is not ADDR:PORT", "e.g. 10.0.0.2:7070")
    for alias in args.alias:
        if parse_address(alias) is None:
            raise ShipyardError(f"--alias {alias!r} is not HOST:PORT", "e.g. web2.internal:7070")
    if address[0] in WILDCARDS and not args.all_interfaces:
        raise ShipyardError(
            f"--listen {args.listen}: refusing to listen on every interface of this host",
            "listen on the address the primary reaches (e.g. 10.0.0.2:7070), "
            "or add --all-interfaces and --alias ADDR:PORT (the address the primary uses)",
        )
    if address[0] in WILDCARDS and not args.alias:
        raise ShipyardError(
            f"--listen {args.listen}: requests must name this host, and no address does",
            "add --alias ADDR:PORT: this host's address as the primary's `peers` lists it",
        )
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ShipyardError("--tls-cert and --tls-key go together", "give both, or neither")
    if args.max_connections < 1 or not args.request_timeout > 0:
        raise ShipyardError("--max-connections and --request-timeout must be above 0")
    if args.make_cert:
        if not args.tls_cert:
            raise ShipyardError("--make-cert needs --tls-cert FILE and --tls-key FILE")
        made = tls.make_cert(args.tls_cert, args.tls_key, args.listen)
        pin = tls.file_fingerprint(args.tls_cert)
        print(f"{'made' if made else 'kept'} {args.tls_cert}; pin it in the primary's host config:")
        print(f'peer_tls = {{ "{args.listen}" = "{pin}" }}')
        return 0
    context = tls.server_context(args.tls_cert, args.tls_key) if args.tls_cert else None
    return serve(
        args.listen,
        args.root,
        max_pack=args.max_pack << 20,
        aliases=tuple(args.alias),
        context=context,
        max_connections=args.max_connections,
        request_timeout=args.request_timeout,
    )


def serve(listen: str, root: Path | None, max_pack: int = 512 << 20, **options: object) -> int:
    address = parse_address(listen)
    if address is None:
        raise ShipyardError(f"--listen {listen!r} is not ADDR:PORT", "e.g. 10.0.0.2:7070")
    root = (root or default_root()).absolute()
    server = Receiver(address, root, max_pack, **options)

    def stop(signum: int, _frame: object) -> None:
        # not an exception raised wherever the signal lands (in the middle of starting a
        # request's thread, it was swallowed there and the receiver served on): the serving
        # loop is asked to end, from a thread, since shutdown() waits for it
        threading.Thread(target=server.shutdown, daemon=True).start()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    scheme = "TLS" if server.context else "plain HTTP"
    log(
        f"listening on {listen} ({scheme}; requests for {', '.join(sorted(server.me))}) "
        f"for apps under {root} (shipyard {__version__})"
    )
    try:
        server.serve_forever(poll_interval=0.2)
        log("stopping")
    finally:
        server.server_close()
    return 0
