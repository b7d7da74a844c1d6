"""`posttrain run | validate | stages | init-model | doctor | --version`.

User errors (PosttrainError) print one paragraph and exit 2, never a traceback.
"""
from __future__ import annotations

import sys
from pathlib import Path

import typer
from pydantic import ValidationError
from rich.console import Console

from posttrain.common.version import __version__
from posttrain.errors import ConfigError, PosttrainError

# click's usage errors (unknown command or option, missing argument): typer >= 0.26 raises its own
# copy of click's exceptions, not click's, so the base class is found from typer's BadParameter.
_USAGE_ERRORS: tuple[type[Exception], ...] = tuple(
    base for base in typer.BadParameter.__mro__ if base.__name__ == "ClickException")

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="posttrain: LLM post-training from one YAML recipe.")
out = Console()
err = Console(stderr=True)


def _version_callback(value: bool) -> None:
    if value:
        print(f"posttrain {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """posttrain: LLM post-training from one YAML recipe."""


@app.command()
def run(recipe: Path = typer.Argument(..., help="Recipe YAML file."),
        set_: list[str] = typer.Option([], "--set", "-s", help="Override a key: -s stages.sft.lr=1e-5 (repeatable)."),
        only: str | None = typer.Option(None, "--only", help="Run only this stage (its inputs must be complete)."),
        from_stage: str | None = typer.Option(None, "--from", help="Rerun this stage and every later one."),
        force: bool = typer.Option(False, "--force", help="Rerun stages even when they are up to date."),
        no_progress: bool = typer.Option(False, "--no-progress", help="No progress bars or live metric lines.")) -> None:
    """Run a recipe's stages in order; completed, unchanged stages are skipped."""
    from posttrain.api import run as api_run
    from posttrain.cli.tables import print_summary

    result = api_run(recipe, overrides=set_, only=only, from_stage=from_stage, force=force,
                     show_progress=not no_progress, console=err)
    print_summary(out, result)


@app.command()
def validate(recipe: Path = typer.Argument(..., help="Recipe YAML file."),
             set_: list[str] = typer.Option([], "--set", "-s", help="Override a key (as for run)."),
             status: bool = typer.Option(False, "--status", help="Also say which stages are up to date."),
             memory: bool = typer.Option(False, "--memory", help="Also estimate each RL stage's peak memory per training process, by phase of the step.")) -> None:
    """Validate a recipe and print it fully resolved, with every default filled in."""
    from posttrain.recipe import load_recipe
    from posttrain.recipe.preflight import preflight

    resolved = load_recipe(recipe, overrides=set_)
    preflight(resolved)
    out.print(resolved.to_yaml(), end="", highlight=False, markup=False, soft_wrap=True)
    from posttrain.common.distributed import describe

    for stage in resolved.stages:
        out.print(f"# {stage.name} runs {describe(stage.config)}", highlight=False, markup=False, soft_wrap=True)
    if memory:
        from posttrain.cli.tables import memory_lines

        for line in memory_lines(resolved.stages):
            out.print(line, highlight=False, markup=False, soft_wrap=True)
    if status:
        from posttrain.runner.runner import Runner, is_done

        runner = Runner(resolved, show_progress=False)
        for stage in resolved.stages:
            done = is_done(stage, runner.hashes[stage.name], resolved.run_dir, runner.earlier_hashes[stage.name])
            state = "up to date" if done else "will run"
            out.print(f"# {stage.name}: {state}", highlight=False)


@app.command()
def stages(kind: str | None = typer.Argument(None, help="Show the keys of this stage kind."),
           variant: str | None = typer.Option(None, "--variant", help="With KIND grpo: show the defaults of this variant (dapo, gspo, ...).")) -> None:
    """List stage kinds, or the keys of one kind with the defaults a stage of it really gets."""
    from posttrain.cli.tables import print_stage_keys, print_stage_kinds

    if kind:
        print_stage_keys(out, kind, variant)
    else:
        print_stage_kinds(out)


@app.command("init-model")
def init_model(out_dir: Path = typer.Argument(..., help="Where to write the model and tokenizer."),
               arch: str = typer.Option("qwen2", "--arch", help="qwen2 | llama"),
               size: str = typer.Option("tiny", "--size", help="tiny | small | base"),
               seed: int = typer.Option(0, "--seed", help="Random seed; same seed, same files."),
               overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty out_dir.")) -> None:
    """Build a randomly initialised model with a locally trained tokenizer (no hub)."""
    from posttrain.models import describe
    from posttrain.models import init_model as build

    path = build(out_dir, arch=arch, size=size, seed=seed, overwrite=overwrite)
    info = describe(path)
    out.print(f"wrote {path}: {info['arch']} {info['size']}, {info['params']:,} parameters, vocab {info['vocab_size']}")


@app.command("eval")
def eval_command(model: Path = typer.Argument(..., help="HF model directory."),
                 data: Path = typer.Option(..., "--data", "-d", help="Prompts with answer columns (rl format)."),
                 verifier: str = typer.Option("math", "--verifier", "-v", help="Verifier name, module:attr or file.py:fn."),
                 samples: int = typer.Option(0, "--samples", "-n", help="Samples per prompt for pass@k (0 = greedy only)."),
                 k: list[int] = typer.Option([1], "--k", help="pass@k values (repeatable)."),
                 engine: str = typer.Option("auto", "--engine", help="auto (vllm with CUDA, else hf) | hf | vllm"),
                 max_prompts: int | None = typer.Option(None, "--max-prompts", help="Only the first N prompts."),
                 max_tokens: int = typer.Option(32, "--max-tokens", help="Max new tokens."),
                 temperature: float = typer.Option(1.0, "--temperature", help="Sampling temperature for pass@k."),
                 out_dir: Path | None = typer.Option(None, "--out", help="Write samples.jsonl and results.json here."),
                 as_json: bool = typer.Option(False, "--json", help="Print the results as JSON.")) -> None:
    """Greedy accuracy, pass@k and mean length of MODEL on --data, scored by --verifier."""
    import json

    from posttrain.stages.eval import EvalConfig, evaluate

    try:
        config = EvalConfig(model=str(model), data=str(data), verifier=verifier, samples=samples, pass_k=k,
                            engine=engine, max_prompts=max_prompts, max_tokens=max_tokens, temperature=temperature)
    except ValidationError as e:
        from posttrain.recipe.errors import format_validation_error

        raise ConfigError(format_validation_error(e, EvalConfig, "posttrain eval", (), {})) from None
    results = evaluate(config, out_dir / "samples.jsonl" if out_dir else None)
    if out_dir:
        (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    if as_json:
        print(json.dumps(results))
    else:
        for key, value in results.items():
            out.print(f"{key:28s} {value:.4g}", highlight=False)


@app.command()
def doctor() -> None:
    """Print versions and whether CUDA, vLLM and DeepSpeed are usable, with fixes."""
    from posttrain.cli.doctor import main_doctor

    raise typer.Exit(main_doctor(out))


def _mount_plugins() -> None:
    """Sub-commands that live with their feature (verifiers, eval)."""
    try:
        from posttrain.verification.cli import verifiers_app, verify_command
    except ImportError:
        return
    app.add_typer(verifiers_app, name="verifiers", help="List or scaffold verifiers.")
    app.command("verify")(verify_command)
    from posttrain.agents.cli import env_check_command, envs_app

    app.add_typer(envs_app, name="envs", help="List the environments and tools, or scaffold one.")
    app.command("env-check")(env_check_command)


def main(argv: list[str] | None = None) -> int:
    _mount_plugins()
    try:
        code = app(args=argv, standalone_mode=False)  # typer returns a typer.Exit's code itself
    except PosttrainError as e:
        err.print(f"[bold red]error:[/bold red] {e}", highlight=False, soft_wrap=True, markup=True)
        return e.exit_code
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        err.print("aborted")
        return 130
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    except _USAGE_ERRORS as e:
        e.show()
        return e.exit_code
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
