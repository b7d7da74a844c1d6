"""The recipe runner: runs stages in order, skips what is up to date, resumes what was killed.

Layout of a run directory::

    run_dir/
      manifest.json           every stage's status, hash, timings, output
      report.md, plots/       written at the end of every run
      NAME/                   a completed stage: model/, config.yaml, metrics.jsonl, stage.json
      .work/NAME-HASH/        an attempt in progress (resumable checkpoints live here)
      .history/NAME-HASH-T/   earlier successful outputs replaced by a changed rerun

A stage is trained in its `.work` directory and moved into place only when it succeeds, so a
failing rerun never touches the output of an earlier successful run.
"""
from __future__ import annotations

import itertools
import shutil
import time
import traceback
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from posttrain.common.distributed import uses_launcher
from posttrain.errors import ConfigError, PosttrainError, StageFailed
from posttrain.recipe.preflight import preflight
from posttrain.recipe.resolve import ResolvedRecipe, ResolvedStage
from posttrain.report.metrics import MetricsLogger
from posttrain.report.progress import StageProgress
from posttrain.report.trackers import TrackerTarget, open_sinks
from posttrain.runner.fingerprint import as_recorded, plugin_digests, stage_fingerprint
from posttrain.runner.records import StageRecord, write_manifest
from posttrain.stages.context import StageContext


@dataclass
class StageOutcome:
    name: str
    kind: str
    status: str  # completed | cached | skipped | failed
    hash: str
    output: Path
    seconds: float = 0.0
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunResult:
    recipe: str
    run_dir: Path
    stages: list[StageOutcome]

    def stage(self, name: str) -> StageOutcome:
        return next(s for s in self.stages if s.name == name)

    @property
    def output(self) -> Path:
        """The last stage's output model directory."""
        return self.stages[-1].output


def compute_hashes(recipe: ResolvedRecipe) -> dict[str, str]:
    """Every stage's fingerprint, upstream first."""
    hashes: dict[str, str] = {}
    outputs: dict[str, str] = {}
    plugins = plugin_digests(recipe.plugins)  # a changed plugin (a user's loss, say) reruns every stage
    for stage in recipe.stages:
        upstream = {**plugins, **{dep: hashes[dep] for dep in stage.depends_on}}
        hashes[stage.name] = stage_fingerprint(stage.config.model_dump(mode="json"), upstream, outputs)
        outputs[str(stage.output_dir)] = stage.name
    return hashes


def earlier_hashes(recipe: ResolvedRecipe, current: dict[str, str]) -> dict[str, set[str]]:
    """The fingerprints an earlier posttrain gave each stage's unchanged config: before
    fingerprints were relocatable (they named absolute paths), and before keys were added to the
    stage's config (its saved config.yaml lacks them; here they are at their defaults). Each
    scheme chains through the upstream stages' hashes in the same scheme, as the earlier run built
    them, or through what an up-to-date upstream's record says (a stage rerun alone, --only, by
    another version); a changed upstream still reruns what follows. So upgrading posttrain never
    retrains what a run has. ``current``: compute_hashes(recipe)."""
    plugins = plugin_digests(recipe.plugins)
    schemes = [(False, False), (True, True), (True, False)]  # (as saved, relocatable)
    chains: list[dict[str, str]] = [{} for _ in schemes]
    outputs: dict[str, str] = {}
    earlier: dict[str, set[str]] = {}
    recorded: dict[str, set[str]] = {}  # up-to-date stages' record hashes, now and before a rewrite
    for stage in recipe.stages:
        full, saved = stage.config.model_dump(mode="json"), _saved_config(recipe.run_dir / stage.name)
        earlier[stage.name] = set()
        for (as_saved, relocatable), chain in zip(schemes, chains):
            config = as_recorded(stage.config, saved) if as_saved and saved is not None else full
            in_scheme = tuple(chain[dep] for dep in stage.depends_on)
            options = [sorted({chain[dep], *recorded.get(dep, ())}) for dep in stage.depends_on]
            for combo in itertools.product(*options):
                h = stage_fingerprint(config, {**plugins, **dict(zip(stage.depends_on, combo))}, outputs, relocatable)
                earlier[stage.name].add(h)
                if combo == in_scheme:
                    chain[stage.name] = h
        record = StageRecord.read(recipe.run_dir / stage.name)
        if record is not None and is_done(stage, current[stage.name], recipe.run_dir, earlier[stage.name]):
            recorded[stage.name] = {record.hash, *record.earlier}
        outputs[str(stage.output_dir)] = stage.name
    return earlier


def _saved_config(folder: Path) -> dict | None:
    """The config.yaml a completed stage saved, or None (absent or unreadable: no earlier scheme)."""
    try:
        saved = yaml.safe_load((folder / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    return saved if isinstance(saved, dict) else None


def is_done(stage: ResolvedStage, stage_hash: str, run_dir: Path, earlier: Collection[str] = ()) -> bool:
    """The stage completed with this fingerprint and its output is there. A record with one of the
    ``earlier`` hashes (earlier_hashes) counts too; the runner then rewrites it."""
    record = StageRecord.read(run_dir / stage.name)
    output_ok = stage.output_dir.exists() or not type(stage.config).produces_model
    return bool(record and record.status == "completed" and output_ok
                and (record.hash == stage_hash or record.hash in earlier))


def _select(recipe: ResolvedRecipe, only: str | None, from_stage: str | None) -> tuple[set[str], set[str]]:
    """(stages to consider, stages to rerun regardless of cache)."""
    names = [s.name for s in recipe.stages]
    for flag, value in (("--only", only), ("--from", from_stage)):
        if value is not None and value not in names:
            raise ConfigError(f"{flag} {value}: no such stage in {recipe.source} (stages: {', '.join(names)}).")
    if only:
        return {only}, set()
    if from_stage:
        tail = set(names[names.index(from_stage):])
        return tail, tail
    return set(names), set()


class Runner:
    """Runs one resolved recipe; see the module docstring for the on-disk layout."""

    def __init__(self, recipe: ResolvedRecipe, console: Console | None = None, show_progress: bool = True):
        self.recipe = recipe
        self.run_dir = recipe.run_dir
        self.console = console or Console(stderr=True)
        self.show_progress = show_progress
        self.hashes = compute_hashes(recipe)
        self.earlier_hashes = earlier_hashes(recipe, self.hashes)  # file digests are cached: cheap
        self.outcomes: list[StageOutcome] = []

    def run(self, only: str | None = None, from_stage: str | None = None, force: bool = False) -> RunResult:
        selected, forced = _select(self.recipe, only, from_stage)
        preflight(self.recipe, selected)  # every stage's data, before the first one trains
        self.run_dir.mkdir(parents=True, exist_ok=True)
        ran: set[str] = set()
        done_before = {stage.name for stage in self.recipe.stages
                       if is_done(stage, self.hashes[stage.name], self.run_dir, self.earlier_hashes[stage.name])}
        for stage in self.recipe.stages:  # all at once, before a stage can fail or be stopped
            if stage.name in done_before:
                self._update_record(stage, self.hashes[stage.name])
        try:
            for stage in self.recipe.stages:
                h = self.hashes[stage.name]
                done = stage.name in done_before
                if stage.name not in selected:
                    self._add(stage, "cached" if done else "skipped", h)
                    continue
                missing = [d for d in stage.depends_on if d not in ran and d not in done_before]
                if missing:
                    raise ConfigError(f"stage '{stage.name}' needs the output of {', '.join(missing)}, which is not complete and up to date; run without --only/--from first.")
                if done and not force and stage.name not in forced:
                    self.console.print(f"[dim]{stage.name}: up to date, skipped ({h[:12]})[/dim]")
                    self._add(stage, "cached", h)
                    continue
                self._run_stage(stage, h)
                ran.add(stage.name)
        finally:
            self._write_manifest()
        return RunResult(self.recipe.name, self.run_dir, self.outcomes)

    def _update_record(self, stage: ResolvedStage, h: str) -> None:
        """A stage an earlier posttrain recorded gets this version's fingerprint and full config,
        so the next upgrade compares against them."""
        folder = self.run_dir / stage.name
        record = StageRecord.read(folder)
        if record is not None and record.hash != h:
            (folder / "config.yaml").write_text(yaml.safe_dump(stage.config.model_dump(mode="json"), sort_keys=False))
            record.earlier = [*record.earlier, record.hash]
            record.hash = h
            record.write(folder)

    def _add(self, stage: ResolvedStage, status: str, h: str, seconds: float = 0.0, summary: dict | None = None) -> None:
        record = StageRecord.read(self.run_dir / stage.name)
        if summary is None and record is not None and status == "cached":
            summary, seconds = record.summary, record.seconds or 0.0
        self.outcomes.append(StageOutcome(stage.name, stage.kind.kind, status, h, stage.output_dir, seconds, summary or {}))

    def _run_stage(self, stage: ResolvedStage, h: str) -> None:
        work = self.run_dir / ".work" / f"{stage.name}-{h[:12]}"
        work.mkdir(parents=True, exist_ok=True)
        (work / "config.yaml").write_text(yaml.safe_dump(stage.config.model_dump(mode="json"), sort_keys=False))
        record = StageRecord(name=stage.name, kind=stage.kind.kind, hash=h, status="running", started=time.time(),
                             engine=getattr(stage.config, "engine", None), recipe=self.recipe.name,
                             plugins=list(self.recipe.plugins))
        key_metrics = type(stage.config).key_metrics
        progress = StageProgress(stage.name, key_metrics, console=self.console, enabled=self.show_progress)
        target = TrackerTarget(work, self.run_dir, self.recipe.name, stage.name, stage.config.model_dump(mode="json"))
        metrics = MetricsLogger(work / "metrics.jsonl", sinks=open_sinks(stage.config.report_to, target))
        ctx = StageContext(name=stage.name, work_dir=work, metrics=metrics, progress=progress)
        ctx.metrics.listeners.append(progress.update)
        resume = ctx.latest_checkpoint()
        record.resumed_from = str(resume) if resume else None
        record.write(work)
        self.console.print(f"[bold]{stage.name}[/bold] ({stage.kind.kind})" + (f": resuming from {resume.name}" if resume else ""))
        failed = True
        try:
            summary = self._execute(stage, ctx)
            failed = False
        except BaseException as err:
            record.status, record.finished = "failed", time.time()
            record.error = f"{type(err).__name__}: {err}"
            record.write(work)
            self.outcomes.append(StageOutcome(stage.name, stage.kind.kind, "failed", h, stage.output_dir, time.time() - record.started))
            if isinstance(err, (PosttrainError, KeyboardInterrupt)):
                raise
            raise StageFailed(f"stage '{stage.name}' ({stage.kind.kind}) failed: {record.error}\n{traceback.format_exc(limit=-8)}") from err
        finally:
            progress.close()
            metrics.close(failed=failed)
        record.status, record.finished = "completed", time.time()
        record.seconds = round(record.finished - record.started, 3)
        record.summary = summary
        record.write(work)
        self._promote(stage, work)
        self.outcomes.append(StageOutcome(stage.name, stage.kind.kind, "completed", h, stage.output_dir, record.seconds, summary))

    def _execute(self, stage: ResolvedStage, ctx: StageContext) -> dict[str, Any]:
        if stage.config.distributed.launcher == "ray":
            from posttrain.runner.ray_launch import launch_ray

            return launch_ray(stage, ctx, self.console)
        if uses_launcher(stage.config.distributed):
            from posttrain.runner.launch import launch_distributed

            return launch_distributed(stage, ctx, self.console)
        summary = stage.kind.run(stage.config, ctx)
        if type(stage.config).produces_model and not ctx.output_dir.exists():
            raise StageFailed(f"stage '{stage.name}' finished without writing its output to {ctx.output_dir}.")
        return summary

    def _promote(self, stage: ResolvedStage, work: Path) -> None:
        """Move the finished attempt into place; keep any earlier output under .history."""
        shutil.rmtree(work / "checkpoints", ignore_errors=True)
        final = self.run_dir / stage.name
        if final.exists():
            old = StageRecord.read(final)
            tag = (old.hash[:12] if old else "unknown") + time.strftime("-%Y%m%d-%H%M%S")
            history = self.run_dir / ".history" / f"{stage.name}-{tag}"
            history.parent.mkdir(parents=True, exist_ok=True)
            serial = 1
            while history.exists():
                serial += 1
                history = history.with_name(f"{stage.name}-{tag}-{serial}")
            final.rename(history)
        work.rename(final)

    def _write_manifest(self) -> None:
        stages = [
            {"name": o.name, "kind": o.kind, "status": o.status, "hash": o.hash, "seconds": o.seconds,
             "output": str(o.output), "summary": o.summary}
            for o in self.outcomes
        ]
        write_manifest(self.run_dir, self.recipe.name, self.recipe.source, stages)


def run_recipe(recipe: ResolvedRecipe, *, only: str | None = None, from_stage: str | None = None,
               force: bool = False, console: Console | None = None, show_progress: bool = True,
               report: bool = True) -> RunResult:
    """Run a resolved recipe; write manifest.json and (by default) report.md."""
    runner = Runner(recipe, console=console, show_progress=show_progress)
    try:
        result = runner.run(only=only, from_stage=from_stage, force=force)
    finally:
        if report and runner.outcomes:
            from posttrain.report.report import write_report

            write_report(recipe, runner.outcomes)
    return result
