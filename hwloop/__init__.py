"""hwloop: hardware-in-the-loop, latency-aware channel pruning."""

__version__ = "0.1.0"
