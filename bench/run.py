"""`make bench`: where shipyard stands against the usual way, measured side by side in one run.

Prints one table and writes bench/results.md and bench/results.json. Every figure is the
median (min–max) of BENCH_RUNS (default 5) runs, and every shipyard figure is also given as a
ratio to the classic script deploy (bench/baseline.sh) measured in the same run, on the same
host, with the same example app: machines are noisy, read the ratios rather than the seconds.

Sections, one function each (all share ``row``):

- ``bench_redeploys`` code-only and changed-requirement deploys, the classic script deploy's
                      and shipyard's in turns (so both see the same machine);
- ``bench_shipyard``  first deploy, pinned push, rollback, a failing deploy;
- ``bench_processes`` push → new code served, failed requests and latency under load during
                      deploys, direct and through nginx over HTTPS side by side (part of
                      ``redeploys``; BENCH_ONLY=processes runs it alone);
- ``bench_boot``      the app's own boot (gunicorn started by hand), for "served minus boot";
- ``bench_capistrano`` Capistrano 3 (Debian's package, bench/capistrano/) and shipyard over one
                      private loopback sshd, in turns: first deploy, code-only, changed
                      requirement, rollback, and a bare ``git push`` over the same ssh;
- ``bench_hosts``     1/2/4/8 hosts, switch skew, bytes per peer ;
- ``bench_coordination`` 1/8/16/32 hosts with no processes (prepare + switch only), skew;
- ``bench_checkout_change`` release.checkout of a one-file change in a 20,000-file repo (and
                      the spare engine.tidy prepares for it after the answer);
- ``bench_checkout``, ``bench_venv``  details (BENCH_DETAILS=1): checkout methods, uv against pip.

At the end, issue 18's goals table with met / NOT MET for each row (and issue 9's goals).
BENCH_ONLY=capistrano,coordination,checkout,hosts,redeploys,processes runs only those sections and
writes no results (with BENCH_RUNS=1: a quick check that the code runs).

Everything runs on 127.0.0.1 on free ports, in a temporary directory removed at the end; every
supervisord and gunicorn started here is stopped, every loop is bounded in count and time.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
TOP = HERE.parent
sys.path.insert(0, str(TOP / "tests"))  # the load generator and network namespaces
EXAMPLE = TOP / "examples" / "mysite"
BIN = Path(sys.executable).parent  # install_shipyard points it at an installed copy
RUNS = max(1, int(os.environ.get("BENCH_RUNS", "5")))
DETAILS = os.environ.get("BENCH_DETAILS") == "1"  # checkout methods, uv against pip: +3 min
# BENCH_ONLY=capistrano,coordination,checkout: only these sections (a quick check of the code)
ONLY = {s for s in os.environ.get("BENCH_ONLY", "").split(",") if s}
SERVE_TIMEOUT = 60.0  # seconds a deploy's code has to be served after it returns
ENV = {
    **os.environ,
    "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
    "GIT_AUTHOR_NAME": "Bench",
    "GIT_AUTHOR_EMAIL": "bench@localhost",
    "GIT_COMMITTER_NAME": "Bench",
    "GIT_COMMITTER_EMAIL": "bench@localhost",
    "GIT_CONFIG_NOSYSTEM": "1",
    "NO_COLOR": "1",
}
ENV.pop("SHIPYARD_ROOT", None)
from httpload import Load, fetch  # noqa: E402

rows: list[dict] = []
goals: list[dict] = []  # issue 9's, as before
# issue 18's goals table, in its order: (key, measurement, goal, unit, test of the figure)
GOALS = (
    ("cap_code", "code-only redeploy vs Capistrano, same ssh", "≥ 20×", "×", lambda v: v >= 20),
    ("cap_reqs", "changed requirement vs Capistrano", "≥ 8×", "×", lambda v: v >= 8),
    ("cap_rollback", "rollback vs Capistrano", "≥ 15×", "×", lambda v: v >= 15),
    ("push_minus_bare", "code-only push minus bare push, no processes, same transport",
     "≤ 0.20 s", "s", lambda v: v <= 0.20),
    ("checkout", "checkout, one file changed in a 20,000-file repo", "≤ 0.10 s", "s",
     lambda v: v <= 0.10),
    ("hosts32", "32 hosts without processes vs 1 host", "≤ 1.5×", "×", lambda v: v <= 1.5),
    ("served_minus_boot", "push → new code served, minus the app's boot", "≤ 0.30 s", "s",
     lambda v: v <= 0.30),
)  # fmt: skip
measured: dict[str, float | str] = {}  # a GOALS key: its figure, or why it was not measured
cleanups: list[Callable[[], None]] = []  # run at exit, newest first


# --- helpers ----------------------------------------------------------------------


def sh(
    *args: str | Path, cwd: Path | None = None, env: dict | None = None, check: bool = True
) -> str:
    result = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env or ENV,
        text=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=600,
    )
    if check and result.returncode:
        sys.exit(f"bench: {' '.join(map(str, args))} failed:\n{result.stdout}")
    return result.stdout


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serving(port: int) -> str:
    """What GET / answers now ('' when nothing answers)."""
    try:
        status, body = fetch(port, timeout=5)
    except (OSError, http.client.HTTPException):
        return ""
    return body.strip() if status == 200 else f"HTTP {status}"


def wait_served(port: int, greeting: str, timeout: float = SERVE_TIMEOUT) -> None:
    """Poll GET / until it answers ``greeting`` (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        seen = serving(port)
        if seen == greeting:
            return
        if time.monotonic() > deadline:
            sys.exit(f"bench: :{port} never served {greeting!r} (last: {seen!r})")
        time.sleep(0.01)


def summary(samples: list[float]) -> dict:
    return {
        "median": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
        "runs": len(samples),
    }


def row(
    group: str,
    name: str,
    samples: list[float],
    base: float | None = None,
    goal: str = "",
    met: bool | None = None,
    unit: str = "s",
    base_name: str = "",
) -> dict:
    """One line of the table: median (min–max) of ``samples``; ``ratio`` = median / ``base``."""
    entry = {
        "group": group,
        "name": name,
        "unit": unit,
        **summary(samples),
        "goal": goal,
        "met": met,
    }
    if base:
        entry["ratio"] = entry["median"] / base
        entry["base"] = base_name
    rows.append(entry)
    print(f"  {format_row(entry)}", flush=True)
    return entry


def format_figure(entry: dict) -> str:
    if entry["unit"] == "s":
        return f"{entry['median']:.3f}s ({entry['min']:.3f}–{entry['max']:.3f})"
    return f"{entry['median']:g} ({entry['min']:g}–{entry['max']:g}) {entry['unit']}"


def format_ratio(entry: dict) -> str:
    if "ratio" not in entry:
        return ""
    ratio = entry["ratio"]
    faster = f" = {1 / ratio:.1f}× faster" if 0 < ratio < 1 else ""
    return f"{ratio:.3f}×{faster}"


def format_row(entry: dict) -> str:
    verdict = "" if entry["met"] is None else ("met" if entry["met"] else "NOT MET")
    goal = f"{entry['goal']}: {verdict}" if entry["goal"] and verdict else entry["goal"]
    return (
        f"{entry['name']:<48} {format_figure(entry):>26} {format_ratio(entry):>22}  {goal}"
    ).rstrip()


def goal(text: str, figure: str, met: bool | None) -> None:
    """A goal of issue 9: met, not met, or (None) not measured in this build."""
    goals.append({"goal": text, "figure": figure, "met": met})


def example_files(src: str, names: list[str]) -> set[str]:
    """What a clone of the example app leaves out: caches, and collectstatic's output (only the
    top-level ``static/``: the apps' own ``*/static/`` are sources, the build step's inputs)."""
    skip = {"__pycache__", ".venv", "db.sqlite3"}
    if Path(src) == EXAMPLE:
        skip.add("static")
    return skip & set(names)


ADDED = ("six", "idna", "attrs", "decorator", "iniconfig", "pluggy", "appdirs")


def changed_requirement(i: int) -> str:
    """The requirement added by the i-th changed-requirement deploy: another small package
    each time, which no earlier venv holds, so every such deploy installs something new (a
    range like ``six>=1.1i`` resolved to the same package every time, and a deploy may
    rightly reuse a venv that holds what the requirements resolve to; the host's index has
    one version of most packages, so the change is another package, not another version)."""
    return ADDED[i % len(ADDED)]


def greeting_file(n: int | str) -> str:
    return f'GREETING = "Hello, bench {n}"\n'


# --- the example app, pushed ----------------------------------------------------


class Clone:
    """A developer's clone of the example app, with one remote."""

    def __init__(self, path: Path, remote: Path, source: Path = EXAMPLE) -> None:
        self.path = path
        self.version = "mysite/version.py" if source == EXAMPLE else "version.py"
        shutil.copytree(source, path, ignore=example_files)
        sh("git", "init", "-q", "-b", "main", cwd=path)
        sh("git", "add", "-A", cwd=path)
        sh("git", "commit", "-qm", "initial", cwd=path)
        sh("git", "remote", "add", "origin", remote, cwd=path)
        self.requirements = (path / "requirements.txt").read_text()
        self.n = 0

    def greeting(self) -> str:
        text = (self.path / self.version).read_text()
        return text.split("=", 1)[1].strip().strip('"')

    def change(self, requirement: str | None = None, **files: str) -> str:
        """Commit a code change (and a requirement added, if given); returns the new greeting."""
        self.n += 1
        files.setdefault(self.version, greeting_file(f"{self.path.name} {self.n}"))
        if requirement:
            files["requirements.txt"] = self.requirements + requirement + "\n"
        for name, text in files.items():
            (self.path / name).write_text(text)
        sh("git", "commit", "-qam", f"change {self.n}", cwd=self.path)
        return self.greeting()

    def sha(self) -> str:
        return sh("git", "rev-parse", "HEAD", cwd=self.path).strip()

    def push(self, *args: str, check: bool = True) -> str:
        return sh("git", "push", "-f", "origin", *(args or ("main",)), cwd=self.path, check=check)


def env_file(shared: Path) -> None:
    """The app's settings, as an operator writes them: SQLite in shared/, a secret key."""
    shared.mkdir(parents=True, exist_ok=True)
    (shared / ".env").write_text(
        f"DATABASE_URL=sqlite:///{shared / 'db.sqlite3'}\nSECRET_KEY=bench-{os.urandom(8).hex()}\n"
    )


# --- baseline: the classic script deploy --------------------------------------------


class Baseline:
    """bench/baseline.sh deploying the example app to a directory, gunicorn on a free port."""

    def __init__(self, base: Path) -> None:
        self.dir = base / "deploy"
        self.repo = base / "app.git"
        self.port = free_port()
        sh("git", "init", "-q", "--bare", self.repo)
        env_file(self.dir / "shared")
        self.clone = Clone(base / "clone", self.repo)
        cleanups.append(self.stop)

    def deploy(self) -> str:
        """git push, then the script (as its user runs it), until the new code is served."""
        self.clone.push()
        sh("bash", HERE / "baseline.sh", self.dir, self.repo, "main", self.port)
        wait_served(self.port, self.clone.greeting())
        return self.clone.greeting()

    def prune(self) -> None:
        """Remove the releases but the live one (untimed: the disk, and the final clean-up)."""
        live = (self.dir / "current").resolve()
        for release in (self.dir / "releases").iterdir():
            if release != live:
                shutil.rmtree(release, ignore_errors=True)

    def stop(self) -> None:
        pidfile = self.dir / "gunicorn.pid"
        try:
            pid = int(pidfile.read_text())
        except (OSError, ValueError):
            return
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


# --- shipyard -----------------------------------------------------------------------


class Shipyard:
    """A deploy root with the example app (``shipyard init``), and a clone pushing to it."""

    def __init__(self, base: Path, keep: int = 5) -> None:
        self.root = base / "apps"
        self.port = free_port()
        as_root = ["--allow-root"] if os.geteuid() == 0 else []  # a throwaway bench host
        sh(
            BIN / "shipyard",
            "--root",
            self.root,
            "init",
            "mysite",
            "--port",
            str(self.port),
            *as_root,
        )
        self.dir = self.root / "mysite"
        config = self.dir / "shipyard.toml"
        config.write_text(config.read_text().replace("keep = 5", f"keep = {keep}"))
        env_file(self.dir / "shared")
        cleanups.append(self.stop)
        self.clone = Clone(base / "clone", self.dir / "repo.git")

    def push(self, *args: str) -> str:
        out = self.clone.push(*args)
        if "shipyard ▸ live" not in out:
            sys.exit(f"bench: deploy failed:\n{out}")
        return out

    def deploy(self, *args: str) -> None:
        """git push (the deploy runs in it), until the new code is served."""
        self.push(*args)
        wait_served(self.port, self.clone.greeting())

    def last(self) -> dict:
        lines = (self.dir / "deploys" / "deploys.jsonl").read_text().splitlines()
        return json.loads(lines[-1])

    def live_greeting(self) -> str:
        text = (self.dir / "current" / "mysite" / "version.py").read_text()
        return text.split("=", 1)[1].strip().strip('"')

    def stop(self) -> None:
        stop_processes(self.root, "mysite")


def bench_redeploys(work: Path) -> dict:
    """Code-only and changed-requirement redeploys, the baseline's and shipyard's in turns.

    One baseline deploy, one shipyard deploy, the order alternating from run to run: both see
    the same machine, whatever else it is doing, so their ratio holds even when the absolute
    times do not.
    """
    print("\nredeploys, push → new code served: the baseline (bench/baseline.sh: git archive,")
    print("python -m venv + pip, migrate, collectstatic, symlink, gunicorn stop/start) and")
    print("shipyard (Django + gunicorn under supervisord, uv's cache warm), in turns")
    b = Baseline(work / "baseline")
    app = Shipyard(work / "shipyard", keep=3 * RUNS + 5)
    b.deploy()  # first deploys: the databases, pip's and uv's caches
    first = [timed(app.deploy)]
    times: dict[str, list[float]] = {"base code": [], "code": [], "base reqs": [], "reqs": []}
    phases = []
    for i in range(RUNS):
        for who in (b, app) if i % 2 == 0 else (app, b):
            who.clone.change()
            if who is b:
                times["base code"].append(timed(b.deploy))
                b.prune()
                continue
            sh("git", "tag", "-a", f"v{i}", "-m", f"v{i}", cwd=app.clone.path)
            times["code"].append(timed(app.deploy))
            phases.append(app.last()["phases"])
    for i in range(RUNS):
        for who in (app, b) if i % 2 == 0 else (b, app):
            who.clone.change(requirement=changed_requirement(i))
            times["reqs" if who is app else "base reqs"].append(timed(who.deploy))
            b.prune()
    b.stop()
    base = {
        "code": row("baseline", "baseline: code-only deploy", times["base code"])["median"],
        "reqs": row("baseline", "baseline: changed-requirement deploy", times["base reqs"])[
            "median"
        ],
    }
    for key, name, goal_text, wanted in (
        ("code", "code-only", "code-only redeploy ≥ 10× faster than the baseline", 10),
        ("reqs", "changed-requirement", "changed-requirement redeploy ≥ 3× faster", 3),
    ):
        entry = row(
            "shipyard", f"{name} redeploy", times[key], base[key], base_name=f"baseline {name}"
        )
        speed = base[key] / entry["median"]
        goal(goal_text, f"{speed:.1f}×", speed >= wanted)
    return {"app": app, "base": base, "first": first, "phases": phases, "served": times["code"]}


def bench_shipyard(work: Path, found: dict) -> None:
    """Pinned push, rollback, a failing deploy and first deploys, after the redeploys."""
    print("\nshipyard: more ways to go live (ratios to the baseline code-only deploy)")
    app, code_base, first = found["app"], found["base"]["code"], found["first"]
    vs = "baseline code-only"
    pinned = []
    for i in range(RUNS):
        greeting = greeting_file(f"clone {i + 1}").split("=", 1)[1].strip().strip('"')
        t0 = time.perf_counter()
        out = app.push(f"v{i}:main")
        wait_served(app.port, greeting)
        pinned.append(time.perf_counter() - t0)
        if "reused releases/" not in out:
            sys.exit(f"bench: pinned push of v{i} did not reuse its release:\n{out}")
    rollback = []
    for _ in range(RUNS):
        t0 = time.perf_counter()
        sh(BIN / "shipyard", "--root", app.root, "rollback", "mysite")
        wait_served(app.port, app.live_greeting())
        rollback.append(time.perf_counter() - t0)
    failed = []
    settings = (app.clone.path / "mysite" / "settings.py").read_text()
    for i in range(RUNS):
        before = serving(app.port)
        app.clone.change(
            **{"mysite/settings.py": settings + f'raise RuntimeError("bench: broken build {i}")\n'}
        )
        t0 = time.perf_counter()
        out = app.clone.push(check=False)
        failed.append(time.perf_counter() - t0)
        if "failed at build" not in out or serving(app.port) != before:
            sys.exit(f"bench: the failing deploy did not fail at build, old code served:\n{out}")
        sh("git", "reset", "-q", "--hard", "HEAD~1", cwd=app.clone.path)
    for i in range(RUNS - 1):
        fresh = Shipyard(work / f"first-{i}")
        first.append(timed(fresh.deploy))
        fresh.stop()

    row("shipyard", "first deploy (new deploy root)", first, code_base, base_name=vs)
    row("shipyard", "pinned push of a kept release", pinned, code_base, base_name=vs)
    row("shipyard", "rollback (command → old code served)", rollback, code_base, base_name=vs)
    row(
        "shipyard",
        "failing build: push returns, old release serving",
        failed,
        code_base,
        base_name=vs,
    )


# --- with processes: zero downtime --------------------------------------------------


DOMAIN = "www.bench.test"  # served by nginx on loopback, with a certificate of a CA made here


def front_door(work: Path, app: Shipyard):
    """Debian's nginx in front of ``app`` (tests/frontdoor.py), HTTPS with a self-made CA's
    certificate for DOMAIN installed by `shipyard tls --certificate`; (nginx, the CA)."""
    from frontdoor import Nginx, make_ca

    nginx = Nginx(work / "nginx", home=work).start()
    cleanups.append(nginx.stop)
    with open(app.dir / "shipyard.toml", "a") as f:
        f.write(nginx.proxy_table())
    ca, cert, key = make_ca(work / "ca", DOMAIN)
    shipyard = [BIN / "shipyard", "--root", app.root]
    sh(*shipyard, "domains", "mysite", "add", DOMAIN)
    sh(*shipyard, "tls", "mysite", "--certificate", cert, "--key", key)
    return nginx, ca


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else 0.0


def bench_processes(work: Path, base: dict[str, float] | None) -> None:
    """Push → served, and what users see during the deploys: failed requests and latency,
    direct to the app's port and through nginx over HTTPS, two loads side by side."""
    from frontdoor import https_fetch

    deploys = max(3, RUNS)
    print(f"\nwith processes: {deploys} deploys (one with a changed requirement) under two loads")
    print(
        "of ~50 requests/s each on loopback, direct and via nginx + HTTPS; push → new code served"
    )
    app = Shipyard(work / "processes")
    app.deploy()
    nginx, ca = front_door(work / "processes", app)

    def via_proxy() -> tuple[int, str]:
        status, _headers, body = https_fetch(nginx.https_port, DOMAIN, ca, timeout=30)
        return status, body

    loads = {
        "direct": Load(app.port, seconds=120, limit=6000),
        "nginx + HTTPS": Load(nginx.https_port, seconds=120, limit=6000, get=via_proxy),
    }
    threads = [threading.Thread(target=load.run, daemon=True) for load in loads.values()]
    for thread in threads:
        thread.start()
    served = []
    try:
        time.sleep(1)
        for i in range(deploys):
            app.clone.change(requirement="python-dotenv>=1.0" if i == 1 else None)
            served.append(timed(app.deploy))
        time.sleep(1)
    finally:
        for load in loads.values():
            load.stop.set()
        for thread in threads:
            thread.join(timeout=60)
    app.stop()
    row(
        "processes",
        "push → new code served, under load",
        served,
        base["code"] if base else None,
        base_name="baseline code-only",
    )
    for how, load in loads.items():
        failed = load.failures()
        total = len(load.results)
        name = "requests failed under load" if how == "direct" else f"requests failed, {how}"
        row(
            "processes",
            f"{name} ({total} sent)",
            [len(failed)],
            unit="failed",
            goal="0 failed",
            met=not failed,
        )
        ok = [r[1] * 1000 for r in load.results if r[2] == 200]
        for p in (50, 99):
            row("processes", f"latency p{p} during deploys, {how}", [round(percentile(ok, p), 1)],
                unit="ms")  # fmt: skip
        what = "during deploys under load" + ("" if how == "direct" else f" ({how})")
        goal(f"0 failed requests {what}", f"{len(failed)} of {total}", not failed)
        for when, _, status, _ in failed[:5]:
            print(f"    {how}: failed at {when:.2f}s: {status}")


# --- many hosts ---------------------------------------------------------------------


def stop_processes(root: Path, app: str) -> None:
    """Stop an app's supervisord and what it runs (the peers' go with their namespaces)."""
    if (root / app / "run" / "supervisord.conf").exists():
        sh(BIN / "shipyard", "--root", root, "processes", app, "--stop", check=False)


def sent_bytes(line: str) -> float:
    """The bytes of a peer's ``✓ objects … 8 objects, 1.2 KiB sent`` line."""
    number, unit = line.split(",")[1].split()[:2]
    return float(number) * {"B": 1, "KiB": 1024, "MiB": 1 << 20}[unit]


HELLO = HERE / "hello"  # the smallest WSGI app (see its docstring)


def bench_hosts(work: Path) -> None:
    """1/2/4/8 hosts, each peer a network namespace with its own receiver and supervisord.

    Measured twice: with the Django example, and with the smallest WSGI app. All the hosts
    share this machine's cores, so with Django eight app boots at once compete for them; the
    small app shows what shipyard itself adds per host, as on separate machines.
    """
    import netns

    print("\nmany hosts (peers in network namespaces, code-only change)")
    why = netns.available()
    if why:
        print(f"  skipped: {why}")
        goal("8 hosts ≤ 1.5× one host", f"not measured: {why}", None)
        return
    net = netns.Net()
    cleanups.append(net.close)
    for source, label in ((HELLO, "small app"), (EXAMPLE, "Django example")):
        cluster = netns.Cluster(net, work / f"hosts-{source.name}", BIN, app=source.name)
        peers = [cluster.add_peer(join=False) for _ in range(7)]
        cleanups.append(lambda root=cluster.root, app=source.name: stop_processes(root, app))
        env_file(cluster.dir / "shared")
        hosts_of(
            cluster,
            peers,
            Clone(work / f"hosts-clone-{source.name}", cluster.dir / "repo.git", source),
            label,
        )
        stop_processes(cluster.root, source.name)
    net.close()  # the peers' receivers and gunicorns: the next sections get the cores back


def pushed(clone: Clone) -> str:
    out = clone.push()
    if "shipyard ▸ live" not in out:
        sys.exit(f"bench: deploy failed:\n{out}")
    return out


def by_host_count(
    cluster, peers: list, clone: Clone, counts: tuple[int, ...], cpu: dict | None = None
) -> tuple[dict[int, list[float]], dict[int, list[float]]]:
    """Code-only deploys to the first ``n`` hosts for each count: seconds and switch skews.

    Round-robin over the counts, so load drifting over the run hits every count alike. With
    ``cpu`` (a dict), also the CPU each deploy took, once its worker has finished too:
    ``cpu[n]`` lists (the rest of the machine, every receiver) in seconds per deploy.
    """
    import netns

    netns.set_config(cluster.config, peers=[p.address for p in peers])
    pushed(clone)  # every host builds its virtualenv once
    samples: dict[int, list[float]] = {n: [] for n in counts}
    skews: dict[int, list[float]] = {n: [] for n in counts}
    for _ in range(RUNS):
        for hosts in counts:
            netns.set_config(cluster.config, peers=[p.address for p in peers[: hosts - 1]])
            clone.change()
            before = machine_cpu(), sum(map(process_cpu, peers))
            t0 = time.perf_counter()
            out = pushed(clone)
            samples[hosts].append(time.perf_counter() - t0)
            if cpu is not None:
                settled()
                receivers = sum(map(process_cpu, peers)) - before[1]
                cpu.setdefault(hosts, []).append((machine_cpu() - before[0] - receivers, receivers))
            skews[hosts] += [
                float(line.split("switch skew")[1].split()[0])
                for line in out.splitlines()
                if "switch skew" in line
            ]
    return samples, skews


def machine_cpu() -> float:
    """Seconds of CPU the whole machine has been busy (every core: not idle, not waiting)."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def process_cpu(peer) -> float:
    """Seconds of CPU a peer's receiver has used, with the children it waited for (git)."""
    with open(f"/proc/{peer.proc.pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def settled(limit: float = 5.0) -> None:
    """Until the machine is quiet (under a tenth of a core for 50 ms): the push's worker has
    finished what it does after the answer (the spare, git gc), and its CPU is counted."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        start = machine_cpu()
        time.sleep(0.05)
        if machine_cpu() - start < 0.005:
            return


def hosts_of(cluster, peers: list, clone: Clone, label: str) -> None:
    """The rows for one app: deploy time by host count, bytes per peer, switch skew."""

    counts = (1, 2, 4, 8)
    samples, skews = by_host_count(cluster, peers, clone, counts)
    group = f"hosts, {label}"
    base = row(group, "code-only deploy, 1 host", samples[1])["median"]
    eight = statistics.median(samples[8]) / base
    for hosts in counts[1:]:
        row(
            group,
            f"code-only deploy, {hosts} hosts",
            samples[hosts],
            base,
            goal="≤ 1.5× of 1 host" if hosts == 8 else "",
            met=eight <= 1.5 if hosts == 8 else None,
            base_name="1 host",
        )
    goal(f"8 hosts ≤ 1.5× one host ({label})", f"{eight:.2f}×", eight <= 1.5)
    sent: list[float] = []
    for _ in range(RUNS):  # every peer has the previous commit: one change's worth
        clone.change()
        sent += [sent_bytes(line) for line in pushed(clone).splitlines() if "✓ objects" in line]
    row(group, "objects sent per peer, one-line change", sent, unit="B")
    for hosts in counts[1:]:
        row(
            group,
            f"switch skew, {hosts} hosts (first to last)",
            skews[hosts],
            unit="ms",
            goal="< 200 ms" if hosts == 8 else "",
            met=max(skews[hosts]) < 200 if hosts == 8 else None,
        )
    worst = max(skews[8])
    goal(f"switch skew, 8 hosts < 200 ms ({label})", f"{worst:.0f} ms (worst)", worst < 200)


# --- Capistrano, over the same sshd ------------------------------------------------

CAPISTRANO = HERE / "capistrano"  # Capfile, config/deploy.rb: a standard recipe


def have_capistrano() -> str | None:
    """None when `cap` can run; else why not. Installs Debian's package when missing (root)."""
    if shutil.which("cap"):
        return None
    if os.geteuid() != 0:
        return "capistrano is not installed (apt-get install capistrano, as root)"
    print("  installing Debian's capistrano package (apt-get)", flush=True)
    env = {**ENV, "DEBIAN_FRONTEND": "noninteractive"}
    sh("apt-get", "update", "-qq", env=env, check=False)
    out = sh("apt-get", "install", "-y", "-qq", "capistrano", env=env, check=False)
    return None if shutil.which("cap") else f"apt-get could not install capistrano: {out[-300:]}"


class SshHost:
    """A private sshd on loopback with two throw-away users: one provisioned for shipyard
    (docs/server.md: `shipyard provision`, keys with the forced command), one plain account
    with a shell for Capistrano. Both removed at the end (tests/e2e/test_ssh.py's way)."""

    def __init__(self, base: Path) -> None:
        from conftest import remove_user
        from test_ssh import SSHD, keygen, sshd_config

        self.base = base
        base.mkdir(parents=True)
        suffix = os.urandom(3).hex()
        self.ship, self.cap = f"sybench{suffix}", f"sybcap{suffix}"
        self.port = free_port()
        self.keys = {name: keygen(base / name, f"{name}@bench") for name in ("alice", "cap")}
        keygen(base / "ssh_host_ed25519_key", "bench-host")
        config = sshd_config(base, self.port, self.ship).replace(
            f"AllowUsers {self.ship}", f"AllowUsers {self.ship} {self.cap}"
        )
        (base / "sshd_config").write_text(config)
        for user in (self.ship, self.cap):
            cleanups.append(lambda user=user: remove_user(user))
        sh(BIN / "shipyard", "provision", "--user", self.ship, "--app", "mysite",
           f"--key=alice={self.keys['alice']}.pub")  # fmt: skip
        self.app_dir = Path(f"/home/{self.ship}/apps/mysite")
        self.web_port = free_port()
        toml = self.app_dir / "shipyard.toml"
        text = re.sub(r"(?m)^port = \d+$", f"port = {self.web_port}", toml.read_text())
        toml.write_text(re.sub(r"(?m)^keep = \d+$", f"keep = {RUNS + 3}", text))
        self.as_user(self.ship, "mkdir", "-p", self.app_dir / "shared")
        shared = self.app_dir / "shared"  # SQLite in it: DATABASE_URL of the host's path
        (base / "ship.env").write_text(
            f"DATABASE_URL=sqlite:///{shared / 'db.sqlite3'}\nSECRET_KEY=bench-ship\n"
        )
        sh("install", "-o", self.ship, "-m", "600", base / "ship.env", shared / ".env")
        sh("useradd", "-m", "-s", "/bin/bash", self.cap)
        sh("usermod", "-p", "*", self.cap)  # no password, yet not locked (sshd without PAM)
        home = Path(f"/home/{self.cap}")
        (home / ".ssh").mkdir(mode=0o700, exist_ok=True)
        (home / ".ssh" / "authorized_keys").write_text(Path(f"{self.keys['cap']}.pub").read_text())
        sh("chown", "-R", f"{self.cap}:{self.cap}", home / ".ssh")
        self.as_user(self.cap, "git", "init", "-q", "--bare", home / "origin.git")
        self.cap_to = home / "deploy"
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self.log = open(base / "sshd.log", "wb")  # noqa: SIM115 - closed in stop()
        self.sshd = subprocess.Popen(
            [str(SSHD), "-D", "-f", str(base / "sshd_config"), "-e"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        cleanups.append(self.stop)
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            if self.sshd.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"bench: sshd did not start:\n{(base / 'sshd.log').read_text()}")
            time.sleep(0.05)

    def as_user(self, user: str, *args: str | Path) -> str:
        return sh("runuser", "-u", user, "--", *args, cwd=Path("/"))

    def ssh_command(self, key: str) -> str:
        return (
            f"ssh -i {self.keys[key]} -p {self.port} -o IdentitiesOnly=yes -o BatchMode=yes "
            "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
        )

    def ssh(self, key: str, user: str, *command: str) -> str:
        return sh(*self.ssh_command(key).split(), f"{user}@127.0.0.1", *command)

    def stop(self) -> None:
        if self.sshd.poll() is None:
            self.sshd.terminate()
            try:
                self.sshd.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.sshd.kill()
        self.log.close()


class Versus:
    """One clone of the example app, pushed to shipyard and to Capistrano's origin."""

    def __init__(self, work: Path, host: SshHost) -> None:
        self.host = host
        ship_url = f"ssh://{host.ship}@127.0.0.1:{host.port}/~/apps/mysite/repo.git"
        self.clone = Clone(work / "clone", ship_url)
        with open(self.clone.path / "shipyard.toml", "a") as toml:  # no app server on either side
            toml.write("\n[processes]\nweb = 0\n")
        sh("git", "commit", "-qa", "--amend", "--no-edit", cwd=self.clone.path)
        sh("git", "remote", "add", "cap", f"ssh://{host.cap}@127.0.0.1:{host.port}/~/origin.git",
           cwd=self.clone.path)  # fmt: skip
        self.bare: list[float] = []  # the push to Capistrano's origin: a bare git push

    def git_push(self, remote: str, key: str, *args: str) -> str:
        env = {**ENV, "GIT_SSH_COMMAND": self.host.ssh_command(key)}
        return sh("git", "push", "-f", remote, *(args or ("main",)), cwd=self.clone.path, env=env)

    def shipyard(self) -> None:
        """git push over ssh; the deploy runs in it (no processes: ``web = 0``)."""
        out = self.git_push("origin", "alice")
        if "shipyard ▸ live" not in out:
            sys.exit(f"bench: deploy over ssh failed:\n{out}")

    def cap_env(self) -> dict:
        shared = self.host.cap_to / "shared"
        return {
            **ENV,
            "CAP_REPO": f"/home/{self.host.cap}/origin.git",
            "CAP_DEPLOY_TO": str(self.host.cap_to),
            "CAP_USER": self.host.cap,
            "CAP_PORT": str(self.host.port),
            "CAP_KEY": str(self.host.keys["cap"]),
            "CAP_DATABASE_URL": f"sqlite:///{shared / 'db.sqlite3'}",
            "CAP_KEEP": str(RUNS + 3),
            "CAP_LOG": str(self.host.base / "capistrano.log"),
        }

    def capistrano(self, *task: str) -> None:
        """git push to the origin, then `cap bench deploy` (what a Capistrano user runs)."""
        if not task:
            self.bare.append(timed(lambda: self.git_push("cap", "cap")))
        sh("cap", "bench", *(task or ("deploy",)), cwd=CAPISTRANO, env=self.cap_env())

    def cap_shared(self) -> None:
        """What `cap deploy:check` wants before a first deploy: the shared `.env`, by hand."""
        shared = self.host.cap_to / "shared"
        self.host.as_user(self.host.cap, "mkdir", "-p", shared / "media")
        text = f"DATABASE_URL=sqlite:///{shared / 'db.sqlite3'}\nSECRET_KEY=bench-cap\n"
        (self.host.base / "cap.env").write_text(text)
        sh("install", "-o", self.host.cap, "-m", "600", self.host.base / "cap.env", shared / ".env")


def bench_capistrano(work: Path) -> dict:
    """Capistrano 3 and shipyard deploying the same commits of the example app over the same
    sshd, in turns: first deploy, code-only redeploy, changed requirement, rollback."""
    print("\nCapistrano 3 (Debian's package, bench/capistrano/) against shipyard over the same")
    print("loopback sshd, the example app, no app server restart on either side, in turns")

    sys.path.insert(0, str(TOP / "tests" / "e2e"))
    why = None if os.geteuid() == 0 else "needs root (a private sshd, throw-away users)"
    why = why or (None if Path("/usr/sbin/sshd").exists() else "openssh-server not installed")
    why = why or have_capistrano()
    if why:
        print(f"  skipped: {why}")
        return {"skipped": why}
    host = SshHost(work / "ssh")
    v = Versus(work / "versus", host)
    v.cap_shared()
    times: dict[str, list[float]] = {k: [] for k in ("first", "code", "reqs", "rollback")}
    cap: dict[str, list[float]] = {k: [] for k in ("first", "code", "reqs", "rollback")}
    times["first"].append(timed(v.shipyard))
    cap["first"].append(timed(v.capistrano))
    for kind, runs in (("code", RUNS), ("reqs", RUNS)):
        for i in range(runs):
            v.clone.change(requirement=changed_requirement(i) if kind == "reqs" else None)
            turns = (("ship", v.shipyard), ("cap", v.capistrano))
            for who, fn in turns if i % 2 == 0 else turns[::-1]:
                (times if who == "ship" else cap)[kind].append(timed(fn))
    for i in range(RUNS):
        turns = (
            ("ship", lambda: host.ssh("alice", host.ship, "shipyard", "rollback", "mysite")),
            ("cap", lambda: v.capistrano("deploy:rollback")),
        )
        for who, fn in turns if i % 2 == 0 else turns[::-1]:
            (times if who == "ship" else cap)["rollback"].append(timed(fn))
    names = {
        "first": "first deploy",
        "code": "code-only redeploy",
        "reqs": "changed-requirement redeploy",
        "rollback": "rollback",
    }
    base = {k: row("capistrano", f"Capistrano: {n}", cap[k])["median"] for k, n in names.items()}
    found = {}
    for key, name in names.items():
        entry = row("capistrano", f"shipyard over ssh: {name}", times[key], base[key],
                    base_name=f"Capistrano {name}")  # fmt: skip
        found[key] = base[key] / entry["median"]
    bare = row("capistrano", "bare git push over the same ssh", v.bare)["median"]
    found["push_minus_bare"] = statistics.median(times["code"]) - bare
    return found


# --- coordination alone, many hosts ------------------------------------------------


def bench_coordination(work: Path) -> float | None:
    """1, 8, 16 and 32 hosts with no processes: prepare and switch only, what shipyard adds.

    The smallest app with ``web = 0``: no host boots anything, so the ratio is the
    coordination's (objects, prepare on every peer in parallel, the switch fanned out).
    """
    import netns

    counts = (1, 8, 16, 32)
    print(f"\ncoordination: {'/'.join(map(str, counts))} hosts, no processes (prepare + switch)")
    why = netns.available()
    if why:
        print(f"  skipped: {why}")
        return None
    source = work / "coord-app"
    shutil.copytree(HELLO, source, ignore=example_files)
    (source / "shipyard.toml").write_text("[processes]\nweb = 0\n")
    net = netns.Net()
    cleanups.append(net.close)
    cluster = netns.Cluster(net, work / "coord", BIN, app=source.name)
    peers = [cluster.add_peer(join=False) for _ in range(counts[-1] - 1)]
    clone = Clone(work / "coord-clone", cluster.dir / "repo.git", source)

    cpu: dict[int, list[tuple[float, float]]] = {}
    samples, skews = by_host_count(cluster, peers, clone, counts, cpu)
    group = "coordination, no processes"
    base = row(group, "code-only deploy, 1 host", samples[1])["median"]
    for hosts in counts[1:]:
        row(group, f"code-only deploy, {hosts} hosts", samples[hosts], base, base_name="1 host")
    for hosts in counts[1:]:
        row(group, f"switch skew, {hosts} hosts (first to last)", skews[hosts], unit="ms")
    # What this machine can show of 32 separate hosts: its 31 receivers share these cores
    # here, so the wall above adds up their CPU; on separate hosts each peer's prepare and
    # switch runs on its own cores, in parallel, and the primary's side is what grows.
    primary = {n: [round(rest * 1000) for rest, _ in cpu[n]] for n in counts}
    one = row(group, "CPU per deploy but the receivers', 1 host", primary[1], unit="ms")["median"]
    for hosts in counts[1:]:
        label = f"CPU per deploy but the receivers', {hosts} hosts"
        row(group, label, primary[hosts], one, base_name="1 host", unit="ms")
    for hosts in counts[1:]:
        each = [round(mine * 1000 / (hosts - 1), 1) for _, mine in cpu[hosts]]
        row(group, f"receiver CPU per peer and deploy, {hosts} hosts", each, unit="ms")
    return statistics.median(samples[counts[-1]]) / base


def bench_boot(app: Shipyard) -> float:
    """The app's own boot: gunicorn started by hand in the live release until it answers."""
    print("\nthe app's boot, by hand: gunicorn in the live release, start → first answer")
    current = app.dir / "current"
    env = {
        **ENV,
        **dict(
            line.split("=", 1)
            for line in (app.dir / "shared" / ".env").read_text().splitlines()
            if "=" in line
        ),
    }
    env["SHIPYARD_SHARED"] = str(app.dir / "shared")
    boots = []
    for _ in range(RUNS):
        port = free_port()
        t0 = time.perf_counter()
        gunicorn = subprocess.Popen(
            [current / ".venv" / "bin" / "gunicorn", "mysite.wsgi", "--workers", "2",
             "--bind", f"127.0.0.1:{port}"],
            cwd=current, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + SERVE_TIMEOUT
            while not serving(port):
                if gunicorn.poll() is not None or time.monotonic() > deadline:
                    sys.exit("bench: gunicorn started by hand never answered")
                time.sleep(0.005)
            boots.append(time.perf_counter() - t0)
        finally:
            gunicorn.terminate()
            gunicorn.wait(timeout=30)
    return row("processes", "the app's boot (gunicorn by hand → first answer)", boots)["median"]


def bench_checkout_change(work: Path) -> float:
    """release.checkout of a one-file change in a 20,000-file repo, against a full checkout.

    As a push runs it: each release made live, then ``engine.tidy`` (what the worker runs
    once the push has its answer) prepares the spare that the next checkout starts from. Its
    hard link per file is off the push's path; its own row says what it costs there.
    """
    from types import SimpleNamespace

    from shipyard import engine, release
    from shipyard.app import App

    files = 20000
    print(f"\ncheckout: one file changed in a {files:,}-file repo (release.checkout)")
    src = work / "co-20k"
    make_tree(src, files)
    app = App.at("big", work / "co-apps")
    app.releases.mkdir(parents=True)
    sh("git", "clone", "-q", "--bare", src, app.repo)

    def release_of(n: int) -> tuple[str, Path]:
        if n:
            (src / "pkg0" / "sub0" / "mod0.py").write_text(f"VALUE = {n}\n")
            sh("git", "commit", "-qam", f"change {n}", cwd=src)
            sh("git", "push", "-q", app.repo, "main", cwd=src)
        sha = sh("git", "rev-parse", "HEAD", cwd=src).strip()
        return sha, app.release_dir(release.new_release_id(sha, time.time() + 3600 * n))

    def live(sha: str, path: Path) -> None:
        release.Manifest(sha=sha, ref="refs/heads/main", release=path.name, deploy=0,
                         pusher="bench", created=time.time()).save(path)  # fmt: skip
        release.switch(app, path.name)

    full, changed, spare = [], [], []
    for n in range(RUNS + 1):
        sha, path = release_of(n)
        took = timed(lambda s=sha, p=path: release.checkout(app, s, p.name))
        (changed if n else full).append(took)
        live(sha, path)
        after = SimpleNamespace(app=app, number=n, trash=[])  # what tidy reads of a Deploy
        spare.append(timed(lambda d=after: engine.tidy(d)))
        if n:  # a full checkout of the same commit, for the ratio
            tmp = work / f"co-full-{n}"
            tmp.mkdir()
            full.append(timed(lambda s=sha, t=tmp: release.archive_into(app, s, t)))
            shutil.rmtree(tmp)
    base = row("checkout", f"full checkout, {files:,} files (git archive | tar)", full)["median"]
    entry = row("checkout", f"checkout, one file changed, {files:,} files", changed, base,
                base_name="full checkout")  # fmt: skip
    row("checkout", "after the answer: the spare for the next push (engine.tidy)", spare)
    return entry["median"]


# --- details: how the pieces compare ----------------------------------------------


def make_tree(path: Path, files: int) -> str:
    """A repo of ``files`` small Python files in nested dirs; returns its HEAD sha."""
    sh("git", "init", "-q", "-b", "main", path)
    for i in range(files):
        d = path / f"pkg{i % 20}" / f"sub{i % 7}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"mod{i}.py").write_text(f"VALUE = {i}\n" * 40)
    sh("git", "add", "-A", cwd=path)
    sh("git", "commit", "-qm", "tree", cwd=path)
    return sh("git", "rev-parse", "HEAD", cwd=path).strip()


def checkout_archive(repo: Path, sha: str, dest: Path) -> None:
    dest.mkdir()
    archive = subprocess.Popen(
        ["git", "--git-dir", str(repo), "archive", sha], stdout=subprocess.PIPE
    )
    subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout, check=True)
    archive.stdout.close()
    archive.wait()


def checkout_index(repo: Path, sha: str, dest: Path) -> None:
    dest.mkdir()
    env = {**ENV, "GIT_INDEX_FILE": str(dest.parent / f"{dest.name}.index")}
    base = ["git", "--git-dir", str(repo), "--work-tree", str(dest)]
    subprocess.run([*base, "read-tree", sha], env=env, check=True)
    subprocess.run([*base, "checkout-index", "-a", "-f"], env=env, check=True)
    os.unlink(env["GIT_INDEX_FILE"])


def checkout_dulwich(repo: Path, sha: str, dest: Path) -> None:
    from dulwich.index import build_index_from_tree
    from dulwich.repo import Repo

    dest.mkdir()
    r = Repo(str(repo))
    index = dest.parent / f"{dest.name}.index"
    build_index_from_tree(str(dest), str(index), r.object_store, r[sha.encode()].tree)
    index.unlink()


def bench_checkout(work: Path) -> None:
    print("\ndetail: checkout methods (materialise one commit, no .git)")
    trees = {"example app": None, "3,000 files": 3000}
    methods = {
        "git archive | tar": checkout_archive,
        "read-tree + checkout-index": checkout_index,
        "dulwich build_index_from_tree": checkout_dulwich,
    }
    for label, files in trees.items():
        src = work / f"tree-{files or 'example'}"
        if files:
            sha = make_tree(src, files)
        else:
            shutil.copytree(EXAMPLE, src, ignore=example_files)
            sh("git", "init", "-q", "-b", "main", cwd=src)
            sh("git", "add", "-A", cwd=src)
            sh("git", "commit", "-qm", "x", cwd=src)
            sha = sh("git", "rev-parse", "HEAD", cwd=src).strip()
        repo = src / ".git"
        base = None
        for name, fn in methods.items():
            samples = []
            for i in range(RUNS):
                dest = work / f"co-{label[:3]}-{name[:5]}-{i}"
                samples.append(timed(lambda d=dest, f=fn, r=repo, s=sha: f(r, s, d)))
                shutil.rmtree(dest)
            entry = row(
                "checkout", f"{label}: {name}", samples, base, base_name="git archive | tar"
            )
            base = base or entry["median"]


def bench_venv(work: Path) -> None:
    print("\ndetail: virtualenv build, example requirements (uv's cache is warm)")
    req = EXAMPLE / "requirements.txt"
    uv = str(BIN / "uv")

    def with_uv(dest: Path) -> None:
        sh(uv, "venv", "-q", "--relocatable", "--python", sys.executable, dest)
        sh(uv, "pip", "install", "-q", "--python", dest / "bin" / "python", "-r", req)

    def with_pip(dest: Path) -> None:
        sh(sys.executable, "-m", "venv", dest)
        sh(dest / "bin" / "python", "-m", "pip", "install", "-q", "-r", req)

    base = None
    builders = (("python -m venv + pip install", with_pip), ("uv venv + uv pip install", with_uv))
    for name, fn in builders:
        samples = []
        for i in range(RUNS):
            dest = work / f"venv-{name[:3]}-{i}"
            samples.append(timed(lambda d=dest, f=fn: f(d)))
            shutil.rmtree(dest)
        entry = row("venv", name, samples, base, base_name="pip")
        base = base or entry["median"]


# --- the results --------------------------------------------------------------------


def phase_medians(phases: list[dict]) -> dict[str, float]:
    """Median seconds per phase, in the order the phases run."""
    from shipyard.deploy import PHASES

    order = [p.name for p in PHASES]
    names = sorted(
        {n for p in phases for n in p},
        key=lambda n: (n not in order, order.index(n) if n in order else 0, n),
    )
    return {n: statistics.median(p.get(n, 0.0) for p in phases) for n in names}


def write_results(started: float, extra: dict) -> None:
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cores": os.cpu_count(),
        "load_average": round(os.getloadavg()[0], 2),
        "runs": RUNS,
        "seconds": round(time.monotonic() - started),
    }
    data = {"meta": meta, "rows": rows, "goals": goals, "measured": measured, **extra}
    (HERE / "results.json").write_text(json.dumps(data, indent=2) + "\n")
    lines = [
        "# shipyard benchmark",
        "",
        f"{meta['date']}, {meta['cores']} cores (load average {meta['load_average']} at the "
        f"end), median (min–max) of {RUNS} runs, {meta['seconds']} s in all. A ratio is the "
        "median over the median of the row it names (baseline rows: the classic script deploy, "
        "bench/baseline.sh; Capistrano rows: bench/capistrano/ over the same sshd; both "
        "measured in the same run). Written by `make bench`.",
        "",
        "| group | measurement | median | min–max | ratio | vs | goal |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for r in rows:
        suffix = {"s": "s", "B": " B", "ms": " ms"}.get(r["unit"], "")
        fig = (
            (lambda v, u=suffix: f"{v:.3f}{u}")
            if r["unit"] == "s"
            else (lambda v, u=suffix: f"{v:g}{u}")
        )
        verdict = "" if r["met"] is None else (" — met" if r["met"] else " — NOT MET")
        lines.append(
            f"| {r['group']} | {r['name']} | {fig(r['median'])} | "
            f"{fig(r['min'])}–{fig(r['max'])} | {format_ratio(r)} | {r.get('base', '')} | "
            f"{r['goal']}{verdict} |"
        )
    lines += ["", "## Goals (issue 18)", "", "| measurement | goal | figure | |"]
    lines += ["|---|---:|---:|---|"]
    lines += [f"| {t} | {g} | {f} | {v} |" for t, g, f, v in goal_lines()]
    lines += ["", "## Earlier goals (issue 9)", "", "| goal | figure | |", "|---|---|---|"]
    for g in goals:
        verdict = "not measured" if g["met"] is None else ("met" if g["met"] else "NOT MET")
        lines.append(f"| {g['goal']} | {g['figure']} | {verdict} |")
    if extra.get("code_only_phases"):
        lines += [
            "",
            "## Code-only redeploy, by phase",
            "",
            "Medians from `deploys/deploys.jsonl` of the code-only redeploys above (the rest of",
            "the push is git, the hooks and the worker starting: see docs/performance.md).",
            "",
            "| phase | median s |",
            "|---|---:|",
        ]
        lines += [f"| {n} | {v:.3f} |" for n, v in extra["code_only_phases"].items()]
    (HERE / "results.md").write_text("\n".join(lines) + "\n")


def wanted(section: str) -> bool:
    return not ONLY or section in ONLY


def goal_lines() -> list[tuple[str, str, str, str]]:
    """Issue 18's goals table: measurement, goal, figure, met / NOT MET / not measured."""
    lines = []
    for key, text, target, unit, test in GOALS:
        value = measured.get(key, "not run (BENCH_ONLY)")
        if isinstance(value, str):
            lines.append((text, target, "–", f"not measured: {value}"))
            continue
        figure = f"{value:.2f}×" if unit == "×" else f"{value:.3f} s"  # 19.96× is not 20×
        lines.append((text, target, figure, "met" if test(value) else "NOT MET"))
    return lines


def install_shipyard(work: Path) -> None:
    """Deploy with shipyard installed as docs/server.md installs it, not the editable checkout.

    An editable install's import finder costs every Python that shipyard starts on a push
    (the hooks, the launcher) ~10–25 ms that no user pays; the copy is built from this
    checkout, so the code measured is the code here. BENCH_INSTALLED=0 keeps the checkout's.
    """
    global BIN
    if os.environ.get("BENCH_INSTALLED") == "0":
        return
    from shipyard.provision.host import staged

    source, venv = work / "shipyard-source", work / "shipyard-venv"
    source.mkdir()
    uv, python = BIN / "uv", venv / "bin" / "python"
    sh(uv, "venv", "-q", "--python", sys.executable, venv)
    built = staged(str(TOP), source)
    sh(uv, "pip", "install", "-q", "--compile-bytecode", "--python", python, built)
    BIN = venv / "bin"
    ENV["PATH"] = f"{BIN}:{ENV['PATH']}"
    print(f"shipyard installed from this checkout into {venv} (BENCH_INSTALLED=0: the checkout's)")


def main() -> None:
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="shipyard-bench-"))
    try:
        install_shipyard(work)
        print(f"shipyard benchmark: median (min–max) of {RUNS} runs; ratio = median / its base")
        phases: dict[str, float] = {}
        if wanted("redeploys"):
            found = bench_redeploys(work)
            boot = bench_boot(found["app"])
            served = statistics.median(found["served"])
            measured["served_minus_boot"] = served - boot
            bench_shipyard(work, found)
            bench_processes(work, found["base"])
            phases = phase_medians(found["phases"])
        elif wanted("processes"):  # BENCH_ONLY=processes: zero downtime alone (no base ratio)
            bench_processes(work, None)
        if wanted("capistrano"):
            versus = bench_capistrano(work)
            for key in ("cap_code", "cap_reqs", "cap_rollback", "push_minus_bare"):
                measured[key] = versus.get(key[4:] if key.startswith("cap_") else key) or (
                    versus.get("skipped", "?")
                )
        if wanted("hosts"):
            bench_hosts(work)
        if wanted("coordination"):
            ratio = bench_coordination(work)
            measured["hosts32"] = ratio if ratio is not None else "no network namespaces here"
        if wanted("checkout"):
            measured["checkout"] = bench_checkout_change(work)
        if DETAILS:
            bench_checkout(work)
            bench_venv(work)
        print("\ngoals (issue 18)")
        for text, target, figure, verdict in goal_lines():
            print(f"  {text:<62} {target:>9} {figure:>9}  {verdict}")
        print("\nearlier goals (issue 9)")
        for g in goals:
            verdict = "not measured" if g["met"] is None else ("met" if g["met"] else "NOT MET")
            print(f"  {g['goal']:<52} {g['figure']:>28}  {verdict}")
        if phases:
            print("\ncode-only redeploy, median seconds by phase (deploys/deploys.jsonl)")
            print("  " + ", ".join(f"{n} {v:.3f}" for n, v in phases.items()))
        took = time.monotonic() - started
        if ONLY:  # a partial run: the recorded results stay those of the last full one
            print(f"\nnot written (BENCH_ONLY): bench/results.md stays as it was ({took:.0f}s)")
            return
        write_results(started, {"code_only_phases": phases})
        print(f"\nwritten: {HERE / 'results.md'}, {HERE / 'results.json'} ({took:.0f}s)")
    finally:
        for cleanup in reversed(cleanups):
            with contextlib.suppress(Exception):
                cleanup()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
