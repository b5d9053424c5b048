"""[cron]: parsing and its one-line refusals, the crontab block, next runs, one run of a job."""

from __future__ import annotations

import fcntl
import os
import time

import pytest

from shipyard import cron
from shipyard.app import App
from shipyard.config import CronJob, HostConfig, parse_app_config
from shipyard.errors import ConfigError

RID = "20261201T100000Z-abcdef0"


def test_jobs_parse_with_defaults():
    config = parse_app_config(
        '[cron]\nclear = { schedule = "*/15  * * * *", run = "python manage.py clearsessions" }\n'
        'report = { schedule = "@daily", run = "./report", timeout = 60, host = "web2" }\n'
    )
    assert config.cron == {
        "clear": CronJob("clear", "*/15 * * * *", "python manage.py clearsessions", 3600),
        "report": CronJob("report", "@daily", "./report", 60, "web2"),
    }


@pytest.mark.parametrize(
    "entry, message",
    [
        ('x = { schedule = "*/15 * * *", run = "a" }', "schedule '*/15 * * *' is not a cron"),
        ('x = { schedule = "61 * * * *", run = "a" }', "is not a cron schedule"),
        ('x = { schedule = "5/10 * * * *", run = "a" }', "is not a cron schedule"),
        ('x = { schedule = "* * * * funday", run = "a" }', "is not a cron schedule"),
        ('x = { run = "a" }', "schedule None is not a cron schedule"),
        ('"Bad Name" = { schedule = "@hourly", run = "a" }', "'Bad Name' is not a name"),
        ('x = { schedule = "@hourly" }', "cron job 'x' needs a command"),
        ('x = { schedule = "@hourly", run = "a", every = 3 }', "unknown key 'every'"),
        ('x = { schedule = "@hourly", run = "a", timeout = 0 }', "timeout must be a number"),
        ('x = "*/5 * * * * ./a"', "cron job 'x' needs a command"),
    ],
)
def test_a_bad_job_is_refused_with_file_line_and_what_to_write(entry, message):
    with pytest.raises(ConfigError) as err:
        parse_app_config(f"keep = 3\n\n[cron]\n{entry}\n")
    text = str(err.value)
    assert text.startswith("shipyard.toml:4: ") and message in text, text
    assert "\n" not in text and ("write" in text or "use" in text or "known" in text)


def test_jobs_here_primary_and_named_hosts():
    jobs = {
        "a": CronJob("a", "@hourly", "a"),
        "b": CronJob("b", "@hourly", "b", host="web2"),
        "c": CronJob("c", "@hourly", "c", host="web1"),
    }
    web1 = HostConfig(name="web1")
    assert [j.name for j in cron.jobs_here(jobs, web1, peer=False)] == ["a", "c"]
    assert [j.name for j in cron.jobs_here(jobs, HostConfig(name="web2"), peer=True)] == ["b"]
    assert cron.jobs_here(jobs, HostConfig(name="web3"), peer=True) == []


def test_the_block_replaces_only_this_apps_lines(tmp_path):
    app, other = App(tmp_path / "a b%", "mysite"), App(tmp_path, "other")
    mine = [CronJob("clear", "*/15 * * * *", "x")]
    theirs = "MAILTO=ops@example.com\n0 3 * * * /usr/local/bin/backup\n"
    once = cron.merged(theirs, app, mine)
    twice = cron.merged(cron.merged(once, other, mine), app, [CronJob("clear", "@daily", "x")])
    assert once.startswith(theirs) and once.count("cron mysite exec clear") == 1
    assert "@daily" in twice and "*/15" not in twice.split("other")[0].split("mysite")[-1]
    assert twice.count("cron other exec clear") == 1  # the other app's block is kept
    assert "a b\\%" in once and "'" in once  # quoted for the shell, % escaped for cron
    assert cron.merged(cron.merged(theirs, app, mine), app, []) == theirs
    assert cron.merged("", app, []) == ""


def test_next_run():
    at = time.mktime((2026, 12, 1, 10, 7, 30, 0, 0, -1))
    assert time.localtime(cron.next_run("*/15 * * * *", at))[3:5] == (10, 15)
    assert time.localtime(cron.next_run("0 0 * * *", at))[:5] == (2026, 12, 2, 0, 0)
    assert time.localtime(cron.next_run("30 9 29 2 *", at))[:3] == (2028, 2, 29)
    assert time.localtime(cron.next_run("0 12 * * mon", at))[:3] == (2026, 12, 7)  # a Monday
    assert cron.next_run("0 0 30 2 *", at) is None  # February 30 never comes


@pytest.fixture
def app(tmp_path) -> App:
    made = App(tmp_path, "mysite")
    made.repo.mkdir(parents=True)
    made.config_file.write_text("allow_root = true\n")
    made.config_file.chmod(0o600)
    release = made.releases / RID
    release.mkdir(parents=True)
    (release / "shipyard.toml").write_text(
        "[cron]\n"
        'hello = { schedule = "* * * * *", run = "echo hello from $PWD; echo $GREETING" }\n'
        'slow = { schedule = "* * * * *", run = "sleep 30", timeout = 1 }\n'
    )
    made.shared.mkdir()
    (made.shared / ".env").write_text("GREETING=hi-from-env\n")
    made.run.mkdir()
    os.symlink(f"releases/{RID}", made.current)
    return made


def test_a_run_uses_the_live_release_and_its_env_and_logs(app):
    assert cron.execute(app, "hello") == 0
    log = cron.log_path(app, "hello").read_text()
    assert f"hello from {app.release_dir(RID)}" in log and "hi-from-env" in log
    assert "cron hello: exit 0 in" in log
    last = cron.last_run(app, "hello")
    assert last["exit"] == 0 and last["release"] == RID and last["end"] >= last["start"]


def test_a_job_past_its_limit_is_stopped(app):
    code = cron.execute(app, "slow")
    assert code != 0
    log = cron.log_path(app, "slow").read_text().splitlines()
    assert len([ln for ln in log if "stopped after its limit of 1s" in ln]) == 1
    assert cron.last_run(app, "slow")["timed_out"] is True


def test_a_run_while_the_previous_runs_is_skipped_and_logged(app):
    cron.state_dir(app).mkdir(parents=True, exist_ok=True)
    with open(cron.state_dir(app) / "hello.lock", "a+") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        assert cron.execute(app, "hello") == 0
    log = cron.log_path(app, "hello").read_text()
    assert "skipped: the previous run" in log and "hello from" not in log
    assert cron.last_run(app, "hello")["skipped"]


def test_an_unknown_job_is_one_line(app):
    assert cron.execute(app, "nope") == 1
    line = cron.log_path(app, "nope").read_text().strip()
    assert "no cron job 'nope' in the live release" in line and "jobs: hello, slow" in line


def test_apply_installs_per_host_and_never_raises(app, monkeypatch):
    from types import SimpleNamespace

    (app.release_dir(RID) / "shipyard.toml").write_text(
        "[cron]\n"
        'everywhere = { schedule = "@hourly", run = "a" }\n'
        'on-web2 = { schedule = "@hourly", run = "b", host = "web2" }\n'
    )
    installed, warned = [], []
    monkeypatch.setattr(cron, "install", lambda a, jobs: installed.append(jobs) or True)
    out = SimpleNamespace(warn=warned.append)
    primary = SimpleNamespace(app=app, host=HostConfig(name="web1"), out=out, peer=False)
    peer = SimpleNamespace(app=app, host=HostConfig(name="web2"), out=out, peer=True)
    assert cron.apply(primary, RID) == "; cron: everywhere"
    assert cron.apply(peer, RID) == "; cron: on-web2"
    assert cron.apply(primary, None) == "; cron: none"  # switched back to nothing live
    assert [[j.name for j in jobs] for jobs in installed] == [["everywhere"], ["on-web2"], []]

    def refuse(a, jobs):
        raise cron.CronError("`crontab -` refused the new crontab: disk quota exceeded")

    monkeypatch.setattr(cron, "install", refuse)
    assert cron.apply(primary, RID) == "; cron jobs NOT updated"
    assert warned == [
        "cron: `crontab -` refused the new crontab: disk quota exceeded; the jobs are unchanged"
    ]
    assert "disk quota" in cron.listing(app, HostConfig())["error"]["error"]
