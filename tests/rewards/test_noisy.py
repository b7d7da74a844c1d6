"""Noisy-verifier corrections (arXiv 2510.00915): hand-computed values, exact expectations,
a seeded simulation, validation, and reading rates from a real `posttrain verify --json` report."""
from __future__ import annotations

import doctest
import json
import math

import pytest
import torch
import typer
from typer.testing import CliRunner

from posttrain.errors import DataError
from posttrain.rl.algos import backward_correction, check_noise_rates, forward_correction, noisy
from posttrain.verification.cli import verify_command
from posttrain.verification.rates import rates_from_report

RATE_GRID = [(0.0, 0.0), (0.1, 0.2), (0.3, 0.05), (0.45, 0.45), (0.0, 0.9), (0.7, 0.2)]


def test_backward_correction_hand_computed():
    """rho_0=0.1, rho_1=0.2, J = 1 - 0.1 - 0.2 = 0.7: a pass -> (1 - 0.1)/0.7 = 9/7,
    a fail -> (0 - 0.1)/0.7 = -1/7. rho=(0.25, 0.25), J=0.5: 1 -> 0.75/0.5 = 1.5, 0 -> -0.5."""
    out = backward_correction(torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64), 0.1, 0.2)
    torch.testing.assert_close(out, torch.tensor([9 / 7, -1 / 7, 9 / 7], dtype=torch.float64),
                               rtol=0, atol=1e-12)
    assert backward_correction(1.0, 0.25, 0.25) == pytest.approx(1.5, abs=1e-15)
    assert backward_correction(0.0, 0.25, 0.25) == pytest.approx(-0.5, abs=1e-15)
    assert isinstance(backward_correction(1, 0.25, 0.25), float)
    # No noise: the identity.
    r = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    torch.testing.assert_close(backward_correction(r, 0.0, 0.0), r, rtol=0, atol=0)


@pytest.mark.parametrize("rho0, rho1", RATE_GRID)
def test_backward_correction_is_unbiased_in_exact_expectation(rho0, rho1):
    """E[R^ | R*] = sum over R~ of P(R~ | R*) R^(R~) equals R* for both R* in {0, 1}."""
    hat_fail, hat_pass = backward_correction(torch.tensor([0.0, 1.0], dtype=torch.float64),
                                             rho0, rho1).tolist()
    given_correct = (1 - rho1) * hat_pass + rho1 * hat_fail
    given_wrong = rho0 * hat_pass + (1 - rho0) * hat_fail
    assert given_correct == pytest.approx(1.0, abs=1e-12)
    assert given_wrong == pytest.approx(0.0, abs=1e-12)


def test_forward_correction_hand_computed():
    """w_1 = rho_1 and w_0 = rho_1 - 1: rho_1 = 0.25 -> pass 0.25, fail -0.75."""
    out = forward_correction(torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64), fn_rate=0.25)
    torch.testing.assert_close(out, torch.tensor([0.25, -0.75, -0.75], dtype=torch.float64),
                               rtol=0, atol=1e-15)
    assert forward_correction(1.0, 0.1) == pytest.approx(0.1, abs=1e-15)
    assert forward_correction(0.0, 0.1) == pytest.approx(-0.9, abs=1e-15)
    # Only the FN rate matters: the same weights whatever fp_rate is passed for checking.
    torch.testing.assert_close(forward_correction(out.new_tensor([1.0, 0.0]), 0.25, fp_rate=0.6),
                               out.new_tensor([0.25, -0.75]), rtol=0, atol=0)


@pytest.mark.parametrize("rho0, rho1", RATE_GRID)
def test_forward_weights_in_exact_expectation(rho0, rho1):
    """E[w | R*=1] = (1 - rho_1) rho_1 + rho_1 (rho_1 - 1) = 0 and
    E[w | R*=0] = rho_0 rho_1 + (1 - rho_0)(rho_1 - 1) = -(1 - rho_0 - rho_1)."""
    w_fail, w_pass = forward_correction(torch.tensor([0.0, 1.0], dtype=torch.float64),
                                        rho1, fp_rate=rho0).tolist()
    assert (1 - rho1) * w_pass + rho1 * w_fail == pytest.approx(0.0, abs=1e-12)
    assert rho0 * w_pass + (1 - rho0) * w_fail == pytest.approx(-(1 - rho0 - rho1), abs=1e-12)


def _bandit():
    """Softmax policy over 5 answers, answers 0 and 2 correct."""
    logits = torch.tensor([0.3, -0.2, 1.1, 0.0, -0.7], dtype=torch.float64)
    correct = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    return logits, correct


def _clean_gradient(logits, correct):
    theta = logits.clone().requires_grad_(True)
    (torch.softmax(theta, 0) * correct).sum().backward()  # J(theta) = P(correct)
    return theta.grad


@pytest.mark.parametrize("rho0, rho1", [(0.1, 0.2), (0.3, 0.4), (0.0, 0.5)])
def test_corrected_policy_gradients_in_exact_expectation(rho0, rho1):
    """Score function of a softmax policy: grad log pi(a) = e_a - pi. The expected update
    sum_a pi_a E[f(R~) | R*_a] (e_a - pi) is the clean gradient for the backward correction and
    (1 - rho_0 - rho_1) times it for the forward correction."""
    logits, correct = _bandit()
    pi = torch.softmax(logits, 0)
    score = torch.eye(5, dtype=torch.float64) - pi                       # row a: e_a - pi
    p_pass = correct * (1 - rho1) + (1 - correct) * rho0                  # P(R~=1 | R*_a)
    one, zero = torch.ones(5, dtype=torch.float64), torch.zeros(5, dtype=torch.float64)

    def expected_update(f):
        weight = p_pass * f(one) + (1 - p_pass) * f(zero)                 # E[f(R~) | a]
        return (pi * weight) @ score

    clean = _clean_gradient(logits, correct)
    backward = expected_update(lambda r: backward_correction(r, rho0, rho1))
    forward = expected_update(lambda r: forward_correction(r, rho1))
    torch.testing.assert_close(backward, clean, rtol=0, atol=1e-12)
    torch.testing.assert_close(forward, (1 - rho0 - rho1) * clean, rtol=0, atol=1e-12)
    noisy_update = expected_update(lambda r: r)
    assert (noisy_update - clean).abs().max() > 1e-3  # the uncorrected update is biased


def test_simulated_corrected_mean_matches_clean_mean():
    """200k samples, 30% correct, rho_0=0.15, rho_1=0.25 (seeded). The noisy mean is
    0.3*0.75 + 0.7*0.15 = 0.33; the corrected mean estimates 0.3 with std ~ 0.78/sqrt(2e5) =
    0.0017, so 0.007 is a 4-sigma tolerance; the noisy mean misses by ~0.03."""
    gen = torch.Generator().manual_seed(1234)
    n, rho0, rho1 = 200_000, 0.15, 0.25
    clean = (torch.rand(n, generator=gen, dtype=torch.float64) < 0.3).double()
    flip = torch.rand(n, generator=gen, dtype=torch.float64)
    observed = torch.where(clean == 1, (flip >= rho1).double(), (flip < rho0).double())
    corrected = backward_correction(observed, rho0, rho1)
    assert abs(observed.mean().item() - clean.mean().item()) > 0.02
    assert abs(corrected.mean().item() - clean.mean().item()) < 0.007


def test_simulated_forward_update_points_along_the_clean_gradient():
    """Monte Carlo REINFORCE on the bandit with forward weights (seeded, 200k draws): the
    average of w(R~) (e_a - pi) matches (1 - rho_0 - rho_1) * clean gradient."""
    gen = torch.Generator().manual_seed(7)
    logits, correct = _bandit()
    rho0, rho1, n = 0.2, 0.3, 200_000
    pi = torch.softmax(logits, 0)
    actions = torch.multinomial(pi, n, replacement=True, generator=gen)
    flip = torch.rand(n, generator=gen, dtype=torch.float64)
    clean_r = correct[actions]
    observed = torch.where(clean_r == 1, (flip >= rho1).double(), (flip < rho0).double())
    w = forward_correction(observed, rho1)
    update = (w[:, None] * (torch.eye(5, dtype=torch.float64)[actions] - pi)).mean(0)
    target = (1 - rho0 - rho1) * _clean_gradient(logits, correct)
    cosine = torch.nn.functional.cosine_similarity(update, target, dim=0).item()
    assert cosine > 0.995
    torch.testing.assert_close(update, target, rtol=0, atol=0.005)


def test_nan_rewards_pass_through():
    r = torch.tensor([1.0, float("nan"), 0.0])
    assert torch.isnan(backward_correction(r, 0.1, 0.1)[1])
    assert torch.isnan(forward_correction(r, 0.1)[1])


@pytest.mark.parametrize("rho0, rho1, match", [
    (0.6, 0.5, "must be < 1"),
    (0.5, 0.5, "must be < 1"),
    (-0.1, 0.2, "fp_rate=-0.1"),
    (0.1, 1.0, "fn_rate=1.0"),
    (float("nan"), 0.1, "fp_rate=nan"),
    ("0.1", 0.1, "fp_rate='0.1'"),
])
def test_invalid_noise_rates_raise_value_error(rho0, rho1, match):
    with pytest.raises(ValueError, match=match):
        check_noise_rates(rho0, rho1)
    with pytest.raises(ValueError, match=match):
        backward_correction(torch.tensor([1.0]), rho0, rho1)


def test_forward_correction_validation():
    with pytest.raises(ValueError, match="fn_rate=1.2"):
        forward_correction(torch.tensor([1.0]), 1.2)
    with pytest.raises(ValueError, match="must be < 1"):
        forward_correction(torch.tensor([1.0]), 0.5, fp_rate=0.5)
    with pytest.raises(ValueError, match="binary rewards.*got 0.5"):
        forward_correction(torch.tensor([1.0, 0.5]), 0.1)
    with pytest.raises(ValueError, match="binary reward"):
        backward_correction(0.3, 0.1, 0.1)


def _verify_json(tmp_path, rows) -> str:
    """Run the real `posttrain verify -v exact -d FILE --json` command and return its stdout."""
    data = tmp_path / "labelled.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    app = typer.Typer()
    app.command("verify")(verify_command)
    app.command("noop")(lambda: None)  # two commands, so "verify" stays a sub-command
    result = CliRunner().invoke(app, ["verify", "-v", "exact", "-d", str(data), "--json",
                                      "--workers", "1"])
    assert result.exit_code == 0, result.output
    return result.output


def test_rates_from_a_real_verify_report(tmp_path):
    """exact verifier, 3 rows labelled correct (one written "4.0" for "4": FN) and 4 labelled
    wrong (one that matches its answer string: FP). fn_rate = 1/3, fp_rate = 1/4."""
    rows = [
        {"completion": "4", "answer": "4", "label": True},
        {"completion": "x", "answer": "x", "label": True},
        {"completion": "4.0", "answer": "4", "label": True},
        {"completion": "5", "answer": "4", "label": False},
        {"completion": "7", "answer": "7", "label": False},
        {"completion": "a", "answer": "b", "label": False},
        {"completion": "c", "answer": "d", "label": False},
    ]
    report = tmp_path / "report.json"
    report.write_text(_verify_json(tmp_path, rows))
    fp, fn = rates_from_report(report)
    assert fp == pytest.approx(0.25, abs=1e-12)
    assert fn == pytest.approx(1 / 3, abs=1e-12)
    assert backward_correction(1.0, fp, fn) == pytest.approx(0.75 / (1 - 0.25 - 1 / 3), abs=1e-12)


def test_rates_from_report_null_rate_names_the_missing_label(tmp_path):
    rows = [{"completion": "4", "answer": "4", "label": True}]
    report = tmp_path / "report.json"
    report.write_text(_verify_json(tmp_path, rows))
    with pytest.raises(DataError, match=r"'fp_rate' is null because no labelled row had "
                                        r"label=false"):
        rates_from_report(report)


@pytest.mark.parametrize("content, match", [
    (None, "does not exist"),
    ("{not json", "is not valid JSON"),
    ("[1, 2]", "holds a list; expected a JSON object"),
    ('{"fp_rate": 0.1}', "lacks 'fn_rate'"),
    ('{"fp_rate": 0.1, "fn_rate": 1.5}', "'fn_rate' is 1.5; expected a probability"),
    ('{"fp_rate": "0.1", "fn_rate": 0.1}', "'fp_rate' is '0.1'"),
])
def test_rates_from_report_errors_name_file_and_key(tmp_path, content, match):
    path = tmp_path / "report.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=match) as info:
        rates_from_report(path)
    assert str(path) in str(info.value)


def test_docstring_examples_run():
    assert doctest.testmod(noisy).failed == 0
    assert math.isclose(backward_correction(1.0, 0.1, 0.2), 9 / 7, abs_tol=1e-12)


def test_rates_from_refuses_an_audit_against_a_reference_verdict(tmp_path):
    from posttrain.errors import DataError
    from posttrain.verification.rates import rates_from_report

    report = tmp_path / "audit.json"
    report.write_text('{"fp_rate": 0.1, "fn_rate": 0.2, "label_key": "expected"}')
    with pytest.raises(DataError, match="compares with 'expected', a reference verdict"):
        rates_from_report(report)
    report.write_text('{"fp_rate": 0.1, "fn_rate": 0.2, "label_key": "label"}')
    assert rates_from_report(report) == (0.1, 0.2)
