"""Read a local data file into Python rows, keeping where each row came from.

Each reader returns a :class:`RawTable`: the rows as dicts plus, for each row, a location
("line 17", "row 3") that error messages quote. We parse JSONL ourselves, line by line, instead of
going through ``datasets.load_dataset("json")``, because Arrow's parser reports a malformed line
without its line number. Nothing here touches a hub: only local files and ``save_to_disk`` folders.
"""
from __future__ import annotations

import csv
import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from posttrain.errors import DataError

SUFFIXES = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
}


@dataclass
class RawTable:
    """Rows read from one source, before renames and format validation.

    ``locations[i]`` says where ``rows[i]`` is in the file, for error messages.
    ``cells_are_text`` is true for CSV, whose cells are all strings (message lists arrive as JSON).
    """

    source: str
    rows: list[dict[str, Any]]
    locations: list[str]
    columns: list[str] = field(default_factory=list)
    cells_are_text: bool = False

    def __post_init__(self) -> None:
        if not self.columns:
            # Union of keys in first-seen order: JSONL rows need not all carry the same keys.
            seen: dict[str, None] = {}
            for row in self.rows:
                seen.update(dict.fromkeys(row))
            self.columns = list(seen)


def read_table(path: str | Path, split: str = "train") -> RawTable:
    """Read ``path`` (JSONL, JSON, Parquet, CSV or a ``save_to_disk`` folder) into a RawTable.

    Raises DataError if the file is missing, of an unknown kind, unreadable or has no rows.
    """
    p = Path(path).expanduser()
    if not p.exists():
        hint = ""
        if p.parent.is_dir():
            near = sorted(x.name for x in p.parent.iterdir() if x.suffix in SUFFIXES or x.is_dir())
            close = difflib.get_close_matches(p.name, near, n=1)
            if close:
                hint = f" Did you mean {p.parent / close[0]}?"
            elif near:
                hint = f" Files next to it: {', '.join(near[:8])}."
        raise DataError(f"Data file {p} does not exist.{hint}")
    if p.is_dir():
        table = _read_saved_dir(p, split)
    else:
        kind = SUFFIXES.get(p.suffix.lower())
        if kind is None:
            raise DataError(
                f"Data file {p} has suffix {p.suffix or '(none)'!r}; expected one of "
                f"{', '.join(sorted(SUFFIXES))} or a folder written by datasets' save_to_disk."
            )
        text = None if kind == "parquet" else _read_text(p)
        if text is not None and not text.strip():
            raise DataError(f"Data file {p} is empty.")
        reader = {"jsonl": _parse_jsonl, "json": _parse_json, "csv": _parse_csv}.get(kind)
        table = _read_parquet(p) if reader is None else reader(p, text)
    if not table.rows:
        raise DataError(f"Data file {table.source} has no rows.")
    return table


def _read_text(p: Path) -> str:
    try:
        return p.read_text(encoding="utf-8-sig")  # -sig: tolerate a BOM from Excel & co.
    except UnicodeDecodeError as exc:
        raise DataError(
            f"Data file {p} is not UTF-8 text (byte {exc.start} cannot be decoded)."
        ) from None


def _snippet(line: str, width: int = 80) -> str:
    line = line.strip()
    return repr(line if len(line) <= width else line[:width] + "...")


def _parse_jsonl(p: Path, text: str) -> RawTable:
    rows: list[dict[str, Any]] = []
    locations: list[str] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue  # blank lines (e.g. a trailing newline) carry no row
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"Data file {p}, line {lineno}, is not valid JSON ({exc.msg} at column "
                f"{exc.colno}); the line starts {_snippet(line)}. Each line of a .jsonl file "
                "must be one JSON object."
            ) from None
        if not isinstance(value, dict):
            raise DataError(
                f"Data file {p}, line {lineno}, holds a JSON {kind_of(value)}, expected an object "
                f"mapping column names to values; the line starts {_snippet(line)}."
            )
        rows.append(value)
        locations.append(f"line {lineno}")
    return RawTable(str(p), rows, locations)


def _parse_json(p: Path, text: str) -> RawTable:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":
            # Several top-level values: this is JSON Lines under a .json name.
            return _parse_jsonl(p, text)
        line = text.splitlines()[exc.lineno - 1] if text.splitlines() else ""
        raise DataError(
            f"Data file {p} is not valid JSON ({exc.msg} at line {exc.lineno} column "
            f"{exc.colno}); that line starts {_snippet(line)}."
        ) from None
    if isinstance(value, dict) and value and all(isinstance(v, list) for v in value.values()):
        lengths = {k: len(v) for k, v in value.items()}
        if len(set(lengths.values())) != 1:
            raise DataError(
                f"Data file {p} holds columns of different lengths {lengths}; a column-oriented "
                "JSON file needs one list per column, all of the same length."
            )
        n = next(iter(lengths.values()))
        value = [{k: v[i] for k, v in value.items()} for i in range(n)]
    if not isinstance(value, list):
        raise DataError(
            f"Data file {p} holds a JSON {kind_of(value)}; expected a list of row objects or an "
            "object of equal-length column lists."
        )
    for i, row in enumerate(value, start=1):
        if not isinstance(row, dict):
            raise DataError(
                f"Data file {p}, row {i}, is a JSON {kind_of(row)}, expected an object mapping "
                "column names to values."
            )
    return RawTable(str(p), value, [f"row {i}" for i in range(1, len(value) + 1)])


def _parse_csv(p: Path, text: str) -> RawTable:
    reader = csv.DictReader(text.splitlines())
    rows: list[dict[str, Any]] = []
    locations: list[str] = []
    try:
        for i, row in enumerate(reader, start=1):
            if None in row:
                raise DataError(
                    f"Data file {p}, row {i} (line {reader.line_num}), has more cells than the "
                    f"header's {len(reader.fieldnames or [])} columns."
                )
            rows.append(dict(row))
            locations.append(f"row {i} (line {reader.line_num})")
    except csv.Error as exc:
        raise DataError(f"Data file {p} is not valid CSV at line {reader.line_num}: {exc}.") from None
    if not rows:
        raise DataError(f"Data file {p} has a header but no rows.")
    return RawTable(str(p), rows, locations, list(reader.fieldnames or []), cells_are_text=True)


def _read_parquet(p: Path) -> RawTable:
    import pyarrow.parquet as pq  # imported here: only Parquet users pay for it

    try:
        rows = pq.read_table(p).to_pylist()
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several unrelated types
        raise DataError(f"Data file {p} could not be read as Parquet: {exc}.") from None
    return RawTable(str(p), rows, [f"row {i}" for i in range(1, len(rows) + 1)])


def _read_saved_dir(p: Path, split: str) -> RawTable:
    if not ((p / "dataset_dict.json").exists() or (p / "state.json").exists()):
        raise DataError(
            f"Data path {p} is a folder but not one written by datasets' save_to_disk (it has "
            "neither dataset_dict.json nor state.json); point path at a data file instead."
        )
    import datasets  # imported here: reading a recipe should not pay for `datasets`

    try:
        loaded = datasets.load_from_disk(str(p))
    except Exception as exc:  # noqa: BLE001 - corrupt Arrow files raise several types
        raise DataError(f"Saved dataset {p} could not be loaded: {exc}.") from None
    source = str(p)
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(
                f"Saved dataset {p} has no split {split!r}; its splits are "
                f"{', '.join(sorted(loaded))}. Set `split:` in the data block."
            )
        loaded = loaded[split]
        source = f"{p} (split {split!r})"
    rows = loaded.to_list()
    return RawTable(
        source, rows, [f"row {i}" for i in range(1, len(rows) + 1)], list(loaded.column_names)
    )


def kind_of(value: Any) -> str:
    """The JSON name of a Python value's type, for messages a user can match to their file."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__
