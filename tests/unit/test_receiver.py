"""The receiver's trust boundary without a network: what the signature binds, what a host
config may pin, what provision sets up for TLS."""

from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path

import pytest

from shipyard.config import parse_host_config
from shipyard.errors import ConfigError
from shipyard.provision import host
from shipyard.provision.host import Layout, ProvisionError, configure_supervisor
from shipyard.receiver import auth, tls

SECRET = b"0123456789abcdef0123456789abcdef"
PATH = "/v1/apps/mysite/abort"
PIN = "sha256:" + ":".join(["AB"] * 32)


def test_a_request_names_its_receiver_and_another_refuses_it():
    headers = auth.sign(SECRET, "POST", PATH, b"{}", to="10.0.0.2:7070")
    web3 = frozenset({auth.destination("10.0.0.3:7070")})
    with pytest.raises(auth.Unauthenticated, match="request signed for '10.0.0.2:7070'"):
        auth.Verifier().verify(SECRET, "POST", PATH, headers, me=web3)
    web2 = frozenset({auth.destination("10.0.0.2:7070")})
    assert auth.Verifier().verify(SECRET, "POST", PATH, headers, me=web2)
    for changed in ({auth.H_TO: "10.0.0.3:7070"}, {"Content-Length": "3"}):
        with pytest.raises(auth.Unauthenticated, match="bad signature"):
            auth.Verifier().verify(SECRET, "POST", PATH, {**headers, **changed}, me=web2)
    with pytest.raises(auth.Unauthenticated, match="the body is not the one signed"):
        auth.check_body(headers, auth.body_digest(b"{ }"))


def test_destinations_compare_as_addresses():
    assert auth.destination("[FD00::0002]:7070") == auth.destination("fd00::2:7070")
    assert auth.destination("Web2.Internal:7070") == "web2.internal:7070"


def test_peer_tls_pins_a_listed_peer_by_fingerprint_or_file():
    base = 'peers = ["10.0.0.2:7070"]\n'
    config = parse_host_config(base + f'peer_tls = {{ "10.0.0.2:7070" = "{PIN}" }}\n', "t")
    assert tls.pin_of(config.peer_tls["10.0.0.2:7070"]) == PIN
    parse_host_config(base + 'peer_tls = { "10.0.0.2:7070" = "/etc/web2.pem" }\n', "t")
    with pytest.raises(ConfigError, match="which is not in `peers`"):
        parse_host_config(base + f'peer_tls = {{ "10.0.0.3:7070" = "{PIN}" }}\n', "t")
    with pytest.raises(ConfigError, match='must be "sha256:…" or a certificate\'s path'):
        parse_host_config(base + 'peer_tls = { "10.0.0.2:7070" = "sha256:abc" }\n', "t")


def test_provision_runs_the_receiver_with_its_certificate(tmp_path: Path, monkeypatch):
    conf_dir = tmp_path / "conf.d"
    conf_dir.mkdir()
    lay = Layout("deploy", tmp_path / "home", os.getuid(), os.getgid())
    lay.state.mkdir(parents=True)
    monkeypatch.setattr(host, "enable_supervisor_program", lambda *_: "enabled it")
    configure_supervisor(lay, conf_dir=conf_dir, receiver="10.0.0.2:7070")
    cert, key = lay.receiver_tls
    assert f"receiver --listen 10.0.0.2:7070 --tls-cert {cert} --tls-key {key}" in (
        lay.supervisord_conf.read_text()
    )
    for everywhere in ("0.0.0.0:7070", "[::]:7070"):
        with pytest.raises(ProvisionError, match="it would be every interface"):
            host.check_listen_address(everywhere)


def test_provision_has_the_deploy_user_make_the_certificate(tmp_path: Path, monkeypatch):
    ran = []

    def run(self, *args, user=False, **kw):
        ran.append(([str(a) for a in args], user))
        out = 'made CERT; pin it:\npeer_tls = { "10.0.0.2:7070" = "sha256:AB" }\n'
        return subprocess.CompletedProcess(args, 0, out, "")

    monkeypatch.setattr(host.Provisioner, "run", run)
    p = host.Provisioner(host.Options(receiver="10.0.0.2:7070"), out=io.StringIO())
    p.layout = Layout("deploy", tmp_path / "home", os.getuid(), os.getgid())
    p.receiver_cert()
    (argv, as_user), cert = ran[0], p.layout.receiver_tls[0]
    assert as_user and argv[1:4] == ["receiver", "--listen", "10.0.0.2:7070"]
    assert "--make-cert" in argv and str(cert) in argv
    assert p.changes == [f"make the receiver's TLS certificate {cert}"]
    pin = 'peer_tls = { "10.0.0.2:7070" = "sha256:AB" }'
    assert p.notes == [f"pin it in the primary's shipyard.toml: {pin}"]
