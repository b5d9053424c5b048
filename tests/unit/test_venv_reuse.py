"""What a new virtualenv takes over from the live one: compiled files, and (when the
requirements resolve to the packages a kept venv already holds) the venv itself."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from shipyard import venv

TAG = sys.implementation.cache_tag


def site(root: Path) -> Path:
    path = root / "lib" / "python3.11" / "site-packages"
    path.mkdir(parents=True)
    return path


def test_bytecode_is_linked_for_the_very_same_source_files_only(tmp_path: Path):
    live, new = site(tmp_path / "live"), site(tmp_path / "new")
    for rel in ("pkg/shared.py", "pkg/sub/deep.py", "pkg/changed.py", "top.py"):
        (live / rel).parent.mkdir(parents=True, exist_ok=True)
        (live / rel).write_text(f"# {rel}\n")
        cache = (live / rel).parent / "__pycache__"
        cache.mkdir(exist_ok=True)
        (cache / f"{Path(rel).stem}.{TAG}.pyc").write_bytes(b"compiled " + rel.encode())
    (new / "pkg" / "sub").mkdir(parents=True)
    for rel in ("pkg/shared.py", "pkg/sub/deep.py", "top.py"):  # linked from uv's cache
        os.link(live / rel, new / rel)
    (new / "pkg" / "changed.py").write_text("# another version\n")  # another file, same name
    (new / "pkg" / "added.py").write_text("# only in the new venv\n")
    (new / "pkg" / "alias.py").symlink_to("shared.py")
    (live / "pkg" / "nocache.py").write_text("")
    os.link(live / "pkg" / "nocache.py", new / "pkg" / "nocache.py")  # same file, no bytecode

    todo = venv.link_bytecode(tmp_path / "live", tmp_path / "new")

    assert sorted(Path(p).relative_to(new).as_posix() for p in todo) == [
        "pkg/added.py",
        "pkg/alias.py",
        "pkg/changed.py",
        "pkg/nocache.py",
    ]
    for rel in ("pkg/shared.py", "pkg/sub/deep.py", "top.py"):
        pyc = Path(rel).parent / "__pycache__" / f"{Path(rel).stem}.{TAG}.pyc"
        assert (new / pyc).stat().st_ino == (live / pyc).stat().st_ino, rel
    assert not (new / "pkg" / "__pycache__" / f"changed.{TAG}.pyc").exists()


def test_bytecode_without_a_live_site_compiles_everything(tmp_path: Path):
    new = site(tmp_path / "new")
    (new / "mod.py").write_text("")
    assert venv.link_bytecode(tmp_path / "missing", tmp_path / "new") == [str(new / "mod.py")]


@pytest.mark.parametrize("with_find", [True, False])
def test_nothing_left_world_writable(tmp_path: Path, monkeypatch, with_find: bool):
    if not with_find:
        monkeypatch.setattr(venv.shutil, "which", lambda name: None)
    tree = tmp_path / "venv"
    (tree / "lib" / "deep").mkdir(parents=True)
    (tree / ".lock").write_text("")
    (tree / "lib" / "deep" / "mod.py").write_text("")
    (tree / "lib" / "link").symlink_to("deep")
    for path in (tree / ".lock", tree / "lib" / "deep" / "mod.py"):
        path.chmod(0o666)
    (tree / "lib" / "deep").chmod(0o777)
    (tree / "lib").chmod(0o755)
    (tree / "bin").mkdir(mode=0o755)
    (tree / "bin" / "tool").write_text("")
    (tree / "bin" / "tool").chmod(0o775)

    venv.not_world_writable(tree)

    modes = {
        p.relative_to(tree).as_posix(): stat.S_IMODE(p.lstat().st_mode)
        for p in tree.rglob("*")
        if not p.is_symlink()
    }
    assert modes == {
        ".lock": 0o664,
        "lib": 0o755,
        "lib/deep": 0o775,
        "lib/deep/mod.py": 0o664,
        "bin": 0o755,
        "bin/tool": 0o775,
    }
