"""What proc-receive reads of a pushed object before the branch moves, from a real repo."""

from __future__ import annotations

import subprocess

import pytest

from shipyard.hooks.proc_receive import CHECKED, read_pushed


def git(*args: str) -> str:
    return subprocess.run(["git", *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    git("init", "-q", "-b", "main")
    git("config", "user.name", "t")
    git("config", "user.email", "t@l")
    (tmp_path / "requirements.txt").write_text("django\n")
    git("add", "-A")
    git("commit", "-qm", "one")
    (tmp_path / "Procfile").write_text("web: gunicorn app\n")
    git("add", "-A")
    git("commit", "-qm", "two")
    return tmp_path


def test_a_pushed_commit_is_read_with_its_parents_and_checked_files(repo):
    head, parent = git("rev-parse", "HEAD"), git("rev-parse", "HEAD~1")
    pushed = read_pushed(head, CHECKED)
    assert (pushed.commit, pushed.tag, pushed.parents) == (head, None, [parent])
    assert pushed.blobs == {"Procfile": b"web: gunicorn app\n", "requirements.txt": b"django\n"}
    assert read_pushed(parent, CHECKED).parents == []  # a root commit


def test_a_pushed_annotated_tag_is_peeled_to_its_commit(repo):
    git("tag", "-a", "v1", "-m", "v1", "HEAD~1")
    pushed = read_pushed(git("rev-parse", "v1"), CHECKED)
    assert (pushed.commit, pushed.tag) == (git("rev-parse", "HEAD~1"), "v1")
    assert pushed.parents is None  # not read: merge-base decides a forced update
    assert pushed.blobs == {"requirements.txt": b"django\n"}
