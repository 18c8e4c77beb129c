"""Datasets for training and fine-tuning: Fashion-MNIST from Debian's IDX files, CIFAR-10's binary
batches, or the user's own DataLoaders through the Python API."""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

FASHION_MNIST = Path(os.environ.get("HWLOOP_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
DATASET_HELP = "fashion-mnist (Debian's dataset-fashion-mnist IDX files) or cifar10:PATH (CIFAR-10 binary version)"


class DataError(ValueError):
    """A dataset hwloop cannot read; the message names the file and what is wrong."""


@dataclass
class Data:
    """Train and test loaders, the model input shape for one image (batch 1) and the class count."""

    name: str
    train: DataLoader
    test: DataLoader
    input_shape: tuple[int, int, int, int]
    num_classes: int


def load_data(spec: str, batch_size: int = 128, train_samples: int | None = None,
              test_samples: int | None = None, seed: int = 0) -> Data:
    """``fashion-mnist`` or ``cifar10:PATH``; ``*_samples`` keep the first N images of each split."""
    if spec == "fashion-mnist":
        (xtr, ytr), (xte, yte) = _fashion_mnist(FASHION_MNIST)
    elif spec.startswith("cifar10:"):
        (xtr, ytr), (xte, yte) = _cifar10(Path(spec.removeprefix("cifar10:")).expanduser())
    else:
        raise DataError(f"dataset {spec!r}: expected {DATASET_HELP}")
    xtr, ytr, xte, yte = xtr[:train_samples], ytr[:train_samples], xte[:test_samples], yte[:test_samples]
    mean, std = xtr.mean(dim=(0, 2, 3), keepdim=True), xtr.std(dim=(0, 2, 3), keepdim=True)
    train = TensorDataset((xtr - mean) / std, ytr)
    test = TensorDataset((xte - mean) / std, yte)
    generator = torch.Generator().manual_seed(seed)
    return Data(spec, DataLoader(train, batch_size, shuffle=True, generator=generator),
                DataLoader(test, 256), (1, *xtr.shape[1:]), int(ytr.max()) + 1)


def first_batches(loader: DataLoader, count: int) -> list:
    """The first ``count`` batches of ``loader`` (for importance scores and channel statistics)."""
    return [batch for batch, _ in zip(loader, range(count))]


def _idx(path: Path, dims: int) -> np.ndarray:
    """An IDX array (optionally gzipped) of unsigned bytes with ``dims`` dimensions."""
    try:
        raw = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if len(raw) < 4 + 4 * dims or raw[:3] != b"\0\0\x08" or raw[3] != dims:
        raise DataError(f"{path}: not an IDX file of unsigned bytes with {dims} dimensions")
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(dims))
    body = np.frombuffer(raw, np.uint8, offset=4 + 4 * dims)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path}: header says {shape} but holds {body.size} bytes")
    return body.reshape(shape)


def _fashion_mnist(root: Path):
    def find(stem: str) -> Path:
        for name in (f"{stem}.gz", stem):
            if (root / name).is_file():
                return root / name
        raise DataError(f"{root / stem}.gz: missing; install Debian's dataset-fashion-mnist "
                        "or set HWLOOP_FASHION_MNIST to a folder of the IDX files")

    def split(prefix: str):
        images = _idx(find(f"{prefix}-images-idx3-ubyte"), 3)
        labels = _idx(find(f"{prefix}-labels-idx1-ubyte"), 1)
        if len(images) != len(labels):
            raise DataError(f"{root}: {prefix}: {len(images)} images but {len(labels)} labels")
        return torch.from_numpy(images.astype(np.float32) / 255).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))

    return split("train"), split("t10k")


def _cifar10(path: Path):
    folder = path / "cifar-10-batches-bin" if (path / "cifar-10-batches-bin").is_dir() else path
    if not folder.is_dir():
        raise DataError(f"cifar10:{path}: no such folder")

    def split(names: list[str]):
        images, labels = [], []
        for name in names:
            file = folder / name
            if not file.is_file():
                raise DataError(f"{file}: missing; cifar10:PATH needs the binary version "
                                "(data_batch_1.bin .. data_batch_5.bin, test_batch.bin)")
            records = np.fromfile(file, np.uint8)
            if records.size % 3073:
                raise DataError(f"{file}: {records.size} bytes is not a whole number of 3073-byte records")
            records = records.reshape(-1, 3073)
            labels.append(records[:, 0].astype(np.int64))
            images.append(records[:, 1:].reshape(-1, 3, 32, 32).astype(np.float32) / 255)
        return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))

    return split([f"data_batch_{i}.bin" for i in range(1, 6)]), split(["test_batch.bin"])
