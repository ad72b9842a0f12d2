"""Errors the command line turns into a one-paragraph message and a non-zero exit."""

from __future__ import annotations


class ImmunoprofileError(Exception):
    """A problem the user can fix: the message names the file, key, sample or column."""


class ConfigError(ImmunoprofileError):
    """The run configuration is missing, unreadable or does not match the schema."""


class InputError(ImmunoprofileError):
    """Bad input data (samplesheet, count matrices); ``problems`` lists each one."""

    def __init__(self, message: str, *, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or [message]


class StoreError(ImmunoprofileError):
    """A store in the workdir does not match its manifest (truncated, corrupt, missing)."""

    def __init__(self, message: str, *, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or [message]
