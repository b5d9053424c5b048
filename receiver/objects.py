"""Git objects from the primary's bare repo to a peer's: only what it lacks.

The peer tells what it has (the tips of its refs); the primary packs the objects
reachable from the wanted commit and not from those (``git pack-objects --thin``),
and the peer stores the pack through dulwich's ``add_thin_pack``, which also
resolves deltas against objects it already has, in the receiver's own process.
"""

from __future__ import annotations

import atexit
import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from shipyard.release import git_bytes

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
    """(object count, pack bytes) for ``want`` and what it needs beyond ``haves``: a thin
    pack by ``git pack-objects`` (its deltas may name objects the peer has, which
    ``add_thin_pack`` resolves there). The primary's side runs git, which its push already
    runs, rather than importing dulwich (~35 ms of CPU each deploy for one pack)."""
    known = present(repo_path, [h for h in haves if is_sha(h)])
    revs = "".join([f"{want}\n", *(f"^{h}\n" for h in known)]).encode()
    pack = git_bytes(repo_path, "pack-objects", "--revs", "--thin", "--stdout", "-q", input=revs)
    count = int.from_bytes(pack[8:12], "big") if pack[:4] == b"PACK" else 0
    return (count, pack) if count else (0, b"")


def present(repo_path: Path, shas: list[str]) -> list[str]:
    """Those of ``shas`` whose objects this repo has (a peer's tips may be unknown here)."""
    if not shas:
        return []
    found = git_bytes(
        repo_path, "cat-file", "--batch-check=%(objectname)", input="\n".join(shas).encode()
    )
    return [line for line in found.decode().splitlines() if is_sha(line)]  # not "<sha> missing"


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
