"""ORPO and SimPO: the loss our stages hand TRL equals the paper's formula on one pair.

The formula is evaluated by hand from the per-pair quantities the trainer logs (length-normalised
log-probs of the chosen and rejected completion, the chosen NLL), so a wrong key mapping (beta,
gamma, sft_weight landing on another TRL field) or a different loss fails the test.
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


def _loss_on_first_pair(monkeypatch, tmp_path, run, config):
    """Run the stage's own mapping up to the built trainer, then the loss of one pair and its logs."""
    from posttrain.stages import trl_bridge

    captured = {}
    monkeypatch.setattr(trl_bridge, "train_and_save", lambda trainer, *a, **k: captured.setdefault("t", trainer) and {})
    run(config, StageContext("s", tmp_path, MetricsLogger(tmp_path / "m.jsonl"), StageProgress("s", enabled=False)))
    trainer = captured["t"]
    trainer.model.train()
    inputs = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    with torch.no_grad():
        loss = float(trainer.compute_loss(trainer.model, inputs))
    logged = {k: float(v[-1]) for k, v in trainer._stored_metrics["train"].items()}
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
