"""User-facing errors.

Anything the user can fix (a recipe key, a data file, a verifier) raises a subclass of
:class:`PosttrainError`. The CLI prints its message as one paragraph, without a traceback, and
exits with status 2. Messages name the file, the key or column, and what was expected.
"""
from __future__ import annotations


class PosttrainError(Exception):
    """Base class for errors caused by user input; the CLI exits 2 on these."""

    exit_code = 2


class ConfigError(PosttrainError):
    """A recipe, override or stage config is invalid (unknown key, wrong type, bad reference)."""


class DataError(PosttrainError):
    """A data file is missing, empty, malformed, or lacks the columns a stage needs."""


class VerifierError(PosttrainError):
    """A verifier could not be loaded, or failed too often during a stage."""


class StageFailed(PosttrainError):
    """A stage (or one of its worker processes) failed; the message carries the log tail."""


class ToolError(PosttrainError):
    """A tool or environment could not be loaded, or failed too often during a stage."""
