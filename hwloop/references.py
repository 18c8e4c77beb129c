"""What a layer's kernel is checked against: seeded inputs and torch's output for them, the output
kept under the cache so that torch computes it once per config, for every board and pass."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from . import kernels
from .layers import LayerConfig


def check_io(config: LayerConfig, folder: Path | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The data and weight a kernel of ``config`` is checked on (:func:`hwloop.kernels.random_inputs`)
    and torch's output for them (:func:`hwloop.kernels.reference`). With ``folder``, the output is
    kept there, one file per config and version of the kernels' code and of torch, and read back."""
    data, weight = kernels.random_inputs(config)
    if folder is None:
        return data, weight, kernels.reference(config, data, weight)
    path = Path(folder) / f"{config.id.replace(':', '-')}-{_version()}.npy"
    with contextlib.suppress(OSError, ValueError):
        expected = np.load(path, allow_pickle=False)
        if expected.shape == tuple(config.output_shape) and expected.dtype == np.float32:
            return data, weight, expected
    expected = kernels.reference(config, data, weight)
    with contextlib.suppress(OSError):  # a folder that cannot be written costs the next check torch's time
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.stem}.{os.getpid()}.npy")
        np.save(partial, expected)
        os.replace(partial, path)
    return data, weight, expected


@lru_cache(maxsize=1)
def _version() -> str:
    """A hash of the code that makes the inputs and the output (:mod:`hwloop.kernels`) and of torch's version."""
    try:
        torch = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch = "unknown"
    return hashlib.sha256(Path(kernels.__file__).read_bytes() + torch.encode()).hexdigest()[:12]
