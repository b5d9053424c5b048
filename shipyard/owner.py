"""Who controls a path, and doing things as that user instead of as root.

Root must never follow a link, write through a temp file, or run a program in a
place the deploy user can change: anyone who can push runs code as that user
and can plant links there (``~/.ssh/authorized_keys -> /etc/shadow``). So a
root command either checks that nobody but root controls a path before it
trusts it (``untrusted``), or does the work in a child process that dropped to
the user first (``call_as``): what the user could do anyway is all it can do.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ShipyardError


@dataclass(frozen=True)
class User:
    """Whom to run as: uid, gid and the name its supplementary groups are looked up by."""

    name: str
    uid: int
    gid: int
    home: str = "/"

    @classmethod
    def of(cls, entry: pwd.struct_passwd) -> User:
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir)

    @classmethod
    def by_uid(cls, uid: int, gid: int) -> User:
        try:
            return cls.of(pwd.getpwuid(uid))
        except KeyError:  # a uid without a name: no supplementary groups
            return cls(str(uid), uid, gid)


def untrusted(path: Path) -> list[str]:
    """Why someone other than root could change what ``path`` names (empty: nobody can).

    Looks at ``path`` and every directory above it, without following the last
    component: each must be owned by root and writable by nobody else (root's
    group aside; a sticky directory such as /tmp is fine, it only lets owners
    replace their own entries). Links on the way are resolved: their targets are checked too.
    """
    problems: list[str] = []
    seen: set[str] = set()

    def check(p: str) -> None:
        if p in seen:
            return
        seen.add(p)
        try:
            st = os.lstat(p)
        except OSError as exc:
            problems.append(f"{p}: {exc.strerror}")
            return
        why = _writable_by_others(st)
        if why:
            problems.append(f"{p} {why}")
        if stat.S_ISLNK(st.st_mode):
            target = os.path.join(os.path.dirname(p), os.readlink(p))
            walk(os.path.normpath(target))

    def walk(p: str) -> None:
        parent = os.path.dirname(p)
        if parent != p:
            walk(parent)
        check(p)

    walk(os.path.abspath(path))
    return problems


def untrusted_tree(top: Path, limit: int = 3) -> list[str]:
    """``untrusted`` for ``top`` and everything under it (links not followed); at most ``limit``."""
    problems = untrusted(top)
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            try:
                why = _writable_by_others(os.lstat(path))
            except OSError:
                continue
            if why:
                problems.append(f"{path} {why}")
                if len(problems) >= limit:
                    return problems
    return problems


def _writable_by_others(st: os.stat_result) -> str:
    """Why someone other than root could change this entry ('' when nobody can)."""
    if st.st_uid != 0:
        return f"is owned by {_name(st.st_uid)}"
    # group write is fine for root's group; a sticky directory lets owners replace only theirs
    writers = (stat.S_IWOTH | (stat.S_IWGRP if st.st_gid else 0)) & st.st_mode
    shared = writers and not stat.S_ISLNK(st.st_mode)
    if shared and not (stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX):
        return f"is writable by group or others (mode {stat.S_IMODE(st.st_mode):o})"
    return ""


def first_owner(path: Path) -> User | None:
    """The nearest owner other than root of ``path`` or a directory above it (None: root's)."""
    p = os.path.abspath(path)
    while True:
        with contextlib.suppress(OSError):
            st = os.lstat(p)
            if st.st_uid != 0:
                return User.by_uid(st.st_uid, st.st_gid)
        parent = os.path.dirname(p)
        if parent == p:
            return None
        p = parent


def _name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def drop_to(user: User) -> None:
    """Become ``user`` for good (groups first, uid last); refuses to go on if root stays."""
    if user.name == str(user.uid):
        os.setgroups([])
    else:
        os.initgroups(user.name, user.gid)
    os.setgid(user.gid)
    os.setuid(user.uid)
    if (os.getuid(), os.geteuid()) != (user.uid, user.uid) or (user.uid and _can_regain()):
        raise ShipyardError(f"could not drop to {user.name}")
    os.environ.update(HOME=user.home, USER=user.name, LOGNAME=user.name)
    os.chdir("/")


def _can_regain() -> bool:
    try:
        os.setuid(0)
    except PermissionError:
        return False
    return True


def call_as(user: User, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a child that dropped to ``user`` before doing anything else.

    The value (JSON-able) comes back to the caller; a ``ShipyardError`` or
    ``OSError`` in the child is raised here as a ``ShipyardError`` with the
    same text. When we already are ``user``, ``fn`` simply runs here.
    """
    if os.geteuid() == user.uid:
        return fn(*args)
    sys.stdout.flush()
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child; its result goes through the pipe
        code = 0
        try:
            os.close(read_end)
            try:
                drop_to(user)
                answer: dict = {"value": fn(*args)}
            except ShipyardError as exc:
                answer = {"error": exc.message, "hint": exc.hint}
            except OSError as exc:
                where = f"{exc.filename}: " if exc.filename else ""
                answer = {"error": f"{where}{exc.strerror or exc} (as {user.name})"}
            with os.fdopen(write_end, "w") as pipe:
                json.dump(answer, pipe)
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:  # noqa: BLE001 - never return into the parent's code
            code = 70
        os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        text = pipe.read()
    _, status = os.waitpid(pid, 0)
    try:
        answer = json.loads(text)
    except ValueError:
        raise ShipyardError(
            f"a step run as {user.name} died (status {os.waitstatus_to_exitcode(status)})"
        ) from None
    if "error" in answer:
        raise ShipyardError(answer["error"], answer.get("hint", ""))
    return answer.get("value")
