"""Git objects from the primary's bare repo to a peer's, with dulwich: only what it lacks.

The peer tells what it has (the tips of its refs); the primary packs the objects
reachable from the wanted commit and not from those (dulwich's
MissingObjectFinder, via ``generate_pack_data``), and the peer stores the pack
with ``add_thin_pack``, which also resolves deltas against objects it already has.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from dulwich.repo import Repo

PREPARED_REF = b"refs/shipyard/prepared"
_open: dict[str, tuple[threading.Lock, Repo]] = {}
_opening = threading.Lock()


@contextlib.contextmanager
def _repo(repo_path: Path) -> Iterator[Repo]:
    """The repo, through dulwich, one call at a time; opened once per process and kept (a
    receiver serves every deploy: its config and pack indexes are read once, not per call;
    dulwich looks for new packs, and drops vanished ones, when an object is not found).
    Imported here, by the few calls that send or take a pack, not by every deploy that
    imports this module (a single host's sends none)."""
    from dulwich.repo import Repo

    key = str(repo_path)
    with _opening:
        entry = _open.get(key)
        if entry is None:
            if not _open:
                atexit.register(close_all)
            entry = _open[key] = (threading.Lock(), Repo(key))
    with entry[0]:
        yield entry[1]


def close_all() -> None:
    """Close the repos kept open (at exit: dulwich warns of packs left open)."""
    with _opening:
        for lock, repo in _open.values():
            with lock:
                repo.close()
        _open.clear()


def is_sha(value: str) -> bool:
    return len(value) == 40 and all(c in "0123456789abcdef" for c in value)


def tips(repo_path: Path) -> dict[str, str]:
    """Every ref of the repo and the object it names (what a peer 'has')."""
    with _repo(repo_path) as repo:
        return {k.decode(): v.decode() for k, v in repo.get_refs().items() if k != b"HEAD"}


def has(repo_path: Path, sha: str) -> bool:
    with _repo(repo_path) as repo:
        return sha.encode() in repo.object_store


def pack_missing(repo_path: Path, want: str, haves: list[str]) -> tuple[int, bytes]:
    """(object count, pack bytes) for ``want`` and what it needs beyond ``haves``."""
    with _repo(repo_path) as repo:
        store = repo.object_store
        known = [h.encode() for h in haves if is_sha(h) and h.encode() in store]
        count, records = store.generate_pack_data(known, [want.encode()], ofs_delta=True)
        if not count:
            return 0, b""
        from dulwich.pack import write_pack_data

        buf = io.BytesIO()
        write_pack_data(buf.write, records, num_records=count, object_format=repo.object_format)
        return count, buf.getvalue()


def add_pack(repo_path: Path, pack: BinaryIO, want: str) -> None:
    """Store a (possibly thin) pack; check it brought ``want`` and keep it reachable."""
    with _repo(repo_path) as repo:
        repo.object_store.add_thin_pack(pack.read, None)
        if want.encode() not in repo.object_store:
            raise ValueError(f"the pack did not contain {want[:7]}")
        if repo.refs.read_ref(PREPARED_REF) != want.encode():
            repo.refs[PREPARED_REF] = want.encode()


def set_ref(repo_path: Path, ref: str, sha: str) -> None:
    """Point ``ref`` at ``sha`` (not rewritten, nor synced to disk again, when it does)."""
    with _repo(repo_path) as repo:
        if repo.refs.read_ref(ref.encode()) != sha.encode():
            repo.refs[ref.encode()] = sha.encode()
