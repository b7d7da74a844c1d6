"""The Python API goes through the same validation and runner as the CLI."""
from __future__ import annotations

import pytest

import posttrain
from posttrain.errors import ConfigError
from posttrain.stages.init_model import InitModelConfig


def test_stage_helper_validates_like_a_recipe(tmp_path):
    with pytest.raises(ConfigError, match=r"stages.sft.learning_rate: unknown key. Did you mean"):
        posttrain.sft(model=str(tmp_path), data="x.jsonl", learning_rate=1e-4, run_dir=tmp_path / "run")


def test_init_model_helper_and_recipe_from_objects(tmp_path):
    result = posttrain.init_model(size="tiny", seed=1, run_dir=tmp_path / "run")
    assert result.status == "completed" and (result.output / "config.json").exists()
    assert result.metrics["params"] > 100_000
    recipe = posttrain.recipe_dict("objs", {"init": InitModelConfig(size="tiny", seed=1)}, run_dir=str(tmp_path / "run2"))
    run = posttrain.run(recipe, show_progress=False)
    assert run.stage("init").status == "completed"
    assert (run.output / "model.safetensors").read_bytes() == (result.output / "model.safetensors").read_bytes()


@pytest.mark.slow
def test_sft_helper_trains_and_returns_metrics(tmp_path, tiny_model_dir, chat_sft_file):
    out = posttrain.sft(model=str(tiny_model_dir), data=str(chat_sft_file), max_steps=6, batch_size=8,
                        logging_steps=1, lr=1e-3, run_dir=tmp_path / "run")
    assert out.status == "completed"
    assert out.metrics["steps"] == 6 and out.metrics["last_loss"] < out.metrics["first_loss"]
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out.output)


def test_every_stage_kind_has_a_helper():
    from posttrain.stages.registry import stage_kinds

    helpers = {"eval": posttrain.evaluate}
    for kind in stage_kinds():
        if kind in ("probe", "report_only"):  # registered by the runner tests
            continue
        assert callable(helpers.get(kind) or getattr(posttrain, kind)), kind
