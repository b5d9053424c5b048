"""shared/.env edited by `shipyard config`: comments and order kept, read back exactly, refusals."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from conftest import run

from shipyard import repo, settings
from shipyard.app import App
from shipyard.errors import ShipyardError

ORIGINAL = """\
# the app's settings
DEBUG=0

export SECRET_KEY="old secret" # rotated yearly
DATABASE_URL=postgres://u:p@db/x
# end
"""


@pytest.fixture
def app(tmp_path: Path) -> App:
    app = App.at("mysite", tmp_path / "apps")
    repo.create(app, allow_root=True)
    settings.env_file(app).write_text(ORIGINAL)
    return app


@pytest.mark.parametrize(
    "value",
    [
        "plain",
        "two words",
        "it's",
        'say "hi"',
        "back\\slash \\' and \\\\",
        "a # not a comment",
        "multi\nline",
        "trailing space ",
        "",
        "ünïcode ✓",
        "$HOME and $(id)",
        "=starts with equals",
    ],
)
def test_values_read_back_exactly_as_set(app: App, value: str):
    _, new = settings.plan(app, {"GREETING": value, "DEBUG": value}, [])
    assert settings.parse(new, ".env") == {
        "DEBUG": value,
        "SECRET_KEY": "old secret",
        "DATABASE_URL": "postgres://u:p@db/x",
        "GREETING": value,
    }


def test_comments_and_order_are_kept(app: App):
    _, new = settings.plan(app, {"DEBUG": "1", "NEW": "x y"}, ["SECRET_KEY"])
    assert new == (
        "# the app's settings\nDEBUG=1\n\nDATABASE_URL=postgres://u:p@db/x\n# end\nNEW='x y'\n"
    )


def test_write_is_atomic_and_private(app: App):
    settings.env_file(app).chmod(0o644)
    settings.write(app, "A=1\n")
    assert settings.env_file(app).read_text() == "A=1\n"
    assert settings.env_file(app).stat().st_mode & 0o777 == 0o600
    assert [p.name for p in app.shared.iterdir() if p.name.startswith(".env")] == [".env"]


@pytest.mark.parametrize(
    "values, unset, message",
    [
        ({"1BAD": "x"}, [], "is not a valid environment variable name"),
        ({"BAD-KEY": "x"}, [], "is not a valid environment variable name"),
        ({"A": "${HOME}"}, [], "would not read back"),
        ({"A": "nul\0"}, [], "NUL byte"),
        ({}, ["NOT_THERE"], "NOT_THERE is not set"),
    ],
)
def test_bad_changes_are_refused(app: App, values, unset, message: str):
    with pytest.raises(ShipyardError, match=message.replace("$", r"\$")):
        settings.plan(app, values, unset)


def test_assignment_needs_an_equals_sign():
    assert settings.parse_assignment("A=b=c") == ("A", "b=c")
    with pytest.raises(ShipyardError, match="has no '='"):
        settings.parse_assignment("GREETING")
    # ssh joined `'HOSTS=a.example b.example'` into a line the server split at the space
    with pytest.raises(ShipyardError, match="rest of HOSTS's value, split off at a space") as e:
        settings.parse_assignment("b.example", "HOSTS=a.example")
    assert (
        "over ssh quote it twice" in e.value.hint
        and "\"'HOSTS=a.example b.example'\"" in e.value.hint
    )


def test_listing_masks_values(app: App):
    text = "\n".join(settings.listing(app))
    assert "old secret" not in text and "postgres" not in text and "********" in text
    assert "old secret" in "\n".join(settings.listing(app, show=True))


def cli(app: App, *args: str, input: str | None = None):
    env = {**os.environ, "SHIPYARD_ROOT": str(app.root)}
    return run(sys.executable, "-m", "shipyard", *args, check=False, env=env, input=input)


@pytest.mark.parametrize(
    "args, message",
    [
        (["config", "nosuchapp"], "no shipyard app at"),
        (["config", "set", "mysite", "GREETING"], "has no '='"),
        (["config", "set", "mysite", "9X=1"], "is not a valid environment variable name"),
        (["config", "set", "mysite", "A=1", "B"], "has no '='"),
        (["config", "set", "mysite", "HOSTS=a.example", "b.example"], "rest of HOSTS's value"),
        (["config", "unset", "mysite", "NOPE"], "NOPE is not set"),
        (["config", "get", "mysite", "NOPE"], "NOPE is not set"),
        (["config", "set", "mysite"], "name at least one KEY"),
    ],
)
def test_cli_bad_input_is_one_line_and_changes_nothing(app: App, args, message: str):
    result = cli(app, *args)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert settings.env_file(app).read_text() == ORIGINAL
    assert not app.history_file.exists()


def test_cli_set_from_stdin_without_processes(app: App):
    result = cli(app, "config", "set", "mysite", "TOKEN", "--stdin", input="s3cr3t-value\n")
    assert result.returncode == 0, result.stderr
    assert "s3cr3t-value" not in result.stdout
    assert cli(app, "config", "get", "mysite", "TOKEN").stdout == "s3cr3t-value\n"
    assert ORIGINAL in settings.env_file(app).read_text()
