"""Registries, the torch-only import contract, and the runnable docstring examples."""

import ast
import doctest
import importlib
import sys
from pathlib import Path

import pytest
import torch

from posttrain.rl import algos
from posttrain.rl.algos import (
    ADVANTAGE_ESTIMATORS,
    POLICY_LOSSES,
    get_advantage_estimator,
    get_policy_loss,
    register_advantage_estimator,
    register_policy_loss,
)

# modules whose docstrings carry runnable examples
MODULES_WITH_EXAMPLES = ["advantages", "aggregation", "curriculum", "entropy", "filtering", "kl", "registry"]


def test_user_estimator_registers_and_looks_up():
    @register_advantage_estimator("test_mean_baseline")
    def mean_baseline(rewards, group_size):
        grouped = rewards.view(-1, group_size)
        return (grouped - grouped.mean(1, keepdim=True)).view(-1), {}

    try:
        fn = get_advantage_estimator("test_mean_baseline")
        adv, _ = fn(torch.tensor([1.0, 3.0]), group_size=2)
        assert adv.tolist() == [-1.0, 1.0]
        register_advantage_estimator("test_mean_baseline")(mean_baseline)  # same fn: idempotent
        with pytest.raises(ValueError, match="already registered"):
            register_advantage_estimator("test_mean_baseline")(lambda rewards: rewards)
    finally:
        del ADVANTAGE_ESTIMATORS["test_mean_baseline"]


def test_user_policy_loss_registers():
    @register_policy_loss("test_vanilla_pg")
    def vanilla_pg(logprobs, old_logprobs, advantages):
        return -advantages[:, None] * logprobs, {}

    try:
        assert get_policy_loss("test_vanilla_pg") is vanilla_pg
    finally:
        del POLICY_LOSSES["test_vanilla_pg"]


def test_unknown_names_list_the_known_ones():
    with pytest.raises(ValueError, match="expected one of: gae, gigpo, group_normalized"):
        get_advantage_estimator("ppo")
    with pytest.raises(ValueError, match="cispo, decoupled_ppo, gspo, pg, ppo_clip"):
        get_policy_loss("grpo")
    with pytest.raises(ValueError, match="non-empty string"):
        register_policy_loss("")


def test_algos_import_only_torch_and_stdlib():
    """Every import in posttrain/rl/algos is stdlib, torch, or relative (no transformers/trl)."""
    allowed = set(sys.stdlib_module_names) | {"torch"}
    for path in Path(algos.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = [node.module.split(".")[0]]
            else:
                continue
            assert set(roots) <= allowed, f"{path.name}:{node.lineno} imports {roots}"


@pytest.mark.parametrize("name", MODULES_WITH_EXAMPLES)
def test_docstring_examples_run(name):
    module = importlib.import_module(f"posttrain.rl.algos.{name}")
    failures, attempted = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert attempted > 0 and failures == 0
