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

observe = faultlib.observe


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    with faultlib.deployed(tmp_path_factory.mktemp("state")) as (host, work):
        yield host, work


@pytest.fixture
def clean(site):
    host, work = site
    work.git("reset", "-q", "--hard", host.branch())
    before = check_invariants(host)
    yield host, work, before
    work.git("reset", "-q", "--hard", host.branch())


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
