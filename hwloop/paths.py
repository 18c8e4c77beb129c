"""Default locations of hwloop's cache."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Build artifacts and tuning records: ``HWLOOP_CACHE`` or ``~/.cache/hwloop``."""
    return Path(os.environ.get("HWLOOP_CACHE") or Path.home() / ".cache" / "hwloop")
