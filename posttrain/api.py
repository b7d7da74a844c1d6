"""The Python API: the same validation and runner as the CLI.

>>> import posttrain                                                      # doctest: +SKIP
>>> result = posttrain.run("recipes/quickstart.yaml", overrides={"stages.sft.max_steps": 50})  # doctest: +SKIP
>>> result.stage("sft").summary["train_loss"]                              # doctest: +SKIP
>>> out = posttrain.sft(model="runs/tiny", data="data/arithmetic/sft.jsonl", max_steps=20,
...                     run_dir="runs/sft-from-python")                    # doctest: +SKIP
>>> out.output, out.metrics                                                # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from rich.console import Console

from posttrain.recipe.resolve import ResolvedRecipe, load_recipe, resolve_recipe
from posttrain.runner.runner import RunResult, run_recipe


def recipe_dict(name: str, stages: dict[str, BaseModel | dict[str, Any]], model: str | None = None,
                run_dir: str | None = None, defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """A recipe mapping from Python objects (stage config instances or plain dicts)."""
    data: dict[str, Any] = {"name": name, "stages": {}}
    for stage_name, stage in stages.items():
        data["stages"][stage_name] = stage.model_dump(mode="json", exclude_unset=True) | {"kind": stage.kind} if isinstance(stage, BaseModel) else dict(stage)
    if model is not None:
        data["model"] = str(model)
    if run_dir is not None:
        data["run_dir"] = str(run_dir)
    if defaults:
        data["defaults"] = defaults
    return data


def resolve(recipe: str | Path | dict[str, Any] | ResolvedRecipe,
            overrides: dict[str, Any] | list[str] | None = None) -> ResolvedRecipe:
    """A YAML path, a recipe mapping or an already resolved recipe -> validated ResolvedRecipe."""
    if isinstance(recipe, ResolvedRecipe):
        return recipe
    if isinstance(recipe, dict):
        return resolve_recipe(recipe, source="<python recipe>", overrides=overrides)
    return load_recipe(recipe, overrides=overrides)


def run(recipe: str | Path | dict[str, Any] | ResolvedRecipe, overrides: dict[str, Any] | list[str] | None = None, *,
        only: str | None = None, from_stage: str | None = None, force: bool = False,
        show_progress: bool = True, console: Console | None = None) -> RunResult:
    """Validate and run a recipe (file, mapping, or resolved); returns each stage's outcome."""
    return run_recipe(resolve(recipe, overrides), only=only, from_stage=from_stage, force=force,
                      show_progress=show_progress, console=console)


@dataclass
class StageResult:
    """What a one-stage helper returns: the model directory and the stage's summary metrics."""

    output: Path
    metrics: dict[str, Any]
    run_dir: Path
    status: str


def run_stage(kind: str, *, run_dir: str | Path | None = None, name: str | None = None,
              show_progress: bool = False, **config: Any) -> StageResult:
    """Run one stage of `kind` with `config` keys, validated exactly as in a recipe."""
    name = name or kind
    data = recipe_dict(name=name, stages={name: {"kind": kind, **config}},
                       run_dir=str(run_dir) if run_dir else f"runs/{name}")
    result = run(data, show_progress=show_progress)
    outcome = result.stage(name)
    return StageResult(outcome.output, outcome.summary, result.run_dir, outcome.status)


def init_model(**config: Any) -> StageResult:
    """`posttrain.init_model(arch="qwen2", size="tiny", seed=0, run_dir=...)`."""
    return run_stage("init_model", **config)


def pretrain(**config: Any) -> StageResult:
    """`posttrain.pretrain(model=..., data=..., **keys)`; keys as in `posttrain stages pretrain`."""
    return run_stage("pretrain", **config)


def sft(**config: Any) -> StageResult:
    """`posttrain.sft(model=..., data=..., **keys)`; keys as in `posttrain stages sft`."""
    return run_stage("sft", **config)


def reward_model(**config: Any) -> StageResult:
    """`posttrain.reward_model(model=..., data=pairs, ensemble=3, **keys)`; see `posttrain stages reward_model`."""
    return run_stage("reward_model", **config)


def prm(**config: Any) -> StageResult:
    """`posttrain.prm(model=..., data=step_labelled_answers, step_separator=", ", **keys)`; see `posttrain stages prm`."""
    return run_stage("prm", **config)


def dpo(**config: Any) -> StageResult:
    """`posttrain.dpo(model=..., data=pairs, loss_type="sigmoid", beta=0.1, **keys)`; see `posttrain stages dpo`."""
    return run_stage("dpo", **config)


def kto(**config: Any) -> StageResult:
    """`posttrain.kto(model=..., data=..., **keys)`; see `posttrain stages kto`."""
    return run_stage("kto", **config)


def orpo(**config: Any) -> StageResult:
    """`posttrain.orpo(model=..., data=pairs, **keys)`; see `posttrain stages orpo`."""
    return run_stage("orpo", **config)


def simpo(**config: Any) -> StageResult:
    """`posttrain.simpo(model=..., data=pairs, **keys)`; see `posttrain stages simpo`."""
    return run_stage("simpo", **config)


def grpo(**config: Any) -> StageResult:
    """`posttrain.grpo(model=..., data=prompts, rewards=[{"verifier": "math"}], variant="dapo", **keys)`."""
    return run_stage("grpo", **config)


def online_dpo(**config: Any) -> StageResult:
    """`posttrain.online_dpo(model=..., data=prompts, rewards=[{"verifier": "math"}], group_size=8, **keys)`."""
    return run_stage("online_dpo", **config)


def ppo(**config: Any) -> StageResult:
    """`posttrain.ppo(model=..., data=prompts, rewards=[{"reward_model": rm_dir}], **keys)`."""
    return run_stage("ppo", **config)


def evaluate(**config: Any) -> StageResult:
    """`posttrain.evaluate(model=..., data=heldout, verifier="math", samples=8, pass_k=[1, 8])`.

    The summary (`metrics`) holds eval/accuracy, eval/pass@k and eval/mean_length.
    """
    return run_stage("eval", **config)
