"""`shipyard provision`: set up a fresh Debian/Ubuntu host to receive pushes over SSH.

Run once as root. Each step looks before it acts, so a second run changes
nothing and says so, and ``--dry-run`` prints what a run would do:

1. the deploy user (default ``deploy``) with a home, ``~/apps`` and ``~/.ssh``;
2. shipyard installed for it in ``/usr/local/lib/shipyard/USER/venv``, owned by
   root (the deploy user runs it but cannot change it), from the source this
   shipyard runs from, or ``--source``; ``~/.shipyard/venv`` links to it;
3. ``~/.ssh/authorized_keys``: one line per named key, each with the forced
   command ``shipyard ssh-command NAME`` (see ``provision/shell.py``) and no
   forwarding, no pty;
4. supervisord: with the Debian ``supervisor`` package, a program that runs the
   deploy user's own supervisord (see ``configure_supervisor``); without it,
   a systemd unit that does (``configure_boot``); either way that supervisord
   starts every app's embedded supervisord at boot (``shipyard boot``);
5. optionally apps (``--app``), created with ``shipyard init`` as the deploy user.

Anyone who can push runs code as the deploy user and can plant links in its
home. So root follows nothing there: it changes the home's directories through
descriptors opened without following links, writes ``authorized_keys`` and the
user's supervisord config as the deploy user (``owner.call_as``), and runs
nothing from a place the deploy user could change (``owner.untrusted``).
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import re
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import shipyard
from shipyard import owner
from shipyard.app import check_app_name
from shipyard.config import parse_address
from shipyard.errors import ShipyardError
from shipyard.programs import replace_file
from shipyard.provision.frontdoor import configure as front_door
from shipyard.venv import not_world_writable

USER_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
KEY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)
# a pty is allowed by sshd but refused by the forced command for anything but `shipyard run`
KEY_OPTIONS = "no-port-forwarding,no-X11-forwarding,no-agent-forwarding,no-user-rc,restrict,pty"
SUPERVISOR_CONF_DIR = Path("/etc/supervisor/conf.d")
SUPERVISOR_SOCKET = Path("/var/run/supervisor.sock")
VENV_ROOT = Path("/usr/local/lib/shipyard")  # one root-owned venv per deploy user
SYSTEMD_DIR = Path("/etc/systemd/system")
MIN_PYTHON = (3, 11)
SOURCE_PACKAGES = ("shipyard", "hooks", "receiver", "provision")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ProvisionError(ShipyardError):
    """Bad input or a host that cannot be provisioned as asked."""


@dataclass(frozen=True)
class Key:
    name: str
    kind: str
    blob: str
    comment: str = ""

    def line(self, shipyard_bin: Path) -> str:
        command = f"{shipyard_bin} ssh-command {self.name}"
        comment = f" {self.comment}" if self.comment else ""
        return f'command="{command}",{KEY_OPTIONS} {self.kind} {self.blob}{comment}'


@dataclass
class Layout:
    """Where things go for one deploy user."""

    user: str
    home: Path
    uid: int | None = None  # None: the user does not exist yet (a dry run)
    gid: int | None = None

    def call(self, fn, *args):
        """``fn(*args)`` as the deploy user (see ``owner.call_as``)."""
        if self.uid is None or self.gid is None:
            raise ProvisionError(f"user {self.user} does not exist")
        user = owner.User(self.user, self.uid, self.gid, str(self.home))
        try:
            return owner.call_as(user, fn, *args)
        except ShipyardError as exc:
            raise ProvisionError(
                exc.message,
                exc.hint
                or f"provision works in {self.home} as {self.user}, following no link as root: "
                f"make it a file or directory {self.user} may use (not a link out), then run again",
            ) from None

    @property
    def apps(self) -> Path:
        return self.home / "apps"

    @property
    def ssh(self) -> Path:
        return self.home / ".ssh"

    @property
    def authorized_keys(self) -> Path:
        return self.ssh / "authorized_keys"

    @property
    def state(self) -> Path:
        return self.home / ".shipyard"

    @property
    def venv(self) -> Path:
        return VENV_ROOT / self.user / "venv"

    @property
    def venv_link(self) -> Path:
        """Where hooks and keys of earlier provisions run shipyard from: a link to ``venv``."""
        return self.state / "venv"

    @property
    def shipyard_bin(self) -> Path:
        return self.venv / "bin" / "shipyard"

    @property
    def stamp(self) -> Path:
        return self.venv / "shipyard-install.json"

    @property
    def supervisord_conf(self) -> Path:
        return self.state / "supervisord.conf"

    @property
    def supervisord_socket(self) -> Path:
        return self.state / "supervisord.sock"

    @property
    def receiver_tls(self) -> tuple[Path, Path]:
        """The receiver's self-signed certificate and its key (receiver/tls.py)."""
        return self.state / "receiver" / "cert.pem", self.state / "receiver" / "key.pem"


@dataclass
class Options:
    user: str = "deploy"
    keys: list[Key] = field(default_factory=list)
    source: str | None = None
    python: str | None = None
    apps: list[str] = field(default_factory=list)
    supervisor: str = "auto"  # auto | system | none
    dry_run: bool = False
    receiver: str | None = None  # ADDR:PORT: run `shipyard receiver` (a peer of many hosts)
    sync: list[str] = field(default_factory=list)  # apps whose peers are kept in sync
    proxy: bool = False  # the front door: nginx, certbot, the reload helper (provision/frontdoor)
    port: int | None = None  # --port: the web port of the --app (shipyard init --port)
    supervisor_conf_dir: Path = SUPERVISOR_CONF_DIR


# ---------------------------------------------------------------- input checks


def check_user_name(name: str) -> str:
    if not USER_NAME.match(name):
        raise ProvisionError(
            f"invalid user name {name!r}",
            "use lowercase letters, digits, '_' and '-', starting with a letter (at most 32)",
        )
    if name == "root":
        raise ProvisionError("refusing to provision root as the deploy user", "use e.g. deploy")
    return name


def check_listen_address(address: str) -> str:
    """ADDR:PORT for the receiver, checked before anything changes."""
    parsed = parse_address(address)
    if parsed is None or parsed[0] in ("0.0.0.0", "::"):
        raise ProvisionError(
            f"--receiver {address!r}: not an address to listen on"
            + (" (it would be every interface)" if parsed else ""),
            "write ADDR:PORT, the address the primary reaches, e.g. --receiver 10.0.0.2:7070",
        )
    return address


def parse_key_spec(spec: str) -> tuple[str, Path]:
    """``NAME=FILE`` as given to ``--key``."""
    name, sep, file = spec.partition("=")
    if not sep or not file:
        raise ProvisionError(f"--key {spec!r}: expected NAME=FILE", "e.g. --key alice=alice.pub")
    if not KEY_NAME.match(name):
        raise ProvisionError(
            f"--key {spec!r}: invalid key name {name!r}",
            "use letters, digits, '.', '_', '-' and '@' (no spaces), at most 64",
        )
    return name, Path(file)


def read_key(name: str, path: Path) -> Key:
    """One OpenSSH public key from ``path``; refuses private keys and anything with options."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ProvisionError(f"--key {name}={path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProvisionError(f"--key {name}={path}: cannot read it ({exc})") from None
    if "PRIVATE KEY" in text:
        raise ProvisionError(
            f"--key {name}={path}: this is a private key",
            f"give the public key instead ({path}.pub)",
        )
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    if len(lines) != 1:
        raise ProvisionError(
            f"--key {name}={path}: expected exactly one public key line, found {len(lines)}",
            "give one key per --key (one NAME per person or machine)",
        )
    parts = lines[0].split(None, 2)
    if len(parts) < 2 or parts[0] not in KEY_TYPES:
        raise ProvisionError(
            f"--key {name}={path}: not an OpenSSH public key",
            "expected a line like `ssh-ed25519 AAAA… comment` (the .pub file of ssh-keygen)",
        )
    kind, blob = parts[0], parts[1]
    if not re.fullmatch(r"[A-Za-z0-9+/]+={0,2}", blob):
        raise ProvisionError(f"--key {name}={path}: the key data is not base64")
    import base64
    import binascii

    try:
        raw = base64.b64decode(blob, validate=True)
    except binascii.Error:
        raise ProvisionError(f"--key {name}={path}: the key data is not base64") from None
    if raw[4 : 4 + int.from_bytes(raw[:4], "big")] != kind.encode():
        raise ProvisionError(f"--key {name}={path}: the key data does not match its type {kind}")
    comment = re.sub(r"[^\w.@+:-]", "_", parts[2])[:80] if len(parts) > 2 else ""
    return Key(name, kind, blob, comment)


def read_keys(specs: list[str]) -> list[Key]:
    keys: list[Key] = []
    for spec in specs:
        name, path = parse_key_spec(spec)
        key = read_key(name, path)
        for other in keys:
            if other.name == name:
                raise ProvisionError(f"--key {name} is given twice", "give each name once")
            if other.blob == key.blob:
                raise ProvisionError(
                    f"--key {name} and --key {other.name} are the same key",
                    "a key records one person or machine: give it one name",
                )
        keys.append(key)
    return keys


def require_root() -> None:
    if os.geteuid() != 0:
        raise ProvisionError(
            "shipyard provision must run as root (it creates a user and writes /etc)",
            "run it with sudo",
        )


# ---------------------------------------------------------------- the source


def default_source() -> str:
    """The source this shipyard runs from: its checkout, the file it was installed from, or PyPI."""
    package_dir = Path(shipyard.__file__).resolve().parent
    checkout = package_dir.parent
    pyproject = checkout / "pyproject.toml"
    if pyproject.is_file() and re.search(r'(?m)^name\s*=\s*"shipyard"', pyproject.read_text()):
        return str(checkout)
    try:
        from importlib.metadata import distribution

        direct = distribution("shipyard").read_text("direct_url.json")
    except Exception:  # noqa: BLE001 - no metadata: fall back to the published name
        direct = None
    if direct:
        url = json.loads(direct).get("url", "")
        if url.startswith("file://") and Path(url[7:]).exists():
            return url[7:]
    return f"shipyard=={shipyard.__version__}"


def fingerprint(source: str) -> str:
    """What the installed copy must match: the source files' hash, a file's hash, or the spec."""
    path = Path(source)
    digest = hashlib.sha256()
    if path.is_dir():
        files = [path / "pyproject.toml"]
        for package in SOURCE_PACKAGES:
            files += sorted(
                p for p in (path / package).rglob("*.py") if "__pycache__" not in p.parts
            )
        for file in files:
            if file.is_file():
                digest.update(str(file.relative_to(path)).encode() + b"\0" + file.read_bytes())
        return "dir:" + digest.hexdigest()[:16]
    if path.is_file():
        digest.update(path.read_bytes())
        return "file:" + digest.hexdigest()[:16]
    return "spec:" + source


def staged(source: str, into: Path) -> str:
    """A checkout's package sources alone, copied into ``into``: what gets built and installed.

    setuptools builds in the checkout and packs whatever its ``build/lib`` holds, so a
    checkout that was built before would ship modules since deleted or renamed (an old
    test-only module, say). The copy holds what ``fingerprint`` hashes, and no build output.
    A wheel or a requirement is returned as it is.
    """
    path = Path(source)
    if not path.is_dir():
        return source
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for name in ("pyproject.toml", "README.md"):
        if (path / name).is_file():
            shutil.copy2(path / name, into / name)
    for package in SOURCE_PACKAGES:
        if (path / package).is_dir():
            shutil.copytree(path / package, into / package, ignore=skip, symlinks=True)
    return str(into)


def usable_by_others(path: Path) -> bool:
    """Whether a user in no special group can execute ``path`` (every parent searchable)."""
    try:
        real = path.resolve(strict=True)
    except OSError:
        return False
    if not real.stat().st_mode & stat.S_IXOTH:
        return False
    return all(parent.stat().st_mode & stat.S_IXOTH for parent in real.parents)


def python_version(interpreter: str | Path) -> tuple[int, int] | None:
    try:
        out = subprocess.run(
            [str(interpreter), "-c", "import sys, venv; print(*sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except OSError:
        return None
    if out.returncode:
        return None
    major, minor = out.stdout.split()
    return int(major), int(minor)


def choose_python(explicit: str | None) -> Path:
    """An interpreter ≥ 3.11 the deploy user can run (root's pyenv under /root is not one)."""
    candidates = [Path(explicit)] if explicit else []
    if not explicit:
        base = getattr(sys, "_base_executable", None) or sys.executable
        for name in (base, shutil.which("python3", path=PATH), "/usr/bin/python3"):
            if name and Path(name) not in candidates:
                candidates.append(Path(name))
    tried = []
    for candidate in candidates:
        changeable = owner.untrusted(candidate)  # root runs it: nobody else may change it
        if changeable:
            tried.append(f"{candidate} ({changeable[0]})")
            continue
        version = python_version(candidate) if usable_by_others(candidate) else None
        if version and version >= MIN_PYTHON:
            return candidate.resolve()
        tried.append(f"{candidate} ({'.'.join(map(str, version)) if version else 'not usable'})")
    raise ProvisionError(
        f"no Python ≥ {'.'.join(map(str, MIN_PYTHON))} that the deploy user can run: "
        + ", ".join(tried),
        "install python3 (Debian 12 / Ubuntu 24.04 have 3.11+) or pass --python PATH",
    )


# ---------------------------------------------------------------- the steps


class Provisioner:
    """Runs the steps; ``changes`` collects what was (or, dry, would be) done."""

    def __init__(self, options: Options, out=None) -> None:
        self.o = options
        self.out = out or sys.stdout
        self.changes: list[str] = []
        self.notes: list[str] = []
        self.layout: Layout | None = None

    def change(self, text: str) -> None:
        self.changes.append(text)
        prefix = "would " if self.o.dry_run else ""
        print(f"  {prefix}{text}", file=self.out, flush=True)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  · {text}", file=self.out, flush=True)

    def run(self, *args: str | Path, user: bool = False, **kw) -> subprocess.CompletedProcess:
        argv = [str(a) for a in args]
        env = kw.pop("env", None)
        if user:
            assert self.layout
            argv = ["runuser", "-u", self.layout.user, "--", *argv]
            env = {
                "HOME": str(self.layout.home),
                "USER": self.layout.user,
                "LOGNAME": self.layout.user,
                "PATH": PATH,
                "LANG": "C.UTF-8",
                **(env or {}),
            }
        result = subprocess.run(argv, capture_output=True, text=True, env=env, **kw)
        if result.returncode:
            tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
            raise ProvisionError(
                f"`{shlex.join(argv)}` failed (exit {result.returncode}): " + " / ".join(tail)
            )
        return result

    # 1. the user

    def user(self) -> None:
        name = self.o.user
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            entry = None
        if entry is None:
            home = Path("/home") / name
            self.layout = Layout(name, home)
            self.change(f"create user {name} (home {home}, shell /bin/sh)")
            if not self.o.dry_run:
                self.run(
                    "useradd",
                    "--create-home",
                    "--user-group",
                    "--shell",
                    "/bin/sh",
                    "--comment",
                    "shipyard deploy user",
                    name,
                )
                entry = pwd.getpwnam(name)
        else:
            if entry.pw_uid == 0:
                raise ProvisionError(f"user {name} has uid 0", "choose another deploy user")
            if entry.pw_uid < 1000:
                raise ProvisionError(
                    f"user {name} is a system account (uid {entry.pw_uid})",
                    "choose another name for the deploy user, e.g. deploy",
                )
            self.layout = Layout(name, Path(entry.pw_dir))
            if Path(entry.pw_shell).name in ("nologin", "false", "git-shell"):
                self.change(f"set {name}'s shell to /bin/sh (sshd runs the forced command with it)")
                if not self.o.dry_run:
                    self.run("usermod", "--shell", "/bin/sh", name)
        if entry is not None and self.password_locked(name):
            # sshd without PAM refuses every login of an account whose password starts with '!'
            self.change(f"unlock {name} for key logins (password '*': no password login)")
            if not self.o.dry_run:
                self.run("usermod", "--password", "*", name)
        self.directories(entry)

    @staticmethod
    def password_locked(name: str) -> bool:
        try:
            for line in Path("/etc/shadow").read_text().splitlines():
                fields = line.split(":")
                if fields[0] == name:
                    return fields[1].startswith("!")
        except OSError:
            return False
        return False

    def directories(self, entry: pwd.struct_passwd | None) -> None:
        """The home's directories, changed through descriptors opened without following links."""
        assert self.layout
        lay = self.layout
        wanted = [("apps", 0o750), (".ssh", 0o700), (".shipyard", 0o755)]
        if entry is None:  # a dry run for a user not created yet
            for name, mode in wanted:
                self.change(f"create {lay.home / name} (mode {mode:o})")
            return
        lay.uid, lay.gid = entry.pw_uid, entry.pw_gid
        if not lay.home.is_dir() and not lay.home.is_symlink():
            self.change(f"create {lay.home} (mode 755)")
            if self.o.dry_run:
                return
            lay.home.mkdir(mode=0o755)
            os.chown(lay.home, entry.pw_uid, entry.pw_gid)
        home = self.open_home()
        try:
            st = os.fstat(home)
            if st.st_mode & 0o022:
                # StrictModes: a home others can write makes sshd ignore authorized_keys
                self.change(f"remove group/other write from {lay.home} (sshd StrictModes)")
                if not self.o.dry_run:
                    os.fchmod(home, stat.S_IMODE(st.st_mode) & ~0o022)
            for name, mode in wanted:
                self.directory(home, name, mode)
        finally:
            os.close(home)

    def open_home(self) -> int:
        """The deploy user's home, opened without following a link; refused if others control
        the directory it is in (they could swap it)."""
        assert self.layout
        lay = self.layout
        problems = owner.untrusted(lay.home.parent)
        if problems:
            raise ProvisionError(
                f"{lay.user}'s home {lay.home} is in a directory others can change: {problems[0]}",
                "give the deploy user a home in a root-owned directory, e.g. /home",
            )
        try:
            return os.open(lay.home, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise ProvisionError(
                f"{lay.user}'s home {lay.home}: {exc.strerror}",
                "the home must be a directory, not a link",
            ) from None

    def directory(self, home: int, name: str, mode: int) -> None:
        """``~/name`` a directory of ``mode`` owned by the user; a link there is left alone."""
        assert self.layout and self.layout.uid is not None
        lay, path = self.layout, self.layout.home / name
        try:
            st = os.stat(name, dir_fd=home, follow_symlinks=False)
        except FileNotFoundError:
            st = None
            self.change(f"create {path} (mode {mode:o})")
            if self.o.dry_run:
                return
            os.mkdir(name, mode, dir_fd=home)
        if st is not None and stat.S_ISLNK(st.st_mode):
            self.note(
                f"{path} is a link (to {os.readlink(name, dir_fd=home)}): left as it is "
                f"(root follows no link in {lay.user}'s home)"
            )
            return
        if st is not None and not stat.S_ISDIR(st.st_mode):
            raise ProvisionError(f"{path} is not a directory", "move it away and run again")
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=home)
        try:
            have = os.fstat(fd)
            if stat.S_IMODE(have.st_mode) != mode:
                if st is not None:
                    self.change(f"chmod {mode:o} {path}")
                if not self.o.dry_run:
                    os.fchmod(fd, mode)
            if (have.st_uid, have.st_gid) != (lay.uid, lay.gid):
                if st is not None:
                    self.change(f"chown {lay.user}: {path}")
                if not self.o.dry_run:
                    os.fchown(fd, lay.uid, lay.gid)
        finally:
            os.close(fd)

    # 2. shipyard itself

    def install(self) -> None:
        assert self.layout
        lay = self.layout
        source = self.o.source or default_source()
        if not self.o.source and source.startswith("shipyard=="):
            self.note(f"installing {source} from the package index (pass --source to override)")
        if Path(source).exists():
            source = str(Path(source).resolve())
            changeable = owner.untrusted(Path(source))
            if changeable:  # root builds and installs it: its build backend runs as root
                raise ProvisionError(
                    f"--source {source} can be changed by others ({changeable[0]})",
                    "give a checkout or wheel that is root's alone (chown root:, chmod go-w)",
                )
        python = choose_python(self.o.python)
        wanted = {"source": source, "fingerprint": fingerprint(source), "python": str(python)}
        self.venv_home()
        have, working = None, False
        exists = lay.venv.exists() or lay.venv.is_symlink()
        changeable = owner.untrusted_tree(lay.venv) if exists else []
        if changeable:
            # root runs its python (uv's probe, pip): a copy others could change is rebuilt
            self.note(f"{lay.venv} is not root's alone ({changeable[0]}): rebuilding it")
        elif exists:
            try:
                have = json.loads(lay.stamp.read_text())
            except (OSError, ValueError):
                have = None
            working = lay.shipyard_bin.is_file() and (lay.venv / "bin" / "python").exists()
        if have == wanted and working:
            self.venv_link()
            return
        what = "install" if have is None else "update"
        self.change(f"{what} shipyard from {source} in {lay.venv} (python {python})")
        if self.o.dry_run:
            self.venv_link()
            return
        uv = _uv()
        if have is None or have.get("python") != str(python) or not working:
            if lay.venv.is_symlink():
                lay.venv.unlink()
            elif exists:
                shutil.rmtree(lay.venv)  # fd-based: never follows a link inside
            if uv:
                self.run(uv, "venv", "--quiet", "--python", python, lay.venv)
            else:
                self.run(python, "-m", "venv", lay.venv)
        py = lay.venv / "bin" / "python"
        env = {**os.environ, "VIRTUAL_ENV": str(lay.venv)}
        with tempfile.TemporaryDirectory(prefix="shipyard-source-") as copy:
            build = staged(source, Path(copy))
            if uv:
                self.run(
                    uv,
                    "pip",
                    "install",
                    "--quiet",
                    "--python",
                    py,
                    "--compile-bytecode",
                    "--reinstall-package",
                    "shipyard",
                    build,
                    env=env,
                )
            else:
                self.run(py, "-m", "pip", "install", "--quiet", "--force-reinstall", build, env=env)
        not_world_writable(lay.venv)  # uv's .lock is 0666: the venv must be root's alone
        lay.stamp.write_text(json.dumps(wanted, indent=1) + "\n")
        # the deploy user must be able to run it: fail here, not at the first push
        self.run(lay.shipyard_bin, "--version", user=True)
        self.venv_link()

    def venv_home(self) -> None:
        """``/usr/local/lib/shipyard/USER``, made by root; refused if others could change it."""
        assert self.layout
        home = self.layout.venv.parent
        existing, missing = home, []
        while not existing.exists() and not existing.is_symlink():
            missing.append(existing)
            existing = existing.parent
        problems = owner.untrusted(existing)
        if problems:
            raise ProvisionError(
                f"shipyard's venv for {self.layout.user} goes in {home}, "
                f"which others can change: {problems[0]}",
                f"make {existing} root's alone (chown root: and chmod go-w), then run again",
            )
        if self.o.dry_run:
            return
        for directory in reversed(missing):
            directory.mkdir(mode=0o755)
            directory.chmod(0o755)

    def venv_link(self) -> None:
        """``~/.shipyard/venv`` -> the venv, where hooks and keys of earlier provisions run
        shipyard from. Whatever was there (an older venv, anything the user put there) is
        removed, never run; through descriptors, following no link."""
        assert self.layout and self.layout.uid is not None
        lay, target = self.layout, str(self.layout.venv)
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        home = self.open_home()
        try:
            state = os.open(".shipyard", flags, dir_fd=home)
        except OSError:
            return  # a link: directories() said it is left alone
        finally:
            os.close(home)
        try:
            try:
                st = os.stat("venv", dir_fd=state, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            if st and stat.S_ISLNK(st.st_mode) and os.readlink("venv", dir_fd=state) == target:
                return
            replacing = ""
            if st is not None:
                replacing = " (replacing the directory there)" if stat.S_ISDIR(st.st_mode) else ""
            self.change(f"link {lay.venv_link} -> {lay.venv}{replacing}")
            if self.o.dry_run:
                return
            if st is not None and stat.S_ISDIR(st.st_mode):
                shutil.rmtree("venv", dir_fd=state)
            elif st is not None:
                os.unlink("venv", dir_fd=state)
            os.symlink(target, "venv", dir_fd=state)
            os.chown("venv", lay.uid, lay.gid, dir_fd=state, follow_symlinks=False)
        finally:
            os.close(state)

    # 3. authorized_keys

    def authorized_keys(self) -> None:
        """Read and written as the deploy user: whatever is planted there (a link to a root
        file, a link under the temp name) reaches only what that user may read and write."""
        assert self.layout
        lay = self.layout
        path = lay.authorized_keys
        have = lay.call(read_file, str(path)) if lay.uid is not None else None
        current = have["text"] if have else ""
        text, changes = merge_authorized_keys(current, self.o.keys, lay.shipyard_bin)
        for change in changes:
            self.change(change)
        for number, line in unrestricted_lines(text):
            self.note(
                f"{path}:{number} has no forced command: that key gets a shell "
                f"({line[:40]}…); remove it or re-add it with --key NAME=FILE"
            )
        if text != current:
            if not self.o.dry_run:
                lay.call(replace_file, str(path), text, 0o600)
        elif have and (have["mode"] & 0o022 or have["uid"] not in (0, lay.uid)):
            self.change(f"chmod 600 and chown {lay.user} {path} (sshd StrictModes)")
            if not self.o.dry_run:
                lay.call(replace_file, str(path), text, 0o600)
        if not self.o.keys and not managed_names(text):
            self.note("no keys yet: add one with --key NAME=FILE (e.g. --key alice=alice.pub)")

    # 4. supervisord

    def supervisor(self) -> None:
        assert self.layout
        if self.o.receiver:
            self.receiver_cert()
        for configure in (configure_supervisor, configure_boot):  # and its start at boot
            for change in configure(
                self.layout,
                mode=self.o.supervisor,
                conf_dir=self.o.supervisor_conf_dir,
                dry_run=self.o.dry_run,
                note=self.note,
                receiver=self.o.receiver,
                sync=self.o.sync,
            ):
                self.change(change)

    def receiver_cert(self) -> None:
        """The receiver serves TLS with a certificate made by (and for) the deploy user."""
        assert self.layout and self.o.receiver
        cert, key = self.layout.receiver_tls
        if self.o.dry_run:
            if not cert.exists():
                self.change(f"make the receiver's TLS certificate {cert}")
            return
        options = ["--listen", self.o.receiver, "--tls-cert", cert, "--tls-key", key]
        lines = self.run(
            self.layout.shipyard_bin, "receiver", *options, "--make-cert", user=True
        ).stdout.splitlines()
        if lines[0].startswith("made"):
            self.change(f"make the receiver's TLS certificate {cert}")
        self.note(f"pin it in the primary's shipyard.toml: {lines[-1]}")

    # 4b. cron: the apps' [cron] jobs are the deploy user's crontab (shipyard/cron.py)

    def cron(self) -> None:
        if shutil.which("crontab", path=PATH) and Path("/usr/sbin/cron").exists():
            return
        if not shutil.which("apt-get", path=PATH):
            self.note("no cron: install a cron daemon for the apps' [cron] jobs")
            return
        self.change("install cron (Debian package; runs the apps' [cron] jobs)")
        if not self.o.dry_run:
            self.run(
                "apt-get", "install", "-y", "-qq", "cron",
                env={"PATH": PATH, "DEBIAN_FRONTEND": "noninteractive", "LANG": "C.UTF-8"},
            )  # fmt: skip

    # 5. apps

    def apps(self) -> None:
        assert self.layout
        for name in self.o.apps:
            app_dir = self.layout.apps / name
            if self.o.dry_run:
                if not (app_dir / "repo.git").is_dir():
                    self.change(f"create app {name} (shipyard init {name})")
                continue
            port = ["--port", str(self.o.port)] if self.o.port else []
            result = self.run(self.layout.shipyard_bin, "init", name, *port, user=True)
            if "nothing to do" not in result.stdout:
                self.change(f"create app {name} at {app_dir} (shipyard init {name})")

    def provision(self) -> int:
        verb = "dry run for" if self.o.dry_run else "provisioning"
        print(f"shipyard provision ▸ {verb} deploy user {self.o.user}", file=self.out, flush=True)
        self.user()
        if self.layout is None:
            raise AssertionError("no layout")
        if self.o.dry_run and not pwd_exists(self.o.user):
            self.change(f"install shipyard in {self.layout.venv}")
            if self.o.keys:
                self.change(
                    f"authorise {len(self.o.keys)} key(s) in {self.layout.authorized_keys}: "
                    + ", ".join(k.name for k in self.o.keys)
                )
            for name in self.o.apps:
                self.change(f"create app {name} (shipyard init {name})")
        else:
            self.install()
            self.authorized_keys()
            self.apps()
        self.supervisor()
        self.cron()
        if self.o.proxy:
            lay = self.layout
            for change in front_door(self.o.user, lay.shipyard_bin, lay.apps, self.o.dry_run):
                self.change(change)
        self.summary()
        return 0

    def summary(self) -> None:
        assert self.layout
        lay, n = self.layout, len(self.changes)
        user = lay.user
        if self.o.dry_run:
            print(
                f"shipyard provision ▸ dry run: {n} change(s) would be made; nothing was changed"
                if n
                else f"shipyard provision ▸ dry run: {user} is already provisioned; nothing to do",
                file=self.out,
            )
            return
        print(
            f"shipyard provision ▸ {user} provisioned ({n} change(s))"
            if n
            else f"shipyard provision ▸ {user} is already provisioned; nothing to do",
            file=self.out,
        )
        app = self.o.apps[0] if self.o.apps else "mysite"
        host = socket.getfqdn()
        try:
            keys = lay.call(read_file, str(lay.authorized_keys))
        except ShipyardError:
            keys = None
        names = managed_names(keys["text"]) if keys else []
        steps = []
        if not self.o.apps:
            steps.append(f"create an app:   shipyard provision --user {user} --app {app}")
        if not names:
            steps.append(f"authorise a key: shipyard provision --user {user} --key alice=alice.pub")
        steps += [
            "on your machine, in the app's repository:",
            f"  git remote add production {user}@{host}:apps/{app}/repo.git",
            "  git push production main",
            f"check the host:  ssh {user}@{host} shipyard doctor {app}",
        ]
        print("Next steps:", file=self.out)
        for step in steps:
            print(f"  {step}", file=self.out)
        if names:
            print(f"Authorised keys: {', '.join(names)}", file=self.out)


def read_file(path: str) -> dict | None:
    """Text, mode and owner of ``path`` (None: there is none); run as the deploy user."""
    try:
        with open(path) as f:
            st = os.fstat(f.fileno())
            return {"text": f.read(), "mode": stat.S_IMODE(st.st_mode), "uid": st.st_uid}
    except FileNotFoundError:
        return None


def pwd_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _uv() -> str | None:
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except Exception:  # noqa: BLE001 - no uv: fall back to venv + pip
        return shutil.which("uv")


# ---------------------------------------------------------------- authorized_keys

MANAGED = re.compile(r'^command="[^"]*\bshipyard ssh-command ([^" ]+)"')


def managed_names(text: str) -> list[str]:
    return [m.group(1) for line in text.splitlines() if (m := MANAGED.match(line.strip()))]


def _blob(line: str) -> str | None:
    for i, word in enumerate(line.split()):
        if word in KEY_TYPES or word.endswith(tuple(f",{t}" for t in KEY_TYPES)):
            rest = line.split()[i + 1 : i + 2]
            return rest[0] if rest else None
    # options may contain quoted spaces: fall back to the token after the type anywhere
    match = re.search(r"(?:^|\s)(?:" + "|".join(map(re.escape, KEY_TYPES)) + r")\s+(\S+)", line)
    return match.group(1) if match else None


def unrestricted_lines(text: str) -> list[tuple[int, str]]:
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and "command=" not in stripped:
            found.append((number, stripped))
    return found


def merge_authorized_keys(current: str, keys: list[Key], shipyard_bin: Path) -> tuple[str, list]:
    """The new authorized_keys text and what changed; other lines are kept as they are."""
    lines = current.splitlines()
    changes: list[str] = []
    by_name = {}
    for index, line in enumerate(lines):
        match = MANAGED.match(line.strip())
        if match:
            by_name[match.group(1)] = index
    for key in keys:
        wanted = key.line(shipyard_bin)
        for number, line in enumerate(lines, 1):
            match = MANAGED.match(line.strip())
            if _blob(line) == key.blob and (not match or match.group(1) != key.name):
                owner = f"as {match.group(1)}" if match else "without shipyard's forced command"
                raise ProvisionError(
                    f"the key for {key.name} is already in authorized_keys line {number} {owner}",
                    "remove that line first (one key, one name)",
                )
        if key.name in by_name:
            index = by_name[key.name]
            if lines[index] != wanted:
                same_key = _blob(lines[index]) == key.blob
                lines[index] = wanted
                changes.append(
                    f"update the entry of key {key.name}"
                    if same_key
                    else f"replace the key of {key.name}"
                )
        else:
            if HEADER not in lines:
                lines.insert(0, HEADER)
                by_name = {name: index + 1 for name, index in by_name.items()}
            lines.append(wanted)
            by_name[key.name] = len(lines) - 1
            changes.append(f"authorise key {key.name} ({key.kind}) with the forced command")
    text = "\n".join(lines) + "\n" if lines else ""
    return text, changes


HEADER = (
    "# shipyard: keys added by `shipyard provision --key NAME=FILE` may only push and run "
    "shipyard commands"
)


# ---------------------------------------------------------------- supervisord


def supervisord_conf(lay: Layout, receiver: str | None = None, sync: list[str] = ()) -> str:
    """The deploy user's own supervisord: runs as the user, includes its apps' programs.

    With many hosts it also runs, as the user, a peer's receiver (``receiver``:
    ADDR:PORT) and, on a primary, one ``shipyard sync APP --every 30`` per app in
    ``sync``: a peer that was down or drained, or newly added, converges to the
    live release within 30 seconds of answering again, without a push.
    """
    programs = []
    if receiver:
        cert, key = lay.receiver_tls
        command = f"receiver --listen {receiver} --tls-cert {cert} --tls-key {key}"
        programs.append(_user_program(lay, "shipyard-receiver", command, "receiver"))
    for app in sync:
        programs.append(
            _user_program(lay, f"shipyard-sync-{app}", f"sync {app} --every 30", f"sync-{app}")
        )
    return _supervisord_base(lay) + boot_program(lay) + "".join(programs)


def _user_program(lay: Layout, name: str, command: str, log: str) -> str:
    return f"""
[program:{name}]
command = {lay.shipyard_bin} --root {lay.apps} {command}
directory = {lay.home}
autostart = true
autorestart = true
stopasgroup = true
stopwaitsecs = 60
redirect_stderr = true
stdout_logfile = {lay.state}/{log}.log
"""


def _supervisord_base(lay: Layout) -> str:
    return f"""\
; written by `shipyard provision`: {lay.user}'s supervisord, run by the system supervisord
[unix_http_server]
file = {lay.supervisord_socket}
chmod = 0700

[supervisord]
logfile = {lay.state}/supervisord.log
pidfile = {lay.state}/supervisord.pid
childlogdir = {lay.state}
nodaemon = true

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl = unix://{lay.supervisord_socket}
"""


def boot_program(lay: Layout) -> str:
    """Once, when the user's supervisord starts (at boot): every app's own supervisord.

    Each app runs shipyard's embedded supervisord, the one its deploys talk to
    (``run/supervisord.sock``); the user's supervisord does not include the
    apps' programs itself, which would run them twice.
    """
    return f"""
[program:shipyard-apps]
command = {lay.shipyard_bin} --root {lay.apps} boot
directory = {lay.home}
autostart = true
autorestart = false
startsecs = 0
redirect_stderr = true
stdout_logfile = {lay.state}/boot.log
"""


def boot_unit(lay: Layout) -> str:
    """The systemd unit that starts the deploy user's supervisord at boot, as that user."""
    return f"""\
# written by `shipyard provision`: {lay.user}'s supervisord (its apps, receiver, sync) at boot
[Unit]
Description=shipyard apps of {lay.user}
After=network-online.target
Wants=network-online.target

[Service]
User={lay.user}
WorkingDirectory={lay.home}
Environment=HOME={lay.home} USER={lay.user}
ExecStart={lay.venv / "bin" / "supervisord"} -n -c {lay.supervisord_conf}
Restart=on-failure
# the apps' own supervisords outlive a restart of this one (their processes keep serving)
KillMode=process

[Install]
WantedBy=multi-user.target
"""


def write_files(lay: Layout, files: list[tuple[Path, str]], dry_run: bool) -> list[str]:
    """Write each (path, text) that differs (0644, a new temp file renamed into place); the
    changes made. A file in the deploy user's home is read and written as that user: root
    never writes through a link planted there."""
    changes = []
    for path, text in files:
        mine = path.is_relative_to(lay.home)
        if not mine:
            have = read_file(str(path))
        else:
            have = lay.call(read_file, str(path)) if lay.uid is not None else None
        if have and have["text"] == text:
            continue
        changes.append(f"write {path}")
        if dry_run:
            continue
        if mine:
            lay.call(replace_file, str(path), text, 0o644)
        else:
            replace_file(path, text, 0o644)
    return changes


def configure_boot(
    lay: Layout,
    mode: str = "auto",
    conf_dir: Path = SUPERVISOR_CONF_DIR,
    dry_run: bool = False,
    note=print,
    receiver: str | None = None,
    sync: list[str] = (),
) -> list[str]:
    """Without a system supervisord, a systemd unit starts the user's supervisord at boot."""
    if mode == "none" or conf_dir.is_dir():  # none: nothing wanted; else Debian's starts it
        return []
    start = f"runuser -u {lay.user} -- {lay.venv / 'bin' / 'supervisord'} -c {lay.supervisord_conf}"
    unit = SYSTEMD_DIR / f"shipyard-{lay.user}.service"
    files = [(lay.supervisord_conf, supervisord_conf(lay, receiver, sync))]
    if SYSTEMD_DIR.is_dir():
        files.append((unit, boot_unit(lay)))
    changes = write_files(lay, files, dry_run)
    if not SYSTEMD_DIR.is_dir():
        note(f"no systemd: to start the apps at boot, have the init system run `{start}`")
        return changes
    systemctl = shutil.which("systemctl", path=PATH)
    enabled = SYSTEMD_DIR / "multi-user.target.wants" / unit.name
    if systemctl and not enabled.is_symlink():
        changes.append(f"enable {unit.name} (starts {lay.user}'s apps at boot)")
        if not dry_run:
            subprocess.run([systemctl, "enable", unit.name], capture_output=True)
    if not Path("/run/systemd/system").is_dir():
        note(f"systemd is not running here (a container?): now and at boot, run `{start}`")
    elif changes and not dry_run:
        subprocess.run([systemctl, "daemon-reload"], capture_output=True)
        subprocess.run([systemctl, "start", unit.name], capture_output=True)
    return changes


def system_program(lay: Layout) -> str:
    """/etc/supervisor/conf.d/shipyard-<user>.conf: one program, the user's supervisord.

    The system supervisord runs as root and honours ``user=`` in every file it
    includes, so it must never include files the deploy user can write (that
    would hand root to anything the user runs, e.g. a pushed build step). It
    runs the deploy user's own supervisord instead, as that user, which
    includes the apps' generated ``run/programs.conf``.
    """
    supervisord = lay.venv / "bin" / "supervisord"
    return f"""\
; written by `shipyard provision`; remove with the user {lay.user}
[program:shipyard-{lay.user}]
command = {supervisord} -c {lay.supervisord_conf}
user = {lay.user}
directory = {lay.home}
environment = HOME="{lay.home}",USER="{lay.user}"
autostart = true
autorestart = true
stopasgroup = true
killasgroup = true
stopwaitsecs = 30
"""


def configure_supervisor(
    lay: Layout,
    mode: str = "auto",
    conf_dir: Path = SUPERVISOR_CONF_DIR,
    dry_run: bool = False,
    note=print,
    receiver: str | None = None,
    sync: list[str] = (),
) -> list[str]:
    """Write and enable the supervisord configuration for the deploy user; returns the changes.

    ``mode``: ``system`` needs the Debian ``supervisor`` package (``conf_dir``);
    ``auto`` uses it when present; ``none`` (or auto without it) leaves each app
    to shipyard's embedded supervisord, started by its deploys.
    """
    if mode not in ("auto", "system", "none"):
        raise ProvisionError(f"--supervisor {mode!r}", "use auto, system or none")
    if mode == "none" or (mode == "auto" and not conf_dir.is_dir()):
        note(
            "no system supervisord (no "
            f"{conf_dir}): each app runs shipyard's own supervisord, started by its deploys"
            if mode == "auto"
            else "supervisord not configured (--supervisor none)"
        )
        if receiver:
            cert, key = lay.receiver_tls
            note(
                f"run the receiver: shipyard --root {lay.apps} receiver --listen {receiver} "
                f"--tls-cert {cert} --tls-key {key}"
            )
        for app in sync:
            note(f"run the sync: shipyard --root {lay.apps} sync {app} --every 30")
        return []
    if not conf_dir.is_dir():
        raise ProvisionError(
            f"--supervisor system: {conf_dir} does not exist",
            "install Debian's supervisor package (apt-get install supervisor) or use auto",
        )
    problems = owner.untrusted(conf_dir)
    if problems:
        raise ProvisionError(
            f"{conf_dir} can be changed by others ({problems[0]}): root's supervisord reads it",
            f"make {conf_dir} root's alone (chown root: and chmod go-w), then run again",
        )
    files = [
        (lay.supervisord_conf, supervisord_conf(lay, receiver, sync)),
        (conf_dir / f"shipyard-{lay.user}.conf", system_program(lay)),
    ]
    changes = write_files(lay, files, dry_run)
    user_conf_changed = f"write {lay.supervisord_conf}" in changes
    if changes and not dry_run:
        enabled = enable_supervisor_program()
        changes.append(enabled)
        if user_conf_changed and lay.supervisord_socket.exists():
            changes.append(enable_supervisor_program(lay.supervisord_socket, lay.user))
    return changes


def enable_supervisor_program(socket_path: Path = SUPERVISOR_SOCKET, user: str = "") -> str:
    """Tell a running supervisord to pick the new program up (reread + update); the deploy
    user's own one is asked by the deploy user (its socket is the user's)."""
    ctl = shutil.which("supervisorctl", path=PATH)
    if not ctl or not socket_path.exists():
        return "supervisord is not running: the program starts with it (service supervisor start)"
    as_user = ["runuser", "-u", user, "--"] if user else []
    result = subprocess.run(
        [*as_user, ctl, "-s", f"unix://{socket_path}", "update"], capture_output=True, text=True
    )
    if result.returncode:
        return f"supervisorctl update failed: {(result.stderr or result.stdout).strip()}"
    return "enabled it (supervisorctl update)"


# ---------------------------------------------------------------- the command


def main(args) -> int:
    """``shipyard provision`` (argparse namespace from the CLI)."""
    check_user_name(args.user)
    keys = read_keys(args.key or [])
    for app in [*(args.app or []), *(args.sync or [])]:
        check_app_name(app)
    if getattr(args, "port", None) is not None and not args.app:
        raise ProvisionError(
            "--port is the web port of an app", "give the app: --app NAME --port P"
        )
    if args.receiver:
        check_listen_address(args.receiver)
    if args.source and not (
        Path(args.source).exists() or re.match(r"^[A-Za-z0-9][\w.\-\[\],=<>!~ ]*$", args.source)
    ):
        raise ProvisionError(
            f"--source {args.source!r}: no such path and not a package requirement",
            "give a shipyard checkout, a wheel/sdist, or a requirement like shipyard==0.1.0",
        )
    require_root()
    options = Options(
        user=args.user,
        keys=keys,
        source=args.source,
        python=args.python,
        apps=args.app or [],
        supervisor=args.supervisor,
        dry_run=args.dry_run,
        receiver=args.receiver,
        sync=args.sync or [],
        proxy=getattr(args, "proxy", False),
        port=getattr(args, "port", None),
    )
    return Provisioner(options).provision()
