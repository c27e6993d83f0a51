"""The tool's own exceptions.

Everything a user can get wrong raises a subclass of :class:`CnnError` deep down;
the CLI edge turns it into a one-paragraph message and exit status 2. Anything
else escaping to the CLI is a bug in cnncli and keeps its traceback.
"""

from __future__ import annotations


class CnnError(Exception):
    """A user's mistake: shown as a message, exit status 2, no traceback."""

    exit_code = 2


class SpecError(CnnError):
    """A model file that is malformed or does not describe a valid network."""


class UnknownModel(SpecError):
    """A model name that is neither a built-in model nor a model file."""


class ShapeError(SpecError):
    """Layers whose shapes do not fit together, or an input the network cannot take."""


class DataError(CnnError):
    """A dataset that is missing, truncated, corrupt or cannot be fetched."""


class CheckpointError(CnnError):
    """A checkpoint that is corrupt or does not fit the model."""


class ModelMismatch(CheckpointError):
    """A checkpoint trained for another network than the model it is loaded into."""


class UsageError(CnnError):
    """An invalid command-line value (a flag out of range, a bad input array, ...)."""


class TrainingStopped(CnnError):
    """Training stopped early (non-finite loss); the last good checkpoint is kept."""


class WorkerLost(RuntimeError):
    """A data-parallel collective failed because another process of the group stopped (not a user's mistake:
    training ends with a checkpoint and status ``stopped``)."""
