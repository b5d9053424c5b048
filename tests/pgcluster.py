"""Fixtures for the migration tests (import them by name): a throw-away PostgreSQL cluster.

initdb in a temp dir, one free loopback port, password authentication; stopped and removed
at the end of the session.

PostgreSQL refuses to run as root, so as root the cluster runs as the ``postgres`` user
(created by the Debian package), in a temp dir that user can reach.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from portpick import free_port

PASSWORD = "pg-Secret-4711"


def pg_bindir() -> Path | None:
    """The newest Debian PostgreSQL bin dir, else wherever initdb is on PATH."""
    found = []
    for path in Path("/usr/lib/postgresql").glob("*/bin/initdb"):
        digits = re.match(r"\d+", path.parent.parent.name)
        found.append((int(digits.group()) if digits else 0, path.parent))
    if found:
        return max(found)[1]
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


@dataclass
class Cluster:
    port: int
    bindir: Path
    user: str = "postgres"

    def url(self, dbname: str = "postgres", password: str = PASSWORD) -> str:
        return f"postgresql://{self.user}:{password}@127.0.0.1:{self.port}/{dbname}"

    def connect(self, dbname: str = "postgres"):
        import psycopg

        return psycopg.connect(self.url(dbname), autocommit=True)

    def create_database(self) -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        with self.connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name


@pytest.fixture(scope="session")
def postgres(request) -> Cluster:
    bindir = pg_bindir()
    if bindir is None:
        pytest.fail(
            "PostgreSQL is not installed: run `make system-deps` (Debian package postgresql)"
        )
    as_root = os.geteuid() == 0
    if as_root:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail("PostgreSQL refuses to run as root and there is no `postgres` user")
    run_as: dict = {"user": "postgres", "group": "postgres", "extra_groups": []} if as_root else {}
    tmp = Path(tempfile.mkdtemp(prefix="shipyard-pg-"))
    os.chmod(tmp, 0o755)
    data = tmp / "data"
    pwfile = tmp / "pw"
    pwfile.write_text(PASSWORD + "\n")
    if as_root:
        shutil.chown(tmp, "postgres", "postgres")
        shutil.chown(pwfile, "postgres", "postgres")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"

    def pg(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [str(bindir / args[0]), *args[1:]],
            cwd=tmp,
            env=env,
            capture_output=True,
            text=True,
            **run_as,
        )
        if check and result.returncode:
            raise RuntimeError(f"{args[0]} failed:\n{result.stdout}\n{result.stderr}")
        return result

    pg(
        "initdb",
        "-D",
        str(data),
        "-U",
        "postgres",
        "-E",
        "UTF8",
        "--locale=C",
        "--no-sync",
        "--auth-local=trust",
        "--auth-host=scram-sha-256",
        f"--pwfile={pwfile}",
    )
    options = (
        f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={tmp} "
        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=60"
    )
    pg("pg_ctl", "-D", str(data), "-l", str(tmp / "log"), "-o", options, "-w", "-t", "60", "start")

    def stop() -> None:
        pg("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(tmp, ignore_errors=True)

    request.addfinalizer(stop)
    cluster = Cluster(port, bindir)
    deadline = time.monotonic() + 30
    while True:
        try:
            cluster.connect().close()
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    return cluster


@pytest.fixture
def pg_url(postgres: Cluster) -> str:
    """A fresh, empty database of its own for one test."""
    return postgres.url(postgres.create_database())
