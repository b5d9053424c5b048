"""release.checkout from the live release plus the diff: the same tree as a full checkout.

Each commit is checked out next to the live release, compared with ``git archive`` of the same
commit (paths, directories, bytes, executable bits, symlink targets), then made live, so the
next commit's checkout starts from it.
"""

import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from shipyard import release
from shipyard.app import App
from shipyard.errors import PhaseError

ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "T",
    "GIT_AUTHOR_EMAIL": "t@localhost",
    "GIT_COMMITTER_NAME": "T",
    "GIT_COMMITTER_EMAIL": "t@localhost",
    "GIT_CONFIG_NOSYSTEM": "1",
}
FILLER = 30  # unchanged files, so that each diff below stays a small share of the tree


class Site:
    """A bare repo with a work tree to commit from, and the releases checked out of it."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.app = App.at("site", tmp / "apps")
        self.app.releases.mkdir(parents=True)
        self.work = tmp / "work"
        self.work.mkdir()
        self.git("init", "-q", "--bare", str(self.app.repo))
        self.n = 0

    def git(self, *args: str, cwd: Path | None = None) -> str:
        return subprocess.run(
            ["git", *args], cwd=cwd, env=ENV, check=True, capture_output=True, text=True
        ).stdout.strip()

    def commit(self) -> str:
        wt = ["--git-dir", str(self.app.repo), "--work-tree", str(self.work)]
        self.git(*wt, "add", "-A", ".")
        self.git(*wt, "commit", "-q", "--allow-empty", "-m", f"c{self.n}")
        self.n += 1
        return self.git(*wt, "rev-parse", "HEAD")

    def checkout(self, sha: str) -> Path:
        rid = release.new_release_id(sha, time.time() + 3600 * self.n)
        path = release.checkout(self.app, sha, rid)
        return path

    def go_live(self, path: Path, sha: str) -> None:
        release.Manifest(
            sha=sha, ref="refs/heads/main", release=path.name, deploy=self.n, pusher="t",
            created=time.time(),
        ).save(path)  # fmt: skip
        release.switch(self.app, path.name)

    def archive(self, sha: str) -> Path:
        dest = self.tmp / f"archive-{sha[:7]}"
        dest.mkdir()
        tar = subprocess.run(["git", "--git-dir", str(self.app.repo), "archive", sha], env=ENV,
                             check=True, capture_output=True).stdout  # fmt: skip
        subprocess.run(["tar", "-x", "-C", str(dest)], input=tar, check=True)
        return dest

    def write(self, name: str, text: str, mode: int = 0o644) -> None:
        path = self.work / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(mode)

    def link(self, name: str, target: str) -> None:
        path = self.work / name
        if path.is_symlink():
            path.unlink()
        os.symlink(target, path)

    def remove(self, name: str) -> None:
        path = self.work / name
        if path.is_dir() and not path.is_symlink():
            for child in sorted(path.rglob("*"), reverse=True):
                child.rmdir() if child.is_dir() and not child.is_symlink() else child.unlink()
            path.rmdir()
        else:
            path.unlink()


def snapshot(tree: Path) -> dict[str, tuple]:
    """Every path under ``tree`` (its manifest aside): kind, executable bit, bytes or target."""
    seen = {}
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            rel = str(path.relative_to(tree))
            if rel == ".shipyard" or rel.startswith(".shipyard/"):
                continue
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                seen[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                seen[rel] = ("dir",)
            else:
                seen[rel] = ("file", bool(st.st_mode & stat.S_IXUSR), path.read_bytes())
    return seen


def modes(tree: Path) -> dict[str, int]:
    return {
        str(p.relative_to(tree)): stat.S_IMODE(os.lstat(p).st_mode)
        for p in tree.rglob("*")
        if not p.is_symlink() and ".shipyard" not in p.parts
    }


def same_inode(a: Path, b: Path) -> bool:
    return os.lstat(a).st_ino == os.lstat(b).st_ino


def check(site: Site, sha: str) -> Path:
    """Check ``sha`` out next to the live release; it must be the commit's tree exactly."""
    made = site.checkout(sha)
    assert snapshot(made) == snapshot(site.archive(sha))
    for rel, mode in modes(made).items():  # files read-only, directories as git archive's
        assert mode in ((0o755,) if (made / rel).is_dir() else (0o444, 0o555)), (rel, oct(mode))
    site.go_live(made, sha)
    return made


@pytest.fixture
def site(tmp_path):
    s = Site(tmp_path)
    for i in range(FILLER):
        s.write(f"pkg/filler/mod{i}.py", f"VALUE = {i}\n")
    s.write("a.txt", "a\n")
    s.write("bin/run.sh", "#!/bin/sh\necho run\n", 0o755)
    s.write("dir/sub/x.py", "X = 1\n")
    s.write("later.txt", "deleted later\n")
    s.write("thing", "a file, then a directory, then a file\n")
    s.write("media/readme.txt", "tracked under a shared path\n")
    s.link("link", "a.txt")
    return s


def test_a_release_from_the_diff_is_the_commit_tree(site):
    first = check(site, site.commit())  # no live release: a full checkout
    unchanged = "pkg/filler/mod0.py"

    # +x and -x flips, a changed file, a deletion, a rename, symlinks retargeted and added
    site.work.joinpath("a.txt").chmod(0o755)
    site.work.joinpath("bin/run.sh").chmod(0o644)
    site.write("pkg/filler/mod1.py", "VALUE = 'changed'\n")
    site.remove("later.txt")
    os.rename(site.work / "dir/sub/x.py", site.work / "dir/sub/y.py")
    site.link("link", "bin/run.sh")
    site.link("dirlink", "dir/sub")
    second = check(site, site.commit())
    assert same_inode(first / unchanged, second / unchanged)  # made from the diff
    assert not same_inode(first / "a.txt", second / "a.txt")  # the mode flip is its own file
    assert (first / "a.txt").stat().st_mode & 0o111 == 0  # and the live release kept its own
    assert not (second / "dir/sub").joinpath("x.py").exists()

    # a file turned into a directory; the live release with things the commit does not have
    site.remove("thing")
    site.write("thing/inner.txt", "now a directory\n")
    (second / "untracked-empty-dir").mkdir()
    (second / "pkg" / "__pycache__").mkdir()  # what a Python process leaves behind
    tampered = second / "pkg/filler/mod2.py"  # written in place (root may): not linked
    tampered.chmod(0o644)
    tampered.write_text("VALUE = 'tampered'\n")
    (second / "media").rename(second / "media.real")  # a shared path, as link_shared leaves it
    os.symlink("media.real", second / "media")
    third = check(site, site.commit())
    assert same_inode(second / unchanged, third / unchanged)
    assert (third / "pkg/filler/mod2.py").read_text() == "VALUE = 2\n"
    assert not same_inode(second / "media.real/readme.txt", third / "media/readme.txt")

    # and back into a file
    site.remove("thing")
    site.write("thing", "a file again\n")
    fourth = check(site, site.commit())
    assert same_inode(third / unchanged, fourth / unchanged)
    assert (first / "thing").read_text() == "a file, then a directory, then a file\n"


def test_a_large_diff_is_checked_out_in_full(site):
    first = check(site, site.commit())
    for i in range(FILLER):
        site.write(f"pkg/filler/mod{i}.py", f"VALUE = {i + 1}\n")
    site.write("a.txt", "a\n")  # unchanged, yet not linked: the diff is most of the tree
    second = check(site, site.commit())
    assert not same_inode(first / "a.txt", second / "a.txt")


def test_a_live_release_of_unknown_commit_is_not_used(site):
    first = check(site, site.commit())
    manifest = release.Manifest.load(first)
    manifest.sha = "0" * 40  # not in the repo
    manifest.save(first)
    site.write("a.txt", "changed\n")
    second = check(site, site.commit())
    assert not same_inode(first / "bin/run.sh", second / "bin/run.sh")


def test_a_link_out_of_the_release_in_the_diff_is_refused(site):
    check(site, site.commit())
    site.link("escape", "../../../..")
    sha = site.commit()
    with pytest.raises(PhaseError, match="escape -> ../../../.. points outside the release"):
        site.checkout(sha)
    assert [p.name for p in site.app.releases.iterdir()] == [site.app.live_release()]
