"""The ``.env`` format, read as python-dotenv reads it (what the processes get).

Below everything that reads the shared ``.env`` (release.shared_env, every deploy's
checkout) and the ``shipyard config`` command that edits it (settings.py).
"""

from __future__ import annotations

import io

from .errors import ConfigError


def parse(text: str, source: str) -> dict[str, str]:
    """What python-dotenv makes of ``text`` (as the processes get it); refuses a bad line.

    python-dotenv only logs a warning for a line it cannot parse and then drops it, which
    would run with a variable silently missing: refuse instead, without echoing the line.
    """
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
