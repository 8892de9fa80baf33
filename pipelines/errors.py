"""Errors a user can act on. The command line prints them without a traceback.

Each class carries the exit code the command line returns for it: 2 for a usage or spec error
(fix the command or the spec), 1 for a job or output that failed (see the message, rerun).
"""


class LatentmillError(Exception):
    """Base class: the message says what is wrong and what was expected."""

    exit_code = 1


class ConfigError(LatentmillError):
    """A configuration field holds a value it cannot hold.

    `path` is the dotted field path; parents prepend their own name as the error travels up.
    """

    exit_code = 2

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

    exit_code = 2


class StageStalled(LatentmillError):
    """A stage has work but has had no live actor for too long: its node was lost and the cluster
    has no room to start it again. Unlike SchedulingError, the spec may be fine: exit 1."""


class OutputError(LatentmillError):
    """The output failed or cannot be used now (unreachable, damaged, written by another driver)."""


class OutputConflict(OutputError):
    """The spec does not fit the output it names (another job, foreign data, changed weights)."""

    exit_code = 2


class Interrupted(LatentmillError):
    """The user stopped the run (Ctrl-C); what was committed stays committed."""

    exit_code = 130
