"""Checkpoint and resume: ``ctx.checkpoint_dir/checkpoint-STEP/``, complete once ``COMPLETE`` exists.

A checkpoint holds what a killed run needs to continue its curve: the policy (and critic) weights,
the optimizer and LR-scheduler states, every process's RNG states (``accelerator.save_state``,
which also handles DeepSpeed's sharded states), and ``rl_state.json`` with the step, the prompt
stream's position and the KL controller. ``COMPLETE`` is written last, so a checkpoint cut short
by SIGKILL is ignored by ``ctx.latest_checkpoint()`` and overwritten by the next save.
"""
from __future__ import annotations

import json
import re
import shutil
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from posttrain.rl.loop.trainer import RLSession

_CKPT = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "rl_state.json"


def save_checkpoint(session: RLSession, step: int) -> None:
    """Write checkpoint-STEP (all processes take part) and prune old ones."""
    acc, ctx, procs = session.accelerator, session.ctx, session.procs
    path = ctx.checkpoint_dir / f"checkpoint-{step}"
    # pickle, not safetensors: the policy's tied embedding/lm_head tensors must round-trip as one
    acc.save_state(str(path), safe_serialization=False)
    session.learner.save(session, path)
    if procs.is_main:
        # asynchronous training: the draws as of this step's prompts; batches requested ahead are requested again on resume
        pipeline = session.pipeline
        stream = session.stream.state_dict(pipeline.draw_state if pipeline is not None else None)
        state = {"step": step, "stream": stream,
                 "kl_controller": session.kl_controller.state_dict()}
        (path / STATE_FILE).write_text(json.dumps(state))
        (path / "COMPLETE").write_text(f"{step}\n")
        _prune(ctx.checkpoint_dir, session.config.keep_checkpoints)
    procs.barrier()


def _prune(folder, keep: int) -> None:
    found = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := _CKPT.match(p.name)))
    complete = [(s, p) for s, p in found if (p / "COMPLETE").exists()]
    for _, path in complete[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


def resume(session: RLSession) -> int:
    """Load the latest complete checkpoint (if any); drop metrics past it; return its step.

    Without a checkpoint, metrics of an earlier attempt that died before its first save are
    dropped too, so the curve restarts cleanly at step 1.
    """
    acc, ctx, procs = session.accelerator, session.ctx, session.procs
    path = ctx.latest_checkpoint()
    step = 0
    if path is not None:
        acc.load_state(str(path))
        state = json.loads((path / STATE_FILE).read_text())
        step = int(state["step"])
        session.stream.load_state_dict(state["stream"])
        session.kl_controller.load_state_dict(state["kl_controller"])
        session.learner.load(session, path)
    if procs.is_main:
        ctx.metrics.truncate_after(step)
    procs.barrier()
    return step
