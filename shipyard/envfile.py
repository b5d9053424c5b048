"""The ``.env`` format, read as python-dotenv reads it (what the processes get).

Below everything that reads the shared ``.env`` (release.shared_env, every deploy's
checkout, the launcher of every process) and the ``shipyard config`` command that edits it
(settings.py). Only the standard library at module level: the launcher runs under
``python -S`` (shipyard/launch.py), where python-dotenv is not even on ``sys.path``.
"""

from __future__ import annotations

import io
import os

from .errors import ConfigError

# The characters of a line python-dotenv reads the obvious way, as NAME=value: no quotes,
# escapes, `$` (interpolation), `#` (comments), whitespace or `export`, nothing outside ASCII.
KEY_START = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
KEY_CHARS = KEY_START | frozenset("0123456789")
VALUE_CHARS = KEY_CHARS | frozenset("-.,:;/@+%=~?&!*^|<>[](){}")


def simple(text: str) -> dict[str, str] | None:
    """``text`` read without python-dotenv when every line is ``NAME=value`` of the plainest
    kind (or blank, or a ``#`` comment); None when one is not: python-dotenv reads it then.

    What it accepts, python-dotenv reads the same way (tests/unit/test_envfile.py compares
    them); importing python-dotenv (with ``logging``) costs a process start ~20 ms.
    """
    values: dict[str, str] = {}
    for line in text.split("\n"):
        if not line or (line[0] == "#" and line.isascii() and line.isprintable()):
            continue
        key, equals, value = line.partition("=")
        if not (equals and key and key[0] in KEY_START and KEY_CHARS.issuperset(key)):
            return None
        if not VALUE_CHARS.issuperset(value):
            return None
        values[key] = value
    return values


def parse(text: str, source: str) -> dict[str, str]:
    """What python-dotenv makes of ``text`` (as the processes get it); refuses a bad line.

    python-dotenv only logs a warning for a line it cannot parse and then drops it, which
    would run with a variable silently missing: refuse instead, without echoing the line.
    """
    plain = simple(text)
    if plain is not None:
        return plain
    from dotenv import dotenv_values
    from dotenv.parser import parse_stream

    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            raise ConfigError(
                f"{source}:{binding.original.line}: cannot parse this line of .env "
                "(not shown: it may hold a secret)",
                "write KEY=value, one per line; quote a value that has spaces, '#' or quotes",
            )
    return {k: v for k, v in dotenv_values(stream=io.StringIO(text)).items() if v is not None}


def read(path: str | os.PathLike) -> dict[str, str]:
    """The ``.env`` file at ``path``, parsed ({} when there is none; values are never printed)."""
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it: {exc}") from None
    return parse(text, str(path))
