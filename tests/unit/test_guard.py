"""The root guard: one refusal, also where every pushed command gets its environment."""

from __future__ import annotations

import os

import pytest

from shipyard import guard, release
from shipyard.app import App
from shipyard.errors import RootRefused

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the guard refuses root only")


def test_no_pushed_command_gets_an_environment_as_root_unless_allowed(tmp_path):
    app = App(tmp_path, "mysite")
    app.dir.mkdir()
    with pytest.raises(RootRefused) as info:  # no host config: nothing allows root
        release.command_env(app, app.releases / "r", {})
    assert str(info.value) == f"{guard.REFUSAL}; {guard.root_hint(app)}"
    assert "\n" not in str(info.value)
    app.config_file.write_text("allow_root = false\n")
    with pytest.raises(RootRefused):
        release.command_env(app, app.releases / "r", {})
    app.config_file.write_text("allow_root = true\n")
    assert release.command_env(app, app.releases / "r", {})["VIRTUAL_ENV"].endswith("r/.venv")
