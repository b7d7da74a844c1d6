"""One process of a multi-process stage: `python -m posttrain.runner.worker WORK_DIR`.

Started by :func:`posttrain.runner.launch.launch_distributed` (through accelerate or torchrun, which
set RANK / WORLD_SIZE / LOCAL_RANK). The worker rebuilds the stage config from
`WORK_DIR/config.yaml` with the config class registered for its `kind` (the same validation as a
recipe), builds a StageContext whose metrics file and progress line are live on global rank 0
only, and runs the stage function. Rank 0 then writes `WORK_DIR/summary.json`. A user error
(PosttrainError) is written to `WORK_DIR/error-rankR.json` so the launching runner can re-raise it
as the same class; other exceptions print their traceback into the launch log.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from posttrain.errors import PosttrainError, StageFailed


def load_stage_config(work_dir: Path):
    """(StageKind, validated config) from WORK_DIR/config.yaml."""
    from posttrain.stages.registry import get_stage_kind

    path = work_dir / "config.yaml"
    if not path.is_file():
        raise StageFailed(f"{path} not found: the worker needs the stage config the runner writes there.")
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    kind = get_stage_kind(data.get("kind"), where=str(path))
    return kind, kind.config_cls.model_validate(data)


def _record(work_dir: Path) -> dict[str, Any]:
    path = work_dir / "stage.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def stage_name(work_dir: Path) -> str:
    """The stage's name from stage.json (written by the runner), else from the NAME-HASH folder name."""
    return _record(work_dir).get("name") or work_dir.name.rsplit("-", 1)[0]


def make_context(work_dir: Path, name: str, config, rank: int):
    """A StageContext that logs, reports to trackers and shows progress on rank 0 only (plain
    lines, parsed by the launcher)."""
    from rich.console import Console

    from posttrain.report.metrics import MetricsLogger
    from posttrain.report.progress import StageProgress
    from posttrain.report.trackers import TrackerTarget, open_sinks
    from posttrain.stages.context import StageContext

    main = rank == 0
    # markup=False: the "[stage]" line prefix is plain text (the launcher echoes lines by it), not a rich tag.
    console = Console(file=sys.stderr, force_terminal=False, markup=False, highlight=False, width=200)
    progress = StageProgress(name, type(config).key_metrics, console=console, enabled=main)
    run_dir = work_dir.parent.parent  # RUN_DIR/.work/NAME-HASH
    recipe = _record(work_dir).get("recipe") or run_dir.name
    target = TrackerTarget(work_dir, run_dir, recipe, name, config.model_dump(mode="json"))
    sinks = open_sinks(config.report_to, target) if main else []
    metrics = MetricsLogger(work_dir / "metrics.jsonl", enabled=main, sinks=sinks)
    metrics.listeners.append(progress.update)
    return StageContext(name=name, work_dir=work_dir, metrics=metrics, progress=progress, rank=rank)


def import_recorded_plugins(work_dir: Path) -> None:
    """Import the recipe's plugins (recorded in stage.json) before the config is validated, so
    the names they register (a user's policy loss, say) resolve in this process too."""
    from posttrain.common.plugins import import_plugin

    for ref in _record(work_dir).get("plugins") or []:
        import_plugin(ref, None, "plugin", StageFailed)


def run_worker(work_dir: Path) -> int:
    """Run the stage in WORK_DIR on this process; the exit status for the launcher."""
    from posttrain.runner.records import write_json

    rank = int(os.environ.get("RANK", "0"))

    def user_error(err: PosttrainError) -> int:
        write_json(work_dir / f"error-rank{rank}.json", {"type": type(err).__name__, "message": str(err)})
        print(f"rank {rank}: {type(err).__name__}: {err}", file=sys.stderr)
        return 2

    try:  # a plugin or config the worker cannot load is the user's error, reported as such
        import_recorded_plugins(work_dir)
        kind, config = load_stage_config(work_dir)
    except PosttrainError as err:
        return user_error(err)
    ctx = make_context(work_dir, stage_name(work_dir), config, rank)
    failed = True
    try:
        summary = kind.run(config, ctx)
        if ctx.is_main and not ctx.output_dir.exists():
            raise StageFailed(f"stage '{ctx.name}' finished without writing its output to {ctx.output_dir}.")
        failed = False
    except PosttrainError as err:
        return user_error(err)
    finally:
        ctx.progress.close()
        ctx.metrics.close(failed=failed)
    if ctx.is_main:
        write_json(work_dir / "summary.json", summary)
    _leave_process_group()
    return 0


def _leave_process_group() -> None:
    """Wait for every rank (rank 0 has written the summary), then tear the gloo/nccl group down."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m posttrain.runner.worker WORK_DIR", file=sys.stderr)
        return 2
    return run_worker(Path(argv[0]).resolve())


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: on 2 CPU processes a finished worker intermittently aborted in C++
    # destructors at exit ("terminate called without an active exception", SIGABRT), after its work
    # was saved, and torchrun then reported the whole stage as failed. Everything is written and
    # flushed by now.
    os._exit(code)
