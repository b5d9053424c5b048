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


SSH_EXAMPLES = {
    "status": "mysite --json",
    "releases": "mysite",
    "history": "mysite -n 3",
    "log": "mysite 3 -f",
    "rollback": "mysite 20260101T000000Z-1a2b3c4 --run-release",
    "deploy": "mysite main -o skip-migrate",
    "doctor": "mysite",
    "config": "set mysite A=1 --no-restart",
    "run": "mysite --release v1 -- python manage.py check",
    "logs": "mysite -n 5 --process web",
    "scale": "mysite web=2",
    "restart": "mysite --process web",
    "processes": "mysite --start",
    "ps": "mysite",
    "cron": "mysite run clear-sessions",
    "domains": "mysite add www.example.com",
    "maintenance": "mysite on",
    "tls": "mysite --acme",
}


def test_the_one_command_parser_parses_as_the_whole_one():
    """The forced SSH command builds only its command's parser: the same arguments come out."""
    from shipyard.provision.shell import OPERATOR_COMMANDS

    assert set(SSH_EXAMPLES) == set(OPERATOR_COMMANDS)
    for command, words in SSH_EXAMPLES.items():
        argv = ["--root", "/srv/apps", command, *words.split()]
        one = cli.build_parser(only=command)
        assert one.parse_args(argv) == cli.build_parser().parse_args(argv), command
        sub = next(a for a in one._actions if a.dest == "command")
        assert command in sub.choices and len({id(p) for p in sub.choices.values()}) == 1
