"""The one error type every loader raises for a problem the user can fix (file, key, shape)."""
from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint directory/file is missing, inconsistent or not what graphopt can load.

    The message names the file (and key) and what was expected."""
