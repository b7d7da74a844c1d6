"""dpo / kto / orpo / simpo stages: the loss on a known pair, the reference model, and that they train."""
from __future__ import annotations

import json
import math

import pytest
from dpo_helpers import trl_loss_on_one_pair

import posttrain


def _records(result) -> list[dict]:
    return [json.loads(line) for line in (result.output.parent / "metrics.jsonl").read_text().splitlines()]


def _logsig(x: float) -> float:
    return -math.log1p(math.exp(-x))


@pytest.mark.parametrize("keys, expected", [
    # m = beta * Delta (TRL's rewards/margins on a batch of one pair); lp = chosen log-prob sum; n = its tokens
    ({"loss_type": "sigmoid"}, lambda m, lp, n: -_logsig(m)),
    ({"loss_type": "sigmoid", "label_smoothing": 0.2}, lambda m, lp, n: -0.8 * _logsig(m) - 0.2 * _logsig(-m)),
    ({"loss_type": "robust", "label_smoothing": 0.2}, lambda m, lp, n: (-0.8 * _logsig(m) + 0.2 * _logsig(-m)) / 0.6),
    ({"loss_type": "hinge"}, lambda m, lp, n: max(0.0, 1.0 - m)),
    ({"loss_type": "sigmoid", "sft_weight": 0.5}, lambda m, lp, n: -_logsig(m) + 0.5 * (-lp / n)),
], ids=["dpo", "cdpo", "robust", "hinge", "rpo"])
def test_dpo_loss_on_one_pair_matches_the_paper_formula(tmp_path, tiny_model, other_tiny_model, small_preference_data,
                                                        keys, expected):
    """With a reference model different from the policy, the trainer's loss on one pair equals the formula."""
    from posttrain.stages.dpo import DPOConfig

    config = DPOConfig(model=str(tiny_model), ref_model=str(other_tiny_model), data=small_preference_data,
                       batch_size=1, beta=0.5, **keys)
    loss, metrics, inputs = trl_loss_on_one_pair(config, tmp_path, 0)
    margin, logp_chosen = metrics["rewards/margins"], metrics["logps/chosen"]
    n_chosen = int(inputs["completion_mask"][0, 1:].sum())
    assert abs(margin) > 0.05  # the reference really is the other model
    assert loss == pytest.approx(expected(margin, logp_chosen, n_chosen), rel=1e-4, abs=1e-5)


def test_reference_defaults_to_input_model_and_can_be_precomputed(tmp_path, tiny_model, other_tiny_model,
                                                                 small_preference_data):
    """Step 1 rewards are beta*(log pi - log ref): exactly 0 when ref = input model, not with another ref."""
    common = {"model": str(tiny_model), "data": small_preference_data, "max_steps": 1, "batch_size": 4,
              "logging_steps": 1}
    own = posttrain.run_stage("dpo", run_dir=tmp_path / "own", **common)
    other = posttrain.run_stage("dpo", run_dir=tmp_path / "other", ref_model=str(other_tiny_model),
                                precompute_ref_log_probs=True, **common)
    first_own, first_other = _records(own)[0], _records(other)[0]
    assert first_own["reward_chosen"] == pytest.approx(0.0, abs=1e-6)
    assert abs(first_other["reward_chosen"]) > 0.01
    for result in (own, other):
        assert 0.0 <= result.metrics["eval_reward_accuracy"] <= 1.0 and "eval_reward_margin" in result.metrics


@pytest.mark.parametrize("loss_type, smoothing", [("sigmoid", 0.0), ("sigmoid", 0.1), ("ipo", 0.0), ("hinge", 0.0),
                                                  ("robust", 0.1)])
def test_each_loss_type_trains(tmp_path, tiny_model, small_preference_data, loss_type, smoothing):
    """30 steps over 32 pairs (7.5 epochs): the logged loss falls."""
    result = posttrain.run_stage("dpo", model=str(tiny_model), data=small_preference_data, loss_type=loss_type,
                                 label_smoothing=smoothing, beta=0.5, lr=1e-3, max_steps=30, batch_size=8,
                                 logging_steps=5, run_dir=tmp_path)
    m = result.metrics
    assert m["last_loss"] < m["first_loss"] - 0.02, m


@pytest.mark.parametrize("kind, keys", [("kto", {}), ("orpo", {}), ("simpo", {}), ("simpo", {"sft_weight": 1.0})])
def test_reference_free_and_unpaired_kinds_train(tmp_path, tiny_model, small_preference_data, kind, keys):
    result = posttrain.run_stage(kind, model=str(tiny_model), data=small_preference_data, lr=1e-3, max_steps=30,
                                 batch_size=8, logging_steps=5, run_dir=tmp_path, **keys)
    m = result.metrics
    assert m["last_loss"] < m["first_loss"], m
    assert "eval_reward_margin" in m
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(result.output)


@pytest.mark.slow
def test_dpo_learns_arithmetic_preferences(tmp_path, arithmetic_sft_model, preference_data):
    """From the briefly SFT'd tiny model, DPO generalises to held-out pairs: their DPO loss falls clearly below
    ln 2 (the loss of any model equal to its reference) and the implicit reward margin is positive.

    Measured: eval_loss 0.639, margin 0.172, accuracy 0.554 (locked stack of 2026-12-03); 0.661, 0.112, 0.518
    on the unpinned stack CI had on 2026-12-02. Accuracy over 200 pairs moves by +-0.035 with the stack, so it is
    only required to beat chance; the held-out loss is the steadier signal.
    """
    result = posttrain.run_stage("dpo", model=str(arithmetic_sft_model), data=preference_data, beta=0.1, lr=5e-4,
                                 lr_scheduler="constant", max_steps=250, batch_size=32, max_length=64,
                                 precompute_ref_log_probs=True, logging_steps=50, seed=0, run_dir=tmp_path)
    print("dpo summary:", result.metrics)
    assert result.metrics["eval_loss"] < math.log(2) - 0.02
    assert result.metrics["eval_reward_margin"] > 0.05
    assert result.metrics["eval_reward_accuracy"] > 0.5
