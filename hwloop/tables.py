"""Measurement tables: ``tables/<device>/part-*.parquet``, one row per measurement, append-only.

``pandas.read_parquet("tables/<device>")`` reads a device's layer table. Whole-model measurements
live beside it in ``tables/<device>/_models/`` (a folder that pandas skips when reading the layer
table; read it with :func:`read_models` or ``pandas.read_parquet("tables/<device>/_models")``).
Every measurement is written as its own part file (written to a hidden temporary name, fsynced,
then renamed), so a killed run loses at most the measurement in flight; :func:`compact` merges
parts without losing rows.
"""

from __future__ import annotations

import os
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA = pa.schema([
    ("measurement_id", pa.string()),
    ("config_id", pa.string()),
    ("device", pa.string()),
    ("op", pa.string()),
    ("batch", pa.int32()),
    ("in_channels", pa.int32()),
    ("out_channels", pa.int32()),
    ("input_h", pa.int32()),
    ("input_w", pa.int32()),
    ("kernel", pa.int32()),
    ("stride", pa.int32()),
    ("padding", pa.int32()),
    ("groups", pa.int32()),
    ("dtype", pa.string()),
    ("macs", pa.int64()),
    ("status", pa.string()),
    ("stage", pa.string()),
    ("error", pa.string()),
    ("latency_ms", pa.float64()),
    ("latency_mean_ms", pa.float64()),
    ("latency_std_ms", pa.float64()),
    ("latency_min_ms", pa.float64()),
    ("latency_cv", pa.float64()),
    ("latencies_ms", pa.list_(pa.float64())),
    ("repeats", pa.int32()),
    ("attempts", pa.int32()),
    ("check_error", pa.float64()),
    ("schedule", pa.string()),
    ("target", pa.string()),
    ("cc", pa.string()),
    ("protocol", pa.string()),
    ("protocol_id", pa.string()),
    ("tvm_version", pa.string()),
    ("hwloop_version", pa.string()),
    ("build_s", pa.float64()),
    ("build_cached", pa.bool_()),
    ("measure_s", pa.float64()),
    ("timing_s", pa.float64()),
    ("measured_at", pa.timestamp("us", tz="UTC")),
    ("fp_id", pa.string()),
    ("fp_cpu_model", pa.string()),
    ("fp_arch", pa.string()),
    ("fp_cores", pa.int32()),
    ("fp_kernel", pa.string()),
    ("fp_hostname", pa.string()),
    ("fp_governor", pa.string()),
    ("fp_freq_mhz", pa.float64()),
    ("fp_max_freq_mhz", pa.float64()),
    ("fp_temp_c", pa.float64()),
    ("fp_load1", pa.float64()),
    ("fp_power_mode", pa.string()),
])
COLUMNS = SCHEMA.names

_CONTEXT = ["status", "stage", "error", "latency_ms", "latency_mean_ms", "latency_std_ms", "latency_min_ms",
            "latency_cv", "latencies_ms", "repeats", "attempts", "check_error", "schedule", "target", "cc",
            "protocol", "protocol_id", "tvm_version", "hwloop_version", "build_s", "build_cached", "measure_s",
            "timing_s", "measured_at"]
MODEL_SCHEMA = pa.schema([
    ("measurement_id", pa.string()),
    ("model_id", pa.string()),
    ("model", pa.string()),
    ("device", pa.string()),
    ("input_shape", pa.string()),
    ("layers", pa.string()),
    ("macs", pa.int64()),
    *(SCHEMA.field(name) for name in _CONTEXT),
    *(field for field in SCHEMA if field.name.startswith("fp_")),
])
MODELS = "_models"


class TableError(ValueError):
    """A table that cannot be read as written by hwloop."""


def device_dir(tables: Path, device: str) -> Path:
    return Path(tables) / device


def models_dir(tables: Path, device: str) -> Path:
    return device_dir(tables, device) / MODELS


def append(tables: Path, device: str, rows: list[dict]) -> Path:
    """Write ``rows`` as one new part of ``device``'s layer table, atomically; returns the part's path."""
    return _append(device_dir(tables, device), SCHEMA, rows)


def append_models(tables: Path, device: str, rows: list[dict]) -> Path:
    """Write whole-model ``rows`` as one new part of ``device``'s model table."""
    return _append(models_dir(tables, device), MODEL_SCHEMA, rows)


def _append(directory: Path, schema: pa.Schema, rows: list[dict]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    path = directory / f"part-{stamp}-{uuid.uuid4().hex[:8]}.parquet"
    _write_atomic(pa.Table.from_pylist([{c: row.get(c) for c in schema.names} for row in rows], schema=schema), path)
    return path


def _write_atomic(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def parts(tables: Path, device: str) -> list[Path]:
    return sorted(device_dir(tables, device).glob("part-*.parquet"))


def read(tables: Path, device: str) -> pd.DataFrame:
    """Every layer measurement of ``device`` (an empty frame with the schema when there is none)."""
    return _read(device_dir(tables, device), SCHEMA)


def read_models(tables: Path, device: str) -> pd.DataFrame:
    """Every whole-model measurement of ``device``."""
    return _read(models_dir(tables, device), MODEL_SCHEMA)


def _read(directory: Path, schema: pa.Schema) -> pd.DataFrame:
    frames = [_read_part(path, schema) for path in sorted(directory.glob("part-*.parquet"))]
    if not frames:
        return schema.empty_table().to_pandas()
    table = pa.concat_tables(frames)
    return table.to_pandas().drop_duplicates("measurement_id", keep="first").reset_index(drop=True)


def _read_part(path: Path, schema: pa.Schema) -> pa.Table:
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise TableError(f"{path}: not a readable Parquet file ({exc}); move it out of the table folder "
                         f"to go on, nothing else is affected") from exc
    missing = [c for c in schema.names if c not in table.column_names]
    if missing:
        raise TableError(f"{path}: not an hwloop table part (missing columns: {', '.join(missing[:5])})")
    try:
        return table.select(schema.names).cast(schema)
    except (pa.ArrowException, ValueError) as exc:
        raise TableError(f"{path}: columns of unexpected types ({exc})") from exc


def devices(tables: Path) -> list[str]:
    """Names of the devices that have a table under ``tables``."""
    root = Path(tables)
    return sorted(d.name for d in root.iterdir() if d.is_dir() and any(d.glob("part-*.parquet"))) if root.is_dir() else []


def compact(tables: Path, device: str) -> Path | None:
    """Merge ``device``'s parts into one. Rows are kept; a crash midway leaves duplicates that
    :func:`read` drops by ``measurement_id``."""
    sources = parts(tables, device)
    if len(sources) < 2:
        return None
    merged = pa.Table.from_pandas(read(tables, device), schema=SCHEMA, preserve_index=False)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    target = device_dir(tables, device) / f"part-{stamp}-compact.parquet"
    _write_atomic(merged, target)
    for path in sources:
        path.unlink()
    return target


def new_measurement_id() -> str:
    return uuid.uuid4().hex
