"""``posttrain envs list``, ``posttrain envs new NAME`` and ``posttrain env-check ENV --data FILE``.

env-check plays an environment the way a stage would, on the rows of a data file, with scripted
assistant turns (``--turn``, the k-th turn of every episode) or a model (``--model``), and reports
rewards, turns, tool calls, errors and throughput, as ``posttrain verify`` does for a verifier.
"""
from __future__ import annotations

import inspect
import json
import time
from pathlib import Path
from typing import Annotated

import typer

from posttrain.errors import ConfigError

envs_app = typer.Typer(name="envs", no_args_is_help=True, help="List the environments and tools, or scaffold one.")

SCAFFOLD = '''\
"""The {name!r} environment for posttrain (docs/agents.md). Check it with:

    posttrain env-check ./{name}.py:{cls} --data {name}.jsonl --turn "4"
"""
from posttrain.agents import Environment, StepResult


class {cls}(Environment):
    """One attempt: reward 1 when the answer contains the `answer` column."""

    columns = ("prompt", "answer")

    def reset(self, row):
        self.answer = str(row["answer"])
        return row["prompt"]

    def step(self, text):
        return StepResult(done=True, reward=float(self.answer in text))
'''


@envs_app.command("list")
def list_command() -> None:
    """Built-in environments and tools, with their one-line descriptions."""
    from posttrain.agents.environment import builtin_environments
    from posttrain.agents.tools import builtin_tools

    rows = [("environment", name, cls) for name, cls in builtin_environments().items()]
    rows += [("tool", name, fn) for name, fn in builtin_tools().items()]
    for kind, name, obj in rows:
        doc = (inspect.getdoc(obj) or "").splitlines()[0]
        typer.echo(f"{kind:<11}  {name:<10}  {doc}")


@envs_app.command("new")
def new_command(name: Annotated[str, typer.Argument(help="Environment name (a lowercase identifier).")],
                directory: Annotated[Path, typer.Option("--dir", help="Folder to write into.")] = Path(".")) -> None:
    """Write NAME.py (an environment to edit) and NAME.jsonl (two rows) that env-check accepts."""
    if not name.isidentifier() or not name.islower():
        raise ConfigError(f"environment name {name!r}: expected a lowercase Python identifier, e.g. my_env")
    cls = "".join(part.title() for part in name.split("_")) or "Env"
    code, data = directory / f"{name}.py", directory / f"{name}.jsonl"
    for path in (code, data):
        if path.exists():
            raise ConfigError(f"{path} exists; choose another name or --dir (nothing was written)")
    directory.mkdir(parents=True, exist_ok=True)
    code.write_text(SCAFFOLD.format(name=name, cls=cls))
    rows = [{"prompt": "What is 2 plus 2?", "answer": "4"}, {"prompt": "What is 3 plus 4?", "answer": "7"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    typer.echo(f"created {code} and {data}\n  posttrain env-check {code}:{cls} --data {data} --turn 4")


def env_check_command(
    environment: Annotated[str, typer.Argument(help="Environment: a built-in name, module:Class or ./file.py:Class.")],
    data: Annotated[Path, typer.Option("--data", "-d", help="Rows (JSONL) with a prompt and the columns the environment reads.")],
    turn: Annotated[list[str] | None, typer.Option("--turn", help="Scripted assistant turn k (repeatable; the last repeats).")] = None,
    model: Annotated[Path | None, typer.Option("--model", help="Play the turns with this model (hf engine) instead.")] = None,
    tool: Annotated[list[str] | None, typer.Option("--tool", help="A tool (built-in, module:fn or ./file.py:fn; repeatable).")] = None,
    option: Annotated[list[str] | None, typer.Option("--option", "-o", help="Environment option k=v (repeatable).")] = None,
    max_turns: Annotated[int, typer.Option("--max-turns", help="Assistant turns per episode at most.")] = 4,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="Tokens per turn (model) at most.")] = 64,
    max_rows: Annotated[int, typer.Option("--max-rows", help="Play only the first N rows.")] = 32,
    temperature: Annotated[float, typer.Option("--temperature", help="Sampling temperature (model).")] = 0.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Play an environment on a data file with scripted turns or a model; report rewards, turns,
    tool calls, errors and episodes per second."""
    from posttrain.agents.config import EnvironmentConfig
    from posttrain.agents.episodes import episode_metrics
    from posttrain.agents.session import build_episode_runner, environment_problems
    from posttrain.verification.cli import parse_options

    if (turn is None) == (model is None):
        raise ConfigError("env-check: give scripted turns (--turn TEXT, repeatable) or a model (--model DIR), not both")
    rows = _rows(data, max_rows)
    config = EnvironmentConfig(name=environment, tools=list(tool or []), options=parse_options(option or []),
                               max_turns=max_turns, max_episode_tokens=max_turns * (max_tokens + 64))
    problems = environment_problems(config, "env-check", sorted(rows[0]), f"data file {data}")
    if problems:
        raise ConfigError("; ".join(problems))
    tokenizer, engine = _engine(model, turn)
    runner = build_episode_runner(config, tokenizer, max_tokens, key="env-check")
    from posttrain.rl.rollout import SamplingConfig

    start = time.perf_counter()
    try:
        batch = runner.run(engine, rows, SamplingConfig(n=1, temperature=temperature, max_tokens=max_tokens, seed=0))
    finally:
        runner.close()
    seconds = time.perf_counter() - start
    report = {"environment": environment, "episodes": len(batch), "seconds": round(seconds, 3),
              "episodes_per_s": round(len(batch) / max(seconds, 1e-9), 2),
              **{k: round(v, 4) for k, v in episode_metrics(batch.episodes).items()},
              "examples": [{"messages": r["messages"], "reward": r["reward"], "env_error": r["env_error"]}
                           for r in batch.episodes[:2]]}
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    typer.echo(f"environment {environment} on {len(batch)} rows of {data}: {report['episodes_per_s']} episodes/s")
    for key in sorted(k for k in report if k.startswith("episode/")):
        typer.echo(f"  {key:<28} {report[key]}")
    for example in report["examples"]:
        typer.echo("  example: " + " | ".join(f"{m['role']}: {str(m['content'])[:60]}" for m in example["messages"])
                   + f"  -> reward {example['reward']}")
    errors = sorted({r["env_error"] for r in batch.episodes if r["env_error"]})
    for error in errors[:3]:  # a broken reset or step must not hide behind a normal-looking example
        typer.echo(f"  environment error: {error}")


def _rows(data: Path, limit: int) -> list[dict]:
    if not data.is_file():
        raise ConfigError(f"--data {data}: no such file")
    rows = []
    for number, line in enumerate(data.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{data}, line {number}: not JSON ({exc.msg})") from None
    if not rows or not all(isinstance(r, dict) and "prompt" in r for r in rows):
        raise ConfigError(f"{data}: expected JSON objects with a `prompt` column, one per line")
    return rows[:limit]


def _engine(model: Path | None, turns: list[str] | None):
    from posttrain.agents.scripted import ScriptedTurns
    from posttrain.models import build_tokenizer, load_tokenizer
    from posttrain.rl.rollout import make_engine

    if model is not None:
        tokenizer = load_tokenizer(model)
        return tokenizer, make_engine("hf", str(model), tokenizer)
    tokenizer = build_tokenizer()
    return tokenizer, ScriptedTurns(tokenizer, list(turns))
