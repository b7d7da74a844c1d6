"""Stage configs: variant presets fill unset keys and show in `posttrain validate`; bad combos fail."""
import sys
import textwrap

import pytest
import yaml
from pydantic import ValidationError
from rich.console import Console

from posttrain.cli.main import main
from posttrain.errors import ConfigError
from posttrain.recipe import load_recipe
from posttrain.stages.grpo import VARIANT_PRESETS, GRPOConfig
from posttrain.stages.ppo import PPOConfig

RECIPE = """\
name: rl
model: {model}
stages:
  rl:
    kind: grpo
    variant: {variant}
    data: {data}
    rewards:
      - function: posttrain.rewards.arithmetic:final_number_matches
{extra}"""


def write_recipe(tmp_path, variant="dapo", extra="", model=None):
    if model is None:  # a folder preflight accepts as a model (validate checks it; nothing loads it)
        model = tmp_path / "model"
        model.mkdir(exist_ok=True)
        (model / "config.json").write_text("{}")
    data = tmp_path / "rl.jsonl"
    data.write_text('{"prompt": "1 plus 1?", "answer": "2"}\n')
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE.format(model=model, variant=variant, data=data, extra=textwrap.indent(extra, "    ")))
    return path


def test_validate_prints_the_resolved_preset(tmp_path, capsys, monkeypatch):
    # rich wraps long lines at the console width (80 off a terminal), which breaks long paths
    monkeypatch.setattr(sys.modules["posttrain.cli.main"], "out", Console(width=100_000))
    path = write_recipe(tmp_path, "dapo", extra="clip_ratio_high: 0.3\n")
    assert main(["validate", str(path)]) == 0
    stage = yaml.safe_load(capsys.readouterr().out)["stages"]["rl"]
    assert stage["variant"] == "dapo"
    assert stage["clip_ratio_high"] == 0.3                  # the recipe's own value wins
    assert stage["clip_ratio_low"] == 0.2                   # the rest comes from the preset
    assert stage["dynamic_sampling"] is True
    assert stage["loss_aggregation"] == "token-mean"
    assert stage["overlong_buffer_ratio"] == 0.2
    assert stage["kl_coef"] == 0.0


@pytest.mark.parametrize("variant", sorted(VARIANT_PRESETS))
def test_every_preset_resolves_to_its_values(tmp_path, variant):
    config = load_recipe(write_recipe(tmp_path, variant)).stage("rl").config
    for key, value in VARIANT_PRESETS[variant].items():
        assert getattr(config, key) == value, key


def test_presets_differ_where_the_papers_do():
    assert VARIANT_PRESETS["gspo"]["ratio_level"] == "sequence"
    assert VARIANT_PRESETS["dr_grpo"]["advantage_scale"] == "none"
    assert VARIANT_PRESETS["rloo"]["kl_placement"] == "reward"
    assert GRPOConfig.model_validate({"kind": "grpo", "data": "x", "rewards": [{"function": "a:b"}],
                                      "variant": "gspo"}).policy_loss_name == "gspo"


@pytest.mark.parametrize("extra, message", [
    ("advantage_estimator: gae\n", "needs a value model"),
    ("group_size: 1\n", "group_size >= 2"),
    ("policy_loss: cispo\nratio_level: sequence\n", "no ratio_level 'sequence' form"),
    ("minibatch_size: 6\ngrad_accum: 4\n", "multiple of grad_accum"),
    ("kl_target: 1.0\nkl_coef: 0.0\n", "kl_target"),
    ("kl_coef: 0.1\nkl_turn_weights: [10, 1]\n", "kl_turn_weights weighs the KL of each turn of multi-turn episodes: set `environment:`"),
    ("kl_coef: 0.1\nkl_turn_weights: []\nenvironment: {name: feedback}\n", "at least 1 item"),
    ("kl_coef: 0.1\nkl_turn_weights: [-1]\nenvironment: {name: feedback}\n", "greater than or equal to 0"),
    ("kl_coef: 0.0\nkl_turn_weights: [10, 1]\nenvironment: {name: feedback}\n", "set kl_coef > 0 and kl_placement: loss"),
    ("kl_coef: 0.1\nkl_placement: reward\nkl_turn_weights: [10, 1]\nenvironment: {name: feedback}\n",
     "set kl_coef > 0 and kl_placement: loss"),
    ("clip_ratio_hihg: 0.3\n", "clip_ratio_high"),
    ("lora: {r: 4, dropout: 0.05}\n", "lora.dropout is 0.05 but must be 0 in RL stages"),
    ("engine: vllm\nengine_sleep: true\n", "engine_sleep: vLLM's sleep mode needs a CUDA GPU"),
])
def test_invalid_combinations(tmp_path, extra, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(write_recipe(tmp_path, "grpo", extra=extra))


def test_unknown_variant_and_duplicate_channels(tmp_path):
    with pytest.raises(ConfigError, match="variant"):
        load_recipe(write_recipe(tmp_path, "dapo_plus"))
    with pytest.raises(ValidationError, match="unique"):
        GRPOConfig.model_validate({"kind": "grpo", "data": "x", "rewards": [{"function": "a:b"}, {"function": "c:b"}]})


def test_ppo_under_deepspeed_needs_one_clip_bound():
    """DeepSpeed clips every parameter by one gradient_clipping: a separate critic bound cannot hold."""
    base = {"kind": "ppo", "data": "x", "rewards": [{"function": "a:b"}], "distributed": {"processes": 2, "zero": 2}}
    with pytest.raises(ValidationError, match="critic_max_grad_norm 0.5 differs from max_grad_norm 1.0"):
        PPOConfig.model_validate({**base, "critic_max_grad_norm": 0.5})
    assert PPOConfig.model_validate({**base, "critic_max_grad_norm": 1.0}).distributed.zero == 2
    assert PPOConfig.model_validate({**base, "critic_max_grad_norm": 0.5, "distributed": {"processes": 2}})


def test_ppo_defaults_and_keys(tmp_path, capsys):
    assert main(["stages", "ppo"]) == 0
    out = capsys.readouterr().out
    for key in ("critic_model", "critic_lr", "value_clip", "kl_target", "dynamic_sampling"):
        assert key in out


def test_relative_references_are_read_from_the_recipe_folder(tmp_path):
    path = write_recipe(tmp_path, "grpo", extra=(
        "rewards:\n  - {function: ./my_rewards.py:score}\n  - {function: pkg.mod:fn}\n"
        "  - {verifier: ./checks/v.py:check}\n  - {reward_model: models/rm}\n  - {verifier: math}\n"
        "ref_model: models/ref\n"))
    text = path.read_text().replace("      - function: posttrain.rewards.arithmetic:final_number_matches\n", "")
    path.write_text(text.replace("    rewards:\n    rewards:", "    rewards:"))
    config = load_recipe(path).stage("rl").config
    functions = [c.function or c.verifier or c.reward_model for c in config.rewards]
    assert functions == [f"{tmp_path}/my_rewards.py:score", "pkg.mod:fn", f"{tmp_path}/checks/v.py:check",
                         f"{tmp_path}/models/rm", "math"]
    assert config.ref_model == f"{tmp_path}/models/ref"


def test_validate_rejects_a_batch_split_that_cannot_run(tmp_path, capsys):
    """6 prompts cannot split over 4 processes: `posttrain validate` says so, naming both keys,
    instead of the run failing when it reaches the stage."""
    path = write_recipe(tmp_path, "grpo", "prompts_per_step: 6\ndistributed: {processes: 4}\n", model=tmp_path)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "prompts_per_step 6" in err and "distributed.processes" in err, err


def test_batch_plan_is_derived_once_for_the_loop():
    from posttrain.rl.loop.config import BatchPlan

    plan = BatchPlan.derive(prompts_per_step=8, group_size=4, processes=2, minibatch_size=None, grad_accum=4)
    assert (plan.prompts_per_process, plan.completions_per_process, plan.minibatch, plan.micro_batch,
            plan.minibatches) == (4, 16, 16, 4, 1)
    with pytest.raises(ValueError, match="must divide the 16 completions"):
        BatchPlan.derive(prompts_per_step=8, group_size=4, processes=2, minibatch_size=6, grad_accum=3)


def test_engine_auto_resolves_to_vllm_only_with_cuda_and_vllm(monkeypatch):
    import importlib.util

    from posttrain.common import runtime
    from posttrain.stages.eval import EvalConfig

    base = {"kind": "grpo", "data": "x", "rewards": [{"verifier": "math"}]}
    monkeypatch.setattr(runtime, "cuda_present", lambda: False)
    assert GRPOConfig.model_validate(base).engine == "hf"          # this CPU machine: hf
    monkeypatch.setattr(runtime, "cuda_present", lambda: True)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object() if name == "vllm" else real_find_spec(name))
    assert GRPOConfig.model_validate(base).engine == "vllm"        # CUDA + vllm: the product path
    assert EvalConfig.model_validate({"kind": "eval", "data": "x"}).engine == "vllm"
    assert GRPOConfig.model_validate({**base, "engine": "hf"}).engine == "hf"   # an explicit choice stays
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "vllm" else real_find_spec(name))
    assert GRPOConfig.model_validate(base).engine == "hf"          # CUDA without vllm installed


def test_mismatch_correction_auto_corrects_only_a_sampler_in_another_precision(monkeypatch):
    from posttrain.common import runtime

    base = {"kind": "grpo", "data": "x", "rewards": [{"function": "a:b"}]}
    assert GRPOConfig.model_validate({**base, "engine": "vllm"}).mismatch_correction == "none"  # CPU: float32 vLLM
    monkeypatch.setattr(runtime, "cuda_present", lambda: True)
    assert GRPOConfig.model_validate({**base, "engine": "vllm"}).mismatch_correction == "tis"  # 16-bit vLLM
    assert GRPOConfig.model_validate({**base, "engine": "vllm", "engine_options": {"dtype": "float32"}}
                                     ).mismatch_correction == "none"
    assert GRPOConfig.model_validate({**base, "engine": "hf"}).mismatch_correction == "none"  # the trainer's module
    assert GRPOConfig.model_validate({**base, "engine": "vllm", "mismatch_correction": "mis"}).mismatch_correction == "mis"


def test_validate_prints_how_a_lora_cosine_single_process_zero3_stage_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys.modules["posttrain.cli.main"], "out", Console(width=100_000))
    extra = "lora: {r: 8, alpha: 16}\nlr_scheduler: cosine\ndistributed: {processes: 1, zero: 3, offload: params}\n"
    assert main(["validate", str(write_recipe(tmp_path, "grpo", extra=extra))]) == 0
    printed = capsys.readouterr().out
    stage = yaml.safe_load(printed)["stages"]["rl"]
    assert stage["lora"]["r"] == 8 and stage["lr_scheduler"] == "cosine" and stage["distributed"]["zero"] == 3
    assert ("# rl runs 1 launched process, DeepSpeed ZeRO-3 with optimizer and parameter offload to CPU; "
            "LoRA r=8 alpha=16 (merged output)") in printed
