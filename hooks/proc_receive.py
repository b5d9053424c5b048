"""The proc-receive hook: git hands us the pushes to the deploy branch (and tags) before any
ref moves, and reports to the client what we answer for each.

Three jobs. Refuse cheap mistakes while nothing has changed yet (deleting the
deploy branch, a broken shipyard.toml or Procfile, an unknown push option).
Let ``git push production v1.2:main`` work for a tag, annotated or not, even
on a host with no deploy branch yet: git itself refuses to write a tag object
to a branch and reads ``v1.2:main`` as "create tag main" there, so we peel
the tag to its commit, move the branch ourselves, and report the branch and
commit back (``option refname``/``new-oid``). And run the deploy and answer
with its outcome: git ignores post-receive's exit status, but an ``ng`` from
this hook makes ``git push`` fail and leaves the pusher's tracking ref where
it was. The deploy itself runs detached (hooks/worker.py); this hook only
copies its log to the pusher (stderr reaches them as ``remote:`` lines, stdout
is git's pkt-line channel) and waits for the outcome.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from shipyard import fault_injection, history
from shipyard.app import App
from shipyard.config import (
    AppConfig,
    HostConfig,
    load_host_config,
    parse_app_config,
    parse_procfile,
)
from shipyard.errors import ShipyardError
from shipyard.guard import check_not_root, safe_umask
from shipyard.options import parse_options, waits
from shipyard.programs import check_counts, check_keeps_web
from shipyard.release import shared_env
from shipyard.repo import hook_app
from shipyard.report import escape
from shipyard.teardown import exit_now
from shipyard.venv import DETECTED

from . import worker

ZERO = "0" * 40


class PktLines:
    """git's pkt-line framing on our stdin/stdout, the little of it proc-receive speaks:
    length-prefixed lines and the flush-pkt that ends each list (``0000``).

    Our own few lines rather than dulwich's protocol module, whose import (with logging,
    hashlib and dulwich's object model) cost every push more than the rest of this hook.
    """

    def __init__(self, read: Callable[[int], bytes], write: Callable[[bytes], object]) -> None:
        self.read = read
        self.write = write

    def read_seq(self) -> list[bytes]:
        """The lines up to the next flush-pkt (a delim-pkt ends a list too)."""
        lines = []
        while True:
            head = self.read(4)
            try:
                size = int(head, 16) if len(head) == 4 else -1
            except ValueError:
                size = -1
            if size in (0, 1):
                return lines
            body = self.read(size - 4) if size >= 4 else b""
            if len(body) != size - 4:
                raise SystemExit(f"proc-receive: git sent a broken pkt-line ({head!r})")
            lines.append(body)

    def write_line(self, line: bytes | None) -> None:
        """One pkt-line; None: the flush-pkt."""
        self.write(b"0000" if line is None else b"%04x%s" % (len(line) + 4, line))


def git(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["git", *args], capture_output=True, text=True, errors="replace", check=check
    )


def read_objects(names: list[str]) -> list[tuple[str, bytes] | None]:
    """(type, content) of each object ``names`` names (None: there is none): one git process."""
    query = "".join(f"{name}\n" for name in names).encode()
    out = subprocess.run(
        ["git", "cat-file", "--batch"], input=query, capture_output=True, check=True
    ).stdout
    found: list[tuple[str, bytes] | None] = []
    pos = 0
    for _name in names:
        end = out.index(b"\n", pos)
        header = out[pos:end].split()  # "<oid> <type> <size>", or "<name> missing"
        pos = end + 1
        if header[-1] in (b"missing", b"ambiguous"):
            found.append(None)
            continue
        size = int(header[2])
        found.append((header[1].decode(), out[pos : pos + size]))
        pos += size + 1
    return found


def read_blobs(commit: str, names: list[str]) -> dict[str, bytes]:
    """The content of each of ``names`` that is a file in ``commit``: one git process for all."""
    return blobs_of(names, read_objects([f"{commit}:{name}" for name in names]))


def blobs_of(names: list[str], objects: list[tuple[str, bytes] | None]) -> dict[str, bytes]:
    """Each of ``names`` whose object (``read_objects``, in the same order) is a file."""
    return {name: o[1] for name, o in zip(names, objects, strict=True) if o and o[0] == "blob"}


def as_text(name: str, data: bytes) -> str:
    """A file of the commit as text; refuses one that is not UTF-8 text."""
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ShipyardError(
            f"{name}:{line}: not UTF-8 text (a binary file?)", f"write {name} as UTF-8 text"
        ) from None


@dataclass
class Pushed:
    """What a push sent for the branch, read at once: the commit, the tag it came as, the
    commit's parents (None: not read) and the files the checks read from it."""

    commit: str
    tag: str | None
    parents: list[str] | None
    blobs: dict[str, bytes]


def read_pushed(new: str, names: list[str]) -> Pushed:
    """The pushed object and the files ``names`` of its commit, by one git process: a commit
    (every push of a branch) needs no other; a tag is peeled by ``peel``."""
    first, *files = read_objects([new, *(f"{new}:{name}" for name in names)])
    blobs = blobs_of(names, files)
    if first is None or first[0] != "commit":
        commit, tag = peel(new, first[0] if first else "")
        return Pushed(commit, tag, None, blobs)
    headers = first[1].split(b"\n\n", 1)[0].split(b"\n")
    parents = [line[len(b"parent ") :].decode() for line in headers if line.startswith(b"parent ")]
    return Pushed(new, None, parents, blobs)


def peel(new: str, kind: str | None = None) -> tuple[str, str | None]:
    """(commit, tag name) for a pushed object; refuses trees, blobs and tags of those."""
    kind = git("cat-file", "-t", new).stdout.strip() if kind is None else kind
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


PARSERS = {"shipyard.toml": parse_app_config, "Procfile": parse_procfile}
CHECKED = [*PARSERS, *DETECTED]  # the files check_commit reads


def check_commit(app: App, commit: str, blobs: dict[str, bytes]) -> None:
    """Refuse a commit whose deploy would fail anyway, or take the app down by mistake.

    ``blobs``: the commit's files named in CHECKED that it has."""
    parsed = {
        name: parse(as_text(name, blobs[name]), name)
        for name, parse in PARSERS.items()
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


@dataclass
class Reply:
    """What we answer git for one pushed ref: ``ok`` (with options) or ``ng REASON``."""

    ref: str
    reason: str | None = None  # None: ok
    options: list[str] = field(default_factory=list)

    def lines(self) -> list[bytes]:
        if self.reason is not None:
            reason = escape(" ".join(self.reason.split()))  # one pkt-line, one line, shown
            return [f"ng {self.ref} {reason[:900]}".encode()]
        return [f"ok {self.ref}".encode(), *(f"option {o}".encode() for o in self.options)]


def compare_and_swap(ref: str, commit: str, old: str, message: str) -> subprocess.CompletedProcess:
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
        current = tip(ref)
        moved_behind = current and current != expected
        if (
            not moved_behind
            or git("merge-base", "--is-ancestor", current, commit, check=False).returncode
        ):
            return update
        expected = current
    return update


@dataclass
class Pending:
    """The deploy branch moved to ``commit``: the deploy this push now runs."""

    reply: Reply
    commit: str
    ref: str


def tip(ref: str) -> str | None:
    found = git("rev-parse", "--verify", "--quiet", ref, check=False).stdout.strip()
    return found or None


def move_branch(app: App, old: str, new: str, ref: str, tags: dict[str, str]) -> Pending:
    """Validate and apply one update of the deploy branch; the deploy it starts."""
    branch = ref.removeprefix("refs/heads/")
    if new == ZERO:
        raise ShipyardError(
            f"deleting the deploy branch {branch} is refused",
            f"to roll back, run `shipyard rollback {app.name}` on the host",
        )
    pushed = read_pushed(new, CHECKED)
    commit, tag = pushed.commit, pushed.tag
    check_commit(app, commit, pushed.blobs)
    update = compare_and_swap(ref, commit, old, f"push{' ' + tag if tag else ''}")
    if update.returncode:
        raise ShipyardError(f"could not move {branch}: {update.stderr.strip()}", "push again")
    fault_injection.point(app.run, "receive", "end")  # tests only: see shipyard/fault_injection.py
    # A lightweight tag is a bare commit on the wire: it has a name only when it is
    # pushed along (`git push production v1.2 v1.2:main`), as one of this push's refs.
    tag = tag or tags.get(commit)
    # The deploy worker picks this up (worker.pushed_tag). Written after the ref moved,
    # so a refused update never leaves a stale name behind.
    if tag:
        (app.run / "tags").mkdir(parents=True, exist_ok=True)
        (app.run / "tags" / commit).write_text(json.dumps({"tag": tag, "object": new}))
    reply = Reply(ref)
    if commit != new:
        reply.options.append(f"new-oid {commit}")
    if (
        ZERO not in (old, commit)
        and old not in (pushed.parents or ())  # a parent: a fast-forward, no need to ask git
        and git("merge-base", "--is-ancestor", old, commit, check=False).returncode
    ):
        reply.options.append("forced-update")
    return Pending(reply, commit, ref)


def tag_named_like_the_branch(
    app: App, old: str, new: str, ref: str, deploy_ref: str, branch_pushed: bool, tags: dict
) -> tuple[Reply, Pending | None]:
    """``refs/tags/<branch>``: on a host with no deploy branch, ``git push production v1.2:main``.

    With no branch yet, git reads an unqualified destination as the source's kind (a
    tag), so this is how a first push of a tag arrives: deploy it to the branch and
    tell the client the branch is what moved. Once the branch exists (or is pushed
    alongside), a tag of that name would make the branch ambiguous: refused.
    Deleting one is fine.
    """
    name = ref.removeprefix("refs/tags/")
    if new == ZERO:
        update = git("update-ref", "-d", ref, old, check=False)
        if update.returncode:
            raise ShipyardError(f"could not delete tag {name}: {update.stderr.strip()}")
        return Reply(ref), None
    if branch_pushed or tip(deploy_ref) or tip(ref):
        raise ShipyardError(
            f"refusing to create a tag named {name}: it would make the deploy branch ambiguous",
            f"to deploy a tag, push TAG:{name} (or TAG:refs/heads/{name}); "
            "name your own tag otherwise",
        )
    pending = move_branch(app, ZERO, new, deploy_ref, tags)
    pending.reply = Reply(ref, options=[f"refname {deploy_ref}", f"old-oid {ZERO}"])
    pending.reply.options.append(f"new-oid {pending.commit}")
    return pending.reply, pending


def pushed_tags(commands: list[list[str]], skip: str) -> dict[str, str]:
    """{commit: tag name} for the tags this push creates or moves (other than ``skip``)."""
    names: dict[str, str] = {}
    for _old, new, ref in commands:
        if ref.startswith("refs/tags/") and ref != skip and new != ZERO:
            with contextlib.suppress(ShipyardError, IndexError):
                names.setdefault(peel(new)[0], ref.removeprefix("refs/tags/"))
    return names


def deploy_refs(host: HostConfig) -> tuple[str, str]:
    """The refs a push deploys through: the deploy branch, and a tag of the same name."""
    return f"refs/heads/{host.branch}", f"refs/tags/{host.branch}"


def deploys(host: HostConfig, commands: list[list[str]]) -> bool:
    return any(ref in deploy_refs(host) for _old, _new, ref in commands)


def receive(
    app: App, host: HostConfig, commands: list[list[str]]
) -> tuple[list[Reply], Pending | None]:
    """Check and apply each ref of the push; other tags and refs go on to git itself."""
    deploy_ref, tag_ref = deploy_refs(host)
    tags = pushed_tags(commands, tag_ref) if deploys(host, commands) else {}
    replies, pending = [], None
    for old, new, ref in commands:
        try:
            if ref == deploy_ref:
                pending = move_branch(app, old, new, ref, tags)
                replies.append(pending.reply)
            elif ref == tag_ref:
                reply, moved = tag_named_like_the_branch(
                    app, old, new, ref, deploy_ref, any(r == deploy_ref for *_, r in commands), tags
                )
                pending = moved or pending
                replies.append(reply)
            else:  # any other tag: git stores it (post-receive says so)
                replies.append(Reply(ref, options=["fall-through"]))
        except ShipyardError as exc:
            replies.append(Reply(ref, str(exc)))
    return replies, pending


def ng_reason(app: App, number: int, entry: dict | None) -> str | None:
    """Why deploy ``number`` did not make this push live (None: it did)."""
    where = f"`shipyard log {app.name} {number}` on the host"
    if entry is None:
        return f"deploy #{number} ended without an outcome; see {where}, then push again"
    outcome = entry.get("outcome")
    if outcome == "live":
        return None
    error = " ".join(str(entry.get("error") or "").split())
    if len(error) > 300:
        error = error[:300] + "…"
    if outcome == "superseded":
        newer = str(entry.get("superseded_by") or "")[:7] or "deleted"
        return (
            f"deploy #{number} superseded: a newer push moved "
            f"{entry.get('ref', '').removeprefix('refs/heads/')} to {newer} before this one "
            f"started, and that push's deploy decides what is live (nothing was deployed for "
            f"this one); see `shipyard status {app.name}`, and push again to deploy this commit"
        )
    if outcome == "interrupted":
        at = f" at {entry['failed_phase']}" if entry.get("failed_phase") else ""
        went = (
            "its release is live here but was not completed"
            if entry.get("release") and entry.get("release") == app.live_release()
            else "nothing of it went live"
        )
        return (
            f"deploy #{number} interrupted{at}: {went}; "
            f"`shipyard deploy {app.name}` on the host deploys it again (see {where})"
        )
    if entry.get("failed_phase"):
        return f"deploy #{number} failed at {entry['failed_phase']}: {error}"
    return f"deploy #{number} {outcome}: {error or 'see ' + where}"


def run_deploy(
    app: App, host: HostConfig, pending: Pending, raw: list[str], spare: worker.Spare | None
) -> None:
    """Deploy what the push moved the branch to; turn the reply into its outcome."""
    options = parse_options(raw)
    number = history.claim_number(app)
    err = sys.stderr.buffer
    if not waits(options, host):
        worker.start(app, number, pending.commit, pending.ref, raw, spare)
        say(
            err,
            f"shipyard ▸ deploy #{number} started; the push does not wait for it (no-wait): "
            f"`shipyard log {app.name} {number} --follow` on the host follows it",
        )
        return
    entry = worker.deploy(app, number, pending.commit, pending.ref, raw, err, spare)
    reason = ng_reason(app, number, entry)
    if reason is not None:
        pending.reply.reason = reason
        pending.reply.options = []


def say(out, text: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        out.write(f"{text}\n".encode())
        out.flush()


def _write(data: bytes) -> None:
    # git waits for each reply before it sends more: never leave one in a buffer
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def answer(proto: PktLines, replies: list[Reply]) -> None:
    """Our reply for every ref, in git's order; the pusher may be gone by now."""
    with contextlib.suppress(OSError, ValueError):
        for reply in replies:
            for line in reply.lines():
                proto.write_line(line)
        proto.write_line(None)


def main() -> None:
    """The hook's body, then its end: git reports the push once this process is gone."""
    serve()
    exit_now(0)


def serve() -> None:
    proto = PktLines(sys.stdin.buffer.read, _write)
    proto.read_seq()
    proto.write_line(b"version=1\0push-options")
    proto.write_line(None)
    commands = [line.decode().strip().split(" ", 2) for line in proto.read_seq()]
    raw_options = [line.decode().rstrip("\n") for line in proto.read_seq()]
    app = hook_app()
    safe_umask()
    try:
        parse_options(raw_options)
        host = load_host_config(app.config_file)
        check_not_root(app, host)
    except ShipyardError as exc:
        answer(proto, [Reply(ref, str(exc)) for _old, _new, ref in commands])
        return
    # the deploy's worker, forked now: its imports run while the push is checked
    spare = worker.prefork() if deploys(host, commands) else None
    replies, pending = receive(app, host, commands)
    if pending is not None:
        run_deploy(app, host, pending, raw_options, spare)
    elif spare is not None:
        spare.close()
    answer(proto, replies)


if __name__ == "__main__":
    main()
