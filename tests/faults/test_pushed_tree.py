"""What a pushed tree can do: nothing it holds may reach outside its release (a chain of
symlinks), forge a line the pusher or the log reader takes for shipyard's (file names,
command output, commit messages and tags with control characters), or print a secret
of the host's `.env` that masking missed (multi-line values, URL passwords).

One deployed app for the module; each case starts from the clone at the host's branch.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import faultlib
import pytest
from faultlib import check_invariants, entries

observe = faultlib.observe
ESC = "\x1b"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    with faultlib.deployed(tmp_path_factory.mktemp("tree")) as (host, work):
        yield host, work


@pytest.fixture
def clean(site):
    host, work = site
    work.git("reset", "-q", "--hard", host.branch())
    work.git("clean", "-q", "-fdx")
    before = check_invariants(host)
    yield host, work, before
    work.git("reset", "-q", "--hard", host.branch())
    work.git("clean", "-q", "-fdx")


def log_of(host, number: int) -> str:
    return (host.dir / "deploys" / f"{number}.log").read_text(errors="replace")


def test_symlink_chain_out_of_the_release(clean, observe):
    """Each link reads as inside the release; the chain ends at `/`."""
    host, work, before = clean
    row = observe("security", "a chain of symlinks, each inside the release as text, ending at /")
    depth = len(host.dir.parts) + 4  # releases/<id> and then some: `..` of / is /
    (work.path / "s").symlink_to(".")
    (work.path / "u1").symlink_to("s/..")
    for i in range(2, depth + 1):
        (work.path / f"u{i}").symlink_to(f"u{i - 1}/..")
    (work.path / "static").symlink_to(f"u{depth}")
    (work.path / "passwd").symlink_to(f"u{depth}/etc/passwd")
    assert (work.path / "passwd").read_text() == Path("/etc/passwd").read_text()  # it escapes
    sneaky = work.commit("a chain of links")
    n = len(entries(host))
    result = work.push(check=False)
    line = next((ln for ln in result.out.splitlines() if "✗ checkout" in ln), "")
    said = re.search(r"symlink \S+ -> \S+ points outside the release \(it resolves to /\S*\)", line)
    assert said, result.out
    assert "hint: make it a relative link to a file inside the repository" in result.out
    assert entries(host)[n]["outcome"] == "failed"
    assert check_invariants(host) == before
    assert not [p for p in (host.dir / "releases").iterdir() if sneaky[:7] in p.name]
    for release in (host.dir / "releases").iterdir():
        assert not os.path.lexists(release / "passwd")
    assert host.branch() != sneaky
    row["outcome"] = f"deploy failed at checkout, nothing went live: `{said.group(0)}`"
