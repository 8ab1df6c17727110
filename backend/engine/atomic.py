"""Files and folders that appear whole or not at all: written under a temporary name beside their place, then
renamed into it. Every writer of the project (run folders, model folders, caches, deltas) goes through these."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file beside it, so a reader never sees half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text(path: str | Path, text: str) -> Path:
    """`write_bytes` for UTF-8 text."""
    return write_bytes(path, text.encode("utf-8"))


def read_json(path: Path):
    """A cache file's JSON, or None when it is missing or unreadable (the caller then computes it again)."""
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None


@contextmanager
def staged_folder(out: str | Path, *, prefix: str | None = None, replace: bool = False) -> Iterator[Path]:
    """An empty folder beside `out` to write into; when the block ends without an error it is renamed to `out`,
    and on an error it is removed. An existing `out` is swapped out and deleted when `replace`, else kept (another
    writer made the same folder first). `prefix` names the staging folder (so leftovers can be found)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=prefix or f".{out.name}.", dir=out.parent))
    try:
        yield staging
        publish(staging, out, replace=replace)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish(staging: Path, out: Path, *, replace: bool = False) -> None:
    """Rename a complete folder to `out` (see `staged_folder`)."""
    if out.exists() and replace:
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
        os.replace(out, old / "folder")
        try:
            os.replace(staging, out)
        except BaseException:
            os.replace(old / "folder", out)  # put the old one back: nothing is lost
            raise
        finally:
            shutil.rmtree(old, ignore_errors=True)
        return
    try:
        os.replace(staging, out)
    except OSError:
        if not out.exists():  # not a race that another writer won: a real error
            raise


def remove_folder(folder: Path, trash_prefix: str = ".trash-") -> None:
    """Delete a folder by renaming it away first, so it is never seen half deleted."""
    if not folder.exists():
        return
    trash = Path(tempfile.mkdtemp(prefix=trash_prefix, dir=folder.parent))
    os.replace(folder, trash / folder.name)
    shutil.rmtree(trash, ignore_errors=True)
