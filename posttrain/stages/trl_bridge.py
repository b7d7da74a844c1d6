"""Glue between our typed stage configs and TRL/transformers trainers.

We map each key explicitly (no `**kwargs` pass-through), forward the trainer's logs into our
metrics file and progress line, resume from the stage's last checkpoint, and save a plain HF
model (LoRA merged when asked) into the stage output.

Precision: TRL's configs default to `bf16=True`, which fails on a CPU-only machine; every config
built from :func:`training_args` passes `bf16`/`fp16` explicitly (`precision: auto` is fp32 on CPU).
Under DeepSpeed ZeRO-3 each process holds a shard of every weight; :func:`save_model` gathers the
full state dict on every rank (a collective) and rank 0 writes an ordinary HF checkpoint.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from posttrain.common.distributed import training_setup
from posttrain.common.runtime import resolve_precision
from posttrain.errors import ConfigError
from posttrain.stages.training import TrainingConfig


def check_precision(precision: str) -> None:
    """fp16 needs a CUDA GPU (its loss scaler is CUDA-only); say so instead of failing deep in torch."""
    if precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("precision: fp16 needs a CUDA GPU; on CPU use fp32 (or auto) or bf16 (slow without native bf16).")


def training_args(config: TrainingConfig, ctx, has_eval: bool) -> dict[str, Any]:
    """Keyword arguments for a transformers TrainingArguments subclass (TRL's configs)."""
    precision = resolve_precision(config.precision)
    check_precision(precision)
    args: dict[str, Any] = {
        "output_dir": str(ctx.checkpoint_dir),
        "learning_rate": config.lr,
        "num_train_epochs": config.epochs,
        "max_steps": config.max_steps or -1,
        "per_device_train_batch_size": config.batch_size,
        "per_device_eval_batch_size": config.batch_size,
        "gradient_accumulation_steps": config.grad_accum,
        "lr_scheduler_type": config.lr_scheduler,
        "warmup_steps": config.warmup_steps,  # transformers 5: a float < 1 is a ratio of total steps
        "weight_decay": config.weight_decay,
        "max_grad_norm": config.max_grad_norm,
        "gradient_checkpointing": config.gradient_checkpointing,
        "logging_steps": config.logging_steps,
        "save_strategy": "steps",
        "save_steps": config.save_steps,
        "save_total_limit": 2,
        "seed": config.seed,
        "data_seed": config.seed,
        "bf16": precision == "bf16",
        "fp16": precision == "fp16",
        "use_cpu": not torch.cuda.is_available(),
        "report_to": "none",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "eval_strategy": ("steps" if config.eval_steps else "no") if has_eval else "no",
        "eval_steps": config.eval_steps,
    }
    if config.distributed.zero:  # the launcher wrote it (also for one process: common.distributed)
        args["deepspeed"] = str(ctx.work_dir / "deepspeed.json")
    return args


def lora_config(config: TrainingConfig, task_type: str = "CAUSAL_LM"):
    """A peft LoraConfig for the stage, or None."""
    if config.lora is None:
        return None
    from posttrain.models.lora import peft_config

    return peft_config(config.lora, task_type)


class MetricsCallback(TrainerCallback):
    """Sends every trainer log to the stage's metrics file and progress line (main process only).

    `rename` maps TRL's metric names to ours. Stages that run several trainers one after another
    (reward-model ensembles) pass `step_offset` (steps already logged by earlier trainers),
    `extra` (fields added to every record, e.g. `{"member": 2}`) and `runs_left` (this trainer
    and the ones still to come, for the progress total).
    """

    def __init__(self, ctx, rename: dict[str, str] | None = None, step_offset: int = 0,
                 extra: dict[str, Any] | None = None, runs_left: int = 1):
        self.ctx = ctx
        self.rename = rename or {}
        self.step_offset = step_offset
        self.extra = extra or {}
        self.runs_left = runs_left

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.ctx.progress.set_total(self.step_offset + state.max_steps * self.runs_left)
            if state.global_step:
                self.ctx.metrics.truncate_after(self.step_offset + state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            metrics = {self.rename.get(k, k): v for k, v in logs.items() if k != "total_flos"}
            self.ctx.metrics.log(self.step_offset + state.global_step, {**metrics, **self.extra})

    def on_step_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.ctx.progress.update(self.step_offset + state.global_step)


def train_and_save(trainer, ctx, tokenizer, merge_lora: bool = True, rename: dict[str, str] | None = None,
                   output_dir: Path | None = None, resume: Path | None = None,
                   step_offset: int = 0) -> dict[str, Any]:
    """Train (resuming from the last checkpoint), evaluate, save the final model; return a summary.

    `rename` maps TRL's eval metric names to ours (`eval_rewards/accuracies` ->
    `eval_reward_accuracy`). `output_dir`/`resume` default to the stage's model folder and last
    checkpoint; `step_offset` shifts the step of the logged eval record (see MetricsCallback).
    """
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    rename = rename or {}
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    resume = resume if resume is not None else ctx.latest_checkpoint()
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    summary: dict[str, Any] = {"train_loss": round(float(result.training_loss), 6), "steps": int(result.global_step)}
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    if losses:
        summary["first_loss"], summary["last_loss"] = round(float(losses[0]), 6), round(float(losses[-1]), 6)
    if trainer.eval_dataset is not None:
        metrics = trainer.evaluate()
        summary.update({rename.get(k, k): round(float(v), 6) for k, v in metrics.items()
                        if isinstance(v, (int, float)) and k.startswith("eval_") and "runtime" not in k and "per_second" not in k})
        ctx.metrics.log(step_offset + trainer.state.global_step, {k: v for k, v in summary.items() if k.startswith("eval_")})
    engine = trainer.deepspeed if trainer.is_deepspeed_enabled else trainer.model_wrapped
    summary.update({f"distributed/{k}": v for k, v in training_setup(engine, trainer.args.world_size).items()})
    save_model(trainer, output_dir or ctx.output_dir, tokenizer, merge_lora)
    return summary


def build_trainer(config: TrainingConfig, ctx, args_cls, trainer_cls, *, model, tokenizer, train, evaluation,
                  specific: dict[str, Any], callbacks: list | None = None, prepare=None,
                  args_override: dict[str, Any] | None = None, task_type: str = "CAUSAL_LM",
                  **trainer_kwargs: Any):
    """The one place a TRL trainer is built from a stage config.

    ``args_cls`` (e.g. ``trl.DPOConfig``) gets :func:`training_args` plus ``max_length``,
    ``dataset_num_proc=None`` and the stage's own ``specific`` keys; ``prepare(args, train,
    evaluation)`` may replace the splits once the args exist (shared files under several
    processes); ``trainer_kwargs`` go to ``trainer_cls`` (e.g. ``ref_model``).
    """
    args = {**training_args(config, ctx, evaluation is not None), **(args_override or {})}
    trl_args = args_cls(**args, max_length=config.max_length, dataset_num_proc=None, **specific)
    if prepare is not None:
        train, evaluation = prepare(trl_args, train, evaluation)
    return trainer_cls(model=model, args=trl_args, train_dataset=train, eval_dataset=evaluation,
                       processing_class=tokenizer, peft_config=lora_config(config, task_type=task_type),
                       callbacks=callbacks, **trainer_kwargs)


def run_trainer(config: TrainingConfig, ctx, args_cls, trainer_cls, *, model, tokenizer, train, evaluation,
                specific: dict[str, Any], rename: dict[str, str] | None = None,
                headline_keys: tuple[str, ...] = (), prepare=None, **trainer_kwargs: Any) -> dict[str, Any]:
    """Build the stage's TRL trainer (:func:`build_trainer`), train, evaluate and save; return the summary
    with ``headline_keys`` first. Every offline stage but the reward-model ensemble ends here."""
    trainer = build_trainer(config, ctx, args_cls, trainer_cls, model=model, tokenizer=tokenizer, train=train,
                            evaluation=evaluation, specific=specific, prepare=prepare,
                            callbacks=[MetricsCallback(ctx, rename=rename)], **trainer_kwargs)
    summary = train_and_save(trainer, ctx, tokenizer, merge_lora=config.lora.merge if config.lora else True,
                             rename=rename)
    return headline(summary, headline_keys)


def headline(summary: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """The summary with `keys` (those present) first: run tables show a stage's first few metrics."""
    return {**{k: summary[k] for k in keys if k in summary}, **summary}


def save_model(trainer, output_dir: Path, tokenizer, merge_lora: bool = True) -> None:
    """Save a plain HF model (LoRA merged unless merge_lora=False) plus tokenizer, on the main process."""
    model = trainer.model
    if trainer.is_deepspeed_enabled:
        state_dict = trainer.accelerator.get_state_dict(trainer.deepspeed)  # gathers ZeRO-3 shards
    else:
        state_dict = None
    if not trainer.is_world_process_zero():
        return
    model = trainer.accelerator.unwrap_model(model)
    if merge_lora and hasattr(model, "merge_and_unload"):
        if state_dict is not None:
            model.load_state_dict(state_dict)
            state_dict = None
        model = model.merge_and_unload()
    model.save_pretrained(str(output_dir), state_dict=state_dict, safe_serialization=True)
    tokenizer.save_pretrained(str(output_dir))
