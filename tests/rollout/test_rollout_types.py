"""The rollout contract's pieces: strict sampling config, prompt rendering, text, invariants."""
from __future__ import annotations

import pydantic
import pytest

from posttrain.errors import ConfigError
from posttrain.rl.rollout import (
    RolloutBatch,
    SamplingConfig,
    check_batch,
    decode_completion,
    render_prompts,
)


def test_sampling_config_defaults_and_strictness():
    config = SamplingConfig()
    assert (config.n, config.temperature, config.top_p, config.top_k, config.max_tokens,
            config.stop, config.seed) == (8, 1.0, 1.0, -1, 64, [], None)
    with pytest.raises(pydantic.ValidationError, match="max_new_tokens"):
        SamplingConfig(max_new_tokens=3)
    with pytest.raises(pydantic.ValidationError, match="greater than or equal to 1"):
        SamplingConfig(n=0)
    with pytest.raises(pydantic.ValidationError):
        SamplingConfig(temperature=-0.5)
    for field in SamplingConfig.model_fields.values():
        assert field.description


def test_render_prompts_strings_as_is_and_chats_templated(tokenizer):
    chat = [{"role": "user", "content": "hi"}]
    ids = render_prompts(tokenizer, ["hi", chat])
    assert ids[0] == tokenizer("hi", add_special_tokens=False)["input_ids"]
    assert ids[1] == tokenizer.apply_chat_template(chat, tokenize=True, add_generation_prompt=True,
                                                   return_dict=False)
    assert tokenizer.decode(ids[1]).endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("prompts, message", [
    ([], "non-empty list"),
    ("just a string", "non-empty list"),
    (["ok", {"role": "user"}], "prompt 1 is a dict"),
    ([""], "prompt 0 is empty"),
])
def test_render_prompts_rejects_bad_input(tokenizer, prompts, message):
    with pytest.raises(ConfigError, match=message):
        render_prompts(tokenizer, prompts)


def test_decode_completion_skips_specials_and_cuts_at_first_stop(tokenizer):
    ids = tokenizer("answer: 42. done", add_special_tokens=False)["input_ids"]
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert decode_completion(tokenizer, ids + [im_end], []) == "answer: 42. done"
    assert decode_completion(tokenizer, ids, [" done", "."]) == "answer: 42"
    assert decode_completion(tokenizer, ids, ["zzz"]) == "answer: 42. done"


def _batch(**changes) -> RolloutBatch:
    fields = {"prompt_ids": [[1], [1], [2], [2]], "completion_ids": [[5], [6, 2], [7], [8]],
                  "sampler_logprobs": [[-0.1], [-0.2, -0.3], [-0.4], [-0.5]],
                  "finish_reasons": ["length", "stop", "length", "length"],
                  "completions": ["a", "b", "c", "d"], "prompt_index": [0, 0, 1, 1]}
    fields.update(changes)
    return RolloutBatch(**fields, generation_seconds=0.1)


def test_check_batch_accepts_grouped_rows_and_names_violations():
    assert len(check_batch(_batch(), num_prompts=2, n=2)) == 4
    with pytest.raises(AssertionError, match="prompt_index has 3 rows"):
        check_batch(_batch(prompt_index=[0, 0, 1]), 2, 2)
    with pytest.raises(AssertionError, match="not grouped"):
        check_batch(_batch(prompt_index=[0, 1, 0, 1]), 2, 2)
    with pytest.raises(AssertionError, match="row 1: 2 tokens but 1 logprobs"):
        check_batch(_batch(sampler_logprobs=[[-0.1], [-0.2], [-0.4], [-0.5]]), 2, 2)
    with pytest.raises(AssertionError, match="abort"):
        check_batch(_batch(finish_reasons=["abort", "stop", "stop", "stop"]), 2, 2)
