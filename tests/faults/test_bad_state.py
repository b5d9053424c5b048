"""Bad state and bad input that would take the site down: a `current` that is not a
release, a Procfile without `web:` while the site runs.

One deployed app for the module; each case starts from the clone at the host's branch
and leaves the host serving (check_invariants) when it is done.
"""

from __future__ import annotations

import json
import shutil

import faultlib
import pytest
from conftest import run
from faultlib import check_invariants, entries, fetch, greeting_of, last_line, sy

observe, site, clean = faultlib.observe, faultlib.site, faultlib.clean


def greet(work, text: str) -> str:
    return work.commit(text, **{"mysite/version.py": f'GREETING = "{text}"\n'})


@pytest.mark.parametrize("target", ["../../..", "releases/..", "releases", "/etc"])
def test_current_that_is_not_a_release(clean, observe, target):
    host, work, before = clean
    row = observe("bad input", f"`current -> {target}`: status, doctor, then a push")
    link = host.dir / "current"
    link.unlink()
    link.symlink_to(target)
    status = sy(host, "status", "mysite", check=False)
    assert status.returncode == 0, status.stderr
    assert "mysite: nothing is live (no valid live release)" in status.stdout
    said = f"! current -> {target} is not a release"
    assert said in status.stdout, status.stdout
    assert "! the next deploy sets it: shipyard deploy mysite" in status.stdout
    doctor = sy(host, "doctor", "mysite", check=False)
    assert doctor.returncode != 0
    assert f"no valid live release: current -> {target} is not a release" in doctor.stdout
    assert "the next deploy replaces it (push again, or `shipyard deploy mysite`)" in doctor.stdout
    sha = greet(work, f"after current -> {target}")
    out = work.push().out
    assert last_line(out).startswith(f"shipyard ▸ live: {sha[:7]}"), out
    live = check_invariants(host)
    assert live.endswith(sha[:7]) and live != before
    assert fetch(host.port)[1].strip() == f"after current -> {target}"
    assert entries(host)[-1]["previous"] is None  # a first deploy: nothing valid was live
    row["outcome"] = (
        f"`status` (exit 0): `nothing is live (no valid live release)`, "
        f"`{said.removeprefix('! ')}`; `doctor` fails it with the fix; "
        "the next push deployed as a first deploy and replaced it"
    )


def test_current_that_is_a_directory(clean, observe):
    host, work, before = clean
    row = observe("bad input", "`current` a real directory (not a link), then a push")
    link = host.dir / "current"
    link.unlink()
    link.mkdir()
    (link / "notes.txt").write_text("kept\n")
    try:
        status = sy(host, "status", "mysite").stdout
        assert "nothing is live (no valid live release)" in status
        assert "! current is a directory, not a link to a release" in status
        doctor = sy(host, "doctor", "mysite", check=False).stdout
        assert f"move it away (mv {link} {link}.old)" in doctor
        sha = greet(work, "current is a directory")
        n = len(entries(host))
        out = work.push(check=False).out
        line = next(ln for ln in out.splitlines() if "✗ switch" in ln)
        assert "is a directory, not a link to a release: the switch would replace it" in line
        assert f"hint: move it away (mv {link} {link}.old), then deploy again" in out
        assert entries(host)[n]["outcome"] == "failed" and host.branch() != sha
        assert host.branch() is None  # reset to what is live: nothing valid
        assert (link / "notes.txt").read_text() == "kept\n"  # nothing lost
        status_code, body = fetch(host.port)  # the processes of the old release still serve
        assert status_code == 200
        assert body.strip() == greeting_of(host.dir / "releases" / before)
    finally:
        shutil.rmtree(link)
        link.symlink_to(f"releases/{before}")
        live_sha = json.loads((link / ".shipyard" / "release.json").read_text())["sha"]
        run("git", "--git-dir", host.repo, "update-ref", "refs/heads/main", live_sha)
    check_invariants(host)
    row["outcome"] = (
        "`status` and `doctor` say `current is a directory, not a link to a release`; the push "
        f"failed at switch: `{line.split('✗ switch', 1)[1].split('0s', 1)[-1].strip()[:90]}…`, "
        "the directory kept, the old processes serving"
    )


WORKER_ONLY = "worker: sleep 100000\n"


def rejected_line(out: str) -> str:
    return next(ln for ln in out.splitlines() if "[remote rejected]" in ln)


def without_web_setting(host) -> None:
    config = host.dir / "shipyard.toml"
    lines = config.read_text().splitlines()
    config.write_text("".join(f"{ln}\n" for ln in lines if ln.split("=")[0].strip() != "web"))


def test_procfile_without_web_while_web_runs(clean, observe):
    host, work, before = clean
    row = observe("bad input", "a Procfile with only `worker:` while web runs")
    work.commit("worker only", Procfile=WORKER_ONLY)
    tip, n = host.branch(), len(entries(host))
    result = work.push(check=False)
    assert result.returncode != 0, result.out
    line = rejected_line(result.out)
    assert "Procfile has no `web:` line: deploying it would stop web" in line, line
    assert (
        f"add a `web:` line to the Procfile, or set `web = 0` in {host.dir}/shipyard.toml" in line
    )
    assert host.branch() == tip and len(entries(host)) == n
    assert check_invariants(host) == before  # the site still answers, on the same release
    said = line.split("(", 1)[1].rsplit(")", 1)[0]
    # on purpose: the host says it runs without web
    host.set_host_config(web=0)
    try:
        out = work.push().out
        assert last_line(out).startswith("shipyard ▸ live:"), out
        assert "web stopped" in out and "worker ×1 running" in out
        rows = [r for r in faultlib.process_views.status(faultlib.app_of(host)) if r["release"]]
        assert [r["process"].split(".")[0] for r in rows if r["live"]] == ["worker"], rows
    finally:
        without_web_setting(host)
    work.git("checkout", "-q", tip, "--", "Procfile")
    sha = work.commit("web again")
    assert last_line(work.push().out).startswith(f"shipyard ▸ live: {sha[:7]}")
    check_invariants(host)
    row["outcome"] = (
        f"push refused before the branch moved, the site still served: `{said}`; "
        "with `web = 0` in the host's shipyard.toml it deploys (web stopped, worker running)"
    )


def test_first_deploy_without_web(tmp_path, observe):
    row = observe("bad input", "a first deploy whose Procfile has only `worker:`")
    host = faultlib.make_host(tmp_path / "apps")
    work = faultlib.make_work(tmp_path / "work", host)
    try:
        work.commit("worker only", Procfile=WORKER_ONLY, **{"shipyard.toml": faultlib.NO_BUILD})
        result = work.push(check=False)
        assert result.returncode != 0, result.out
        line = rejected_line(result.out)
        assert f"would leave port {host.port} with no web process" in line, line
        assert host.branch() is None and not (host.dir / "current").exists()
        # on purpose, app side: [processes] web = 0
        work.commit(
            "no web here", **{"shipyard.toml": faultlib.NO_BUILD + "\n[processes]\nweb = 0\n"}
        )
        out = work.push().out
        assert last_line(out).startswith("shipyard ▸ live:"), out
        assert "worker ×1 running" in out
    finally:
        host.stop_processes()
    row["outcome"] = (
        f"push refused, nothing created: `{line.split('(', 1)[1].split(';')[0]}`; "
        "with `[processes] web = 0` in the app's shipyard.toml it deploys"
    )
