"""Turn a :class:`DataSpec` into validated ``datasets.Dataset`` objects, before any training.

Every row of the training file (and of the eval file) is read and checked first, so a typo in
row 7,000 fails in a second instead of after an hour of training. Only local files are read.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from posttrain.data.formats import (
    FORMATS,
    check_column_kinds,
    promote_strings,
    resolve_format,
    uses_messages,
    validate_rows,
)
from posttrain.data.readers import RawTable, read_table
from posttrain.data.spec import DataSpec
from posttrain.errors import DataError

if TYPE_CHECKING:
    import datasets


def load_dataset_spec(
    spec: DataSpec | str | dict,
    required_format: str | Sequence[str] | None = None,
) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """Read, validate and split the data of ``spec``; return ``(train, eval)``.

    ``required_format`` is the format the stage reads, or several it accepts (an SFT stage takes
    text, messages or prompt_completion); None accepts any. ``eval`` is None unless the spec sets
    ``eval_path`` or ``eval_fraction``. Raises DataError on any problem with the files.

    >>> train, _ = load_dataset_spec("data/arithmetic/rl.jsonl", "rl")  # doctest: +SKIP
    >>> train.column_names  # doctest: +SKIP
    ['prompt', 'answer']
    """
    spec = spec if isinstance(spec, DataSpec) else DataSpec.model_validate(spec)
    allowed = _allowed_formats(required_format)
    if spec.path is None:
        raise DataError("The data block has no path; set `path:` to a data file or folder.")
    train_table = _renamed(read_table(spec.path, spec.split), spec.columns)
    fmt = resolve_format(train_table.columns, spec.format, allowed, train_table.source)
    train_rows = validate_rows(train_table, fmt)
    tables = [(train_table, train_rows)]
    if spec.eval_path is not None:
        eval_table = _renamed(read_table(spec.eval_path, spec.split), spec.columns)
        resolve_format(eval_table.columns, fmt, (fmt,), eval_table.source)
        tables.append((eval_table, validate_rows(eval_table, fmt)))
    # Train and eval must agree on strings vs message lists (see formats.promote_strings).
    if any(uses_messages(rows, fmt) for _, rows in tables):
        tables = [(table, promote_strings(rows, fmt)) for table, rows in tables]
    for table, rows in tables:
        check_column_kinds(rows, table.locations, table.source)

    train_rows = tables[0][1]
    eval_rows = tables[1][1] if len(tables) > 1 else None
    if spec.eval_fraction > 0:
        train_rows, eval_rows = split_rows(train_rows, spec.eval_fraction, spec.seed)
        if not train_rows or not eval_rows:
            raise DataError(
                f"Data file {train_table.source} has {len(tables[0][1])} rows, too few to hold "
                f"out eval_fraction={spec.eval_fraction} and keep at least one row on each side."
            )
    if spec.max_samples is not None:
        train_rows = train_rows[: spec.max_samples]
    train = _to_dataset(train_rows, train_table.source)
    evaluation = None if eval_rows is None else _to_dataset(eval_rows, tables[-1][0].source)
    return train, evaluation


def split_rows(
    rows: list[dict[str, Any]], fraction: float, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Hold out ``round(fraction * len(rows))`` rows (at least one), drawn with ``seed``.

    Both parts keep the file's order, so the split depends only on (row count, fraction, seed).

    >>> split_rows([{"i": i} for i in range(4)], 0.5, seed=0)[1]
    [{'i': 1}, {'i': 3}]
    """
    n_eval = max(1, round(fraction * len(rows)))
    picked = set(random.Random(seed).sample(range(len(rows)), min(n_eval, len(rows))))
    train = [row for i, row in enumerate(rows) if i not in picked]
    held = [row for i, row in enumerate(rows) if i in picked]
    return train, held


def fingerprint(spec: DataSpec | str | dict) -> str:
    """SHA-256 over the bytes of the spec's files and the options that change what is loaded.

    A folder (``save_to_disk``) contributes each file's relative name and bytes, in sorted order.
    Paths themselves are left out, so moving a data folder does not count as a change.
    """
    spec = spec if isinstance(spec, DataSpec) else DataSpec.model_validate(spec)
    digest = hashlib.sha256()
    options = spec.model_dump(exclude={"path", "eval_path"})
    digest.update(json.dumps(options, sort_keys=True).encode())
    for role, path in (("train", spec.path), ("eval", spec.eval_path)):
        if path is None:
            continue
        p = Path(path).expanduser()
        if not p.exists():
            raise DataError(f"Data file {p} does not exist (needed to fingerprint the {role} data).")
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        digest.update(f"\0{role}\0".encode())
        for f in files:
            digest.update(f"{f.relative_to(p) if p.is_dir() else ''}\0".encode())
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()


def _allowed_formats(required: str | Sequence[str] | None) -> tuple[str, ...]:
    if required is None:
        return FORMATS
    allowed = (required,) if isinstance(required, str) else tuple(required)
    unknown = [f for f in allowed if f not in FORMATS or f == "auto"]
    if unknown or not allowed:
        # A programming error in a stage, not a user error: say so plainly.
        raise ValueError(f"required_format {required!r}: use one or more of {FORMATS}")
    return allowed


def _renamed(table: RawTable, columns: dict[str, str]) -> RawTable:
    """Apply the spec's ``columns`` renames (file name -> our name) to every row."""
    if not columns:
        return table
    for src, dst in columns.items():
        if src not in table.columns:
            guess = difflib.get_close_matches(src, table.columns, n=1)
            hint = f" Did you mean {guess[0]!r}?" if guess else ""
            raise DataError(
                f"Data file {table.source} has no column {src!r} to rename to {dst!r} (the "
                f"data block's `columns`). Columns found: {', '.join(table.columns)}.{hint}"
            )
        if dst in table.columns and dst not in columns:
            raise DataError(
                f"Data file {table.source}: renaming column {src!r} to {dst!r} would overwrite "
                f"its existing {dst!r} column; rename or drop one of them."
            )
    rows = [{columns.get(k, k): v for k, v in row.items()} for row in table.rows]
    names = [columns.get(c, c) for c in table.columns]
    return RawTable(table.source, rows, table.locations, names, table.cells_are_text)


def _to_dataset(rows: list[dict[str, Any]], source: str) -> datasets.Dataset:
    import datasets  # imported here: reading a recipe should not pay for `datasets`

    try:
        return datasets.Dataset.from_list(rows)
    except (TypeError, ValueError) as exc:  # pyarrow's ArrowTypeError / ArrowInvalid
        raise DataError(
            f"Data file {source} could not be stored as a table ({exc}); a column holds values "
            "of different shapes in different rows, e.g. messages with differently typed keys."
        ) from None
