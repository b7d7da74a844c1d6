"""Helpers shared by the DPO tests (imported by the test modules)."""
from __future__ import annotations

from pathlib import Path


def trl_loss_on_one_pair(config, tmp_path: Path, row: int):
    """TRL's DPOTrainer built from a `dpo` stage config, its loss on training pair ``row`` (no
    gradient) -> (loss, the last value of each logged metric, the collated inputs)."""
    import torch

    from posttrain.data import load_dataset_spec
    from posttrain.report.metrics import MetricsLogger
    from posttrain.report.progress import StageProgress
    from posttrain.stages.context import StageContext
    from posttrain.stages.dpo import build_dpo_trainer

    ctx = StageContext("dpo", tmp_path, MetricsLogger(tmp_path / "metrics.jsonl"), StageProgress("dpo", enabled=False))
    train, _ = load_dataset_spec(config.data, "preference")
    trainer, _ = build_dpo_trainer(config, ctx, train.select([row]), None)
    trainer.model.train()
    inputs = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    with torch.no_grad():
        loss = float(trainer.compute_loss(trainer.model, inputs))
    return loss, {k: v[-1] for k, v in trainer._metrics["train"].items()}, inputs
