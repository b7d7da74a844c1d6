"""The `prm` stage: step targets on the right tokens, the `steps` data format's errors, and that a
step-supervised PRM beats chance and an outcome-supervised one on held-out steps."""
from __future__ import annotations

import doctest
import json
from pathlib import Path

import pytest

import posttrain
from posttrain.errors import PosttrainError
from posttrain.rl.algos.process import IGNORE_INDEX
from posttrain.stages import prm as prm_stage

REPO = Path(__file__).resolve().parents[2]
PRM_DATA = {"path": str(REPO / "data" / "prm" / "train.jsonl"), "eval_path": str(REPO / "data" / "prm" / "heldout.jsonl")}
ROW = {"prompt": [[{"role": "user", "content": "What is 43 plus 32 plus 38?"}]],
       "steps": [["ones 3+2+8=13", "tens 4+3+3+1=11", "so 115"]], "labels": [[1, 1, 0]]}


@pytest.mark.parametrize("supervision, expected", [("step", [1, 1, 0]), ("outcome", [0])])
def test_targets_sit_on_each_steps_last_character(tiny_model, supervision, expected):
    """The labelled tokens decode to the last character of their step ('3', '1', '5'), after the
    prompt as the engines render it; outcome supervision labels the last step only."""
    from transformers import AutoTokenizer

    from posttrain.models.process_reward import prompt_ids

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    out = prm_stage.encode_rows(ROW, tokenizer, ", ", supervision, max_length=512)
    ids, targets = out["input_ids"][0], out["labels"][0]
    labelled = [i for i, t in enumerate(targets) if t != IGNORE_INDEX]
    assert [targets[i] for i in labelled] == expected
    ends = ["3", "1", "5"][-len(expected):]
    assert [tokenizer.decode([ids[i]]).strip()[-1] for i in labelled] == ends
    head = prompt_ids(tokenizer, ROW["prompt"][0])
    assert ids[:len(head)] == head and min(labelled) >= len(head)
    assert tokenizer.decode(ids[len(head):]) == "ones 3+2+8=13, tens 4+3+3+1=11, so 115"


@pytest.mark.parametrize("row, message", [
    ({"prompt": "q", "steps": ["a", "b"]}, "no column 'labels'"),
    ({"prompt": "q", "steps": ["a", "b"], "labels": [1]}, r"column 'labels' is \[1\]; expected one label per step \(2 steps\)"),
    ({"prompt": "q", "steps": ["a"], "labels": [2]}, "each 0 or 1"),
    ({"prompt": "q", "steps": [], "labels": []}, "column 'steps' is an empty list; expected a non-empty list"),
])
def test_step_data_without_usable_labels_is_refused(tmp_path, tiny_model, row, message):
    """A bad steps file stops the run before anything runs (preflight reads the data), naming the
    file, line and column; exit status 2."""
    path = tmp_path / "steps.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(PosttrainError, match=message) as caught:
        posttrain.prm(model=str(tiny_model), data={"path": str(path), "format": "steps"}, run_dir=tmp_path / "run",
                      max_steps=1)
    assert "steps.jsonl" in str(caught.value) and caught.value.exit_code == 2
    assert not list((tmp_path / "run").rglob("checkpoint-*"))


def test_step_metrics_example():
    assert doctest.testmod(prm_stage).failed == 0


def test_prm_beats_chance_and_the_outcome_model(tmp_path, tiny_model):
    """150 steps on 2,000 bundled rows (~5 s each): the step-supervised PRM's held-out step accuracy
    is above always-the-majority-label (measured 0.666 vs 0.597) and above the same model trained
    on the final answer only (0.403), which cannot tell a right first step from a wrong one."""
    keys = {"model": str(tiny_model), "data": {**PRM_DATA, "max_samples": 2000}, "step_separator": ", ",
            "max_steps": 150, "batch_size": 32, "lr": 1e-3, "max_length": 80, "logging_steps": 50}
    result = posttrain.prm(run_dir=tmp_path / "step", **keys)
    step = result.metrics
    outcome = posttrain.prm(run_dir=tmp_path / "outcome", supervision="outcome", **keys).metrics
    assert step["eval_step_majority"] == pytest.approx(179 / 300, abs=1e-6)  # 537 of 900 held-out steps are right
    assert step["eval_step_accuracy"] > step["eval_step_majority"] + 0.03
    assert step["eval_step_accuracy"] > outcome["eval_step_accuracy"] + 0.1
    assert step["eval_step_accuracy/1"] > outcome["eval_step_accuracy/1"]
    meta = json.loads((result.output / "prm.json").read_text())
    assert meta == {"step_separator": ", ", "supervision": "step"}
