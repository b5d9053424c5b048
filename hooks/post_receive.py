"""The post-receive hook: starts the deploy detached and streams its log to the pusher.

The deploy runs in its own session, writing ``deploys/<N>.log``; this hook only
reads that log. So Ctrl-C in the pusher's terminal or a dropped SSH connection
kills the reader, never the deploy half-way through.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from shipyard import history
from shipyard.app import App
from shipyard.config import load_host_config
from shipyard.guard import safe_umask
from shipyard.options import from_env, parse_options
from shipyard.repo import hook_app

ZERO = "0" * 40


def start(app: App, number: int, sha: str, ref: str, options: list[str]) -> subprocess.Popen:
    """Spawn the deploy worker in a new session with the log as its only output."""
    args = ["run-deploy", app.name, "--number", str(number), "--sha", sha, "--ref", ref]
    for option in options:
        args += ["--option", option]
    return spawn(app, number, args)


def spawn(app: App, number: int, command: list[str]) -> subprocess.Popen:
    """``shipyard COMMAND`` detached (its own session), appending to deploy ``number``'s log."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    args = [sys.executable, "-m", "shipyard", "--root", str(app.root), *command]
    # The worker inherits the log, and with it the hold that tells `shipyard status`
    # it is alive; once the worker dies (even by SIGKILL) the deploy shows as interrupted.
    with history.open_log(app, number) as log:
        return subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
            cwd=app.dir,
            start_new_session=True,
        )


def follow(path, done, out=sys.stdout.buffer, poll: float = 0.02, start: int = 0) -> int | None:
    """Copy the log to ``out`` from ``start`` until ``done()`` and the log is drained.

    Returns where it stopped reading, or None if ``out`` went away.
    """
    with open(path, "rb") as log:
        log.seek(start)
        while True:
            finished = done()
            chunk = log.read()
            if chunk:
                try:
                    out.write(chunk)
                    out.flush()
                except (BrokenPipeError, OSError):
                    return None
            elif finished:
                return log.tell()
            else:
                time.sleep(poll)


def lost(app: App, number: int) -> bool:
    """Did deploy ``number``'s worker end without recording an outcome (killed)?"""
    return not any(entry.get("deploy") == number for entry in history.entries(app))


def report_lost(app: App, number: int, code: int | None) -> None:
    """A worker that died without recording an outcome (killed) must not end the push silently."""
    live = app.live_release()
    print(
        f"shipyard ▸ deploy #{number} stopped without an outcome (worker exit {code}); "
        f"{'live: ' + live if live else 'nothing is live'}; recovering it "
        f"(or run `shipyard recover {app.name}` on the host)",
        flush=True,
    )


def main() -> None:
    app = hook_app()
    safe_umask()
    host = load_host_config(app.config_file)
    deploy_ref = f"refs/heads/{host.branch}"
    options = from_env(dict(os.environ))
    parse_options(options)  # already validated by proc-receive; fail loudly if not
    for line in sys.stdin.read().splitlines():
        old, new, ref = line.split()
        if ref.startswith("refs/tags/"):
            if new != ZERO:
                print(f"shipyard ▸ stored tag {ref.removeprefix('refs/tags/')}")
            continue
        if ref != deploy_ref:
            print(f"shipyard ▸ stored {ref} (not deployed: this app deploys {host.branch})")
            continue
        if new == ZERO:
            continue
        number = history.claim_number(app)
        worker = start(app, number, new, ref, options)
        log = history.log_path(app, number)
        offset = follow(log, lambda w=worker: w.poll() is not None)
        if lost(app, number):
            # Complete (after its switch) or close (before) what the killed worker left,
            # detached like the worker, so the pusher going away does not stop it either.
            recovery = spawn(
                app,
                number,
                ["recover", app.name, "--into-log", "--number", str(number)]
                + ["--sha", new, "--ref", ref],
            )
            if offset is not None:
                report_lost(app, number, worker.returncode)
                follow(log, lambda r=recovery: r.poll() is not None, start=offset)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
