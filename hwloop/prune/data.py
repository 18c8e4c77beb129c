"""Datasets for training and fine-tuning: Fashion-MNIST from Debian's IDX files, CIFAR-10's binary
batches, a folder of images per class (``train/``, ``val/``; read with Pillow), arrays in an
``.npz`` file, or the user's own DataLoaders through the Python API.

Images are held in memory as float tensors, normalised per channel with the training split's
statistics; with an input shape they are resized (bilinear, antialiased) and grey images repeated
to 3 channels (or colour images averaged to 1), so that a 3-channel model trains on Fashion-MNIST."""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

FASHION_MNIST = Path(os.environ.get("HWLOOP_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
DATASET_HELP = (
    "fashion-mnist (Debian's dataset-fashion-mnist IDX files), cifar10:PATH (CIFAR-10 binary version), "
    "folder:PATH (PATH/train/CLASS/*.png and PATH/val/CLASS/*.png, or test/; needs Pillow) or npz:PATH "
    "(arrays x_train, y_train, x_test, y_test)"
)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


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


def load_data(
    spec: str,
    batch_size: int = 128,
    train_samples: int | None = None,
    test_samples: int | None = None,
    seed: int = 0,
    input_shape: tuple[int, ...] | None = None,
) -> Data:
    """``fashion-mnist``, ``cifar10:PATH``, ``folder:PATH`` or ``npz:PATH``; ``*_samples`` keep the
    first N images of each split; ``input_shape`` (N, C, H, W; N is ignored) resizes the images
    and converts their channels (1 to 3 by repeating, 3 to 1 by averaging)."""
    if input_shape is not None and (len(input_shape) != 4 or input_shape[1] not in (1, 3)):
        raise DataError(f"dataset {spec!r}: input shape {tuple(input_shape)}: images are N,C,H,W with 1 or 3 channels")
    size = tuple(input_shape[2:]) if input_shape is not None else None
    if spec == "fashion-mnist":
        (xtr, ytr), (xte, yte) = _fashion_mnist(FASHION_MNIST)
    elif spec.startswith("cifar10:"):
        (xtr, ytr), (xte, yte) = _cifar10(Path(spec.removeprefix("cifar10:")).expanduser())
    elif spec.startswith("folder:"):
        (xtr, ytr), (xte, yte) = _folder(
            Path(spec.removeprefix("folder:")).expanduser(),
            size,
            train_samples,
            test_samples,
            1 if input_shape is not None and input_shape[1] == 1 else 3,
        )
    elif spec.startswith("npz:"):
        (xtr, ytr), (xte, yte) = _npz(Path(spec.removeprefix("npz:")).expanduser())
    else:
        raise DataError(f"dataset {spec!r}: expected {DATASET_HELP}")
    xtr, ytr, xte, yte = xtr[:train_samples], ytr[:train_samples], xte[:test_samples], yte[:test_samples]
    if len(xtr) == 0 or len(xte) == 0:
        raise DataError(f"dataset {spec!r}: the {'training' if len(xtr) == 0 else 'test'} split is empty")
    if input_shape is not None:
        xtr, xte = _shaped(xtr, input_shape), _shaped(xte, input_shape)
    mean, std = xtr.mean(dim=(0, 2, 3), keepdim=True), xtr.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    train = TensorDataset((xtr - mean) / std, ytr)
    test = TensorDataset((xte - mean) / std, yte)
    generator = torch.Generator().manual_seed(seed)
    return Data(
        spec,
        DataLoader(train, batch_size, shuffle=True, generator=generator),
        DataLoader(test, 256),
        (1, *xtr.shape[1:]),
        int(ytr.max()) + 1,
    )


def _shaped(images: torch.Tensor, input_shape: tuple[int, ...]) -> torch.Tensor:
    """``images`` (N, C, H, W) resized to ``input_shape``'s H, W and converted to its channels, in
    chunks (the full-size copy is never held twice)."""
    channels, size = input_shape[1], tuple(input_shape[2:])
    if images.shape[1] not in (1, 3):
        raise DataError(f"images have {images.shape[1]} channels; input shapes convert between 1 and 3 only")
    chunks = []
    for chunk in images.split(1024):
        if tuple(chunk.shape[2:]) != size:
            chunk = torch.nn.functional.interpolate(
                chunk, size=size, mode="bilinear", antialias=True, align_corners=False
            )
        if chunk.shape[1] != channels:
            chunk = chunk.expand(-1, channels, -1, -1) if channels == 3 else chunk.mean(1, keepdim=True)
        chunks.append(chunk.contiguous())
    return torch.cat(chunks)


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
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    body = np.frombuffer(raw, np.uint8, offset=4 + 4 * dims)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path}: header says {shape} but holds {body.size} bytes")
    return body.reshape(shape)


def _fashion_mnist(root: Path):
    def find(stem: str) -> Path:
        for name in (f"{stem}.gz", stem):
            if (root / name).is_file():
                return root / name
        raise DataError(
            f"{root / stem}.gz: missing; install Debian's dataset-fashion-mnist "
            "or set HWLOOP_FASHION_MNIST to a folder of the IDX files"
        )

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
                raise DataError(
                    f"{file}: missing; cifar10:PATH needs the binary version "
                    "(data_batch_1.bin .. data_batch_5.bin, test_batch.bin)"
                )
            records = np.fromfile(file, np.uint8)
            if records.size % 3073:
                raise DataError(f"{file}: {records.size} bytes is not a whole number of 3073-byte records")
            records = records.reshape(-1, 3073)
            labels.append(records[:, 0].astype(np.int64))
            images.append(records[:, 1:].reshape(-1, 3, 32, 32).astype(np.float32) / 255)
        return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))

    return split([f"data_batch_{i}.bin" for i in range(1, 6)]), split(["test_batch.bin"])


def _npz(path: Path):
    """``x_train, y_train, x_test, y_test`` (or ``x_val, y_val``) of an ``.npz`` file: images
    N x H x W, N x H x W x C or N x C x H x W (C of 1 or 3; bytes are scaled to 0..1), integer labels."""
    try:
        arrays = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable .npz file of arrays: {exc}") from exc
    with arrays:
        names = set(arrays.files)
        test = "val" if {"x_val", "y_val"} <= names and "x_test" not in names else "test"
        missing = [n for n in ("x_train", "y_train", f"x_{test}", f"y_{test}") if n not in names]
        if missing:
            raise DataError(
                f"{path}: {missing[0]}: missing; expected arrays x_train, y_train, x_test, y_test "
                f"(or x_val, y_val); found {', '.join(sorted(names)) or 'none'}"
            )
        return tuple(_npz_split(path, arrays[f"x_{split}"], arrays[f"y_{split}"], split) for split in ("train", test))


def _npz_split(path: Path, images: np.ndarray, labels: np.ndarray, split: str):
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4 and images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
        images = images.transpose(0, 3, 1, 2)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise DataError(
            f"{path}: x_{split}: shape {images.shape}: expected N x H x W, N x H x W x C or N x C x H x W "
            "with C of 1 or 3"
        )
    if not np.issubdtype(images.dtype, np.number):
        raise DataError(f"{path}: x_{split}: dtype {images.dtype} is not numeric")
    if (
        labels.ndim != 1
        or len(labels) != len(images)
        or not np.issubdtype(labels.dtype, np.integer)
        or (len(labels) and labels.min() < 0)
    ):
        raise DataError(
            f"{path}: y_{split}: expected {len(images)} non-negative integer labels, got shape "
            f"{labels.shape} of {labels.dtype}"
        )
    scale = 255.0 if images.dtype == np.uint8 else 1.0
    return torch.from_numpy(images.astype(np.float32) / scale), torch.from_numpy(labels.astype(np.int64))


def _folder(
    root: Path, size: tuple[int, int] | None, train_samples: int | None, test_samples: int | None, channels: int
):
    """An image folder per class under ``root/train`` and ``root/val`` (or ``root/test``); classes
    are the folder names, sorted, shared by both splits. Images are resized to ``size`` (default:
    the first training image's)."""
    try:
        from PIL import Image
    except ImportError as exc:
        raise DataError("folder:PATH datasets need Pillow: pip install 'hwloop[vision]'") from exc
    if not (root / "train").is_dir():
        raise DataError(
            f"folder:{root}: {root / 'train'}: no such folder (expected train/CLASS/IMAGE and val/CLASS/IMAGE)"
        )
    test_dir = next((root / name for name in ("val", "test") if (root / name).is_dir()), None)
    if test_dir is None:
        raise DataError(f"folder:{root}: {root / 'val'}: no such folder (or test/)")
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"folder:{root}: {root / 'train'} has no class folders")
    extra = sorted(p.name for p in test_dir.iterdir() if p.is_dir() and p.name not in classes)
    if extra:
        raise DataError(f"folder:{root}: {test_dir / extra[0]}: a class that {root / 'train'} does not have")
    mode = "L" if channels == 1 else "RGB"

    def split(folder: Path, limit: int | None):
        files = [
            (path, label)
            for label, name in enumerate(classes)
            if (folder / name).is_dir()
            for path in sorted((folder / name).iterdir())
            if path.suffix.lower() in IMAGE_SUFFIXES
        ]
        if limit is not None:  # a sample spread over the classes, not the first classes only
            files = [files[i] for i in np.random.default_rng(0).permutation(len(files))[:limit]]
        images = []
        for path, _ in files:
            nonlocal size
            try:
                with Image.open(path) as image:
                    image = image.convert(mode)
                    size = size or (image.height, image.width)
                    if (image.height, image.width) != tuple(size):
                        image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
                    images.append(np.asarray(image, dtype=np.uint8))
            except OSError as exc:
                raise DataError(f"{path}: not an image Pillow can read: {exc}") from exc
        if not images:
            raise DataError(f"folder:{root}: {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        array = np.stack(images).reshape(len(images), *size, -1).transpose(0, 3, 1, 2)
        return torch.from_numpy(array.astype(np.float32) / 255), torch.tensor([label for _, label in files])

    return split(root / "train", train_samples), split(test_dir, test_samples)
