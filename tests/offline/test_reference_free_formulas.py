"""KTO, ORPO and SimPO: the loss our stages hand TRL equals the paper's formula on one pair.

The formula is evaluated by hand from the per-pair quantities the trainer logs (length-normalised
log-probs of the chosen and rejected completion, the chosen NLL, KTO's rewards and batch KL), so a
wrong key mapping (beta, gamma, sft_weight, the KTO weights landing on another TRL field) or a
different loss fails the test.
"""
from __future__ import annotations

import math

import pytest
import torch

from posttrain.report.metrics import MetricsLogger
from posttrain.report.progress import StageProgress
from posttrain.stages.context import StageContext


def _logsig(x: float) -> float:
    return -math.log1p(math.exp(-x))


def _loss_on_first_pair(monkeypatch, tmp_path, run, config, stored="_stored_metrics"):
    """Run the stage's own mapping up to the built trainer, then the loss of one pair and its logs."""
    from posttrain.stages import trl_bridge

    captured = {}

    def keep_untrained(trainer, *args, **kwargs):
        captured["t"] = trainer
        return {}

    monkeypatch.setattr(trl_bridge, "train_and_save", keep_untrained)
    run(config, StageContext("s", tmp_path, MetricsLogger(tmp_path / "m.jsonl"), StageProgress("s", enabled=False)))
    trainer = captured["t"]
    trainer.model.train()
    inputs = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    with torch.no_grad():
        loss = float(trainer.compute_loss(trainer.model, inputs))
    logged = {k: float(v[-1]) for k, v in getattr(trainer, stored)["train"].items() if v}
    return loss, logged


def _one_pair(small_preference_data, tmp_path):
    from pathlib import Path

    first = Path(small_preference_data["path"]).read_text().splitlines()[0]
    (tmp_path / "one.jsonl").write_text(first + "\n")
    return str(tmp_path / "one.jsonl")


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_orpo_loss_is_nll_minus_lambda_log_sigmoid_log_odds_ratio(monkeypatch, tmp_path, tiny_model,
                                                                  small_preference_data, beta):
    """ORPO eq. 6: L = NLL(y_w) - lambda * log sigmoid(log odds(y_w) - log odds(y_l)), odds(p) = p / (1 - p),
    p = exp(mean token log-prob)."""
    from posttrain.stages.orpo import ORPOConfig, run_orpo

    config = ORPOConfig(model=str(tiny_model), data=_one_pair(small_preference_data, tmp_path), batch_size=1, beta=beta)
    loss, logged = _loss_on_first_pair(monkeypatch, tmp_path, run_orpo, config)
    lw, ll, nll = logged["logps/chosen"], logged["logps/rejected"], logged["nll_loss"]
    log_odds = (lw - math.log1p(-math.exp(lw))) - (ll - math.log1p(-math.exp(ll)))
    assert lw < 0 and ll < 0 and lw != ll
    assert loss == pytest.approx(nll - beta * _logsig(log_odds), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("beta, gamma, sft_weight", [(2.0, 0.5, 0.0), (2.5, 1.0, 0.0), (2.0, 0.5, 1.0)])
def test_simpo_loss_is_the_length_normalised_margin_loss(monkeypatch, tmp_path, tiny_model, small_preference_data,
                                                        beta, gamma, sft_weight):
    """SimPO eq. 6: L = -log sigmoid(beta/|y_w| log pi(y_w) - beta/|y_l| log pi(y_l) - gamma) (+ sft_weight * NLL)."""
    from posttrain.stages.orpo import SimPOConfig, run_simpo

    config = SimPOConfig(model=str(tiny_model), data=_one_pair(small_preference_data, tmp_path), batch_size=1,
                         beta=beta, gamma=gamma, sft_weight=sft_weight)
    loss, logged = _loss_on_first_pair(monkeypatch, tmp_path, run_simpo, config)
    lw, ll = logged["logps/chosen"], logged["logps/rejected"]  # per-token means: SimPO's length normalisation
    assert logged["rewards/margins"] == pytest.approx(beta * (lw - ll), rel=1e-5)
    expected = -_logsig(beta * (lw - ll) - gamma) + sft_weight * logged["nll_loss"]
    assert loss == pytest.approx(expected, rel=1e-5, abs=1e-6)
    if sft_weight:
        assert logged["nll_loss"] > 0.1


def test_kto_loss_is_the_weighted_prospect_loss(monkeypatch, tmp_path, tiny_model, other_tiny_model,
                                                small_preference_data):
    """KTO eq. 8 on one pair unpaired into a desirable and an undesirable row, with another model as the
    reference: L = mean(w_D (1 - sigmoid(beta (r_w - z0))), w_U (1 - sigmoid(beta (z0 - r_l)))), r = beta^-1 x
    the logged reward (log pi - log ref), z0 the logged batch KL (clamped at 0)."""
    from posttrain.stages.kto import KTOConfig, run_kto

    beta, w_d, w_u = 0.3, 1.5, 0.5
    config = KTOConfig(model=str(tiny_model), ref_model=str(other_tiny_model), batch_size=2, beta=beta,
                       desirable_weight=w_d, undesirable_weight=w_u, data=_one_pair(small_preference_data, tmp_path))
    loss, trainer_metrics = _loss_on_first_pair(monkeypatch, tmp_path, run_kto, config, stored="_metrics")
    r_w, r_l = trainer_metrics["rewards/chosen"] / beta, trainer_metrics["rewards/rejected"] / beta
    z0 = trainer_metrics["kl"]
    assert abs(r_w) > 0.01 and abs(r_l) > 0.01 and z0 >= 0  # the reference really is the other model
    sig = lambda x: 1 / (1 + math.exp(-x))
    expected = (w_d * (1 - sig(beta * (r_w - z0))) + w_u * (1 - sig(beta * (z0 - r_l)))) / 2
    assert loss == pytest.approx(expected, rel=1e-5, abs=1e-6)
