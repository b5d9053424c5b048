"""A deploy: a short list of named phases, each with one job and, where it changes
what is live, an undo.

    checkout → link → venv → data → build → prepare-peers → migrate → release → data-check
             → switch → restart → verify → post-migrate → finish

(with peers, switch → restart → verify run on every host as one ``rollout``: peers.py)

Phases run in order; when one fails, the undos of those that ran are called in
reverse (``revert``), the branch is set back to the live commit so a plain
re-push retries, and the last line says what failed and what is still live.
A phase that runs once the new release is live and verified (post-migrate) is
not fatal: its failure is reported and recorded, and the new release stays.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import (
    build,
    cron,
    data,
    faults,
    history,
    lock,
    migrate,
    notify,
    peers,
    proxy,
    release,
    supervise,
    venv,
)
from .app import App
from .config import AppConfig, HostConfig, load_app_config, load_procfile
from .errors import PhaseError, ShipyardError
from .report import Masker, Reporter, Skip

ZERO = "0" * 40


@dataclass
class Deploy:
    """Everything one deploy knows; phases read it and fill it in."""

    app: App
    host: HostConfig
    number: int
    sha: str
    ref: str
    out: Reporter
    pusher: str = "unknown"
    tag: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    kind: str = "push"  # push | deploy (`shipyard deploy`) | rollback
    release_id: str = ""  # preset: make exactly this kept release live (a rollback)
    notes: list[str] = field(default_factory=list)  # warnings shown under the title
    reused: bool = False
    config: AppConfig = field(default_factory=AppConfig)
    procfile: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    previous: str | None = None
    venv_key: str | None = None
    migrations: list[str] = field(default_factory=list)
    migrations_known: bool = True  # False: a migrate command ran that cannot list what it did
    problems: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    manifest: release.Manifest | None = None
    processes: dict = field(default_factory=dict)  # supervise: what ran before, what runs now
    cluster: Any = None  # peers.Cluster while peers are prepared and switched
    switched_at: float | None = None  # wall clock when `current` moved (switch skew)
    journal: lock.Held | None = None  # the deploy lock's note: how far this deploy got
    recovery: dict | None = None  # set when this run completes an interrupted deploy
    maintenance_was_on: bool = False  # `-o maintenance` found the page on: leave it on
    committed: bool = True  # False on a peer: the other hosts may still send it back
    peer: bool = False  # run by a receiver for its primary: only jobs naming this host (cron.py)

    @property
    def release(self) -> Path:
        return self.app.release_dir(self.release_id)

    @property
    def short(self) -> str:
        label = f"{self.sha[:7]} ({self.tag})" if self.tag else self.sha[:7]
        return label


# --- the phases -------------------------------------------------------------


def checkout(d: Deploy) -> str:
    if d.kind == "rollback":  # a rollback names its release; it must still be there and good
        problem = release.unusable(d.app, d.release_id)
        if problem:
            raise PhaseError(problem, f"see `shipyard releases {d.app.name}`")
        kept = d.release_id
    elif d.release_id:  # a peer builds the release id its primary chose (peers.py)
        m = release.Manifest.load(d.release) if d.release.is_dir() else None
        kept = d.release_id if m and m.sha == d.sha and m.state in release.GOOD_STATES else None
    else:
        kept = release.find_good(d.app, d.sha)
    if kept:
        d.release_id, d.reused = kept, True
        d.manifest = release.Manifest.load(d.release)
        d.venv_key = d.manifest.venv if d.manifest else None
    else:
        d.release_id = d.release_id or release.new_release_id(d.sha)
        if d.release.exists() and d.release_id != d.app.live_release():
            # a half-made release of this id, e.g. by a deploy of this commit killed this second
            release.remove(d.app, d.release_id)
        release.checkout(d.app, d.sha, d.release_id)
        d.manifest = release.Manifest(
            sha=d.sha,
            ref=d.ref,
            release=d.release_id,
            deploy=d.number,
            pusher=d.pusher,
            created=time.time(),
            tag=d.tag,
        )
        d.manifest.save(d.release)
    d.config = load_app_config(d.release)
    d.procfile = load_procfile(d.release)
    d.env = release.shared_env(d.app)
    d.out.mask = d.out.mask.__class__(d.env)
    if d.reused:
        return f"reused releases/{d.release_id} (already built)"
    return f"{release.count_files(d.release)} files → releases/{d.release_id}"


def discard(d: Deploy) -> None:
    if d.release_id and not d.reused:
        release.remove(d.app, d.release_id)


def link(d: Deploy) -> str:
    if d.reused:
        return Skip("reused release")
    linked = release.link_shared(d.app, d.release, d.config.shared)
    return ", ".join(linked) if linked else Skip("no shared paths present yet")


def build_venv(d: Deploy) -> str:
    if d.reused:
        return Skip(f"reused {(d.venv_key or '?')[:6]} (release already built)")
    the_plan = venv.plan(d.release, d.config, d.host.installer)
    d.venv_key, reused = venv.ensure(d.app, d.release, the_plan)
    d.manifest.venv = d.venv_key
    d.manifest.save(d.release)
    if reused:
        return f"reused {d.venv_key[:6]} (requirements unchanged)"
    note = venv.carried() if the_plan.installer == "uv" else ""
    note = f" ({note})" if note else ""
    return (
        f"built {d.venv_key[:6]} with {the_plan.installer} from {the_plan.requirements.name}{note}"
    )


def build_steps(d: Deploy) -> str:
    if d.reused:
        return Skip("reused release")
    if not d.config.build:
        return Skip("no build steps")
    live = d.app.live_release()
    before = release.Manifest.load(d.app.release_dir(live)) if live else None
    ran, reused = 0, 0
    d.manifest.builds = {}
    for step in d.config.build:
        key = build.input_key(step, d.release, d.venv_key) if step.cacheable else None
        if (
            key
            and before
            and (before.builds or {}).get(step.run) == key
            and build.reuse_outputs(step, d.app.release_dir(live), d.release)
        ):
            reused += 1
        else:
            run_in_release(d, step.run, f"build step `{step.run}`")
            ran += 1
        if key:
            d.manifest.builds[step.run] = key
    d.manifest.save(d.release)
    return f"{ran} ran" + (f", {reused} reused (inputs unchanged)" if reused else "")


def switch(d: Deploy) -> str:
    # what going back needs, written before current moves: whoever undoes this switch (this
    # process, a receiver asked to revert, a recovery) reads it from the release's manifest
    if d.manifest is not None:
        d.manifest.undo = {"deploy": d.number, "previous": d.app.live_release()}
        d.manifest.save(d.release)
    d.previous = release.switch(d.app, d.release_id)
    d.switched_at = time.time()
    return f"current → {d.release_id}{cron.apply(d, d.release_id)}"


def load_undo(d: Deploy) -> None:
    """Take over what the switch and restart that made ``d.release_id`` live wrote down for
    their undo (``switch_back``, ``restart_previous``), in another process than theirs."""
    undo = (d.manifest.undo if d.manifest else None) or {}
    if "previous" in undo:
        d.previous = undo["previous"]
    supervise.load_undo(d, undo)


def switch_back(d: Deploy) -> None:
    if d.previous:
        release.switch(d.app, d.previous)
    elif d.app.current.is_symlink():
        d.app.current.unlink()
    cron.apply(d, d.previous)  # the jobs of what is live again


def finish(d: Deploy) -> str:
    d.manifest.state = "good"
    d.manifest.live_at = time.time()
    if d.manifest.migrations is None and not d.reused and d.migrations_known:
        d.manifest.migrations = list(d.migrations)  # None stays: unknown
    d.manifest.save(d.release)
    keep = d.host.keep if d.config.keep is None else min(d.host.keep, d.config.keep)
    # a peer keeps the release it would go back to until the cluster has committed
    protect = {d.previous} if d.previous and not d.committed else set()
    removed = release.prune(d.app, keep, protect)
    used = {m.venv for _, m in release.releases(d.app) if m and m.venv}
    venv.prune(d.app, used)
    return f"kept {keep}, pruned {len(removed)}" if removed else f"kept {keep}"


@dataclass(frozen=True)
class Phase:
    name: str
    run: Callable[[Deploy], str]
    undo: Callable[[Deploy], None] | None = None
    fatal: bool = True  # False: a failure is reported, the deploy goes on


PHASES = [
    Phase("checkout", checkout, discard),
    Phase("link", link),
    Phase("venv", build_venv),
    Phase("data", data.link),
    Phase("build", build_steps),
    Phase("prepare-peers", peers.prepare, peers.abort),
    Phase("migrate", migrate.apply),
    Phase("release", supervise.release_command),
    Phase("data-check", data.check),
    Phase("switch", switch, switch_back),
    Phase("restart", supervise.restart, supervise.restart_previous),
    Phase("verify", supervise.verify),
    Phase("post-migrate", migrate.post_apply, fatal=False),
    Phase("finish", finish),
]


# --- running them -----------------------------------------------------------


def with_options(d: Deploy, phases: list[Phase]) -> list[Phase]:
    """``-o maintenance``: the maintenance page from before ``migrate`` until ``verify`` (or
    the rollout) passed; turning it on is undone with the deploy."""
    if "maintenance" not in d.options:
        return phases
    out = []
    for phase in phases:
        if phase.name == "migrate":
            out.append(Phase("maintenance", proxy.maintenance_start, proxy.maintenance_undo))
        out.append(phase)
        if phase.name in ("verify", "rollout"):
            out.append(Phase("maintenance-off", proxy.maintenance_end, fatal=False))
    return out


def run_in_release(d: Deploy, command: str, what: str, timeout: float | None = None) -> str:
    """Run a shell command in the release with its venv and the app's .env; fail with its output."""
    env = release.command_env(d.app, d.release, d.env)
    try:
        result = subprocess.run(
            command,
            shell=True,
            cwd=d.release,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        raise PhaseError(
            f"{what} did not finish within {timeout:.0f}s and was stopped",
            output=(exc.stdout or b"").decode(errors="replace")
            if isinstance(exc.stdout, bytes)
            else exc.stdout or "",
        ) from None
    if result.returncode:
        raise PhaseError(f"{what} failed (exit {result.returncode})", output=result.stdout)
    return result.stdout


def progress(d: Deploy, phase: str, when: str = "start") -> None:
    """Note in the deploy lock how far the deploy got, for whoever recovers it if it dies."""
    if d.journal is not None:
        d.journal.update(phase=phase, release=d.release_id or None, reused=d.reused)
    faults.point(d.app.run, phase, when, d.number)


@dataclass(frozen=True)
class Failure:
    """A phase that failed, after the phases that ran before it were undone."""

    phase: Phase
    message: str

    def __str__(self) -> str:
        return f"{self.phase.name} failed: {self.message}"


def attempt(d: Deploy, plan: list[Phase], done: list[Phase] | None = None) -> Failure | None:
    """The one phase runner (a deploy, a peer's prepare and switch, a recovery).

    Runs ``plan`` in order, journaling each phase and firing its fault points; a
    fatal failure, whatever it raised, is reported, everything in ``done`` (the
    phases that ran, these and any before) is undone newest first, and the
    failure returned. None when every phase ran.
    """
    done = [] if done is None else done
    for phase in plan:
        t0 = time.monotonic()
        try:
            progress(d, phase.name)
            with d.out.ticking(phase.name):
                detail = phase.run(d)
            done.append(phase)  # it ran: whatever fails from here on undoes it too
            progress(d, phase.name, "end")
        except Exception as exc:  # noqa: BLE001 - even a bug in a phase must be undone
            d.timings[phase.name] = round(time.monotonic() - t0, 3)
            if not phase.fatal:
                d.problems.append(f"{phase.name}: {explain(d, phase, exc)}")
                continue
            return undo(d, phase, done, exc)
        d.timings[phase.name] = round(time.monotonic() - t0, 3)
        report(d, phase, detail)
    return None


def undo(d: Deploy, phase: Phase, done: list[Phase], exc: Exception) -> Failure:
    """``phase`` failed with ``exc``: say so, undo what ran (newest first)."""
    failure = Failure(phase, explain(d, phase, exc))
    revert(d, done)
    done.clear()
    return failure


def run(d: Deploy, phases: list[Phase] | None = None, done: list[Phase] | None = None) -> bool:
    """Run every phase; on failure revert what ran. Returns True when the release went live.

    ``phases`` and ``done`` let a recovery resume an interrupted deploy part-way.
    """
    started = time.monotonic()
    # with peers: switch/restart/verify → rollout
    plan = with_options(d, peers.phases(d, PHASES) if phases is None else phases)
    failure = attempt(d, plan, done)
    if failure:
        fail(d, failure)
        return False
    elapsed = time.monotonic() - started
    if d.problems:
        record(d, "live", elapsed, problems=d.problems)
        d.out.final(f"live: {d.short} in {elapsed:.1f}s, but {'; '.join(d.problems)}", good=False)
        return True
    record(d, "live", elapsed)
    was = f" (rolled back from {d.previous})" if d.kind == "rollback" and d.previous else ""
    if d.recovery:
        was += f" (deploy #{d.number}, completed after it was interrupted at {d.recovery['phase']})"
    d.out.final(f"live: {d.short} in {elapsed:.1f}s{was}", good=True)
    return True


def report(d: Deploy, phase: Phase, detail: str | Skip) -> None:
    """A phase's ✓ line (or its - line when it had nothing to do)."""
    if isinstance(detail, Skip):
        d.out.skip(phase.name, detail)
    else:
        d.out.ok(phase.name, d.timings[phase.name], detail)


def explain(d: Deploy, phase: Phase, exc: Exception) -> str:
    """Print a phase's failure (its ✗ line, the command's output, the hint); return the message."""
    if isinstance(exc, ShipyardError):
        message = exc.message
    elif isinstance(exc, OSError):
        message = f"{type(exc).__name__}: {exc}"
    else:
        message = f"internal error: {type(exc).__name__}: {exc} (a bug: please report it)"
    message = d.out.mask(message)
    d.out.fail(phase.name, d.timings[phase.name], message)
    output = getattr(exc, "output", "") or ""
    if output:
        d.out.detail(bounded(output))  # all of it into the log; the push shows the tail
    if disk_full(exc, output):
        d.out.line(
            f"    hint: the disk is full (No space left on device): free space on the "
            f"filesystem of {d.app.dir} (`df -h {d.app.dir}`), then push again"
        )
    elif isinstance(exc, ShipyardError) and exc.hint:
        d.out.line(f"    hint: {exc.hint}")
    return message


OUTPUT_LIMIT = 1_000_000  # characters of a failed step's output kept in the log


def bounded(output: str, limit: int = OUTPUT_LIMIT) -> list[str]:
    """A failed command's output as lines, whole up to ``limit``; past it, its start and end.

    The real error may be a traceback printed well before a wrapper's last line, or
    the very first complaint of a long build: both ends are kept, and the cut said.
    """
    text = output.rstrip()
    if len(text) <= limit:
        return text.splitlines()
    head, tail = text[: limit // 5].splitlines(), text[-(limit - limit // 5) :].splitlines()
    head, tail = head[:-1], tail[1:]  # no half lines at the cut
    cut = text.count("\n") + 1 - len(head) - len(tail)
    note = f"… {cut} line(s) cut here: the log keeps {limit:,} characters of a step's output"
    return [*head, note, *tail]


def disk_full(exc: Exception, output: str = "") -> bool:
    """Did the phase fail because a filesystem is full (ENOSPC, or a tool saying so)?"""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    text = f"{exc}\n{output[-20000:]}".lower()
    return "no space left on device" in text or "disk quota exceeded" in text


def fail(d: Deploy, failure: Failure) -> None:
    """A failed deploy, its phases undone: the branch back, the record, the last line."""
    live = d.app.live_release()
    reset_branch(d)
    record(
        d,
        "failed",
        sum(d.timings.values()),
        failed_phase=failure.phase.name,
        error=failure.message,
    )
    still = f"still live: {live}" if live else "nothing is live yet"
    d.out.final(f"failed at {failure.phase.name}: {failure.message}; {still}", good=False)


def revert(d: Deploy, done: list[Phase]) -> None:
    """The mirror of the deploy: undo, newest first, every phase that ran."""
    for phase in reversed(done):
        if phase.undo is None:
            continue
        try:
            phase.undo(d)
        except Exception as exc:  # an undo that fails must not hide the others
            d.out.warn(f"undo of {phase.name} failed: {exc}")


def reset_branch(d: Deploy) -> None:
    """Set the branch back to the live commit, so a plain re-push retries.

    Compare-and-swap on our own commit: if somebody pushed since, their push stands.
    """
    live = d.app.live_release()
    manifest = release.Manifest.load(d.app.release_dir(live)) if live else None
    args = (
        ["update-ref", d.ref, manifest.sha, d.sha]
        if manifest
        else ["update-ref", "-d", d.ref, d.sha]
    )
    with contextlib.suppress(ShipyardError):
        release.git(d.app.repo, *args)


def record(d: Deploy, outcome: str, seconds: float, **extra: object) -> None:
    if d.recovery:
        extra = {"recovered": d.recovery, **extra}
    if isinstance(extra.get("error"), str):
        extra["error"] = d.out.mask(extra["error"])
    try:
        _record(d, outcome, seconds, extra)
    except OSError as exc:  # e.g. a full disk: what is live is right; its record is lost
        d.out.warn(f"could not record deploy #{d.number} in {d.app.history_file}: {exc}")
    notify.deploy_event(d, outcome, seconds, extra)  # in the background; never fails the deploy


def _record(d: Deploy, outcome: str, seconds: float, extra: dict) -> None:
    history.record(
        d.app,
        {
            "deploy": d.number,
            "kind": d.kind,
            "sha": d.sha,
            "ref": d.ref,
            "tag": d.tag,
            "pusher": d.pusher,
            "release": d.release_id or None,
            "previous": d.previous,
            "reused": d.reused,
            "start": time.time() - seconds,
            "duration": round(seconds, 3),
            "outcome": outcome,
            "phases": d.timings,
            "options": {k: d.out.mask(v) for k, v in d.options.items()},
            "migrations": d.migrations if d.migrations_known else None,
            **extra,
        },
    )


def branch_tip(app: App, ref: str) -> str | None:
    try:
        return release.git(app.repo, "rev-parse", "--verify", "--quiet", ref) or None
    except ShipyardError:
        return None


def title(d: Deploy) -> str:
    what = "rollback" if d.kind == "rollback" else "deploy"
    text = f"{what} #{d.number}: {d.ref.removeprefix('refs/heads/')} {d.short} by {d.pusher}"
    message = d.options.get("message")
    return f"{text}: {message}" if message else text


def journal_info(d: Deploy) -> dict:
    """The deploy lock's note: who holds it, and what a recovery needs to finish the deploy."""
    from . import recover

    return {
        "deploy": d.number,
        "sha": d.sha,
        "pusher": d.pusher,
        "since": time.time(),
        "pid": os.getpid(),
        # a detached worker leads its own session: a recovery stops what it left running
        "session": os.getsid(0) == os.getpid(),
        "boot": recover.boot_id(),
        "kind": d.kind,
        "ref": d.ref,
        "tag": d.tag,
        "options": d.options,
        "previous": d.app.live_release(),
        "phase": None,
        "recoverable": True,  # if this process dies holding the lock, the next holder resumes
    }


def execute(d: Deploy) -> bool:
    """Take the app's deploy lock and run the deploy, unless a newer push superseded it.

    A deploy that died holding the lock left its note there: it is finished or
    cleaned up first (``recover``), so this one starts from a consistent host.
    """
    from . import guard, recover

    with contextlib.suppress(ShipyardError, OSError):  # checkout reports a .env that won't parse
        d.out.mask = Masker(release.shared_env(d.app))  # e.g. a secret pasted into -o message=
    d.out.title(title(d))
    problem = guard.root_problem(d.app, d.host)
    if problem:  # proc-receive and `shipyard deploy` refuse first; this is the last word
        d.out.line(f"    hint: {guard.root_hint(d.app)}")
        reset_branch(d)
        record(d, "failed", 0.0, error=problem)
        d.out.final(f"refused: {problem}", good=False)
        return False
    for note in d.notes:
        d.out.warn(note)
    with lock.exclusive(
        d.app.run / "deploy.lock",
        journal_info(d),
        on_wait=lambda who: d.out.line(f"  … waiting for {lock.describe(who)}"),
        on_still_waiting=lambda who, s: d.out.line(
            f"  … still waiting ({s:.0f}s) for {lock.describe(who)}"
        ),
        heartbeat=d.out.heartbeat,
    ) as held:
        if held.stale:
            recover.resume(d.app, d.host, held, d.out, by=f"deploy #{d.number}")
        held.replace(journal_info(d))  # `previous` as it is now that the lock is ours
        d.journal = held
        tip = branch_tip(d.app, d.ref)
        if tip != d.sha:
            record(d, "superseded", 0.0, superseded_by=tip)
            d.out.final(
                f"superseded: {d.ref.removeprefix('refs/heads/')} is now "
                f"{(tip or 'deleted')[:7]}; the newest push deploys",
                good=True,
            )
            return True
        notify.deploy_event(d, "started", 0.0, {})
        return run(d)
