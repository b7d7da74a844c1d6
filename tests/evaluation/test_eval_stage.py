"""The eval stage: verifier scoring, pass@k, samples file, and model pass-through in recipes."""
from __future__ import annotations

import json

import pytest

import posttrain
import posttrain.common.runtime
from posttrain.recipe import resolve_recipe


def test_eval_produces_no_model_so_next_stage_uses_previous_model(tmp_path):
    (tmp_path / "m").mkdir()
    recipe = resolve_recipe({"name": "x", "model": str(tmp_path / "m"), "run_dir": str(tmp_path / "run"), "stages": {
        "sft": {"kind": "sft", "data": str(tmp_path / "d.jsonl")},
        "eval": {"kind": "eval", "data": str(tmp_path / "h.jsonl"), "verifier": "./check.py:fn"},
        "dpo_like": {"kind": "sft", "data": str(tmp_path / "d.jsonl")}}}, base_dir=tmp_path)
    assert recipe.stage("eval").config.model.endswith("run/sft/model")
    assert recipe.stage("dpo_like").config.model.endswith("run/sft/model")
    assert recipe.stage("eval").config.verifier == f"{tmp_path}/check.py:fn"


@pytest.mark.slow
def test_eval_stage_scores_with_a_user_verifier(tmp_path, tiny_model_dir):
    (tmp_path / "check.py").write_text(
        "def nonempty(completion, answer):\n    return 1.0 if completion.strip() else 0.0\n")
    (tmp_path / "h.jsonl").write_text("".join(json.dumps({"prompt": f"What is {i} plus 1?", "answer": str(i + 1)}) + "\n" for i in range(6)))
    result = posttrain.run({"name": "ev", "model": str(tiny_model_dir), "run_dir": str(tmp_path / "run"), "stages": {
        "ok": {"kind": "eval", "data": str(tmp_path / "h.jsonl"), "verifier": f"{tmp_path}/check.py:nonempty",
               "samples": 3, "pass_k": [1, 3], "max_tokens": 4},
        "exact": {"kind": "eval", "data": str(tmp_path / "h.jsonl"), "verifier": "exact", "max_tokens": 4}}},
        show_progress=False)
    ok, exact = result.stage("ok").summary, result.stage("exact").summary
    assert ok["eval/accuracy"] == 1.0 and ok["eval/pass@1"] == 1.0 and ok["eval/pass@3"] == 1.0
    assert exact["eval/accuracy"] == 0.0  # an untrained model does not answer "i+1"
    assert ok["eval/mean_length"] == 4.0
    rows = [json.loads(line) for line in (tmp_path / "run" / "ok" / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 6 + 6 * 3 and {r["mode"] for r in rows} == {"greedy", "sampled"}
    # `engine` defaults to auto; stage.json records what it resolved to (hf without CUDA)
    expected = "vllm" if posttrain.common.runtime.resolve_engine("auto") == "vllm" else "hf"
    assert json.loads((tmp_path / "run" / "ok" / "stage.json").read_text())["engine"] == expected
