"""`make bench`: how fast shipyard ships the example app, measured side by side in one run.

Prints a table (median (min–max) of N runs) and writes bench/results.md and
bench/results.json (BENCH_ONLY=hosts,push runs only those sections). Machines are
noisy: read the ratios, not the absolutes.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
TOP = HERE.parent
EXAMPLE = TOP / "examples" / "mysite"
BIN = Path(sys.executable).parent
RUNS = int(os.environ.get("BENCH_RUNS", "5"))
ENV = {
    **os.environ,
    "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
    "GIT_AUTHOR_NAME": "Bench",
    "GIT_AUTHOR_EMAIL": "bench@localhost",
    "GIT_COMMITTER_NAME": "Bench",
    "GIT_COMMITTER_EMAIL": "bench@localhost",
    "NO_COLOR": "1",
}
rows: list[dict] = []


def sh(*args: str | Path, cwd: Path | None = None, env: dict | None = None) -> str:
    result = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env or ENV,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    if result.returncode:
        sys.exit(f"bench: {' '.join(map(str, args))} failed:\n{result.stdout}")
    return result.stdout


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


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
) -> dict:
    entry = {"group": group, "name": name, **summary(samples), "goal": goal, "met": met}
    if unit != "s":
        entry["unit"] = unit
    if base:
        entry["ratio"] = entry["median"] / base
    rows.append(entry)
    ratio = f"{entry['ratio']:.2f}×" if base else ""
    verdict = "" if met is None else ("met" if met else "NOT MET")
    number = "7.3f" if unit == "s" else "7.0f"
    print(
        f"  {name:<46} {entry['median']:{number}}{unit} "
        f"({entry['min']:{number[1:]}}–{entry['max']:{number[1:]}})"
        f" {ratio:>7}  {goal} {verdict}".rstrip(),
        flush=True,
    )
    return entry


class App:
    """A deploy root with the example app, and a clone with two remotes: deploying and plain."""

    def __init__(self, base: Path, name: str = "mysite") -> None:
        self.root = base / "apps"
        self.work = base / "work"
        as_root = ["--allow-root"] if os.geteuid() == 0 else []  # a throwaway bench host
        sh(BIN / "shipyard", "--root", self.root, "init", name, *as_root)
        self.plain = base / "plain.git"
        sh("git", "init", "-q", "--bare", self.plain)
        shutil.copytree(EXAMPLE, self.work, ignore=shutil.ignore_patterns("__pycache__", "static"))
        sh("git", "init", "-q", "-b", "main", cwd=self.work)
        sh("git", "add", "-A", cwd=self.work)
        sh("git", "commit", "-qm", "initial", cwd=self.work)
        sh("git", "remote", "add", "production", self.root / name / "repo.git", cwd=self.work)
        sh("git", "remote", "add", "plain", self.plain, cwd=self.work)
        self.n = 0

    def change(self, path: str = "mysite/version.py", text: str | None = None) -> None:
        self.n += 1
        target = self.work / path
        target.write_text(text if text is not None else f'GREETING = "Hello, bench {self.n}"\n')
        sh("git", "commit", "-qam", f"change {self.n}", cwd=self.work)

    def push(self, remote: str) -> str:
        out = sh("git", "push", remote, "main", cwd=self.work)
        if remote == "production" and "shipyard ▸ live" not in out:
            sys.exit(f"bench: deploy failed:\n{out}")
        return out


def bench_push(work: Path) -> None:
    print("\npush to live (example app, uv cache warm)")
    app = App(work / "push")
    app.push("plain")
    first = [timed(lambda: app.push("production"))]
    plain, code = [], []
    for _ in range(RUNS):
        app.change()
        plain.append(timed(lambda: app.push("plain")))
        code.append(timed(lambda: app.push("production")))
    base = row("push", "bare git push (hooks disabled)", plain)["median"]
    overhead = statistics.median(c - p for c, p in zip(code, plain, strict=True))
    row(
        "push",
        "code-only redeploy",
        code,
        base,
        goal=f"adds {overhead:.2f}s (goal < 1 s)",
        met=overhead < 1.0,
    )
    reqs = []
    original = (app.work / "requirements.txt").read_text()
    for i in range(RUNS):
        app.change("requirements.txt", original + f"six>=1.{10 + i}\n")
        reqs.append(timed(lambda: app.push("production")))
    row("push", "changed requirement redeploy", reqs, base)
    for i in range(RUNS - 1):
        fresh = App(work / f"first-{i}")
        first.append(timed(lambda f=fresh: f.push("production")))
    row("push", "first deploy (new deploy root)", first, base)


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
    print("\ncheckout methods (materialise one commit, no .git)")
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
            shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("__pycache__", "static"))
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
            entry = row("checkout", f"{label}: {name}", samples, base)
            base = base or entry["median"]


def bench_venv(work: Path) -> None:
    print("\nvirtualenv build, example requirements (uv's cache is warm; pip's never warms here)")
    req = EXAMPLE / "requirements.txt"
    uv = str(BIN / "uv")

    def with_uv(dest: Path) -> None:
        sh(uv, "venv", "-q", "--relocatable", "--python", sys.executable, dest)
        sh(uv, "pip", "install", "-q", "--python", dest / "bin" / "python", "-r", req)

    def with_pip(dest: Path) -> None:
        sh(sys.executable, "-m", "venv", dest)
        sh(dest / "bin" / "python", "-m", "pip", "install", "-q", "-r", req)

    runs = max(3, RUNS - 2)
    base = None
    builders = (("python -m venv + pip install", with_pip), ("uv venv + uv pip install", with_uv))
    for name, fn in builders:
        samples = []
        for i in range(runs):
            dest = work / f"venv-{name[:3]}-{i}"
            samples.append(timed(lambda d=dest, f=fn: f(d)))
            shutil.rmtree(dest)
        entry = row("venv", name, samples, base)
        base = base or entry["median"]


def bench_hosts(work: Path) -> None:
    """A primary and up to 7 peers, each peer a network namespace with its own receiver."""
    sys.path.insert(0, str(TOP / "tests"))
    import netns

    print("\nmany hosts (peers in network namespaces, code-only change)")
    why = netns.available()
    if why:
        print(f"  skipped: {why}")
        return
    net = netns.Net()
    try:
        cluster = netns.Cluster(net, work / "hosts", BIN)
        peers = [cluster.add_peer(join=False) for _ in range(7)]
        app = App(work / "hosts-app")
        # App() leaves out every static/ dir; the build step's inputs live in polls/static,
        # and without them collectstatic can never be reused (it reruns on every host).
        shutil.copytree(EXAMPLE / "polls" / "static", app.work / "polls" / "static")
        sh("git", "add", "-A", cwd=app.work)
        sh("git", "commit", "-qm", "static sources", cwd=app.work)
        sh("git", "remote", "set-url", "production", cluster.dir / "repo.git", cwd=app.work)
        netns.set_config(cluster.config, peers=[p.address for p in peers])
        app.push("production")  # every host builds its virtualenv once
        counts = (1, 2, 4, 8)
        samples: dict[int, list[float]] = {n: [] for n in counts}
        skews: dict[int, list[float]] = {n: [] for n in counts}
        for _ in range(RUNS):  # round-robin, so load drifting over the run hits every count alike
            for hosts in counts:
                netns.set_config(cluster.config, peers=[p.address for p in peers[: hosts - 1]])
                app.change()
                t0 = time.perf_counter()
                out = app.push("production")
                samples[hosts].append(time.perf_counter() - t0)
                skews[hosts] += [
                    float(line.split("switch skew")[1].split()[0])
                    for line in out.splitlines()
                    if "switch skew" in line
                ]
        objects_sent: list[float] = []
        for _ in range(RUNS):  # every peer has the previous commit: one change's worth
            app.change()
            out = app.push("production")
            objects_sent += [
                float(line.split(",")[1].split()[0])
                for line in out.splitlines()
                if "✓ objects" in line
            ]
        base = row("hosts", "code-only deploy, 1 host", samples[1])["median"]
        for hosts in counts[1:]:
            ratio = statistics.median(samples[hosts]) / base
            row(
                "hosts",
                f"code-only deploy, {hosts} hosts",
                samples[hosts],
                base,
                goal="goal ≤ 1.5× of 1 host" if hosts == 8 else "",
                met=ratio <= 1.5 if hosts == 8 else None,
            )
        row("hosts", "objects sent per peer, one-line change", objects_sent, unit=" B")
        for hosts in counts[1:]:
            row(
                "hosts",
                f"switch skew, {hosts} hosts (first to last)",
                skews[hosts],
                unit=" ms",
                goal="goal < 200 ms" if hosts == 8 else "",
                met=max(skews[hosts]) < 200 if hosts == 8 else None,
            )
    finally:
        net.close()


def write_results() -> None:
    (HERE / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = [
        "| group | measurement | median s | min–max s | ratio | goal |",
        "|---|---|---:|---:|---:|---|",
    ]
    for r in rows:
        ratio = f"{r['ratio']:.2f}×" if "ratio" in r else ""
        verdict = "" if r["met"] is None else (" — met" if r["met"] else " — NOT MET")
        if r.get("unit"):
            numbers = f"{r['median']:.0f}{r['unit']} | {r['min']:.0f}–{r['max']:.0f}{r['unit']}"
        else:
            numbers = f"{r['median']:.3f} | {r['min']:.3f}–{r['max']:.3f}"
        lines.append(f"| {r['group']} | {r['name']} | {numbers} | {ratio} | {r['goal']}{verdict} |")
    header = (
        f"# shipyard benchmark\n\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{os.cpu_count()} cores, median of {RUNS} runs; ratios are to the first row "
        "of each group, measured in the same run.\n\n"
    )
    (HERE / "results.md").write_text(header + "\n".join(lines) + "\n")


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="shipyard-bench-"))
    try:
        print(f"shipyard benchmark: median (min–max) of {RUNS} runs, ratio to the group's baseline")
        sections = {
            "push": bench_push,
            "checkout": bench_checkout,
            "venv": bench_venv,
            "hosts": bench_hosts,
        }
        only = os.environ.get("BENCH_ONLY", "").split(",")  # e.g. BENCH_ONLY=hosts
        for name, section in sections.items():
            if only == [""] or name in only:
                section(work)
        write_results()
        print(f"\nwritten: {HERE / 'results.md'}, {HERE / 'results.json'}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
