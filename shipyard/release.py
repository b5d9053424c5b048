"""Releases: one immutable, materialised commit each, and the ``current`` link that picks one.

A release is built in a hidden temporary directory and renamed into
``releases/`` only once its files are all there, so a crash never leaves a
directory that looks like a release but is not one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from . import envfile, environment
from .app import RELEASE_ID, App
from .errors import PhaseError
from .guard import check_not_root
from .lock import owner_alive
from .repo import git_env, has_tags

MANIFEST = Path(".shipyard") / "release.json"
GOOD_STATES = ("good",)


def new_release_id(sha: str, now: float | None = None) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    return f"{stamp}-{sha[:7]}"


def git(repo: Path, *args: str, input: bytes | None = None) -> str:
    """Run git against the bare repo; a clean environment so hook variables never leak in."""
    return git_bytes(repo, *args, input=input).decode().strip()


def git_bytes(repo: Path, *args: str, input: bytes | None = None) -> bytes:
    """Like ``git``, the output as git wrote it (paths may be any bytes)."""
    result = subprocess.run(
        ["git", "--git-dir", str(repo), *args], input=input, capture_output=True, env=git_env()
    )
    if result.returncode:
        raise PhaseError(f"git {args[0]} failed: {result.stderr.decode(errors='replace').strip()}")
    return result.stdout


def checkout(app: App, sha: str, release_id: str) -> Path:
    """Materialise ``sha`` as ``releases/<release_id>`` (no .git), its files read-only.

    From the spare copy of the live release plus the diff when there is an intact one
    (``from_spare``), else from the live release plus the diff when the diff is small
    (``from_live``), else ``git archive | tar``. Either way the tree is the commit's: the same
    paths, bytes, symlink targets and executable bits.
    """
    target = app.release_dir(release_id)
    tmp = app.releases / f".tmp-{release_id}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        links = from_spare(app, sha, tmp)
        if links is None:
            tmp.mkdir(parents=True)
            try:
                links = from_live(app, sha, tmp)
            except OSError:  # out of space, say: the full checkout says so in its own words
                links = None
        if links is None:
            shutil.rmtree(tmp)
            tmp.mkdir()
            archive_into(app, sha, tmp)
        check_symlinks(tmp, links)
        os.chmod(tmp, 0o755)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def archive_into(app: App, sha: str, tmp: Path) -> None:
    """The full checkout: ``git archive | tar``, files 0444/0555, directories 0755."""
    archive = subprocess.Popen(
        # modes 0444/0555 whatever the repo or umask say (tar as root keeps the archive's)
        ["git", "-c", "tar.umask=0222", "--git-dir", str(app.repo), "archive", "--format=tar"]
        + [sha],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=git_env(),
    )
    untar = subprocess.run(
        ["tar", "-x", "--no-same-owner", "-C", str(tmp)],
        stdin=archive.stdout,
        capture_output=True,
    )
    archive.stdout.close()
    err = archive.stderr.read().decode(errors="replace")
    if archive.wait() or untar.returncode:
        detail = err.strip() or untar.stderr.decode(errors="replace").strip()
        first = (detail.splitlines() or ["git archive | tar failed"])[0]
        if nearly_full(tmp) or "Wrote only" in detail:  # tar's word for a short write
            first = f"No space left on device ({first})"
        raise PhaseError(f"could not check out {sha[:7]}: {first}", output=detail)
    for dirpath, _, _ in os.walk(tmp):  # the archive's directories are 0555 too
        os.chmod(dirpath, 0o755)


# a diff touching more than this share of the tree is checked out in full
LARGE_DIFF = 0.3


def from_live(app: App, sha: str, tmp: Path) -> list[str] | None:
    """Make ``sha`` in ``tmp`` from the live release and the diff; return the symlinks it
    made (the only ones in ``tmp``), or None: check out in full.
    """
    live = app.live_release()
    manifest = Manifest.load(app.release_dir(live)) if live else None
    if manifest is None or not manifest.sha or manifest.sha == sha:
        return None
    try:
        tree = list_tree(app.repo, sha)
        changed = changed_paths(app.repo, manifest.sha, sha)
    except PhaseError:  # the live sha is gone from the repo, say
        return None
    if len(changed) > LARGE_DIFF * max(len(tree), 1) or not linkable(app, tree):
        return None
    return link_tree(app.repo, app.release_dir(live), manifest.created, sha, tree, changed, tmp)


def linkable(app: App, tree: list[tuple[str, str, str, str]]) -> bool:
    """Can ``tree`` be made from another release's files: no submodule (``git archive``'s
    way), nothing ``git archive`` would leave out or rewrite?"""
    if any(kind == "commit" for _, kind, _, _ in tree):
        return False
    return not exported_differently(app, [obj for _, _, obj, path in tree if is_attributes(path)])


def link_tree(
    repo: Path,
    base: Path,
    sealed_before: float,
    sha: str,
    tree: list[tuple[str, str, str, str]],
    changed: set[str],
    tmp: Path,
) -> list[str]:
    """Fill ``tmp`` with ``tree``: a hard link to ``base``'s file for each path not in
    ``changed``, the rest from git; return the symlinks it made (every one of ``tree``).

    A release shares the inodes of the one before it, so every tracked file is read-only
    (0444/0555) and an in-place write fails (docs/performance.md). A file ``base`` has not
    kept as checked out (not a regular file, another executable bit, modified after
    ``sealed_before``, under a shared link) is written from git instead, like every changed
    file and every symlink.
    """
    make_dirs(tmp, tree)
    real_dirs: dict[str, bool] = {}
    write: list[tuple[str, str, str]] = []
    src, dest = f"{base}/", f"{tmp}/"
    lstat, link = os.lstat, os.link  # ~20,000 times for a 20,000-file repo: kept tight
    for mode, kind, obj, path in tree:
        unchanged = kind == "blob" and path not in changed and mode != "120000"
        if not (unchanged and is_real_dir(base, path.rpartition("/")[0], real_dirs)):
            write.append((mode, obj, path))  # changed, a symlink, or under a shared link
            continue
        try:
            st = lstat(src + path)
            if (
                st.st_mode & 0o170100 != (0o100100 if mode == "100755" else 0o100000)
                or st.st_mtime > sealed_before
            ):  # not a regular file with this executable bit, or written to since
                raise FileNotFoundError
            link(src + path, dest + path)
        except OSError:  # gone, changed, on another filesystem: written from git
            write.append((mode, obj, path))
            continue
        if st.st_mode & 0o222:  # a release made before releases were read-only
            os.chmod(dest + path, 0o555 if mode == "100755" else 0o444)
    write_blobs(repo, sha, tmp, write)
    return [dest + path for mode, _, path in write if mode == "120000"]


# The spare: a hard-linked copy of the live release's tree, made after a deploy has answered,
# that the next push's checkout renames into place and applies the diff to.
SPARE = ".next-"
SPARE_NOTE = MANIFEST.with_name("spare.json")  # written last: its mtime seals the spare
SPARE_TICK = 0.02  # s: longer than the kernel's timestamp granularity (1/HZ, 4-10 ms)


def spare_dir(app: App, sha: str) -> Path:
    return app.releases / f"{SPARE}{sha}"


def make_spare(app: App) -> Path | None:
    """Prepare ``releases/.next-<live sha>`` for the next push's checkout (``from_spare``).

    Run after a deploy's outcome is out (``engine.tidy``): the ``link(2)`` per unchanged file
    that a checkout from the live release costs is paid here, off the next push's path. The
    spare is the live commit's tree only (no manifest, venv or shared links), its files the
    live release's inodes (checked as ``from_live`` checks them); spares of other commits go.
    None when there is nothing to prepare or it could not be made (the next push then checks
    out from the live release, as without a spare).
    """
    live = app.live_release()
    manifest = Manifest.load(app.release_dir(live)) if live else None
    if manifest is None or not manifest.sha:
        return None
    spare = spare_dir(app, manifest.sha)
    drop_spares(app, spare)
    if os.path.lexists(spare):
        return spare
    tmp = app.releases / f".tmp-next-{manifest.sha[:12]}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tree = list_tree(app.repo, manifest.sha)
        if not linkable(app, tree) or any(p.split("/", 1)[0] == ".shipyard" for *_, p in tree):
            return None
        tmp.mkdir()
        link_tree(app.repo, app.release_dir(live), manifest.created, manifest.sha, tree, set(), tmp)
        os.chmod(tmp, 0o755)
        (tmp / SPARE_NOTE.parent).mkdir(mode=0o755)
        (tmp / SPARE_NOTE).write_text(json.dumps({"sha": manifest.sha, "files": len(tree)}))
        # inode times come from a clock that ticks every few ms: wait for the next tick, so
        # that any change once the spare is visible is strictly newer than the note
        time.sleep(max(0.0, os.lstat(tmp / SPARE_NOTE).st_mtime + SPARE_TICK - time.time()))
        os.rename(tmp, spare)  # fails if another process made it meanwhile: theirs stands
    except (OSError, PhaseError):
        shutil.rmtree(tmp, ignore_errors=True)
        return None
    return spare


def drop_spares(app: App, keep: Path | None, trash: list[Path] | None = None) -> None:
    """Remove every spare but ``keep`` (renamed aside into ``trash`` when given)."""
    for path in app.releases.glob(f"{SPARE}*"):
        if path != keep:
            with contextlib.suppress(OSError):  # another process took or removed it
                set_aside(path, app.releases / f".trash-{path.name}-{os.getpid()}", trash)


def from_spare(app: App, sha: str, tmp: Path) -> list[str] | None:
    """Make ``sha`` in ``tmp`` from the spare of the live commit and the diff; return every
    symlink of the new tree, or None (no spare, or not intact: ``tmp`` is left absent).

    The spare is renamed to ``tmp`` first (no other process can take or change it through
    its name from then on), then checked: nothing under it may have changed since it was
    sealed (``intact``). Then only the diff is applied, so the cost is the change's.
    """
    live = app.live_release()
    manifest = Manifest.load(app.release_dir(live)) if live else None
    if manifest is None or not manifest.sha or manifest.sha == sha:
        return None
    spare = spare_dir(app, manifest.sha)
    try:
        note = json.loads((spare / SPARE_NOTE).read_bytes())
        if note.get("sha") != manifest.sha:
            return None
        diff = raw_diff(app.repo, manifest.sha, sha)
        files = int(note["files"])
    except (OSError, ValueError, KeyError, TypeError, PhaseError):
        return None
    if len(diff) > LARGE_DIFF * max(files, 1) or not diff_linkable(app, diff):
        return None
    try:
        os.rename(spare, tmp)
    except OSError:  # taken meanwhile, or gone
        return None
    try:
        links = intact(tmp)
        made = None if links is None else apply_diff(app.repo, sha, tmp, diff, links)
    except (OSError, PhaseError):  # out of space, an object missing: the usual path says so
        made = None
    if made is None and os.path.islink(tmp):
        os.unlink(tmp)
    elif made is None:
        shutil.rmtree(tmp, ignore_errors=True)
    return made


def diff_linkable(app: App, diff: list[tuple[str, str, str, str]]) -> bool:
    """``linkable`` for a tree that was (the spare's) plus ``diff``: no submodule added, no
    export attribute added (the spare's tree had neither)."""
    if any(new == "160000" for _, new, _, _ in diff):
        return False
    added = [obj for _, new, obj, path in diff if new != "000000" and is_attributes(path)]
    return not exported_differently(app, added)


def intact(spare: Path) -> list[str] | None:
    """The spare's symlinks (paths under it), as they are on disk; None when anything under
    ``spare`` changed since its note was written.

    Any change to an entry (a file written, chmod'ed, replaced, added or removed, a link
    count changed by another release's deletion) sets the inode's or its directory's ctime,
    which no chmod or utime can set back; one ``find`` compares them all with the note's
    mtime, and lists the symlinks on the way. The top directory's ctime moved with our
    rename: its mtime says whether an entry was added or removed there. (A change made with
    the deploy user's rights and the note rewritten after it is not seen: such a user can
    change any release as well.)
    """
    note = spare / SPARE_NOTE
    top = os.lstat(spare)
    if not stat.S_ISDIR(top.st_mode) or top.st_mtime_ns > os.lstat(note).st_mtime_ns:
        return None  # a link where the spare was is no spare
    found = subprocess.run(
        # an empty record for a changed entry (then stop), the relative path of each symlink
        ["find", str(spare), "-mindepth", "1", "(", "-cnewer", str(note), "-printf", "\\0"]
        + ["-quit", ")", "-o", "-type", "l", "-printf", "%P\\0"],
        capture_output=True,
    )
    records = found.stdout.split(b"\0")[:-1]
    if found.returncode or b"" in records:
        return None
    return [os.fsdecode(path) for path in records]


def apply_diff(
    repo: Path, sha: str, tmp: Path, diff: list[tuple[str, str, str, str]], links: list[str]
) -> list[str]:
    """Turn the spare in ``tmp`` into ``sha``: the diff's old paths deleted (and the
    directories they leave empty), its new ones written from git; return every symlink."""
    root = f"{tmp}/"
    os.unlink(tmp / SPARE_NOTE)
    os.rmdir(tmp / SPARE_NOTE.parent)
    gone = [path for old, _, _, path in diff if old != "000000"]
    for path in gone:
        os.unlink(root + path)  # a directory here is not the spare's tree: OSError
    emptied = {path.rpartition("/")[0] for path in gone} - {""}
    for path in sorted(emptied, key=lambda p: p.count("/"), reverse=True):
        while path:
            try:
                os.rmdir(root + path)  # no tree keeps an empty directory
            except OSError:  # not empty, or gone with a deeper one
                break
            path = path.rpartition("/")[0]
    write = [(new, obj, path) for _, new, obj, path in diff if new != "000000"]
    dirs = {path.rpartition("/")[0] for _, _, path in write} - {""}
    for path in list(dirs):
        while path := path.rpartition("/")[0]:
            dirs.add(path)
    for path in sorted(dirs):
        try:
            os.mkdir(root + path)
            os.chmod(root + path, 0o755)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(root + path).st_mode):
                raise
    write_blobs(repo, sha, tmp, write)
    kept = set(links).difference(gone).union(p for mode, _, p in write if mode == "120000")
    return [root + path for path in sorted(kept)]


def list_tree(repo: Path, sha: str) -> list[tuple[str, str, str, str]]:
    """``git ls-tree -r``: (mode, type, object, path) of every entry of the commit."""
    out = os.fsdecode(git_bytes(repo, "ls-tree", "-r", "-z", "--full-tree", sha))
    entries = []
    for item in out.split("\0")[:-1]:  # "<mode> <type> <object>\t<path>"; a path may hold a tab
        meta, _, path = item.partition("\t")
        mode, kind, obj = meta.split(" ")
        entries.append((mode, kind, obj, path))
    return entries


def changed_paths(repo: Path, old: str, new: str) -> set[str]:
    """The paths added, changed (bytes, mode or type) or deleted between two commits."""
    return {path for _, _, _, path in raw_diff(repo, old, new)}


def raw_diff(repo: Path, old: str, new: str) -> list[tuple[str, str, str, str]]:
    """``git diff-tree --raw``: (old mode, new mode, new object, path) of each path added,
    changed (bytes, mode or type) or deleted; a mode of 000000 where there is none."""
    out = git_bytes(repo, "diff-tree", "-r", "-z", "--raw", "--no-renames", old, new)
    fields = out.split(b"\0")[:-1]
    # each entry is ":oldmode newmode old new status" then its path (no renames: one path)
    entries = []
    for meta, path in zip(fields[::2], fields[1::2], strict=True):
        old_mode, new_mode, _, obj, _ = meta[1:].decode().split(" ")
        entries.append((old_mode, new_mode, obj, os.fsdecode(path)))
    return entries


def is_attributes(path: str) -> bool:
    return path.endswith(".gitattributes") and os.path.basename(path) == ".gitattributes"


def exported_differently(app: App, attributes: list[str]) -> bool:
    """Would ``git archive`` leave out or rewrite files (export-ignore, export-subst), by
    these ``.gitattributes`` blobs or the repo's info/attributes?"""
    texts = [git_bytes(app.repo, "cat-file", "blob", obj) for obj in attributes]
    info = app.repo / "info" / "attributes"
    if info.is_file():
        texts.append(info.read_bytes())
    return any(b"export-" in text for text in texts)


def make_dirs(tmp: Path, tree: list[tuple[str, str, str, str]]) -> None:
    dirs = {path.rpartition("/")[0] for _, _, _, path in tree} - {""}
    for path in list(dirs):
        while path:
            dirs.add(path)
            path = os.path.dirname(path)
    for path in sorted(dirs):
        os.mkdir(tmp / path)
        os.chmod(tmp / path, 0o755)  # as git archive | tar makes them, whatever the umask


def is_real_dir(base: Path, path: str, seen: dict[str, bool]) -> bool:
    """Is ``base/path`` a directory, it and each of its parents no symlink?"""
    if not path:
        return True
    if path not in seen:
        try:
            real = stat.S_ISDIR(os.lstat(base / path).st_mode)
        except OSError:
            real = False
        seen[path] = real and is_real_dir(base, os.path.dirname(path), seen)
    return seen[path]


def write_blobs(repo: Path, sha: str, tmp: Path, entries: list[tuple[str, str, str]]) -> None:
    """Write blobs from one ``git cat-file --batch``; mtimes the commit's, as git archive's."""
    batch = subprocess.Popen(
        ["git", "--git-dir", str(repo), "cat-file", "--batch"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=git_env(),
    )
    feeder = threading.Thread(
        target=feed, args=(batch.stdin, [sha] + [obj for _, obj, _ in entries]), daemon=True
    )
    feeder.start()
    try:
        commit = read_object(batch.stdout, sha)
        stamp = int(commit.split(b"\ncommitter ", 1)[1].split(b"\n", 1)[0].split()[-2])
        for mode, obj, path in entries:
            data = read_object(batch.stdout, obj)
            dest = tmp / path
            if mode == "120000":
                os.symlink(os.fsdecode(data), dest)
                continue
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                with os.fdopen(fd, "wb", closefd=False) as out:
                    out.write(data)
                os.fchmod(fd, 0o555 if mode == "100755" else 0o444)
                os.utime(fd, (stamp, stamp))
            finally:
                os.close(fd)
    except BaseException:
        batch.kill()  # unblocks the feeder
        raise
    finally:
        feeder.join()
        batch.stdout.close()
        batch.wait()


def feed(pipe, objects: list[str]) -> None:
    """Write the object names on another thread: git answers while we still ask."""
    try:
        for obj in objects:
            pipe.write(obj.encode() + b"\n")
        pipe.close()
    except OSError:
        pass


def read_object(stream, obj: str) -> bytes:
    header = stream.readline().split()
    if len(header) != 3 or header[1] == b"missing":
        raise PhaseError(f"git cat-file: object {obj[:7]} is missing from the repository")
    data = stream.read(int(header[2]))
    stream.read(1)  # the newline after each object
    return data


def nearly_full(path: Path) -> bool:
    """Is the filesystem of ``path`` out of space (less than 1 MiB or no inodes left)?"""
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < (1 << 20) or (st.f_files > 0 and st.f_favail == 0)


def symlinks_in(tree: Path):
    """Every symlink under ``tree``, found from the directory entries' types (no stat each)."""
    stack = [os.fspath(tree)]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_symlink():
                    yield entry.path
                elif entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)


def check_symlinks(tree: Path, links: list[str] | None = None) -> None:
    """Refuse a symlink that resolves outside the release: following it would reach the host.

    Each link is resolved on the real filesystem, every link along its chain
    included: ``s -> .`` and ``up -> s/..`` each look inside when read as text,
    yet ``up`` is the release's parent. ``links``: the symlinks, when known (a checkout from
    the diff made them all), else every one under ``tree``.
    """
    base = os.path.realpath(tree)
    for path in symlinks_in(tree) if links is None else links:
        link = os.readlink(path)
        resolved = os.path.realpath(path)
        inside = resolved == base or resolved.startswith(base + os.sep)
        if os.path.isabs(link) or not inside:
            rel = os.path.relpath(path, tree)
            where = os.path.relpath(resolved, base) if inside else resolved
            raise PhaseError(
                f"symlink {rel} -> {link} points outside the release (it resolves to {where})",
                "make it a relative link to a file inside the repository, or remove it",
            )


def disk_use(app: App) -> tuple[dict[str, int], int]:
    """Bytes each release holds alone (files no other release links) and all releases' total.

    Releases share their unchanged files' inodes, so the sum of their sizes overstates the
    disk used; a file linked from ``n`` places counts once in the total and in no release's
    own bytes. A spare (``make_spare``) is no release: its links to a release's files do not
    make them shared, and what it holds alone counts in the total. The ``.venv`` link is not
    followed (venvs are in ``venvs/``).
    """
    spares = list(app.releases.glob(f"{SPARE}*")) if app.releases.is_dir() else []
    in_spares_stats = list(files_under(spares))
    in_spares = Counter((st.st_dev, st.st_ino) for st in in_spares_stats)
    own: dict[str, int] = {}
    seen: set[tuple[int, int]] = set()
    total = 0

    def first_time(st: os.stat_result) -> bool:
        if (st.st_dev, st.st_ino) in seen:
            return False
        seen.add((st.st_dev, st.st_ino))
        return True

    for rid, _ in releases(app):
        own[rid] = 0
        for st in files_under([app.release_dir(rid)]):
            total += st.st_size if first_time(st) else 0
            if st.st_nlink - in_spares[(st.st_dev, st.st_ino)] == 1:
                own[rid] += st.st_size
    total += sum(st.st_size for st in in_spares_stats if first_time(st))
    return own, total


def files_under(trees):
    """The lstat of every file and symlink under each of ``trees``."""
    for tree in trees:
        for dirpath, _, filenames in os.walk(tree):
            for name in filenames:
                try:
                    yield os.lstat(os.path.join(dirpath, name))
                except OSError:
                    continue


def count_files(tree: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(tree))


def link_shared(app: App, release: Path, paths: list[str]) -> list[str]:
    """Replace each shared path in the release with a relative link into ``shared/``."""
    linked = []
    for entry in paths:
        is_dir = entry.endswith("/")
        rel = Path(entry.rstrip("/"))
        source = app.shared / rel
        if is_dir:
            source.mkdir(parents=True, exist_ok=True)
        elif not source.exists():
            continue
        link_into(release / rel, source)
        linked.append(entry)
    return linked


def link_into(dest: Path, source: Path) -> None:
    """``dest`` in a release becomes a relative link to ``source`` (whatever was there goes)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_symlink() or dest.is_file():
        dest.unlink()
    elif dest.is_dir():
        shutil.rmtree(dest)
    os.symlink(os.path.relpath(source, dest.parent), dest)


def switch(app: App, release_id: str) -> str | None:
    """Point ``current`` at the release atomically (symlink to a temp name, then rename(2)).

    Returns what ``current`` pointed at before, so the caller can switch back.
    """
    previous = app.live_release()  # None also when current is no release: replaced as new
    if os.path.isdir(app.current) and not os.path.islink(app.current):
        raise PhaseError(
            f"{app.current} is a directory, not a link to a release: the switch would replace it",
            f"move it away (mv {app.current} {app.current}.old), then deploy again",
        )
    tmp = app.dir / f".current-{os.getpid()}"
    if tmp.is_symlink():
        tmp.unlink()
    os.symlink(Path("releases") / release_id, tmp)
    os.rename(tmp, app.current)
    return previous


@dataclass
class Manifest:
    """``.shipyard/release.json``: what a release is and how its deploy went."""

    sha: str
    ref: str
    release: str
    deploy: int
    pusher: str
    created: float
    tag: str | None = None
    venv: str | None = None
    state: str = "building"
    migrations: list[str] | None = None
    builds: dict[str, str] | None = None
    live_at: float | None = None  # when a deploy last made it live (pinned pushes, rollbacks)
    # what going back from it needs, written by the switch and restart that made it live:
    # {"deploy": N, "previous": release id, "processes": [the programs that ran before]}
    undo: dict | None = None

    def save(self, release: Path) -> None:
        path = release / MANIFEST
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.__dict__, indent=2) + "\n")
        os.rename(tmp, path)

    @classmethod
    def load(cls, release: Path) -> Manifest | None:
        try:
            data = json.loads((release / MANIFEST).read_text())
        except (OSError, ValueError):
            return None
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        try:
            return cls(**known)
        except TypeError:
            return None


def releases(app: App) -> list[tuple[str, Manifest | None]]:
    """Every release on disk, oldest first, with its manifest (None if unreadable).

    Ids order by their UTC stamp; releases built within the same second order by
    their manifests' creation time (the short sha after the stamp is no order).
    """
    if not app.releases.is_dir():
        return []
    found = [(p.name, Manifest.load(p)) for p in app.releases.iterdir() if RELEASE_ID.match(p.name)]
    found.sort(key=lambda item: (item[0][:16], item[1].created if item[1] else 0.0, item[0]))
    return found


def find_good(app: App, sha: str) -> str | None:
    """The newest good release of ``sha`` still on disk, for a pinned push to reuse."""
    for rid, manifest in reversed(releases(app)):
        if manifest and manifest.sha == sha and unusable(app, rid, manifest) is None:
            return rid
    return None


def unusable(app: App, release_id: str, manifest: Manifest | None = None) -> str | None:
    """Why a kept release cannot be made live again as it is (None when it can)."""
    path = app.release_dir(release_id)
    if not path.is_dir():
        return f"release {release_id} is not on disk (pruned or deleted)"
    manifest = manifest or Manifest.load(path)
    if manifest is None:
        return f"release {release_id} has no readable {MANIFEST}"
    if manifest.state not in GOOD_STATES:
        return f"release {release_id} is {manifest.state}, not a good release"
    venv = path / ".venv"
    if venv.is_symlink() and not venv.exists():
        return f"release {release_id}'s virtualenv venvs/{(manifest.venv or '?')} is gone"
    return None


def recency(manifest: Manifest) -> float:
    """When a release was last live, else when it was built: what ``keep`` counts by."""
    return manifest.live_at or manifest.created


def tag_for(app: App, sha: str) -> str | None:
    """A tag in the repo that points at ``sha`` (the highest version if several)."""
    if not has_tags(app.repo):  # most repos: no `git tag` process per push
        return None
    try:
        tags = git(app.repo, "tag", "--points-at", sha, "--sort=-v:refname").split()
    except PhaseError:
        return None
    return tags[0] if tags else None


def remove(app: App, release_id: str, trash: list[Path] | None = None) -> None:
    """Delete a release; renamed aside first so no half-deleted directory is ever listed.

    With ``trash``, only renamed aside and added to it, for ``empty`` to delete later (after
    the push's outcome is reported); a stray left by a killed process is swept by ``prune``.
    """
    path = app.release_dir(release_id)
    if not path.exists():
        return
    set_aside(path, app.releases / f".trash-{release_id}-{os.getpid()}", trash)


def set_aside(path: Path, aside: Path, trash: list[Path] | None) -> None:
    """Rename ``path`` to ``aside`` (out of every listing at once), then delete it now, or
    later with ``empty`` when ``trash`` is given (it is added to it)."""
    os.rename(path, aside)
    if trash is None:
        shutil.rmtree(aside, ignore_errors=True)
    else:
        trash.append(aside)


def empty(trash: list[Path]) -> None:
    """Delete what ``remove`` (or ``venv.prune``) renamed aside."""
    while trash:
        shutil.rmtree(trash.pop(), ignore_errors=True)


def prune(
    app: App,
    keep: int,
    protect: set[str] | frozenset[str] = frozenset(),
    trash: list[Path] | None = None,
) -> list[str]:
    """Keep the ``keep`` most recently live good releases, the live one and ``protect``;
    drop the rest (renamed aside into ``trash`` when given, see ``remove``).

    Recency, not build time: a release made live again by a pinned push or a
    rollback counts as new, so the release it replaced is the one kept for the
    next rollback.
    """
    live = app.live_release()
    listed = releases(app)
    good = [
        rid
        for rid, m in sorted(
            ((rid, m) for rid, m in listed if m and m.state in GOOD_STATES),
            key=lambda item: (recency(item[1]), item[0]),
        )
    ]
    kept = set(good[-keep:]) | ({live} if live else set()) | set(protect)
    removed = []
    in_use = None
    for rid, _ in listed:
        if rid not in kept:
            in_use = running_from(app) if in_use is None else in_use
            if rid in in_use:  # e.g. after -o no-restart: its processes still need its files
                continue
            remove(app, rid, trash)
            removed.append(rid)
    for stray in app.releases.glob(".t*-*"):
        if stray not in (trash or ()) and not owner_alive(stray.name):
            shutil.rmtree(stray, ignore_errors=True)
    live_sha = next((m.sha for rid, m in listed if rid == live and m and m.sha), "")
    drop_spares(app, spare_dir(app, live_sha) if live_sha else None, trash)  # of another commit
    return removed


def running_from(app: App) -> set[str]:
    """Releases that a running process uses: its cwd, its executable or a mapped file.

    Read from /proc for every process we may inspect (the app's supervised processes,
    and anything else run from a release, e.g. a one-off command).
    """
    base = os.path.realpath(app.releases) + os.sep
    used: set[str] = set()

    def note(path: str) -> bool:
        if path.startswith(base):
            used.add(path[len(base) :].split(os.sep, 1)[0])
            return True
        return False

    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if note(os.readlink(f"/proc/{pid}/cwd")) | note(os.readlink(f"/proc/{pid}/exe")):
                continue
            with open(f"/proc/{pid}/maps", "rb") as maps:
                mapped = maps.read()
            if os.fsencode(base) in mapped:  # one search; lines parsed only on a hit
                for line in mapped.decode(errors="replace").splitlines():
                    fields = line.split(None, 5)
                    if len(fields) == 6:
                        note(fields[5].strip())
        except OSError:
            continue
    return used


def shared_env(app: App) -> dict[str, str]:
    """The app's ``shared/.env``, parsed by python-dotenv (values are never printed)."""
    return envfile.read(app.shared / ".env")


def command_env(app: App, release: Path, env: dict[str, str]) -> dict[str, str]:
    """Environment for commands run in a release: its venv first on PATH, the app's .env loaded.

    Every pushed command runs in it, so it is also the root guard's last word.
    """
    check_not_root(app)
    return environment.for_release(os.environ, env, app.name, str(release), str(app.shared))
