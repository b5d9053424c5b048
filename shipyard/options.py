"""Push options (``git push -o NAME[=VALUE]``): the few a deploy understands.

An unknown option is refused before the branch moves, so a typo never deploys
with a default the pusher did not mean.
"""

from __future__ import annotations

from .errors import ShipyardError

KNOWN = {
    "skip-migrate": "do not run migrations for this deploy",
    "no-restart": "switch the release but leave running processes alone",
    "no-wait": "return once the deploy started, without waiting for its outcome",
    "wait": "wait for the deploy's outcome even where the host says push_wait = false",
    "color": "never, always or auto",
    "message": "a note recorded in the deploy history",
    "maintenance": "serve the maintenance page from before the migrations until verified",
}
COLORS = ("never", "always", "auto")
FLAGS = ("skip-migrate", "no-restart", "no-wait", "wait")


def parse_options(raw: list[str]) -> dict[str, str]:
    options: dict[str, str] = {}
    for item in raw:
        name, _, value = item.partition("=")
        if name not in KNOWN:
            known = ", ".join(sorted(KNOWN))
            raise ShipyardError(f"unknown push option {name!r}", f"known options: {known}")
        if name == "color" and value not in COLORS:
            raise ShipyardError(f"push option color={value!r} is not one of {', '.join(COLORS)}")
        if name in FLAGS and "=" in item:  # `skip-migrate=false` would still skip: refuse it
            raise ShipyardError(
                f"push option {name} takes no value (got {item!r})", f"write `-o {name}`"
            )
        options[name] = value
    if "wait" in options and "no-wait" in options:
        raise ShipyardError("push options wait and no-wait contradict each other", "give one")
    return options


def waits(options: dict[str, str], host: object) -> bool:
    """Does the push wait for the deploy's outcome (and fail when it fails)?"""
    if "wait" in options or "no-wait" in options:
        return "wait" in options
    return bool(getattr(host, "push_wait", True))


def refuse_push_only(options: dict[str, str], command: str) -> None:
    """``no-wait``/``wait`` are about a push; a command in the foreground always waits."""
    for name in ("no-wait", "wait"):
        if name in options:
            raise ShipyardError(
                f"-o {name} is for `git push`: `shipyard {command}` runs in the foreground "
                "and always waits for the outcome",
                f"run it without -o {name}",
            )


def from_env(env: dict[str, str]) -> list[str]:
    """The push options git passes to pre- and post-receive hooks in GIT_PUSH_OPTION_<n>."""
    try:
        count = int(env.get("GIT_PUSH_OPTION_COUNT", "0"))
    except ValueError:
        return []
    return [env.get(f"GIT_PUSH_OPTION_{i}", "") for i in range(count)]


def wants_color(options: dict[str, str], env: dict[str, str]) -> bool:
    choice = options.get("color", "auto")
    if choice != "auto":
        return choice == "always"
    return "NO_COLOR" not in env
