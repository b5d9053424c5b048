"""release.checkout from the live release (or its spare) plus the diff: the same tree as a
full checkout.

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
        if dest.is_dir():
            return dest
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


def flips_and_moves(site: Site) -> None:
    """+x and -x flips, a changed file, a deletion, a rename, symlinks retargeted and added."""
    site.work.joinpath("a.txt").chmod(0o755)
    site.work.joinpath("bin/run.sh").chmod(0o644)
    site.write("pkg/filler/mod1.py", "VALUE = 'changed'\n")
    site.remove("later.txt")
    os.rename(site.work / "dir/sub/x.py", site.work / "dir/sub/y.py")
    site.link("link", "bin/run.sh")
    site.link("dirlink", "dir/sub")


def test_a_release_from_the_diff_is_the_commit_tree(site):
    first = check(site, site.commit())  # no live release: a full checkout
    unchanged = "pkg/filler/mod0.py"

    flips_and_moves(site)
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


# --- from the spare: made after a deploy answered (engine.tidy), used by the next checkout ---


@pytest.fixture
def spare_only(site, monkeypatch):
    """Each release made live gets its spare, and a checkout must come from it."""

    def go_live(path: Path, sha: str) -> None:
        Site.go_live(site, path, sha)
        assert release.make_spare(site.app) == release.spare_dir(site.app, sha)

    def no_live(app, *_):
        if app.live_release():
            raise AssertionError("checked out from the live release: the spare was not used")

    site.go_live = go_live
    monkeypatch.setattr(release, "from_live", no_live)
    return site


def spares(site: Site) -> list[str]:
    return sorted(p.name for p in site.app.releases.glob(".next-*"))


def test_a_release_from_the_spare_is_the_commit_tree(spare_only):
    site = spare_only
    first = check(site, site.commit())  # no live release: a full checkout, then its spare
    unchanged = "pkg/filler/mod0.py"
    assert spares(site) == [f".next-{release.Manifest.load(first).sha}"]
    assert [rid for rid, _ in release.releases(site.app)] == [first.name]  # not a release

    flips_and_moves(site)
    second = check(site, site.commit())
    assert same_inode(first / unchanged, second / unchanged)
    assert not same_inode(first / "a.txt", second / "a.txt")
    assert (first / "a.txt").stat().st_mode & 0o111 == 0  # the live release kept its own
    assert (first / "later.txt").is_file() and (first / "dir/sub/x.py").is_file()

    # a file turned into a directory, a whole directory gone, a link into a new directory
    site.remove("thing")
    site.write("thing/inner.txt", "now a directory\n")
    site.remove("dir")
    site.link("dirlink", "thing")
    third = check(site, site.commit())
    assert not (third / "dir").exists() and (second / "dir/sub/y.py").is_file()

    # and back into a file; the directory comes back
    site.remove("thing")
    site.write("thing", "a file again\n")
    site.write("dir/sub/x.py", "X = 2\n")
    site.link("dirlink", "dir/sub")
    fourth = check(site, site.commit())
    assert same_inode(first / unchanged, fourth / unchanged)
    assert (first / "thing").read_text() == "a file, then a directory, then a file\n"
    assert (third / "thing/inner.txt").read_text() == "now a directory\n"

    # deleting every other release breaks none: each is complete on its own
    for old in (first, second, third):
        release.remove(site.app, old.name)
    assert snapshot(fourth) == snapshot(site.archive(release.Manifest.load(fourth).sha))


def tamper_in_place(spare: Path) -> None:
    path = spare / "pkg/filler/mod3.py"  # the live release's inode too
    path.chmod(0o644)
    path.write_text("VALUE = 'tampered'\n")
    path.chmod(0o444)


def tamper_added(spare: Path) -> None:
    (spare / "pkg" / "extra.py").write_text("EXTRA = 1\n")


def tamper_pycache(spare: Path) -> None:
    (spare / "dir" / "sub" / "__pycache__").mkdir()  # what importing from it leaves


def tamper_removed(spare: Path) -> None:
    (spare / "pkg/filler/mod4.py").unlink()


def tamper_replaced(spare: Path) -> None:
    path = spare / "bin/run.sh"
    path.unlink()
    path.write_text("#!/bin/sh\necho tampered\n")
    path.chmod(0o555)


def tamper_top(spare: Path) -> None:
    (spare / "top.txt").write_text("added at the top\n")


@pytest.mark.parametrize(
    "tamper",
    [tamper_in_place, tamper_added, tamper_pycache, tamper_removed, tamper_replaced, tamper_top],
)
def test_a_spare_changed_after_it_was_made_is_not_used(site, tamper):
    first = check(site, site.commit())
    spare = release.make_spare(site.app)
    tamper(spare)
    site.write("a.txt", "changed\n")
    check(site, site.commit())  # the commit's tree all the same (from the live release)
    assert spares(site) == []  # the tampered spare is gone
    if tamper is tamper_in_place:  # in the live release too: written from git, not linked
        assert (first / "pkg/filler/mod3.py").read_text() == "VALUE = 'tampered'\n"


def test_a_spare_of_another_commit_is_not_used_and_pruned(site):
    check(site, site.commit())
    stale = release.make_spare(site.app)
    site.write("a.txt", "changed\n")
    second = check(site, site.commit())  # from the spare; now live, without a spare of its own
    assert not stale.exists()
    stale.mkdir()  # a spare of the commit before, as a crash would leave it
    (stale / "a.txt").write_text("stale\n")
    site.write("a.txt", "changed again\n")
    third = check(site, site.commit())
    assert stale.exists() and same_inode(second / "bin/run.sh", third / "bin/run.sh")
    # a spare under the live commit's name, whose note is another commit's
    live_spare = release.make_spare(site.app)
    note = live_spare / release.SPARE_NOTE
    note.write_text(note.read_text().replace(release.Manifest.load(third).sha, "0" * 40))
    site.write("a.txt", "and again\n")
    check(site, site.commit())
    assert live_spare.exists() and not stale.exists()  # not taken; make_spare dropped stale
    made = release.make_spare(site.app)
    assert spares(site) == [made.name]
    stale.mkdir()
    live_spare.mkdir()
    release.prune(site.app, keep=5)
    assert spares(site) == [made.name]  # the live commit's stays
    assert [p.name for p in site.app.releases.iterdir() if p.name.startswith(".t")] == []


def test_the_spare_is_no_release_in_disk_use(site):
    first = check(site, site.commit())
    site.write("a.txt", "changed\n")
    second = check(site, site.commit())
    own, total = release.disk_use(site.app)
    release.make_spare(site.app)
    own_with, total_with = release.disk_use(site.app)
    assert own_with == own and set(own) == {first.name, second.name}
    assert total < total_with < total + 4096  # its note and the symlink it wrote


def test_a_link_that_leaves_the_release_by_the_diff_is_refused_from_the_spare(spare_only):
    site = spare_only
    site.write("s/inside.txt", "s is a directory\n")
    site.link("up", "s/..")  # the release itself while s is a directory
    live = check(site, site.commit())
    site.remove("s")
    site.link("s", ".")  # up, not in the diff, now resolves to the release's parent
    sha = site.commit()
    with pytest.raises(PhaseError, match="symlink up -> s/.. points outside the release"):
        site.checkout(sha)
    assert site.app.live_release() == live.name
    assert [p.name for p in site.app.releases.iterdir()] == [live.name]


def test_the_spare_of_a_release_with_shared_links_is_the_commit_tree(spare_only):
    site = spare_only
    sha = site.commit()
    first = site.checkout(sha)
    (first / "media").rename(first / "media.real")  # a shared path, as link_shared leaves it
    os.symlink("media.real", first / "media")
    site.go_live(first, sha)  # and its spare
    site.write("a.txt", "changed\n")
    second = check(site, site.commit())
    assert (second / "media").is_dir() and not (second / "media").is_symlink()
    assert not same_inode(first / "media.real/readme.txt", second / "media/readme.txt")


def test_a_link_in_place_of_the_spare_is_not_followed(site):
    check(site, site.commit())
    elsewhere = site.tmp / "elsewhere"
    spare = release.make_spare(site.app)
    os.rename(spare, elsewhere)
    os.symlink(elsewhere, spare)
    before = snapshot(elsewhere)
    site.write("a.txt", "changed\n")
    made = check(site, site.commit())
    assert not made.is_symlink() and snapshot(elsewhere) == before
    assert spares(site) == []
