"""`save_rollouts`: each step's completions as JSON lines, what the update saw of them.

One file per step and process, ``rollouts/step-NNNNNN.rankR.jsonl`` in the stage folder, one row
per completion (the process's rows, prompt-major, G per prompt; ``group`` numbers the step's
prompt groups over all processes: this process's g-th group is g x processes + rank)::

    {"step": 3, "group": 0, "prompt": "...", "completion": "...", "finish_reason": "stop",
     "reward": 1.1, "rewards": {"math": 1.0, "regex": 1.0}, "advantage": 1.0, "trained": true}

``reward`` is the weighted sum of the channels (before DAPO's overlong punishment or a tool
cost, which the filter and the advantages see), null where unscorable. ``advantage`` is the mean
of the row's token advantages over its generated tokens (the sequence advantage for
sequence-level estimators; 0 for rows overlong filtering takes out); ``trained`` says whether any
of its tokens entered the loss (false for rows a reward_filter or overlong filtering took out):
under RAFT the trained rows are that iteration's fine-tuning data. Multi-turn rows carry the
episode record (``episode``). A resumed run rewrites the steps it repeats.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from posttrain.rl.loop.batches import ExperienceBatch, RolloutTensors, sequence_advantages
from posttrain.rl.scored import ScoredBatch

ROLLOUTS_DIR = "rollouts"


def _number(value: float) -> float | None:
    return None if math.isnan(value) else value  # NaN (unscorable) -> null: strict JSON readers reject NaN


def rollout_records(step: int, scored: ScoredBatch, exp: ExperienceBatch, tensors: RolloutTensors,
                    rank: int = 0, processes: int = 1) -> list[dict]:
    """The step's rows of process ``rank`` of ``processes`` (see the module docstring); tensors
    (B, T) on any device. The process took prompts rank, rank + processes, ... of the step."""
    mean_advantage = sequence_advantages(exp, tensors)                              # (B,)
    trained = exp.response_mask.detach().cpu().sum(1) > 0                           # (B,)
    rollout = scored.rollout
    records = []
    for i, row in enumerate(scored.rows):
        record = {"step": step, "group": i // scored.group_size * processes + rank, "prompt": row.get("prompt"),
                  "completion": rollout.completions[i], "finish_reason": rollout.finish_reasons[i],
                  "reward": _number(float(scored.rewards[i])),
                  "rewards": {name: _number(float(s[i])) for name, s in scored.channel_scores.items()},
                  "advantage": float(mean_advantage[i]), "trained": bool(trained[i])}
        if rollout.episodes is not None:
            record["episode"] = rollout.episodes[i]
        records.append(record)
    return records


def write_rollouts(stage_dir: Path, step: int, rank: int, records: list[dict]) -> Path:
    """Write (or, on a resumed step, overwrite) ``rollouts/step-NNNNNN.rankR.jsonl``."""
    folder = stage_dir / ROLLOUTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{step:06d}.rank{rank}.jsonl"
    path.write_text("".join(json.dumps(r, default=str) + "\n" for r in records))
    return path

