"""Errors of the evaluation stage that the command line reports as one line (no torch import)."""


class PredictionsFileError(ValueError):
    """A predictions file that cannot be trusted; the message names the file, the line and the fix."""
