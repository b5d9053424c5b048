"""The one command runner: a timeout stops the command's whole process group."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest

from shipyard import command
from shipyard.app import App
from shipyard.config import HostConfig
from shipyard.context import Deploy
from shipyard.errors import CommandFailed, CommandTimedOut, PhaseError
from shipyard.report import Reporter


def alive(pid: int) -> bool:
    """Is ``pid`` a process that still runs (a zombie nobody reaped yet does not)?"""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def wait_gone(pid: int, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)


@pytest.fixture
def d(tmp_path: Path) -> Deploy:
    app = App.at("mysite", tmp_path)
    app.dir.mkdir()
    app.config_file.write_text("allow_root = true\n")  # commands refuse root without it
    release = app.release_dir("20260101T000000Z-aaaaaaa")
    release.mkdir(parents=True)
    d = Deploy(app, HostConfig(), 1, "a" * 40, "refs/heads/main", Reporter(io.StringIO()))
    d.release_id = release.name
    return d


def test_a_timed_out_build_step_leaves_no_grandchild(d: Deploy):
    """The shell's background ``sleep`` (a grandchild of the deploy) goes with the shell."""
    step = "sh -c 'sleep 600 & echo $! > grandchild.pid; echo started; wait'"
    with pytest.raises(CommandTimedOut) as info:
        command.run_in_release(d, step, f"build step `{step}`", timeout=1)
    assert isinstance(info.value, PhaseError)  # a phase failure: the deploy is undone
    assert info.value.message == f"build step `{step}` did not finish within 1s and was stopped"
    assert info.value.output == "started\n"
    pid = int((d.release / "grandchild.pid").read_text())
    assert wait_gone(pid), f"the build step's grandchild {pid} outlived its timeout"


def test_a_failed_command_carries_its_exit_status_and_output(d: Deploy):
    with pytest.raises(CommandFailed) as info:
        command.run_in_release(d, "echo oops; exit 3", "release command")
    assert info.value.message == "release command failed (exit 3)"
    assert info.value.result.exited == 3 and info.value.output == "oops\n"


def test_output_is_handed_on_line_by_line_as_it_comes(d: Deploy):
    lines: list[str] = []
    result = command.in_release(d, "printf 'a\\nb\\nc'", on_line=lambda line, _: lines.append(line))
    assert result.ok and result.output == "a\nb\nc"
    assert lines == ["a\n", "b\n", "c"]


def test_the_release_environment_and_a_missing_program(d: Deploy):
    result = command.in_release(d, 'echo "$SHIPYARD_RELEASE $PYTHONUNBUFFERED"')
    assert result.output == f"{d.release_id} 1\n"
    missing = command.in_release(d, ["no-such-program-xyz"], timeout=5)
    assert missing.exited == 127 and not missing.ok and not missing.timed_out
