"""The post-receive hook: starts the deploy detached and streams its log to the pusher.

The deploy runs in its own session, writing ``deploys/<N>.log``; this hook only
reads that log. So Ctrl-C in the pusher's terminal or a dropped SSH connection
kills the reader, never the deploy half-way through.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import traceback

from shipyard import history
from shipyard.app import App
from shipyard.config import load_host_config
from shipyard.errors import ShipyardError
from shipyard.guard import safe_umask
from shipyard.options import from_env, parse_options
from shipyard.repo import hook_app

ZERO = "0" * 40


class Worker:
    """The forked deploy worker, polled like a ``subprocess.Popen``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


def start(app: App, number: int, sha: str, ref: str, options: list[str]) -> Worker:
    """Fork the deploy worker into a new session with the log as its only output.

    A fork, not a new interpreter: no second Python start per push, and the modules this
    hook already imported are not imported again.
    """
    from shipyard import cli  # the worker's code, loaded before the fork

    sys.stdout.flush()
    sys.stderr.flush()
    # The worker inherits the log, and with it the hold that tells `shipyard status`
    # it is alive; once the worker dies (even by SIGKILL) the deploy shows as interrupted.
    with history.open_log(app, number) as log:
        pid = os.fork()
        if pid:
            return Worker(pid)
        code = 1
        try:
            os.setsid()
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            os.closerange(3, 1 << 16)  # nothing of git's is kept open
            os.chdir(app.dir)
            for name in [k for k in os.environ if k.startswith("GIT_")]:
                del os.environ[name]
            try:
                code = cli.run_deploy(app.root, app.name, number, sha, ref, options)
            except ShipyardError as exc:
                print(f"shipyard: error: {exc}", file=sys.stderr)
        except BaseException:  # noqa: BLE001 - whatever happens, it goes to the log
            traceback.print_exc()
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)


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
