"""What a new virtualenv takes over from the live one: compiled files, and (when the
requirements resolve to the packages a kept venv already holds) the venv itself."""

from __future__ import annotations

import json
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


def installed_dist(site: Path, name: str, files: dict[str, str], record_extra: str = "") -> None:
    """A distribution as an installer leaves it: its files, METADATA, and a RECORD."""
    info = site / f"{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Name: {name}\n")
    for rel, text in files.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_text(text)
    listed = [*files, f"{info.name}/METADATA", f"{info.name}/RECORD"]
    (info / "RECORD").write_text("".join(f"{r},,\n" for r in listed) + record_extra)


def compiled(site: Path, rel: str) -> Path:
    return site / Path(rel).parent / "__pycache__" / f"{Path(rel).stem}.{TAG}.pyc"


def test_bytecode_is_linked_by_record_for_a_distribution_linked_from_one_cache_entry(
    tmp_path: Path,
):
    """A distribution whose METADATA is the same file in both venvs came from one entry of
    uv's cache: its files' bytecode is linked from its RECORD, without listing its folders."""
    live, new = site(tmp_path / "live"), site(tmp_path / "new")
    files = {"pkg/__init__.py": "", "pkg/sub/deep.py": "# deep\n", "pkg/data.txt": "x"}
    installed_dist(live, "pkg", files, '"../../../bin/tool.py",,\n')
    other = {"other/__init__.py": "# 1\n"}
    installed_dist(live, "other", other)
    for rel in [*files, "pkg-1.0.dist-info/METADATA"]:  # linked from uv's cache
        (new / rel).parent.mkdir(parents=True, exist_ok=True)
        os.link(live / rel, new / rel)
    (new / "pkg-1.0.dist-info" / "RECORD").write_bytes(
        (live / "pkg-1.0.dist-info" / "RECORD").read_bytes()  # uv writes its own RECORD
    )
    installed_dist(
        new, "other", {"other/__init__.py": "# 2\n"}
    )  # another version: another METADATA
    installed_dist(new, "added", {"added.py": ""})
    for rel in [*files, *other]:
        if rel.endswith(".py"):
            compiled(live, rel).parent.mkdir(exist_ok=True)
            compiled(live, rel).write_bytes(b"compiled " + rel.encode())
    (new / "loose.py").write_text("")  # in no RECORD: compared by inode, as a listing does

    todo = venv.link_bytecode(tmp_path / "live", tmp_path / "new")

    assert sorted(Path(p).relative_to(new).as_posix() for p in todo) == [
        "added.py",
        "loose.py",
        "other/__init__.py",
    ]
    for rel in ("pkg/__init__.py", "pkg/sub/deep.py"):
        assert compiled(new, rel).stat().st_ino == compiled(live, rel).stat().st_ino, rel
    assert not compiled(new, "other/__init__.py").exists()
    assert not (tmp_path / "new" / "bin").exists()  # a RECORD's script is not compiled


def test_bytecode_by_listing_when_a_folder_is_in_no_record(tmp_path: Path):
    live, new = site(tmp_path / "live"), site(tmp_path / "new")
    installed_dist(live, "pkg", {"pkg/__init__.py": ""})
    (live / "stray").mkdir()
    (live / "stray" / "mod.py").write_text("")
    compiled(live, "stray/mod.py").parent.mkdir()
    compiled(live, "stray/mod.py").write_bytes(b"compiled")
    installed_dist(new, "pkg", {"pkg/__init__.py": ""})
    (new / "stray").mkdir()
    os.link(live / "stray" / "mod.py", new / "stray" / "mod.py")
    todo = venv.link_bytecode(tmp_path / "live", tmp_path / "new")
    assert sorted(Path(p).relative_to(new).as_posix() for p in todo) == ["pkg/__init__.py"]
    assert (
        compiled(new, "stray/mod.py").stat().st_ino == compiled(live, "stray/mod.py").stat().st_ino
    )


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


# --- requirements that resolve to what a kept venv holds ---------------------------


def dist(venv_dir: Path, name: str, version: str, url: bool = False) -> None:
    info = venv_dir / "lib" / "python3.11" / "site-packages" / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Name: {name}\nVersion: {version}\n")
    if url:
        (info / "direct_url.json").write_text('{"url": "file:///src/pkg"}')


def test_what_a_venv_holds_is_named_by_name_and_version(tmp_path: Path):
    dist(tmp_path, "Django", "5.2.17")
    dist(tmp_path, "typing_extensions", "4.16.0")
    dist(tmp_path, "zope.interface", "7.0")
    (tmp_path / "lib" / "python3.11" / "site-packages" / "django").mkdir()
    assert venv.installed(tmp_path) == [
        "django==5.2.17",
        "typing-extensions==4.16.0",
        "zope-interface==7.0",
    ]
    dist(tmp_path, "mylib", "0.1", url=True)  # from a path: its version does not name it
    assert venv.installed(tmp_path) is None


def fake_uv(tmp_path: Path, monkeypatch, output: str, status: int = 0) -> Path:
    """A `uv` that answers `pip compile` with ``output`` and logs its arguments."""
    script = tmp_path / "uv"
    (tmp_path / "answer").write_text(output)
    script.write_text(
        f'#!/bin/sh\necho "$@" >> {tmp_path}/calls\ncat {tmp_path}/answer\nexit {status}\n'
    )
    script.chmod(0o755)
    monkeypatch.setattr(venv, "uv_bin", lambda: str(script))
    return tmp_path / "calls"


def a_plan(release: Path, text: str, python: str = "cpython-3.11.7", name: str = "r.txt"):
    release.mkdir(parents=True, exist_ok=True)
    req = release / name
    req.write_text(text)
    return venv.Plan(req, "uv", python, (req,))


def test_requirements_resolved_without_installing(tmp_path: Path, monkeypatch):
    release = tmp_path / "release"
    plan = a_plan(release, "Django>=5.1\n")
    compiled = "Django==5.2.17\n    # via -r r.txt\nsqlparse==0.6.0\n"
    calls = fake_uv(tmp_path, monkeypatch, compiled)
    assert venv.resolved(plan, release, {}) == ["django==5.2.17", "sqlparse==0.6.0"]
    assert calls.read_text().startswith("pip compile ")
    # what does not name a venv's content by names and versions: no answer
    fake_uv(tmp_path, monkeypatch, "django==5.2.17\nmylib @ file:///src/mylib\n")
    assert venv.resolved(plan, release, {}) is None
    fake_uv(tmp_path, monkeypatch, "-e file:///src/mylib\n")
    assert venv.resolved(plan, release, {}) is None
    fake_uv(tmp_path, monkeypatch, "", status=1)
    assert venv.resolved(plan, release, {}) is None
    fake_uv(tmp_path, monkeypatch, compiled)
    hashed = a_plan(release, "django==5.2.17 --hash=sha256:00\n")  # checked files only
    assert venv.resolved(hashed, release, {}) is None
    assert venv.resolved(venv.Plan(release / "uv.lock", "uv", "cpython", ()), release, {}) is None
    assert venv.resolved(venv.Plan(plan.requirements, "pip", "cpython", ()), release, {}) is None


def test_requirements_resolving_to_a_kept_venv_link_to_it(tmp_path: Path, monkeypatch):
    from shipyard.app import App

    app = App(tmp_path / "apps", "blog")
    app.venvs.mkdir(parents=True)
    both = ["django==5.2.17", "sqlparse==0.6.0"]  # sqlparse: a dependency of Django
    holds = {"django>=5.1\n": both, "django>=5.1\nsqlparse\n": both}
    built: list[str] = []

    def build(target: Path, release: Path, plan, bytecode_from=None) -> None:
        built.append(target.name)
        packages = holds[plan.requirements.read_text()]
        for line in packages:
            dist(target, *line.split("=="))
        (target / venv.PACKAGES).write_text(
            json.dumps(venv.packages_record(plan, release, packages))
        )

    resolutions: list[str] = []

    def resolved(plan, release, env):
        resolutions.append(plan.requirements.read_text())
        return holds[plan.requirements.read_text()]

    monkeypatch.setattr(venv, "build", build)
    monkeypatch.setattr(venv, "resolved", resolved)
    first = a_plan(tmp_path / "r1", "django>=5.1\n")
    key, why = venv.ensure(app, tmp_path / "r1", first)
    assert (key, why, built) == (first.key, None, [first.key])
    assert resolutions == []  # no venv recorded what it holds yet: nothing resolved

    second = a_plan(tmp_path / "r2", "django>=5.1\nsqlparse\n")
    key, why = venv.ensure(app, tmp_path / "r2", second)
    assert key == first.key and why == "requirements changed, resolved to the same 2 packages"
    assert built == [first.key] and len(resolutions) == 1
    assert (tmp_path / "r2" / ".venv").resolve() == app.venvs / first.key
    assert os.readlink(app.venvs / second.key) == first.key

    again = a_plan(tmp_path / "r3", "django>=5.1\nsqlparse\n")  # the same requirements again
    assert venv.ensure(app, tmp_path / "r3", again) == (first.key, "requirements unchanged")
    assert len(resolutions) == 1  # known: nothing resolved

    other_python = a_plan(tmp_path / "r4", "django>=5.1\nsqlparse\n", python="cpython-3.12.1")
    key, why = venv.ensure(app, tmp_path / "r4", other_python)
    assert why is None and key == other_python.key and built[-1] == other_python.key

    private = "--index-url https://pypi.example/simple\ndjango>=5.1\n"
    holds[private] = both  # the same names and versions from another index
    key, why = venv.ensure(app, tmp_path / "r7", a_plan(tmp_path / "r7", private))
    assert why is None and built[-1] == key

    holds["django>=5.1\nsix>=1.16\n"] = ["django==5.2.17", "six==1.17.0"]
    third = a_plan(tmp_path / "r5", "django>=5.1\nsix>=1.16\n")  # other packages: built
    asked = len(resolutions)
    key, why = venv.ensure(app, tmp_path / "r5", third)
    assert why is None and key == third.key and built[-1] == third.key
    assert len(resolutions) == asked  # no kept venv holds six: nothing resolved

    venv.prune(app, {first.key, third.key})
    assert os.readlink(app.venvs / second.key) == first.key  # its venv is kept: so is the link
    venv.prune(app, {third.key})
    assert sorted(p.name for p in app.venvs.iterdir()) == [third.key]

    # a link left to a venv that is gone is no venv: these requirements are built again
    os.symlink(first.key, app.venvs / second.key)
    key, why = venv.ensure(app, tmp_path / "r6", a_plan(tmp_path / "r6", "django>=5.1\nsqlparse\n"))
    assert why is None and key == second.key and built[-1] == second.key
    assert not (app.venvs / second.key).is_symlink()


def test_a_few_files_compiled_in_process_a_broken_one_left(tmp_path: Path):
    good, broken = tmp_path / "good.py", tmp_path / "broken.py"
    good.write_text("ANSWER = 42\n")
    broken.write_text("print 'only Python 2'\n")
    venv.compile_bytecode("/no/such/python", tmp_path, {}, [str(broken), str(good)])
    assert (tmp_path / "__pycache__" / f"good.{TAG}.pyc").is_file()
    assert not (tmp_path / "__pycache__" / f"broken.{TAG}.pyc").exists()


LOCK = """version = 1
revision = 5
requires-python = ">=3.11"

[[package]]
name = "mysite"
version = "1.0"
source = { virtual = "." }
dependencies = [
    { name = "six" },
]

[package.metadata]
requires-dist = [{ name = "six", specifier = ">=1.16" }]

[[package]]
name = "six"
version = "1.17.0"
source = { registry = "https://pypi.org/simple" }
wheels = [
    { url = "https://files.example/six-1.17.0-py2.py3-none-any.whl", hash = "sha256:4721f3" },
]
"""


def test_a_lock_names_what_it_installs_not_the_apps_own_version(tmp_path: Path):
    lock = tmp_path / "uv.lock"
    lock.write_text(LOCK)
    first = venv.locked(lock)
    assert first is not None and len(first) == 1
    bumped = LOCK.replace('version = "1.0"', 'version = "1.1"').replace(">=1.16", ">=1.17")
    lock.write_text(bumped)  # the app's version and its declared bound: the same packages
    assert venv.locked(lock) == first
    lock.write_text(LOCK.replace("sha256:4721f3", "sha256:000000"))  # another file
    assert venv.locked(lock) != first
    lock.write_text(
        LOCK.replace('{ name = "six" },', '{ name = "six", marker = "python_version < \'3\'" },')
    )
    assert venv.locked(lock) != first  # installed or not: the app's dependencies count
    lock.write_text(
        LOCK.replace('{ registry = "https://pypi.org/simple" }', '{ git = "https://g/six" }')
    )
    assert venv.locked(lock) is None
    lock.write_text("not = [toml")
    assert venv.locked(lock) is None
    plan = venv.Plan(lock, "uv", "cpython", (lock,))
    lock.write_text(LOCK)
    assert venv.resolved(plan, tmp_path, {}) == first  # nothing to resolve: no uv call


def test_a_version_bump_in_the_lock_reuses_the_venv(tmp_path: Path, monkeypatch):
    from shipyard.app import App

    app = App(tmp_path / "apps", "blog")
    app.venvs.mkdir(parents=True)

    def build(target: Path, release: Path, plan, bytecode_from=None) -> None:
        dist(target, "six", "1.17.0")
        record = venv.packages_record(plan, release, venv.locked(plan.requirements))
        (target / venv.PACKAGES).write_text(json.dumps(record))

    monkeypatch.setattr(venv, "build", build)
    first = a_plan(tmp_path / "r1", LOCK, name="uv.lock")
    assert venv.ensure(app, tmp_path / "r1", first) == (first.key, None)
    bumped = a_plan(tmp_path / "r2", LOCK.replace('"1.0"', '"1.1"'), name="uv.lock")
    assert bumped.key != first.key
    assert venv.ensure(app, tmp_path / "r2", bumped) == (
        first.key,
        "uv.lock changed, not the packages it installs",
    )


def test_a_resolution_is_asked_for_only_when_a_kept_venv_may_hold_its_answer(
    tmp_path: Path, monkeypatch
):
    for name in ("packaging", "packaging.requirements", "packaging.version"):
        monkeypatch.setitem(sys.modules, name, None)  # not among shipyard's dependencies
    held = ["django==5.2.17", "sqlparse==0.6.0", "six==1.17.0"]

    def may(text: str) -> bool:
        return venv.may_hold(a_plan(tmp_path / "r", text), held)

    assert may("Django>=5.1,<5.3\nsqlparse  # explicit\n\n# a comment\n")
    assert may("six>=1.16\n")
    assert not may("django>=5.1\npython-dotenv\n")  # a package it does not hold
    assert not may("django>=5.2.18\n")  # a version it does not hold
    assert not may("six[extra]>=1.18\n")
    # what it cannot judge is left to the resolution
    assert may("--index-url https://pypi.example/simple\ndjango\n")
    assert may("tzdata; sys_platform == 'win32'\n")
    assert may("mylib @ https://example.com/mylib.whl\n")
    assert may("${NAME}>=1\n")
    assert may("six~=1.20\nsix==1.*\n")
    assert not may("six!=1.17\n") and not may("six<1.17\n") and may("six==1.17.0\n")
    assert may("six>=1.17,<2\n") and not may("six>1.17\n")
