"""`shipyard run`: its options around --, masked streaming, exit statuses, the migration wait."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from shipyard import lock, oneoff
from shipyard.app import App
from shipyard.errors import ShipyardError
from shipyard.report import Masker


@pytest.mark.parametrize(
    "words, expected",
    [
        (["--", "python", "-c", "x"], (["python", "-c", "x"], {})),
        (["--no-wait", "--", "ls", "--", "-l"], (["ls", "--", "-l"], {"no-wait": True})),
        (["--release", "v1.2", "--", "ls"], (["ls"], {"release": "v1.2"})),
        (["--release=v1.2", "ls", "-l"], (["ls", "-l"], {"release": "v1.2"})),
        (["--host", "web2", "ls"], (["ls"], {"host": "web2"})),
        (
            ["--host=web2", "--release", "v1", "--", "ls"],
            (["ls"], {"host": "web2", "release": "v1"}),
        ),
        (["python", "manage.py", "shell"], (["python", "manage.py", "shell"], {})),
        (["--"], ([], {})),
        ([], ([], {})),
    ],
)
def test_options_around_the_command(words, expected):
    assert oneoff.split(words) == expected


def test_an_unknown_option_before_the_command_is_refused():
    with pytest.raises(ShipyardError, match="unexpected '--verbose' before --"):
        oneoff.split(["--verbose", "--", "ls"])


def test_piped_output_is_masked_by_line_and_the_status_passed_through(tmp_path: Path, capfd):
    code = "import sys; print('token=abcd-secret-1'); print('err', file=sys.stderr); sys.exit(7)"
    mask = Masker({"API_TOKEN": "abcd-secret-1"})
    status = oneoff.piped([sys.executable, "-c", code], tmp_path, dict(os.environ), mask)
    out, err = capfd.readouterr()
    assert status == 7 and out == "token=********\n" and err == "err\n"
    killed = oneoff.piped(
        [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"],
        tmp_path,
        dict(os.environ),
        mask,
    )
    assert killed == 128 + 15
    assert oneoff.piped(["no-such-command-here"], tmp_path, dict(os.environ), mask) == 127


def test_a_partial_line_is_shown_once_idle(tmp_path: Path):
    read, write = os.pipe()
    stream = oneoff.Stream(write, Masker(), by_line=True)
    stream.feed(b"prompt> ")
    stream.since -= oneoff.FLUSH_AFTER
    stream.tick()
    os.close(write)
    assert os.read(read, 100) == b"prompt> "


def test_a_migration_in_progress(tmp_path: Path):
    app = App.at("mysite", tmp_path)
    app.run.mkdir(parents=True)
    note = {"deploy": 3, "sha": "a" * 40, "pusher": "bob", "since": time.time(), "phase": "migrate"}
    with lock.exclusive(app.deploy_lock, note):
        assert oneoff.migrating(app)["deploy"] == 3
        with pytest.raises(ShipyardError, match="deploy #3 .* is migrating mysite's database"):
            oneoff.wait_for_migrations(app, wait=False, say=print)
    assert oneoff.migrating(app) is None
    oneoff.wait_for_migrations(app, wait=False, say=print)  # nothing running: no wait
