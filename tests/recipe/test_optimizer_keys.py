"""The optimiser's keys are defined once (OptimizerConfig) and read the same way by the offline
stages (through transformers) and the RL loop; only the defaults of lr, save_steps and lr_scheduler are per kind."""
from __future__ import annotations

import pytest

from posttrain.common.config import OptimizerConfig, StageConfig, warmup_optimizer_steps
from posttrain.errors import ConfigError
from posttrain.stages.registry import get_stage_kind

TRAINING_KINDS = ["pretrain", "sft", "reward_model", "dpo", "kto", "orpo", "simpo", "grpo", "ppo"]


@pytest.mark.parametrize("kind", TRAINING_KINDS)
def test_every_training_kind_reads_the_one_definition_of_each_optimizer_key(kind):
    fields = get_stage_kind(kind).config_cls.model_fields
    optimizer_keys = OptimizerConfig.model_fields.keys() - StageConfig.model_fields.keys()
    assert optimizer_keys == {"lr", "grad_accum", "warmup_steps", "weight_decay", "max_grad_norm",
                              "gradient_checkpointing", "save_steps", "lr_scheduler", "lora"}
    for name in optimizer_keys:
        base = OptimizerConfig.model_fields[name]
        assert fields[name].description.startswith(base.description), (kind, name)
        assert fields[name].metadata == base.metadata, (kind, name)  # the same bounds
        if name not in ("lr", "save_steps", "lr_scheduler"):
            assert fields[name].default == base.default, (kind, name)


def test_the_defaults_that_differ_per_kind():
    defaults = {kind: tuple(get_stage_kind(kind).config_cls.model_fields[key].default
                            for key in ("lr", "save_steps", "lr_scheduler")) for kind in TRAINING_KINDS}
    offline, rl = "linear", "constant_with_warmup"  # transformers' default; the RL loop's schedule until lr_scheduler
    assert defaults == {"pretrain": (1e-3, 100, offline), "sft": (2e-4, 100, offline), "reward_model": (1e-4, 100, offline),
                        "dpo": (1e-6, 100, offline), "kto": (1e-6, 100, offline), "orpo": (1e-6, 100, offline),
                        "simpo": (1e-6, 100, offline), "grpo": (1e-5, 10, rl), "ppo": (1e-5, 10, rl)}


def test_warmup_is_steps_or_a_fraction_of_the_optimizer_steps_as_in_transformers():
    from transformers import TrainingArguments

    for value, total in [(0, 90), (5, 90), (0.05, 90), (0.1, 7), (0.5, 3)]:
        ours = warmup_optimizer_steps(value, total)
        theirs = TrainingArguments(output_dir="/tmp/unused", warmup_steps=value, use_cpu=True).get_warmup_steps(total)
        assert ours == theirs, (value, total)
    assert warmup_optimizer_steps(0.05, 90) == 5 and warmup_optimizer_steps(3, 90) == 3


def test_a_fractional_warmup_in_an_rl_stage_counts_every_optimizer_step():
    config = get_stage_kind("grpo").config_cls.model_validate(
        {"kind": "grpo", "model": "/m", "data": "/d.jsonl", "rewards": [{"verifier": "math"}], "total_steps": 10,
         "prompts_per_step": 4, "group_size": 4, "minibatch_size": 4, "ppo_epochs": 2, "warmup_steps": 0.25})
    assert config.optimizer_steps() == 10 * 2 * 4
    assert warmup_optimizer_steps(config.warmup_steps, config.optimizer_steps()) == 20


def test_a_warmup_that_is_neither_steps_nor_a_fraction_is_rejected_and_the_old_key_is_pointed_to(tmp_path):
    from posttrain.recipe import load_recipe

    (tmp_path / "sft.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nmodel: /m\nstages:\n  sft:\n    kind: sft\n    data: sft.jsonl\n    warmup_steps: 2.5\n")
    with pytest.raises(ConfigError, match=r"line 7: stages.sft.warmup_steps: .*neither a whole number of steps"):
        load_recipe(recipe)
    recipe.write_text("name: r\nmodel: /m\nstages:\n  sft:\n    kind: sft\n    data: sft.jsonl\n    warmup_ratio: 0.1\n")
    with pytest.raises(ConfigError, match=r"stages.sft.warmup_ratio: unknown key. Did you mean 'warmup_steps'\?"):
        load_recipe(recipe)
