"""The sync probe: after every weight sync, the trainer and the rollout engine score the same
fixed token sequences, and the gap between their log-probs is logged (``sync/probe_gap``, mean
absolute difference per token, in nats; ``sync/probe_gap_max``).

A sync that never reached the engine (an adapter not delivered, a reload that failed quietly)
leaves the engine sampling from an older policy while the trainer's importance ratios assume the
current one; peers' users have trained like that for weeks. A gap above ``sync_probe_max_gap``
stops the stage instead. The batch-level view of the same mismatch, measured on the sampled tokens
themselves, is ``mismatch/kl_sampler_trainer`` (logged every step).

The probe sequences are the first ``sync_probe_prompts`` prompts of the training data in file
order, rendered as the engine renders them. Engines that generate with the training module itself
(hf without ZeRO-3) have nothing to probe.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import torch

from posttrain.errors import StageFailed
from posttrain.rl.loop.tokens import padded_forward
from posttrain.rl.rollout.types import pad_right, render_prompts

if TYPE_CHECKING:
    from posttrain.rl.loop.config import OnlineRLConfig
    from posttrain.rl.loop.dist import Processes
    from posttrain.rl.rollout.types import RolloutEngine


class ProbeState(Protocol):
    """What the probe reads of the session (RLSession provides it)."""

    config: OnlineRLConfig
    procs: Processes
    model: torch.nn.Module
    engine: RolloutEngine
    probe: list[list[int]]


def probe_sequences(tokenizer, rows: list[dict], count: int, engine: RolloutEngine) -> list[list[int]]:
    """Token ids of the first ``count`` prompts (none when the engine shares the trainer's module)."""
    if count == 0 or engine.shared:
        return []
    return [ids for ids in render_prompts(tokenizer, [row["prompt"] for row in rows[:count]]) if len(ids) > 1]


@torch.no_grad()
def trainer_scores(model: torch.nn.Module, sequences: list[list[int]], pad_token_id: int) -> list[list[float]]:
    """The trainer's log-probs (temperature 1) of each sequence's tokens after the first: one
    right-padded forward of the prepared model (collective under ZeRO-3: every process probes)."""
    device = next(model.parameters()).device
    input_ids, mask = pad_right(sequences, pad_token_id)
    positions = torch.arange(input_ids.shape[1]).expand_as(input_ids)
    logprobs, _, _ = padded_forward(model, input_ids.to(device), mask.to(device), positions.to(device),
                                    prompt_width=1, temperature=1.0)
    return [logprobs[i, :len(ids) - 1].tolist() for i, ids in enumerate(sequences)]


def probe_gap(engine_lp: list[list[float]], trainer_lp: list[list[float]]) -> dict[str, float]:
    """Mean and max absolute per-token difference between two scorings of the same sequences.

    >>> probe_gap([[-1.0, -2.0], [-0.5]], [[-1.5, -2.0], [-0.25]])
    {'sync/probe_gap': 0.25, 'sync/probe_gap_max': 0.5}
    """
    gaps = [abs(a - b) for e, t in zip(engine_lp, trainer_lp, strict=True) for a, b in zip(e, t, strict=True)]
    return {"sync/probe_gap": sum(gaps) / len(gaps), "sync/probe_gap_max": max(gaps)}


def check_sync(session: ProbeState, step: int, pad_token_id: int) -> dict[str, float]:
    """Probe the engine after the sync of ``step``; stop the stage when the gap passes the bound.

    Every process probes its own engine (the probe list is the same everywhere, so the trainer
    forwards match collective for collective); see :func:`check_gap`."""
    if not session.probe:
        return {}
    return check_gap(session, step, [session.engine.score(session.probe)],
                     trainer_scores(session.model, session.probe, pad_token_id))


def check_gap(session: ProbeState, step: int, engine_lp: list[list[list[float]]],
              trainer_lp: list[list[float]]) -> dict[str, float]:
    """The probe's metrics from the engines' scores (one list per engine or rollout worker; none
    when a restarted worker loaded the weights itself) and the trainer's; raises StageFailed when
    the worst gap passes ``sync_probe_max_gap``. A collective: the processes' gaps are gathered
    first, so all of them stop with the same message naming the worst process, none waits on a
    peer that raised."""
    per_engine = [probe_gap(scores, trainer_lp) for scores in engine_lp]
    stats = max(per_engine, key=lambda s: s["sync/probe_gap"]) if per_engine else {}
    gaps = session.procs.gather_rows(torch.tensor([stats.get("sync/probe_gap", 0.0)], dtype=torch.float64))[0]
    worst = int(gaps.argmax())
    bound = session.config.sync_probe_max_gap
    if float(gaps[worst]) > bound:
        where = f" of process {worst}" if len(gaps) > 1 else ""
        raise StageFailed(
            f"after the weight sync of step {step}, the rollout engine{where}'s log-probs differ from the trainer's by "
            f"{float(gaps[worst]):.4g} nats per token on the {len(session.probe)} probe prompts (the bound "
            f"sync_probe_max_gap is {bound:g}): the engine is not "
            "serving the trainer's weights, and training on its samples would be off-policy without correction. "
            "Check the weight sync (lora_sync, engine dtype) or raise sync_probe_max_gap if the engine's precision "
            "explains the gap.")
    return stats
