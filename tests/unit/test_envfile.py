"""The .env fast path (envfile.simple) reads what it accepts exactly as python-dotenv does,
and leaves everything else to python-dotenv."""

from __future__ import annotations

import contextlib
import io
import itertools
import random

import pytest
from dotenv import dotenv_values

from shipyard import envfile
from shipyard.errors import ConfigError

PLAIN = [
    "SECRET_KEY=bench-0a1b2c3d4e5f",
    "DATABASE_URL=postgres://user:p4ss@db.example:5432/mysite?sslmode=require",
    "DATABASE_URL=sqlite:////srv/apps/mysite/shared/db.sqlite3",
    "EMPTY=",
    "B64=YWJjZA==",
    "A=b=c",
    "export=1",
    "exported_not=1",
    "LIST=a,b;c|d",
    "BRACES={x}",
    "PCT=100%",
    "_UNDER_1=x",
    "# a comment, with spaces: and 'quotes' and $HOME",
    "#",
    "",
]
TRICKY = [
    "export KEY=value",
    "KEY = value",
    "KEY=value # comment",
    "KEY=value#not-a-comment",
    "KEY='single quoted'",
    'KEY="double \\n quoted"',
    "KEY=${HOME}/x",
    "KEY=$HOME",
    "KEY=a\\tb",
    "KEY",
    "=value",
    "1KEY=x",
    "KEY=caf\u00e9",
    "\ufeffKEY=x",
    "KEY=x\r",
    "  # indented comment",
    "\tKEY=x",
    "'KEY'=x",
    "KEY=x y",
    "KEY=`date`",
    "# comment\twith a tab",
]


def dotenv(text: str) -> dict[str, str]:
    return {k: v for k, v in dotenv_values(stream=io.StringIO(text)).items() if v is not None}


def test_plain_lines_read_as_python_dotenv_reads_them():
    rng = random.Random(18)
    texts = ["", "\n", "\n".join(PLAIN), "\n".join(PLAIN) + "\n"]
    texts += ["\n".join(rng.sample(PLAIN, 6)) + "\nSECRET_KEY=again\n" for _ in range(30)]
    for text in texts:
        assert envfile.simple(text) == dotenv(text), text


def test_anything_else_is_left_to_python_dotenv():
    for line, plain in itertools.product(TRICKY, PLAIN[:3]):
        text = f"{plain}\n{line}\n"
        assert envfile.simple(text) is None, line
    for line in TRICKY:  # and what parse makes of it is python-dotenv's (or a refusal)
        with contextlib.suppress(ConfigError):
            assert envfile.parse(line + "\n", ".env") == dotenv(line + "\n"), line


def test_a_bad_line_is_still_refused(tmp_path):
    path = tmp_path / ".env"
    path.write_text("GOOD=1\n'unterminated=x\n")
    with pytest.raises(ConfigError, match=r"\.env:2: cannot parse this line"):
        envfile.read(path)
    assert envfile.read(tmp_path / "none") == {}
