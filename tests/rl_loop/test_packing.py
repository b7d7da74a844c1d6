"""Packed micro-batches: the padded update's log-probs, values, losses and gradients, less padding."""
import pytest
import torch
from test_update import experience, make_config, one_step

from posttrain.errors import ConfigError
from posttrain.rl.loop.dist import Processes
from posttrain.rl.loop.models import ActorCritic, load_critic, load_policy
from posttrain.rl.loop.packing import pack_rows, packed_layout, padded_layout, split_batch, split_layout
from posttrain.rl.loop.tokens import forward_in_chunks, forward_responses


def test_packed_layout_places_each_sequence_at_positions_from_zero():
    # rows: prompt [5] + response [9]; prompt [7, 8] + response [10, 11, 12]  (P = 2, T = 3)
    ids = torch.tensor([[0, 5, 9, 0, 0], [7, 8, 10, 11, 12]])
    mask = torch.tensor([[0, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    layout = packed_layout(ids, mask, prompt_width=2, packing=[[1, 0]], width=8)
    assert layout.input_ids.tolist() == [[7, 8, 10, 11, 12, 5, 9, 0]]
    assert layout.position_ids.tolist() == [[0, 1, 2, 3, 4, 0, 1, 0]]
    assert layout.attention_mask is None
    assert layout.logit_index.tolist() == [1, 2, 3, 5]  # outputs predicting 10, 11, 12, then 9
    assert layout.target_ids.tolist() == [10, 11, 12, 9]
    assert layout.response_index.tolist() == [3, 4, 5, 0]  # (row 1, t 0..2), (row 0, t 0) in the (2, 3) layout
    assert layout.scatter(torch.tensor([1.0, 2.0, 3.0, 4.0])).tolist() == [[4.0, 0, 0], [1.0, 2.0, 3.0]]


def test_split_batch_agrees_on_a_count_and_fills_with_lossless_fillers():
    mask = torch.ones(3, 4, dtype=torch.long)  # three sequences of 4 tokens, P = 2
    splits = split_batch(mask, 2, rows_per_micro=1, max_tokens=8)
    assert [s.rows.tolist() for s in splits] == [[0, 1], [2]] and all(s.real for s in splits)
    agreed = split_batch(mask, 2, rows_per_micro=1, max_tokens=8, agree=lambda n: n + 2)
    assert [s.real for s in agreed] == [True, True, True, False]  # 3 rows dealt over 4 parts
    assert pack_rows([4, 4, 4], 4) == [[0], [1], [2]]


def _batch(model):
    exp = experience(model)
    return exp.input_ids, exp.attention_mask, exp.position_ids, exp.prompt_width


@pytest.mark.parametrize("width", [None, 24])  # the batch's longest sequence, or a wide row
def test_packed_forward_equals_padded(tiny_model_dir, width):
    policy = load_policy(str(tiny_model_dir))
    model = ActorCritic(policy, load_critic(str(tiny_model_dir), 0)).eval()
    ids, mask, positions, prompt_width = _batch(policy)
    lengths = mask.sum(1).tolist()
    width = width or max(lengths)
    packed = packed_layout(ids, mask, prompt_width, pack_rows(lengths, width), width)
    assert packed.input_ids.shape[0] < ids.shape[0]  # fewer rows than the padded batch
    with torch.no_grad():
        padded = forward_responses(model, padded_layout(ids, mask, positions, prompt_width), 0.9, with_entropy=True)
        ours = forward_responses(model, packed, 0.9, with_entropy=True)
    for got, want in zip(ours, padded):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


class _Agreeing(Processes):
    """One process that is told another runs ``extra`` more micro-batches (so it adds fillers)."""

    def __init__(self, extra):
        super().__init__()
        object.__setattr__(self, "extra", extra)

    def max(self, value):
        return value + self.extra


@pytest.mark.parametrize("aggregation", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum",
                                         "seq-mean-token-sum-norm"])
@pytest.mark.parametrize("budget", [6, 12, 1000])  # one row per micro-batch, two, all in one
def test_packed_update_equals_the_padded_update(tiny_model_dir, aggregation, budget):
    """The padded one-pass SGD step == the packed step over 1..6 accumulated micro-batches."""
    exp = experience(load_policy(str(tiny_model_dir)))
    padded, stats_padded = one_step(tiny_model_dir, make_config(loss_aggregation=aggregation), exp)
    packed, stats_packed = one_step(tiny_model_dir, make_config(loss_aggregation=aggregation,
                                                                max_tokens_per_microbatch=budget), exp)
    assert max(float(v.abs().max()) for v in padded.values()) > 1e-4  # the step did something
    for name in padded:
        torch.testing.assert_close(packed[name], padded[name], atol=1e-6, rtol=1e-5, msg=name)
    for key in ("loss", "loss/policy", "grad_norm", "entropy", "clip_frac"):
        assert stats_packed[key] == pytest.approx(stats_padded[key], rel=1e-4, abs=1e-6), key


def test_fillers_change_nothing(tiny_model_dir):
    exp = experience(load_policy(str(tiny_model_dir)))
    config = make_config(max_tokens_per_microbatch=12)
    plain, stats_plain = one_step(tiny_model_dir, config, exp)
    filled, stats_filled = one_step(tiny_model_dir, config, exp, procs=_Agreeing(extra=5))
    for name in plain:
        torch.testing.assert_close(filled[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)
    assert stats_filled["loss"] == pytest.approx(stats_plain["loss"], rel=1e-5)


def test_experience_forward_over_packed_splits_equals_padded(tiny_model_dir):
    policy = load_policy(str(tiny_model_dir))
    model = ActorCritic(policy).eval()
    exp = experience(policy)
    padded = forward_in_chunks(model, exp, split_batch(exp.attention_mask, exp.prompt_width, rows_per_micro=3,
                                                       max_tokens=None), 1.0)[0]
    splits = split_batch(exp.attention_mask, exp.prompt_width, rows_per_micro=3, max_tokens=12, agree=lambda n: 12)
    assert len(splits) == 12 and not splits[-1].real  # more parts than packed rows: fillers
    packed = forward_in_chunks(model, exp, splits, 1.0)[0]
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=1e-5)
    layout = split_layout(splits[0], exp.input_ids[splits[0].rows], exp.attention_mask[splits[0].rows],
                          exp.position_ids[splits[0].rows], exp.prompt_width)
    assert layout.tokens <= 12


def test_budget_and_grad_accum_are_exclusive():
    with pytest.raises((ConfigError, ValueError), match="max_tokens_per_microbatch splits each minibatch by tokens"):
        make_config(max_tokens_per_microbatch=64, grad_accum=2)
