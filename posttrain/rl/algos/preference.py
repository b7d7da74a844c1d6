"""Online preference optimisation: pairs from ranked samples, and the DPO-family loss on them.

Online / iterative DPO (Xiong et al. 2024, "Iterative Preference Learning from Human Feedback",
arXiv 2312.11456; Dong et al. 2024, "RLHF Workflow", arXiv 2405.07863, Sec. 3; Rosset et al. 2024,
DNO, arXiv 2404.03715, Alg. 2) samples several completions per prompt from the current policy,
ranks them with a judge (a reward model, a verifier, or a pairwise preference function) and takes
DPO steps on chosen/rejected pairs built from the ranking.

:func:`preference_pairs` builds the pairs from each group's scores:

* ``best_worst``: the best against the worst completion of each prompt (RLHF Workflow, Sec. 3.2:
  "we take the best and the worst responses as the chosen and rejected"), only if their scores
  differ by more than ``margin``;
* ``all``: every ordered pair (i, j) of a group with ``s_i - s_j > margin`` (DNO, Alg. 2 step 6,
  keeps the pairs whose win-rate gap passes a margin; ours compares scores directly).

With a pairwise judge (a function that says how likely one answer is better than another) the
scores are win rates, as DNO ranks its samples (Alg. 2, step 5): every pair of a group is judged
once, and :func:`win_rates` gives each answer its mean preference over the others.

Ties give no pair (TRL 1.16's OnlineDPOTrainer trains on a tie, with the first sample as chosen:
a pair without a preference pushes the two apart at random; we drop it). NaN ("unscorable") is
never paired. Layout as in :mod:`.filtering`: ``(B,)`` prompt-major, ``group_size`` per prompt.
"Best" is the first maximal completion and "worst" the last minimal one.

:func:`dpo_pair_loss` is the per-pair loss with the implicit reward ``h = beta * Delta``,
``Delta = [log pi(y_w) - log ref(y_w)] - [log pi(y_l) - log ref(y_l)]`` (sums over each
completion's tokens), exactly the loss types of the offline `dpo` stage (TRL 1.16 DPOTrainer's
formulas; a parity test compares them on TRL's own tensors):

=========  ============================================================  ==========================
sigmoid    -(1-eps) log sigmoid(h) - eps log sigmoid(-h)  (eps = 0: DPO)  arXiv 2305.18290 eq. 7; cDPO
robust     [-(1-eps) log sigmoid(h) + eps log sigmoid(-h)] / (1 - 2 eps)  arXiv 2403.00409 eq. 9
hinge      max(0, 1 - h)                                                  SLiC-HF, arXiv 2305.10425
ipo        (Delta_w/|y_w| - Delta_l/|y_l| - 1/(2 beta))^2                 IPO, arXiv 2310.12036 eq. 17
=========  ============================================================  ==========================

(IPO divides each log-ratio by its completion's length, as TRL does after the IPO authors.)

:func:`chosen_nll` is the negative log-likelihood term that RPO adds to the pair loss (Pang et al.
2024, "Iterative Reasoning Preference Optimization", arXiv 2404.19733, eq. 2: DPO alone lowered
the chosen answers' likelihood on GSM8K and failed to improve reasoning; the NLL term fixed it), as
the offline `dpo` stage's `sft_weight` (TRL's ``sft`` loss term): a token mean over the chosen
completions.

>>> scores = torch.tensor([0.2, 1.0, 1.0, 0.0,   0.5, 0.5, 0.5, 0.5])   # 2 prompts x 4 samples
>>> chosen, rejected, _ = preference_pairs(scores, group_size=4)
>>> chosen.tolist(), rejected.tolist()                                  # the second group ties
([1], [3])
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

PAIRINGS = ("best_worst", "all")
DPO_LOSS_TYPES = ("sigmoid", "robust", "hinge", "ipo")


def _grouped(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    if scores.dim() != 1 or group_size < 2 or scores.numel() % group_size:
        raise ValueError(f"scores must be (B,) with B a multiple of group_size >= 2; got {tuple(scores.shape)} "
                         f"and group_size {group_size}")
    return scores.detach().double().cpu().view(-1, group_size)


def _best_worst(groups: torch.Tensor, margin: float) -> tuple[torch.Tensor, torch.Tensor]:
    valid = ~torch.isnan(groups)                                        # (P, G)
    high = torch.where(valid, groups, -torch.inf)
    low = torch.where(valid, groups, torch.inf)
    best = high.argmax(dim=1)                                           # first maximal (argmax returns the first)
    width = groups.shape[1]
    worst = width - 1 - low.flip(1).argmin(dim=1)                       # last minimal
    rows = torch.arange(groups.shape[0])
    gap = high[rows, best] - low[rows, worst]                           # -inf/nan without two scorable samples
    keep = valid.sum(dim=1) >= 2
    keep &= gap > margin
    offset = rows * width
    return (offset + best)[keep], (offset + worst)[keep]


def _all_pairs(groups: torch.Tensor, margin: float) -> tuple[torch.Tensor, torch.Tensor]:
    gaps = groups[:, :, None] - groups[:, None, :]                      # (P, G, G): s_i - s_j
    prompt, i, j = torch.nonzero(gaps > margin, as_tuple=True)          # NaN compares False: never paired
    width = groups.shape[1]
    return prompt * width + i, prompt * width + j


def preference_pairs(scores: torch.Tensor, group_size: int, pairing: str = "best_worst",
                     margin: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Chosen/rejected pairs within each prompt's group -> ``(chosen (N,), rejected (N,), stats)``.

    Indices are rows of ``scores`` (long, CPU), group-major; within a group, ``all`` orders pairs
    by chosen then rejected row. A pair needs ``s_chosen - s_rejected > margin`` (so ``margin`` 0
    drops ties). Stats: ``pairs`` (N), ``groups_with_pair`` (fraction of prompts that gave at
    least one pair), ``score_margin`` (mean score gap over the pairs; 0 without pairs).

    >>> s = torch.tensor([1.0, 0.0, 0.5,   0.0, 0.0, 0.1])
    >>> c, r, stats = preference_pairs(s, 3, "all")
    >>> list(zip(c.tolist(), r.tolist())), stats["groups_with_pair"]
    ([(0, 1), (0, 2), (2, 1), (5, 3), (5, 4)], 1.0)
    >>> preference_pairs(s, 3, "all", margin=0.5)[0].tolist()      # only gaps above 0.5 remain
    [0]
    """
    if pairing not in PAIRINGS:
        raise ValueError(f"pairing {pairing!r}: expected one of {', '.join(PAIRINGS)}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0 (a pair's chosen must score higher), got {margin}")
    groups = _grouped(scores, group_size)
    chosen, rejected = (_best_worst if pairing == "best_worst" else _all_pairs)(groups, margin)
    flat = groups.reshape(-1)
    gaps = flat[chosen] - flat[rejected]
    stats = {"pairs": float(len(chosen)),
             "groups_with_pair": float(torch.unique(chosen // group_size).numel()) / groups.shape[0],
             "score_margin": float(gaps.mean()) if len(gaps) else 0.0}
    return chosen.long(), rejected.long(), stats


def round_robin(group_size: int) -> list[tuple[int, int]]:
    """The unordered pairs (i, j), i < j, of a group: what a pairwise judge is asked about.

    >>> round_robin(3)
    [(0, 1), (0, 2), (1, 2)]
    """
    return [(i, j) for i in range(group_size) for j in range(i + 1, group_size)]


def win_rates(preferences: torch.Tensor, group_size: int) -> torch.Tensor:
    """(P * G,) each answer's mean probability of beating the other answers of its group.

    ``preferences`` (P, G*(G-1)/2): for each group, the judge's P(first beats second) for the
    pairs of :func:`round_robin` in that order; P(j beats i) is taken as 1 - P(i beats j).

    >>> win_rates(torch.tensor([[1.0, 0.5, 0.25]]), 3).tolist()   # pairs (0,1), (0,2), (1,2)
    [0.75, 0.125, 0.625]
    """
    pairs = round_robin(group_size)
    if preferences.dim() != 2 or preferences.shape[1] != len(pairs):
        raise ValueError(f"preferences must be (groups, {len(pairs)}) for group_size {group_size}, "
                         f"got {tuple(preferences.shape)}")
    beats = torch.zeros(preferences.shape[0], group_size, group_size, dtype=torch.float64)
    first = torch.tensor([i for i, _ in pairs])
    second = torch.tensor([j for _, j in pairs])
    beats[:, first, second] = preferences.double()
    beats[:, second, first] = 1.0 - preferences.double()
    return (beats.sum(dim=2) / (group_size - 1)).reshape(-1)


def dpo_pair_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
                  ref_rejected_logps: torch.Tensor, *, beta: float, loss_type: str = "sigmoid",
                  label_smoothing: float = 0.0, chosen_lengths: torch.Tensor | None = None,
                  rejected_lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-pair DPO-family loss (N,) and detached stats (see the module table for the formulas).

    All inputs (N,): summed token log-probs of each pair's chosen and rejected completion under
    the policy (differentiable) and the reference. ``chosen_lengths`` / ``rejected_lengths`` (N,)
    token counts, needed by ``ipo`` only. Stats, means over the pairs: ``reward_chosen`` /
    ``reward_rejected`` (beta times each log-ratio, the implicit rewards), ``reward_margin``
    (mean h), ``reward_accuracy`` (fraction with h > 0).

    >>> one = torch.tensor([-2.0]); zero = torch.tensor([-3.0])
    >>> loss, _ = dpo_pair_loss(one, zero, zero, zero, beta=0.5)       # h = 0.5 * (1 - 0) = 0.5
    >>> round(float(loss), 6) == round(-float(F.logsigmoid(torch.tensor(0.5))), 6)
    True
    """
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"loss_type {loss_type!r}: expected one of {', '.join(DPO_LOSS_TYPES)}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    chosen_ratio = chosen_logps - ref_chosen_logps                      # (N,)
    rejected_ratio = rejected_logps - ref_rejected_logps                # (N,)
    h = beta * (chosen_ratio - rejected_ratio)                          # (N,) implicit reward margin
    eps = label_smoothing
    if loss_type == "sigmoid":
        losses = -(1.0 - eps) * F.logsigmoid(h) - eps * F.logsigmoid(-h)
    elif loss_type == "robust":
        losses = (-(1.0 - eps) * F.logsigmoid(h) + eps * F.logsigmoid(-h)) / (1.0 - 2.0 * eps)
    elif loss_type == "hinge":
        losses = torch.relu(1.0 - h)
    else:
        if chosen_lengths is None or rejected_lengths is None:
            raise ValueError("loss_type 'ipo' needs chosen_lengths and rejected_lengths (tokens per completion)")
        delta = chosen_ratio / chosen_lengths.clamp(min=1) - rejected_ratio / rejected_lengths.clamp(min=1)
        losses = (delta - 1.0 / (2.0 * beta)) ** 2
    with torch.no_grad():
        stats = {"reward_chosen": (beta * chosen_ratio).mean(), "reward_rejected": (beta * rejected_ratio).mean(),
                 "reward_margin": h.mean(), "reward_accuracy": (h > 0).float().mean()}
    return losses, stats


def chosen_nll(chosen_logps: torch.Tensor, chosen_tokens: torch.Tensor | float) -> torch.Tensor:
    """RPO's NLL term: minus the chosen completions' summed token log-probs over ``chosen_tokens``,
    their total token count (over every process and micro-batch of the minibatch, so the pieces
    of a split minibatch sum to its token mean; TRL 1.16's ``sft`` term on one batch).

    ``chosen_logps`` (N,) summed log-probs of each pair's chosen completion.

    >>> float(chosen_nll(torch.tensor([-3.0, -1.0]), 8))   # (3 + 1) / 8 tokens
    0.5
    """
    return -chosen_logps.sum() / chosen_tokens
