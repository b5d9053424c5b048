"""The real front door for the tests: Debian's nginx and pebble (a real ACME server) on loopback.

Both run as processes the test starts, with their own config and prefix (no system service).
`make demo` uses them too (examples/demo.py), so this module needs nothing from conftest.
pebble validates HTTP-01 challenges for real: it resolves the test domains through
pebble-challtestsrv's DNS (every name -> 127.0.0.1) and fetches the challenge from nginx.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from portpick import free_port

BIN = Path(sys.executable).parent


def run(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, check=True)


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


@dataclass
class Nginx:
    """nginx -p PREFIX: includes SITES/*/*.conf, as the provisioned nginx does."""

    prefix: Path
    home: Path  # where the sites' paths must lie (the deploy user's home on a real host)
    http_port: int = field(default_factory=free_port)
    https_port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def sites(self) -> Path:
        return self.prefix / "sites"

    @property
    def conf(self) -> Path:
        return self.prefix / "nginx.conf"

    def start(self) -> Nginx:
        for sub in ("sites", "logs", "tmp"):
            (self.prefix / sub).mkdir(parents=True, exist_ok=True)
        p = self.prefix
        self.conf.write_text(
            f"daemon off;\nuser root;\nworker_processes 2;\npid {p}/nginx.pid;\n"
            f"error_log {p}/logs/error.log;\nevents {{ worker_connections 1024; }}\n"
            f"http {{\n  include /etc/nginx/mime.types;\n  access_log {p}/logs/access.log;\n"
            + "".join(
                f"  {kind}_temp_path {p}/tmp/{kind};\n"
                for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
            )
            # a catch-all on the test ports, as a host's default site would be
            + f"  server {{ listen 127.0.0.1:{self.http_port} default_server; return 444; }}\n"
            + f"  include {self.prefix}/checked/*.conf;\n}}\n"
        )
        self.proc = subprocess.Popen(
            ["nginx", "-p", str(p), "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=open(p / "logs" / "stderr.log", "w"),  # noqa: SIM115
        )
        wait_port(self.http_port)
        return self

    def reload_command(self) -> list[str]:
        """What `[proxy] reload` runs: the same helper root runs on a provisioned host."""
        return [
            str(BIN / "shipyard"),
            "proxy-reload",
            "--sites",
            str(self.sites),
            "--prefix",
            str(self.prefix),
            "--conf",
            str(self.conf),
            "--home",
            str(self.home),
            "--checked",
            str(self.prefix / "checked"),
        ]

    def proxy_table(self, **extra: object) -> str:
        values = {
            "sites": str(self.sites),
            "reload": self.reload_command(),
            "address": "127.0.0.1",
            "http_port": self.http_port,
            "https_port": self.https_port,
            **extra,
        }
        return "[proxy]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def make_ca(directory: Path, name: str = "localhost") -> tuple[Path, Path, Path]:
    """A throw-away CA and a certificate for ``name`` and 127.0.0.1: (ca, cert, key)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = directory / "ca.pem", directory / "ca.key"
    cert, key = directory / "cert.pem", directory / "key.pem"
    run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-nodes", "-keyout", ca_key, "-out", ca, "-days", "2", "-subj", "/CN=test ca")  # fmt: skip
    run("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", key, "-out", directory / "req.csr", "-subj", f"/CN={name}")  # fmt: skip
    (directory / "ext").write_text(f"subjectAltName=DNS:{name},IP:127.0.0.1\n")
    run("openssl", "x509", "-req", "-in", directory / "req.csr", "-CA", ca, "-CAkey", ca_key,
        "-CAcreateserial", "-out", cert, "-days", "2", "-extfile", directory / "ext")  # fmt: skip
    return ca, cert, key


@dataclass
class Pebble:
    """pebble + pebble-challtestsrv (its DNS) on loopback; certificates valid ``validity`` s."""

    directory: Path
    http_port: int  # where pebble fetches HTTP-01 challenges: nginx's HTTP port
    validity: int = 3600
    blocklist: list[str] = field(default_factory=list)  # names pebble refuses to issue for
    port: int = field(default_factory=free_port)
    management: int = field(default_factory=free_port)
    dns_port: int = field(default_factory=free_port)
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    def start(self) -> Pebble:
        self.ca, cert, key = make_ca(self.directory / "listener")
        config = self.directory / "pebble.json"
        config.write_text(
            json.dumps(
                {
                    "pebble": {
                        "listenAddress": f"127.0.0.1:{self.port}",
                        "managementListenAddress": f"127.0.0.1:{self.management}",
                        "certificate": str(cert),
                        "privateKey": str(key),
                        "httpPort": self.http_port,
                        "tlsPort": free_port(),
                        "ocspResponderURL": "",
                        "externalAccountBindingRequired": False,
                        "certificateValidityPeriod": self.validity,
                        "domainBlocklist": self.blocklist,
                    }
                }
            )
        )
        log = open(self.directory / "pebble.log", "w")  # noqa: SIM115
        self.procs.append(
            subprocess.Popen(
                ["pebble-challtestsrv", "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
                 "-dns01", f"127.0.0.1:{self.dns_port}", "-http01", "", "-https01", "",
                 "-tlsalpn01", "", "-management", f"127.0.0.1:{free_port()}"],
                stdout=log, stderr=log,
            )
        )  # fmt: skip
        self.procs.append(
            subprocess.Popen(
                ["pebble", "-config", str(config), "-dnsserver", f"127.0.0.1:{self.dns_port}"],
                stdout=log,
                stderr=log,
                env={"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PATH": "/usr/bin"},
            )
        )
        wait_port(self.port)
        wait_port(self.management)
        return self

    def root(self) -> Path:
        """pebble's issuing root (new each start): what a client must trust."""
        context = ssl.create_default_context(cafile=str(self.ca))
        url = f"https://127.0.0.1:{self.management}/roots/0"
        with urllib.request.urlopen(url, context=context, timeout=10) as response:
            path = self.directory / "root.pem"
            path.write_bytes(response.read())
        return path

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _get(conn: http.client.HTTPConnection, domain: str, path: str):
    try:
        conn.request("GET", path, headers={"Connection": "close", "Host": domain})
        response = conn.getresponse()
        headers = {k.lower(): v for k, v in response.getheaders()}
        return response.status, headers, response.read().decode()
    finally:
        conn.close()


def https_fetch(
    port: int, domain: str, cafile: Path, path: str = "/", timeout: float = 10.0
) -> tuple[int, dict[str, str], str]:
    """GET https://``domain``:``port``/``path`` with ``domain`` resolved to 127.0.0.1, CA pinned."""
    context = ssl.create_default_context(cafile=str(cafile))
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    conn = http.client.HTTPConnection(domain, port, timeout=timeout)
    conn.sock = context.wrap_socket(sock, server_hostname=domain)
    return _get(conn, domain, path)


def http_fetch(port: int, domain: str, path: str = "/") -> tuple[int, dict[str, str], str]:
    """GET http://127.0.0.1:``port``/``path`` with ``Host: domain``: (status, headers, body)."""
    return _get(http.client.HTTPConnection("127.0.0.1", port, timeout=10), domain, path)


def served_certificate(port: int, domain: str) -> bytes:
    """The certificate (DER) nginx hands out for ``domain`` on 127.0.0.1:``port``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # not trusting it: comparing it
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as sock,
        context.wrap_socket(sock, server_hostname=domain) as tls,
    ):
        return tls.getpeercert(binary_form=True)
