"""A new venv's bytecode linked from the live venv by the distributions' RECORDs is what a
walk of both venvs' folders links: the same compiled files, the same ones left to compile."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from conftest import BIN, run

from shipyard import venv

pytestmark = pytest.mark.e2e

REQUIREMENTS = "django>=5.1,<5.3\ngunicorn>=23\n"


def make_venv(path: Path, requirements: Path, compiled: bool = False) -> Path:
    run(BIN / "uv", "venv", "-q", "--relocatable", "--python", sys.executable, path)
    env = {**os.environ, **({"UV_COMPILE_BYTECODE": "1"} if compiled else {})}
    run(BIN / "uv", "pip", "install", "-q", "--python", path / "bin" / "python", "-r",
        requirements, env=env)  # fmt: skip
    return next(path.glob("lib/python*/site-packages"))


def outcome(site: Path, todo: list[str]) -> tuple[list[str], set[tuple[str, int]]]:
    pycs = {(str(p.relative_to(site)), p.stat().st_ino) for p in site.rglob("*.pyc")}
    return sorted(os.path.relpath(p, site) for p in todo), pycs


def test_linking_by_record_links_what_a_walk_of_the_folders_links(tmp_path: Path):
    (tmp_path / "live.txt").write_text(REQUIREMENTS)
    (tmp_path / "new.txt").write_text(REQUIREMENTS + "six\n")
    live = make_venv(tmp_path / "live", tmp_path / "live.txt", compiled=True)
    by_walk = make_venv(tmp_path / "walk", tmp_path / "new.txt")
    by_record = make_venv(tmp_path / "record", tmp_path / "new.txt")

    walked = outcome(by_walk, venv._link_by_listing(by_walk, live, True))
    recorded = venv._link_by_record(str(by_record), str(live), True)
    assert recorded is not None  # every distribution has its RECORD
    recorded = outcome(by_record, recorded)

    assert recorded == walked
    assert recorded[0] == ["six.py"]  # only the added package is left to compile
    assert len(recorded[1]) > 900  # Django's bytecode, linked: the live venv's very files
    live_inodes = {p.stat().st_ino for p in live.rglob("*.pyc")}
    assert {ino for _, ino in recorded[1]} <= live_inodes
