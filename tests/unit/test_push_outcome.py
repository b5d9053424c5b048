"""The pieces of a truthful push that need no git: options, the bounded log, the push's tail."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from shipyard.app import App
from shipyard.engine import bounded
from shipyard.errors import ShipyardError
from shipyard.hooks import worker as hook_worker
from shipyard.hooks.proc_receive import PktLines, Reply, answer
from shipyard.hooks.worker import Lines, PushLines, copy_log
from shipyard.options import parse_options, refuse_push_only, waits


@pytest.mark.parametrize(
    ("raw", "said"),
    [
        (["skip-migrate=false"], "push option skip-migrate takes no value"),
        (["no-wait=1"], "push option no-wait takes no value"),
        (["wait", "no-wait"], "wait and no-wait contradict"),
        (["no_wait"], "unknown push option 'no_wait'"),
    ],
)
def test_impossible_options_are_refused(raw, said):
    with pytest.raises(ShipyardError, match=said):
        parse_options(raw)


def test_who_waits():
    host = SimpleNamespace(push_wait=True)
    assert waits({}, host) and not waits({"no-wait": ""}, host)
    quiet = SimpleNamespace(push_wait=False)
    assert not waits({}, quiet) and waits({"wait": ""}, quiet)
    with pytest.raises(ShipyardError, match="runs in the foreground"):
        refuse_push_only({"no-wait": ""}, "rollback")
    refuse_push_only({"skip-migrate": ""}, "rollback")


def test_bounded_output_keeps_all_of_it_up_to_the_limit_then_both_ends():
    short = "\n".join(f"line {i}" for i in range(100))
    assert bounded(short) == short.splitlines()
    long = "\n".join(f"line {i:05d}" for i in range(10000))  # 110,000 characters
    kept = bounded(long, limit=11000)
    assert kept[0] == "line 00000" and kept[-1] == "line 09999"
    note = next(line for line in kept if "cut here" in line)
    assert "line(s) cut here: the log keeps 11,000 characters" in note
    assert int(note.split()[1]) + len(kept) - 1 == 10000


def test_the_push_shows_a_long_outputs_tail_and_where_the_rest_is(tmp_path):
    app = App(tmp_path, "mysite")
    log = tmp_path / "7.log"
    detail = "".join(f"    │ out {i}\n" for i in range(1, 51))
    log.write_text("  ✗ build  0.10s  failed\n" + detail + "shipyard ▸ failed at build\n")
    out = io.BytesIO()
    copy_log(log, lambda: True, out, lines=PushLines(app, 7))
    shown = out.getvalue().decode().splitlines()
    assert (
        shown[1]
        == "    │ … 30 earlier line(s) of this output are in the log: `shipyard log mysite 7`"
    )
    assert shown[2] == "    │ out 31" and shown[-2] == "    │ out 50"
    assert shown[-1] == "shipyard ▸ failed at build" and len(shown) == 23


def test_log_lines_lose_colour_only_when_asked(tmp_path):
    log = tmp_path / "1.log"
    log.write_bytes(
        b"\x1b[1mshipyard \xe2\x96\xb8 deploy\x1b[0m\n  \x1b[32m\xe2\x9c\x93\x1b[0m ok\n"
    )
    plain, coloured = io.BytesIO(), io.BytesIO()
    copy_log(log, lambda: True, plain, lines=Lines(strip_ansi=True))
    copy_log(log, lambda: True, coloured, lines=Lines())
    assert plain.getvalue() == "shipyard ▸ deploy\n  ✓ ok\n".encode()
    assert coloured.getvalue() == log.read_bytes()


def pkt(text: str) -> bytes:
    """One pkt-line as git frames it: four hex digits of length, then the line."""
    return f"{len(text) + 4:04x}{text}".encode()


def test_proc_receive_reads_gits_pkt_lines_and_answers_in_them():
    command = f"{'1' * 40} {'2' * 40} refs/heads/main\n"
    wire = pkt("version=1\0push-options atomic\n") + b"0000" + pkt(command) + b"0000"
    sent = io.BytesIO()
    proto = PktLines(io.BytesIO(wire + pkt("message=hello\n") + b"0000").read, sent.write)
    assert proto.read_seq() == [b"version=1\0push-options atomic\n"]
    assert proto.read_seq() == [command.encode()]
    assert proto.read_seq() == [b"message=hello\n"]
    answer(proto, [Reply("refs/heads/main", options=["forced-update"]), Reply("refs/x", "no")])
    assert sent.getvalue() == (
        pkt("ok refs/heads/main") + pkt("option forced-update") + pkt("ng refs/x no") + b"0000"
    )
    assert pkt("ok refs/heads/main").startswith(b"0016")


def test_proc_receive_ends_once_answered_without_tearing_the_interpreter_down():
    """git reports the push only once the hook has exited: its answer and exit handlers are
    out, the interpreter's teardown (freeing every module, 10-20 ms) is skipped."""
    script = (
        "import atexit, sys\n"
        "from shipyard.hooks import proc_receive\n"
        "class Module:\n"
        "    def __del__(self):\n"
        "        sys.stderr.write('torn down\\n')\n"
        "proc_receive.held = Module()  # freed by a normal exit's teardown\n"
        "atexit.register(lambda: sys.stderr.write('exit handler\\n'))\n"
        "proc_receive.serve = lambda: sys.stdout.write('0000')  # left in the buffer\n"
        "proc_receive.main()\n"
        "sys.stderr.write('returned\\n')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert (done.returncode, done.stdout, done.stderr) == (0, "0000", "exit handler\n")


@pytest.mark.parametrize("wire", [b"", b"00", b"zzzz", b"0010short"])
def test_proc_receive_stops_with_one_line_when_git_hangs_up(wire):
    with pytest.raises(SystemExit, match="proc-receive: git sent a broken pkt-line"):
        PktLines(io.BytesIO(wire).read, io.BytesIO().write).read_seq()


def test_the_hook_wakes_when_the_worker_says_its_outcome_is_recorded(monkeypatch):
    slept = []
    monkeypatch.setattr(hook_worker.time, "sleep", slept.append)
    ours, theirs = os.pipe()
    os.set_blocking(ours, False)
    pid = os.fork()
    if pid == 0:  # the worker: says so, and is gone
        os.write(theirs, b"1")
        os._exit(0)
    os.close(theirs)
    w = hook_worker.Worker(pid, ours)
    w.wait(60)  # readable: returns without sleeping the poll out
    assert slept == [] and w.outcome_known()
    w.wait(0.5)
    assert slept == [0.5]  # said: nothing left to wake on
    os.waitpid(pid, 0)
    os.close(ours)


def test_a_worker_gone_without_a_word_is_polled_not_selected(monkeypatch):
    ours, theirs = os.pipe()
    os.set_blocking(ours, False)
    pid = os.fork()
    if pid == 0:  # killed before it recorded anything
        os._exit(9)
    os.close(theirs)
    w = hook_worker.Worker(pid, ours)
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # it has exited; not reaped yet
    assert w.outcome_known() and w.returncode == 9
    assert w.reported is None  # the pipe's end was seen and closed: no busy select on it


def fake_deploy(root, name, number, sha, ref, options):
    os.write(1, f"deploy #{number} of {sha[:7]} by pid {os.getpid()}\n".encode())  # the log
    hook_worker.say_reported()
    return 0


def deploy_with(app: App, spare) -> tuple[hook_worker.Worker, str]:
    from shipyard import history

    number = history.claim_number(app)
    w = hook_worker.start(app, number, "a" * 40, "refs/heads/main", [], spare)
    _, status = os.waitpid(w.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return w, history.log_path(app, number).read_text()


def test_a_spare_worker_forked_before_the_checks_runs_the_deploy_it_is_handed(
    tmp_path, monkeypatch
):
    app = App(tmp_path, "mysite")
    app.dir.mkdir()
    monkeypatch.setattr(hook_worker, "run_deploy", fake_deploy)
    spare = hook_worker.prefork()
    w, log = deploy_with(app, spare)
    assert w.pid == spare.pid and log == f"deploy #1 of aaaaaaa by pid {spare.pid}\n"
    assert w.outcome_known()


def test_a_spare_closed_unused_exits_and_a_gone_one_is_replaced_by_a_fork(tmp_path, monkeypatch):
    app = App(tmp_path, "mysite")
    app.dir.mkdir()
    monkeypatch.setattr(hook_worker, "run_deploy", fake_deploy)
    unused = hook_worker.prefork()
    unused.close()  # the push was refused: nothing to deploy
    _, status = os.waitpid(unused.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    gone = hook_worker.prefork()
    os.kill(gone.pid, 9)
    os.waitpid(gone.pid, 0)
    w, log = deploy_with(app, gone)
    assert w.pid != gone.pid and log == f"deploy #1 of aaaaaaa by pid {w.pid}\n"
