"""The six row formats a stage can read, how they are detected, checked and normalised.

* ``text``: column ``text``, a string. Pretraining, plain language-model SFT.
* ``messages``: column ``messages``, a list of messages. SFT on chats.
* ``prompt_completion``: ``prompt`` and ``completion``, each a string or a message list. SFT
  with the loss on the completion only.
* ``preference``: ``prompt`` (optional), ``chosen``, ``rejected``, each a string or a message
  list. Reward models and the DPO family.
* ``rl``: ``prompt``, a string or a message list; every other column (``answer``, ``tests``, ...)
  is passed by name to the reward functions. GRPO family, PPO.
* ``steps``: ``prompt`` (a string or a message list), ``steps`` (the answer as a non-empty list of
  step strings) and ``labels`` (one 0/1 per step: 1 = the step is right, and so is every step
  before it). Process reward models (the ``prm`` stage).

A message is an object with string ``role`` (system, user, assistant or tool) and string
``content``; other keys (e.g. ``tool_calls``) are kept. These are the "standard" and
"conversational" dataset types of TRL 1.16 (``trl.data_utils.is_conversational``), so the rows we
return go to TRL's SFT, Reward, DPO, GRPO and RLOO trainers unchanged. Where we normalise, we do
what TRL would otherwise do inside its trainers, once and visibly:

* **Implicit prompt** (preference): rows with only ``chosen``/``rejected`` message lists that
  share their leading turns get ``prompt`` = the turns before the first that differs, as
  ``trl.data_utils.extract_prompt`` does; a string ``prompt`` next to full-conversation message lists is replaced the same way
  (``maybe_extract_prompt``). Message-list rows therefore always come out with a ``prompt``;
  string rows may all omit it (chosen and rejected are then whole texts, as a reward model reads
  them), but not some rows only.
* **One kind per dataset**: TRL concatenates ``prompt + completion`` (and ``prompt + chosen``), so
  a string and a message list cannot meet, and Arrow cannot store a column that mixes them. If any
  row of a prompt_completion, preference or rl dataset uses message lists, string values of that
  dataset are wrapped as one message: ``prompt`` as a ``user`` turn, ``completion``, ``chosen``
  and ``rejected`` as an ``assistant`` turn.
* **CSV cells** are text: in a message column a cell holding a JSON list of messages is decoded.

Columns other than the format's own are kept in every format (TRL's trainers drop the ones they do
not use); in ``rl`` they are the reward functions' keyword arguments. ``auto`` picks the first
format, in the order steps, preference, messages, prompt_completion, rl, text, whose columns are present.
"""
from __future__ import annotations

import difflib
import json
from typing import Any

from posttrain.data.readers import RawTable, kind_of
from posttrain.errors import DataError

FORMATS = ("text", "messages", "prompt_completion", "preference", "rl", "steps")
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "steps": ("prompt", "steps", "labels"),
    "preference": ("chosen", "rejected"),
    "messages": ("messages",),
    "prompt_completion": ("prompt", "completion"),
    "rl": ("prompt",),
    "text": ("text",),
}
# Order of auto-detection: the most specific column sets first.
DETECTION_ORDER = tuple(REQUIRED_COLUMNS)
ROLES = ("system", "user", "assistant", "tool")
# GRPO passes the sampled text under these names, so a data column of that name would be lost.
RESERVED_RL_COLUMNS = ("completion", "completion_ids")
# Columns holding a string or a message list, and the role a bare string becomes.
_PROMOTE_ROLE = {"prompt": "user", "completion": "assistant", "chosen": "assistant",
                 "rejected": "assistant"}
_TEXT_COLUMNS = {"text": ("text",), "messages": ("messages",),
                 "prompt_completion": ("prompt", "completion"),
                 "preference": ("prompt", "chosen", "rejected"), "rl": ("prompt",), "steps": ("prompt",)}
_MESSAGES_HELP = "a list of {role, content} messages"


def resolve_format(columns: list[str], declared: str, allowed: tuple[str, ...], source: str) -> str:
    """Pick the format of a table with ``columns``, checking it is one the stage accepts.

    ``declared`` is the spec's ``format`` (``auto`` detects); ``allowed`` the stage's formats.
    Raises DataError naming the columns found and expected, with a "did you mean" guess.
    """
    if declared != "auto":
        if declared not in allowed:
            raise DataError(
                f"Data file {source} is declared as format {declared!r}, but this stage reads "
                f"{' or '.join(allowed)} data."
            )
        candidates: tuple[str, ...] = (declared,)
    else:
        candidates = tuple(f for f in DETECTION_ORDER if f in allowed)
    found = set(columns)
    for fmt in candidates:
        if set(REQUIRED_COLUMNS[fmt]) <= found:
            return fmt
    # Report against the candidate that is closest to being satisfied.
    best = min(candidates, key=lambda f: len(set(REQUIRED_COLUMNS[f]) - found))
    missing = next(c for c in REQUIRED_COLUMNS[best] if c not in found)
    expected = "; ".join(f"{f}: {', '.join(REQUIRED_COLUMNS[f])}" for f in candidates)
    spare = [c for c in columns if c not in REQUIRED_COLUMNS[best]]
    guess = difflib.get_close_matches(missing, spare, n=1, cutoff=0.6)
    if guess:
        fix = (f"Did you mean {guess[0]!r}? Rename it in the data block with "
               f"`columns: {{{guess[0]}: {missing}}}`.")
    else:
        fix = f"Map one of yours onto it in the data block with `columns: {{your_column: {missing}}}`."
    raise DataError(
        f"Data file {source} has no column {missing!r} (needed by format {best!r}). Columns "
        f"found: {', '.join(columns) or '(none)'}. Columns expected ({expected}). {fix}"
    )


def validate_rows(table: RawTable, fmt: str) -> list[dict[str, Any]]:
    """Check every row of ``table`` against ``fmt``; return the rows, normalised per row.

    Per-row normalisation: CSV cells decoded to message lists, implicit preference prompts made
    explicit. Raises DataError naming the file, the row/line, the column and what was expected.
    """
    if fmt == "rl":
        for name in RESERVED_RL_COLUMNS:
            if name in table.columns:
                raise DataError(
                    f"Data file {table.source} has a column {name!r}, a name reserved in the rl "
                    "format (the sampled completion is passed to reward functions under it). "
                    f"Rename it in the data block, e.g. `columns: {{{name}: reference}}`."
                )
    out = []
    for row, loc in zip(table.rows, table.locations):
        row = dict(row)
        if table.cells_are_text:
            for col in _TEXT_COLUMNS[fmt]:
                row[col] = _decode_cell(row.get(col))
        if fmt == "preference":
            row = _explicit_prompt(row)
        for col in _TEXT_COLUMNS[fmt]:
            problem = _value_problem(fmt, col, row.get(col, _ABSENT))
            if problem:
                raise DataError(f"Data file {table.source}, {loc}: column {col!r} {problem}.")
        if fmt == "steps":
            _check_steps(row, loc, table.source)
        out.append(row)
    if fmt == "preference":
        _check_implicit_prompts(out, table.locations, table.source)
    return out


def uses_messages(rows: list[dict[str, Any]], fmt: str) -> bool:
    """True if any row holds a message list in one of ``fmt``'s prompt/answer columns."""
    cols = [c for c in _TEXT_COLUMNS[fmt] if c in _PROMOTE_ROLE]
    return any(isinstance(row.get(c), list) for row in rows for c in cols)


def promote_strings(rows: list[dict[str, Any]], fmt: str) -> list[dict[str, Any]]:
    """Wrap string prompts/answers as single messages (see the module docstring for why)."""
    cols = [c for c in _TEXT_COLUMNS[fmt] if c in _PROMOTE_ROLE]
    out = []
    for row in rows:
        row = dict(row)
        for c in cols:
            if isinstance(row.get(c), str):
                row[c] = [{"role": _PROMOTE_ROLE[c], "content": row[c]}]
        out.append(row)
    return out


def check_column_kinds(rows: list[dict[str, Any]], locations: list[str], source: str) -> None:
    """Raise DataError if a column mixes value kinds (e.g. numbers and strings) across rows.

    Arrow stores one type per column; catching it here lets us name the row. Integers and floats
    count as one kind (Arrow widens them); nulls fit any kind.
    """
    first: dict[str, tuple[str, str]] = {}
    for row, loc in zip(rows, locations):
        for col, value in row.items():
            if value is None:
                continue
            kind = kind_of(value)
            if col not in first:
                first[col] = (kind, loc)
            elif first[col][0] != kind:
                kind0, loc0 = first[col]
                raise DataError(
                    f"Data file {source}, {loc}: column {col!r} holds {_a(kind)}, but {loc0} holds "
                    f"{_a(kind0)}; a column must hold one kind of value in every row."
                )


_ABSENT = object()


def _a(kind: str) -> str:
    return kind if kind == "null" else ("an " if kind[0] in "aeiou" else "a ") + kind


def _value_problem(fmt: str, col: str, value: Any) -> str | None:
    """Describe what is wrong with ``value`` in column ``col`` of format ``fmt``, or None."""
    if fmt == "text":
        expected = "a string"
    elif fmt == "messages":
        expected = _MESSAGES_HELP
    else:
        expected = f"a string or {_MESSAGES_HELP}"
    if value is _ABSENT or value is None:
        if fmt == "preference" and col == "prompt":
            return None  # implicit prompt: checked across rows in _check_implicit_prompts
        return f"is missing or null; the {fmt} format needs {expected} there"
    if isinstance(value, str) and fmt != "messages":
        return None
    if isinstance(value, list) and fmt != "text":
        return _messages_problem(value)
    return f"is {_a(kind_of(value))}, expected {expected}"


def _check_steps(row: dict[str, Any], loc: str, source: str) -> None:
    """A steps row: a non-empty list of step strings and one 0/1 label per step."""
    steps, labels = row.get("steps"), row.get("labels")
    if not isinstance(steps, list) or not steps or not all(isinstance(x, str) and x for x in steps):
        shown = (_a(kind_of(steps)) if not isinstance(steps, list) else "an empty list" if not steps
                 else "a list with an empty or non-string step")
        raise DataError(f"Data file {source}, {loc}: column 'steps' is {shown}; expected a non-empty list of "
                        "non-empty strings, the answer's steps in order.")
    if not isinstance(labels, list) or len(labels) != len(steps) or any(x not in (0, 1) for x in labels):
        shown = json.dumps(labels) if isinstance(labels, list) else _a(kind_of(labels))
        raise DataError(f"Data file {source}, {loc}: column 'labels' is {shown}; expected one label per step "
                        f"({len(steps)} steps), each 0 or 1 (true/false): 1 = the step and every step before it "
                        "are right.")


def _check_implicit_prompts(rows: list[dict[str, Any]], locations: list[str], source: str) -> None:
    """Preference rows without a prompt are fine only as whole texts, and only all together."""
    with_prompt = [row.get("prompt") is not None for row in rows]
    for row, loc, has in zip(rows, locations, with_prompt):
        if has:
            continue
        if isinstance(row["chosen"], list) or isinstance(row["rejected"], list):
            raise DataError(
                f"Data file {source}, {loc}: no 'prompt', and 'chosen' and 'rejected' share no "
                "leading non-assistant turns to take it from; add a prompt column or start both "
                "conversations with the same user turn."
            )
        if any(with_prompt):
            first = locations[with_prompt.index(True)]
            raise DataError(
                f"Data file {source}, {loc}: column 'prompt' is missing or null, but {first} has "
                "one; give every row a prompt, or none (chosen and rejected then hold whole texts)."
            )


def _messages_problem(value: Any) -> str | None:
    if not isinstance(value, list):
        return f"is {_a(kind_of(value))}, expected {_MESSAGES_HELP}"
    if not value:
        return f"is an empty list, expected {_MESSAGES_HELP}"
    for i, msg in enumerate(value):
        if not isinstance(msg, dict):
            return f"message {i} is {_a(kind_of(msg))}, expected an object with role and content"
        for key in ("role", "content"):
            if key not in msg:
                return f"message {i} has no {key!r} key (its keys: {', '.join(msg) or 'none'})"
            if not isinstance(msg[key], str):
                return f"message {i} has {_a(kind_of(msg[key]))} {key}, expected a string"
        if msg["role"] not in ROLES:
            guess = difflib.get_close_matches(msg["role"], ROLES, n=1)
            hint = f" (did you mean {guess[0]!r}?)" if guess else ""
            return (f"message {i} has role {msg['role']!r}{hint}; expected one of "
                    f"{', '.join(ROLES)}")
    return None


def _decode_cell(value: Any) -> Any:
    """Decode a CSV cell that holds a JSON list of message objects; leave other cells alone."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            decoded = json.loads(value)
        except json.JSONDecodeError:
            return value
        if isinstance(decoded, list) and decoded and all(isinstance(m, dict) for m in decoded):
            return decoded
    return value


def _explicit_prompt(row: dict[str, Any]) -> dict[str, Any]:
    """Infer ``prompt`` from the shared leading turns of chosen/rejected when it is implicit.

    The same split as ``trl.data_utils.maybe_extract_prompt``: the prompt is the turns before the
    first one that differs (identical lists keep only their last turn as the answers). One
    difference: a string prompt beside answers that start with an assistant turn is kept (and
    later wrapped as a user turn), where TRL would replace it with an empty prompt.
    """
    chosen, rejected, prompt = row.get("chosen"), row.get("rejected"), row.get("prompt")
    if not (isinstance(chosen, list) and isinstance(rejected, list)):
        return row
    if prompt is not None:
        if not isinstance(prompt, str):
            return row  # an explicit message-list prompt (or a wrong type, reported later)
        if not chosen or not isinstance(chosen[0], dict) or chosen[0].get("role") == "assistant":
            return row  # answers only: the string prompt is the prompt
    n = min(len(chosen), len(rejected))
    shared = next((i for i in range(n) if chosen[i] != rejected[i]), n - 1)
    if shared <= 0:
        return row  # nothing to infer: validation reports the missing prompt or empty list
    rest = {k: v for k, v in row.items() if k not in ("prompt", "chosen", "rejected")}
    return {"prompt": chosen[:shared], "chosen": chosen[shared:],
            "rejected": rejected[shared:], **rest}
