"""Where a forward reads the generated tokens: the padded (B, P+T) layout, or sequences packed.

Every forward of the loop (update, old and reference log-probs, the sync probe) computes the
log-probs of the GENERATED tokens only: a :class:`ForwardLayout` says where each of those N tokens
and the output that predicts it sit in the forward's (R, W) inputs, and where its value goes in
the (b, T) response tensors the losses read. Outputs at padding are never computed (no lm_head
row, no softmax) and read as 0.

Packed layout (``max_tokens_per_microbatch``): the real tokens of each completion (prompt +
response, no padding) are concatenated into rows of width W (the longest sequence of the batch),
first fit decreasing, each sequence with its own position ids 0..L-1 and no attention mask.
transformers then tells the sequences apart by the restarting position ids: a block-diagonal
causal mask under sdpa/eager, flash-attention's variable-length kernel on GPU. A row's tail is
padded with a run of positions of its own, which no real token attends to. The (b, T) outputs are
the padded layout's (tests/rl_loop/test_packing.py), so every loss and aggregation mode is
unchanged; only the compute spent on padding goes.

Micro-batches by token budget: the packed rows of a minibatch are split into micro-batches of at
most ``max_tokens_per_microbatch`` tokens (R x W, padding included), so a micro-batch's memory is
bounded by tokens, not rows; the count is the largest over processes (:func:`split_rows`), so every
process runs as many forward/backward passes (collective under ZeRO-3).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ForwardLayout:
    """The inputs of one forward and where its N generated tokens sit (flat indices)."""

    input_ids: torch.Tensor              # (R, W) long
    position_ids: torch.Tensor           # (R, W) long
    attention_mask: torch.Tensor | None  # (R, W) long; None when packed (position ids delimit sequences)
    logit_index: torch.Tensor            # (N,) long; index into R*W of the output that predicts each token
    target_ids: torch.Tensor             # (N,) long; the generated token ids
    response_index: torch.Tensor         # (N,) long; index into b*T of each token's response column
    response_shape: tuple[int, int]      # (b, T)

    @property
    def tokens(self) -> int:
        """Tokens the forward runs over, padding included (R x W)."""
        return self.input_ids.numel()

    def scatter(self, values: torch.Tensor) -> torch.Tensor:
        """(N,) per generated token -> (b, T) response tensor, 0 where nothing was generated.

        Differentiable: ``index_put`` on zeros keeps the gradient path to ``values``."""
        out = values.new_zeros(self.response_shape[0] * self.response_shape[1])
        return out.index_put((self.response_index,), values).view(self.response_shape)


def padded_layout(input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                  prompt_width: int) -> ForwardLayout:
    """The collate layout as it is: B rows of width P+T, responses from column P.

    Generated tokens are the ones ``attention_mask[:, P:]`` marks; token t of row i is predicted
    by the output at column P+t-1."""
    rows, cols = attention_mask[:, prompt_width:].bool().nonzero(as_tuple=True)  # row-major
    width = input_ids.shape[1]
    width_t = width - prompt_width
    return ForwardLayout(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask,
                         logit_index=rows * width + prompt_width + cols - 1,
                         target_ids=input_ids[rows, prompt_width + cols],
                         response_index=rows * width_t + cols, response_shape=(input_ids.shape[0], width_t))


def sequence_lengths(attention_mask: torch.Tensor, prompt_width: int) -> tuple[list[int], list[int]]:
    """Real prompt and response lengths per row of the collate layout."""
    prompts = attention_mask[:, :prompt_width].sum(dim=1).tolist()
    responses = attention_mask[:, prompt_width:].sum(dim=1).tolist()
    return [int(p) for p in prompts], [int(r) for r in responses]


def pack_rows(lengths: list[int], width: int) -> list[list[int]]:
    """Sequence indices per packed row: first fit decreasing into rows of ``width`` tokens.

    Longest first (ties by index, so the packing is deterministic); each sequence goes into the
    first row it fits in. A sequence longer than ``width`` is an error.

    >>> pack_rows([5, 2, 4, 3, 1], width=6)
    [[0, 4], [2, 1], [3]]
    """
    if lengths and max(lengths) > width:
        raise ValueError(f"a sequence of {max(lengths)} tokens does not fit a packed row of {width}")
    rows: list[list[int]] = []
    free: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for r, room in enumerate(free):
            if lengths[index] <= room:
                rows[r].append(index)
                free[r] -= lengths[index]
                break
        else:
            rows.append([index])
            free.append(width - lengths[index])
    return rows


def packed_layout(input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_width: int,
                  packing: list[list[int]], width: int, pad_token_id: int = 0) -> ForwardLayout:
    """Rows ``packing`` (sequence indices per row, from :func:`pack_rows`) of the collate layout's
    real tokens, each sequence at positions 0..L-1; outputs map to the (B, T) response layout."""
    prompt_lens, response_lens = sequence_lengths(attention_mask, prompt_width)
    width_t = input_ids.shape[1] - prompt_width
    ids = torch.full((len(packing), width), pad_token_id, dtype=torch.long)
    positions = torch.zeros((len(packing), width), dtype=torch.long)
    logit_index, response_index = [], []
    cpu_ids = input_ids.cpu()
    for r, members in enumerate(packing):
        start = 0
        for i in members:
            lp, lr = prompt_lens[i], response_lens[i]
            length = lp + lr
            ids[r, start:start + length] = cpu_ids[i, prompt_width - lp:prompt_width + lr]
            positions[r, start:start + length] = torch.arange(length)
            first = r * width + start + lp - 1  # the output that predicts response token 0
            logit_index.extend(range(first, first + lr))
            response_index.extend(range(i * width_t, i * width_t + lr))
            start += length
        positions[r, start:] = torch.arange(width - start)  # the tail: a "sequence" nothing reads
    device = input_ids.device
    logit = torch.tensor(logit_index, dtype=torch.long, device=device)
    ids = ids.to(device)
    return ForwardLayout(input_ids=ids, position_ids=positions.to(device), attention_mask=None,
                         logit_index=logit, target_ids=ids.view(-1)[logit + 1],
                         response_index=torch.tensor(response_index, dtype=torch.long, device=device),
                         response_shape=(input_ids.shape[0], width_t))


def split_rows(packing: list[list[int]], width: int, max_tokens: int, parts: int | None = None) -> list[list[list[int]]]:
    """Packed rows -> micro-batches of at most ``max_tokens`` (rows x width; at least one row
    each), or exactly ``parts`` micro-batches when given (the count agreed over processes), the
    rows dealt out in order so each part gets a near-equal number. A part may be empty when
    there are fewer rows than ``parts``.

    >>> split_rows([[0], [1], [2], [3], [4]], width=4, max_tokens=8)
    [[[0], [1]], [[2], [3]], [[4]]]
    >>> split_rows([[0], [1]], width=4, max_tokens=8, parts=3)
    [[[0]], [[1]], []]
    """
    per_part = max(1, max_tokens // width)
    count = parts if parts is not None else max(1, -(-len(packing) // per_part))
    base, extra = divmod(len(packing), count)
    out, start = [], 0
    for p in range(count):
        size = base + (1 if p < extra else 0)
        out.append(packing[start:start + size])
        start += size
    return out


@dataclass
class MicroSplit:
    """One micro-batch of a batch: its rows and, when packed, how they pack."""

    rows: torch.Tensor                  # (b,) long; rows of the batch (a filler: the batch's first row)
    packing: list[list[int]] | None     # per packed row, indices into ``rows``; None = padded layout
    width: int                          # packed row width W (unused when padded)
    real: bool = True                   # False: a filler that only keeps collectives in step (loss 0, no stats)


def split_batch(attention_mask: torch.Tensor, prompt_width: int, *, rows_per_micro: int,
                max_tokens: int | None, agree=int) -> list[MicroSplit]:
    """The micro-batches of a batch of the collate layout.

    Without ``max_tokens``: consecutive slices of ``rows_per_micro`` rows, padded. With it: the
    rows packed (:func:`pack_rows`, width = the batch's longest sequence) and split by
    :func:`split_rows` into as many micro-batches as ``agree(count)`` says (the largest count
    over processes: ``Processes.max``); a micro-batch left without rows is a filler."""
    batch = attention_mask.shape[0]
    if max_tokens is None:
        return [MicroSplit(rows=torch.arange(start, min(start + rows_per_micro, batch)), packing=None, width=0)
                for start in range(0, batch, rows_per_micro)]
    prompts, responses = sequence_lengths(attention_mask, prompt_width)
    lengths = [p + r for p, r in zip(prompts, responses)]
    width = max(lengths)
    rows = pack_rows(lengths, width)
    parts = split_rows(rows, width, max_tokens, parts=agree(len(split_rows(rows, width, max_tokens))))
    splits = []
    for part in parts:
        if not part:
            splits.append(MicroSplit(rows=torch.zeros(1, dtype=torch.long), packing=[[0]], width=width, real=False))
            continue
        members = sorted(i for row in part for i in row)
        local = {i: j for j, i in enumerate(members)}
        splits.append(MicroSplit(rows=torch.tensor(members), packing=[[local[i] for i in row] for row in part],
                                 width=width))
    return splits


def split_layout(split: MicroSplit, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 position_ids: torch.Tensor, prompt_width: int) -> ForwardLayout:
    """The ForwardLayout of one micro-batch; ``input_ids`` etc. are already its rows."""
    if split.packing is None:
        return padded_layout(input_ids, attention_mask, position_ids, prompt_width)
    return packed_layout(input_ids, attention_mask, prompt_width, split.packing, split.width)
