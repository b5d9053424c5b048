"""The app's bare repo: creating the layout, wiring the hooks, reading pushed commits."""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path

from .app import App
from .config import HostConfig, load_host_config
from .errors import AppError

GC_TIMEOUT = 3600.0  # seconds for ``git gc --auto`` after a deploy (nothing waits for it)
HOOKS = {
    "proc-receive": "shipyard.hooks.proc_receive",
    "post-receive": "shipyard.hooks.post_receive",
}
HOST_CONFIG = """\
# Host-side settings for {name}; the app's own shipyard.toml lives in its repo.
branch = "{branch}"
keep = 5
installer = "uv"
port = {port}
{extra}"""


# post-receive has nothing to say about the deploy branch (proc-receive reported it), the
# only ref of most pushes: a shell wrapper starts Python only for a tag or another branch.
# The refs are read by the shell itself (no `cat`, no subshell): two process starts less.
POST_RECEIVE = """#!/bin/sh
# shipyard: {module} for tags and branches this app does not deploy
python={python}
deploy=
for r in $(git config --get-all receive.procReceiveRefs); do
  case "$r" in refs/heads/*) deploy=$r ;; esac
done
input= other=
while read -r old new ref || [ -n "$ref" ]; do
  input="$input$old $new $ref
"
  case "$new" in *[!0]*) [ "$ref" = "$deploy" ] || other=1 ;; esac
done
[ -n "$other" ] || exit 0
printf '%s' "$input" | exec "$python" -c 'from {module} import main; main()'
"""


def hook_script(module: str) -> str:
    """A hook is the interpreter shipyard is installed in, running one of its hook modules."""
    if module == HOOKS["post-receive"]:
        return POST_RECEIVE.format(module=module, python=shlex.quote(sys.executable))
    return f"#!{sys.executable}\nfrom {module} import main\nmain()\n"


def hook_interpreter(text: str) -> str:
    """The Python a hook script runs: its ``#!`` line's, or the one its shell wrapper names."""
    lines = text.splitlines()
    first = lines[0] if lines else ""
    if first == "#!/bin/sh":
        named = next((ln[len("python=") :] for ln in lines if ln.startswith("python=")), "")
        return (shlex.split(named) or ["/bin/sh"])[0]  # no python=: not shipyard's wrapper
    return first[2:].strip().split()[0] if first.startswith("#!") and first[2:].strip() else ""


def create(
    app: App, branch: str | None = None, port: int | None = None, allow_root: bool = False
) -> list[str]:
    """Create or repair the app's layout, bare repo and hooks. Returns what it changed.

    ``port`` on an existing app changes its web port: the next deploy moves the processes;
    ``branch`` changes the branch whose pushes deploy (default for a new app: main).
    """
    import git

    if port is not None and not 0 < port < 65536:
        raise AppError(f"--port {port}: a port is 1-65535", "e.g. --port 8001")
    if branch is not None and (
        not branch
        or git.Git().execute(["git", "check-ref-format", "--branch", branch], with_exceptions=False)
        != branch
    ):
        raise AppError(f"--branch {branch!r} is not a branch name", "e.g. --branch main")
    changed: list[str] = []
    if app.dir.exists() and not app.exists() and any(app.dir.iterdir()):
        known = {
            "repo.git",
            "shipyard.toml",
            "releases",
            "venvs",
            "shared",
            "current",
            "deploys",
            "run",
        }
        if not {p.name for p in app.dir.iterdir()} & known:
            raise AppError(
                f"{app.dir} exists and is not a shipyard app",
                "choose another app name or --root, or move that directory away",
            )
    for path in (app.releases, app.venvs, app.shared, app.deploys, app.run):
        if not path.is_dir():
            path.mkdir(parents=True)
            changed.append(f"created {path.relative_to(app.root)}/")
    if not (app.repo / "HEAD").is_file():
        git.Repo.init(app.repo, bare=True, initial_branch=branch or "main")
        changed.append(f"created bare repo {app.repo.relative_to(app.root)}")
    root_note = "# deploys run as root: only for throwaway hosts and tests\nallow_root = true\n"
    if not app.config_file.is_file():
        text = HOST_CONFIG.format(
            name=app.name,
            branch=branch or "main",
            port=port or 8000,
            extra=root_note if allow_root else "",
        )
        # 0600: it may get the receivers' secret, which must not be readable by others
        fd = os.open(app.config_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        changed.append("wrote shipyard.toml" + (" (allow_root = true)" if allow_root else ""))
    host = load_host_config(app.config_file)
    if allow_root and not host.allow_root:  # asked for again on an app made without it
        set_top_level(app.config_file, "allow_root", root_note)
        host = load_host_config(app.config_file)
        changed.append("set allow_root = true in shipyard.toml")
    if port is not None and port != host.port:
        was = host.port
        set_top_level(app.config_file, "port", f"port = {port}\n")
        host = load_host_config(app.config_file)
        live = " (the next deploy moves the processes: push, or `shipyard deploy`)"
        changed.append(f"set port = {port} in shipyard.toml, was {was}{live}")
    if branch is not None and branch != host.branch:
        was = host.branch
        set_top_level(app.config_file, "branch", f'branch = "{branch}"\n')
        git.Repo(app.repo).git.symbolic_ref("HEAD", f"refs/heads/{branch}")
        host = load_host_config(app.config_file)
        changed.append(f"set branch = {branch!r} in shipyard.toml, was {was!r} (its pushes deploy)")
    changed += configure(app, host)
    changed += install_hooks(app)
    return changed


def set_top_level(path: Path, key: str, note: str) -> None:
    """Set a top-level key (above any [table]) to the lines of ``note``, atomically."""
    lines = [ln for ln in path.read_text().splitlines() if ln.split("=")[0].strip() != key]
    first_table = next((i for i, ln in enumerate(lines) if ln.lstrip().startswith("[")), len(lines))
    lines[first_table:first_table] = note.rstrip("\n").splitlines()
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.rename(tmp, path)


def configure(app: App, host: HostConfig) -> list[str]:
    import git

    wanted = {
        ("receive", "advertisePushOptions"): "true",
        ("receive", "denyDeletes"): "false",
        ("receive", "denyNonFastForwards"): "false",
        ("core", "logAllRefUpdates"): "true",
        # receive-pack's `gc --auto` comes before the pusher's answer: ``collect_garbage``
        # runs it after the answer instead
        ("receive", "autogc"): "false",
    }
    repo = git.Repo(app.repo)
    changed = []
    with repo.config_writer("repository") as config:
        for (section, option), value in wanted.items():
            current = (
                config.get_value(section, option) if config.has_option(section, option) else ""
            )
            if str(current).lower() != value.lower():
                config.set_value(section, option, value)
                changed.append(f"set {section}.{option} = {value}")
    changed += guard_branch_name(app, host)
    return changed


def git_env() -> dict[str, str]:
    """This process's environment without git's variables (a hook's GIT_DIR, GIT_QUARANTINE_PATH,
    …): a git command run from a hook acts on the repo it names, not on the push's."""
    return {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}


def collect_garbage(app: App) -> str:
    """``git gc --auto`` on the bare repo, once a deploy's answer is out (receive.autogc is
    off: receive-pack would run it before): packs the loose objects pushes leave when there
    are enough of them, else returns at once. What it said, if it failed; '' otherwise."""
    try:
        ran = subprocess.run(
            ["git", "--git-dir", str(app.repo), "gc", "--auto", "--quiet"],
            capture_output=True, env=git_env(), timeout=GC_TIMEOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return "" if ran.returncode == 0 else ran.stderr.decode(errors="replace").strip()


OID_LENGTHS = (40, 64)  # SHA-1 and SHA-256 object ids, in hex
HEX = frozenset(b"0123456789abcdef")


def loose_ref(git_dir: Path, ref: str) -> str | None:
    """The object id in ``ref``'s own file, as git reads a loose ref; None where git must be
    asked instead: no such file (a packed ref, none at all, another ref storage), a symbolic
    ref, anything but one id on one line. A ``git rev-parse`` is a process start, and a
    rollback asked it twice before its answer."""
    if not ref.startswith("refs/") or ".." in ref.split("/"):
        return None
    try:
        data = (git_dir / ref).read_bytes()
    except OSError:
        return None
    oid = data.removesuffix(b"\n")
    if len(oid) not in OID_LENGTHS or not HEX.issuperset(oid):
        return None
    return oid.decode()


def has_tags(git_dir: Path) -> bool:
    """Whether the repo may hold a tag (False only when it surely holds none): a loose tag,
    or a packed one, or a ref storage other than files, where git must be asked."""
    if (git_dir / "reftable").exists():
        return True
    for _dirpath, _dirs, files in os.walk(git_dir / "refs" / "tags"):
        if files:
            return True
    try:
        with open(git_dir / "packed-refs", "rb") as packed:
            return any(b" refs/tags/" in line for line in packed)
    except FileNotFoundError:
        return False
    except OSError:
        return True


def proc_receive_refs(host: HostConfig) -> list[str]:
    """What receive-pack hands to proc-receive: every tag, and the deploy branch."""
    return ["refs/tags", f"refs/heads/{host.branch}"]


def guard_branch_name(app: App, host: HostConfig) -> list[str]:
    """Hand pushes of the deploy branch and of tags to proc-receive.

    On a host with no deploy branch yet, git reads ``git push production v1.2:main``
    as "create tag main" (an unqualified destination takes the source's kind):
    proc-receive deploys it to the branch instead. Other tags it hands back to git
    (``fall-through``), after noting which pushed commit they name.
    """
    import git

    wanted = proc_receive_refs(host)
    repo = git.Repo(app.repo)
    try:
        current = repo.git.config("--get-all", "receive.procReceiveRefs").split()
    except git.GitCommandError:
        current = []
    if current == wanted:
        return []
    if current:
        repo.git.config("--unset-all", "receive.procReceiveRefs")
    for value in wanted:
        repo.git.config("--add", "receive.procReceiveRefs", value)
    return [f"set receive.procReceiveRefs = {', '.join(wanted)}"]


def install_hooks(app: App) -> list[str]:
    changed = []
    hooks = app.repo / "hooks"
    hooks.mkdir(exist_ok=True)
    for name, module in HOOKS.items():
        path = hooks / name
        script = hook_script(module)
        current = path.read_text() if path.is_file() else None
        if current != script or not os.access(path, os.X_OK):
            tmp = path.with_suffix(".tmp")
            tmp.write_text(script)
            tmp.chmod(tmp.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
            os.rename(tmp, path)
            changed.append(f"installed hooks/{name}")
    return changed


def remote_lines(app: App) -> list[str]:
    user = os.environ.get("USER") or "deploy"
    home = Path.home()
    ssh_path = app.repo.relative_to(home) if app.repo.is_relative_to(home) else app.repo
    return [
        f"git remote add production {app.repo}",
        f"git remote add production ssh://{user}@HOST/{'~/' if ssh_path != app.repo else ''}"
        f"{str(ssh_path).lstrip('/')}",
    ]


def hook_app() -> App:
    """The app whose hook is running: git runs hooks with the bare repo as GIT_DIR or cwd."""
    return App.from_repo(os.environ.get("GIT_DIR") or os.getcwd())
