"""Measurement tables: ``tables/<device>/``, one row per measurement, append-only.

A device's folder holds its layer table; its whole-model table lives beside it in ``_models/``, a
folder pandas skips when reading the layer table. Each table is

* ``part-*.parquet``: sealed rows; ``pandas.read_parquet("tables/<device>")`` reads them;
* ``_journal/*.arrows``: the rows of a run still going (or of one killed before it sealed them),
  an Arrow IPC stream each;
* ``.lock``: held by the run writing the table, with who it is.

A run writes through a :class:`Writer`: every row is appended to the run's journal, flushed and
fsynced at once, so a killed run loses at most the measurement in flight. When the run ends its
journal becomes one Parquet part (written to a hidden name, fsynced, renamed) and small parts are
merged by size tiers (four parts of one tier become one part of the next), so a table keeps a few
dozen files whatever its size. Nothing is rewritten in place: a merge writes its new part before
it deletes the old ones, and a crash in between leaves duplicates that :func:`read` drops by
``measurement_id``. Readers take no lock; they read the parts and the journals, and only the
columns and rows they ask for.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import sys
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

if TYPE_CHECKING:
    import pandas as pd

SCHEMA = pa.schema(
    [
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
        ("kernel_w", pa.int32()),
        ("stride", pa.int32()),
        ("padding", pa.int32()),
        ("padding_w", pa.int32()),
        ("groups", pa.int32()),
        ("dtype", pa.string()),
        ("activation", pa.string()),
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
        ("trials", pa.int32()),
        ("trial_latencies_ms", pa.list_(pa.float64())),
        ("trial_spread", pa.float64()),
        ("disturbed", pa.int32()),
        ("quiet", pa.bool_()),
        ("sentinel_ms", pa.float64()),
        ("estimator", pa.string()),
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
        ("fp_gpu_name", pa.string()),
        ("fp_gpu_driver", pa.string()),
        ("fp_gpu_sm_mhz", pa.float64()),
        ("fp_gpu_mem_mhz", pa.float64()),
        ("fp_gpu_power_limit_w", pa.float64()),
        ("fp_gpu_clocks_pinned", pa.bool_()),
    ]
)
COLUMNS = SCHEMA.names
LATER = ("kernel_w", "padding_w", "activation")  # rows written before them read as square and plain

_CONTEXT = [
    "status",
    "stage",
    "error",
    "latency_ms",
    "latency_mean_ms",
    "latency_std_ms",
    "latency_min_ms",
    "latency_cv",
    "latencies_ms",
    "repeats",
    "trials",
    "trial_latencies_ms",
    "trial_spread",
    "disturbed",
    "quiet",
    "sentinel_ms",
    "estimator",
    "check_error",
    "schedule",
    "target",
    "cc",
    "protocol",
    "protocol_id",
    "tvm_version",
    "hwloop_version",
    "build_s",
    "build_cached",
    "measure_s",
    "timing_s",
    "measured_at",
]
MODEL_SCHEMA = pa.schema(
    [
        ("measurement_id", pa.string()),
        ("model_id", pa.string()),
        ("model", pa.string()),
        ("device", pa.string()),
        ("input_shape", pa.string()),
        ("layers", pa.string()),
        ("macs", pa.int64()),
        *(SCHEMA.field(name) for name in _CONTEXT),
        *(field for field in SCHEMA if field.name.startswith("fp_")),
    ]
)
MODELS = "_models"
JOURNAL = "_journal"
LOCK = ".lock"
REQUIRED = ("measurement_id", "device", "status", "latency_ms", "measured_at")  # what makes a file a part of ours
TIER = 4  # parts of one size tier merged into one of the next


class TableError(ValueError):
    """A table that cannot be read or written as hwloop writes it; the message names the file."""


def device_dir(tables: Path, device: str) -> Path:
    return Path(tables) / device


def models_dir(tables: Path, device: str) -> Path:
    return device_dir(tables, device) / MODELS


def new_measurement_id() -> str:
    return uuid.uuid4().hex


class Journal:
    """One run's rows into one table (``models``: the device's model table), each made durable
    before :meth:`write` returns. Its writer holds the table's lock (:class:`Writer`, or a process
    that runs journals in its workers)."""

    def __init__(self, tables: Path, device: str, models: bool = False):
        self.directory = models_dir(tables, device) if models else device_dir(tables, device)
        self.schema = MODEL_SCHEMA if models else SCHEMA
        self.path = self.directory / JOURNAL / f"{_stamp()}-{uuid.uuid4().hex[:8]}.arrows"
        self.rows = 0
        self._file = self._stream = None

    def write(self, row: dict) -> None:
        """Append ``row`` (missing columns are null) and make it durable."""
        batch = pa.RecordBatch.from_pylist([{c: row.get(c) for c in self.schema.names}], schema=self.schema)
        try:
            if self._stream is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(self.path, "wb")
                self._stream = pa.ipc.new_stream(self._file, self.schema)
            self._stream.write_batch(batch)
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as exc:
            raise TableError(
                f"{self.path}: cannot write a row ({exc.strerror or exc}); the {self.rows} rows this "
                f"run wrote before are kept there and are read with the table"
            ) from None
        self.rows += 1

    def close(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            with self._file:
                stream.close()


class Writer(Journal):
    """A run's :class:`Journal` under the table's lock.

    Opening it waits while another run writes the table (``on_wait`` is told who that is) and seals
    the journals that killed runs left; closing it seals every journal (this run's, and those of
    the workers it ran) into parts, merges small parts and releases the table.
    """

    def __init__(self, tables: Path, device: str, models: bool = False, on_wait: Callable[[str], None] | None = None):
        super().__init__(tables, device, models)
        self._lock = _lock(self.directory, on_wait)
        try:
            self._seal_all()
        except TableError:
            self._lock.close()
            raise

    def close(self) -> None:
        """Seal and merge (see the class); rows that cannot be sealed (a full disk) stay in their
        journal, which :func:`read` reads too."""
        try:
            super().close()
            self._seal_all()
            merge_tiers(self.directory, self.schema)
        except OSError as exc:
            raise TableError(
                f"{self.directory}: cannot seal this run's rows ({exc.strerror or exc}); they are kept "
                f"in {JOURNAL}/ and are read with the table"
            ) from None
        finally:
            self._lock.close()

    def _seal_all(self) -> None:
        for journal in sorted((self.directory / JOURNAL).glob("*.arrows")):
            try:
                _seal(self.directory, journal, self.schema)
            except OSError as exc:
                raise TableError(
                    f"{journal}: cannot seal its rows ({exc.strerror or exc}); they stay there and "
                    "are read with the table"
                ) from None

    def __enter__(self) -> "Writer":
        return self

    def __exit__(self, kind, *_) -> None:
        try:
            self.close()
        except TableError:
            if kind is None:
                raise  # else the error already on its way says more


def append(tables: Path, device: str, rows: Iterable[dict], models: bool = False) -> None:
    """Write ``rows`` into ``device``'s table (``models``: its model table) as one run."""
    with Writer(tables, device, models) as writer:
        for row in rows:
            writer.write(row)


def read(tables: Path, device: str, columns: list[str] | None = None, where: dict | None = None) -> pd.DataFrame:
    """``device``'s layer rows (an empty frame with the schema when there are none).

    ``columns`` keeps only those columns; ``where`` keeps rows whose column equals the value (or
    is in the list) given for it."""
    return read_arrow(tables, device, columns, where).to_pandas()


def read_arrow(tables: Path, device: str, columns: list[str] | None = None, where: dict | None = None) -> pa.Table:
    """:func:`read` as an Arrow table (without pandas)."""
    return _read(device_dir(tables, device), SCHEMA, columns, where)


def values(column: pa.ChunkedArray | pa.Array, fill=0) -> np.ndarray:
    """A fixed-width column of a table read here (numbers, booleans, timestamps as their integer)
    as numpy, nulls as ``fill``; read from its buffers, since pyarrow's own conversion imports
    pandas, which alone takes most of a short command's time."""
    array = _array(column)
    kind, length, offset = array.type, len(array), array.offset
    if pa.types.is_boolean(kind):
        dtype = np.dtype(bool)
    elif pa.types.is_floating(kind) or pa.types.is_integer(kind) or pa.types.is_timestamp(kind):
        letter = "f" if pa.types.is_floating(kind) else "u" if pa.types.is_unsigned_integer(kind) else "i"
        dtype = np.dtype(f"{letter}{kind.bit_width // 8}")
    else:
        raise TypeError(f"not a fixed-width column: {kind}")
    if not length:
        return np.empty(0, dtype)
    validity, data = array.buffers()[:2]
    if pa.types.is_boolean(kind):
        result = _bits(data, offset, length)
    else:
        result = np.frombuffer(data, dtype, length, offset * dtype.itemsize).copy()
    if array.null_count:
        result[~_bits(validity, offset, length)] = fill
    return result


def codes(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, list]:
    """A column as the index of each row's value in a list of its distinct values (null: -1), and
    that list; :func:`values` for strings."""
    encoded = _array(pc.dictionary_encode(column))
    return values(encoded.indices, -1).astype(np.int64), encoded.dictionary.to_pylist()


def _array(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """``column`` as one array (``combine_chunks`` builds a column of no chunks from Python, which
    imports pandas)."""
    if not isinstance(column, pa.ChunkedArray):
        return column
    return pa.concat_arrays(column.chunks) if column.num_chunks else pa.nulls(0, column.type)


def _bits(buffer: pa.Buffer, offset: int, length: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(buffer, np.uint8), bitorder="little")[offset : offset + length].astype(bool)


def read_models(tables: Path, device: str, columns: list[str] | None = None, where: dict | None = None) -> pd.DataFrame:
    """``device``'s whole-model rows, as :func:`read` reads layer rows."""
    return _read(models_dir(tables, device), MODEL_SCHEMA, columns, where).to_pandas()


def parts(tables: Path, device: str, models: bool = False) -> list[Path]:
    """The sealed part files of a table."""
    directory = models_dir(tables, device) if models else device_dir(tables, device)
    return sorted(directory.glob("part-*.parquet"))


def devices(tables: Path) -> list[str]:
    """Names of the devices that have a table under ``tables``."""
    root = Path(tables)
    if not root.is_dir():
        return []
    return sorted(
        d.name
        for d in root.iterdir()
        if d.is_dir()
        and not d.name.startswith((".", "_"))
        and (any(d.glob("part-*.parquet")) or any((d / JOURNAL).glob("*.arrows")))
    )


def compact(tables: Path, device: str, on_wait: Callable[[str], None] | None = None) -> Path | None:
    """Merge every part of ``device``'s layer table into one (under the table's lock)."""
    directory = device_dir(tables, device)
    if not directory.is_dir():
        return None
    with Writer(tables, device, on_wait=on_wait):
        return _merge(directory, SCHEMA, sorted(directory.glob("part-*.parquet")))


def merge_tiers(directory: Path, schema: pa.Schema) -> None:
    """Merge parts by size tiers until no tier holds :data:`TIER` parts (call under the table's lock)."""
    while True:
        tiers: dict[int, list[Path]] = {}
        for path in sorted(directory.glob("part-*.parquet")):
            tiers.setdefault(_tier(path), []).append(path)
        full = [paths for paths in tiers.values() if len(paths) >= TIER]
        if not full:
            return
        _merge(directory, schema, full[0])


def _tier(path: Path) -> int:
    try:
        rows = pq.read_metadata(path).num_rows
    except (OSError, pa.ArrowException):
        return -1  # unreadable: never merged, reported by read
    return int(math.log(max(rows, 1), TIER))


def _merge(directory: Path, schema: pa.Schema, sources: list[Path]) -> Path | None:
    sources = [p for p in sources if _tier(p) >= 0]
    if len(sources) < 2:
        return None
    table = _dedup(pa.concat_tables([_read_part(p, schema, schema.names, None) for p in sources]))
    target = directory / f"part-{_stamp()}-{uuid.uuid4().hex[:8]}.parquet"
    _write_atomic(table, target)
    for path in sources:
        path.unlink()
    return target


def _seal(directory: Path, journal: Path, schema: pa.Schema) -> None:
    """Turn ``journal`` into a part (a truncated last row, the one in flight when a run was killed,
    is dropped) and remove it."""
    table = _read_journal(journal, schema)
    if table.num_rows:
        _write_atomic(table, directory / f"part-{journal.stem}.parquet")
    journal.unlink()


def _read_journal(path: Path, schema: pa.Schema) -> pa.Table:
    batches = []
    try:
        with pa.OSFile(str(path)) as source:
            reader = pa.ipc.open_stream(source)
            while True:
                try:
                    batches.append(reader.read_next_batch())
                except StopIteration:
                    break
    except FileNotFoundError:
        raise
    except (OSError, pa.ArrowInvalid):
        pass  # an empty journal, or one cut in the middle of its last row: the rows before it count
    return pa.Table.from_batches([_conform(b, schema) for b in batches], schema=schema)


def _conform(data, schema: pa.Schema):
    """``data`` (a record batch or table) with ``schema``'s columns, cast to its types; columns it
    lacks (written by an older hwloop) are null."""
    columns = [
        data.column(f.name).cast(f.type) if f.name in data.schema.names else pa.nulls(len(data), f.type) for f in schema
    ]
    return type(data).from_arrays(columns, schema=schema)


def _write_atomic(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        pq.write_table(table, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read(directory: Path, schema: pa.Schema, columns: list[str] | None, where: dict | None) -> pa.Table:
    wanted = list(dict.fromkeys(["measurement_id", *(columns or schema.names)]))
    unknown = [c for c in wanted if c not in schema.names]
    if unknown:
        raise ValueError(f"unknown table column(s): {', '.join(unknown)}")
    for _ in range(5):
        try:
            # journals first: a journal sealed meanwhile is then found among the parts
            journals = sorted((directory / JOURNAL).glob("*.arrows"))
            pieces = [_read_part(p, schema, wanted, where) for p in sorted(directory.glob("part-*.parquet"))]
            pieces += [_select(_read_journal(p, schema), wanted, where) for p in journals]
            break
        except FileNotFoundError:
            continue  # sealed or merged while being read: list again
    else:
        raise TableError(f"{directory}: the table kept changing while being read; try again")
    table = _dedup(pa.concat_tables(pieces)) if pieces else schema.empty_table().select(wanted)
    return table.select(list(columns or schema.names))


def _dedup(table: pa.Table) -> pa.Table:
    """``table`` with each ``measurement_id`` once (its first row)."""
    ids = table.column("measurement_id")
    if pc.count_distinct(ids).as_py() == table.num_rows:
        return table
    index = pa.table({"id": ids, "i": pa.array(np.arange(table.num_rows))})
    first = index.group_by("id", use_threads=False).aggregate([("i", "min")]).column("i_min")
    return table.take(np.sort(first.to_numpy()))


def _select(table: pa.Table, columns: list[str], where: dict | None) -> pa.Table:
    if where:
        table = table.filter(_expression(where))
    return table.select(columns)


def _expression(where: dict):
    import pyarrow.dataset as ds

    expression = None
    for column, value in where.items():
        term = ds.field(column).isin(value) if isinstance(value, (list, tuple, set)) else ds.field(column) == value
        expression = term if expression is None else expression & term
    return expression


def _read_part(path: Path, schema: pa.Schema, columns: list[str], where: dict | None) -> pa.Table:
    try:
        part = pq.ParquetFile(path)
        present = part.schema_arrow.names
    except FileNotFoundError:
        raise
    except (OSError, pa.ArrowException) as exc:
        raise TableError(
            f"{path}: not a readable Parquet file ({exc}); move it out of the table folder "
            f"to go on, nothing else is affected"
        ) from exc
    missing = [c for c in REQUIRED if c not in present]
    if missing:
        raise TableError(f"{path}: not an hwloop table part (missing columns: {', '.join(missing)})")
    own = [c for c in dict.fromkeys([*columns, *(where or {})]) if c in present]
    try:
        # a whole part is read without pyarrow.dataset, whose import alone costs a short command much
        table = pq.read_table(path, columns=own, filters=_expression(where)) if where else part.read(columns=own)
        return _conform(table, pa.schema([schema.field(c) for c in columns]))
    except FileNotFoundError:
        raise
    except (OSError, pa.ArrowException, ValueError) as exc:
        raise TableError(f"{path}: columns of unexpected types ({exc})") from exc


def _lock(directory: Path, on_wait: Callable[[str], None] | None):
    """The table's lock file, held; waits (telling ``on_wait`` who holds it) while another run does."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        handle = open(directory / LOCK, "a+")
    except OSError as exc:
        raise TableError(f"{directory}: cannot open the table ({exc.strerror or exc})") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        handle.seek(0)
        holder = handle.read().strip() or "another hwloop run"
        if on_wait:
            on_wait(f"{directory} is being written by {holder}; waiting for it to finish")
        fcntl.flock(handle, fcntl.LOCK_EX)
    handle.seek(0)
    handle.truncate()
    handle.write(
        json.dumps(
            {
                "pid": os.getpid(),
                "command": " ".join(Path(sys.argv[0]).name.split() + sys.argv[1:]),
                "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
        )
    )
    handle.flush()
    return handle


def _stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
