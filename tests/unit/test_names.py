"""What a new maintainer reads first says what is there: help, exception names, outcomes, the
module map."""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import pytest

from shipyard import history, migrate
from shipyard.app import App
from shipyard.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
PACKAGE_DIRS = ("shipyard", "hooks", "receiver", "provision")


def test_help_lists_every_command_with_its_help_and_nothing_hidden():
    parser = build_parser()
    assert "==SUPPRESS==" not in parser.format_help()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    listed = {c.dest.split(" ")[0]: c.help for c in sub._choices_actions}
    assert "run-deploy" not in sub.choices
    assert {n: h for n, h in listed.items() if not h or h == argparse.SUPPRESS} == {}
    assert set(listed) == {n for n, p in sub.choices.items() if p.prog.endswith(" " + n)}


def exception_classes() -> list[tuple[str, str]]:
    """(class name, file) of every exception class the package defines."""
    found = []
    for top in PACKAGE_DIRS:
        for path in sorted((REPO / top).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ClassDef):
                    bases = [getattr(b, "id", getattr(b, "attr", "")) for b in node.bases]
                    if any(b.endswith(("Error", "Exception", "Unauthenticated")) for b in bases):
                        found.append((node.name, str(path.relative_to(REPO))))
    return found


def test_no_two_exceptions_share_a_name():
    classes = exception_classes()
    names = [n for n, _ in classes]
    assert {n for n in names if names.count(n) > 1} == set(), classes
    assert ("CommandFailed", "shipyard/errors.py") in classes  # the walk sees them


def test_history_records_only_the_outcomes_it_names(tmp_path: Path):
    app = App(tmp_path, "mysite")
    app.deploys.mkdir(parents=True)
    with pytest.raises(ValueError, match="rolled-back"):
        history.record(app, {"deploy": 1, "outcome": "rolled-back"})
    for outcome in history.OUTCOMES:
        history.record(app, {"deploy": 1, "outcome": outcome})
    assert [e["outcome"] for e in history.entries(app)] == list(history.OUTCOMES)


def test_a_rollback_that_went_live_counts_as_live_for_the_migrations_between():
    entries = [
        {"deploy": 1, "release": "r1", "outcome": "live", "migrations": []},
        {"deploy": 2, "release": "r2", "outcome": "live", "migrations": ["0002"]},
        {"deploy": 3, "release": "r1", "outcome": "live", "kind": "rollback"},
        {"deploy": 4, "release": "r3", "outcome": "live", "migrations": ["0003"]},
    ]
    assert migrate._between(entries, "r3", "r1") == entries[3:]


def test_the_module_map_names_every_module():
    text = (REPO / "docs" / "architecture.md").read_text()
    table = text[text.index("## Modules") : text.index("## Layers")]
    missing = [
        f"{top}/{path.relative_to(REPO / top)}"
        for top in PACKAGE_DIRS
        for path in sorted((REPO / top).rglob("*.py"))
        if path.name not in ("__init__.py", "__main__.py")
        and f"`{top}/{path.relative_to(REPO / top)}`" not in table
    ]
    assert missing == []
