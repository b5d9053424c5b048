"""Process logs: the stamper, merging by time, following rotated and new files."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from shipyard import logs, stamp
from shipyard.app import App
from shipyard.report import Masker

RELEASE = "20261201T093000Z-1a2b3c4"


def test_stamper_stamps_each_line_and_ends_with_its_writers(tmp_path: Path):
    """Through the real fork: the program's pid stays the program, its output arrives stamped."""
    out = tmp_path / "captured.log"
    code = (
        "import os, sys; from shipyard.stamp import start_stamper; "
        f"start_stamper({RELEASE!r}); pid = os.getpid(); "
        "print('one', flush=True); print('two', file=sys.stderr, flush=True); "
        "sys.stdout.write('partial'); sys.stdout.flush(); "
        "os.execv('/bin/sh', ['/bin/sh', '-c', 'echo exec $$ ' + str(pid)])"
    )
    with open(out, "wb") as f:
        subprocess.run([sys.executable, "-c", code], stdout=f, stderr=subprocess.STDOUT, check=True)
    deadline = time.monotonic() + 10
    while "exec " not in out.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = out.read_text().splitlines()
    texts = [stamp.STAMP.sub("", ln) for ln in lines]
    assert all(stamp.STAMP.match(ln) and f" {RELEASE}] " in ln for ln in lines), lines
    assert texts[:2] == ["one", "two"]
    assert texts[2].startswith("partial")  # with what followed, or on its own once idle
    shell_pid, program_pid = texts[-1].split()[-2:]
    assert shell_pid == program_pid  # exec'd in place: supervisord's pid is the program


def test_unstamp_gives_the_program_lines_back():
    text = stamp.stamp_line("Traceback (most recent call last):", RELEASE) + "\nplain"
    assert stamp.unstamp(text) == "Traceback (most recent call last):\nplain"


def write(path: Path, *entries: tuple[float, str]) -> None:
    with open(path, "a") as f:
        for when, text in entries:
            f.write(stamp.stamp_line(text, RELEASE, when) + "\n")


def test_last_lines_merge_processes_by_time(tmp_path: Path, capsys):
    app = App.at("mysite", tmp_path)
    (app.dir / "logs").mkdir(parents=True)
    write(app.dir / "logs" / "web-blue.1.log", (100, "w1"), (300, "w3"))
    write(app.dir / "logs" / "worker.1.log", (200, "k2"), (400, "k4"))
    (app.dir / "logs" / "listen-8000.log").write_text("not a process log\n")
    merged = sorted(
        (ln for s in logs.sources(app) for ln in logs.last_lines(s, 3)), key=lambda ln: ln.when
    )
    assert [ln.text for ln in merged] == ["w1", "k2", "w3", "k4"]
    printer = logs.Printer(Masker(), color=False)
    assert printer.line(merged[0]) == "01-01 00:01:40 web.1 blue   1a2b3c4 │ w1"
    assert [s.process for s in logs.sources(app, "worker")] == ["worker.1"]


def test_scheduled_jobs_runs_are_the_cron_process(tmp_path: Path):
    """`shipyard logs APP --process cron` shows what cron.py writes to logs/cron-NAME.log."""
    app = App.at("mysite", tmp_path)
    (app.dir / "logs").mkdir(parents=True)
    write(app.dir / "logs" / "web-blue.1.log", (100, "w1"))
    write(app.dir / "logs" / "cron-clear-sessions.log", (200, "cron clear-sessions: start"))
    assert [s.process for s in logs.sources(app, "cron")] == ["cron.clear-sessions"]
    merged = sorted(
        (ln for s in logs.sources(app) for ln in logs.last_lines(s, 3)), key=lambda ln: ln.when
    )
    assert [(ln.process, ln.text) for ln in merged] == [
        ("web.1", "w1"),
        ("cron.clear-sessions", "cron clear-sessions: start"),
    ]


def test_following_a_rotated_file(tmp_path: Path):
    path = tmp_path / "web-blue.1.log"
    write(path, (1, "a"))
    source = logs.Source(path, "web.1", "blue")
    assert [ln.text for ln in logs.last_lines(source, 10)] == ["a"]
    write(path, (2, "b"))
    os.rename(path, path.with_name(path.name + ".1"))  # supervisord rotates by size
    write(path, (3, "c"))
    assert [ln.text for ln in logs.read_new(source)] == ["b", "c"]
    with open(path, "a") as f:
        f.write(stamp.stamp_line("half", RELEASE, 4))  # no newline yet
    assert logs.read_new(source) == []
    with open(path, "a") as f:
        f.write(" done\n")
    assert [ln.text for ln in logs.read_new(source)] == ["half done"]


def test_secrets_are_masked():
    line = logs.Line(5, "web.1", None, RELEASE, "token is hunter2-secret")
    printer = logs.Printer(Masker({"API_TOKEN": "hunter2-secret"}), color=False)
    assert "hunter2" not in printer.line(line) and "********" in printer.line(line)


def test_each_process_type_gets_its_colour():
    printer = logs.Printer(Masker(), color=True)
    web = printer.line(logs.Line(5, "web.1", "blue", RELEASE, "a"))
    worker = printer.line(logs.Line(5, "worker.1", None, RELEASE, "b"))
    again = printer.line(logs.Line(6, "web.2", "blue", RELEASE, "c"))
    assert web.startswith(logs.COLORS[0]) and worker.startswith(logs.COLORS[1])
    assert again.startswith(logs.COLORS[0]) and logs.RESET in web


def test_lines_after_supervisord_let_go_reach_the_log_file(tmp_path: Path):
    """A stopped program's last lines (a goodbye, a traceback) are kept when supervisord has
    already dropped its pipe: they go to the program's log file instead."""
    source_r, source_w = os.pipe()
    out_r, out_w = os.pipe()
    os.close(out_r)  # supervisord is gone from the other end
    os.write(source_w, b"goodbye\n")
    os.close(source_w)
    log = tmp_path / "web.1.log"
    stamp.stamp(source_r, out_w, "20261201T000000Z-1a2b3c4", log)
    assert log.read_text().endswith("20261201T000000Z-1a2b3c4] goodbye\n")
