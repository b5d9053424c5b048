"""The one phase runner: a plan's phases in order, each journaled, each undone on failure.

``attempt`` runs a plan (a push, a peer's prepare and switch, the primary's own
rollout, a recovery); ``run`` is a whole deploy on top of it: the record, the
branch set back when it failed, the last line. It knows phases only as
``context.Phase`` records: the plans themselves are in deploy.py.
"""

from __future__ import annotations

import contextlib
import errno
import time
from dataclasses import dataclass

from . import fault_injection, history, notify, release, repo
from .app import App
from .context import Deploy, Phase
from .errors import ShipyardError
from .report import Skip


def progress(d: Deploy, phase: str, when: str = "start") -> None:
    """Note in the deploy lock how far the deploy got, for whoever recovers it if it dies."""
    if d.journal is not None:
        d.journal.update(phase=phase, release=d.release_id or None, reused=d.reused)
    fault_injection.point(d.app.run, phase, when, d.number)


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


def run(d: Deploy, plan: list[Phase], done: list[Phase] | None = None) -> bool:
    """Run a deploy's plan (``deploy.plan``); on failure revert what ran. Returns True when
    the release went live.

    ``done`` lets a recovery resume an interrupted deploy part-way.
    """
    started = time.monotonic()
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


def tidy(d: Deploy) -> None:
    """Once the outcome is out (a fault point): delete what ``finish`` pruned (renamed
    aside), then prepare the spare copy of the live release that the next push's checkout
    starts from (``release.make_spare``: its hard links are paid here, not on that push)."""
    fault_injection.point(d.app.run, "tidy", "start", d.number)
    release.empty(d.trash or [])
    release.make_spare(d.app)


def collect_garbage(d: Deploy) -> None:
    """The last thing after the outcome: ``git gc --auto`` on the repo (receive-pack's own
    came before the pusher's answer); nothing waits for it, however long it packs."""
    problem = repo.collect_garbage(d.app)
    if problem:
        d.out.line(f"  note: git gc --auto in {d.app.repo} failed: {problem}")


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
    """The commit ``ref`` names (None: none), from its own file when git keeps it there."""
    found = repo.loose_ref(app.repo, ref)
    if found:
        return found
    try:
        return release.git(app.repo, "rev-parse", "--verify", "--quiet", ref) or None
    except ShipyardError:
        return None
