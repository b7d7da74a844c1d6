"""The presets table: what `posttrain stages` prints is what `posttrain validate` resolves, for
every variant and the ppo kind, and the values are the papers' (written out here by hand, not
read from the table)."""
import ast
import re

import pytest
import yaml

from posttrain.cli.main import main
from posttrain.common.runtime import resolve_engine, sampler_precision_differs
from posttrain.rl.presets import PRESETS
from posttrain.stages.grpo import GRPO_VARIANTS

RECIPE = """\
name: presets
model: {model}
stages:
  rl:
    kind: {kind}
{variant}    data: {data}
    rewards:
      - verifier: math
"""
SET_BY_RECIPE = {"kind", "model", "data", "rewards", "variant"}


def _stage_defaults(capsys, kind, variant):
    argv = ["stages", kind] + (["--variant", variant] if variant else [])
    assert main(argv) == 0
    shown = {}
    for line in capsys.readouterr().out.splitlines():
        match = re.match(r"^  (\w+)  \(.*\)  default (.*)$", line)  # top-level keys only
        if match and match.group(2) != "required":
            shown[match.group(1)] = ast.literal_eval(match.group(2))
    return shown


def _validated(tmp_path, capsys, kind, variant):
    data = tmp_path / "rl.jsonl"
    data.write_text('{"prompt": "1 plus 1?", "answer": "2"}\n')
    (tmp_path / "config.json").write_text("{}")  # preflight checks the input is a model folder
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE.format(model=tmp_path, kind=kind, data=data,
                                  variant=f"    variant: {variant}\n" if variant else ""))
    assert main(["validate", str(path)]) == 0
    return yaml.safe_load(capsys.readouterr().out)["stages"]["rl"]


@pytest.mark.parametrize("kind, variant", [("grpo", None), *[("grpo", v) for v in GRPO_VARIANTS], ("ppo", None)])
def test_stages_help_shows_what_validate_resolves(tmp_path, capsys, kind, variant):
    shown = _stage_defaults(capsys, kind, variant)
    resolved = _validated(tmp_path, capsys, kind, variant)
    compared = 0
    for key, value in resolved.items():
        if key in SET_BY_RECIPE or isinstance(value, dict):
            continue
        if isinstance(value, list) and key in shown:  # YAML lists vs repr'd tuples/lists
            shown[key] = list(shown[key])
        if key == "engine":  # the help shows `auto`, which validate resolves on this machine
            shown[key] = resolve_engine(shown[key])
        if key == "mismatch_correction" and shown[key] == "auto":  # resolved from the engine and its dtype
            shown[key] = "tis" if sampler_precision_differs(resolved["engine"], resolved.get("engine_options") or {}) else "none"
        assert shown[key] == value, (kind, variant, key)
        compared += 1
    assert compared > 40  # every scalar knob of the online RL config


def test_grpo_help_no_longer_shows_the_plain_field_defaults(capsys):
    """The bug this table fixed: the help said token-mean and kl_coef 0.0 for plain grpo."""
    shown = _stage_defaults(capsys, "grpo", None)
    assert shown["loss_aggregation"] == "seq-mean-token-mean"
    assert shown["kl_coef"] == 0.04


# The papers' values, transcribed by hand from each paper (section in the comment).
PAPER_VALUES = {
    # DeepSeekMath (arXiv 2402.03300) Sec. 4.1-4.2: eps 0.2, beta 0.04, k3, KL in the loss, 1/|o_i| per sequence
    "grpo": {"advantage_estimator": "group_normalized", "advantage_scale": "group", "clip_ratio_low": 0.2,
             "clip_ratio_high": 0.2, "kl_coef": 0.04, "kl_estimator": "k3", "kl_placement": "loss",
             "loss_aggregation": "seq-mean-token-mean", "ratio_level": "token"},
    # Dr.GRPO (arXiv 2503.20783) Sec. 3: no std, no per-length normalisation, no KL
    "dr_grpo": {"advantage_scale": "none", "loss_aggregation": "seq-mean-token-sum-norm", "kl_coef": 0.0},
    # DAPO (arXiv 2503.14476) Sec. 2.3, 3.1-3.4: no KL, eps_high 0.28, dynamic sampling, token-level, L_cache/L_max = 0.2
    "dapo": {"kl_coef": 0.0, "clip_ratio_low": 0.2, "clip_ratio_high": 0.28, "dynamic_sampling": True,
             "loss_aggregation": "token-mean", "overlong_buffer_ratio": 0.2},
    # GSPO (arXiv 2507.18071): sequence-level ratio, clip 3e-4 / 4e-4, no KL
    "gspo": {"ratio_level": "sequence", "clip_ratio_low": 3e-4, "clip_ratio_high": 4e-4, "kl_coef": 0.0},
    # CISPO, MiniMax-M1 (arXiv 2506.13585) Sec. 3.1: clipped detached IS weights on every token's log-prob,
    # GRPO's group mean/std advantage, 1 / sum_i |o_i| (token level), no KL; weight bound 1 + eps_high = 5 (TRL)
    "cispo": {"policy_loss": "cispo", "ratio_level": "token", "cispo_weight_max": 5.0,
              "advantage_estimator": "group_normalized", "advantage_scale": "group",
              "loss_aggregation": "token-mean", "kl_coef": 0.0},
    # RLOO (arXiv 2402.14740): leave-one-out baseline, sequence as one action, KL in the reward
    "rloo": {"advantage_estimator": "rloo", "kl_placement": "reward", "kl_estimator": "k1",
             "loss_aggregation": "seq-mean-token-sum"},
    # REINFORCE++ (arXiv 2501.03262): global normalisation, k1 token KL in the reward
    "reinforce_pp": {"advantage_estimator": "reinforce_pp", "kl_placement": "reward", "kl_estimator": "k1",
                     "loss_aggregation": "token-mean"},
    # RAFT (arXiv 2304.06767) Algorithm 1: best of K per prompt, SFT loss (mean NLL over its tokens), no KL
    "raft": {"advantage_estimator": "raft", "policy_loss": "pg", "reward_filter": "best_of_n",
             "reward_filter_min": None, "loss_aggregation": "token-mean", "kl_coef": 0.0},
    # PPO-RLHF (Ziegler et al. 2019, InstructGPT 2022): GAE, whitened, k1 per-token KL in the reward
    "ppo": {"advantage_estimator": "gae", "whiten_advantages": True, "kl_estimator": "k1", "kl_placement": "reward"},
}


@pytest.mark.parametrize("name", sorted(PAPER_VALUES))
def test_presets_hold_the_papers_values(name):
    for key, value in PAPER_VALUES[name].items():
        assert PRESETS[name][key].value == value, (name, key)
        assert "arXiv" in PRESETS[name][key].source or "ours" in PRESETS[name][key].source, (name, key)


def test_every_grpo_variant_sets_the_same_knobs():
    keys = {name: set(PRESETS[name]) for name in GRPO_VARIANTS}
    assert all(k == keys["grpo"] for k in keys.values()), keys


def test_cispo_variant_trains_with_the_cispo_loss(tmp_path, capsys):
    """`variant: cispo` must reach the cispo loss (not ppo_clip with cispo's name on it): the
    resolved stage routes to the registered cispo function with weight_max 5 and no KL model."""
    from posttrain.rl.algos import get_policy_loss
    from posttrain.stages.grpo import GRPOConfig

    config = GRPOConfig.model_validate({"kind": "grpo", "data": "x.jsonl", "rewards": [{"verifier": "math"}],
                                        "variant": "cispo"})
    assert config.policy_loss_name == "cispo" and get_policy_loss(config.policy_loss_name).__name__ == "cispo"
    assert config.cispo_weight_max == 5.0 and not config.needs_reference
    shown = _stage_defaults(capsys, "grpo", "cispo")
    assert (shown["policy_loss"], shown["loss_aggregation"], shown["kl_coef"]) == ("cispo", "token-mean", 0.0)
