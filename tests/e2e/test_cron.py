"""Scheduled jobs, end to end: Debian's cron daemon runs the app's [cron] for the deploy user.

Pushes go over SSH to test_ssh.py's provisioned deploy user (its module fixture:
one sshd for this module); the deploy installs the user's crontab with `crontab -`;
the test starts `cron -f` (unless one runs already) and stops what it started,
and removes the user's crontab at the end. One wait (at most 70 s) sees cron fire.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import test_ssh
from conftest import EXAMPLES, run, stop
from test_ssh import Server, clone_example, push, remote_lines

pytestmark = pytest.mark.e2e

server = test_ssh.server  # one sshd and deploy user for this module
CRON = Path("/usr/sbin/cron")
BASE = (EXAMPLES / "mysite" / "shipyard.toml").read_text()
TICK = (
    "import os, sys\n"
    'print("tick in", os.getcwd(), "venv", sys.prefix, "env", os.environ.get("TICK_GREETING"))\n'
)


def config(**jobs: str) -> str:
    return BASE + "\n[cron]\n" + "".join(f"{name} = {spec}\n" for name, spec in jobs.items())


JOBS = {
    "tick": '{ schedule = "* * * * *", run = "python tick.py" }',
    "slow": '{ schedule = "* * * * *", run = "sleep 120", timeout = 3 }',
}


def crontab(server: Server) -> str:
    result = run("crontab", "-u", server.user, "-l", check=False)
    return result.stdout if result.returncode == 0 else ""


def jobs_in_crontab(server: Server) -> list[str]:
    return sorted(re.findall(r" cron mysite exec (\S+) ", crontab(server)))


def sync(server: Server, work) -> None:
    """The clone's main back at the host's branch (after a refused or rolled-back push)."""
    env = {**os.environ, "GIT_SSH_COMMAND": server.git_ssh()}
    run("git", "fetch", "-q", "production", cwd=work.path, env=env)
    work.git("reset", "-q", "--hard", "production/main")


def cron_log(server: Server, name: str) -> str:
    path = server.app / "logs" / f"cron-{name}.log"
    return path.read_text() if path.exists() else ""


@pytest.fixture(scope="module")
def daemon(server: Server):  # noqa: F811 - the fixture above
    """Debian's cron, in the foreground; the deploy user's crontab removed afterwards."""
    if not CRON.exists():
        pytest.skip("cron not installed (make system-deps installs it)")
    started = None
    if run("pgrep", "-x", "cron", check=False).returncode:
        started = subprocess.Popen(
            [str(CRON), "-f"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
    try:
        yield started
    finally:
        run("crontab", "-u", server.user, "-r", check=False)
        if started is not None:
            stop(started)


@pytest.fixture(scope="module")
def deployed(server: Server, daemon, tmp_path_factory):  # noqa: F811
    work = clone_example(tmp_path_factory.mktemp("cron-work") / "mysite", server.url())
    env = server.app / "shared" / ".env"
    env.write_text("TICK_GREETING=hello-from-env\n")
    os.chown(env, server.home.stat().st_uid, server.home.stat().st_gid)
    work.commit("jobs", **{"shipyard.toml": config(**JOBS), "tick.py": TICK})
    first = push(server, work)
    return work, first


def test_the_switch_installs_the_jobs_in_the_deploy_users_crontab(server: Server, deployed):  # noqa: F811
    _, first = deployed
    switch = next(ln for ln in remote_lines(first.out) if "✓ switch" in ln)
    assert "cron: slow, tick" in switch or "cron: tick, slow" in switch, switch
    assert jobs_in_crontab(server) == ["slow", "tick"]
    text = crontab(server)
    assert f"# shipyard {server.app} begin" in text and "* * * * * " in text
    assert f">>{server.app}/logs/cron-tick.log 2>&1" in text


def test_cron_runs_the_jobs_in_the_live_release_with_their_limit(server: Server, deployed):  # noqa: F811
    deadline = time.monotonic() + 70  # the one wait: cron fires at the next minute
    while time.monotonic() < deadline:
        if "exit 0" in cron_log(server, "tick") and "stopped after" in cron_log(server, "slow"):
            break
        time.sleep(0.5)
    tick, slow = cron_log(server, "tick"), cron_log(server, "slow")
    live = os.path.realpath(server.app / "current")
    assert f"tick in {live} venv {live}/.venv env hello-from-env" in tick, tick
    assert re.search(r"cron tick: exit 0 in \d+\.\ds", tick), tick
    assert "cron slow: stopped after its limit of 3s" in slow, slow
    # it ran as the deploy user, under the cron daemon (not under this test)
    info = json.loads((server.app / "run" / "cron" / "tick.json").read_text())
    assert info["exit"] == 0 and info["release"] == Path(live).name


def test_cron_lists_the_jobs_over_ssh(server: Server, deployed):  # noqa: F811
    listed = server.ssh("shipyard", "cron", "mysite", "--json")
    assert listed.returncode == 0, listed.stderr
    data = json.loads(listed.stdout)
    assert data["daemon"] is True and data["error"] is None
    jobs = {j["name"]: j for j in data["jobs"]}
    assert jobs["tick"]["exit"] == 0 and jobs["tick"]["duration"] is not None
    assert jobs["tick"]["next"] > time.time() and jobs["tick"]["scheduled_here"]
    assert jobs["slow"]["timed_out"] is True
    text = server.ssh("shipyard", "cron", "mysite").stdout
    assert re.search(r"^  tick\s+\* \* \* \* \*\s+\d{4}-\d\d-\d\d \d\d:\d\d", text, re.M), text
    assert re.search(r"^  slow .* limit ", text, re.M), text


def test_cron_run_runs_a_job_now(server: Server, deployed):  # noqa: F811
    now = server.ssh("shipyard", "cron", "mysite", "run", "tick")
    assert now.returncode == 0, now.stdout + now.stderr
    assert "tick in" in now.stdout and "hello-from-env" in now.stdout
    bad = server.ssh("shipyard", "cron", "mysite", "run", "Bad_Name")
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1
    assert "is not a job name" in bad.stderr


def test_a_release_that_fails_changes_no_job_and_a_rollback_restores_them(
    server: Server,  # noqa: F811
    deployed,
):
    work, _ = deployed
    tock = '{ schedule = "*/5 * * * *", run = "python tick.py" }'
    work.commit("tock only", **{"shipyard.toml": config(tock=tock)})
    push(server, work)
    assert jobs_in_crontab(server) == ["tock"]
    broken = config(never=tock).replace("build = [", 'build = [\n  "exit 3",', 1)
    work.commit("broken", **{"shipyard.toml": broken})
    failed = push(server, work, check=False)
    assert "failed at build" in failed.out
    assert jobs_in_crontab(server) == ["tock"]  # the failed release scheduled nothing
    back = server.ssh("shipyard", "rollback", "mysite")
    assert back.returncode == 0, back.stdout + back.stderr
    assert jobs_in_crontab(server) == ["slow", "tick"]  # the old release's jobs again
    sync(server, work)


def test_a_malformed_schedule_is_refused_before_the_branch_moves(server: Server, deployed):  # noqa: F811
    work, _ = deployed
    tip = work.git("rev-parse", "production/main").stdout.strip()
    before = crontab(server)
    bad = '{ schedule = "every 5 minutes", run = "python tick.py" }'
    work.commit("bad schedule", **{"shipyard.toml": config(tick=bad)})
    refused = push(server, work, check=False)
    assert refused.returncode != 0
    line = next(ln for ln in remote_lines(refused.out) + refused.out.splitlines() if "cron" in ln)
    assert "shipyard.toml:" in line and "'every 5 minutes' is not a cron schedule" in line
    assert "*/15 * * * *" in refused.out  # what to write
    heads = run("git", "--git-dir", server.app / "repo.git", "rev-parse", "main").stdout.strip()
    assert heads == tip and crontab(server) == before
    sync(server, work)


def test_a_crontab_that_cannot_be_installed_leaves_the_deploy_live(server: Server, deployed):  # noqa: F811
    work, _ = deployed
    deny = Path("/etc/cron.deny")
    assert not deny.exists()
    before = crontab(server)
    work.commit("new job", **{"shipyard.toml": config(**JOBS, extra=JOBS["tick"])})
    try:
        deny.write_text(f"{server.user}\n")  # crontab(1) refuses this user
        result = push(server, work)  # exit 0: the deploy went live
    finally:
        with contextlib.suppress(FileNotFoundError):
            deny.unlink()
    lines = remote_lines(result.out)
    warnings = [ln for ln in lines if "cron:" in ln and "! " in ln]
    assert len(warnings) == 1 and "the jobs are unchanged" in warnings[0], lines
    assert re.match(r"^shipyard ▸ live: ", lines[-1]), lines[-1]
    entry = json.loads((server.app / "deploys" / "deploys.jsonl").read_text().splitlines()[-1])
    assert entry["outcome"] == "live"
    assert crontab(server) == before
    listed = server.ssh("shipyard", "cron", "mysite").stdout
    assert "! the crontab was not updated" in listed
