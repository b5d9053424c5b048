"""One app's place on a host: the deploy root layout from the design.

``App`` only knows paths and names; it never touches the network or git.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import AppError

# \Z, not $: "$" also matches before a trailing newline, and "mysite\n" is not a name
APP_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}\Z")
RELEASE_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{7,40}\Z")


def default_root() -> Path:
    return Path(os.environ.get("SHIPYARD_ROOT") or Path.home() / "apps")


def check_app_name(name: str) -> str:
    if not APP_NAME.match(name):
        raise AppError(
            f"invalid app name {name!r}",
            "use lowercase letters, digits, '-' and '_' (at most 63, no '/', '..' or spaces)",
        )
    return name


def check_release_id(release_id: str) -> str:
    if not RELEASE_ID.match(release_id):
        raise AppError(
            f"invalid release name {release_id!r}",
            "name a release as `shipyard releases APP` lists it, e.g. 20261129T013000Z-1a2b3c4",
        )
    return release_id


class App:
    """An app by its deploy root and name; immutable, equal by both.

    What ``@dataclass(frozen=True)`` would write, by hand: the forced SSH command resolves
    a pushed repo to its App before it execs git-receive-pack, and ``dataclasses`` (with
    ``inspect``) was a third of that command's imports.
    """

    __match_args__ = ("root", "name")
    root: Path
    name: str

    def __init__(self, root: Path, name: str) -> None:
        object.__setattr__(self, "root", root)
        object.__setattr__(self, "name", name)

    def __setattr__(self, key: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {key!r}: an App does not change")

    def __delattr__(self, key: str) -> None:
        raise AttributeError(f"cannot delete field {key!r}: an App does not change")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, App) or other.__class__ is not self.__class__:
            return NotImplemented
        return (self.root, self.name) == (other.root, other.name)

    def __hash__(self) -> int:
        return hash((self.root, self.name))

    def __repr__(self) -> str:
        return f"App(root={self.root!r}, name={self.name!r})"

    @classmethod
    def at(cls, name: str, root: Path | str | None = None) -> App:
        return cls(
            Path(root).absolute() if root else default_root().absolute(), check_app_name(name)
        )

    @classmethod
    def from_repo(cls, git_dir: Path | str) -> App:
        """The app whose bare repo is ``git_dir`` (hooks run with GIT_DIR set to it)."""
        app_dir = Path(git_dir).absolute().resolve().parent
        return cls(app_dir.parent, app_dir.name)

    @property
    def dir(self) -> Path:
        return self.root / self.name

    @property
    def repo(self) -> Path:
        return self.dir / "repo.git"

    @property
    def config_file(self) -> Path:
        return self.dir / "shipyard.toml"

    @property
    def releases(self) -> Path:
        return self.dir / "releases"

    @property
    def venvs(self) -> Path:
        return self.dir / "venvs"

    @property
    def shared(self) -> Path:
        return self.dir / "shared"

    @property
    def current(self) -> Path:
        return self.dir / "current"

    @property
    def deploys(self) -> Path:
        return self.dir / "deploys"

    @property
    def run(self) -> Path:
        return self.dir / "run"

    @property
    def deploy_lock(self) -> Path:
        """The per-app lock every deploy, change, recovery and receiver request takes."""
        return self.run / "deploy.lock"

    @property
    def history_file(self) -> Path:
        return self.deploys / "deploys.jsonl"

    def exists(self) -> bool:
        return self.repo.is_dir() and self.config_file.is_file()

    def require(self) -> App:
        if not self.exists():
            raise AppError(
                f"no shipyard app at {self.dir}",
                f"create it with `shipyard init {self.name} --root {self.root}`",
            )
        return self

    def release_dir(self, release_id: str) -> Path:
        return self.releases / check_release_id(release_id)

    def live_release(self) -> str | None:
        """The id of the release ``current`` points at; None when there is no valid one.

        ``current`` is resolved on the filesystem: it is a release only if it ends at a
        directory ``releases/<id>`` with a release's name. Anything else (``../../..``,
        ``releases/..``, a release that is gone, a plain directory) is no live release,
        and the next deploy replaces it as a first deploy would.
        """
        if not os.path.islink(self.current):
            return None
        target = Path(os.path.realpath(self.current))
        if target.parent != Path(os.path.realpath(self.releases)):
            return None
        if not RELEASE_ID.match(target.name) or not target.is_dir():
            return None
        return target.name

    def current_problem(self) -> str | None:
        """What is wrong with ``current`` when it exists but names no valid live release."""
        if not os.path.lexists(self.current) or self.live_release():
            return None
        if not os.path.islink(self.current):
            kind = "a directory" if os.path.isdir(self.current) else "a file"
            return f"current is {kind}, not a link to a release"
        target = os.readlink(self.current)
        if not os.path.exists(self.current):
            return f"current points at {target}, which is gone"
        return f"current -> {target} is not a release"
