"""The engine's errors: each names the bad input (a file, a row, a model, a unit group) and says what to do."""
from __future__ import annotations


class ModelError(ValueError):
    """A model that cannot be found, read or handled; the message says which and what to do."""


class DataError(ValueError):
    """Bad input data: the message names the file, row or column and says what to do."""
