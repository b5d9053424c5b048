"""`make demo`: deploy the example app by a real `git push` to a local deploy root.

Everything lives under ./demo (git-ignored): the deploy root, and a developer's
clone of examples/mysite with `production` pointing at the app's bare repo.
Running it again pushes a new commit, so every run shows a deploy.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
TOP = HERE.parent / "demo"
ROOT = TOP / "apps"
WORK = TOP / "mysite"
BIN = Path(sys.executable).parent
ENV = {
    **os.environ,
    "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
    "GIT_AUTHOR_NAME": "Demo",
    "GIT_AUTHOR_EMAIL": "demo@localhost",
    "GIT_COMMITTER_NAME": "Demo",
    "GIT_COMMITTER_EMAIL": "demo@localhost",
}


def sh(*args: str | Path, cwd: Path | None = None, show: bool = False) -> str:
    if show:
        print(f"$ {' '.join(str(a) for a in args)}", flush=True)
    result = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=ENV,
        text=True,
        stdout=None if show else subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    if result.returncode:
        sys.exit(f"demo: {' '.join(str(a) for a in args)} failed:\n{result.stdout or ''}")
    return result.stdout or ""


def free_port(preferred: int = 8000) -> int:
    """8000 when nobody listens there, else any free loopback port."""
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise SystemExit("demo: no free port on 127.0.0.1")


def port_of(config: Path) -> int:
    import tomllib

    return int(tomllib.loads(config.read_text()).get("port", 8000))


def main() -> None:
    config = ROOT / "mysite" / "shipyard.toml"
    port = port_of(config) if config.exists() else free_port()
    # a throwaway demo host: as root (a container), deploys must be allowed to run as root
    as_root = ["--allow-root"] if os.geteuid() == 0 else []
    sh(BIN / "shipyard", "--root", ROOT, "init", "mysite", "--port", str(port), *as_root, show=True)
    env_file = ROOT / "mysite" / "shared" / ".env"
    if not env_file.exists():
        env_file.write_text(
            f"DATABASE_URL=sqlite:///{ROOT / 'mysite' / 'shared' / 'db.sqlite3'}\n"
            f"SECRET_KEY=demo-{os.urandom(8).hex()}\n"
        )
    fresh = not (WORK / ".git").is_dir()
    shutil.copytree(
        HERE / "mysite",
        WORK,
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns("__pycache__", ".venv", "db.sqlite3"),
    )
    if fresh:
        sh("git", "init", "-q", "-b", "main", cwd=WORK)
        sh("git", "remote", "add", "production", ROOT / "mysite" / "repo.git", cwd=WORK)
    sh("git", "add", "-A", cwd=WORK)
    sh(
        "git",
        "commit",
        "-q",
        "--allow-empty",
        "-m",
        f"demo deploy {time.strftime('%H:%M:%S')}",
        cwd=WORK,
    )
    print()
    sh("git", "push", "production", "main", cwd=WORK, show=True)
    current = ROOT / "mysite" / "current"
    url = f"http://127.0.0.1:{port}/"
    with urllib.request.urlopen(url, timeout=10) as response:
        served = response.read().decode().strip()
    print(f"\nlive release: {current} -> {os.readlink(current)}")
    print(f"serving:      {url}  ->  {served!r}")
    print(f"deploy root:  {ROOT / 'mysite'}")
    print(f"your clone:   {WORK}  (edit, commit, `git push production main`)")
    print(f"processes:    {BIN / 'shipyard'} --root {ROOT} processes mysite [--stop]")
    if shutil.which("nginx") and shutil.which("pebble") and shutil.which("certbot"):
        front_door(config)


def front_door(config: Path) -> None:
    """The domain over HTTPS: nginx and a local ACME server (pebble) on loopback, for a moment."""
    sys.path.insert(0, str(HERE.parent / "tests"))
    from frontdoor import Nginx, Pebble, https_fetch

    domain = "www.mysite.test"
    nginx = Nginx(TOP / "nginx", home=TOP).start()
    pebble = Pebble(TOP / "pebble", nginx.http_port).start()
    try:
        text = config.read_text()
        text = text[: text.index("[proxy]")] if "[proxy]" in text else text
        proxy = nginx.proxy_table(acme_directory=pebble.url, acme_ca_bundle=str(pebble.ca))
        config.write_text(text + proxy)
        print("\nthe front door: Debian's nginx + pebble (a local ACME server), both on loopback")
        sh(BIN / "shipyard", "--root", ROOT, "domains", "mysite", "add", domain, show=True)
        sh(BIN / "shipyard", "--root", ROOT, "tls", "mysite", show=True)
        url = f"https://{domain}:{nginx.https_port}/"
        status, _headers, body = https_fetch(nginx.https_port, domain, pebble.root())
        print(f"serving:      {url} ({domain} -> 127.0.0.1, pebble's root trusted) -> "
              f"{status} {body.strip()!r}")  # fmt: skip
    finally:
        nginx.stop()
        pebble.stop()
        print("(nginx and pebble stopped again; the app keeps running on its own port)")


if __name__ == "__main__":
    main()
