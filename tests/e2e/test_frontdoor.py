"""The front door end to end: Debian's nginx and a real ACME server (pebble) on loopback.

One nginx + pebble pair for the module; the app is the example Django site, deployed by push,
with a view that shows the headers the proxy sends and a page that uses its static CSS.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import make_host, make_work, processes_under, run, shipyard
from frontdoor import BIN, Nginx, Pebble, http_fetch, https_fetch

pytestmark = pytest.mark.timeout(600)

DOMAIN = "www.shop.test"

VIEWS = """import json
from django.http import HttpResponse, JsonResponse
from mysite.version import GREETING


def index(request):
    return HttpResponse(f"{GREETING}\\n", content_type="text/plain")


def healthz(request):
    return JsonResponse({"ok": True})


def headers(request):
    keys = ("HTTP_HOST", "HTTP_X_FORWARDED_FOR", "HTTP_X_FORWARDED_PROTO")
    return JsonResponse({k: request.META.get(k) for k in keys})


def page(request):
    return HttpResponse(
        '<!doctype html><html><head><link rel="stylesheet" href="/static/polls/style.css">'
        '</head><body><h1 id="title">Shop</h1><script>addEventListener("load", () => {'
        'document.title = "color=" + getComputedStyle(document.getElementById("title")).color;'
        '});</script></body></html>'
    )
"""
URLS = """from django.urls import path
from polls import views

urlpatterns = [
    path("", views.index),
    path("healthz", views.healthz),
    path("headers", views.headers),
    path("page", views.page),
]
"""
CSS = "body { font-family: sans-serif; }\n#title { color: rgb(200, 30, 40); }\n"


@pytest.fixture(scope="module")
def door(tmp_path_factory):
    """nginx, pebble, and the app deployed behind them with DOMAIN (HTTP until `tls`)."""
    base = tmp_path_factory.mktemp("door")
    nginx = Nginx(base / "nginx", home=base).start()
    pebble = Pebble(base / "pebble", nginx.http_port, validity=3600).start()
    host = make_host(base / "apps")
    work = make_work(base / "work", host)
    table = nginx.proxy_table(acme_directory=pebble.url, acme_ca_bundle=str(pebble.ca))
    with open(host.dir / "shipyard.toml", "a") as f:
        f.write(table)
    work.commit("headers and page", **{"polls/views.py": VIEWS, "mysite/urls.py": URLS})
    (work.path / "polls/static/polls/style.css").write_text(CSS)
    work.commit("styled title")
    work.push()
    try:
        yield nginx, pebble, host, work
    finally:
        host.stop_processes()
        nginx.stop()
        pebble.stop()


def root_of(d) -> list[str]:
    return ["--root", str(d[2].root)]


def test_domain_served_over_http_then_https_with_acme(door):
    nginx, pebble, host, work = door
    out = shipyard(*root_of(door), "domains", "mysite", "add", DOMAIN, check=False)
    assert out.returncode == 0, out.stderr
    assert shipyard(*root_of(door), "domains", "mysite", "list").stdout.split() == [DOMAIN]
    site = nginx.sites / os.environ.get("USER", "root") / "mysite.conf"
    assert site.is_file()

    # before any certificate: plain HTTP serves the app, with the proxy's headers
    status, _h, body = http_fetch(nginx.http_port, DOMAIN, "/headers")
    assert status == 200
    seen = json.loads(body)
    assert seen["HTTP_HOST"] == DOMAIN
    assert seen["HTTP_X_FORWARDED_FOR"] == "127.0.0.1"
    assert seen["HTTP_X_FORWARDED_PROTO"] == "http"

    out = shipyard(*root_of(door), "tls", "mysite", check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "new certificate live" in out.stdout
    root = pebble.root()
    assert wait_for(lambda: serves_https(nginx, root))

    # what a user checks: curl trusting only pebble's root gets the app over HTTPS
    curl = run(
        "curl", "-sS", "--fail", "--cacert", root,
        "--resolve", f"{DOMAIN}:{nginx.https_port}:127.0.0.1",
        f"https://{DOMAIN}:{nginx.https_port}/",
    )  # fmt: skip
    assert curl.stdout.startswith("Hello")
    status, _h, body = https_fetch(nginx.https_port, DOMAIN, root, "/headers")
    assert status == 200 and json.loads(body)["HTTP_X_FORWARDED_PROTO"] == "https"
    assert json.loads(body)["HTTP_HOST"] == DOMAIN

    # HTTP now redirects; HSTS is off by default
    status, headers, _ = http_fetch(nginx.http_port, DOMAIN, "/page?x=1")
    assert status == 308
    assert headers["location"] == f"https://{DOMAIN}:{nginx.https_port}/page?x=1"
    status, headers, _ = https_fetch(nginx.https_port, DOMAIN, root, "/")
    assert "strict-transport-security" not in headers

    # static files come from the live release, by nginx, with cache headers
    status, headers, body = https_fetch(nginx.https_port, DOMAIN, root, "/static/polls/style.css")
    assert status == 200 and "rgb(200, 30, 40)" in body
    assert headers["cache-control"] == "public, max-age=300"
    live_static = host.live() / "static"
    hashed = live_static / "polls" / "style.0123abcd4567.css"
    hashed.write_text(CSS)
    status, headers, _ = https_fetch(nginx.https_port, DOMAIN, root, f"/static/polls/{hashed.name}")
    assert status == 200 and "immutable" in headers["cache-control"]
    hashed.unlink()


def serves_https(nginx: Nginx, root: Path) -> bool:
    try:
        return https_fetch(nginx.https_port, DOMAIN, root, "/")[0] == 200
    except OSError:
        return False


def serial(door, root: Path) -> str:
    nginx = door[0]
    result = subprocess.run(
        f"openssl s_client -connect 127.0.0.1:{nginx.https_port} -servername {DOMAIN} "
        f"-CAfile {root} </dev/null 2>/dev/null | openssl x509 -noout -serial",
        shell=True, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return result.stdout.strip()


def wait_for(condition, seconds: float = 20.0):
    """The condition's value once truthy: nginx -s reload returns before new workers serve."""
    deadline = time.monotonic() + seconds
    while not (value := condition()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return value


def test_renewal_replaces_a_short_lived_certificate_without_a_deploy(door, tmp_path):
    """As provision schedules it: the cron entry's command, run with cron's environment."""
    from shipyard.app import App
    from shipyard.config import load_host_config
    from shipyard.provision.frontdoor import renewal_entry
    from shipyard.tls import renewal_check

    nginx, pebble, host, work = door
    root = pebble.root()
    before = serial(door, root)
    deploys = len((host.dir / "deploys" / "deploys.jsonl").read_text().splitlines())
    user = os.environ.get("USER", "root")
    app = App(host.root, "mysite")
    # no entry on this machine: doctor fails the check and says how to get one
    config = load_host_config(host.dir / "shipyard.toml")
    status, detail, fix = renewal_check(app, config, tmp_path)
    assert status == "fail" and "no renewal scheduled" in detail and "provision" in fix
    if not Path(f"/etc/cron.d/shipyard-tls-{user}").exists():  # this machine was not provisioned
        doctor = shipyard(*root_of(door), "doctor", "mysite", check=False)
        assert doctor.returncode == 1
        assert "✗ tls          ACME certificate (" in doctor.stdout, doctor.stdout
        assert "but no renewal scheduled in /etc/cron.d/shipyard-tls-" in doctor.stdout
    etc = tmp_path / "etc"
    (etc / "cron.d").mkdir(parents=True)
    entry = renewal_entry(user, BIN / "shipyard", host.root)
    (etc / "cron.d" / f"shipyard-tls-{user}").write_text(entry)
    line = entry.splitlines()[-1].split(None, 6)
    assert line[5] == user
    # pebble issues for an hour: within certbot's 30-day window, so it is due
    # cron's environment: HOME and LOGNAME, and the variables the entry sets
    cron_env = {"HOME": str(Path.home()), "LOGNAME": user}
    cron_env.update(ln.split("=", 1) for ln in entry.splitlines() if re.match(r"^[A-Z]+=", ln))
    ran = subprocess.run(["/bin/sh", "-c", line[6].replace(">/dev/null", "")], env=cron_env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert ran.stdout == f"shipyard ▸ mysite: new certificate live for {DOMAIN}\n", ran.stdout
    after = wait_for(lambda: serial(door, root) != before and serial(door, root))
    assert after and after != before
    assert https_fetch(nginx.https_port, DOMAIN, root, "/")[0] == 200
    assert len((host.dir / "deploys" / "deploys.jsonl").read_text().splitlines()) == deploys
    status, detail, _fix = renewal_check(app, config, etc)
    assert status == "ok" and "renewed by" in detail, detail


def test_maintenance_page_with_retry_after_processes_untouched(door):
    nginx, pebble, host, work = door
    root = pebble.root()
    pids = sorted(processes_under(host.root))
    out = shipyard(*root_of(door), "maintenance", "mysite", "on", "--message", "Back at 5 <pm>")
    assert "maintenance on" in out.stdout
    status, headers, body = https_fetch(nginx.https_port, DOMAIN, root, "/")
    assert status == 503
    assert headers["retry-after"] == "120"
    assert "Back at 5 &lt;pm&gt;" in body
    assert sorted(processes_under(host.root)) == pids
    shipyard(*root_of(door), "maintenance", "mysite", "off")
    assert https_fetch(nginx.https_port, DOMAIN, root, "/")[:1] == (200,)


def test_chromium_loads_the_page_over_https_with_its_static_css(door, tmp_path):
    """A real browser trusting pebble's root (a throw-away NSS db), not ignoring errors."""
    nginx, pebble, host, work = door
    home = tmp_path / "home"
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    run("certutil", "-d", f"sql:{nssdb}", "-N", "--empty-password", stdin=subprocess.DEVNULL)
    run(
        "certutil",
        "-d",
        f"sql:{nssdb}",
        "-A",
        "-t",
        "C,,",
        "-n",
        "pebble",
        "-i",
        pebble.root(),
        stdin=subprocess.DEVNULL,
    )
    url = f"https://{DOMAIN}:{nginx.https_port}/page"
    browser = [
        "timeout", "-k", "5", "90", "chromium", "--headless", "--no-sandbox", "--disable-gpu",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}", "--window-size=800,600",
        f"--host-resolver-rules=MAP {DOMAIN} 127.0.0.1", "--virtual-time-budget=5000",
    ]  # fmt: skip
    env = {**os.environ, "HOME": str(home)}
    dom = run(*browser, "--dump-dom", url, env=env, stdin=subprocess.DEVNULL)
    # once the page had loaded (its stylesheet too), its script wrote the computed colour of
    # its title into the document's title
    assert "<title>color=rgb(200, 30, 40)</title>" in dom.stdout, dom.stdout[-2000:]
    shot = tmp_path / "page.png"
    run(*browser, f"--screenshot={shot}", url, env=env, cwd=tmp_path, stdin=subprocess.DEVNULL)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # and with an empty NSS db the browser refuses: the trust above is what made it load
    empty = tmp_path / "empty" / ".pki" / "nssdb"
    empty.mkdir(parents=True)
    run("certutil", "-d", f"sql:{empty}", "-N", "--empty-password", stdin=subprocess.DEVNULL)
    env["HOME"] = str(tmp_path / "empty")
    refused = run(*browser, "--dump-dom", url, env=env, check=False, stdin=subprocess.DEVNULL)
    assert "color=rgb(200, 30, 40)" not in refused.stdout


SLOW_MIGRATION = """import os
import time

from django.db import migrations


def wait_for_the_test(apps, schema_editor):
    flag = os.environ.get("SHIPYARD_SHARED", ".") + "/migration-may-finish"
    deadline = time.monotonic() + 60
    while not os.path.exists(flag) and time.monotonic() < deadline:
        time.sleep(0.1)


class Migration(migrations.Migration):
    dependencies = [("polls", "0002_choice")]
    operations = [migrations.RunPython(wait_for_the_test, migrations.RunPython.noop)]
"""


class Assets:
    """GET / then the stylesheet of the version it showed, until stopped (bounded): the
    static files switch with the code, so the page's version always has its asset."""

    def __init__(self, nginx: Nginx, root: Path) -> None:
        self.nginx, self.root = nginx, root
        self.stop = threading.Event()
        self.seen: set[int] = set()
        self.missing: list[tuple[int, int]] = []

    def run(self) -> None:
        deadline = time.monotonic() + 240
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                status, _h, body = https_fetch(self.nginx.https_port, DOMAIN, self.root, "/")
                match = re.match(r"Hello v(\d+)$", body.strip()) if status == 200 else None
                if match:
                    n = int(match.group(1))
                    path = f"/static/polls/v{n}.css"
                    got = https_fetch(self.nginx.https_port, DOMAIN, self.root, path)
                    self.seen.add(n)
                    if got[0] != 200 or f"v{n}" not in got[2]:
                        self.missing.append((n, got[0]))
            except OSError:
                pass  # the load above counts failed requests
            time.sleep(0.05)


def test_zero_failed_requests_through_the_proxy_across_deploys_reload_and_maintenance(door):
    """HTTPS via nginx: 5 deploys (one with -o maintenance around a long migration), a proxy
    reload and maintenance on/off; every answer is the app (200) or the maintenance page."""
    from httpload import Load

    nginx, pebble, host, work = door
    root = pebble.root()

    def get() -> tuple[int, str]:
        status, _headers, body = https_fetch(nginx.https_port, DOMAIN, root, "/", timeout=30)
        return status, body

    load = Load(port=nginx.https_port, rate=20, seconds=240, limit=4000, get=get)
    thread = threading.Thread(target=load.run)
    thread.start()
    # each version brings a stylesheet of its own: once a page of vN is served, vN's is too
    assets = Assets(nginx, root)
    checker = threading.Thread(target=assets.run)
    checker.start()
    maintenance_window = []
    try:
        for n in range(1, 5):
            work.commit(f"v{n}", **{"mysite/version.py": f'GREETING = "Hello v{n}"\n',
                                    f"polls/static/polls/v{n}.css": f"/* v{n} */\n"})  # fmt: skip
            work.push()
            if n == 2:
                reload = run(*nginx.reload_command())
                assert reload.returncode == 0
            if n == 3:
                shipyard(*root_of(door), "maintenance", "mysite", "on")
                assert wait_for(lambda: load.results and load.results[-1][2] == 503)
                shipyard(*root_of(door), "maintenance", "mysite", "off")
        # the fifth deploy runs a long migration behind the maintenance page
        work.commit("v5", **{"mysite/version.py": 'GREETING = "Hello v5"\n',
                             "polls/static/polls/v5.css": "/* v5 */\n",
                             "polls/migrations/0003_slow.py": SLOW_MIGRATION})  # fmt: skip
        pusher = threading.Thread(target=lambda: maintenance_window.append(
            work.push("-o", "maintenance=Upgrading the shop", "main")))  # fmt: skip
        pusher.start()
        assert wait_for(lambda: load.results and load.results[-1][2] == 503, 120)
        (host.dir / "shared" / "migration-may-finish").touch()
        pusher.join(180)
        assert wait_for(lambda: load.results and load.results[-1][3] == "Hello v5", 60)
    finally:
        load.stop.set()
        assets.stop.set()
        thread.join(60)
        checker.join(60)
    assert not assets.missing, assets.missing[:5]  # no 404 for a new asset during the handover
    assert {1, 4} <= assets.seen, assets.seen
    push = maintenance_window[0]
    assert "maintenance" in push.out and push.returncode == 0, push.out
    answers = [r for r in load.results if r[2] != 200]
    assert answers, "the maintenance page was never seen"
    bad = [r for r in answers if r[2] != 503 or "maintenance" not in r[3].lower()]
    assert not bad, bad[:5]
    bodies = {r[3] for r in load.results if r[2] == 200}
    assert {"Hello v1", "Hello v4", "Hello v5"} <= bodies
    assert any("Upgrading the shop" in r[3] for r in answers)  # -o maintenance=MESSAGE
    assert len(load.results) > 100
    assert get() == (200, "Hello v5\n")


def test_operator_files_replace_the_certificate_and_acme_takes_over_again(door, tmp_path):
    import ssl

    from frontdoor import make_ca, served_certificate

    nginx, pebble, host, work = door
    ca, cert, key = make_ca(tmp_path / "ca", DOMAIN)
    out = shipyard(*root_of(door), "tls", "mysite", "--certificate", cert, "--key", key)
    assert f"serving {cert} over HTTPS" in out.stdout
    # a client trusting only the operator's CA gets the app
    assert wait_for(lambda: serves_https(nginx, ca))
    assert served_certificate(nginx.https_port, DOMAIN) == ssl.PEM_cert_to_DER_cert(
        cert.read_text()
    )
    assert https_fetch(nginx.https_port, DOMAIN, ca, "/")[2].startswith("Hello")
    out = shipyard(*root_of(door), "tls", "mysite")
    assert "serves operator-provided files; nothing to renew" in out.stdout
    out = shipyard(*root_of(door), "tls", "mysite", "--all", check=False)
    assert out.returncode == 1 and "give no app or files" in out.stderr
    # back to ACME
    out = shipyard(*root_of(door), "tls", "mysite", "--acme")
    assert "new certificate live" in out.stdout
    root = pebble.root()
    assert wait_for(lambda: serves_https(nginx, root))
    assert served_certificate(nginx.https_port, DOMAIN) != ssl.PEM_cert_to_DER_cert(
        cert.read_text()
    )
