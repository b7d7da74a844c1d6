"""Every user mistake in data raises DataError with a message naming the file, place and fix."""
from __future__ import annotations

import json

import datasets
import pytest

from posttrain.data import load_dataset_spec
from posttrain.errors import DataError, PosttrainError


def user(text):
    return [{"role": "user", "content": text}]


def assistant(text):
    return [{"role": "assistant", "content": text}]


def _error(spec, required=None) -> str:
    with pytest.raises(DataError) as info:
        load_dataset_spec(spec, required)
    message = str(info.value)
    assert "\n" not in message  # one paragraph
    assert isinstance(info.value, PosttrainError)
    return message


def test_missing_file_suggests_a_close_name(tmp_path, write_jsonl):
    write_jsonl("train.jsonl", [{"text": "a"}])
    message = _error(str(tmp_path / "trian.jsonl"))
    assert "trian.jsonl does not exist" in message
    assert f"Did you mean {tmp_path / 'train.jsonl'}?" in message


def test_missing_eval_file(tmp_path, write_jsonl):
    path = write_jsonl("train.jsonl", [{"text": "a"}])
    message = _error({"path": str(path), "eval_path": str(tmp_path / "nope.jsonl")})
    assert "nope.jsonl does not exist" in message


def test_no_path(tmp_path):
    assert "no path" in _error({})


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_file(tmp_path, content):
    (tmp_path / "empty.jsonl").write_text(content)
    assert "empty.jsonl is empty" in _error(str(tmp_path / "empty.jsonl"))


def test_empty_json_list_and_csv_header_only(tmp_path):
    (tmp_path / "e.json").write_text("[]")
    assert "e.json has no rows" in _error(str(tmp_path / "e.json"))
    (tmp_path / "h.csv").write_text("prompt,answer\n")
    assert "h.csv has a header but no rows" in _error(str(tmp_path / "h.csv"))


def test_malformed_jsonl_line_names_file_line_and_start(write_jsonl):
    path = write_jsonl("bad.jsonl", [{"text": "fine"}, "", '{"text": "broken, "x": 1}'])
    message = _error(str(path))
    assert "bad.jsonl, line 3, is not valid JSON" in message
    assert "starts '{\"text\": \"broken, \"x\": 1}'" in message


def test_long_malformed_line_is_truncated(write_jsonl):
    path = write_jsonl("bad.jsonl", ['{"text": "' + "y" * 500])
    message = _error(str(path))
    assert "line 1" in message and "..." in message and len(message) < 400


def test_jsonl_line_that_is_not_an_object(write_jsonl):
    message = _error(str(write_jsonl("list.jsonl", [{"text": "a"}, [1, 2]])))
    assert "list.jsonl, line 2, holds a JSON list, expected an object" in message


def test_malformed_json_file(tmp_path):
    (tmp_path / "bad.json").write_text('[\n {"text": "a"},\n {"text": }\n]')
    message = _error(str(tmp_path / "bad.json"))
    assert "bad.json is not valid JSON" in message and "line 3" in message


def test_unknown_suffix_and_plain_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    assert "suffix '.txt'" in _error(str(tmp_path / "notes.txt"))
    (tmp_path / "folder").mkdir()
    assert "not one written by datasets' save_to_disk" in _error(str(tmp_path / "folder"))


def test_corrupt_parquet(tmp_path):
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    assert "bad.parquet could not be read as Parquet" in _error(str(tmp_path / "bad.parquet"))


def test_missing_split_of_saved_datasetdict(tmp_path):
    datasets.DatasetDict({"train": datasets.Dataset.from_list([{"text": "a"}])}).save_to_disk(
        str(tmp_path / "dd"))
    message = _error({"path": str(tmp_path / "dd"), "split": "validation"})
    assert "no split 'validation'" in message and "its splits are train" in message


def test_misspelled_column_gets_did_you_mean(write_jsonl):
    path = write_jsonl("rl.jsonl", [{"promt": "What is 1 plus 1?", "answer": "2"}])
    message = _error(str(path), "rl")
    assert "rl.jsonl has no column 'prompt' (needed by format 'rl')" in message
    assert "Columns found: promt, answer" in message
    assert "Columns expected (rl: prompt)" in message
    assert "Did you mean 'promt'?" in message and "`columns: {promt: prompt}`" in message


def test_unrelated_columns_suggest_a_rename(write_jsonl):
    path = write_jsonl("sft.jsonl", [{"question": "q", "response": "a"}])
    message = _error(str(path), ("text", "messages", "prompt_completion"))
    assert "Columns found: question, response" in message
    assert "messages: messages; prompt_completion: prompt, completion; text: text" in message
    assert "`columns: {your_column:" in message


def test_declared_format_the_stage_does_not_read(write_jsonl):
    path = write_jsonl("d.jsonl", [{"text": "a"}])
    message = _error({"path": str(path), "format": "text"}, "preference")
    assert "declared as format 'text'" in message and "reads preference data" in message


def test_rename_of_a_missing_column(write_jsonl):
    path = write_jsonl("d.jsonl", [{"question": "q", "answer": "1"}])
    message = _error({"path": str(path), "columns": {"questoin": "prompt"}}, "rl")
    assert "no column 'questoin' to rename to 'prompt'" in message
    assert "Columns found: question, answer" in message and "Did you mean 'question'?" in message


def test_rename_onto_an_existing_column(write_jsonl):
    path = write_jsonl("d.jsonl", [{"question": "q", "prompt": "p"}])
    message = _error({"path": str(path), "columns": {"question": "prompt"}}, "rl")
    assert "would overwrite its existing 'prompt' column" in message


def test_eval_file_with_other_columns(write_jsonl):
    train = write_jsonl("t.jsonl", [{"prompt": "q", "answer": "1"}])
    evaluation = write_jsonl("e.jsonl", [{"text": "q"}])
    message = _error({"path": str(train), "eval_path": str(evaluation)})
    assert "e.jsonl has no column 'prompt'" in message


@pytest.mark.parametrize(
    "fmt, row, needle",
    [
        ("messages", {"messages": "hello"},
         "column 'messages' is a string, expected a list of {role, content} messages"),
        ("messages", {"messages": []}, "column 'messages' is an empty list"),
        ("messages", {"messages": ["hi"]}, "message 0 is a string, expected an object"),
        ("messages", {"messages": [{"role": "user"}]}, "message 0 has no 'content' key"),
        ("messages", {"messages": [{"role": "user", "content": 5}]},
         "message 0 has a number content, expected a string"),
        ("messages", {"messages": user("q") + [{"role": "assitant", "content": "a"}]},
         "message 1 has role 'assitant' (did you mean 'assistant'?)"),
        ("text", {"text": 12}, "column 'text' is a number, expected a string"),
        ("text", {"text": None}, "column 'text' is missing or null"),
        ("prompt_completion", {"prompt": "q", "completion": {"a": 1}},
         "column 'completion' is an object, expected a string or a list of {role, content}"),
        ("preference", {"prompt": "q", "chosen": 3, "rejected": "b"},
         "column 'chosen' is a number, expected a string or a list"),
        ("rl", {"prompt": ["What?"], "answer": "1"}, "message 0 is a string"),
    ],
)
def test_wrong_value_types_name_the_line(write_jsonl, fmt, row, needle):
    good = {
        "messages": {"messages": user("q") + assistant("a")},
        "text": {"text": "fine"},
        "prompt_completion": {"prompt": "q", "completion": "a"},
        "preference": {"prompt": "q", "chosen": "a", "rejected": "b"},
        "rl": {"prompt": "q", "answer": "1"},
    }[fmt]
    path = write_jsonl("rows.jsonl", [good, good, row])
    message = _error(str(path), fmt)
    assert "rows.jsonl, line 3:" in message
    assert needle in message


def test_row_missing_a_column_other_rows_have(write_jsonl):
    path = write_jsonl("pc.jsonl", [{"prompt": "q", "completion": "a"}, {"prompt": "q2"}])
    message = _error(str(path), "prompt_completion")
    assert "pc.jsonl, line 2: column 'completion' is missing or null" in message


def test_preference_without_inferable_prompt(write_jsonl):
    rows = [{"chosen": assistant("a"), "rejected": assistant("b")}]
    message = _error(str(write_jsonl("p.jsonl", rows)), "preference")
    assert "p.jsonl, line 1: no 'prompt'" in message and "share no leading" in message


def test_preference_prompt_in_some_rows_only(write_jsonl):
    rows = [{"prompt": "q", "chosen": "a", "rejected": "b"}, {"chosen": "a", "rejected": "b"}]
    message = _error(str(write_jsonl("p.jsonl", rows)), "preference")
    assert "p.jsonl, line 2: column 'prompt' is missing or null, but line 1 has one" in message


def test_rl_reserved_completion_column(write_jsonl):
    path = write_jsonl("rl.jsonl", [{"prompt": "q", "completion": "ref"}])
    message = _error({"path": str(path), "format": "rl"}, "rl")
    assert "column 'completion', a name reserved in the rl format" in message
    assert "`columns: {completion: reference}`" in message


def test_extra_column_mixing_kinds_names_both_rows(write_jsonl):
    rows = [{"prompt": "q", "answer": "1"}, {"prompt": "q", "answer": 2}]
    message = _error(str(write_jsonl("rl.jsonl", rows)), "rl")
    assert "rl.jsonl, line 2: column 'answer' holds a number, but line 1 holds a string" in message


def test_csv_row_with_too_many_cells(tmp_path):
    (tmp_path / "d.csv").write_text("prompt,answer\nq,1\nq,2,extra\n")
    message = _error(str(tmp_path / "d.csv"), "rl")
    assert "d.csv, row 2 (line 3), has more cells than the header's 2 columns" in message


def test_csv_messages_cell_that_is_not_json(tmp_path):
    (tmp_path / "m.csv").write_text("messages\nhello there\n")
    message = _error(str(tmp_path / "m.csv"), "messages")
    assert "m.csv, row 1 (line 2): column 'messages' is a string" in message


def test_json_row_number_in_a_json_file(tmp_path):
    (tmp_path / "d.json").write_text(json.dumps([{"text": "a"}, {"text": ["b"]}]))
    message = _error(str(tmp_path / "d.json"), "text")
    assert "d.json, row 2: column 'text' is a list, expected a string" in message


def test_not_utf8(tmp_path):
    (tmp_path / "latin.jsonl").write_bytes('{"text": "caf\u00e9"}\n'.encode("latin-1"))
    assert "latin.jsonl is not UTF-8" in _error(str(tmp_path / "latin.jsonl"))


def test_too_few_rows_for_eval_fraction(write_jsonl):
    path = write_jsonl("one.jsonl", [{"text": "a"}])
    message = _error({"path": str(path), "eval_fraction": 0.5}, "text")
    assert "one.jsonl has 1 rows, too few" in message
