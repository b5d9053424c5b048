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


PEM = (
    "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n"
    "BKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj\n-----END PRIVATE KEY-----"
)


def test_masker_hides_every_line_of_a_multiline_value():
    mask = Masker({"SIGNING_KEY": PEM, "BANNER": "first line here\nsecond line here"})
    for line in PEM.splitlines():
        assert mask(f"    │ {line}") == "    │ ********"
    assert mask(PEM) == "********"
    assert "second line" not in mask("x second line here y")  # multi-line, whatever its name


@pytest.mark.parametrize(
    ("env", "printed", "hidden"),
    [
        ({"REDIS_URL": "redis://:Pw@127.0.0.1:6379/0"}, "redis://:Pw@127.0.0.1:6379", "Pw@"),
        ({"CACHE": "redis://cache:c4che-pw@h:6379"}, "AUTH c4che-pw failed", "c4che-pw"),
        ({"X": "postgres://app:s%40fe-pass@db/app"}, "password s@fe-pass wrong", "s@fe-pass"),
        ({"X": "postgres://app:s@fe-pass@db/app"}, "dsn app:s%40fe-pass@db", "s%40fe-pass"),
        ({"X": "amqp://u:p@ss-word@mq/vhost"}, "amqp://u:p@ss-word@mq/vhost", "ss-word"),
        ({"X": "postgres://db/app?password=qu3ry-pw"}, "using qu3ry-pw", "qu3ry-pw"),
        ({"X": "host=db password='lib pq pw'"}, "auth 'lib pq pw'", "lib pq pw"),
        ({}, "connect mysql://root:toor@db:3306/x", "toor"),
        ({}, "connect redis://:x@db:6379/0", ":x@"),
        ({}, "url https://db/app?sslmode=require&password=hunter2", "hunter2"),
    ],
)
def test_masker_hides_url_passwords_in_any_form(env, printed, hidden):
    masked = Masker(env)(printed)
    assert hidden not in masked and "********" in masked, masked


def test_masker_leaves_urls_without_passwords_alone():
    mask = Masker({})
    for text in ("http://localhost:8000/healthz", "https://example.com:443/a@b", "PWD=/srv"):
        assert mask(text) == text


def test_the_heartbeat_speaks_during_a_long_phase_only_and_one_thread_serves_them_all():
    import threading
    import time

    out = io.StringIO()
    r = Reporter(out, heartbeat=0.05)
    r.quiet()  # one thread per process: none from an earlier test
    before = threading.active_count()
    for name in ("checkout", "link", "venv"):
        with r.ticking(name):
            pass  # quick: no heartbeat
        assert threading.active_count() == before + 1  # the same thread, not one per phase
    with r.ticking("build"):
        time.sleep(0.18)
    said = out.getvalue()
    time.sleep(0.12)
    assert out.getvalue() == said  # nothing after the phase ended
    beats = [ln for ln in said.splitlines() if "still running" in ln]
    assert 2 <= len(beats) <= 4 and all(ln.startswith("  … build ") for ln in beats)
    assert not any(w in said for w in ("checkout", "link", "venv"))
    r.quiet()
    assert threading.active_count() == before  # before a fork: no other thread
    with r.ticking("again"):
        time.sleep(0.08)
    assert "  … again " in out.getvalue()  # a phase after quiet() starts another
    r.quiet()


def test_heartbeats_come_from_one_thread_while_a_step_runs_and_stop_with_it():
    import threading
    import time

    out = io.StringIO()
    slow, quick = Reporter(out, heartbeat=0.1), Reporter(out, heartbeat=0.1)
    threads = threading.active_count()
    with slow.ticking("build"):
        with quick.ticking("link"), quick.ticking("venv"):
            assert threading.active_count() <= threads + 1  # one thread for every step
        time.sleep(0.35)
    beats = out.getvalue().splitlines()
    assert len(beats) >= 2 and all("… build" in b and "still running" in b for b in beats)
    time.sleep(0.3)
    assert out.getvalue().splitlines() == beats  # none once the step ended


def test_quick_steps_do_not_wake_the_heartbeat_thread_yet_a_shorter_beat_comes_on_time():
    import time

    from shipyard.report import TICKER

    out = io.StringIO()
    calm, eager = Reporter(out, heartbeat=10), Reporter(out, heartbeat=0.1)
    calm.quiet()
    with calm.ticking("checkout"):
        time.sleep(0.05)  # the thread is started, and asleep until the beat is due
    woken = []
    notify = TICKER.cond.notify
    TICKER.cond.notify = lambda n=1: (woken.append(n), notify(n))  # type: ignore[method-assign]
    try:
        for phase in ("link", "venv", "data", "build", "migrate", "switch", "finish"):
            with calm.ticking(phase):
                pass  # each step's first beat is due after the thread wakes anyway
        assert woken == []  # a thread switch per phase, before
        with calm.ticking("restart"):
            started = time.monotonic()
            with eager.ticking("verify"):  # due before the thread's wake-up: it is woken
                while "… verify" not in out.getvalue() and time.monotonic() - started < 5:
                    time.sleep(0.01)
        assert woken == [1]
        assert "… verify" in out.getvalue() and time.monotonic() - started < 1
        assert "… restart" not in out.getvalue()
    finally:
        TICKER.cond.notify = notify  # type: ignore[method-assign]
        calm.quiet()
