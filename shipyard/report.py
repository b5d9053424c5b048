"""What the pusher reads: one line per phase, timed, and one last line that says what is live.

Output is line-based (git prefixes each line with ``remote:``), coloured only
when wanted, and written to the deploy's log, which the post-receive hook
streams. Everything a reporter prints that it did not write itself (file names,
command output, messages, tags, push options, a peer's lines) is masked and
then escaped (``escape``): a control character shows as ``\\x1b`` or ``\\n``
and is never acted on, so the only colour and the only new lines are shipyard's.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TextIO
from urllib.parse import quote, unquote

GREEN, RED, YELLOW, DIM, BOLD, RESET = (
    "\033[32m",
    "\033[31m",
    "\033[33m",
    "\033[2m",
    "\033[1m",
    "\033[0m",
)
SECRET_KEY = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|KEY|CREDENTIAL|DSN|DATABASE_URL|_URL$", re.I)
# scheme://[user]:password@host: the user may be empty (redis://:pw@host); the password runs
# to the authority's last "@" (a raw "@" in it is common), never past a "/" or a space.
URL_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)([^/\s]+)(@)")
# password=… as a URL's query (?password=…) or a libpq keyword string (host=db password=…)
KEYWORD_PASSWORD = re.compile(r"(\b(?:password|passwd)=)('[^']*'|[^\s&#;'\"]+)", re.I)
MIN_SECRET = 4  # shorter fragments are masked only where a pattern above finds them
MAX_LINE = 400
# What a terminal acts on rather than shows: C0 controls but tab (ESC starts colour and cursor
# moves, CR and LF start a line), DEL, C1 controls (U+009B is a one-character ESC [), the line
# and paragraph separators and the bidi overrides and isolates (they reorder what is shown).
UNSAFE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
NAMED = {"\n": "\\n", "\r": "\\r"}


class Skip(str):
    """A phase's result when it had nothing to do; the text says why."""


class Masker:
    """Hides secret values (from the app's .env) in anything we echo.

    Masked: the value of every secret-looking key; every line of every multi-line
    value (a PEM key is printed line by line); every password found in a value's
    URLs or ``password=`` settings, as written, percent-decoded and -encoded; and,
    in any text, whatever stands in a URL's or a ``password=`` password place.
    """

    def __init__(self, env: dict[str, str] | None = None) -> None:
        secrets: set[str] = set()
        for key, value in (env or {}).items():
            value = value or ""
            if SECRET_KEY.search(key) or "\n" in value:
                secrets.add(value)
                secrets.update(line.strip() for line in value.splitlines())
            # a password inside a URL (DATABASE_URL) may be echoed on its own, e.g. by a driver
            for match in [*URL_PASSWORD.finditer(value), *KEYWORD_PASSWORD.finditer(value)]:
                password = match.group(2).strip("'")
                secrets.update((password, unquote(password), quote(password, safe="")))
        self.values = sorted((v for v in secrets if len(v) >= MIN_SECRET), key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for value in self.values:
            text = text.replace(value, "********")
        text = URL_PASSWORD.sub(r"\1********\3", text)
        return KEYWORD_PASSWORD.sub(r"\1********", text)


def escape(text: str) -> str:
    """Untrusted text as it must reach a terminal: each control character written out.

    Printable text, UTF-8 included (é, ✓), is kept as it is.
    """

    def spell(match: re.Match) -> str:
        char = match.group()
        code = ord(char)
        return NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")

    return UNSAFE.sub(spell, text)


def clip(line: str, limit: int = MAX_LINE) -> str:
    return line if len(line) <= limit else f"{line[:limit]}… ({len(line) - limit} more characters)"


class Reporter:
    """Writes a deploy's progress; thread-safe because the heartbeat writes too."""

    def __init__(self, out: TextIO, color: bool = False, heartbeat: float = 10.0) -> None:
        self.out = out
        self.color = color
        self.heartbeat = heartbeat
        self.mask = Masker()
        self.lost = 0  # lines that could not be written
        self._lock = threading.Lock()

    def _paint(self, text: str, code: str) -> str:
        return f"{code}{text}{RESET}" if self.color else text

    def safe(self, text: str) -> str:
        """``text`` made fit to print: secrets masked, control characters escaped, clipped."""
        return clip(escape(self.mask(text)))

    def _write(self, line: str) -> None:
        with self._lock:
            try:
                self.out.write(line + "\n")
                self.out.flush()
            except OSError:
                # a full disk under the log: the deploy (and its undo) must go on regardless
                self.lost += 1

    def line(self, text: str = "") -> None:
        self._write(self.safe(text))

    def relay(self, line: str) -> None:
        """A line another reporter of this process already made safe (``peers.Prefixed``)."""
        self._write(clip(line, 2 * MAX_LINE))

    def title(self, text: str) -> None:
        self._write(self._paint(f"shipyard ▸ {self.safe(text)}", BOLD))

    def ok(self, phase: str, seconds: float, detail: str = "") -> None:
        mark = self._paint("✓", GREEN)
        self._write(f"  {mark} {phase:<14} {seconds:5.2f}s  {self.safe(detail)}".rstrip())

    def skip(self, phase: str, detail: str) -> None:
        self._write(f"  {self._paint('-', DIM)} {phase:<14}    -    {self.safe(detail)}".rstrip())

    def fail(self, phase: str, seconds: float, detail: str) -> None:
        mark = self._paint("✗", RED)
        self._write(f"  {mark} {phase:<14} {seconds:5.2f}s  {self.safe(detail)}".rstrip())

    def warn(self, text: str) -> None:
        self._write(self._paint(f"  ! {self.safe(text)}", YELLOW))

    def detail(self, lines: Iterable[str], prefix: str = "    │ ") -> None:
        for text in lines:
            self.line(f"{prefix}{text}")

    def final(self, text: str, good: bool) -> None:
        self._write(self._paint(f"shipyard ▸ {self.safe(text)}", GREEN if good else RED))

    @contextmanager
    def ticking(self, phase: str) -> Iterator[None]:
        """Print a heartbeat while a long step runs, so a quiet terminal never looks hung."""
        token = TICKER.add(self, phase)
        try:
            yield
        finally:
            TICKER.remove(token)

    def quiet(self) -> None:
        """End the heartbeats' thread before a fork: the child would not have it, and it
        could hold an output's lock. The next step starts another."""
        TICKER.stop()


class Ticker:
    """The heartbeats of every running step, from one thread per process (started at the
    first step, asleep until a beat is due): a step costs no thread of its own, which a
    receiver's eight per deploy and peer would pay."""

    def __init__(self) -> None:
        self._reset()
        if hasattr(os, "register_at_fork"):  # a forked deploy worker has no thread yet
            os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self.cond = threading.Condition()
        self.steps: dict[int, list] = {}  # token: [reporter, phase, started, next beat]
        self.count = 0
        self.thread: threading.Thread | None = None
        self.wakes = 0.0  # when the thread wakes next by itself (it sleeps until then)
        self.idle = 10.0  # how long it sleeps with no step: the newest step's heartbeat

    def add(self, reporter: Reporter, phase: str) -> int:
        """A step begins; the thread is woken only if it would sleep past the step's first
        beat (a wake-up per step was a thread switch per phase, each peer's eight too)."""
        now = time.monotonic()
        due = now + reporter.heartbeat
        with self.cond:
            self.count += 1
            self.steps[self.count] = [reporter, phase, now, due]
            self.idle = reporter.heartbeat
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, daemon=True, name="heartbeat")
                self.thread.start()
            elif due < self.wakes:
                self.cond.notify()
            return self.count

    def remove(self, token: int) -> None:
        with self.cond:
            self.steps.pop(token, None)

    def stop(self) -> None:
        with self.cond:
            thread, self.thread = self.thread, None
            self.wakes = 0.0
            self.cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _run(self) -> None:
        me = threading.current_thread()
        while True:
            with self.cond:
                if self.thread is not me:
                    return
                now = time.monotonic()
                due = [step for step in self.steps.values() if step[3] <= now]
                for step in due:
                    step[3] = now + step[0].heartbeat
                if not due:
                    soonest = min(
                        (step[3] for step in self.steps.values()), default=now + self.idle
                    )
                    self.wakes = max(now + 0.01, soonest)
                    self.cond.wait(self.wakes - now)
                    continue
            for reporter, phase, started, _ in due:
                reporter.line(f"  … {phase:<14} {time.monotonic() - started:5.0f}s  still running")


TICKER = Ticker()
