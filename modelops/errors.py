"""Errors that the command-line entry points turn into exit codes."""

from __future__ import annotations


class UsageError(ValueError):
    """Bad usage or input: the message says what was wrong and what to do. Exit code 2."""


class ArtifactError(UsageError):
    """A model artifact that cannot be read: missing, corrupt, wrong format or untrusted."""
