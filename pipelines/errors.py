"""Errors a user can act on. The command line prints them without a traceback."""


class LatentmillError(Exception):
    """Base class: the message says what is wrong and what was expected."""


class ConfigError(LatentmillError):
    """A configuration field holds a value it cannot hold.

    `path` is the dotted field path; parents prepend their own name as the error travels up.
    """

    def __init__(self, path: str, expected: str, got: object = None, *, detail: str | None = None):
        self.path = path
        self.expected = expected
        self.got = got
        self.detail = detail
        super().__init__(self._message())

    def _message(self) -> str:
        text = detail if (detail := self.detail) else f"expected {self.expected}, got {self.got!r}"
        return f"{self.path}: {text}" if self.path else text

    def under(self, parent: str) -> "ConfigError":
        path = f"{parent}.{self.path}" if self.path else parent
        return ConfigError(path, self.expected, self.got, detail=self.detail)


class SchedulingError(LatentmillError):
    """The cluster cannot run a stage as configured (it would otherwise wait forever)."""


class OutputError(LatentmillError):
    """The output location cannot be used as asked (another job's data, unreadable, ...)."""
