"""Refs read from the bare repo's files where git keeps them there: what git says, always."""

from __future__ import annotations

import subprocess

import pytest

from shipyard import engine
from shipyard.app import App
from shipyard.release import tag_for
from shipyard.repo import has_tags, loose_ref


def git(repo, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    return done.stdout.strip()


@pytest.fixture
def app(tmp_path):
    app = App(tmp_path, "mysite")
    work = tmp_path / "work"
    subprocess.run(["git", "init", "-q", "-b", "main", str(work)], check=True)
    for n in (1, 2):
        (work / "f").write_text(f"{n}\n")
        git(work, "add", "f")
        git(work, "-c", "user.name=t", "-c", "user.email=t@l", "commit", "-qm", str(n))
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(app.repo)], check=True)
    return app


def tip_by_git(app: App, ref: str) -> str | None:
    return git(app.repo, "rev-parse", "--verify", "--quiet", ref) or None


def test_a_loose_ref_is_read_from_its_file(app):
    git(app.repo, "update-ref", "refs/heads/main", git(app.repo, "rev-parse", "main~1"))
    assert (app.repo / "refs/heads/main").is_file()
    assert loose_ref(app.repo, "refs/heads/main") == tip_by_git(app, "refs/heads/main")
    assert engine.branch_tip(app, "refs/heads/main") == tip_by_git(app, "refs/heads/main")


def test_a_packed_symbolic_or_missing_ref_is_left_to_git(app):
    git(app.repo, "pack-refs", "--all")
    assert not (app.repo / "refs/heads/main").exists()
    assert loose_ref(app.repo, "refs/heads/main") is None
    assert engine.branch_tip(app, "refs/heads/main") == tip_by_git(app, "refs/heads/main")
    assert engine.branch_tip(app, "refs/heads/main") is not None
    git(app.repo, "symbolic-ref", "refs/heads/other", "refs/heads/main")
    assert loose_ref(app.repo, "refs/heads/other") is None  # "ref: refs/heads/main"
    assert engine.branch_tip(app, "refs/heads/other") == tip_by_git(app, "refs/heads/main")
    assert loose_ref(app.repo, "refs/heads/gone") is None
    assert engine.branch_tip(app, "refs/heads/gone") is None


@pytest.mark.parametrize("content", [b"", b"abc\n", b"z" * 40 + b"\n", b"a" * 40 + b" junk\n"])
def test_a_ref_file_that_is_not_one_object_id_is_left_to_git(app, content):
    (app.repo / "refs/heads/odd").write_bytes(content)
    assert loose_ref(app.repo, "refs/heads/odd") is None


def test_only_refs_inside_the_repository_are_read(app, tmp_path):
    (tmp_path / "outside").write_text("a" * 40 + "\n")
    assert loose_ref(app.repo, "refs/../../outside") is None
    assert loose_ref(app.repo, "HEAD") is None


def test_a_repo_without_tags_is_not_asked_for_them_and_one_with_tags_is(app):
    head = git(app.repo, "rev-parse", "main")
    assert not has_tags(app.repo) and tag_for(app, head) is None
    git(app.repo, "tag", "v1", head)
    assert has_tags(app.repo) and tag_for(app, head) == "v1"
    git(app.repo, "pack-refs", "--all")
    assert not list((app.repo / "refs" / "tags").iterdir())  # packed: only in packed-refs
    assert has_tags(app.repo) and tag_for(app, head) == "v1"
    git(app.repo, "tag", "-d", "v1")
    assert not has_tags(app.repo)
