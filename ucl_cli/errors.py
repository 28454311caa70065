"""Typed errors. The library raises these; only the CLI prints them and chooses exit codes.

Every message says what went wrong, with which file, and what to do about it.
"""

from __future__ import annotations


class UclError(Exception):
    """Base class of every error `ucl` raises on purpose (exit code 1 in the CLI)."""

    exit_code = 1


class UsageError(UclError):
    """The user asked for something that cannot work as asked (exit code 2)."""

    exit_code = 2


class InputFileError(UclError):
    """A file the user handed in cannot be read or is not what it claims to be."""

    def __init__(self, path: object, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class ModelNotAvailableError(UclError):
    """Model weights or tokenizer files are missing and cannot be fetched."""


class UnknownModelError(UsageError):
    """A model key is not in the registry."""


class BankError(UclError):
    """A bridge bank is missing, corrupt, or incompatible with the query's models."""


class NonFiniteScoresError(UclError):
    """Scores contain NaN or infinity where a finite value is required."""
