"""Users' data files: .jsonl, .csv or .parquet with `prompt` and `response` columns, checked row by row; every
problem is a DataError that names the file, the row and what to do."""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

from .errors import DataError

SUPPORTED_SUFFIXES = (".jsonl", ".csv", ".parquet")


def user_path(spec: str, builtins: Sequence[str] = ()) -> Path:
    """Resolve a spec that is not a built-in name to an existing file of a supported kind."""
    path = Path(spec)
    builtins = ", ".join(builtins)
    supported = ", ".join(SUPPORTED_SUFFIXES)
    if not path.exists():
        if path.suffix.lower() in SUPPORTED_SUFFIXES or len(path.parts) > 1:
            raise DataError(f"{spec}: no such file; check the path (built-in sets: {builtins})")
        raise DataError(f"{spec!r} is neither a built-in set ({builtins}) nor a file; `ssah data list` shows the sets")
    if not path.is_file():
        raise DataError(f"{spec}: is a folder, not a file; give a {supported} file with prompt and response columns")
    if path.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise DataError(f"{spec}: unsupported file type {path.suffix or '(none)'!r}; use one of {supported}")
    return path


def read_pairs_file(path: Path) -> list[tuple[str, str]]:
    """Read and check the pairs of a user file; every problem is a DataError naming the file."""
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty; it needs rows with prompt and response")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        rows = _parquet_rows(path)
    else:
        text = _utf8_text(path)
        rows = _jsonl_rows(path, text) if suffix == ".jsonl" else _csv_rows(path, text)
    if not rows:
        raise DataError(f"{path}: no rows; the file needs at least one row with prompt and response")
    return [_pair(path, where, row) for where, row in rows]


def jsonl_rows(path: Path) -> list[tuple[str, dict]]:
    """The JSON objects of a .jsonl file, each with where it is ("line N")."""
    return _jsonl_rows(path, _utf8_text(path))


def _utf8_text(path: Path) -> str:
    """The file's text; a file that is not UTF-8 is refused with the offset of the first bad byte."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(
            f"{path}: not UTF-8 text (bad byte 0x{data[error.start]:02x} at byte offset {error.start}); "
            "save the file as UTF-8"
        ) from None


def _jsonl_rows(path: Path, text: str) -> list[tuple[str, dict]]:
    """One JSON object per line; blank lines are skipped; rows are named by line number."""
    rows = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(
                f"{path}: line {number} is not valid JSON ({error.msg}, column {error.colno}); "
                "each line must be one JSON object"
            ) from None
        if not isinstance(row, dict):
            raise DataError(f"{path}: line {number} is not a JSON object; write {{\"prompt\": ..., \"response\": ...}}")
        rows.append((f"line {number}", row))
    return rows


def _csv_rows(path: Path, text: str) -> list[tuple[str, dict]]:
    """Rows of a CSV with a header line; rows are named by data row number (the header is not counted)."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        rows = [(f"row {number}", row) for number, row in enumerate(reader, start=1)]
    except csv.Error as error:
        raise DataError(f"{path}: not readable as CSV near line {reader.line_num} ({error})") from None
    _require_columns(path, reader.fieldnames or [])
    return rows


def _parquet_rows(path: Path) -> list[tuple[str, dict]]:
    """Rows of a Parquet file; rows are named by 1-based row number."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as error:  # pyarrow raises several unrelated types for a damaged file
        raise DataError(f"{path}: not a readable Parquet file ({error})") from None
    _require_columns(path, table.column_names)
    return [(f"row {number}", row) for number, row in enumerate(table.to_pylist(), start=1)]


def _require_columns(path: Path, found: Sequence[str]) -> None:
    """Refuse a table without `prompt` and `response` columns, listing the columns it has."""
    missing = [name for name in ("prompt", "response") if name not in found]
    if missing:
        raise DataError(
            f"{path}: missing column {' and '.join(repr(m) for m in missing)}; "
            f"columns found: {', '.join(map(repr, found)) or '(none)'}; name the columns prompt and response"
        )


def _pair(path: Path, where: str, row: dict) -> tuple[str, str]:
    """Check one row: prompt must be a non-empty string, response a string (it may be empty)."""
    for field in ("prompt", "response"):
        if field not in row:
            raise DataError(
                f"{path}: {where} has no {field!r} field; fields found: {', '.join(map(repr, row))}; "
                "every row needs prompt and response"
            )
    prompt, response = row["prompt"], row["response"]
    if not isinstance(prompt, str) or not prompt.strip():
        raise DataError(f"{path}: {where} has an empty or non-text prompt ({prompt!r}); every row needs a prompt")
    if not isinstance(response, str):
        raise DataError(f"{path}: {where} has a non-text response ({response!r}); use a string (it may be empty)")
    return prompt, response


JUDGE_KINDS = ("harmful", "benign")


def read_judge_rows(path: Path) -> list[dict]:
    """The rows of a file to judge: .jsonl with a non-empty text `prompt`, a text `reply` (it may be empty) and
    optionally `kind` (harmful or benign); other fields are kept as they are. Every problem names the line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file; give a .jsonl file with prompt and reply fields")
    if path.suffix.lower() != ".jsonl":
        raise DataError(f"{path}: give a .jsonl file (one JSON object per line with prompt and reply)")
    rows = []
    for where, row in jsonl_rows(path):
        for name in ("prompt", "reply"):
            if name not in row:
                raise DataError(f"{path}: {where} has no {name!r} field; fields found: "
                                f"{', '.join(map(repr, row)) or '(none)'}")
        if not isinstance(row["prompt"], str) or not row["prompt"].strip():
            raise DataError(f"{path}: {where} has an empty or non-text prompt")
        if not isinstance(row["reply"], str):
            raise DataError(f"{path}: {where} has a non-text reply ({row['reply']!r})")
        kind = row.get("kind")
        if kind is not None and kind not in JUDGE_KINDS:
            raise DataError(f"{path}: {where} has kind {kind!r}; use harmful, benign, or leave it out")
        rows.append(row)
    if not rows:
        raise DataError(f"{path}: no rows to judge")
    return rows
