"""CLI pieces mounted by the main ``posttrain`` app.

``verifiers_app`` provides ``posttrain verifiers list`` and ``posttrain verifiers new NAME``;
``verify_command`` is mounted as ``posttrain verify`` with ``app.command("verify")(verify_command)``.
User errors raise PosttrainError subclasses, which the main CLI turns into exit status 2.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from posttrain.errors import ConfigError
from posttrain.verification.evaluation import evaluate_verifier, read_labelled_jsonl
from posttrain.verification.loading import list_verifiers, load_verifier
from posttrain.verification.scaffold import scaffold_plugin

verifiers_app = typer.Typer(name="verifiers", no_args_is_help=True,
                            help="List the available verifiers or scaffold a new plugin.")


def parse_options(pairs: list[str]) -> dict[str, Any]:
    """``["tolerance=1e-3", "mode=overlong"]`` -> ``{"tolerance": 0.001, "mode": "overlong"}``.

    Values are read as JSON when they parse (numbers, true/false, lists, objects), else kept as
    strings.
    """
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--option {pair!r}: expected key=value, e.g. --option tolerance=1e-4")
        try:
            options[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            options[key.strip()] = raw
    return options


@verifiers_app.command("list")
def list_command(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False
                 ) -> None:
    """List verifiers reachable by name: name, origin, one-line description."""
    specs = list_verifiers()
    if as_json:
        typer.echo(json.dumps([{"name": s.name, "origin": s.origin, "description": s.description,
                                "batched": s.batched, "async": s.is_async} for s in specs],
                              indent=2))
        return
    width = max((len(s.name) for s in specs), default=4)
    origin_width = max((len(s.origin) for s in specs), default=6)
    for s in specs:
        typer.echo(f"{s.name:<{width}}  {s.origin:<{origin_width}}  {s.description}")


@verifiers_app.command("new")
def new_command(
    name: Annotated[str, typer.Argument(help="Verifier name (a lowercase identifier).")],
    directory: Annotated[Path, typer.Option("--dir", help="Parent folder.")] = Path("."),
) -> None:
    """Scaffold a verifier plugin package (pyproject entry point, module, test)."""
    root = scaffold_plugin(name, directory)
    typer.echo(f"created {root}\n  pip install -e {root}   # registers entry point {name!r}\n"
               f"  pytest {root}/tests")


def _format_rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def verify_command(
    verifier: Annotated[str, typer.Option("--verifier", "-v",
                                          help="Name, module:fn or ./file.py:fn.")],
    data: Annotated[Path, typer.Option("--data", "-d",
                                       help="Labelled JSONL: completion, label, columns.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    option: Annotated[list[str] | None, typer.Option("--option", "-o",
                                                     help="Verifier option k=v.")] = None,
    timeout_s: Annotated[float, typer.Option("--timeout", help="Seconds per item.")] = 10.0,
    workers: Annotated[int, typer.Option("--workers", help="Parallel verifier calls.")] = 4,
    threshold: Annotated[float, typer.Option(
        "--threshold", help="score >= threshold counts as pass.")] = 0.5,
    label_column: Annotated[str | None, typer.Option(
        "--label-column", help="Boolean column to compare with (default: label, else expected).")] = None,
) -> None:
    """Measure a verifier on labelled completions (a `label` column) or audit it against a
    reference verdict (an `expected` column): agreement, confusion matrix, FP/FN rates, throughput."""
    loaded = load_verifier(verifier, base_dir=Path.cwd(), **parse_options(option or []))
    report = evaluate_verifier(loaded, read_labelled_jsonl(data), threshold=threshold,
                               timeout_s=timeout_s, workers=workers, source=str(data),
                               label_key=label_column)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
        return
    key = report.label_key
    lines = [
        f"verifier {report.verifier} on {report.n} labelled rows ({data})",
        f"agreement with {key}: {_format_rate(report.accuracy)} ({report.tp + report.tn} of {report.n})",
        f"  {'':{len(key) + 7}}  verdict=fail  verdict=pass",
        f"  {key}=False  {report.tn:>12}  {report.fp:>12}",
        f"  {key}=True   {report.fn:>12}  {report.tp:>12}",
        (f"FP rate {_format_rate(report.fp_rate)}  FN rate {_format_rate(report.fn_rate)}  "
         f"precision {_format_rate(report.precision)}  recall {_format_rate(report.recall)}"),
        (f"errors {report.errors}  timeouts {report.timeouts}  "
         f"throughput {report.items_per_s:.1f} items/s"),
    ]
    for m in report.mistakes:
        lines.append(f"  row {m['row']}: {key}={m['label']} verdict={m['verdict']} "
                     f"extracted={m['extracted']!r} ({m['reason']})")
    typer.echo("\n".join(lines))
