"""release.check_symlinks: links are resolved on the filesystem, chains included."""

import os

import pytest

from shipyard.errors import PhaseError
from shipyard.release import check_symlinks


def tree_with(tmp_path, **links: str):
    tree = tmp_path / "release"
    (tree / "static").mkdir(parents=True)
    (tree / "static" / "app.css").write_text("body {}\n")
    for name, target in links.items():
        os.symlink(target, tree / name.replace("__", "/"))
    return tree


@pytest.mark.parametrize(
    "links",
    [
        {"css": "static/app.css", "static__back": "..", "dangling": "not-yet-built"},
        {"a": "b", "b": "a"},  # a loop: following it fails (ELOOP), it reaches nothing
        {"s": ".", "again": "s/s/static"},
    ],
)
def test_links_inside_the_release_pass(tmp_path, links):
    check_symlinks(tree_with(tmp_path, **links))


@pytest.mark.parametrize(
    ("links", "named"),
    [
        ({"s": ".", "u1": "s/.."}, "u1 -> s/.."),
        ({"s": ".", "u1": "s/..", "u2": "u1/..", "passwd": "u2/etc/passwd"}, "-> "),
        ({"m": "missing/../../x"}, "m -> missing/../../x"),
        ({"static__up": "../.."}, "static/up -> ../.."),
        ({"abs": "/etc/passwd"}, "abs -> /etc/passwd"),
    ],
)
def test_links_that_resolve_outside_are_refused(tmp_path, links, named):
    with pytest.raises(PhaseError) as err:
        check_symlinks(tree_with(tmp_path, **links))
    assert named in err.value.message and "points outside the release (it resolves to" in str(
        err.value
    )
