"""`prm`: a process reward model, trained to tell at the end of each step whether the answer is
still right (Lightman et al. 2023, "Let's Verify Step by Step", arXiv 2305.20050, Sec. 2.4).

The data is `steps` rows: a prompt, the answer's steps, and one label per step (1 = this step and
every step before it are right). The model is the input causal LM with a fresh 2-way token
classification head (transformers' AutoModelForTokenClassification); the loss is the cross-entropy
of each step's label at the token that ends the step (posttrain.rl.algos.process.step_targets;
every other token is ignored), as TRL's former PRMTrainer trained it. The answer text is
``step_separator.join(steps)``, tokenized after the prompt as the rollout engines render it, so
the PRM reads sampled answers the way it was trained (posttrain.models.process_reward).

``supervision: outcome`` trains the same model on the last step's label only (is the final answer
right?): an outcome reward model read at every step, the baseline the paper compares PRMs with.

After training the stage scores the eval split's steps and reports ``eval_step_accuracy`` (P(right)
> 0.5 against the label, over all steps), ``eval_step_majority`` (the accuracy of always answering
the most common label: chance), ``eval_step_accuracy/k`` per step position, and
``eval_first_error_accuracy`` (answers whose first step scored below 0.5 is the labelled first
mistake, or none when the answer is right).
"""
from __future__ import annotations

import json
from typing import Any, ClassVar, Literal

from pydantic import Field

from posttrain.common.config import lr_field
from posttrain.stages.registry import register_stage
from posttrain.stages.training import TrainingConfig


class PRMConfig(TrainingConfig):
    """Train a process reward model on step-labelled answers."""

    data_formats: ClassVar[str | tuple[str, ...] | None] = "steps"

    kind: Literal["prm"] = "prm"
    lr: float = lr_field(1e-4, "The head is new: reward-model learning rates (1e-5 .. 1e-4) fit.")
    step_separator: str = Field("\n", min_length=1, description="What joins an answer's steps into its text, and where a sampled answer is split into steps when the PRM scores it in RL (', ' for the bundled worked answers).")
    supervision: Literal["step", "outcome"] = Field("step", description="step: learn every step's label (a PRM); outcome: learn only the last step's label, the final answer's correctness (an outcome RM read at each step: the baseline).")

    key_metrics: ClassVar[tuple[str, ...]] = ("loss", "eval_step_accuracy", "eval_step_majority")


def encode_rows(rows, tokenizer, separator: str, supervision: str, max_length: int) -> dict[str, list]:
    """Batched ``datasets.map`` function: input_ids, attention_mask and step targets (labels)."""
    from posttrain.models.process_reward import encode_steps
    from posttrain.rl.algos.process import step_targets

    out: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": []}
    for prompt, steps, labels in zip(rows["prompt"], rows["steps"], rows["labels"]):
        ids, ends = encode_steps(tokenizer, prompt, steps, separator)
        labels = [int(x) for x in labels]
        if supervision == "outcome":
            ends, labels = ends[-1:], labels[-1:]
        targets = step_targets(ends, labels, len(ids))[:max_length]
        out["input_ids"].append(ids[:max_length])
        out["attention_mask"].append([1] * len(out["input_ids"][-1]))
        out["labels"].append(targets)
    return out


def step_metrics(scores: list[list[float]], labels: list[list[int]]) -> dict[str, float]:
    """Step accuracy (P(right) > 0.5 against the label), the majority-label baseline, accuracy
    per step position, and first-error accuracy; see the module docstring.

    >>> m = step_metrics([[0.9, 0.2], [0.8, 0.6]], [[1, 0], [1, 0]])
    >>> m["eval_step_accuracy"], m["eval_step_majority"], m["eval_first_error_accuracy"]
    (0.75, 0.5, 0.5)
    """
    pairs = [(s > 0.5, bool(y)) for row_s, row_y in zip(scores, labels) for s, y in zip(row_s, row_y)]
    right = sum(p == y for p, y in pairs)
    positives = sum(y for _, y in pairs)
    out = {"eval_step_accuracy": right / len(pairs), "eval_step_majority": max(positives, len(pairs) - positives) / len(pairs)}
    for k in range(max(len(row) for row in labels)):
        column = [(row_s[k] > 0.5, bool(row_y[k])) for row_s, row_y in zip(scores, labels) if len(row_y) > k]
        out[f"eval_step_accuracy/{k + 1}"] = sum(p == y for p, y in column) / len(column)

    def first_error(row: list) -> int:
        return next((i for i, ok in enumerate(row) if not ok), len(row))

    hits = sum(first_error([s > 0.5 for s in row_s]) == first_error([bool(y) for y in row_y])
               for row_s, row_y in zip(scores, labels))
    out["eval_first_error_accuracy"] = hits / len(labels)
    return {k: round(v, 6) for k, v in out.items()}


def _trainer(config: PRMConfig, ctx, train, evaluation):
    import torch
    from transformers import (
        AutoModelForTokenClassification,
        AutoTokenizer,
        DataCollatorForTokenClassification,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    from posttrain.stages.reward_model import quiet_new_head
    from posttrain.stages.trl_bridge import MetricsCallback, lora_config, training_args

    tokenizer = AutoTokenizer.from_pretrained(config.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    set_seed(config.seed)
    with quiet_new_head():
        model = AutoModelForTokenClassification.from_pretrained(config.model, num_labels=2, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    peft = lora_config(config, task_type="TOKEN_CLS")
    if peft is not None:
        from peft import get_peft_model

        model = get_peft_model(model, peft)
    encode = {"tokenizer": tokenizer, "separator": config.step_separator, "supervision": config.supervision,
              "max_length": config.max_length}
    columns = train.column_names
    train_tokens = train.map(encode_rows, batched=True, remove_columns=columns, fn_kwargs=encode)
    eval_tokens = None if evaluation is None else evaluation.map(encode_rows, batched=True, remove_columns=columns,
                                                                 fn_kwargs=encode)
    args = TrainingArguments(**training_args(config, ctx, evaluation is not None), remove_unused_columns=False)
    trainer = Trainer(model=model, args=args, train_dataset=train_tokens, eval_dataset=eval_tokens,
                      data_collator=DataCollatorForTokenClassification(tokenizer), processing_class=tokenizer,
                      callbacks=[MetricsCallback(ctx)])
    return trainer, tokenizer


@register_stage("prm", PRMConfig, "process reward model: a step-level correctness classifier on step-labelled answers")
def run_prm(config: PRMConfig, ctx) -> dict[str, Any]:
    from posttrain.common.runtime import quiet_libraries
    from posttrain.data import load_dataset_spec
    from posttrain.models.process_reward import PRM_FILE, load_process_reward_model
    from posttrain.stages.trl_bridge import headline, train_and_save

    quiet_libraries()
    train, evaluation = load_dataset_spec(config.data, type(config).data_formats)
    trainer, tokenizer = _trainer(config, ctx, train, evaluation)
    summary = train_and_save(trainer, ctx, tokenizer, merge_lora=True)
    if trainer.is_world_process_zero():
        (ctx.output_dir / PRM_FILE).write_text(json.dumps({"step_separator": config.step_separator,
                                                           "supervision": config.supervision}) + "\n")
        if evaluation is not None:
            prm = load_process_reward_model(ctx.output_dir)
            scores, _ = prm.step_scores(evaluation["prompt"], evaluation["steps"])
            metrics = step_metrics(scores, evaluation["labels"])
            summary.update(metrics)
            ctx.metrics.log(summary["steps"], metrics)
    return headline(summary, PRMConfig.key_metrics[1:])
