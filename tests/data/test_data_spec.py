"""DataSpec: the schema of a stage's `data:` block."""
from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from posttrain.data import DataSpec


def test_bare_string_is_a_path():
    spec = DataSpec.model_validate("data/arithmetic/sft.jsonl")
    assert spec.path == "data/arithmetic/sft.jsonl"
    assert spec.format == "auto" and spec.eval_fraction == 0 and spec.split == "train"
    assert DataSpec.model_validate(Path("x.csv")).path == "x.csv"


def test_every_field_has_a_default_and_help():
    DataSpec()  # all defaults
    for name, field in DataSpec.model_fields.items():
        assert field.description and field.description.endswith("."), name


@pytest.mark.parametrize(
    "bad, needle",
    [
        ({"path": "a.jsonl", "fromat": "rl"}, "fromat"),  # unknown key
        ({"path": "a.jsonl", "format": "chat"}, "format"),
        ({"path": "a.jsonl", "eval_fraction": 1.0}, "eval_fraction"),
        ({"path": "a.jsonl", "eval_fraction": -0.1}, "eval_fraction"),
        ({"path": "a.jsonl", "max_samples": 0}, "max_samples"),
        ({"path": "a.jsonl", "eval_path": "b.jsonl", "eval_fraction": 0.1}, "not both"),
        ({"path": "a.jsonl", "columns": {"q": "prompt", "question": "prompt"}}, "prompt"),
    ],
)
def test_invalid_specs_are_rejected(bad, needle):
    with pytest.raises(ValidationError, match=needle):
        DataSpec.model_validate(bad)


def test_resolve_joins_relative_paths_only(tmp_path):
    spec = DataSpec(path="sub/train.jsonl", eval_path="/abs/eval.jsonl", seed=3)
    resolved = spec.resolve(tmp_path)
    assert resolved.path == str(tmp_path / "sub" / "train.jsonl")
    assert resolved.eval_path == "/abs/eval.jsonl"
    assert resolved.seed == 3 and spec.path == "sub/train.jsonl"  # the original is unchanged
    assert DataSpec().resolve(tmp_path).path is None
    reference = "${stages.generate.output}/rows.jsonl"
    assert DataSpec(path=reference).resolve(tmp_path).path == reference
