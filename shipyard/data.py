"""The app's data on disk: what it writes inside a release is kept in ``shared/`` instead.

A release is replaced by the next deploy and deleted when pruned, so a SQLite file or an
upload directory inside it is lost with it. Two steps guard against that:

``link`` (before migrate)
    Asks the framework where the app keeps data (``data_probe.py``, run by the release's
    Python: Django's SQLite ``NAME``s and ``MEDIA_ROOT``, Flask's instance folder and
    Flask-SQLAlchemy's SQLite files) and adds the paths remembered from earlier deploys
    (``run/data.json``). Each one inside the release becomes a link into ``shared/``, as if
    listed in ``shared``. The first time, whatever the live release holds there is moved to
    ``shared/`` (the live release is relinked to it: the same inode, nothing lost), and the
    push says so once. A path that cannot be linked (the release itself, its code, its venv)
    is refused before the switch.
    When build steps follow and the live release recorded the framework's answer, the probe
    runs beside them (``settle``, at the end of the build phase, waits for it): the links are
    made from the live release's answer first, and only an answer that differs from it (new
    settings, a package that changes them) links the new paths and runs the build steps
    again, so the release ends as it would with the probe first.
``check`` (after migrate and the release command)
    Any SQLite file written inside the release since its checkout that is not a link: on a
    first deploy it is moved to ``shared/`` and remembered; if a live release already holds
    its own copy of it, the deploy is refused naming the file and the fix.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import threading
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from . import command, migration_cache, migration_tools, release
from .app import App
from .context import Deploy
from .errors import PhaseError
from .report import Skip

PROBE = Path(__file__).with_name("data_probe.py")
STATE = Path(".shipyard") / "data.json"  # the framework's answer and what it depended on
SQLITE_MAGIC = b"SQLite format 3\0"
SIDECARS = ("-journal", "-wal", "-shm")
SKIP_DIRS = {".venv", ".shipyard", "__pycache__", ".git", "node_modules"}
PROBE_TIMEOUT = 120.0


def memory_file(app: App) -> Path:
    return app.run / "data.json"


def remembered(app: App) -> dict[str, str]:
    """Paths (relative to a release) found before: {path: "file" | "dir"}."""
    try:
        data = json.loads(memory_file(app).read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if v in ("file", "dir")} if isinstance(data, dict) else {}


def remember(app: App, paths: dict[str, str]) -> None:
    known = remembered(app)
    if all(known.get(k) == v for k, v in paths.items()):
        return
    known.update(paths)
    tmp = memory_file(app).with_suffix(".tmp")
    tmp.write_text(json.dumps(known, indent=2, sort_keys=True) + "\n")
    os.rename(tmp, memory_file(app))


def inputs_key(d: Deploy, venv: bool = True) -> str | None:
    """What decides a Django app's answer: its settings files, its venv, shared/.env's identity
    (None when unknown: Flask apps, or settings not found). Unchanged: the answer is reused.
    ``venv=False``: all of it but the venv (the same, with another venv: the probe may run
    beside the build steps)."""
    if not (d.release / "manage.py").is_file():
        return None
    try:
        settings = migration_cache.settings_files(d)
        if settings is None:
            return None
        digest = hashlib.sha256(f"data v1\0{d.venv_key if venv else '-'}\0".encode())
        migration_cache.files_digest(digest, d.release, settings)
    except (OSError, ValueError):
        return None
    with suppress(OSError):
        st = (d.app.shared / ".env").stat()
        digest.update(f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}".encode())
    return digest.hexdigest()


Answer = tuple[dict[str, str], dict[str, str]]


def ask_framework(d: Deploy) -> Answer | None:
    """{relative path: kind} and {relative path: the setting that names it}; None if unknown.

    The live release's answer is reused while its inputs are the same (``inputs_key``).
    When they are not, build steps follow and the live release has an answer, the probe is
    started beside them (``Pending``) and the live release's answer stands in until
    ``settle``."""
    key = inputs_key(d)
    live = d.app.live_release()
    assumed, before = None, None
    if key and live:
        with suppress(OSError, ValueError, KeyError, TypeError, AttributeError):
            before = json.loads((d.app.release_dir(live) / STATE).read_text())
            if before.get("inputs") == key:
                save_answer(d, before)
                return before["found"], before["sources"]
    # the same inputs but for the venv: read only when the answer is not reused as it is
    settings = inputs_key(d, venv=False) if key else None
    if isinstance(before, dict) and before.get("settings") == settings:
        with suppress(KeyError, TypeError, ValueError):  # only the venv is another one
            assumed = (dict(before["found"]), dict(before["sources"]))
    state = {"inputs": key, "settings": settings}
    if assumed is not None and d.config.build and has_framework(d):
        d.data_probe = Pending(state, assumed)
        d.data_probe.start(d)
        return assumed
    answer = _ask_framework(d)
    if answer is not None and key:
        save_answer(d, {**state, "found": answer[0], "sources": answer[1]})
    return answer


def save_answer(d: Deploy, state: dict) -> None:
    with suppress(OSError):
        path = d.release / STATE
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        os.rename(tmp, path)


def has_framework(d: Deploy) -> bool:
    venv = d.release / ".venv"
    frameworks = ("django", "flask")
    return any(next(venv.glob(f"lib/python*/site-packages/{name}"), None) for name in frameworks)


def probe_command(d: Deploy) -> list[str]:
    return [str(d.release / ".venv" / "bin" / "python"), str(PROBE)]


def _ask_framework(d: Deploy) -> Answer | None:
    if not has_framework(d):
        return {}, {}
    ran = command.in_release(d, probe_command(d), PROBE_TIMEOUT, stderr_apart=True)
    return read_answer(d, ran)


def read_answer(d: Deploy, ran: command.Result, ours: set[str] = frozenset()) -> Answer | None:
    """The probe's answer, relative to the release (None, with a warning, when it gave none).
    ``ours``: paths this deploy linked since the probe started, read as they were before."""
    answer = None
    for line in ran.output.splitlines():
        if line.startswith(migration_tools.PROBE_MARK):
            with suppress(ValueError):
                answer = json.loads(line[len(migration_tools.PROBE_MARK) :])
    if ran.exited or not isinstance(answer, dict):
        last = (ran.everything.strip().splitlines() or ["no answer"])[-1]
        d.out.warn(f"data: could not ask the app where it keeps its data ({last[:120]})")
        return None
    found: dict[str, str] = {}
    sources: dict[str, str] = {}
    for kind, key in (("file", "files"), ("dir", "dirs")):
        for path in answer.get(key, []):
            rel = inside(d.release, Path(path), d.app, ours)
            if rel is not None:
                found[rel] = kind
                sources[rel] = answer.get("from", {}).get(path, "the app")
    return found, sources


@dataclass
class Pending:
    """The data probe running in a thread beside the build steps, and what stood in for it."""

    state: dict  # what the answer is saved with (``inputs_key``)
    assumed: Answer  # the live release's answer, linked from before the build steps ran
    linked: set[str] = field(default_factory=set)  # what ``link`` linked from ``assumed``
    ran: command.Result | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self, d: Deploy) -> None:
        def probe() -> None:
            self.ran = command.in_release(
                d, probe_command(d), PROBE_TIMEOUT, stderr_apart=True, cancelled=self.stop.is_set
            )

        self.thread = threading.Thread(target=probe, name="data-probe", daemon=True)
        self.thread.start()

    def result(self) -> command.Result | None:
        if self.thread is not None:
            self.thread.join()
        return self.ran


def settle(d: Deploy) -> str | None:
    """Wait for the probe ``link`` left running beside the build steps; link what its answer
    adds. Returns why the build steps must run again (None: the answer was the one assumed,
    or the links it asks for are those made already)."""
    pending, d.data_probe = d.data_probe, None
    if pending is None:
        return None
    ran = pending.result()
    answer = read_answer(d, ran, pending.linked) if ran is not None else None
    if answer is not None:
        save_answer(d, {**pending.state, "found": answer[0], "sources": answer[1]})
    if answer == pending.assumed:
        return None
    linked = apply(d, answer)[1]
    if linked <= pending.linked:
        return None  # e.g. the probe failed (warned): the remembered paths, linked already
    return "data paths the app names now: " + ", ".join(sorted(linked - pending.linked))


def abandon(d: Deploy) -> None:
    """The data phase's undo: a probe still running beside the build steps is stopped."""
    pending, d.data_probe = d.data_probe, None
    if pending is not None:
        pending.stop.set()
        pending.result()


def inside(release: Path, path: Path, app: App, ours: set[str] = frozenset()) -> str | None:
    """``path`` relative to the release when it lies inside it (not through a link to
    ``shared/`` or elsewhere), else None. ``"."`` for the release itself. A path at or below
    one of ``ours`` (linked by this deploy) is read as it was before: inside."""
    base = os.path.realpath(release)
    if ours:
        lexical = os.path.relpath(os.path.normpath(os.path.abspath(path)), base)
        parts = Path(lexical).parts
        if any(os.path.join(*parts[: i + 1]) in ours for i in range(len(parts))):
            return lexical
    full = os.path.join(os.path.realpath(os.path.dirname(os.path.abspath(path))), path.name)
    if full != base and not full.startswith(base + os.sep):
        return None
    if os.path.islink(full):
        target = os.path.realpath(full)
        shared = os.path.realpath(app.shared)
        if target.startswith(shared + os.sep):
            return None  # linked from shared/ already (the `shared` setting)
    return os.path.relpath(full, base)


def refusal(d: Deploy, rel: str, kind: str, source: str) -> str | None:
    """Why ``rel`` cannot be linked from shared/ (None when it can)."""
    parts = Path(rel).parts
    if rel == "." or (parts and parts[0] in (".venv", ".shipyard")):
        return f"{source} is {release_path(d, rel)}, which is the release itself or its venv"
    if kind == "dir":
        path = d.release / rel
        code = path.is_dir() and not path.is_symlink() and next(path.rglob("*.py"), None)
        if code:
            return f"{source} is {release_path(d, rel)}, which holds the app's code"
    return None


def release_path(d: Deploy, rel: str) -> str:
    return f"releases/{d.release_id}/{rel}".rstrip("/.")


def fix_hint(rel: str, kind: str) -> str:
    entry = f"{rel}/" if kind == "dir" else rel
    return (
        f'keep it in shared/: add it to shipyard.toml (shared = [".env", "{entry}"]), '
        "or point the setting at a path outside the release (e.g. from shared/.env)"
    )


def seed(d: Deploy, rel: str, kind: str) -> str | None:
    """Create ``shared/<rel>`` the first time: from the live release's own copy (moved, and
    the live release relinked to it), else from the commit, else empty. Returns where from."""
    target = d.app.shared / rel
    if os.path.lexists(target):
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    live = d.app.live_release()
    old = d.app.release_dir(live) / rel if live and live != d.release_id else None
    if old is not None and os.path.lexists(old) and not old.is_symlink():
        names = [""] + (list(SIDECARS) if kind == "file" else [])
        for suffix in names:
            src = Path(f"{old}{suffix}")
            if os.path.lexists(src) and not src.is_symlink():
                move_and_link(src, Path(f"{target}{suffix}"))
        return f"moved from releases/{live}"
    new = d.release / rel
    if os.path.lexists(new) and not new.is_symlink():
        empty = new.is_dir() and not any(new.iterdir())  # e.g. made by the app's import
        if new.is_file():  # a tracked file: read-only, its inode shared with other releases
            shutil.copy2(new, target)
            os.chmod(target, stat.S_IMODE(os.stat(target).st_mode) | stat.S_IWUSR)
            new.unlink()
        else:
            os.rename(new, target)
        return "new" if empty else "from the commit"
    if kind == "dir":
        target.mkdir(parents=True, exist_ok=True)
    return "new"


def move_and_link(src: Path, dest: Path) -> None:
    """Move ``src`` (in a live release) to ``dest`` and leave a link in its place.

    A file is hard-linked first and the link swapped in by rename(2): a process that has it
    open keeps writing to the same inode, and the path never disappears.
    """
    link_tmp = src.with_name(f".{src.name}.shipyard-{os.getpid()}")
    with suppress(FileNotFoundError):
        link_tmp.unlink()
    os.symlink(os.path.relpath(dest, src.parent), link_tmp)
    if src.is_dir():
        os.rename(src, dest)
    else:
        try:
            os.link(src, dest)
        except OSError:
            shutil.copy2(src, dest)
    os.rename(link_tmp, src)


def link_one(d: Deploy, rel: str, kind: str) -> None:
    release.link_into(d.release / rel, d.app.shared / rel)


def link(d: Deploy) -> str:
    """The data phase: every data path inside the release is linked from shared/."""
    if d.reused:
        return Skip("reused release")
    detail, linked = apply(d, ask_framework(d))
    if d.data_probe is not None:
        d.data_probe.linked = linked
    return detail


def apply(d: Deploy, asked: Answer | None) -> tuple[str, set[str]]:
    """Link the data paths of the framework's answer and the remembered ones from shared/;
    (the phase's detail, the paths linked)."""
    found, sources = asked if asked is not None else ({}, {})
    found, sources = dict(found), dict(sources)
    for rel, kind in remembered(d.app).items():
        found.setdefault(rel, kind)
        sources.setdefault(rel, "found in an earlier deploy")
    configured = {entry.rstrip("/") for entry in d.config.shared}
    todo = {rel: kind for rel, kind in found.items() if rel not in configured}
    for rel, kind in sorted(todo.items()):
        problem = refusal(d, rel, kind, sources[rel])
        if problem:
            raise PhaseError(
                f"data inside the release would be lost: {problem}", fix_hint(rel, kind)
            )
    linked, rels = [], set()
    # directories first: a file inside one that is linked now is in shared/ already
    for rel, kind in sorted(todo.items(), key=lambda item: (item[1] != "dir", item[0])):
        if kind == "file" and inside(d.release, d.release / rel, d.app) is None:
            continue
        how = seed(d, rel, kind)
        link_one(d, rel, kind)
        shown = f"{rel}/" if kind == "dir" else rel
        linked.append(shown)
        rels.add(rel)
        if how is not None:
            d.out.warn(
                f"{shown} ({sources[rel]}) is inside the release, lost at the next deploy: "
                f"kept in shared/{shown} ({how}) and linked into every release; to say so "
                f'yourself: shared = [".env", "{shown}"] in shipyard.toml'
            )
    remember(d.app, todo)
    if not linked:
        return Skip("no data inside the release" if asked is not None else "not known"), rels
    return f"{', '.join(linked)} linked from shared/ (detected)", rels


def written(d: Deploy) -> list[str]:
    """SQLite files written inside the release since its checkout (not links)."""
    since = (d.manifest.created if d.manifest else 0) - 2
    found = []
    for dirpath, dirnames, filenames in os.walk(d.release):
        dirnames[:] = [n for n in dirnames if n not in SKIP_DIRS]
        for name in filenames:
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)  # one stat: a link is not a regular file here
                if not stat.S_ISREG(st.st_mode) or st.st_mtime < since:
                    continue
                with open(path, "rb") as f:
                    if f.read(16) != SQLITE_MAGIC:
                        continue
            except OSError:
                continue
            found.append(os.path.relpath(path, d.release))
    return sorted(found)


def check(d: Deploy) -> str:
    """The data-check phase: no SQLite file is left to die with the release."""
    if d.reused:
        return Skip("reused release")
    files = written(d)
    if not files:
        return Skip("no data written inside the release")
    live = d.app.live_release()
    for rel in files:
        old = d.app.release_dir(live) / rel if live and live != d.release_id else None
        if os.path.lexists(d.app.shared / rel) or (old is not None and os.path.lexists(old)):
            raise PhaseError(
                f"{release_path(d, rel)} is an SQLite database written inside the release "
                "(by migrate or the release command): the live release has its own, and this "
                "one would be lost on the next deploy",
                fix_hint(rel, "file"),
            )
    for rel in files:
        target = d.app.shared / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        for suffix in ("", *SIDECARS):
            src = d.release / f"{rel}{suffix}"
            if os.path.lexists(src) and not src.is_symlink():
                os.rename(src, f"{target}{suffix}")
        link_one(d, rel, "file")
        d.out.warn(
            f"{rel} is an SQLite database written inside the release, lost at the next "
            f"deploy: kept in shared/{rel} and linked into every release; to say so yourself: "
            f'shared = [".env", "{rel}"] in shipyard.toml'
        )
    remember(d.app, dict.fromkeys(files, "file"))
    return f"{', '.join(files)} moved to shared/ and linked"
