"""`eval`: greedy accuracy and sampled pass@k of a model on prompts with answers, scored by a verifier.

Results go to the stage dir: `samples.jsonl` (every completion with its score) and the summary
(`eval/accuracy`, `eval/pass@K`, `eval/mean_length`), which the report compares across stages.
The stage produces no model: later stages default to the last model-producing stage's output.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from posttrain.agents.config import EnvironmentConfig
from posttrain.common.config import StageConfig, rebase_file_ref
from posttrain.common.runtime import resolve_engine
from posttrain.data import DataSpec
from posttrain.stages.registry import register_stage
from posttrain.verification.contract import ExecutorChoice


class EvalConfig(StageConfig):
    """Evaluate a model with a verifier (pass@1, pass@k, greedy accuracy)."""

    data_formats: ClassVar[str | tuple[str, ...] | None] = "rl"

    kind: Literal["eval"] = "eval"
    data: DataSpec = Field(description="Prompts with the columns the verifier reads (format rl), e.g. data/arithmetic/heldout.jsonl.")
    verifier: str = Field("math", description="Verifier reference: a built-in name, module:attr, or ./file.py:function.")
    verifier_options: dict[str, Any] = Field(default_factory=dict, description="Keyword options bound to the verifier.")
    engine: Literal["auto", "hf", "vllm"] = Field("auto", validate_default=True, description="Rollout engine used to generate: auto (vllm where CUDA and vllm are present, else hf), hf or vllm.")

    @field_validator("engine")
    @classmethod
    def _resolve_engine(cls, engine: str) -> str:
        return resolve_engine(engine)
    greedy: bool = Field(True, description="Report greedy (temperature 0) accuracy.")
    samples: int = Field(0, ge=0, description="Sampled completions per prompt for pass@k (0 = no sampling).")
    pass_k: list[int] = Field(default_factory=lambda: [1], description="k values for pass@k (each <= samples).")
    temperature: float = Field(1.0, ge=0.0, description="Sampling temperature for pass@k.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass for pass@k.")
    max_tokens: int = Field(32, ge=1, description="Maximum new tokens per completion.")
    max_prompts: int | None = Field(None, ge=1, description="Evaluate only the first N prompts.")
    verifier_workers: int = Field(2, ge=1, description="Workers scoring completions (threads or processes, see verifier_executor).")
    verifier_executor: ExecutorChoice = Field("auto", description="Where completions are scored: thread, process, or auto (the verifier's own choice: process for `math`).")
    verifier_timeout_s: float = Field(10.0, gt=0, description="Per-item verifier timeout.")
    environment: EnvironmentConfig | None = Field(None, description="Play each prompt as a multi-turn episode (the same block as an RL stage's `environment:`); the verifier scores the final turn, and turns and tool calls per episode are reported. max_tokens is then the default per-turn budget.")
    breakdown: str | None = Field(None, description="A data column whose values split the greedy accuracy (and episode metrics): eval/accuracy/<value>, e.g. a `difficulty` column.")

    produces_model: ClassVar[bool] = False
    key_metrics: ClassVar[tuple[str, ...]] = ("eval/accuracy", "eval/pass@1")

    def rebase_paths(self, base_dir: Path) -> None:
        self.verifier = rebase_file_ref(self.verifier, base_dir)
        if self.environment is not None:
            self.environment.rebase_paths(base_dir)

    def preflight_problems(self, key: str, run_dir: Path, columns: list[str] | None = None) -> list[str]:
        """The environment block's problems (as an RL stage's), and a breakdown column the data lacks."""
        from posttrain.agents.session import environment_problems

        problems = [*super().preflight_problems(key, run_dir, columns),
                    *environment_problems(self.environment, f"{key}.environment", columns, f"data file {self.data.path}")]
        if self.breakdown and columns is not None and self.breakdown not in columns:
            problems.append(f"{key}.breakdown: data file {self.data.path} has no column {self.breakdown!r} "
                            f"(it has {', '.join(columns)})")
        return problems


def evaluate(config: EvalConfig, samples_path: Path | None) -> dict[str, float]:
    """Shared by the stage and `posttrain eval`."""
    from transformers import AutoTokenizer

    from posttrain.common.runtime import quiet_libraries
    from posttrain.data import load_dataset_spec
    from posttrain.evaluation.runner import evaluate_model
    from posttrain.rl.rollout import make_engine
    from posttrain.verification import VerifierPool, load_verifier

    quiet_libraries()
    rows, _ = load_dataset_spec(config.data, type(config).data_formats)
    if config.max_prompts:
        rows = rows.select(range(min(config.max_prompts, len(rows))))
    prompts = list(rows["prompt"])
    columns = {c: list(rows[c]) for c in rows.column_names if c != "prompt"}
    verifier = load_verifier(config.verifier, **config.verifier_options)
    verifier.check_columns(list(columns), str(config.data.path))
    tokenizer = AutoTokenizer.from_pretrained(config.model)
    engine = make_engine(config.engine, config.model, tokenizer)
    episodes = None
    if config.environment is not None:
        from posttrain.agents.session import build_episode_runner

        episodes = build_episode_runner(config.environment, tokenizer, config.max_tokens)
    try:
        with VerifierPool(verifier, timeout_s=config.verifier_timeout_s, workers=config.verifier_workers,
                          executor=config.verifier_executor) as pool:
            return evaluate_model(engine, pool, prompts, columns, greedy=config.greedy, samples=config.samples,
                                  temperature=config.temperature, top_p=config.top_p, max_tokens=config.max_tokens,
                                  seed=config.seed, ks=tuple(config.pass_k), samples_path=samples_path,
                                  episodes=episodes, breakdown=config.breakdown)
    finally:
        engine.close()
        if episodes is not None:
            episodes.close()


@register_stage("eval", EvalConfig, "greedy accuracy and pass@k with a verifier (no model output)")
def run_eval(config: EvalConfig, ctx) -> dict[str, Any]:
    ctx.progress.set_total(1)
    summary = evaluate(config, ctx.work_dir / "samples.jsonl")
    ctx.metrics.log(1, summary)
    return summary
