"""What the pusher reads: one line per phase, timed, and one last line that says what is live.

Output is line-based (git prefixes each line with ``remote:`` and newer clients
mask control characters such as ``\\r``), coloured only when wanted, and
written to the deploy's log, which the post-receive hook streams.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TextIO
from urllib.parse import unquote

GREEN, RED, YELLOW, DIM, BOLD, RESET = (
    "\033[32m",
    "\033[31m",
    "\033[33m",
    "\033[2m",
    "\033[1m",
    "\033[0m",
)
SECRET_KEY = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|KEY|CREDENTIAL|DSN|DATABASE_URL|_URL$", re.I)
URL_PASSWORD = re.compile(r"(\w+://[^:/@\s]+:)([^@\s]+)(@)")
MAX_LINE = 400


class Skip(str):
    """A phase's result when it had nothing to do; the text says why."""


class Masker:
    """Hides secret values (from the app's .env) in anything we echo."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        secrets = {v for k, v in (env or {}).items() if v and len(v) >= 4 and SECRET_KEY.search(k)}
        # a password inside a URL (DATABASE_URL) may be echoed on its own, e.g. by a driver
        for value in (env or {}).values():
            for match in URL_PASSWORD.finditer(value or ""):
                password = match.group(2)
                secrets.update(p for p in (password, unquote(password)) if len(p) >= 4)
        self.values = sorted(secrets, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for value in self.values:
            text = text.replace(value, "********")
        return URL_PASSWORD.sub(r"\1********\3", text)


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

    def line(self, text: str = "") -> None:
        with self._lock:
            try:
                self.out.write(clip(self.mask(text)) + "\n")
                self.out.flush()
            except OSError:
                # a full disk under the log: the deploy (and its undo) must go on regardless
                self.lost += 1

    def title(self, text: str) -> None:
        self.line(self._paint(f"shipyard ▸ {text}", BOLD))

    def ok(self, phase: str, seconds: float, detail: str = "") -> None:
        mark = self._paint("✓", GREEN)
        self.line(f"  {mark} {phase:<14} {seconds:5.2f}s  {detail}".rstrip())

    def skip(self, phase: str, detail: str) -> None:
        self.line(f"  {self._paint('-', DIM)} {phase:<14}    -    {detail}".rstrip())

    def fail(self, phase: str, seconds: float, detail: str) -> None:
        mark = self._paint("✗", RED)
        self.line(f"  {mark} {phase:<14} {seconds:5.2f}s  {detail}".rstrip())

    def warn(self, text: str) -> None:
        self.line(self._paint(f"  ! {text}", YELLOW))

    def detail(self, lines: Iterable[str], prefix: str = "    │ ") -> None:
        for text in lines:
            self.line(f"{prefix}{text}")

    def final(self, text: str, good: bool) -> None:
        self.line(self._paint(f"shipyard ▸ {text}", GREEN if good else RED))

    @contextmanager
    def ticking(self, phase: str) -> Iterator[None]:
        """Print a heartbeat while a long step runs, so a quiet terminal never looks hung."""
        stop = threading.Event()
        started = time.monotonic()

        def beat() -> None:
            while not stop.wait(self.heartbeat):
                self.line(f"  … {phase:<14} {time.monotonic() - started:5.0f}s  still running")

        thread = threading.Thread(target=beat, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
