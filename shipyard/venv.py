"""Content-addressed virtualenvs: releases whose requirements did not change share one.

``venvs/<key>`` with key = hash(python, installer, requirement bytes). A venv is
built in a temporary directory and renamed into place when complete, so a venv
under its key is always whole. uv builds it (relocatable, from uv's shared
cache); pip is the fallback installer.

Changed requirements that resolve to exactly the packages a kept venv holds (a
dependency named explicitly, a bound moved, a comment; a ``uv.lock`` whose only change
is the app's own version) link to that venv instead:
``venvs/<new key>`` becomes a symlink to it. Everything keyed on the venv (build
steps, the data probe, migrate's fast path) then sees the same venv and is reused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .app import App
from .config import AppConfig
from .errors import ConfigError, PhaseError
from .lock import owner_alive
from .release import set_aside

DETECTED = ("uv.lock", "requirements.txt", "pyproject.toml")
INCLUDE = re.compile(r"^\s*-[rc]\s*(\S+)|^\s*--(?:requirement|constraint)[= ]\s*(\S+)")


@dataclass(frozen=True)
class Plan:
    """What to install and how: everything the key is made of."""

    requirements: Path
    installer: str
    python: str
    inputs: tuple[Path, ...]
    interpreter: str = sys.executable  # what the venv is made from (an installed Python)

    @property
    def key(self) -> str:
        digest = hashlib.sha256()
        digest.update(f"{self.python}\0{self.installer}\0".encode())
        for path in self.inputs:
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
        return digest.hexdigest()[:16]


# pip's settings that decide where packages come from and how TLS is checked, and what uv
# calls them (uv reads neither pip.conf nor PIP_*): a host whose pip works must work for uv.
PIP_TO_UV = {
    "index-url": "UV_INDEX_URL",
    "extra-index-url": "UV_EXTRA_INDEX_URL",
    "trusted-host": "UV_INSECURE_HOST",
    "cert": "SSL_CERT_FILE",
}
UV_ALREADY = {  # set by the operator for uv itself: left alone
    "UV_INDEX_URL": ("UV_INDEX_URL", "UV_DEFAULT_INDEX", "UV_INDEX"),
    "UV_EXTRA_INDEX_URL": ("UV_EXTRA_INDEX_URL", "UV_INDEX"),
    "UV_INSECURE_HOST": ("UV_INSECURE_HOST",),
    "SSL_CERT_FILE": ("SSL_CERT_FILE",),
}


def pip_config_files(environ: dict[str, str], home: Path) -> list[Path]:
    """pip's configuration files, lowest priority first (pip's own order on Linux)."""
    if environ.get("PIP_CONFIG_FILE") == os.devnull:
        return []
    dirs = (environ.get("XDG_CONFIG_DIRS") or "/etc/xdg").split(":")
    files = [Path(d) / "pip" / "pip.conf" for d in reversed(dirs) if d]
    files.append(Path("/etc/pip.conf"))
    files.append(home / ".pip" / "pip.conf")
    files.append(Path(environ.get("XDG_CONFIG_HOME") or home / ".config") / "pip" / "pip.conf")
    if environ.get("PIP_CONFIG_FILE"):
        files.append(Path(environ["PIP_CONFIG_FILE"]))
    return files


def pip_settings(environ: dict[str, str] | None = None, home: Path | None = None) -> dict:
    """{pip option: (value, where it was set)} for the options uv needs to hear about."""
    import configparser

    environ = dict(os.environ if environ is None else environ)
    found: dict[str, tuple[str, str]] = {}
    for path in pip_config_files(environ, home or Path.home()):
        parser = configparser.ConfigParser(interpolation=None)
        try:
            if not parser.read(path):
                continue
        except (configparser.Error, OSError, UnicodeDecodeError):
            continue
        for section in ("global", "install"):
            if parser.has_section(section):
                for option in PIP_TO_UV:
                    value = parser.get(section, option, fallback=None)
                    if value is not None:
                        found[option] = (" ".join(value.split()), str(path))
    for option in PIP_TO_UV:
        name = "PIP_" + option.upper().replace("-", "_")
        if environ.get(name):
            found[option] = (" ".join(environ[name].split()), name)
    return found


def uv_environment(environ: dict[str, str] | None = None, home: Path | None = None) -> dict:
    """What uv needs in its environment to reach the index the way pip on this host does,
    and to trust the system's certificate store (corporate CAs are added there)."""
    environ = dict(os.environ if environ is None else environ)
    extra: dict[str, str] = {}
    for option, (value, _) in pip_settings(environ, home).items():
        name = PIP_TO_UV[option]
        if not any(environ.get(n) for n in UV_ALREADY[name]):
            extra[name] = value
    if not any(k in environ for k in ("UV_SYSTEM_CERTS", "UV_NATIVE_TLS")):
        extra["UV_SYSTEM_CERTS"] = "1"
    return extra


def carried(environ: dict[str, str] | None = None) -> str:
    """One line naming the pip settings uv is given, and where each came from ("" if none)."""
    environ = dict(os.environ if environ is None else environ)
    passed = uv_environment(environ)
    found = pip_settings(environ)
    by_source: dict[str, list[str]] = {}
    for option, (_, where) in sorted(found.items()):
        if PIP_TO_UV[option] in passed:
            by_source.setdefault(where, []).append(option)
    named = [f"{' and '.join(options)} from {where}" for where, options in by_source.items()]
    return "pip's " + ", ".join(named) if named else ""


def uv_bin() -> str:
    from uv import find_uv_bin

    return find_uv_bin()


def own_spec() -> str:
    # what platform.python_implementation().lower() and .python_version() say, without
    # importing platform (a noticeable part of a deploy's start)
    return f"{sys.implementation.name}-{sys.version.split()[0]}"


def python_request(release: Path, config: AppConfig) -> tuple[str, str] | None:
    """(the Python the app asks for, where it says so): shipyard.toml's ``python``, else
    ``.python-version``, else ``requires-python`` in pyproject.toml; None when it does not."""
    if config.python:
        return config.python.strip(), "python in shipyard.toml"
    with contextlib.suppress(OSError, UnicodeDecodeError):
        for line in (release / ".python-version").read_text().splitlines():
            if line.strip() and not line.strip().startswith("#"):
                return line.strip(), ".python-version"
    with contextlib.suppress(OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        project = tomllib.loads((release / "pyproject.toml").read_text()).get("project", {})
        if isinstance(project.get("requires-python"), str):
            return project["requires-python"].strip(), "requires-python in pyproject.toml"
    return None


def satisfied_by_own(request: str) -> bool:
    """Does the interpreter shipyard runs on fit the request (a version or a specifier)?"""
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    mine = sys.version.split()[0]
    if request[:1] in "<>=!~":
        try:
            return SpecifierSet(request).contains(mine, prereleases=True)
        except InvalidSpecifier:
            return False
    version = re.sub(r"^(cpython-?|python)", "", request)
    if not re.fullmatch(r"\d+(\.\d+){0,2}", version):
        return False  # e.g. pypy, a path, a free-threaded build: ask uv
    return mine.split(".")[: version.count(".") + 1] == version.split(".")


def installed_pythons() -> list[str]:
    """The Python versions uv finds on this host (installed ones only, never a download)."""
    result = subprocess.run(
        [uv_bin(), "python", "list", "--only-installed", "--no-python-downloads"]
        + ["--output-format", "json"],
        capture_output=True,
        text=True,
    )
    try:
        found = json.loads(result.stdout or "[]")
    except ValueError:
        return []
    versions = {p.get("version") for p in found if p.get("version")}
    return sorted(versions, key=lambda v: [int(n) if n.isdigit() else 0 for n in v.split(".")])


def choose_interpreter(request: str, source: str) -> tuple[str, str]:
    """(the venv key's python part, the interpreter) for a request: shipyard's own Python when
    it fits, else an installed one that does; never a download."""
    if satisfied_by_own(request):
        return own_spec(), sys.executable
    result = subprocess.run(
        [uv_bin(), "python", "find", "--no-python-downloads", "--", request],
        capture_output=True,
        text=True,
        cwd="/",
    )
    path = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    if result.returncode or not path:
        have = installed_pythons()
        shown = ", ".join(have) if have else "none that uv can find"
        major_minor = re.search(r"\d+\.\d+", request)
        apt = f"apt-get install python{major_minor.group(0)}, or " if major_minor else ""
        raise ConfigError(
            f"{source} asks for Python {request}, which is not installed on this host "
            f"(it has: {shown})",
            f"install it ({apt}`uv python install {request}` as the deploy user), or ask "
            f"for one of those in {source}",
        )
    return f"python-{request}@{os.path.realpath(path)}", path


def plan(release: Path, config: AppConfig, installer: str) -> Plan:
    """Find the requirements (configured or detected) and the files that define the venv."""
    if config.requirements:
        requirements = release / config.requirements
        if not requirements.is_file():
            raise ConfigError(
                f"shipyard.toml: requirements file {config.requirements!r} is not in the commit",
                "add it, or point `requirements` at the right file",
            )
    else:
        found = [release / name for name in DETECTED if (release / name).is_file()]
        if not found:
            raise ConfigError(
                "no requirements: the commit has no uv.lock, requirements.txt or pyproject.toml",
                "add a requirements.txt listing what the app needs (e.g. django, gunicorn)",
            )
        requirements = found[0]
    inputs = [requirements]
    if requirements.name == "uv.lock" and (release / "pyproject.toml").is_file():
        inputs.append(release / "pyproject.toml")
    if requirements.suffix == ".txt":
        inputs.extend(_included(requirements, release))
    asked = python_request(release, config)
    spec, interpreter = choose_interpreter(*asked) if asked else (own_spec(), sys.executable)
    if config.python and spec == own_spec():
        spec = config.python  # as before: an app that named shipyard's own Python keeps its key
    installer = config.installer or installer
    return Plan(requirements, installer, spec, tuple(inputs), interpreter)


def _included(requirements: Path, release: Path, seen: set[Path] | None = None) -> list[Path]:
    """Files pulled in by ``-r``/``-c`` lines: they are part of what the venv is."""
    seen = seen if seen is not None else {requirements}
    found = []
    for line in requirements.read_text(errors="replace").splitlines():
        match = INCLUDE.match(line)
        if not match:
            continue
        path = (requirements.parent / (match.group(1) or match.group(2))).resolve()
        if path in seen or not path.is_file() or not path.is_relative_to(release.resolve()):
            continue
        seen.add(path)
        found.append(path)
        found.extend(_included(path, release, seen))
    return found


def ensure(app: App, release: Path, the_plan: Plan) -> tuple[str, str | None]:
    """Link ``release/.venv`` to the venv for the plan, building it if needed.

    Returns (key, why it was reused: None when it was built). The key is the venv's own:
    requirements that resolve to the packages a kept venv holds are linked to that one.
    """
    key, why = the_plan.key, "requirements unchanged"
    target = app.venvs / key
    if target.is_symlink():  # these requirements resolved before to another key's venv
        found = app.venvs / os.readlink(target)
        if found.parent == app.venvs and found.is_dir() and not found.is_symlink():
            key, target = found.name, found
        else:
            target.unlink()
    if not target.is_dir():
        same = same_packages(app, the_plan, release)
        if same:
            key, why = same
            os.symlink(key, target)  # the next push of these requirements resolves nothing
            target = app.venvs / key
        else:
            live_id = app.live_release()  # not `current` itself: it may point anywhere
            live = app.release_dir(live_id) / ".venv" if live_id else None
            bytecode_from = live.resolve() if live and live.is_dir() else None
            build(target, release, the_plan, bytecode_from=bytecode_from)
            why = None
    link = release / ".venv"
    if link.is_symlink() or link.exists():
        if link.is_dir() and not link.is_symlink():
            shutil.rmtree(link)
        else:
            link.unlink()
    os.symlink(os.path.relpath(target, release), link)
    return key, why


# --- requirements that resolve to what a kept venv holds -----------------------

PACKAGES = "shipyard-packages.json"  # in a venv: what it holds, written before it is renamed in
PIN = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed(venv: Path) -> list[str] | None:
    """``name==version`` of every distribution in the venv, sorted; None when one came from a
    path or a URL (its version does not name its content)."""
    found = []
    for site in venv.glob("lib/python*/site-packages"):
        with os.scandir(site) as entries:
            for entry in entries:
                if not entry.name.endswith(".dist-info"):
                    continue
                if os.path.exists(os.path.join(entry.path, "direct_url.json")):
                    return None
                name, _, version = entry.name[: -len(".dist-info")].rpartition("-")
                found.append(f"{_canonical(name)}=={version}")
    return sorted(found)


def packages_record(the_plan: Plan, release: Path, packages: list[str]) -> dict:
    """Everything a venv's key is made of but the requirements' bytes, and what they gave."""
    return {
        "python": the_plan.python,
        "installer": the_plan.installer,
        "sources": sources(the_plan, release),
        "packages": packages,
    }


def sources(the_plan: Plan, release: Path) -> list[str]:
    """Where the packages come from, as the app says it: the requirements files' options
    (``--index-url``, ``--find-links``, ``--pre``…) and uv's settings in the release. One
    name and version from two indexes may be two packages."""
    found = []
    for path in the_plan.inputs:
        if path.suffix == ".txt":
            for line in path.read_text(errors="replace").splitlines():
                if line.strip().startswith("-") and not INCLUDE.match(line):
                    found.append(" ".join(line.split()))
    if (release / "uv.toml").is_file():
        found.append("uv.toml " + (release / "uv.toml").read_text(errors="replace"))
    with contextlib.suppress(OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        tool = tomllib.loads((release / "pyproject.toml").read_text()).get("tool", {})
        if isinstance(tool, dict) and "uv" in tool:
            found.append("tool.uv " + json.dumps(tool["uv"], sort_keys=True, default=str))
    return found


def resolved(the_plan: Plan, release: Path, env: dict[str, str]) -> list[str] | None:
    """What the requirements resolve to now (``uv pip compile``: the resolution the install
    would make, without installing), as ``installed`` names it; None when that does not say
    what a venv would hold: not uv, hashes to check, a path or URL, an error. From a lock:
    ``locked``, nothing resolved."""
    req = the_plan.requirements
    if the_plan.installer != "uv":
        return None
    if req.name == "uv.lock":
        return locked(req)
    texts = [path.read_bytes() for path in the_plan.inputs]
    if any(b"--hash" in text or b"--require-hashes" in text for text in texts):
        return None  # installing checks each file; reusing would not
    cmd = [uv_bin(), "pip", "compile", "--quiet", "--no-header", "--no-annotate"]
    cmd += ["--python", the_plan.interpreter, str(req)]
    try:
        result = subprocess.run(cmd, cwd=release, env=env, capture_output=True, text=True)
    except OSError:
        return None
    if result.returncode:
        return None  # the install says why
    pins = []
    for line in result.stdout.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = PIN.fullmatch(line)
        if not match:
            return None
        pins.append(f"{_canonical(match.group(1))}=={match.group(2)}")
    return sorted(pins)


def locked(lock: Path) -> list[str] | None:
    """What ``uv sync --frozen`` installs from a lock, as one line: the lock without what names
    the app itself (its version and the requirements it declares, e.g. a version bump); None
    when a package comes from a path, a URL or a git checkout (its version does not name it).
    The packages' hashes are part of it: what is reused was checked against the same ones."""
    try:
        data = tomllib.loads(lock.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    packages = []
    for package in data.get("package", []):
        source = package.get("source", {}) if isinstance(package, dict) else None
        if not isinstance(source, dict):
            return None
        if source.get("editable") == "." or source.get("virtual") == ".":
            package = {k: v for k, v in package.items() if k not in ("version", "metadata")}
        elif "registry" not in source:
            return None
        packages.append(json.dumps(package, sort_keys=True, default=str))
    rest = {k: v for k, v in data.items() if k != "package"}
    digest = hashlib.sha256(json.dumps(rest, sort_keys=True, default=str).encode())
    digest.update("\n".join(sorted(packages)).encode())
    return [f"uv.lock {digest.hexdigest()}"]


def same_packages(app: App, the_plan: Plan, release: Path) -> tuple[str, str] | None:
    """(key, why) of a kept venv built for the same Python and installer that holds exactly
    what the requirements resolve to now (the live release's first); None if there is none."""
    if not app.venvs.is_dir():
        return None
    candidates = sorted(
        p for p in app.venvs.iterdir() if not p.name.startswith(".") and not p.is_symlink()
    )
    live_id = app.live_release()
    live = (app.release_dir(live_id) / ".venv").resolve() if live_id else None
    candidates.sort(key=lambda p: p != live)
    records = {}
    mine = packages_record(the_plan, release, [])
    for path in candidates:
        with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
            record = json.loads((path / PACKAGES).read_text())
            if {**record, "packages": []} == mine and may_hold(the_plan, record["packages"]):
                records[path.name] = record
    if not records:
        return None  # nothing to compare with: nothing resolved (a new package, an upgrade)
    pins = resolved(the_plan, release, build_env(the_plan))
    if pins is None:
        return None
    wanted = packages_record(the_plan, release, pins)
    for key, record in records.items():
        if record == wanted and the_plan.requirements.name == "uv.lock":
            return key, "uv.lock changed, not the packages it installs"
        if record == wanted:
            plural = "s" if len(pins) != 1 else ""
            return key, f"requirements changed, resolved to the same {len(pins)} package{plural}"
    return None


PLAIN = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*([^;@]*)")
CLAUSE = re.compile(r"(==|!=|<=|>=|<|>)\s*(\d+(?:\.\d+)*)")


def may_hold(the_plan: Plan, packages: list[str]) -> bool:
    """False when a requirement as written (a plain ``name[extras] specifier`` line) names a
    package that ``packages`` lacks, or a version it does not hold: then no resolution can
    give ``packages``, and none is asked for. What it cannot judge (options, URLs, markers,
    ``~=``, wildcards, pre-releases) is left to the resolution: True."""
    if the_plan.requirements.name == "uv.lock":
        return True
    held = dict(p.split("==", 1) for p in packages if "==" in p)
    for path in the_plan.inputs:
        if path.suffix != ".txt":
            continue
        for line in path.read_text(errors="replace").splitlines():
            line = line.split(" #", 1)[0].strip()
            plain = PLAIN.fullmatch(line)
            if not plain or line.startswith("#"):
                continue
            version = held.get(_canonical(plain.group(1)))
            if version is None:
                return False
            for clause in filter(None, (c.strip() for c in plain.group(3).split(","))):
                match = CLAUSE.fullmatch(clause)
                judged = match and re.fullmatch(r"\d+(\.\d+)*", version)
                if judged and not _holds(version, match.group(1), match.group(2)):
                    return False
    return True


def _holds(version: str, op: str, bound: str) -> bool:
    """``version op bound`` for release numbers (1.2 == 1.2.0)."""
    mine, theirs = [int(n) for n in version.split(".")], [int(n) for n in bound.split(".")]
    width = max(len(mine), len(theirs))
    mine, theirs = mine + [0] * (width - len(mine)), theirs + [0] * (width - len(theirs))
    return {
        "==": mine == theirs,
        "!=": mine != theirs,
        "<=": mine <= theirs,
        ">=": mine >= theirs,
        "<": mine < theirs,
        ">": mine > theirs,
    }[op]


def build_env(the_plan: Plan) -> dict[str, str]:
    """The installer's environment: the host's pip settings for uv, never a Python download."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "VIRTUAL_ENV"))}
    if the_plan.installer == "uv":
        env.update(uv_environment(env))
    env.setdefault("UV_PYTHON_DOWNLOADS", "never")  # an installed Python, or a clear refusal
    return env


def _run(cmd: list[str], cwd: Path, env: dict[str, str], what: str) -> None:
    result = subprocess.run(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    if result.returncode:
        raise PhaseError(
            f"{what} failed (exit {result.returncode})",
            "fix the requirements and push again; the live release is untouched",
            output=result.stdout,
        )


def build(target: Path, release: Path, the_plan: Plan, bytecode_from: Path | None = None) -> None:
    """Build the venv beside its final place, then rename it in: never a half-built venv.

    Bytecode is compiled here, once, not in every process's first start. With
    ``bytecode_from`` (the live release's venv), the compiled files of every source
    file the two venvs share (uv hard-links both from its cache) are linked rather
    than compiled again: adding one requirement compiles that package only.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".tmp-{target.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    env = build_env(the_plan)
    interpreter = the_plan.interpreter
    # Linking needs the new venv's bytecode tag: known when it runs shipyard's interpreter.
    reuse = bytecode_from is not None and interpreter == sys.executable
    reuse = reuse and the_plan.installer == "uv"
    if not reuse:
        env["UV_COMPILE_BYTECODE"] = "1"
    req, python = the_plan.requirements, str(tmp / "bin" / "python")
    sweep = None
    try:
        if the_plan.installer == "uv":
            uv = uv_bin()
            create = [uv, "venv", "--quiet", "--relocatable", "--python", interpreter, str(tmp)]
            _run(create, release, env, "creating the virtualenv")
            if req.name == "uv.lock":
                sync = [uv, "sync", "--frozen", "--no-dev", "--no-install-project", "--quiet"]
                _run(sync, req.parent, {**env, "UV_PROJECT_ENVIRONMENT": str(tmp)}, "uv sync")
            else:
                install = [uv, "pip", "install", "--quiet", "--python", python, "-r", str(req)]
                _run(install, release, env, "installing requirements")
            if reuse:  # the o+w sweep (its own process) walks beside the bytecode's linking
                sweep = world_writable_sweep(tmp)
                compile_bytecode(python, tmp, env, link_bytecode(bytecode_from, tmp))
            packages = installed(tmp)
            if packages is not None and req.name == "uv.lock":
                packages = locked(req)
            if packages is not None:  # best effort: without it, no other key reuses it
                record = json.dumps(packages_record(the_plan, release, packages), indent=1)
                with contextlib.suppress(OSError):
                    (tmp / PACKAGES).write_text(record + "\n")
        else:
            _run([interpreter, "-m", "venv", str(tmp)], release, env, "creating the virtualenv")
            pip_req = _pip_requirements(req, tmp, env)
            _run(
                [python, "-m", "pip", "install", "--quiet", "-r", str(pip_req)],
                release,
                env,
                "pip install",
            )
            _rewrite_shebangs(tmp, target)
        if sweep is None or sweep.wait():
            not_world_writable(tmp)
        os.rename(tmp, target)
    except BaseException:
        if sweep is not None and sweep.poll() is None:
            sweep.kill()
            sweep.wait()
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sweep_command(tree: Path) -> list[str] | None:
    find = shutil.which("find")
    if not find:
        return None
    found = [find, str(tree), "-perm", "-0002", "!", "-type", "l"]
    return [*found, "-exec", "chmod", "o-w", "{}", "+"]


def world_writable_sweep(tree: Path) -> subprocess.Popen | None:
    """``not_world_writable``'s find(1), started in the background (None: no find). What is
    made in ``tree`` meanwhile is not o+w: the deploy's umask clears it (guard.safe_umask),
    and the bytecode linked from a live venv was swept when that venv was built."""
    cmd = sweep_command(tree)
    if cmd is None:
        return None
    quiet = subprocess.DEVNULL
    return subprocess.Popen(cmd, stdin=quiet, stdout=quiet, stderr=quiet)


def not_world_writable(tree: Path) -> None:
    """Clear o+w everywhere (uv makes its ``.lock`` 0666 whatever the umask; files linked
    from uv's cache keep the modes they were written with). find(1) walks the venv's
    thousands of files several times faster than a walk in Python does."""
    cmd = sweep_command(tree)
    if cmd:
        result = subprocess.run(cmd, capture_output=True)
        if not result.returncode:
            return
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            mode = os.lstat(path).st_mode
            if mode & stat.S_IWOTH and not stat.S_ISLNK(mode):
                os.chmod(path, stat.S_IMODE(mode) & ~stat.S_IWOTH)


def link_bytecode(source: Path, venv: Path) -> list[str]:
    """Hard-link ``source``'s compiled files into ``venv`` for the .py files both venvs hold as
    the very same file (same inode: both linked from uv's cache), so their bytecode is valid
    as is. Python replaces a .pyc by renaming, never in place: sharing is safe.
    Returns the .py files left to compile.

    By the distributions' RECORDs (``_link_by_record``) when every one has its RECORD, else
    by directory listings (``_link_by_listing``)."""
    todo: list[str] = []
    for site in venv.glob("lib/python*/site-packages"):
        other_site = source / site.relative_to(venv)
        try:
            same_device = os.stat(site).st_dev == os.stat(other_site).st_dev
        except OSError:
            same_device = False
        found = _link_by_record(str(site), str(other_site), same_device)
        todo.extend(found if found is not None else _link_by_listing(site, other_site, same_device))
    return todo


def _link_by_record(site: str, other_site: str, same_device: bool) -> list[str] | None:
    """``link_bytecode`` for one site-packages by its distributions' RECORDs: a distribution
    whose METADATA is the very same file in both venvs was linked by uv from one entry of its
    cache (an unpacked wheel, never changed) in both, so each of its .py files is too, and
    its bytecode is linked without a look at the files themselves. A .py file of no
    distribution (uv's ``_virtualenv.py``) is compared by inode. None when a distribution
    has no readable RECORD, or a directory is in no RECORD. The RECORDs are a few files to
    read where the listings are thousands (a Django venv: ~2,700 directories, in both)."""
    import csv

    tag = sys.implementation.cache_tag
    todo: list[str] = []
    covered: set[str] = set()  # the top-level names the RECORDs list
    try:
        with os.scandir(site) as it:
            entries = list(it)
    except OSError:
        return None
    records: dict[str, list[str]] = {}  # a distribution: its .py files
    for entry in entries:
        if not entry.name.endswith(".dist-info"):
            continue
        try:
            with open(os.path.join(entry.path, "RECORD"), newline="", encoding="utf-8") as f:
                listed = [row[0] for row in csv.reader(f) if row]
        except (OSError, UnicodeDecodeError, csv.Error):
            return None
        # what a RECORD lists outside site-packages (its scripts) is not compiled
        inside = [r for r in listed if not r.startswith("/") and ".." not in r.split("/")]
        covered.update(r.split("/")[0] for r in inside)
        records[entry.name] = [r for r in inside if r.endswith(".py")]
    loose = [e for e in entries if e.name not in covered and not e.name.endswith(".dist-info")]
    if any(e.is_dir(follow_symlinks=False) and e.name != "__pycache__" for e in loose):
        return None  # a directory no RECORD lists: its files are known only by a listing
    for dist, files in records.items():
        same = same_device and _same_file(
            os.path.join(site, dist, "METADATA"), os.path.join(other_site, dist, "METADATA")
        )
        made: set[str] = set()
        for rel in files:
            folder, name = os.path.split(rel)
            if not (same and _link_pyc(site, other_site, folder, name, tag, made)):
                todo.append(os.path.join(site, rel))
    for entry in loose:
        if not entry.name.endswith(".py") or not entry.is_file(follow_symlinks=False):
            continue
        there = os.path.join(other_site, entry.name)
        try:
            same = same_device and os.lstat(there).st_ino == entry.inode()
        except OSError:
            same = False
        if not (same and _link_pyc(site, other_site, "", entry.name, tag, set())):
            todo.append(entry.path)
    return todo


def _same_file(path: str, other: str) -> bool:
    try:
        return os.stat(path).st_ino == os.stat(other).st_ino
    except OSError:
        return False


def _link_pyc(site: str, other_site: str, folder: str, name: str, tag: str, made: set) -> bool:
    """Link ``other_site``'s bytecode of ``folder/name`` into ``site``; False if it has none."""
    pyc = f"{name[:-3]}.{tag}.pyc"
    cache = os.path.join(site, folder, "__pycache__")
    try:
        if cache not in made:
            os.makedirs(cache, exist_ok=True)
            made.add(cache)
        os.link(os.path.join(other_site, folder, "__pycache__", pyc), os.path.join(cache, pyc))
        return True
    except OSError:
        return False


def _link_by_listing(site: Path, other_site: Path, same_device: bool) -> list[str]:
    """``link_bytecode`` for one site-packages by directory listings only (``scandir`` gives
    each entry's inode and type without a stat): a venv holds thousands of files, and a stat
    or two for each was most of this step."""
    tag = sys.implementation.cache_tag
    todo: list[str] = []
    pending = [""]
    while pending:
        rel = pending.pop()
        here, there = os.path.join(site, rel), os.path.join(other_site, rel)
        theirs = _py_inodes(there) if same_device else {}
        compiled = _names(os.path.join(there, "__pycache__")) if theirs else set()
        made: set[str] = set()
        with os.scandir(here) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    if entry.name != "__pycache__":
                        pending.append(os.path.join(rel, entry.name))
                    continue
                if not entry.name.endswith(".py"):
                    continue
                pyc = f"{entry.name[:-3]}.{tag}.pyc"
                if (
                    theirs.get(entry.name) == entry.inode()
                    and pyc in compiled
                    and _link_pyc(str(site), str(other_site), rel, entry.name, tag, made)
                ):
                    continue
                todo.append(entry.path)  # compiled below
    return todo


def _py_inodes(directory: str) -> dict[str, int]:
    """{name: inode} of the regular .py files in ``directory`` (none if it is not there)."""
    try:
        with os.scandir(directory) as entries:
            return {
                e.name: e.inode()
                for e in entries
                if e.name.endswith(".py") and not e.is_symlink() and e.is_file()
            }
    except OSError:
        return {}


def _names(directory: str) -> set[str]:
    try:
        return set(os.listdir(directory))
    except OSError:
        return set()


COMPILE_ONE_BY_ONE = 300  # up to this many files, one process; more: compileall's workers


def compile_bytecode(python: str, venv: Path, env: dict[str, str], files: list[str]) -> None:
    """Compile ``files`` (if many: everything without valid bytecode). Best effort, as an
    installer does it: a file that does not compile fails at import, not here.

    The venv runs shipyard's own interpreter (``build`` links bytecode only then), so a few
    files are compiled here, in this process: the same bytecode, without a Python start."""
    if not files:
        return
    if len(files) <= COMPILE_ONE_BY_ONE:
        import py_compile

        for path in files:
            with contextlib.suppress(Exception):  # e.g. a file only another Python reads
                py_compile.compile(path, doraise=True)
        return
    quiet = {"env": env, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    for site in venv.glob("lib/python*/site-packages"):
        subprocess.run(
            [python, "-m", "compileall", "-q", "-j", "0", str(site)],
            stdin=subprocess.DEVNULL,
            **quiet,
        )


def _pip_requirements(req: Path, tmp: Path, env: dict[str, str]) -> Path:
    """pip reads only requirements files: derive one from uv.lock or pyproject.toml."""
    if req.suffix == ".txt":
        return req
    out = tmp / "requirements.txt"
    if req.name == "uv.lock":
        _run(
            [uv_bin(), "export", "--frozen", "--no-dev", "--no-hashes", "--quiet", "-o", str(out)],
            req.parent,
            env,
            "uv export",
        )
    else:
        deps = tomllib.loads(req.read_text()).get("project", {}).get("dependencies", [])
        out.write_text("\n".join(deps) + "\n")
    return out


def _rewrite_shebangs(tmp: Path, target: Path) -> None:
    """pip writes absolute shebangs; point them at the venv's final place before the rename."""
    old, new = str(tmp).encode(), str(target).encode()
    for script in (tmp / "bin").iterdir():
        if script.is_symlink() or not script.is_file():
            continue
        head = script.read_bytes()
        if head.startswith(b"#!") and old in head.split(b"\n", 1)[0]:
            first, _, rest = head.partition(b"\n")
            script.write_bytes(first.replace(old, new) + b"\n" + rest)


def prune(app: App, keep_keys: set[str], trash: list[Path] | None = None) -> list[str]:
    """Remove venvs that no kept release links to (and stray half-built ones, and the other
    keys' links to a removed one); with ``trash``, rename them aside into it for
    ``release.empty`` to delete later."""
    removed = []
    if not app.venvs.is_dir():
        return removed
    for path in list(app.venvs.iterdir()):  # listed first: what is renamed aside stays there
        if path.name.startswith(".tmp-"):
            if not owner_alive(path.name):
                shutil.rmtree(path, ignore_errors=True)
            continue
        if path.is_symlink():  # another key's way to a venv (see ensure)
            if os.readlink(path) not in keep_keys:
                path.unlink()
            continue
        if path.name not in keep_keys:
            set_aside(path, app.venvs / f".tmp-trash-{path.name}-{os.getpid()}", trash)
            removed.append(path.name)
    return removed
