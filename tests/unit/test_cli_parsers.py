"""The command line in one place: every parser in cli.py, every error class in errors.py."""

from __future__ import annotations

import ast
from pathlib import Path

from shipyard import cli

PACKAGE = Path(cli.__file__).parent
ERRORS = {"ShipyardError", "PhaseError", "ConfigError", "AppError", "CommandFailed"}


def test_every_command_is_parsed_by_cli():
    sub = next(a for a in cli.build_parser()._actions if a.dest == "command")
    names = set(sub.choices)
    assert {"init", "deploy", "rollback", "provision", "ssh-command", "doctor", "receiver"} <= names
    for name, parser in sub.choices.items():
        assert callable(parser.get_default("func")), name


def test_the_error_classes_are_in_errors_py():
    elsewhere = []
    for path in sorted(PACKAGE.glob("*.py")):
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = {getattr(b, "id", getattr(b, "attr", "")) for b in node.bases}
                if bases & ERRORS:
                    elsewhere.append(f"{path.name}:{node.name}")
    assert elsewhere == []
