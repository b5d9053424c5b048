"""The proc-receive hook: git hands us the pushes to the deploy branch before any ref moves.

Two jobs. Refuse cheap mistakes while nothing has changed yet (deleting the
deploy branch, a broken shipyard.toml or Procfile, an unknown push option).
And let ``git push production v1.2:main`` work for an annotated tag: git
itself refuses to write a tag object to a branch, so we peel it to its commit,
move the branch there ourselves, and report the commit back to the client.
"""

from __future__ import annotations

import json
import subprocess
import sys

from dulwich.protocol import Protocol

from shipyard import faults
from shipyard.app import App
from shipyard.config import AppConfig, load_host_config, parse_app_config, parse_procfile
from shipyard.errors import ShipyardError
from shipyard.guard import check_not_root, safe_umask
from shipyard.options import parse_options
from shipyard.provision.supervisor import check_counts, check_keeps_web
from shipyard.release import shared_env
from shipyard.repo import hook_app
from shipyard.report import escape
from shipyard.venv import DETECTED

ZERO = "0" * 40


def git(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["git", *args], capture_output=True, text=True, errors="replace", check=check
    )


def read_blobs(commit: str, names: list[str]) -> dict[str, bytes]:
    """The content of each of ``names`` that is a file in ``commit``: one git process for all."""
    query = "".join(f"{commit}:{name}\n" for name in names).encode()
    out = subprocess.run(
        ["git", "cat-file", "--batch"], input=query, capture_output=True, check=True
    ).stdout
    found, pos = {}, 0
    for name in names:
        end = out.index(b"\n", pos)
        header = out[pos:end].split()  # "<oid> <type> <size>", or "<name> missing"
        pos = end + 1
        if header[-1] not in (b"missing", b"ambiguous"):
            size = int(header[2])
            if header[1] == b"blob":
                found[name] = out[pos : pos + size]
            pos += size + 1
    return found


def as_text(name: str, data: bytes) -> str:
    """A file of the commit as text; refuses one that is not UTF-8 text."""
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ShipyardError(
            f"{name}:{line}: not UTF-8 text (a binary file?)", f"write {name} as UTF-8 text"
        ) from None


def peel(new: str) -> tuple[str, str | None]:
    """(commit, tag name) for a pushed object; refuses trees, blobs and tags of those."""
    kind = git("cat-file", "-t", new).stdout.strip()
    tag = None
    if kind == "tag":
        tag = git("cat-file", "tag", new).stdout.split("\ntag ", 1)[1].split("\n", 1)[0]
        commit = git("rev-parse", "--verify", "--quiet", f"{new}^{{commit}}", check=False)
        if commit.returncode:
            raise ShipyardError(
                f"tag {tag} does not point at a commit",
                "push a tag of a commit (git tag -a NAME COMMIT)",
            )
        return commit.stdout.strip(), tag
    if kind != "commit":
        raise ShipyardError(f"{new[:7]} is a {kind}, not a commit", "push a branch or a tag")
    return new, tag


def check_commit(app: App, commit: str) -> None:
    """Refuse a commit whose deploy would fail anyway, or take the app down by mistake."""
    parsers = {"shipyard.toml": parse_app_config, "Procfile": parse_procfile}
    blobs = read_blobs(commit, [*parsers, *DETECTED])
    parsed = {
        name: parse(as_text(name, blobs[name]), name)
        for name, parse in parsers.items()
        if name in blobs
    }
    config = parsed.get("shipyard.toml")
    if config is not None and config.processes:
        check_counts(parsed.get("Procfile", {}), config.processes, "shipyard.toml")
    check_requirements(commit, config, blobs)
    if "Procfile" not in parsed:
        check_keeps_processes(app, commit)
    check_keeps_web(app, parsed.get("Procfile"), config.processes if config else {}, commit)
    shared_env(app)  # a host .env that does not parse would fail the deploy at checkout


def check_requirements(commit: str, config: AppConfig | None, blobs: dict[str, bytes]) -> None:
    """The venv phase needs something to install; say so before the branch moves."""
    if config and config.requirements:
        if config.requirements in blobs or read_blobs(commit, [config.requirements]):
            return
        raise ShipyardError(
            f"shipyard.toml: requirements file {config.requirements!r} is not in the commit",
            "add it, or point `requirements` at the right file",
        )
    if any(name in blobs for name in DETECTED):
        return
    raise ShipyardError(
        "no requirements: the commit has no uv.lock, requirements.txt or pyproject.toml",
        "add a requirements.txt listing what the app needs (e.g. django, gunicorn)",
    )


def check_keeps_processes(app: App, commit: str) -> None:
    """A commit without a Procfile would stop every process the app runs: refuse it."""
    try:
        state = json.loads((app.run / "processes.json").read_text())
    except (OSError, ValueError):
        return
    running = sorted({p.get("type", "?") for p in state.get("programs", [])})
    if running:
        raise ShipyardError(
            f"{commit[:7]} has no Procfile: deploying it would stop {', '.join(running)}",
            "restore the Procfile (git checkout HEAD~1 -- Procfile); to stop a process type "
            "on purpose, set its count to 0 under [processes] in shipyard.toml",
        )


def guard_tag(app: App, old: str, new: str, ref: str) -> tuple[str, str | None]:
    """A tag named like the deploy branch: deleting one is fine, creating one is refused."""
    name = ref.removeprefix("refs/tags/")
    if new != ZERO:
        raise ShipyardError(
            f"refusing to create a tag named {name}: it would make the deploy branch ambiguous",
            f"to deploy a tag to a host with no {name} branch yet, push TAG:refs/heads/{name}",
        )
    update = git("update-ref", "-d", ref, old, check=False)
    if update.returncode:
        raise ShipyardError(f"could not delete tag {name}: {update.stderr.strip()}")
    return new, None


def move_branch(ref: str, commit: str, old: str, message: str) -> subprocess.CompletedProcess:
    """Compare-and-swap ``ref`` from ``old`` to ``commit``.

    If another push moved it meanwhile to an ancestor of ``commit`` (two CI jobs for
    successive commits), this push is still a fast-forward: move it from there, and let
    the deploy lock order the two deploys. Anything else stays refused.
    """
    expected = old
    for _ in range(5):
        cas = "" if expected == ZERO else expected
        update = git("update-ref", "-m", message, ref, commit, cas, check=False)
        if not update.returncode:
            return update
        tip = git("rev-parse", "--verify", "--quiet", ref, check=False).stdout.strip()
        moved_behind = tip and tip != expected
        if (
            not moved_behind
            or git("merge-base", "--is-ancestor", tip, commit, check=False).returncode
        ):
            return update
        expected = tip
    return update


def handle(
    app: App, old: str, new: str, ref: str, options: dict[str, str]
) -> tuple[str, str | None]:
    """Validate and apply one update of the deploy branch; returns (commit, tag)."""
    if ref.startswith("refs/tags/"):
        return guard_tag(app, old, new, ref)
    branch = ref.removeprefix("refs/heads/")
    if new == ZERO:
        raise ShipyardError(
            f"deleting the deploy branch {branch} is refused",
            f"to roll back, run `shipyard rollback {app.name}` on the host",
        )
    commit, tag = peel(new)
    check_commit(app, commit)
    update = move_branch(ref, commit, old, f"push{' ' + tag if tag else ''}")
    if update.returncode:
        raise ShipyardError(f"could not move {branch}: {update.stderr.strip()}", "push again")
    faults.point(app.run, "receive", "end")  # tests only: see shipyard/faults.py
    # Only an annotated tag names itself; the deploy worker picks this up (cli.pushed_tag).
    # Written after the ref moved, so a refused update never leaves a stale name behind.
    if tag:
        (app.run / "tags").mkdir(parents=True, exist_ok=True)
        (app.run / "tags" / commit).write_text(json.dumps({"tag": tag, "object": new}))
    return commit, tag


def _write(data: bytes) -> None:
    # git waits for each reply before it sends more: never leave one in a buffer
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def main() -> None:
    proto = Protocol(sys.stdin.buffer.read, _write)
    list(proto.read_pkt_seq())
    proto.write_pkt_line(b"version=1\0push-options")
    proto.write_pkt_line(None)
    commands = [line.decode().strip().split(" ", 2) for line in proto.read_pkt_seq()]
    raw_options = [line.decode().rstrip("\n") for line in proto.read_pkt_seq()]
    app = hook_app()
    safe_umask()
    try:
        options = parse_options(raw_options)
        check_not_root(app, load_host_config(app.config_file))
    except ShipyardError as exc:
        for _old, _new, ref in commands:
            proto.write_pkt_line(f"ng {ref} {escape(str(exc))}".encode())
        proto.write_pkt_line(None)
        return
    for old, new, ref in commands:
        try:
            commit, _tag = handle(app, old, new, ref, options)
        except ShipyardError as exc:
            proto.write_pkt_line(f"ng {ref} {escape(str(exc))}".encode())
            continue
        proto.write_pkt_line(f"ok {ref}".encode())
        if commit != new:
            proto.write_pkt_line(f"option new-oid {commit}".encode())
        if (
            ZERO not in (old, commit)
            and git("merge-base", "--is-ancestor", old, commit, check=False).returncode
        ):
            proto.write_pkt_line(b"option forced-update")
    proto.write_pkt_line(None)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
