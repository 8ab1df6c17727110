"""Run folders under the results dir (SSAH_RESULTS_DIR). A folder appears whole or not at all: it is written under a
`.partial-*` name and renamed into place, and removed by renaming it away first."""
from __future__ import annotations

import gzip
import os
import shutil
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from backend.engine import atomic
from backend.engine.inspect import inspection_path
from backend.engine.roles import RoleIndex

if TYPE_CHECKING:
    import pandas as pd

PARTIAL = ".partial-"
TRASH = ".trash-"


GZIP_LEVEL = 9  # compressed once per run and format, then served as a file: the smallest is worth the time


def units_text(table: "pd.DataFrame", fmt: str) -> str:
    """A units table as CSV, or as JSON records (floats to 15 digits)."""
    if fmt == "csv":
        return table.to_csv(index=False)
    if fmt == "json":
        return table.to_json(orient="records", double_precision=15)
    raise ValueError(f"no encoding {fmt!r}")


def units_bytes(table: "pd.DataFrame", fmt: str) -> bytes:
    """A units table as CSV, JSON records or an Arrow IPC stream."""
    if fmt == "arrow":
        import pyarrow as pa

        arrow = pa.Table.from_pandas(table, preserve_index=False)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, arrow.schema) as writer:
            writer.write_table(arrow)
        return sink.getvalue().to_pybytes()
    return units_text(table, fmt).encode("utf-8")


def units_parquet(table: "pd.DataFrame", about: dict) -> bytes:
    """A units table as Parquet bytes, with `about` (e.g. the thresholds its roles are at) as JSON in the file's
    key-value metadata under `ssah`."""
    import io
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    arrow = pa.Table.from_pandas(table, preserve_index=False)
    arrow = arrow.replace_schema_metadata({**(arrow.schema.metadata or {}), b"ssah": json.dumps(about).encode()})
    out = io.BytesIO()
    pq.write_table(arrow, out, compression="zstd")
    return out.getvalue()


class RunFolders:
    """The results dir: one folder per run, named by run id."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._locks: dict[Path, threading.Lock] = {}
        self._locks_lock = threading.Lock()

    def folder(self, name: str) -> Path:
        return self.root / name

    @contextmanager
    def staged(self, run_id: str) -> Iterator[Path]:
        """An empty folder to write a run into; renamed to the run's folder when the block ends without error."""
        with atomic.staged_folder(self.root / run_id, prefix=f"{PARTIAL}{run_id}-") as staging:
            yield staging

    def copy(self, source: str, run_id: str) -> str:
        """A complete copy of a published folder for another run (hard links where the disk allows)."""
        with self.staged(run_id) as staging:
            for path in self.folder(source).iterdir():
                if path.is_file():
                    try:
                        os.link(path, staging / path.name)
                    except OSError:
                        shutil.copy2(path, staging / path.name)
        return run_id

    def encoded(self, name: str, fmt: str, table: "pd.DataFrame", *, gzipped: bool = False) -> Path | None:
        """A run's units as CSV, JSON records or Arrow IPC (gzipped, when asked), encoded once and kept beside
        units.parquet as a hidden file (folders never change once published); None when the folder cannot be
        written."""
        path = self.folder(name) / (f".units.{fmt}.gz" if gzipped else f".units.{fmt}")
        if path.is_file():
            return path
        with self._encoding(path):  # many clients asking at once: one encodes, the others wait for its file
            if path.is_file():
                return path
            return self._encode(path, name, fmt, table, gzipped)

    @contextmanager
    def _encoding(self, path: Path) -> Iterator[None]:
        with self._locks_lock:
            lock = self._locks.setdefault(path, threading.Lock())
        with lock:
            yield

    def _encode(self, path: Path, name: str, fmt: str, table: "pd.DataFrame", gzipped: bool) -> Path | None:
        try:
            if gzipped:
                plain = self.encoded(name, fmt, table)
                data = plain.read_bytes() if plain is not None else units_bytes(table, fmt)
                atomic.write_bytes(path, gzip.compress(data, GZIP_LEVEL, mtime=0))
            else:
                atomic.write_bytes(path, units_bytes(table, fmt))
        except OSError:
            return None
        return path

    def inspection(self, name: str, module: str, layer: int, unit: int) -> dict | None:
        """A unit's cached inspection (written by an inspect job), or None before there is one."""
        return atomic.read_json(inspection_path(self.folder(name), module, layer, unit))

    def remove(self, name: str | None) -> None:
        """Delete a run folder: renamed away first, so it is never seen half deleted."""
        if name:
            atomic.remove_folder(self.folder(name), TRASH)

    def clean_partials(self, run_ids: set[str] | None = None, *, keep: set[str] = frozenset()) -> list[Path]:
        """Remove leftovers of interrupted writes: staging folders of `run_ids` (all when None) except those of
        `keep`, and half-removed folders."""
        removed = []
        finetunes = self.root / "finetunes"
        for path in [*self.root.iterdir(), *(finetunes.iterdir() if finetunes.is_dir() else ())]:
            if path.name.startswith(TRASH):
                removed.append(path)
            elif path.name.startswith(PARTIAL):
                run_id = path.name[len(PARTIAL):].rsplit("-", 1)[0]
                if (run_ids is None or run_id in run_ids) and run_id not in keep:
                    removed.append(path)
        for path in removed:
            shutil.rmtree(path, ignore_errors=True)
        return removed


class RunUnits:
    """A run's units table and, once asked for, its role index."""

    def __init__(self, table: pd.DataFrame):
        self.table = table
        self._index: RoleIndex | None = None
        self._lock = threading.Lock()

    @property
    def roles(self) -> RoleIndex:
        with self._lock:
            if self._index is None:
                self._index = RoleIndex.from_units(self.table)
            return self._index


class UnitsCache:
    """The units of recently read runs, kept in memory so that reading them and recomputing roles is fast."""

    def __init__(self, size: int = 8):
        self.size = size
        self._runs: OrderedDict[Path, RunUnits] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, folder: Path) -> RunUnits:
        path = folder / "units.parquet"
        with self._lock:
            if path in self._runs:
                self._runs.move_to_end(path)
                return self._runs[path]
        import pandas as pd

        units = RunUnits(pd.read_parquet(path))
        with self._lock:
            self._runs[path] = units
            while len(self._runs) > self.size:
                self._runs.popitem(last=False)
        return units

    def forget(self, folder: Path) -> None:
        with self._lock:
            self._runs.pop(folder / "units.parquet", None)
