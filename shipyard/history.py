"""Deploy numbers, logs and the history file ``deploys/deploys.jsonl``.

A deploy's number is claimed by creating its log with O_EXCL, so two pushes
arriving at once can never get the same number. History is append-only JSON
lines, one per finished deploy (or per deploy that never started its phases).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .app import App

OUTCOMES = ("live", "failed", "rolled-back", "superseded", "interrupted")


def log_path(app: App, number: int) -> Path:
    return app.deploys / f"{number}.log"


def claim_number(app: App) -> int:
    """Create ``deploys/<N>.log`` for the next free N and return N."""
    app.deploys.mkdir(parents=True, exist_ok=True)
    number = last_number(app) + 1
    while True:
        try:
            fd = os.open(log_path(app, number), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640)
        except FileExistsError:
            number += 1
            continue
        os.close(fd)
        return number


def last_number(app: App) -> int:
    numbers = [int(p.stem) for p in app.deploys.glob("*.log") if p.stem.isdigit()]
    return max(numbers, default=0)


def record(app: App, entry: dict) -> None:
    """Append one line; a single write(2) of a short line, so concurrent appends do not mix."""
    line = (json.dumps(entry, sort_keys=True) + "\n").encode()
    fd = os.open(app.history_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def entries(app: App) -> list[dict]:
    try:
        text = app.history_file.read_text()
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def last_live(app: App) -> dict | None:
    for entry in reversed(entries(app)):
        if entry.get("outcome") == "live":
            return entry
    return None
