"""The front door's bad input and faults: Debian's nginx and pebble (a real ACME server) on
loopback, in front of one deployed app that already serves DOMAIN over HTTPS.

Each refusal is one line with a non-zero exit, and nothing is half-applied: the host config,
the app's nginx site and the certificate nginx hands out are what they were, and the app still
answers over HTTPS. A deploy killed while it has the maintenance page on leaves the site
answering with the app once it is recovered.
"""

from __future__ import annotations

import contextlib
import os

import faultlib
import pytest
from conftest import make_host
from faultlib import arm, check_invariants, disarm, entries, greeting_of, sy, wait_for
from frontdoor import (
    Nginx,
    Pebble,
    free_port,
    http_fetch,
    https_fetch,
    make_ca,
    served_certificate,
)

observe = faultlib.observe
pytestmark = pytest.mark.timeout(600)

DOMAIN = "www.front.test"
BLOCKED = "blocked.front.test"  # pebble refuses to issue for it


@pytest.fixture(scope="module")
def door(tmp_path_factory):
    """(nginx, pebble, host, work): the app deployed, DOMAIN on an ACME certificate."""
    base = tmp_path_factory.mktemp("door")
    nginx = Nginx(base / "nginx", home=base).start()
    pebble = Pebble(base / "pebble", nginx.http_port, blocklist=[BLOCKED]).start()
    try:
        with faultlib.deployed(base) as (host, work):
            table = nginx.proxy_table(acme_directory=pebble.url, acme_ca_bundle=str(pebble.ca))
            with open(host.dir / "shipyard.toml", "a") as f:
                f.write(table)
            sy(host, "domains", "mysite", "add", DOMAIN)
            sy(host, "tls", "mysite")
            pebble.root_pem = pebble.root()
            wait_for(lambda: serves(nginx, pebble), 30, "nginx to serve HTTPS")
            yield nginx, pebble, host, work
    finally:
        nginx.stop()
        pebble.stop()


def serves(nginx: Nginx, pebble: Pebble) -> str:
    """The app's answer over HTTPS, trusting only pebble's root ("" if it does not answer)."""
    with contextlib.suppress(OSError):
        status, _headers, body = https_fetch(nginx.https_port, DOMAIN, pebble.root_pem)
        return body.strip() if status == 200 else ""
    return ""


def site_of(nginx: Nginx, app: str = "mysite"):
    return nginx.sites / os.environ.get("USER", "root") / f"{app}.conf"


@contextlib.contextmanager
def unchanged(door):
    """Nothing half-applied: config, site, served certificate and the app's answer as before."""
    nginx, pebble, host, _work = door
    config = (host.dir / "shipyard.toml").read_text()
    site = site_of(nginx).read_text()
    certificate = served_certificate(nginx.https_port, DOMAIN)
    answer = serves(nginx, pebble)
    assert answer, "the app does not answer over HTTPS before the case"
    yield
    assert (host.dir / "shipyard.toml").read_text() == config
    assert site_of(nginx).read_text() == site
    assert served_certificate(nginx.https_port, DOMAIN) == certificate
    assert serves(nginx, pebble) == answer


def refused(host, *args: str) -> str:
    """The command fails with exactly one line on stderr; that line."""
    out = sy(host, *args, check=False)
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    return lines[0]


@pytest.mark.parametrize("name", ["https://shop.test/", "shop_test", "10.0.0.1", "*.shop.test"])
def test_domain_that_is_not_a_hostname(door, observe, name):
    host = door[2]
    row = observe("bad input", f"`shipyard domains mysite add {name}`")
    with unchanged(door):
        line = refused(host, "domains", "mysite", "add", name)
    assert f"{name!r} is not a domain name" in line and "write a hostname" in line
    row["outcome"] = f"exit 1: `{line}`; config, nginx site, certificate unchanged"


def test_domain_claimed_by_another_app(door, observe):
    nginx, _pebble, host, _work = door
    row = observe("bad input", "`domains add` of a domain another app on the host serves")
    other = make_host(host.root, "other")
    before = (other.dir / "shipyard.toml").read_text()
    with unchanged(door):
        line = refused(host, "domains", "other", "add", DOMAIN)
    assert f"{DOMAIN} is already served by app mysite" in line
    assert f"`shipyard domains mysite remove {DOMAIN}`" in line
    assert (other.dir / "shipyard.toml").read_text() == before
    assert not site_of(nginx, "other").exists()
    row["outcome"] = f"exit 1: `{line}`; neither app's config nor site changed"


@pytest.mark.parametrize("case", ["another key", "another domain"])
def test_certificate_files_that_do_not_fit(door, observe, tmp_path, case):
    host = door[2]
    row = observe("bad input", f"`shipyard tls mysite --certificate … --key …` with {case}")
    _ca, cert, key = make_ca(tmp_path / "a", DOMAIN)
    if case == "another key":
        key = make_ca(tmp_path / "b", DOMAIN)[2]
        expected = "does not match the key"
    else:
        _ca, cert, key = make_ca(tmp_path / "b", "elsewhere.test")
        expected = f"does not cover {DOMAIN}"
    with unchanged(door):
        line = refused(host, "tls", "mysite", "--certificate", str(cert), "--key", str(key))
    assert expected in line, line
    row["outcome"] = f"exit 1: `{line.replace(str(tmp_path), '…')}`; the old certificate served"


def test_acme_refuses_a_new_domain(door, observe):
    host = door[2]
    row = observe("fault", f"ACME refuses to issue for a name added by `domains add {BLOCKED}`")
    with unchanged(door):
        line = refused(host, "domains", "mysite", "add", BLOCKED)
    assert line.startswith(f"shipyard: error: ACME certificate for {DOMAIN}, {BLOCKED} failed")
    assert f'forbidden by policy: "{BLOCKED}" (rejectedIdentifier)' in line  # the server's why
    assert "the site keeps its current certificate" in line
    row["outcome"] = f"exit 1: `{line}`; the add undone, HTTPS on the old certificate"


def test_acme_server_unreachable(door, observe):
    host = door[2]
    row = observe("fault", "the ACME server does not answer during `shipyard tls` (renewal)")
    config = host.dir / "shipyard.toml"
    text = config.read_text()
    dead = f"https://127.0.0.1:{free_port()}/dir"  # nothing listens there
    config.write_text(text.replace(door[1].url, dead))
    try:
        with unchanged(door):
            line = refused(host, "tls", "mysite")
    finally:
        config.write_text(text)
    assert line.startswith(f"shipyard: error: ACME certificate for {DOMAIN} failed")
    assert "Requesting 127.0.0.1/dir: Connection refused" in line  # where, and why
    assert "the site keeps its current certificate" in line
    row["outcome"] = f"exit 1: `{line}`; HTTPS on the old certificate"


def test_tls_when_it_is_off(door, observe):
    nginx, _pebble, host, _work = door
    row = observe("bad input", '`shipyard tls mysite` with `[proxy] tls = "off"`')
    config = host.dir / "shipyard.toml"
    text = config.read_text()
    config.write_text(text.replace("[proxy]\n", '[proxy]\ntls = "off"\n'))
    site = site_of(nginx).read_text()
    certbot_state = sorted((host.dir / "tls").rglob("*"))
    try:
        line = refused(host, "tls", "mysite")
        assert site_of(nginx).read_text() == site
        assert sorted((host.dir / "tls").rglob("*")) == certbot_state
    finally:
        config.write_text(text)
    assert 'tls = "off"' in line and 'tls = "acme"' in line, line
    row["outcome"] = f"exit 1: `{line}`; no certbot run, nothing written"


# --- a deploy with -o maintenance, killed ---------------------------------------------------


def push_killed(door, at: str, when: str = "start"):
    """Push with `-o maintenance`, the worker SIGKILLed at ``at``; the push's result, after the
    proc-receive hook's recovery answered."""
    _nginx, _pebble, host, work = door
    check_invariants(host)
    arm(host, {"at": at, "when": when, "action": "kill"})
    n = len(entries(host)) + 1
    work.commit(f"killed at {at}", **{"mysite/version.py": f'GREETING = "killed at {at}"\n'})
    try:
        result = work.push("-o", "maintenance=Upgrading", "main", check=False)
    finally:
        disarm(host)
    assert f"deploy #{n} stopped without an outcome" in result.out, result.out
    return result


@pytest.fixture
def page_off(door):
    """The maintenance page off after the case, whatever it left (so one failure stays one)."""
    yield
    sy(door[2], "maintenance", "mysite", "off")


def answer(door) -> tuple[int, str]:
    nginx, pebble = door[0], door[1]
    status, _headers, body = https_fetch(nginx.https_port, DOMAIN, pebble.root_pem)
    return status, body


@pytest.mark.parametrize(
    ("at", "completed"),
    [("migrate", False), ("restart", True), ("maintenance-off", True)],
    ids=["before the switch", "after the switch", "turning it off"],
)
def test_killed_maintenance_deploy_turns_the_page_off(door, page_off, observe, at, completed):
    nginx, _pebble, host, work = door
    row = observe("fault", f"SIGKILL of a `-o maintenance` deploy at the start of {at}")
    assert answer(door)[0] == 200
    result = push_killed(door, at)
    live = check_invariants(host)
    status, body = answer(door)
    assert status == 200, (status, body)  # the app, not the maintenance page
    assert body.strip() == greeting_of(host.dir / "releases" / live)
    assert http_fetch(nginx.http_port, DOMAIN)[0] == 308  # and HTTP still redirects
    if completed:
        assert result.returncode == 0, result.out
        assert body.strip() == f"killed at {at}"
    else:
        assert result.returncode != 0, result.out
        assert body.strip() != f"killed at {at}"
    assert "maintenance page it turned on: off" in result.out or completed, result.out
    row["outcome"] = (
        f"push exit {result.returncode} ({'completed' if completed else 'interrupted'}); "
        f"the page off again: HTTPS answers 200 `{body.strip()}`"
    )


def test_killed_maintenance_deploy_leaves_an_operators_page_on(door, page_off, observe):
    host = door[2]
    row = observe(
        "fault", "SIGKILL of a `-o maintenance` deploy after its switch, the page on before it"
    )
    sy(host, "maintenance", "mysite", "on", "--message", "Closed by the operator")
    result = push_killed(door, "restart")
    assert result.returncode == 0, result.out
    status, body = answer(door)
    assert status == 503 and "Closed by the operator" in body, (status, body)
    sy(host, "maintenance", "mysite", "off")
    status, body = answer(door)
    assert status == 200 and body.strip() == "killed at restart"
    row["outcome"] = "completed by the recovery; the operator's page stays on (503) until `off`"
