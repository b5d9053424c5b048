"""One deploy per app at a time, with flock(2).

The kernel drops the lock when its holder dies, so there is never a stale lock
file to clean up by hand. The holder writes who it is into the file so that a
waiting push can say what it is waiting for.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import LockTimeout


def holder(path: Path) -> dict:
    """What the current holder wrote about itself (empty if unknown)."""
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def is_held(path: Path, probe: int = fcntl.LOCK_SH) -> bool:
    """Does a live process hold a lock on ``path`` that conflicts with ``probe``?"""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, probe | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


class Held:
    """A held lock: what a dead holder left to finish, and a way to update our own note.

    A holder whose note says ``recoverable`` (a deploy) and that is killed (SIGKILL,
    a crash, a power cut) leaves its note behind; the next holder finds it in
    ``stale``. Until a holder takes it over (``replace``, or ``handled = True``), it
    is kept in the file under ``"stale"``, through any number of holders that do not
    know what to do with it, for one that does.
    """

    def __init__(self, fd: int, info: dict, stale: dict) -> None:
        self.fd = fd
        self.info = dict(info)
        self.stale = stale
        self.handled = not stale
        self._size = os.fstat(fd).st_size

    def replace(self, info: dict) -> None:
        """Start a new note, taking over the stale one (e.g. a recovery resuming it)."""
        self.handled = True
        self.info = {}
        self.update(**info)

    def update(self, **values: object) -> None:
        """Rewrite the note; never unreadable, even if the process dies half-way.

        The new JSON is padded with spaces to the old length before the file is cut
        to it, so a reader (or a next holder after a SIGKILL) always parses one
        whole note.
        """
        self.info.update(values)
        self._write({**self.info, **({} if self.handled else {"stale": self.stale})})

    def _write(self, note: dict) -> None:
        data = json.dumps(note).encode() if note else b""
        if len(data) < self._size:
            data += b" " * (self._size - len(data))
        os.pwrite(self.fd, data, 0)
        self._size = len(data.rstrip(b" "))
        os.ftruncate(self.fd, self._size)


def pending(note: dict) -> dict:
    """The note of a dead holder still to be recovered, found in what the lock file holds."""
    if note.get("recoverable"):
        return note
    stale = note.get("stale")
    return stale if isinstance(stale, dict) and stale.get("recoverable") else {}


@contextmanager
def exclusive(
    path: Path,
    info: dict,
    on_wait: Callable[[dict], None] | None = None,
    timeout: float | None = None,
    heartbeat: float = 10.0,
    on_still_waiting: Callable[[dict, float], None] | None = None,
) -> Iterator[Held]:
    """Hold an exclusive flock on ``path`` for the block, writing ``info`` into it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait:
                on_wait(holder(path))
            started = time.monotonic()
            next_beat = started + heartbeat
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    now = time.monotonic()
                    if timeout is not None and now - started > timeout:
                        who = holder(path)
                        raise LockTimeout(
                            f"gave up after {timeout:.0f}s waiting for {describe(who)}",
                            "see `shipyard status` and try again",
                        ) from None
                    if on_still_waiting and now >= next_beat:
                        on_still_waiting(holder(path), now - started)
                        next_beat = now + heartbeat
                    time.sleep(0.05)
        held = Held(fd, info, pending(_note(fd)))
        held.update()
        try:
            yield held
        finally:
            # empty when all is done; a stale note nobody took over stays for the next holder
            held._write({} if held.handled else {"stale": held.stale})
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _note(fd: int) -> dict:
    """What the file holds now (a previous holder's note if it died holding the lock)."""
    try:
        data = os.pread(fd, 1 << 16, 0)
        note = json.loads(data or b"{}")
    except (OSError, ValueError):
        return {}
    return note if isinstance(note, dict) else {}


def describe(info: dict) -> str:
    if not info:
        return "another deploy"
    since = info.get("since")
    when = time.strftime("%H:%M:%S", time.gmtime(since)) + " UTC" if since else "?"
    return (
        f"deploy #{info.get('deploy', '?')} ({str(info.get('sha', '?'))[:7]} "
        f"by {info.get('pusher', '?')}, since {when})"
    )


def owner_alive(name: str) -> bool:
    """Work-in-progress dirs end in ``-<pid>``: is that process (other than us) still running?"""
    pid = name.rsplit("-", 1)[-1]
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
