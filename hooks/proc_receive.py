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
from collections.abc import Iterator

from shipyard.app import App
from shipyard.config import load_host_config, parse_app_config, parse_procfile
from shipyard.errors import ShipyardError
from shipyard.options import parse_options
from shipyard.provision.supervisor import check_counts
from shipyard.repo import hook_app

ZERO = "0" * 40


def git(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=check)


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


def check_commit(commit: str) -> None:
    """Refuse a commit whose shipyard.toml or Procfile would fail the deploy anyway."""
    parsed = {}
    for name, parse in (("shipyard.toml", parse_app_config), ("Procfile", parse_procfile)):
        shown = git("show", f"{commit}:{name}", check=False)
        if shown.returncode == 0:
            parsed[name] = parse(shown.stdout, name)
    config = parsed.get("shipyard.toml")
    if config is not None and config.processes:
        check_counts(parsed.get("Procfile", {}), config.processes, "shipyard.toml")


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
    check_commit(commit)
    update = git(
        "update-ref",
        "-m",
        f"push{' ' + tag if tag else ''}",
        ref,
        commit,
        old if old != ZERO else "",
        check=False,
    )
    if update.returncode:
        raise ShipyardError(f"could not move {branch}: {update.stderr.strip()}", "push again")
    # Only an annotated tag names itself; the deploy worker picks this up (cli.pushed_tag).
    # Written after the ref moved, so a refused update never leaves a stale name behind.
    if tag:
        (app.run / "tags").mkdir(parents=True, exist_ok=True)
        (app.run / "tags" / commit).write_text(json.dumps({"tag": tag, "object": new}))
    return commit, tag


class PktLines:
    """git's pkt-line framing on stdin/stdout: a 4-hex-digit length (itself included), then
    the data; ``0000`` (flush) ends a sequence. Small enough not to import a git library
    into every push."""

    def __init__(self, read=sys.stdin.buffer.read, out=sys.stdout.buffer) -> None:
        self.read = read
        self.out = out

    def read_pkt_seq(self) -> Iterator[bytes]:
        while True:
            head = self.read(4)
            if len(head) < 4:
                raise ShipyardError("git closed the hook's input mid-conversation")
            size = int(head, 16)
            if size == 0:
                return
            yield self.read(size - 4)

    def write_pkt_line(self, data: bytes | None) -> None:
        # git waits for each reply before it sends more: never leave one in a buffer
        self.out.write(b"0000" if data is None else b"%04x" % (len(data) + 4) + data)
        self.out.flush()


def main() -> None:
    proto = PktLines()
    list(proto.read_pkt_seq())
    proto.write_pkt_line(b"version=1\0push-options")
    proto.write_pkt_line(None)
    commands = [line.decode().strip().split(" ", 2) for line in proto.read_pkt_seq()]
    raw_options = [line.decode().rstrip("\n") for line in proto.read_pkt_seq()]
    app = hook_app()
    try:
        options = parse_options(raw_options)
        load_host_config(app.config_file)
    except ShipyardError as exc:
        for _old, _new, ref in commands:
            proto.write_pkt_line(f"ng {ref} {exc}".encode())
        proto.write_pkt_line(None)
        return
    for old, new, ref in commands:
        try:
            commit, _tag = handle(app, old, new, ref, options)
        except ShipyardError as exc:
            proto.write_pkt_line(f"ng {ref} {exc}".encode())
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
