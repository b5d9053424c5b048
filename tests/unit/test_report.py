import io

import pytest

from shipyard.app import App, check_app_name, check_release_id
from shipyard.errors import AppError
from shipyard.options import parse_options, wants_color
from shipyard.report import Masker, Reporter


def test_masker_hides_secret_values_and_url_passwords():
    mask = Masker(
        {"SECRET_KEY": "s3cr3t-value", "DEBUG": "1", "DATABASE_URL": "postgres://u:pw@h/db"}
    )
    assert mask("key=s3cr3t-value debug=1") == "key=******** debug=1"
    assert mask("connect postgres://bob:hunter2@db/x") == "connect postgres://bob:********@db/x"


def test_reporter_masks_and_clips():
    out = io.StringIO()
    reporter = Reporter(out)
    reporter.mask = Masker({"API_TOKEN": "abcdef123"})
    reporter.line("token abcdef123 " + "x" * 1000)
    text = out.getvalue()
    assert "abcdef123" not in text and "more characters)" in text and len(text) < 500


@pytest.mark.parametrize("name", ["../x", "a/b", "My App", "é", "", "-x", "a" * 64])
def test_bad_app_names_refused(name):
    with pytest.raises(AppError):
        check_app_name(name)


@pytest.mark.parametrize("rid", ["../20261129T013000Z-1a2b3c4", "x", "20261129T013000Z-1a2b3c4/.."])
def test_bad_release_ids_refused(rid):
    with pytest.raises(AppError):
        check_release_id(rid)


def test_app_paths(tmp_path):
    app = App.at("mysite", tmp_path)
    assert app.repo == tmp_path / "mysite" / "repo.git"
    assert app.live_release() is None


def test_push_options():
    assert parse_options(["skip-migrate", "color=never", "message=hi there"]) == {
        "skip-migrate": "",
        "color": "never",
        "message": "hi there",
    }
    with pytest.raises(Exception, match="unknown push option 'colour'"):
        parse_options(["colour=never"])
    assert not wants_color({"color": "never"}, {})
    assert not wants_color({}, {"NO_COLOR": "1"})
    assert wants_color({"color": "always"}, {"NO_COLOR": "1"})


def test_escape_spells_out_control_characters_and_keeps_utf8():
    from shipyard.report import escape

    assert (
        escape("x\n\x1b[32m✓\x1b[0m ok\r\x00\x7f\x9b")
        == "x\\n\\x1b[32m✓\\x1b[0m ok\\r\\x00\\x7f\\x9b"
    )
    assert escape("café ✓ tab\there") == "café ✓ tab\there"
    assert escape("a\u202eb\u2028c") == "a\\u202eb\\u2028c"


def test_reporter_colours_only_its_own_marks():
    out = io.StringIO()
    reporter = Reporter(out, color=True)
    reporter.ok("build", 0.1, "x\n\x1b[32m✓\x1b[0m verify")
    reporter.final("live: \x1b[31mred", good=True)
    lines = out.getvalue().splitlines()
    assert lines[0] == "  \x1b[32m✓\x1b[0m build           0.10s  x\\n\\x1b[32m✓\\x1b[0m verify"
    assert lines[1] == "\x1b[32mshipyard ▸ live: \\x1b[31mred\x1b[0m" and len(lines) == 2
