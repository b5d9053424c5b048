"""Figures for pinned releases and rollback, measured in one run on this machine.

    python bench/pinning.py [--runs 5] [--keep-dir]

- code-only deploy: a commit that changes only app code (venv reused), pushed;
- pinned push: ``git push -f production vN:main`` of a release still kept (reused);
- rollback: ``shipyard rollback APP`` from command start until ``current`` switched
  (polled from outside), and until the command exits.

Times are wall-clock as the pusher or operator sees them; medians of ``--runs``.
The example app is used as it is (its collectstatic build step included).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "Bench",
    "GIT_AUTHOR_EMAIL": "bench@example.com",
    "GIT_COMMITTER_NAME": "Bench",
    "GIT_COMMITTER_EMAIL": "bench@example.com",
    "GIT_CONFIG_NOSYSTEM": "1",
    "NO_COLOR": "1",
    "PATH": f"{BIN}:{os.environ['PATH']}",
}


def run(*args: str | Path, cwd: Path | None = None) -> str:
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=ENV, capture_output=True, text=True, check=False
    )
    if result.returncode:
        raise SystemExit(f"{args} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout + result.stderr


def timed(*args: str | Path, cwd: Path | None = None) -> float:
    t0 = time.perf_counter()
    run(*args, cwd=cwd)
    return time.perf_counter() - t0


def last_duration(app_dir: Path) -> float:
    lines = (app_dir / "deploys" / "deploys.jsonl").read_text().splitlines()
    return json.loads(lines[-1])["duration"]


def rollback_until_switched(root: Path, app_dir: Path) -> tuple[float, float]:
    """(seconds until `current` points elsewhere, seconds until the command exited)."""
    before = os.readlink(app_dir / "current")
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [str(BIN / "shipyard"), "--root", str(root), "rollback", "mysite"],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    switched = None
    while proc.poll() is None or switched is None:
        if switched is None and os.readlink(app_dir / "current") != before:
            switched = time.perf_counter() - t0
        if proc.poll() is not None and switched is None:
            raise SystemExit(f"rollback did not switch: {proc.stderr.read().decode()}")
        time.sleep(0.0005)
    return switched, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--keep-dir", action="store_true", help="leave the work dir for a look")
    args = parser.parse_args()
    n = args.runs
    base = Path(tempfile.mkdtemp(prefix="shipyard-bench-"))
    root, work = base / "apps", base / "work"
    try:
        as_root = ["--allow-root"] if os.geteuid() == 0 else []  # a throwaway bench host
        run(BIN / "shipyard", "--root", root, "init", "mysite", *as_root)
        app_dir = root / "mysite"
        config = app_dir / "shipyard.toml"
        config.write_text(config.read_text().replace("keep = 5", f"keep = {2 * n + 2}"))
        shutil.copytree(
            REPO / "examples" / "mysite", work, ignore=shutil.ignore_patterns("__pycache__")
        )
        run("git", "init", "-q", "-b", "main", cwd=work)
        run("git", "add", "-A", cwd=work)
        run("git", "commit", "-qm", "initial", cwd=work)
        run("git", "remote", "add", "production", app_dir / "repo.git", cwd=work)
        first = timed("git", "push", "production", "main", cwd=work)

        code_push, code_deploy = [], []
        for i in range(1, n + 1):
            (work / "mysite" / "version.py").write_text(f'GREETING = "bench {i}"\n')
            run("git", "commit", "-qam", f"v{i}", cwd=work)
            run("git", "tag", "-a", f"v{i}", "-m", f"v{i}", cwd=work)
            code_push.append(timed("git", "push", "production", "main", cwd=work))
            code_deploy.append(last_duration(app_dir))

        pin_push, pin_deploy = [], []
        for i in range(1, n + 1):
            pin_push.append(timed("git", "push", "-f", "production", f"v{i}:main", cwd=work))
            pin_deploy.append(last_duration(app_dir))
            out = (app_dir / "deploys" / f"{n + 1 + i}.log").read_text()
            assert "reused releases/" in out, out

        switch, command, deploy = [], [], []
        for _ in range(n):
            s, c = rollback_until_switched(root, app_dir)
            switch.append(s)
            command.append(c)
            deploy.append(last_duration(app_dir))

        med = statistics.median
        print(f"machine: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; runs: {n}")
        print(f"first push (venv built or taken from uv's cache): {first:.2f}s")
        print(f"{'':<34}{'median':>8}{'min':>8}{'max':>8}")
        rows = [
            ("code-only deploy: git push", code_push),
            ("code-only deploy: deploy itself", code_deploy),
            ("pinned push (kept): git push", pin_push),
            ("pinned push (kept): deploy itself", pin_deploy),
            ("rollback: start → current switched", switch),
            ("rollback: start → command exit", command),
            ("rollback: deploy itself", deploy),
        ]
        for label, values in rows:
            print(f"{label:<34}{med(values):>7.3f}s{min(values):>7.3f}s{max(values):>7.3f}s")
        print(f"pinned push / code-only push (medians): {med(pin_push) / med(code_push):.2f}")
    finally:
        if args.keep_dir:
            print(f"work dir: {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
