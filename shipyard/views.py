"""What the read-only operator commands show: status, releases, history.

Each view is a plain dict/list (what ``--json`` prints, schema version
``SCHEMA``) and a renderer for people that fits an 80-column terminal.
"""

from __future__ import annotations

import contextlib
import os
import time

from . import history, lock, notify, process_views, release
from .app import App
from .config import load_host_config
from .engine import branch_tip
from .errors import ShipyardError
from .operate import rollback_target
from .peers import disagreements, peers_status
from .peers import size as release_size

SCHEMA = 1
WIDTH = 80


def ago(ts: float | None, now: float | None = None) -> str:
    if not ts:
        return "-"
    seconds = max(0, (now or time.time()) - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"


def utc(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts)) if ts else "-"


def fit(text: str, width: int) -> str:
    text = str(text)
    return text if len(text) <= width else text[: width - 1] + "…"


def ended(entry: dict) -> float | None:
    start = entry.get("start")
    return start + (entry.get("duration") or 0) if start else None


def processes(app: App) -> object:
    """What ``process_views.status`` reports; an error there is shown, never raised."""
    try:
        return process_views.status(app)
    except Exception as exc:  # a broken process view must not hide what is live
        return {"error": f"{type(exc).__name__}: {exc}"}


# --- status ------------------------------------------------------------------


def status(app: App) -> dict:
    deploys = history.deploys(app)
    live_id = app.live_release()
    live = None
    if live_id:
        manifest = release.Manifest.load(app.release_dir(live_id))
        entry = next(
            (
                e
                for e in reversed(deploys)
                if e.get("outcome") == "live" and e.get("release") == live_id
            ),
            None,
        )
        switched = None
        with contextlib.suppress(OSError):
            switched = os.lstat(app.current).st_mtime
        state = manifest.state if manifest else "unknown"
        # current moved after the last recorded deploy of this release, and the newest
        # deploy never recorded an outcome: that deploy switched, then died.
        latest = deploys[-1] if deploys else {}
        if (
            latest.get("outcome") == "interrupted"
            and latest.get("release") in (None, live_id)  # not one that went back
            and switched
            and (entry is None or switched > (ended(entry) or 0) + 1)
        ):
            state, entry = "interrupted", latest
        live = {
            "release": live_id,
            "path": str(app.release_dir(live_id)),
            "sha": manifest.sha if manifest else None,
            "tag": manifest.tag if manifest else None,
            "state": state,
            "since": (ended(entry) if entry and entry.get("outcome") == "live" else switched),
            "deploy": entry.get("deploy") if entry else (manifest.deploy if manifest else None),
            "kind": entry.get("kind", "push") if entry else None,
            "pusher": entry.get("pusher") if entry else (manifest.pusher if manifest else None),
            "message": ((entry or {}).get("options") or {}).get("message"),
            "recovered": (entry or {}).get("recovered"),
        }
    current_missing = None
    if live_id is None:
        # current deleted by hand (or pointing at a release that is gone): say so, and
        # what was live last, rather than a plain "nothing is live"
        last_live = next((e for e in reversed(deploys) if e.get("outcome") == "live"), None)
        if last_live or os.path.lexists(app.current):
            current_missing = {
                "dangling": os.readlink(app.current) if os.path.islink(app.current) else None,
                "problem": app.current_problem(),  # e.g. current -> ../../.., not a release
                "last_live": (last_live or {}).get("release"),
            }
    lock_file = app.deploy_lock
    deploying = (lock.holder(lock_file) or {"deploy": None}) if lock.is_held(lock_file) else None
    branch, hosts, disagree = None, None, []
    config_problem = None
    try:
        host = load_host_config(app.config_file)
        branch = {"name": host.branch, "sha": branch_tip(app, f"refs/heads/{host.branch}")}
        if host.peers:
            hosts = peers_status(app, processes=True)
            disagree = disagreements(hosts)
    except ShipyardError as exc:  # deploys refuse it: say why here too
        config_problem = {"message": exc.message, "hint": exc.hint}
    except Exception:  # noqa: BLE001 - status shows what it can
        pass
    return {
        "schema": SCHEMA,
        "app": app.name,
        "dir": str(app.dir),
        "live": live,
        "current_missing": current_missing,
        "config_problem": config_problem,
        "deploying": deploying,
        "waiting": [e["deploy"] for e in deploys if e.get("outcome") == "waiting"],
        "last": deploys[-1] if deploys else None,
        "branch": branch,
        "rollback_to": rollback_target(app),
        "processes": processes(app),
        "hosts": hosts,
        "disagree": disagree,  # many hosts: where they do not serve one release
        "notify": notify_problems(app),
    }


def notify_problems(app: App) -> list[dict]:
    return notify.problems(app)


def outcome_text(entry: dict) -> str:
    outcome = entry.get("outcome", "?")
    if outcome in ("failed", "interrupted") and entry.get("failed_phase"):
        return f"{outcome} at {entry['failed_phase']}"
    if outcome == "live" and entry.get("recovered"):
        return "live (recovered)"
    return outcome


def render_status(s: dict) -> str:
    lines = []
    live = s["live"]
    if live:
        label = f"{(live['sha'] or '?')[:7]}" + (f" ({live['tag']})" if live["tag"] else "")
        head = f"{s['app']}: live {label}"
        if live["state"] != "good":
            head += f"  [{live['state'].upper()}]"
        lines.append(head)
        lines.append(f"  release    releases/{live['release']}")
        lines.append(f"  since      {utc(live['since'])} ({ago(live['since'])})")
        by = f"deploy #{live['deploy']}" if live["deploy"] else "deploy ?"
        if live.get("kind") and live["kind"] != "push":
            by += f" ({live['kind']})"
        lines.append(fit(f"  deployed   {by} by {live['pusher'] or '?'}", WIDTH))
        if live.get("message"):
            lines.append(fit(f"  message    {live['message']}", WIDTH))
        if live["state"] == "interrupted":
            lines.append(
                "  ! its deploy was interrupted after the switch: not finished, not verified"
            )
            lines.append(
                fit(
                    f"  ! complete it (or undo it if that fails): shipyard recover {s['app']}",
                    WIDTH,
                )
            )
        if live.get("recovered"):
            how = live["recovered"]
            lines.append(
                fit(
                    f"  note       interrupted at {how.get('phase')}, completed by {how.get('by')}",
                    WIDTH,
                )
            )
    else:
        missing = s.get("current_missing") or {}
        problem = missing.get("problem")
        lines.append(
            f"{s['app']}: nothing is live" + (" (no valid live release)" if problem else "")
        )
        if missing:
            lines.append(fit(f"  ! {problem or 'current is missing (deleted by hand?)'}", WIDTH))
            if missing["last_live"]:
                lines.append(fit(f"  ! last live: releases/{missing['last_live']}", WIDTH))
            lines.append(fit(f"  ! the next deploy sets it: shipyard deploy {s['app']}", WIDTH))
    problem = s.get("config_problem")
    if problem:
        lines.append(fit(f"  ! {problem['message']}", WIDTH))
        if problem["hint"]:
            lines.append(fit(f"  ! fix: {problem['hint']}", WIDTH))
    d = s["deploying"]
    if d:
        who = lock.describe(d) if d.get("deploy") else "a deploy (starting)"
        lines.append(fit(f"  deploying  {who}", WIDTH))
    else:
        lines.append("  deploying  no")
    if s["waiting"]:
        lines.append("  waiting    " + ", ".join(f"#{n}" for n in s["waiting"]))
    last = s["last"]
    if last and last.get("deploy") != (live or {}).get("deploy"):
        text = f"#{last['deploy']} {outcome_text(last)} {ago(last.get('start'))}"
        if last.get("error"):
            text += f": {last['error']}"
        lines.append(fit(f"  last       {text}", WIDTH))
        if last.get("outcome") == "interrupted":
            lines.append(f"  ! it stopped without an outcome; retry: shipyard deploy {s['app']}")
        elif last.get("recovered") and last.get("outcome") == "live":
            how = last["recovered"]
            lines.append(
                fit(f"  note       interrupted at {how.get('phase')}, then completed", WIDTH)
            )
    for failed in s.get("notify") or []:  # webhooks whose last delivery did not arrive
        lines.append(
            fit(
                f"  ! webhook {failed['webhook']}: #{failed.get('deploy')} {failed.get('event')} "
                f"not delivered ({failed.get('error')}; {failed.get('attempts', 1)} tries)",
                WIDTH,
            )
        )
    branch = s.get("branch") or {}
    live_sha = (live or {}).get("sha")
    if (
        branch.get("sha")
        and branch["sha"] != live_sha
        and not d
        and not s["waiting"]
        and not (last and last.get("outcome") == "interrupted" and last.get("sha") == branch["sha"])
    ):
        # e.g. a push cut off after the branch moved and before its deploy started
        lines.append(
            fit(
                f"  ! branch {branch['name']} is at {branch['sha'][:7]}, not what is live; "
                f"deploy it: shipyard deploy {s['app']}",
                WIDTH,
            )
        )
    if s["rollback_to"]:
        lines.append(f"  rollback   → {s['rollback_to']}")
    lines += render_processes(s["processes"])
    for i, row in enumerate(s.get("hosts") or []):
        state = row.get("state") or ""
        where = row["address"] if row["role"] == "peer" else "primary"
        text = f"{row.get('host') or '?'} ({where}) {row.get('live') or 'nothing live'} {state}"
        if row.get("error"):
            text += f": {row['error']}"
        lines.append(fit(f"  {'hosts' if i == 0 else '':<10} {text}", WIDTH))
    if s.get("disagree"):
        lines.append("  ! the hosts disagree: not one release is served everywhere")
        lines += [fit(f"  ! {problem}", WIDTH) for problem in s["disagree"]]
        lines.append(fit(f"  ! bring them together: shipyard deploy {s['app']}", WIDTH))
    return "\n".join(lines)


def _process_line(row: dict) -> str:
    """One row of ``process_views.status``: name, state, pid, whether it runs the live release."""
    where = (
        ""
        if row.get("release") is None
        else (" live" if row.get("live") else f" on {row['release']} (NOT LIVE)")
    )
    return f"{row['process']}: {row['state']} pid {row.get('pid') or '-'}{where}"


def render_processes(report: object) -> list[str]:
    if report is None:
        return ["  processes  n/a"]
    if isinstance(report, str):
        return [fit(f"  processes  {report}", WIDTH)]
    if isinstance(report, dict):
        items = [f"{k}: {v}" for k, v in report.items()]
    else:
        items = [_process_line(row) for row in report]
    if not items:
        return ["  processes  none"]
    heads = ["processes"] + [""] * (len(items) - 1)
    return [fit(f"  {head:<10} {item}", WIDTH) for head, item in zip(heads, items, strict=True)]


# --- releases ----------------------------------------------------------------


def releases(app: App) -> dict:
    deploys = history.deploys(app)
    by_number = {e.get("deploy"): e for e in deploys}
    live_id = app.live_release()
    own, total = release.disk_use(app)
    rows = []
    for rid, m in release.releases(app):
        lives = [e for e in deploys if e.get("outcome") == "live" and e.get("release") == rid]
        last_live = lives[-1] if lives else None
        state = m.state if m else "unknown"
        if m and state == "building":
            built_by = by_number.get(m.deploy, {}).get("outcome")
            if built_by in ("interrupted", "failed"):
                state = built_by
        venv = (app.releases / rid / ".venv").resolve() if m and m.venv else None
        rows.append(
            {
                "id": rid,
                "sha": m.sha if m else None,
                "tag": m.tag if m else None,
                "state": state,
                "live": rid == live_id,
                "venv": m.venv if m else None,
                "venv_present": bool(venv and venv.is_dir()),
                "migrations": m.migrations if m else None,
                "built": m.created if m else None,
                "deployed": (ended(last_live) if last_live else None) or (m.live_at if m else None),
                "deploy": last_live.get("deploy") if last_live else (m.deploy if m else None),
                "pusher": last_live.get("pusher") if last_live else (m.pusher if m else None),
                "own_bytes": own.get(rid, 0),
            }
        )
    keep = None
    with contextlib.suppress(Exception):
        keep = load_host_config(app.config_file).keep
    return {
        "schema": SCHEMA,
        "app": app.name,
        "live": live_id,
        "rollback_to": rollback_target(app),
        "keep": keep,
        "releases": rows,
        "disk_bytes": total,
    }


def render_releases(r: dict) -> str:
    if not r["releases"]:
        return f"{r['app']}: no releases yet"
    cols = "  {:<24}  {:<7}  {:<11}  {:<6}  {:>4}  {:>5}  {}"
    lines = [cols.format("RELEASE (stamp-sha)", "TAG", "STATE", "VENV", "MIGR", "LIVE", "BY")]
    for row in reversed(r["releases"]):
        venv = (row["venv"] or "-")[:6] if row["venv_present"] or not row["venv"] else "gone"
        migr = "-" if row["migrations"] is None else str(len(row["migrations"]))
        if row["migrations"] is None and row["state"] == "good":
            migr = "?"  # a migrate command ran that cannot list what it applied
        mark = "* " if row["live"] else ("↩ " if row["id"] == r["rollback_to"] else "  ")
        line = (
            mark
            + cols.format(
                row["id"],
                fit(row["tag"] or "-", 7),
                fit(row["state"], 11),
                venv,
                migr,
                ago(row["deployed"]).replace(" ago", "") if row["deployed"] else "never",
                fit(row["pusher"] or "-", 8),
            )[2:]
        )
        lines.append(line.rstrip())
    foot = "* live  ↩ where `shipyard rollback` goes  LIVE: last made live, ago"
    if r["keep"]:
        foot += f"  keep={r['keep']}"
    lines.append(fit(foot, WIDTH))
    lines.append("")
    lines.append("  DISK (bytes no other release shares: unchanged files are hard links)")
    for row in reversed(r["releases"]):
        lines.append(f"  {row['id']:<24}  {release_size(row['own_bytes']):>9}")
    lines.append(f"  {'all releases':<24}  {release_size(r['disk_bytes']):>9}")
    return "\n".join(lines)


# --- history -----------------------------------------------------------------


def deploy_history(app: App, limit: int = 20) -> dict:
    return {"schema": SCHEMA, "app": app.name, "deploys": history.deploys(app)[-limit:]}


def render_history(h: dict) -> str:
    if not h["deploys"]:
        return f"{h['app']}: no deploys yet"
    cols = "{:>4}  {:<8}  {:<7}  {:<8}  {:<16}  {:>4}  {:>6}  {}"
    lines = [cols.format("#", "KIND", "SHA", "TAG", "OUTCOME", "WHEN", "TOOK", "BY")]
    for e in reversed(h["deploys"]):
        took = e.get("duration")
        by = e.get("pusher") or "-"
        message = (e.get("options") or {}).get("message")
        line = cols.format(
            e.get("deploy", "?"),
            e.get("kind", "push") if e.get("outcome") not in history.UNFINISHED else "-",
            str(e.get("sha") or "-")[:7],
            fit(e.get("tag") or "-", 8),
            fit(outcome_text(e), 16),
            ago(e.get("start")).replace(" ago", ""),
            f"{took:.1f}s" if isinstance(took, int | float) else "-",
            by + (f": {message}" if message else ""),
        )
        lines.append(fit(line, WIDTH))
        if e.get("live") and e.get("outcome") == "interrupted":  # a rollout that went back
            lines.append(fit(f"      ↳ {str(e.get('error')).split('; ', 1)[-1]}", WIDTH))
    return "\n".join(lines)
