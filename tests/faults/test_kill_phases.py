"""SIGKILL the deploy at every phase; the host is never left half-deployed.

One deployed app for the module (its venv built once). Each case pushes a commit,
kills the deploy's worker at (or in the middle of) one phase, and checks:

* the push ends with what happened (the proc-receive hook sees the worker die, starts
  `shipyard recover`, then answers git with the outcome): before the switch nothing of
  the deploy went live, it is recorded ``interrupted`` and the push fails; from the
  switch on it is completed and the push succeeds;
* ``current`` is a complete, good release whose processes serve it, the lock is free
  with no note left, every deploy has an outcome, no half-built release or venv;
* `shipyard status`/`history`/`releases` say so;
* the next push deploys normally.
"""

from __future__ import annotations

import json
import os
import signal

import faultlib
import pytest
from conftest import make_host, make_work
from faultlib import (
    app_of,
    arm,
    check_invariants,
    entries,
    greeting_of,
    last_line,
    phase_line,
    sy,
    wait_for,
)

from shipyard import lock

SLOW_MIGRATION = """\
import os, pathlib, time
from django.db import migrations


def slow(apps, schema_editor):
    shared = pathlib.Path(os.environ["SHIPYARD_SHARED"])
    (shared / "migration-started").touch()
    while (shared / "slow-migration").exists():
        time.sleep(0.1)


class Migration(migrations.Migration):
    dependencies = [("polls", "0002_choice")]
    operations = [migrations.RunPython(slow, migrations.RunPython.noop)]
"""
FAST_TOML = """\
shared = [".env", "media/"]
post_migrate = "python manage.py migrate --noinput"

[health]
path = "/healthz"
"""
observe = faultlib.observe
BEFORE_SWITCH = ("checkout", "link", "venv", "build", "migrate", "release")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    base = tmp_path_factory.mktemp("kill")
    host = make_host(base / "apps")
    work = make_work(base / "work", host)
    work.commit(
        "release command, post-migrate, no build step",
        **{
            "shipyard.toml": FAST_TOML,
            "Procfile": (work.path / "Procfile").read_text() + "release: python -c pass\n",
        },
    )
    try:
        work.push()
        yield host, work
    finally:
        host.stop_processes()


def worker_pid(host) -> int:
    return wait_for(
        lambda: lock.holder(app_of(host).deploy_lock).get("pid"), 120, "the deploy lock"
    )


def kill_when(host, work, ready, what: str) -> tuple[str, int]:
    """Push in the background, wait for ``ready()``, SIGKILL the worker; the push's output
    and exit status."""
    from faultlib import background_push

    push = background_push(work)
    pid = worker_pid(host)
    wait_for(lambda: ready() or push.poll() is not None, 120, what)
    assert push.poll() is None, f"the deploy ended before {what}:\n{push.communicate()[0]}"
    os.kill(pid, signal.SIGKILL)
    out = push.communicate(timeout=180)[0]
    return out, push.returncode


def venv_building(host) -> bool:
    return any(
        p.name.startswith(".tmp-") and (p / "lib").is_dir() for p in (host.dir / "venvs").iterdir()
    )


def new_program_started(host, sha: str) -> bool:
    try:
        state = json.loads((host.dir / "run" / "processes.json").read_text())
    except (OSError, ValueError):
        return False
    return any(p["release"].endswith(sha[:7]) for p in state.get("programs", []))


# (phase, how the worker is killed, files the commit changes)
CASES = [
    ("checkout", "end", {}),
    ("link", "end", {}),
    ("venv", "mid", {"requirements.txt": "django>=5.1,<5.3\ngunicorn>=23\npython-dotenv>=1.0\n"}),
    ("build", "mid", {"shipyard.toml": 'build = ["touch build-started && sleep 60"]\n'}),
    ("migrate", "mid", {"polls/migrations/0003_slow.py": SLOW_MIGRATION}),
    ("release", "start", {}),
    ("switch", "end", {}),
    ("restart", "mid", {}),
    ("verify", "start", {}),
    ("post-migrate", "start", {}),
    ("finish", "start", {}),
]


@pytest.mark.parametrize(("phase", "how", "files"), CASES, ids=[c[0] for c in CASES])
def test_sigkill_at_phase(site, observe, phase, how, files):
    host, work = site
    before = check_invariants(host)
    where = {"mid": "in the middle of", "start": "at the start of", "end": "at the end of"}[how]
    row = observe("fault", f"SIGKILL of the deploy worker {where} {phase}")
    n = len(entries(host)) + 1
    sha = work.commit(
        f"killed at {phase}",
        **{"mysite/version.py": f'GREETING = "killed at {phase}"\n', **files},
    )
    if how == "mid" and phase == "venv":
        out, code = kill_when(host, work, lambda: venv_building(host), "uv to build the venv")
    elif how == "mid" and phase == "build":
        out, code = kill_when(
            host,
            work,
            lambda: any((host.dir / "releases").glob("*/build-started")),
            "the build step",
        )
    elif how == "mid" and phase == "migrate":
        flag = host.dir / "shared" / "slow-migration"
        flag.touch()
        try:
            out, code = kill_when(
                host,
                work,
                lambda: (host.dir / "shared" / "migration-started").exists(),
                "the migration",
            )
        finally:
            flag.unlink()
    elif how == "mid" and phase == "restart":
        out, code = kill_when(host, work, lambda: new_program_started(host, sha), "the handover")
    else:
        arm(host, {"at": phase, "when": how, "action": "kill"})
        pushed = work.push(check=False)
        out, code = pushed.out, pushed.returncode
    entry = next(e for e in entries(host) if e["deploy"] == n)
    assert f"deploy #{n} stopped without an outcome" in out
    assert f"deploy #{n} ({sha[:7]} by " in out and f"was interrupted at {phase}" in out
    stopped = next(
        (ln.strip() for ln in out.splitlines() if "stopped" in ln and "left running" in ln), ""
    )
    live = check_invariants(host)
    status = sy(host, "status", "mysite").stdout
    releases = json.loads(sy(host, "releases", "mysite", "--json").stdout)
    if phase in BEFORE_SWITCH:
        # nothing went live: the push fails (it exited 0 before), git's line says why
        assert code != 0 and f"(deploy #{n} interrupted at {phase}: " in out, out
        assert live == before, (live, before)
        assert entry["outcome"] == "interrupted" and entry["failed_phase"] == phase
        assert f"last       #{n} interrupted at {phase}" in status
        assert "nothing of it went live" in out
        building = [r for r in releases["releases"] if r["sha"] == sha]
        assert all(r["state"] == "interrupted" for r in building)
        assert releases["rollback_to"] != (building[0]["id"] if building else None)
        row["outcome"] = (
            f"`current` still {before[-7:]}, serving; #{n} recorded `interrupted at {phase}`"
            + (f"; recovery {stopped.split('; ', 1)[1]}" if stopped else "")
            + (f"; its release kept as `interrupted` ({len(building)})" if building else "")
        )
    else:
        assert code == 0, out  # completed by the recovery: live, so the push succeeds
        assert live.endswith(sha[:7]), (live, sha)
        assert entry["outcome"] == "live" and entry["recovered"]["phase"] == phase
        assert "completing it" in out
        assert f"(deploy #{n}, completed after it was interrupted at {phase})" in last_line(out)
        assert greeting_of(host.dir / "releases" / live) == f"killed at {phase}"
        row["outcome"] = (
            f"recovery completed it from {phase}: `{last_line(out)[11:]}`; "
            f"history `live (recovered)`"
        )
    # the next push deploys normally
    restore = {name: (work.path / name).read_text() for name in files if name != "shipyard.toml"}
    if "shipyard.toml" in files:
        restore["shipyard.toml"] = FAST_TOML
    if phase == "migrate":
        restore = {}
    after = work.commit(f"after {phase}", **{"mysite/version.py": f'GREETING = "after {phase}"\n'})
    if "shipyard.toml" in files:
        after = work.commit("restore", **{"shipyard.toml": FAST_TOML})
    result = work.push()
    assert last_line(result.out).startswith(f"shipyard ▸ live: {after[:7]}"), result.out
    assert check_invariants(host).endswith(after[:7])
    if phase == "venv":
        assert "built" in phase_line(result.out, "venv") or "reused" in phase_line(
            result.out, "venv"
        )
    if phase == "migrate":
        assert "polls.0003_slow" in phase_line(result.out, "migrate")
    releases = json.loads(sy(host, "releases", "mysite", "--json").stdout)["releases"]
    assert all(r["state"] == "good" for r in releases), releases  # the half one was pruned
    row["outcome"] += "; next push live"
