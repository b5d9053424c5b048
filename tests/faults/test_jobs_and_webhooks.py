"""Bad input for scheduled jobs and deploy webhooks (docs/cron.md, docs/notify.md).

A malformed `[cron]` is refused before the branch moves; a bad or unreachable
webhook is one line and never changes a deploy's outcome. (A job past its limit
and a crontab that cannot be installed need the deploy user and the cron daemon:
tests/e2e/test_cron.py.)
"""

from __future__ import annotations

import json
import re
import time

import faultlib
import pytest
from conftest import free_port
from faultlib import NO_BUILD, check_invariants, entries, last_line, sy

observe = faultlib.observe


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    base = tmp_path_factory.mktemp("jobs")
    with faultlib.deployed(base) as (host, work):
        yield host, work


@pytest.fixture
def clean(site):
    host, work = site
    work.git("reset", "-q", "--hard", host.branch())
    before = check_invariants(host)
    yield host, work, before
    work.git("reset", "-q", "--hard", host.branch())


def refused(host, work) -> str:
    """Push; it must be refused before the branch moves (nothing recorded); git's line."""
    tip, n = host.branch(), len(entries(host))
    result = work.push(check=False)
    assert result.returncode != 0, result.out
    assert host.branch() == tip and len(entries(host)) == n
    return next(ln for ln in result.out.splitlines() if "[remote rejected]" in ln)


def said(line: str) -> str:
    return re.sub(r"^.*\[remote rejected\] main -> main \(", "", line).rstrip(")")


@pytest.mark.parametrize(
    "job, expected",
    [
        (
            'tick = { schedule = "every 5 minutes", run = "true" }',
            "shipyard.toml:7: cron job 'tick': schedule 'every 5 minutes' is not a cron schedule; "
            'write five fields, minute hour day month weekday, e.g. "*/15 * * * *"',
        ),
        (
            '"clear sessions" = { schedule = "*/15 * * * *", run = "true" }',
            "shipyard.toml:7: cron job name 'clear sessions' is not a name; use lowercase",
        ),
    ],
    ids=["schedule", "name"],
)
def test_a_malformed_cron_job_is_refused_before_the_branch_moves(clean, observe, job, expected):
    host, work, before = clean
    row = observe("bad input", f"a `[cron]` job in shipyard.toml: `{job}`")
    work.commit("bad job", **{"shipyard.toml": NO_BUILD + f"\n[cron]\n{job}\n"})
    line = refused(host, work)
    assert expected in line, line
    assert check_invariants(host) == before
    row["outcome"] = f"push refused: `{said(line)}`"


def test_a_webhook_url_that_is_not_http_is_refused(clean, observe):
    host, work, before = clean
    row = observe("bad input", "a `[[notify.webhook]]` url that is not http(s) (`ftp://…`)")
    config = host.dir / "shipyard.toml"
    saved = config.read_text()
    config.write_text(saved + '\n[[notify.webhook]]\nurl = "ftp://chat.example.com/hook"\n')
    try:
        work.commit("any change", **{"mysite/version.py": 'GREETING = "webhook"\n'})
        line = refused(host, work)
        assert "webhook url 'ftp://chat.example.com/hook' is not an http(s) URL" in line, line
        assert f"{config}:" in line and "https://hooks.slack.com" in line
        status = sy(host, "status", "mysite").stdout
        assert f"! {config}:" in status  # status says why deploys are refused
    finally:
        config.write_text(saved)
    assert check_invariants(host) == before
    row["outcome"] = f"push refused: `{said(line)}`"


def test_an_unreachable_webhook_changes_no_outcome(clean, observe):
    host, work, _ = clean
    row = observe("fault", "a webhook nobody answers (connection refused, every retry)")
    config = host.dir / "shipyard.toml"
    saved = config.read_text()
    port = free_port()
    config.write_text(
        saved + f'\n[notify]\nretries = 1\n\n[[notify.webhook]]\nurl = "http://127.0.0.1:{port}/"\n'
    )
    try:
        sha = work.commit("deploy with a dead webhook", **{"mysite/version.py": 'GREETING = "x"\n'})
        result = work.push()  # exit 0
        assert last_line(result.out).startswith(f"shipyard ▸ live: {sha[:7]}")
        assert check_invariants(host).endswith(sha[:7])
        log = host.dir / "deploys" / "notify.jsonl"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if log.exists() and any('"ok": false' in ln for ln in log.read_text().splitlines()):
                break
            time.sleep(0.1)
        final = [json.loads(x) for x in log.read_text().splitlines() if '"ok": false' in x]
        assert final and final[-1]["attempts"] == 2 and final[-1]["error"] == "connection refused"
        status = sy(host, "status", "mysite").stdout
        line = next(ln for ln in status.splitlines() if "webhook" in ln)
        assert entries(host)[-1]["outcome"] == "live"
    finally:
        config.write_text(saved)
    row["outcome"] = f"deploy live, push exit 0; `shipyard status`: `{line.strip()}`"
