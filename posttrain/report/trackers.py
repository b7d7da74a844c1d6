"""Experiment trackers: sinks that get every metric record a stage logs, besides metrics.jsonl.

metrics.jsonl stays the record (the report, resume and the summary read it); a stage's
`report_to: [tensorboard, wandb, mlflow]` (a recipe default or per stage) also sends each record to

- ``tensorboard``: event files in the stage's folder, ``RUN_DIR/NAME/tensorboard/``
  (``tensorboard --logdir RUN_DIR`` shows every stage);
- ``wandb``: a W&B run in offline mode under ``RUN_DIR/NAME/wandb/`` (``wandb sync`` uploads it;
  ``WANDB_MODE=online`` in the environment logs live instead), project = the recipe's name;
- ``mlflow``: an MLflow local file store at ``RUN_DIR/mlruns`` (or ``MLFLOW_TRACKING_URI``),
  experiment = the recipe's name, one run per stage.

Each tracker is an optional extra (``pip install 'posttrain[tensorboard]'``); :func:`missing_trackers`
lets preflight name the extra before anything trains. Sinks open lazily on the first record, so a
resumed stage tells TensorBoard to drop the steps after its checkpoint (``purge_step``); W&B and
MLflow get a new run that continues at the checkpoint's step.
"""
from __future__ import annotations

import importlib.util
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

#: tracker name -> (the module it needs, the extra that installs it)
TRACKERS: dict[str, tuple[str, str]] = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
    "mlflow": ("mlflow", "mlflow"),
}


@dataclass(frozen=True)
class TrackerTarget:
    """Where one stage's tracker output goes and what it is called."""

    stage_dir: Path  # the stage's working folder (promoted to RUN_DIR/NAME when it completes)
    run_dir: Path
    recipe: str
    stage: str
    config: dict[str, Any]


class MetricSink(Protocol):
    """Gets each metric record (numbers only) after it is written to metrics.jsonl."""

    def write(self, step: int, record: dict[str, float]) -> None: ...

    def truncate_after(self, step: int) -> None: ...

    def close(self, failed: bool = False) -> None: ...


def missing_trackers(names: list[str]) -> list[str]:
    """One sentence per requested tracker whose package is not installed, naming the extra."""
    out = []
    for name in names:
        module, extra = TRACKERS[name]
        if importlib.util.find_spec(module) is None:
            out.append(f"report_to: {name} needs the {module} package, which is not installed; "
                       f"install it with: pip install 'posttrain[{extra}]'")
    return out


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """{"a": {"b": 1}} -> {"a.b": "1"}: the stage config as tracker params."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = str(value)[:500]
    return out


class TensorBoardSink:
    """Scalars into ``STAGE_DIR/tensorboard`` through torch's SummaryWriter."""

    def __init__(self, target: TrackerTarget):
        self.target = target
        self.purge_step: int | None = None
        self._writer = None

    def _open(self):
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(self.target.stage_dir / "tensorboard"), purge_step=self.purge_step)
        writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in flatten(self.target.config).items()))
        return writer

    def write(self, step: int, record: dict[str, float]) -> None:
        self._writer = self._writer or self._open()
        for key, value in record.items():
            self._writer.add_scalar(key, value, global_step=step)

    def truncate_after(self, step: int) -> None:
        if self._writer is None:
            self.purge_step = step + 1

    def close(self, failed: bool = False) -> None:
        if self._writer is not None:
            self._writer.close()


class WandbSink:
    """One W&B run per stage, offline unless WANDB_MODE says otherwise."""

    def __init__(self, target: TrackerTarget):
        self.target = target
        self._run = None

    def _open(self):
        import wandb

        return wandb.init(
            project=os.environ.get("WANDB_PROJECT", self.target.recipe), name=self.target.stage,
            dir=str(self.target.stage_dir), mode=os.environ.get("WANDB_MODE", "offline"),
            config=self.target.config, reinit="create_new",
            settings=wandb.Settings(console="off", silent=True),
        )

    def write(self, step: int, record: dict[str, float]) -> None:
        self._run = self._run or self._open()
        self._run.log(record, step=step)

    def truncate_after(self, step: int) -> None:
        """W&B cannot drop logged steps; a resumed stage is a new run continuing at `step`."""

    def close(self, failed: bool = False) -> None:
        if self._run is not None:
            self._run.finish(exit_code=1 if failed else 0)


def mlflow_name(key: str) -> str:
    """A metric key MLflow accepts: ``pass@8`` -> ``pass_at_8``; other characters outside
    ``[/\\w.\\- :]`` become ``_``."""
    return re.sub(r"[^/\w.\- :]", "_", key.replace("@", "_at_"))


class MlflowSink:
    """One MLflow run per stage in the recipe's experiment, in a local file store by default."""

    def __init__(self, target: TrackerTarget):
        self.target = target
        self._client = None
        self._run_id: str | None = None

    def _open(self) -> None:
        # MLflow 3 keeps the file store but refuses it unless asked; it is what the issue of a
        # tracker that needs no server calls for.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI") or (self.target.run_dir / "mlruns").resolve().as_uri()
        self._client = MlflowClient(tracking_uri=uri)
        experiment = self._client.get_experiment_by_name(self.target.recipe)
        experiment_id = experiment.experiment_id if experiment else self._client.create_experiment(self.target.recipe)
        self._run_id = self._client.create_run(experiment_id, run_name=self.target.stage).info.run_id
        params = [Param(mlflow_name(k), v) for k, v in flatten(self.target.config).items()]
        for start in range(0, len(params), 100):
            self._client.log_batch(self._run_id, params=params[start:start + 100])

    def write(self, step: int, record: dict[str, float]) -> None:
        from mlflow.entities import Metric

        if self._client is None:
            self._open()
        now = int(time.time() * 1000)
        self._client.log_batch(self._run_id, metrics=[Metric(mlflow_name(k), float(v), now, step) for k, v in record.items()])

    def truncate_after(self, step: int) -> None:
        """MLflow cannot drop logged steps; a resumed stage is a new run continuing at `step`."""

    def close(self, failed: bool = False) -> None:
        if self._client is not None:
            self._client.set_terminated(self._run_id, status="FAILED" if failed else "FINISHED")


_SINKS = {"tensorboard": TensorBoardSink, "wandb": WandbSink, "mlflow": MlflowSink}


def open_sinks(names: list[str], target: TrackerTarget) -> list[MetricSink]:
    """The sinks for a stage's `report_to` (each opens its tracker on the first record)."""
    return [_SINKS[name](target) for name in names]
