"""The online DPO learner: the step's scored groups -> chosen/rejected pairs -> DPO-family steps.

It replaces the policy-gradient phases of the loop (experience.build_experience, update.ppo_update)
and keeps the rest: rollout, rewards (the judge: verifiers, reward models, their weighted sum, or a
pairwise `judge` function ranking by win rate), weight sync, checkpoints, metrics. The math is
:mod:`posttrain.rl.algos.preference`.

Per step, on each process: pairs from its own groups (a group never spans processes); reference
log-probs of the step's completions (no grad); then ``ppo_epochs`` passes over the pairs, shuffled
and split into the step's ``plan.minibatches`` minibatches, one optimizer step each, each pair's
chosen and rejected rows forwarded together in ``grad_accum`` micro-batches. The loss is the mean
over the minibatch's pairs on ALL processes; a minibatch without a pair anywhere takes no step.
With ``ref_update_steps`` N the reference becomes a copy of the policy after every N-th step
(iterative DPO: iteration k trains against the policy of iteration k-1's end).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from posttrain.common.seeds import derive_seed
from posttrain.errors import ConfigError, VerifierError
from posttrain.rl.algos import chosen_nll, dpo_pair_loss, preference_pairs, round_robin, win_rates
from posttrain.rl.loop.batches import ExperienceBatch
from posttrain.rl.loop.experience import experience_logprobs, shaped_rewards
from posttrain.rl.loop.packing import padded_layout
from posttrain.rl.loop.tokens import collate, forward_responses
from posttrain.rl.loop.update import MeanStats, accumulated_step
from posttrain.rl.scored import joined

if TYPE_CHECKING:
    from posttrain.rl.scored import ScoredBatch


@dataclass
class PairBatch:
    """A step's completions and the pairs built from them (rows of ``exp``)."""

    exp: ExperienceBatch          # response_mask: generated tokens of paired rows only; advantages: net pairs won
    chosen: torch.Tensor          # (N,) long rows of exp
    rejected: torch.Tensor        # (N,) long rows of exp
    sequence_logps_ref: torch.Tensor  # (B,) summed reference log-probs per completion
    lengths: torch.Tensor         # (B,) generated tokens per completion


def pair_advantages(chosen: torch.Tensor, rejected: torch.Tensor, batch: int) -> torch.Tensor:
    """(B,) pairs each completion won minus pairs it lost: what the rollout log and a curriculum read
    as its advantage (+1 chosen / -1 rejected under best_worst, 0 unpaired).

    >>> pair_advantages(torch.tensor([0, 0, 2]), torch.tensor([1, 2, 1]), 4).tolist()
    [2.0, -2.0, 0.0, 0.0]
    """
    won = torch.bincount(chosen, minlength=batch).double()
    lost = torch.bincount(rejected, minlength=batch).double()
    return won - lost


class PairwiseJudge:
    """A user's pairwise judge, ``judge(first, second, **columns) -> list[float]``: for each pair,
    the probability that the ``first`` answer is better than the ``second`` (0.5: no preference).
    ``first``/``second`` are lists of answer strings; every data column (``prompt`` included)
    arrives by name, aligned with the pairs, as reward functions get them; a judge that names its
    parameters gets only those. Like a batch reward function it runs inline, once per step with
    all the step's pairs; an exception or a value outside [0, 1] stops the stage (VerifierError
    naming the judge and an example pair)."""

    def __init__(self, ref: str, options: dict[str, Any]):
        import functools
        import inspect

        from posttrain.common.plugins import load_object

        fn, _ = load_object(ref, "judge", ConfigError)
        if not callable(fn):
            raise ConfigError(f"judge {ref!r} is {type(fn).__name__}, expected a function judge(first, second, **columns)")
        self.ref, self.fn = ref, functools.partial(fn, **options)
        parameters = inspect.signature(fn).parameters.values()
        self.takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
        self.names = {p.name for p in parameters}

    def scores(self, completions: list[str], rows: list[dict], group_size: int) -> torch.Tensor:
        """(B,) win rates of the completions within their groups (posttrain.rl.algos.win_rates)."""
        pairs = round_robin(group_size)
        first, second, columns = [], [], {key: [] for key in rows[0]}
        for start in range(0, len(completions), group_size):
            for i, j in pairs:
                first.append(completions[start + i])
                second.append(completions[start + j])
                for key, values in columns.items():
                    values.append(rows[start + i][key])
        if not self.takes_all:
            columns = {k: v for k, v in columns.items() if k in self.names}
        example = f"first {first[0]!r}, second {second[0]!r}" if first else "no pairs"
        try:
            out = list(self.fn(first=first, second=second, **columns))
        except Exception as err:
            raise VerifierError(f"judge {self.ref!r} raised {type(err).__name__}: {err} (example pair: {example})") from err
        values = torch.tensor([float(x) for x in out], dtype=torch.float64) if out else torch.zeros(0, dtype=torch.float64)
        bad = ~((values >= 0) & (values <= 1))
        if len(out) != len(first) or bool(bad.any()):
            raise VerifierError(f"judge {self.ref!r} returned {len(out)} values, expected {len(first)} probabilities "
                                f"in [0, 1], one per pair (P(first is better)); got e.g. {out[:3]!r} for {example}")
        return win_rates(values.view(-1, len(pairs)), group_size)


def build_pair_experience(session, scored: ScoredBatch, timer, step: int = 0, judge: PairwiseJudge | None = None):
    """-> (PairBatch, ExperienceBatch, RolloutTensors, stats): the pairs of this process's groups
    (ranked by the rewards, or by ``judge``'s win rates) and the reference log-probs of its
    completions."""
    config, acc = session.config, session.accelerator
    tensors = collate(scored.rollout, session.tokenizer.pad_token_id).to(acc.device)
    with timer("logprobs"):
        _, _, ref_logprobs = experience_logprobs(session, tensors, policy=False)
    scored = joined(scored, timer)
    rewards = shaped_rewards(config, scored, tensors)
    ranking = rewards if judge is None else judge.scores(scored.rollout.completions, scored.rows, scored.group_size)
    chosen, rejected, stats = preference_pairs(ranking, scored.group_size, config.pairing, config.pair_margin)
    paired = torch.zeros(len(rewards), dtype=torch.bool)
    paired[chosen] = True
    paired[rejected] = True
    mask = tensors.response_mask * paired[:, None].to(tensors.response_mask)
    advantages = pair_advantages(chosen, rejected, len(rewards)).to(mask)[:, None] * tensors.response_mask
    exp = ExperienceBatch(input_ids=tensors.input_ids, attention_mask=tensors.attention_mask,
                          position_ids=tensors.position_ids, response_mask=mask, old_logprobs=None,
                          sampler_logprobs=tensors.sampler_logprobs, advantages=advantages,
                          prompt_width=tensors.prompt_width, ref_logprobs=ref_logprobs)
    batch = PairBatch(exp=exp, chosen=chosen.to(acc.device), rejected=rejected.to(acc.device),
                      sequence_logps_ref=(ref_logprobs * tensors.response_mask).sum(1),
                      lengths=tensors.response_mask.sum(1))
    stats = {f"pairs/{k}": v for k, v in stats.items()}
    stats["reward/shaped"] = rewards.mean()
    return batch, exp, tensors, stats


def check_ties(session, batch: PairBatch, scored: ScoredBatch, tied_steps: int) -> int:
    """Count consecutive steps without a pair on any process; raise after ``tie_patience`` of them,
    naming the judge and an example group -> the updated count."""
    config = session.config
    pairs = float(session.procs.sum(float(len(batch.chosen))))
    tied_steps = tied_steps + 1 if pairs == 0 else 0
    if tied_steps >= config.tie_patience:
        rewards = [round(float(r), 4) for r in scored.rewards[:scored.group_size]]
        prompt = scored.rows[0].get("prompt")
        judge = f"judge {config.judge!r}" if config.judge else "rewards (" + ", ".join(c.channel_name for c in config.rewards) + ")"
        raise VerifierError(
            f"{judge}: the judge ranked every group of the last {tied_steps} steps as a tie (no two "
            f"completions of a prompt differ by more than pair_margin {config.pair_margin}), so online DPO has no pair "
            f"to learn from; example group rewards {rewards} for prompt {prompt!r}. Use a judge "
            "that separates completions, a larger group_size or temperature, or a smaller pair_margin")
    return tied_steps


def _pair_micro_loss(session, batch: PairBatch, index: torch.Tensor, global_pairs: torch.Tensor,
                     global_chosen_tokens: torch.Tensor):
    """The loss of the pairs ``index`` (their share of the minibatch mean, plus sft_weight times
    their share of the chosen tokens' NLL) -> (loss, per-pair stats, shares of the loss terms);
    with no pair here, a zero-weighted forward of one row keeps the processes' collectives in step."""
    config = session.config
    filler = len(index) == 0
    rows = batch.chosen[:1] if filler else torch.cat([batch.chosen[index], batch.rejected[index]])
    if filler and len(rows) == 0:
        rows = torch.zeros(1, dtype=torch.long, device=batch.chosen.device)
    mb = batch.exp.select(rows)
    layout = padded_layout(mb.input_ids, mb.attention_mask, mb.position_ids, mb.prompt_width)
    logprobs, _, _ = forward_responses(session.model, layout, config.temperature)
    sequence = (logprobs * mb.response_mask).sum(1)                      # (2n,) policy log-prob sums
    if filler:  # its shares are 0: every process logs the same keys, so their average stays the global value
        shares = {"loss/pairs": 0.0, **({"loss/nll": 0.0} if config.sft_weight > 0 else {})}
        return sequence.sum() * 0.0, {}, shares
    n = len(index)
    ref, lengths = batch.sequence_logps_ref[rows], batch.lengths[rows]
    losses, stats = dpo_pair_loss(sequence[:n], sequence[n:], ref[:n], ref[n:], beta=config.beta,
                                  loss_type=config.loss_type, label_smoothing=config.label_smoothing,
                                  chosen_lengths=lengths[:n], rejected_lengths=lengths[n:])
    stats = {**stats, "logp_chosen": sequence[:n].detach().mean(), "logp_rejected": sequence[n:].detach().mean()}
    loss = losses.sum() / global_pairs
    totals = {"loss/pairs": float(loss.detach())}  # this part's share of the minibatch's mean
    if config.sft_weight > 0:
        nll = chosen_nll(sequence[:n], global_chosen_tokens)
        loss = loss + config.sft_weight * nll
        totals["loss/nll"] = float(nll.detach())
    return loss, stats, totals


def pair_minibatch_step(session, batch: PairBatch, index: torch.Tensor) -> dict[str, float] | None:
    """One optimizer step over the pairs ``index`` (this process's share of a minibatch), or None
    when the minibatch has no pair on any process."""
    global_pairs = session.procs.sum(float(len(index)))
    if float(global_pairs) == 0.0:
        return None
    global_chosen_tokens = session.procs.sum(batch.lengths[batch.chosen[index]].sum())
    parts = torch.tensor_split(index, session.config.grad_accum)  # the same count on every process
    stats, totals = MeanStats(), defaultdict(float)

    def one(i: int) -> torch.Tensor:
        loss, micro_stats, shares = _pair_micro_loss(session, batch, parts[i], global_pairs, global_chosen_tokens)
        stats.add(micro_stats, weight=float(len(parts[i])))
        totals["loss"] += float(loss.detach())
        for key, value in shares.items():
            totals[key] += value
        return loss

    stats.add(accumulated_step(session, len(parts), one))
    # each process holds its shares of the global means; metrics are averaged over processes
    return {**stats.means(), **{k: v * session.procs.size for k, v in totals.items()}}


def refresh_reference(session) -> None:
    """The reference becomes a copy of the policy's current weights (iterative DPO)."""
    source = session.unwrapped.policy.state_dict()
    session.ref_model.policy.load_state_dict(source)


def dpo_update(session, batch: PairBatch, step: int) -> dict[str, float]:
    """``ppo_epochs`` passes over the step's pairs in shuffled minibatches -> mean stats; then the
    reference refresh when ``step`` ends an iteration of ``ref_update_steps``."""
    config = session.config
    generator = torch.Generator().manual_seed(derive_seed(config.seed, "minibatch_order", step))
    stats, steps = MeanStats(), 0
    for _ in range(config.ppo_epochs):
        order = torch.randperm(len(batch.chosen), generator=generator).to(batch.chosen.device)
        for index in torch.tensor_split(order, session.plan.minibatches):
            out = pair_minibatch_step(session, batch, index)
            if out is not None:
                stats.add(out)
                steps += 1
    out = stats.means()
    out["optimizer_steps"] = steps
    out["optimizer_steps_skipped"] = config.ppo_epochs * session.plan.minibatches - steps
    if config.ref_update_steps and step % config.ref_update_steps == 0:
        refresh_reference(session)
        out["reference_refreshed"] = 1.0
    return out



class PreferenceLearner:
    """The online_dpo stage's phases for the loop (posttrain.rl.loop.trainer.Learner), with the
    stage's pairwise judge if it has one; counts consecutive steps without a pair (:func:`check_ties`)."""

    REFERENCE_FILE = "reference.pt"

    def __init__(self, config) -> None:
        self.tied_steps = 0
        self.judge = None if config.judge is None else PairwiseJudge(config.judge, config.judge_options)

    def experience(self, session, scored, timer, step: int):
        batch, exp, tensors, stats = build_pair_experience(session, scored, timer, step, self.judge)
        self.tied_steps = check_ties(session, batch, joined(scored), self.tied_steps)
        return batch, exp, tensors, stats

    def update(self, session, batch: PairBatch, step: int) -> dict[str, float]:
        return dpo_update(session, batch, step)

    def save(self, session, folder) -> None:
        """A refreshed reference is no longer the input model: it goes into the checkpoint (every
        process holds the same full copy; the main process writes it)."""
        if session.config.ref_update_steps and session.procs.is_main:
            torch.save(session.ref_model.policy.state_dict(), folder / self.REFERENCE_FILE)

    def load(self, session, folder) -> None:
        if session.config.ref_update_steps:
            path = folder / self.REFERENCE_FILE
            if not path.exists():
                raise ConfigError(f"checkpoint {folder} has no {self.REFERENCE_FILE}: it was written without "
                                  "ref_update_steps, so the reference it trained against is unknown; rerun the stage "
                                  "from scratch (posttrain run --from STAGE) or set ref_update_steps as it was")
            session.ref_model.policy.load_state_dict(torch.load(path, map_location="cpu"))
