"""Errors the command line turns into a one-paragraph message and a non-zero exit."""

from __future__ import annotations


class ImmunoprofileError(Exception):
    """A problem the user can fix: the message names the file, key, sample or column."""


class ConfigError(ImmunoprofileError):
    """The run configuration is missing, unreadable or does not match the schema."""


class NotImplementedStageError(ImmunoprofileError):
    """A command or stage that this version does not provide yet."""
