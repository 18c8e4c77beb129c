"""The predictor's error type."""


class PredictorError(ValueError):
    """A predictor or training table hwloop cannot use; the message names the file or rows and the field."""
