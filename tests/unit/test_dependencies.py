"""Every library shipyard imports is one it declares: a provisioned host installs only those."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OURS = ("shipyard", "hooks", "receiver", "provision")
RUN_BY_THE_APP = {"alembic_probe.py", "data_probe.py"}  # run by the release's Python, never ours
DISTRIBUTION = {"dotenv": "python-dotenv", "git": "gitpython"}  # import name: what pip installs


def test_every_imported_library_is_a_declared_dependency():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {re.split(r"[\[<>=!~; ]", d, maxsplit=1)[0].lower() for d in project["dependencies"]}
    missing = {}
    for top in OURS:
        for path in sorted((REPO / top).rglob("*.py")):
            if path.name in RUN_BY_THE_APP:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    module = name.split(".")[0]
                    if module in sys.stdlib_module_names or module in OURS:
                        continue
                    if DISTRIBUTION.get(module, module) not in declared:
                        missing[module] = str(path.relative_to(REPO))
    assert not missing, f"imported, not in pyproject.toml's dependencies: {missing}"
