"""load_dataset_spec: file types, format detection, renames, normalisation, splits, fingerprints."""
from __future__ import annotations

import csv
import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from posttrain.data import (
    FORMATS,
    DataSpec,
    fingerprint,
    load_dataset_spec,
    resolve_format,
    split_rows,
)


def user(text):
    return [{"role": "user", "content": text}]


def assistant(text):
    return [{"role": "assistant", "content": text}]


RL_ROWS = [{"prompt": f"What is {i} plus 1?", "answer": str(i + 1)} for i in range(10)]


def _write_json(path, rows):
    path.write_text(json.dumps(rows))
    return path


def _write_csv(path, rows):
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _write_parquet(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _write_saved(path, rows):
    datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return path


@pytest.mark.parametrize(
    "name, writer",
    [("d.json", _write_json), ("d.csv", _write_csv), ("d.parquet", _write_parquet),
     ("saved", _write_saved)],
)
def test_each_file_type_loads_the_same_rows(tmp_path, write_jsonl, name, writer):
    expected = load_dataset_spec(str(write_jsonl("d.jsonl", RL_ROWS)), "rl")[0].to_list()
    train, evaluation = load_dataset_spec(str(writer(tmp_path / name, RL_ROWS)), "rl")
    assert evaluation is None
    assert train.to_list() == expected == RL_ROWS


def test_column_oriented_json_and_jsonl_named_json(tmp_path):
    columns = {"prompt": ["a", "b"], "answer": ["1", "2"]}
    (tmp_path / "cols.json").write_text(json.dumps(columns))
    assert load_dataset_spec(str(tmp_path / "cols.json"))[0].to_dict() == columns
    (tmp_path / "lines.json").write_text('{"text": "x"}\n{"text": "y"}\n')
    assert load_dataset_spec(str(tmp_path / "lines.json"))[0]["text"] == ["x", "y"]


def test_byte_order_mark_and_blank_lines_are_tolerated(tmp_path):
    (tmp_path / "bom.jsonl").write_bytes(b'\xef\xbb\xbf{"text": "a"}\n\n{"text": "b"}\n\n')
    assert load_dataset_spec(str(tmp_path / "bom.jsonl"), "text")[0]["text"] == ["a", "b"]


def test_saved_datasetdict_reads_the_named_split(tmp_path):
    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_list([{"text": "a"}, {"text": "b"}]),
        "test": datasets.Dataset.from_list([{"text": "c"}]),
    })
    dd.save_to_disk(str(tmp_path / "dd"))
    assert load_dataset_spec(str(tmp_path / "dd"), "text")[0]["text"] == ["a", "b"]
    spec = {"path": str(tmp_path / "dd"), "split": "test"}
    assert load_dataset_spec(spec, "text")[0]["text"] == ["c"]


@pytest.mark.parametrize(
    "row, expected",
    [
        ({"text": "hello"}, "text"),
        ({"messages": user("q") + assistant("a")}, "messages"),
        ({"prompt": "q", "completion": "a"}, "prompt_completion"),
        ({"prompt": "q", "chosen": "a", "rejected": "b"}, "preference"),
        ({"chosen": "a", "rejected": "b"}, "preference"),
        ({"prompt": user("q"), "answer": "1", "tests": ["t1"]}, "rl"),
    ],
)
def test_auto_detects_format_from_columns(write_jsonl, row, expected):
    assert resolve_format(list(row), "auto", FORMATS, "d.jsonl") == expected
    train, _ = load_dataset_spec(str(write_jsonl("d.jsonl", [row])), expected)
    assert set(train.column_names) == set(row)


def test_auto_prefers_the_stages_format_among_several(write_jsonl):
    # An SFT stage accepts three formats; prompt+completion picks prompt_completion even though
    # the prompt column alone would also satisfy rl.
    path = str(write_jsonl("d.jsonl", [{"prompt": "q", "completion": "a", "id": 7}]))
    train, _ = load_dataset_spec(path, ("text", "messages", "prompt_completion"))
    assert train.to_list() == [{"prompt": "q", "completion": "a", "id": 7}]


def test_column_renames_apply_before_validation(write_jsonl):
    path = str(write_jsonl("d.jsonl", [{"question": "What is 2 plus 2?", "solution": "4"}]))
    spec = {"path": path, "columns": {"question": "prompt", "solution": "answer"}}
    train, _ = load_dataset_spec(spec, "rl")
    assert train.to_list() == [{"prompt": "What is 2 plus 2?", "answer": "4"}]
    path = str(write_jsonl("s.jsonl", [{"text": "a", "note": "b"}]))
    swap = {"path": path, "columns": {"text": "note", "note": "text"}}
    assert load_dataset_spec(swap, "text")[0].to_list() == [{"note": "a", "text": "b"}]


def test_rl_keeps_extra_columns_by_name(write_jsonl):
    rows = [{"prompt": user("Reverse abc"), "answer": "cba", "tests": ["t1", "t2"], "level": 2}]
    train, _ = load_dataset_spec(str(write_jsonl("d.jsonl", rows)), "rl")
    assert train.column_names == ["prompt", "answer", "tests", "level"]
    assert train[0] == rows[0]


def test_mixed_strings_and_messages_are_promoted_to_messages(write_jsonl):
    rows = [{"prompt": "q1", "completion": "a1"},
            {"prompt": user("q2"), "completion": "a2"}]
    train, _ = load_dataset_spec(str(write_jsonl("d.jsonl", rows)), "prompt_completion")
    assert train.to_list() == [
        {"prompt": user("q1"), "completion": assistant("a1")},
        {"prompt": user("q2"), "completion": assistant("a2")},
    ]


def test_eval_file_is_promoted_with_the_train_file(write_jsonl):
    train_path = write_jsonl("t.jsonl", [{"prompt": "q", "answer": "1"}])
    eval_path = write_jsonl("e.jsonl", [{"prompt": user("r"), "answer": "2"}])
    train, evaluation = load_dataset_spec(
        {"path": str(train_path), "eval_path": str(eval_path)}, "rl")
    assert train[0]["prompt"] == user("q") and evaluation[0]["prompt"] == user("r")


def test_implicit_preference_prompt_is_extracted(write_jsonl):
    """Shared leading turns become the prompt, as trl.data_utils.extract_prompt does."""
    history = user("hi") + assistant("hello") + user("What is 2 plus 2?")
    rows = [{"chosen": history + assistant("4"), "rejected": history + assistant("5")},
            # A string prompt next to full conversations is replaced (maybe_extract_prompt).
            {"prompt": "ignored", "chosen": user("q") + assistant("a"),
             "rejected": user("q") + assistant("b")}]
    train, _ = load_dataset_spec(str(write_jsonl("d.jsonl", rows)), "preference")
    assert train.to_list() == [
        {"prompt": history, "chosen": assistant("4"), "rejected": assistant("5")},
        {"prompt": user("q"), "chosen": assistant("a"), "rejected": assistant("b")},
    ]


def test_string_preference_prompt_with_message_answers(write_jsonl):
    rows = [{"prompt": "q", "chosen": assistant("a"), "rejected": "b"}]
    train, _ = load_dataset_spec(str(write_jsonl("d.jsonl", rows)), "preference")
    assert train.to_list() == [
        {"prompt": user("q"), "chosen": assistant("a"), "rejected": assistant("b")}]


def test_csv_cells_with_json_messages_are_decoded(tmp_path):
    rows = [{"messages": json.dumps(user("q") + assistant("a")), "id": "1"}]
    train, _ = load_dataset_spec(str(_write_csv(tmp_path / "d.csv", rows)), "messages")
    assert train[0] == {"messages": user("q") + assistant("a"), "id": "1"}
    # A prompt that merely starts with "[" stays a string.
    rows = [{"prompt": "[1, 2] sorted?", "answer": "[1, 2]"}]
    train, _ = load_dataset_spec(str(_write_csv(tmp_path / "r.csv", rows)), "rl")
    assert train[0] == rows[0]


def test_eval_fraction_split_is_deterministic_and_disjoint(write_jsonl):
    path = str(write_jsonl("d.jsonl", RL_ROWS))
    spec = {"path": path, "eval_fraction": 0.3, "seed": 5}
    train1, eval1 = load_dataset_spec(spec, "rl")
    train2, eval2 = load_dataset_spec(spec, "rl")
    assert (len(train1), len(eval1)) == (7, 3)
    assert train1.to_list() == train2.to_list() and eval1.to_list() == eval2.to_list()
    assert sorted(r["answer"] for r in train1.to_list() + eval1.to_list()) == \
        sorted(r["answer"] for r in RL_ROWS)
    _, eval_other_seed = load_dataset_spec({**spec, "seed": 6}, "rl")
    assert eval_other_seed.to_list() != eval1.to_list()


def test_split_rows_hand_checked():
    """random.Random(0).sample(range(4), 2) == [3, 1]: rows 1 and 3 held out, order kept."""
    rows = [{"i": i} for i in range(4)]
    assert split_rows(rows, 0.5, seed=0) == ([{"i": 0}, {"i": 2}], [{"i": 1}, {"i": 3}])
    assert len(split_rows(rows, 0.01, seed=0)[1]) == 1  # at least one eval row


def test_max_samples_caps_train_after_the_split(write_jsonl):
    path = str(write_jsonl("d.jsonl", RL_ROWS))
    _, full_eval = load_dataset_spec({"path": path, "eval_fraction": 0.2}, "rl")
    train, capped_eval = load_dataset_spec(
        {"path": path, "eval_fraction": 0.2, "max_samples": 3}, "rl")
    assert len(train) == 3 and capped_eval.to_list() == full_eval.to_list()


def test_fingerprint_tracks_bytes_and_options(tmp_path, write_jsonl):
    path = write_jsonl("d.jsonl", RL_ROWS)
    first = fingerprint(str(path))
    assert len(first) == 64 and first == fingerprint(DataSpec(path=str(path)))
    assert fingerprint({"path": str(path), "eval_fraction": 0.1}) != first
    moved = tmp_path / "moved.jsonl"
    moved.write_bytes(path.read_bytes())
    assert fingerprint(str(moved)) == first  # the path itself does not count
    path.write_text(path.read_text().replace('"1"', '"one"'))
    assert fingerprint(str(path)) != first
    saved = _write_saved(tmp_path / "saved", RL_ROWS)
    assert fingerprint(str(saved)) == fingerprint(str(saved))


@pytest.mark.slow  # importing trl (torch, transformers) alone takes 5-14 s on these machines
def test_implicit_prompt_split_matches_trl(write_jsonl):
    """Parity with trl.data_utils.maybe_extract_prompt on conversational preference rows."""
    from trl.data_utils import maybe_extract_prompt

    q, a1, a2 = user("What is 2 plus 2?"), assistant("4"), assistant("5")
    history = user("hi") + assistant("hello")
    rows = [
        {"chosen": q + a1, "rejected": q + a2},
        {"chosen": history + q + a1, "rejected": history + q + a2},
        {"chosen": q + a1 + user("sure?") + a1, "rejected": q + a1 + user("sure?") + a2},
        {"chosen": q + a1, "rejected": q + a1},  # identical: the last turn is the answer
        {"chosen": q + a1, "rejected": q + a2 + user("more") + a2},  # different lengths
        {"prompt": "dropped", "chosen": q + a1, "rejected": q + a2},
        {"prompt": q, "chosen": a1, "rejected": a2},  # explicit already
    ]
    train, _ = load_dataset_spec(str(write_jsonl("d.jsonl", rows)), "preference")
    for ours, row in zip(train.to_list(), rows):
        theirs = maybe_extract_prompt(dict(row))
        assert {k: ours[k] for k in ("prompt", "chosen", "rejected")} == \
            {k: theirs[k] for k in ("prompt", "chosen", "rejected")}
