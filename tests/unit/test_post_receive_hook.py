"""The post-receive hook starts Python only when it has something to say: a tag, or a branch
this app does not deploy. A push of the deploy branch alone (proc-receive's) starts none."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shipyard import repo

A, B, ZERO = "1" * 40, "2" * 40, "0" * 40


@pytest.fixture
def hook(tmp_path: Path):
    bare = tmp_path / "repo.git"
    subprocess.run(["git", "init", "-q", "--bare", str(bare)], check=True)
    for value in ("refs/tags", "refs/heads/main"):
        subprocess.run(
            ["git", "--git-dir", str(bare), "config", "--add", "receive.procReceiveRefs", value],
            check=True,
        )
    fake = tmp_path / "python"  # records that it ran, and what it was given
    fake.write_text(f"#!/bin/sh\ncat > {tmp_path / 'ran'}\n")
    fake.chmod(0o755)
    script = tmp_path / "post-receive"
    script.write_text(repo.POST_RECEIVE.format(module="shipyard.hooks.post_receive", python=fake))
    script.chmod(0o755)

    def run(lines: str) -> str | None:
        env = {**os.environ, "GIT_DIR": str(bare)}
        subprocess.run([str(script)], input=lines, text=True, env=env, check=True, cwd=bare)
        ran = tmp_path / "ran"
        text = ran.read_text() if ran.exists() else None
        ran.unlink(missing_ok=True)
        return text

    return run


def test_the_deploy_branch_alone_starts_no_python(hook):
    assert hook(f"{A} {B} refs/heads/main\n") is None
    assert hook(f"{A} {ZERO} refs/heads/main\n") is None  # a deletion: nothing to say either
    assert hook("") is None


def test_a_tag_or_another_branch_is_handed_to_python_whole(hook):
    lines = f"{A} {B} refs/heads/main\n{ZERO} {B} refs/tags/v1\n"
    assert hook(lines) == lines
    assert hook(f"{ZERO} {B} refs/heads/other\n") == f"{ZERO} {B} refs/heads/other\n"


def test_the_installed_hook_names_its_interpreter():
    for module in repo.HOOKS.values():
        assert repo.hook_interpreter(repo.hook_script(module)) == sys.executable


def test_a_last_line_without_its_newline_is_read_too(hook):
    assert hook(f"{ZERO} {B} refs/tags/v1") == f"{ZERO} {B} refs/tags/v1\n"
    assert hook(f"{A} {B} refs/heads/main") is None
