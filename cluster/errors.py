"""Errors of cluster start-up that the command line turns into a one-paragraph message."""

from __future__ import annotations


class ClusterError(RuntimeError):
    """The cluster cannot start: the message says why and what to change."""
