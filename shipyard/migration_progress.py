"""A migration run followed line by line: which migration is applying, which are done."""

from __future__ import annotations

import re
from collections.abc import Callable

# --- following a migration run ----------------------------------------------


class Progress:
    """Turns a migrate command's output into (migration, seconds) as each one finishes.

    Django writes ``  Applying polls.0003_x...`` when a migration starts (and flushes) and
    ``OK`` when it has been committed. Alembic logs ``Running upgrade A -> B, doc`` as each
    starts; one ends when the next starts or the command exits.
    """

    def __init__(self, kind: str, on_done: Callable[[str, float], None] | None = None) -> None:
        self.kind = kind
        self.on_done = on_done
        self.buffer = ""
        self.started: dict[str, float] = {}
        self.done: list[tuple[str, float]] = []
        self.current: str | None = None

    def feed(self, text: str, now: float) -> None:
        self.buffer += text
        *lines, self.buffer = self.buffer.split("\n")
        for line in lines:
            self._line(line, now, complete=True)
        if self.buffer:
            self._line(self.buffer, now, complete=False)

    def _start(self, name: str, now: float) -> None:
        if name not in self.started:
            self.started[name] = now
            self.current = name

    def _finish(self, name: str, now: float) -> None:
        if any(done == name for done, _ in self.done):
            return
        seconds = now - self.started.get(name, now)
        self.done.append((name, seconds))
        if self.current == name:
            self.current = None
        if self.on_done:
            self.on_done(name, seconds)

    def _line(self, line: str, now: float, complete: bool) -> None:
        if self.kind == "django":
            match = re.search(r"Applying (\S+?)\.\.\.", line)
            if match:
                self._start(match.group(1), now)
                if complete and re.search(r"Applying \S+?\.\.\.\s*(OK|FAKED)", line):
                    self._finish(match.group(1), now)
        elif self.kind == "alembic" and complete:
            match = re.search(r"Running upgrade (\S*) -> (\S+?),", line)
            if match:
                if self.current:
                    self._finish(self.current, now)
                self._start(match.group(2), now)

    def close(self, now: float) -> None:
        """The command succeeded: whatever was running has finished."""
        if self.kind == "alembic" and self.current:
            self._finish(self.current, now)
