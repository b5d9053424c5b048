"""shipyard.owner: who can change a path, and a step run as another user."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from shipyard import owner
from shipyard.errors import ShipyardError

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: chowns and drops to nobody")
NOBODY = pwd.getpwnam("nobody")


@pytest.fixture
def top(tmp_path: Path) -> Path:
    top = tmp_path / "top"
    top.mkdir(mode=0o755)
    top.chmod(0o755)
    return top


def test_untrusted_names_who_else_could_change_a_path(top: Path):
    (top / "file").write_text("x")
    assert owner.untrusted(top / "file") == []
    os.chown(top, NOBODY.pw_uid, NOBODY.pw_gid)
    assert owner.untrusted(top / "file") == [f"{top} is owned by nobody"]
    os.chown(top, 0, 0)
    top.chmod(0o777)
    assert owner.untrusted(top / "file") == [f"{top} is writable by group or others (mode 777)"]
    top.chmod(0o1777)  # sticky, like /tmp: others replace only their own entries
    assert owner.untrusted(top / "file") == []


def test_untrusted_checks_where_a_link_leads(top: Path):
    theirs = top / "theirs"
    theirs.mkdir()
    (theirs / "python").write_text("#!/bin/sh\n")
    os.chown(theirs, NOBODY.pw_uid, NOBODY.pw_gid)
    (top / "python").symlink_to("theirs/python")
    assert owner.untrusted(top / "python") == [f"{theirs} is owned by nobody"]
    (theirs / "python").chmod(0o666)
    assert f"{theirs}/python is writable by group or others (mode 666)" in owner.untrusted_tree(top)


def test_first_owner_is_the_nearest_one_but_root(top: Path):
    assert owner.first_owner(top / "app") is None
    os.chown(top, NOBODY.pw_uid, NOBODY.pw_gid)
    assert owner.first_owner(top / "app" / "repo.git").name == "nobody"


def test_call_as_runs_the_step_as_that_user_and_brings_back_its_answer(tmp_path: Path):
    nobody = owner.User.of(NOBODY)
    assert owner.call_as(nobody, lambda: [os.getuid(), os.geteuid(), os.getgroups()]) == [
        NOBODY.pw_uid,
        NOBODY.pw_uid,
        [g for g in os.getgrouplist("nobody", NOBODY.pw_gid)],
    ]
    secret = tmp_path / "secret"
    secret.write_text("root only")
    secret.chmod(0o600)
    with pytest.raises(ShipyardError, match="Permission denied \\(as nobody\\)"):
        owner.call_as(nobody, secret.read_text)
    with pytest.raises(ShipyardError, match="^no such app$"):
        owner.call_as(nobody, lambda: (_ for _ in ()).throw(ShipyardError("no such app")))
    assert os.geteuid() == 0  # the caller is still root
