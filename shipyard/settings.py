"""The app's settings: ``shared/.env``, read and changed from the CLI (``shipyard config``).

The file stays the operator's: a change rewrites only the lines of the keys it
sets or unsets (comments, blank lines and the order of the rest are kept, a
new key is appended) and writes the result to a temp file (0600) renamed over
``.env``, so a reader sees the old file or the new one, never half of one.
The new text is read back with python-dotenv, as the processes will read it,
and refused unless every value reads back exactly as given (``${…}`` would be
expanded, for instance). Values are never printed unless asked (``--show``)
and never recorded: the history line of a change names its keys only.
"""

from __future__ import annotations

import io
import re
import sys
import time
from pathlib import Path

from .app import App
from .change import making
from .envfile import parse
from .errors import ConfigError, ShipyardError
from .handover import handover
from .hosts import Fleet, apply, finish_interrupted, new_token, replace
from .report import Skip

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
PLAIN = re.compile(r"^[A-Za-z0-9_./:@%+,=-]+$")  # written without quotes
MASK = "********"


def env_file(app: App) -> Path:
    return app.shared / ".env"


def check_key(key: str) -> str:
    if not ENV_NAME.match(key):
        raise ConfigError(
            f"{key!r} is not a valid environment variable name",
            "use letters, digits and _, not starting with a digit (e.g. SECRET_KEY)",
        )
    return key


def parse_assignment(text: str, before: str = "") -> tuple[str, str]:
    """``KEY=VALUE`` from the command line (``before``: the word before it, if any)."""
    if "=" not in text and "=" in before:  # a value's spaces split it: ssh re-splits the line
        raise ConfigError(
            f"{text!r} has no '=': is it the rest of {before.split('=', 1)[0]}'s value, "
            "split off at a space?",
            "quote KEY=VALUE as one word; over ssh quote it twice, as ssh joins the words and "
            f"the server splits them again: \"'{before} {text}'\"",
        )
    if "=" not in text:
        raise ConfigError(
            f"{text!r} has no '=': write KEY=VALUE",
            f"or `config set APP {text} --stdin` to read the value from stdin",
        )
    key, value = text.split("=", 1)
    return check_key(key), value


def check_value(key: str, value: str) -> str:
    if "\0" in value:
        raise ConfigError(f"the value of {key} contains a NUL byte, which .env cannot hold")
    return value


def quote(value: str) -> str:
    """How python-dotenv reads ``value`` back as it is: plain, or single-quoted with escapes."""
    if PLAIN.match(value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def read_text(app: App) -> str:
    path = env_file(app)
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it: {exc}") from None


def chunks(text: str) -> list[tuple[str | None, str]]:
    """``text`` cut into (key or None, the exact text of that binding or comment)."""
    from dotenv.parser import parse_stream

    return [(b.key, b.original.string) for b in parse_stream(io.StringIO(text))]


def edit(text: str, values: dict[str, str], unset: list[str]) -> str:
    """``text`` with ``values`` set (in place, else appended) and ``unset`` removed."""
    out: list[str] = []
    done: set[str] = set()
    for key, chunk in chunks(text):
        if key is None or (key not in values and key not in unset):
            out.append(chunk)
            continue
        lead = chunk[: len(chunk) - len(chunk.lstrip())]  # blank lines before the binding
        if key in values and key not in done:
            out.append(f"{lead}{key}={quote(values[key])}\n")
            done.add(key)
        elif lead:
            out.append(lead)
    new = "".join(out)
    added = [f"{k}={quote(v)}\n" for k, v in values.items() if k not in done]
    if added and new and not new.endswith("\n"):
        new += "\n"
    return new + "".join(added)


def write(app: App, text: str) -> None:
    """Replace ``shared/.env`` atomically with ``text``, mode 0600."""
    replace(env_file(app), text, 0o600)


def masked(value: str) -> str:
    """A value as `config` lists it: hidden (any setting may be a secret)."""
    return MASK if value else "(empty)"


def listing(app: App, show: bool = False) -> list[str]:
    values = parse(read_text(app), str(env_file(app)))
    if not values:
        return [f"{app.name}: no settings ({env_file(app)} is empty or missing)"]
    width = max(len(k) for k in values)
    lines = [f"{app.name}: {len(values)} setting(s) in {env_file(app)}"]
    for key, value in values.items():
        shown = value if show else masked(value)
        lines.append(f"  {key:<{width}}  {shown}")
    if not show:
        lines.append(f"values hidden; `shipyard config {app.name} --show` prints them")
    return lines


def get(app: App, key: str) -> str:
    values = parse(read_text(app), str(env_file(app)))
    if check_key(key) not in values:
        raise ShipyardError(f"{key} is not set in {app.name}", f"see `shipyard config {app.name}`")
    return values[key]


def plan(app: App, values: dict[str, str], unset: list[str]) -> tuple[str, str]:
    """(old text, new text), checked: the new text reads back exactly as asked."""
    source = str(env_file(app))
    old = read_text(app)
    before = parse(old, source)
    for key in unset:
        if check_key(key) not in before:
            raise ShipyardError(
                f"{key} is not set in {app.name}: nothing was changed",
                f"see `shipyard config {app.name}`",
            )
    for key, value in values.items():
        check_value(check_key(key), value)
    new = edit(old, values, unset)
    after = parse(new, source)
    expected = {k: v for k, v in before.items() if k not in unset}
    expected.update(values)
    for key, value in expected.items():
        if after.get(key) != value:
            why = " (${…} is expanded by .env)" if "${" in value else ""
            raise ConfigError(
                f"{key} would not read back from .env as given{why}: nothing was changed",
                "give the value without that part",
            )
    if set(after) != set(expected):
        raise ConfigError("the new .env would not read back as intended: nothing was changed")
    return old, new


def change(
    app: App, values: dict[str, str], unset: list[str], restart: bool = True, term=None
) -> bool:
    """``config set/unset``: under the deploy lock, numbered in history, then the handover."""
    old, new = plan(app, values, unset)  # bad input: refused before the lock is even taken
    keys = [*values, *unset]
    verb = "set" if values else "unset"
    what = f"config {verb} {', '.join(keys)}"
    with making(app, "config", term=term) as c:
        old, new = plan(app, values, unset)  # again, under the lock
        fleet = Fleet.load(app, c.host)
        if fleet.peers:  # every host gets the new .env before any restarts
            c.out.title(f"config #{c.number}: {verb} {', '.join(keys)} by {c.by}")
            fleet.warn_drained(c.out, f"config {verb}")
            if finish_interrupted(fleet, c.out):  # it changed .env: plan again
                old, new = plan(app, values, unset)
            token = new_token("config", c.number)
            request = {"values": values, "unset": unset}
            names = apply(
                fleet, c.out, token, request, env_file(app), new, 0o600, True if restart else None
            )
            c.record(
                f"{verb} {', '.join(keys)}", keys=keys, change=verb, restarted=restart, hosts=names
            )
            c.out.final(f"{app.name}: {what} on {len(names)} hosts: {', '.join(names)}", True)
            return True
        if old == new:
            c.out.final(f"{app.name}: {what}: already so; nothing changed", True)
            c.record(f"{verb} {', '.join(keys)} (no change)", keys=keys, change=verb)
            return True
        c.out.title(f"config #{c.number}: {verb} {', '.join(keys)} by {c.by}")
        existed = env_file(app).exists()
        started = time.monotonic()
        write(app, new)
        c.out.ok("write .env", time.monotonic() - started, f"{env_file(app)} (0600)")
        if not restart:
            c.out.skip("restart", "--no-restart: the processes get it at their next restart")
        else:
            started = time.monotonic()
            try:
                detail = handover(app, c.host, c.out)
            except ShipyardError:
                if existed:  # the processes that kept serving run with the old settings
                    write(app, old)
                else:
                    env_file(app).unlink()
                c.out.line(f"  ↩ {env_file(app)} back as it was")
                raise
            if isinstance(detail, Skip):
                c.out.skip("restart", detail)
            else:
                c.out.ok("restart", time.monotonic() - started, detail)
            restart = not isinstance(detail, Skip)
        c.record(f"{verb} {', '.join(keys)}", keys=keys, change=verb, restarted=restart)
        c.out.final(f"{app.name}: {what}" + ("; processes restarted" if restart else ""), True)
    return True


VERBS = ("set", "unset", "get")


def command(words: list[str], root: Path | None, show: bool, stdin: bool, restart: bool) -> int:
    """``shipyard config [set|unset|get] APP …``: which verb, its arguments, then the work."""
    verb = words[0] if len(words) > 1 and words[0] in VERBS else "list"
    rest = words[1:] if verb != "list" else words
    app = App.at(rest[0], root).require()
    args = rest[1:]
    if verb == "list":
        if args:
            raise ConfigError(f"unexpected {args[0]!r}", f"did you mean `config set {app.name} …`?")
        print("\n".join(listing(app, show)))
        return 0
    if not args:
        raise ConfigError(f"config {verb} {app.name}: name at least one KEY")
    if verb == "get":
        if len(args) != 1:
            raise ConfigError("config get takes one KEY")
        print(get(app, args[0]))
        return 0
    if verb == "unset":
        return 0 if change(app, {}, [check_key(k) for k in args], restart) else 1
    if stdin:
        if len(args) != 1 or "=" in args[0]:
            raise ConfigError("--stdin sets one KEY: `config set APP KEY --stdin`")
        value = sys.stdin.read()
        values = {check_key(args[0]): value[:-1] if value.endswith("\n") else value}
    else:
        values = dict(parse_assignment(a, b) for a, b in zip(args, ["", *args], strict=False))
    return 0 if change(app, values, [], restart) else 1


def staged(app: App, data: dict) -> tuple[Path, str, int]:
    """A peer's new ``.env`` for the receiver's ``stage`` route: the same keys set and unset
    as on the primary, applied to this host's own file."""
    values, unset = data.get("values") or {}, data.get("unset") or []
    if not isinstance(values, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in values.items()
    ):
        raise ShipyardError("values must map keys to strings")
    if not isinstance(unset, list) or not all(isinstance(k, str) for k in unset):
        raise ShipyardError("unset must be a list of keys")
    present = parse(read_text(app), str(env_file(app)))
    _, text = plan(app, values, [k for k in unset if k in present])
    return env_file(app), text, 0o600
