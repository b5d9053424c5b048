"""Releases: one immutable, materialised commit each, and the ``current`` link that picks one.

A release is built in a hidden temporary directory and renamed into
``releases/`` only once its files are all there, so a crash never leaves a
directory that looks like a release but is not one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .app import RELEASE_ID, App
from .errors import ConfigError, PhaseError
from .lock import owner_alive

MANIFEST = Path(".shipyard") / "release.json"
GOOD_STATES = ("good",)


def new_release_id(sha: str, now: float | None = None) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    return f"{stamp}-{sha[:7]}"


def git(repo: Path, *args: str, input: bytes | None = None) -> str:
    """Run git against the bare repo; a clean environment so hook variables never leak in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    result = subprocess.run(
        ["git", "--git-dir", str(repo), *args], input=input, capture_output=True, env=env
    )
    if result.returncode:
        raise PhaseError(f"git {args[0]} failed: {result.stderr.decode(errors='replace').strip()}")
    return result.stdout.decode().strip()


def checkout(app: App, sha: str, release_id: str) -> Path:
    """Materialise ``sha`` as ``releases/<release_id>`` with ``git archive | tar`` (no .git)."""
    target = app.release_dir(release_id)
    tmp = app.releases / f".tmp-{release_id}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    try:
        archive = subprocess.Popen(
            # modes 0755/0644 whatever the repo or umask say (tar as root keeps the archive's)
            ["git", "-c", "tar.umask=0022", "--git-dir", str(app.repo), "archive", "--format=tar"]
            + [sha],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
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
        check_symlinks(tmp)
        os.chmod(tmp, 0o755)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def nearly_full(path: Path) -> bool:
    """Is the filesystem of ``path`` out of space (less than 1 MiB or no inodes left)?"""
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < (1 << 20) or (st.f_files > 0 and st.f_favail == 0)


def check_symlinks(tree: Path) -> None:
    """Refuse a symlink that resolves outside the release: following it would reach the host.

    Each link is resolved on the real filesystem, every link along its chain
    included: ``s -> .`` and ``up -> s/..`` each look inside when read as text,
    yet ``up`` is the release's parent.
    """
    base = os.path.realpath(tree)
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                continue
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
        dest = release / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.is_symlink() or dest.is_file():
            dest.unlink()
        elif dest.is_dir():
            shutil.rmtree(dest)
        os.symlink(os.path.relpath(source, dest.parent), dest)
        linked.append(entry)
    return linked


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
    try:
        tags = git(app.repo, "tag", "--points-at", sha, "--sort=-v:refname").split()
    except PhaseError:
        return None
    return tags[0] if tags else None


def remove(app: App, release_id: str) -> None:
    """Delete a release; renamed aside first so no half-deleted directory is ever listed."""
    path = app.release_dir(release_id)
    if not path.exists():
        return
    trash = app.releases / f".trash-{release_id}-{os.getpid()}"
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def prune(app: App, keep: int, protect: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """Keep the ``keep`` most recently live good releases, the live one and ``protect``;
    drop the rest.

    Recency, not build time: a release made live again by a pinned push or a
    rollback counts as new, so the release it replaced is the one kept for the
    next rollback.
    """
    live = app.live_release()
    good = [
        rid
        for rid, m in sorted(
            ((rid, m) for rid, m in releases(app) if m and m.state in GOOD_STATES),
            key=lambda item: (recency(item[1]), item[0]),
        )
    ]
    kept = set(good[-keep:]) | ({live} if live else set()) | set(protect)
    removed = []
    in_use = None
    for rid, _ in releases(app):
        if rid not in kept:
            in_use = running_from(app) if in_use is None else in_use
            if rid in in_use:  # e.g. after -o no-restart: its processes still need its files
                continue
            remove(app, rid)
            removed.append(rid)
    for stray in app.releases.glob(".t*-*"):
        if not owner_alive(stray.name):
            shutil.rmtree(stray, ignore_errors=True)
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
            with open(f"/proc/{pid}/maps", errors="replace") as maps:
                for line in maps:
                    fields = line.split(None, 5)
                    if len(fields) == 6 and note(fields[5].strip()):
                        break
        except OSError:
            continue
    return used


def shared_env(app: App) -> dict[str, str]:
    """The app's ``shared/.env``, parsed by python-dotenv (values are never printed)."""
    path = app.shared / ".env"
    if not path.is_file():
        return {}
    from .settings import parse

    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it: {exc}") from None
    return parse(text, str(path))


def layout_env(app: App, release: Path) -> dict[str, str]:
    """Where things are, for the app's commands and processes: e.g. SQLite in SHIPYARD_SHARED."""
    return {
        "SHIPYARD_APP": app.name,
        "SHIPYARD_RELEASE": release.name,
        "SHIPYARD_SHARED": str(app.shared),
    }


def command_env(app: App, release: Path, env: dict[str, str]) -> dict[str, str]:
    """Environment for commands run in a release: its venv first on PATH, the app's .env loaded.

    Every pushed command runs in it, so it is also the root guard's last word.
    """
    from .guard import check_not_root

    check_not_root(app)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "VIRTUAL_ENV"))}
    venv_dir = release / ".venv"
    merged = {**base, **env}
    merged.update(layout_env(app, release))
    merged["VIRTUAL_ENV"] = str(venv_dir)
    merged["PATH"] = f"{venv_dir / 'bin'}:{base.get('PATH', '/usr/bin:/bin')}"
    merged.pop("PYTHONHOME", None)
    return merged
