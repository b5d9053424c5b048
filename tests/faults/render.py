"""Render docs/reliability.md from the records the fault suite wrote (`make reliability`).

SHIPYARD_RELIABILITY=build/reliability.jsonl pytest tests/faults
python tests/faults/render.py build/reliability.jsonl > docs/reliability.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

INTRO = """\
# Reliability: faults and bad input

A deploy is all or nothing: no fault may leave a host half-deployed, and bad input
gets one clear line that says what to do, a non-zero status where there is one, and
loses nothing. `tests/faults/` tries each case below against a real deploy root
(real git, uv, supervisord, gunicorn); this page is what it observed, regenerated with

    make reliability

which runs the suite with `SHIPYARD_RELIABILITY` set (each case records what it tried and
what it saw) and renders this file from the records (`tests/faults/render.py`).

How the faults are made: a test-only hook (`shipyard/fault_injection.py`) kills or pauses the
deploy at a named phase. It is armed only by `run/faults.json` in the app's deploy
root, owned by the deploy user and writable by no one else: nothing a pusher sends (a
push option, the commit, an environment variable) can reach it. "In" a phase means the
test waited until the phase was visibly at work (uv writing the venv, the build step or
the migration running, the new web process started) and then sent the worker SIGKILL.

What happens to a killed deploy (see
[architecture.md](architecture.md#interrupted-deploys-recovery-and-faults)): the
proc-receive hook sees its worker die without an outcome and starts `shipyard
recover`; had the hook died too, the next deploy does the same first. Before the
switch, nothing of the deploy went live: it is recorded `interrupted` and the push
fails (`[remote rejected] main -> main (deploy #N interrupted at …)`). From the switch
on, the deploy is completed (restart, verify, post-migrate, finish), with the usual
undo if that fails, and the push's exit status is that outcome's.
"""
KINDS = [("fault", "Faults"), ("bad input", "Bad input"), ("security", "Security")]


def cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render(rows: list[dict]) -> str:
    out = [INTRO]
    total = sum(1 for _ in rows)
    passed = sum(1 for r in rows if r.get("status") == "passed")
    seconds = sum({(r["module"], r["case"]): r.get("seconds", 0) for r in rows}.values())
    out.append(
        f"{total} cases, {passed} as expected; {seconds:.0f}s in the cases themselves "
        "(module set-up, e.g. the first deploy and its venv, not counted).\n"
    )
    for kind, title in KINDS:
        mine = [r for r in rows if r.get("kind") == kind]
        if not mine:
            continue
        out.append(f"## {title}\n")
        out.append("| case | tried | observed | |")
        out.append("|---|---|---|---|")
        for r in mine:
            mark = "✓" if r.get("status") == "passed" else f"✗ {r.get('status')}"
            out.append(
                f"| `{cell(r['module'].removeprefix('test_'))}::{cell(r['case'])}` "
                f"| {cell(r['fault'])} | {cell(r.get('outcome') or '(not reached)')} | {mark} |"
            )
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def main() -> None:
    path = Path(sys.argv[1])
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    sys.stdout.write(render(rows))


if __name__ == "__main__":
    main()
