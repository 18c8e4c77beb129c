"""Per-device latency predictor: a work model of the ``default`` rules corrected by XGBoost on layer
features, trained on a device's measurement table."""

from .errors import PredictorError
from .model import Predictor

__all__ = ["Predictor", "PredictorError"]
