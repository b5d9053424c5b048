"""The few exceptions shipyard raises on purpose.

Each carries a message meant for the person at the terminal: what went wrong
and, where there is one, what to do about it (``hint``). Anything else that
escapes is a bug.
"""


class ShipyardError(Exception):
    """Base class: a failure the user can act on."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}; {self.hint}" if self.hint else self.message


class ConfigError(ShipyardError):
    """A shipyard.toml, Procfile or .env that cannot be used as it is."""


class AppError(ShipyardError):
    """An app name, deploy root or layout that is missing or not shipyard's."""


class PhaseError(ShipyardError):
    """A deploy phase failed; ``output`` holds the tail of what the failing command printed."""

    def __init__(self, message: str, hint: str = "", output: str = "") -> None:
        super().__init__(message, hint)
        self.output = output


class LockTimeout(ShipyardError):
    """Another deploy held the app's lock for longer than we were willing to wait."""


class RootRefused(ShipyardError):
    """Pushed code would run as root on a host that does not allow it (``shipyard.guard``)."""


class CommandFailed(PhaseError):
    """A command of the app's (build step, ``release:``, migration, probe) did not succeed;
    ``result`` is its ``command.Result``, ``output`` what it printed."""

    def __init__(self, result, what: str, message: str = "", hint: str = "") -> None:
        message = message or f"{what} failed (exit {result.exited})"
        super().__init__(message, hint, output=result.output)
        self.result = result


class CommandTimedOut(CommandFailed):
    """A command of the app's ran past its timeout; it was stopped with its process group."""

    def __init__(self, result, what: str, message: str = "", hint: str = "") -> None:
        within = f"{result.timeout:.0f}s" if result.timeout is not None else "its time"
        message = message or f"{what} did not finish within {within} and was stopped"
        super().__init__(result, what, message, hint)


class ProcessFailed(PhaseError):
    """The app's processes did not come up or do not run the release (restart, verify)."""


class CronError(ShipyardError):
    """A job that cannot be run or a crontab that cannot be installed."""


class HostFailed(ShipyardError):
    """One host of several could not take a change (config, scale, restart): named in it."""


class Fault(Exception):
    """supervisord answered a call with an XML-RPC fault (codes: ``supervisor.xmlrpc.Faults``);
    not a ShipyardError: the caller decides what a fault means (a group not there, or worse)."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"{code}: {text}")
        self.faultCode, self.faultString = code, text


class BadAnswer(ConnectionError):
    """What came back over HTTP was not an HTTP answer (``shipyard.exchange``); an OSError,
    so that a caller handles it as it handles a connection that failed."""


class NoAnswer(BadAnswer):
    """The other side closed the connection before its status line: e.g. a TLS server
    spoken to in plain HTTP, or a server that stopped."""
