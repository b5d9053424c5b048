"""Build steps (collectstatic, asset bundling…) and the reuse of their outputs.

A step that declares ``inputs`` (globs) and ``outputs`` (paths) is skipped when
the hash of its command, the venv and its input files equals the one recorded
for the live release: its outputs are hard-linked from there instead. A
code-only deploy then pays nothing for assets that did not change.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from .config import BuildStep


def input_key(step: BuildStep, release: Path, venv_key: str | None) -> str:
    digest = hashlib.sha256(f"{step.run}\0{venv_key}\0".encode())
    skip = {release / out for out in step.outputs} | {release / ".venv"}
    files: set[Path] = set()
    for pattern in step.inputs:
        for match in release.glob(pattern):
            if any(match == s or match.is_relative_to(s) for s in skip):
                continue
            if match.is_file():
                files.add(match)
            elif match.is_dir() and not match.is_symlink():
                files.update(p for p in match.rglob("*") if p.is_file())
    for path in sorted(files):
        digest.update(str(path.relative_to(release)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def reuse_outputs(step: BuildStep, source: Path, release: Path) -> bool:
    """Hard-link the step's outputs from ``source`` into ``release``; False if any is missing."""
    if not all((source / out).exists() for out in step.outputs):
        return False
    for out in step.outputs:
        src, dest = source / out, release / out
        if dest.is_dir() and not dest.is_symlink():
            shutil.rmtree(dest)
        elif dest.exists() or dest.is_symlink():
            dest.unlink()
        dest.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dest, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(src, dest)
    return True


def _link_or_copy(src: str | Path, dest: str | Path) -> None:
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)
