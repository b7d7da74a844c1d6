"""The locally trained tokenizer: reload stability, digits, special tokens, chat template."""
from __future__ import annotations

import unicodedata

import pytest
from repo_scripts import load_script
from transformers import AutoTokenizer
from transformers.models.qwen2 import tokenization_qwen2

from posttrain.errors import ConfigError
from posttrain.models import build_tokenizer, describe, load_tokenizer
from posttrain.models import tokenizer as tokmod

MIXED_TEXTS = [
    "What is 12 plus 7?",
    "The answer is 19.",
    "  leading spaces,\ttabs\n\nand blank lines\r\n",
    "2024-11-21 12:30:05 -> 1,234,567.89 (100%)",
    '{"prompt": "What is 3 minus 9?", "answer": "-6", "ok": true, "x": null}',
    "def add(x):\n    return x + 1  # comment\n",
    "café naïve Ünïcödé, 日本語, emoji 🙂",
    "e\u0301 composes to \u00e9 under NFC",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n42<|im_end|>\n<|endoftext|>",
    "unseen words: xylophone quixotic zzzz",
]


def test_pretokenizer_regex_matches_transformers_qwen2():
    """AutoTokenizer rebuilds Qwen2's pipeline on reload; ours must be the same regex."""
    assert tokmod.QWEN2_PRETOKENIZE_REGEX == tokenization_qwen2.PRETOKENIZE_REGEX


def test_bundled_corpus_is_reproducible_from_its_script():
    module = load_script("scripts/make_tokenizer_corpus.py")
    assert module.ASSET == tokmod.CORPUS_PATH
    text = tokmod.CORPUS_PATH.read_text(encoding="utf-8")
    assert module.make_corpus() == text
    assert 50_000 < len(text.encode("utf-8")) < 400_000


def test_special_token_ids_and_roles():
    tok = build_tokenizer()
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [0, 1, 2]
    assert (tok.eos_token, tok.eos_token_id) == ("<|im_end|>", 2)
    assert (tok.pad_token, tok.pad_token_id) == ("<|endoftext|>", 0)
    assert tok.bos_token is None
    assert len(tok) == tokmod.DEFAULT_VOCAB_SIZE
    # Special tokens are atomic in text and are not preceded by an added BOS.
    assert tok("<|im_start|>user<|im_end|>")["input_ids"] == [1, tok.convert_tokens_to_ids("user"), 2]


def test_every_digit_is_its_own_token():
    tok = build_tokenizer()
    digit_tokens = {d: tok.convert_tokens_to_ids(d) for d in "0123456789"}
    assert len(set(digit_tokens.values())) == 10
    # No learnt token contains a digit together with anything else.
    for token in tok.get_vocab():
        text = tok.convert_tokens_to_string([token])
        if any(ch.isdigit() for ch in text):
            assert text in digit_tokens, token
    ids = tok("What is 12 plus 7? 19 and 2024")["input_ids"]
    pieces = tok.convert_ids_to_tokens(ids)
    assert [p for p in pieces if p.isdigit()] == list("127192024")


def test_common_words_are_single_tokens():
    """The merges learnt something: frequent corpus words are one token, with their space."""
    tok = build_tokenizer()
    assert tok.tokenize("What is the answer") == ["What", "Ġis", "Ġthe", "Ġanswer"]


@pytest.mark.parametrize("text", MIXED_TEXTS)
def test_encode_decode_round_trip(text):
    tok = build_tokenizer()
    ids = tok(text)["input_ids"]
    # Byte-level BPE is lossless up to the NFC normalisation applied before tokenising.
    assert tok.decode(ids) == unicodedata.normalize("NFC", text)


def test_ids_identical_after_save_and_reload(tiny_model, tmp_path):
    """AutoTokenizer picks Qwen2Tokenizer (qwen2) or TokenizersBackend (llama); ids must not move."""
    arch = describe(tiny_model)["arch"]
    fresh = build_tokenizer(arch)
    loaded = AutoTokenizer.from_pretrained(tiny_model)
    loaded.save_pretrained(tmp_path / "again")
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "again")
    chat = [{"role": "user", "content": "What is 12 plus 7?"}, {"role": "assistant", "content": "19"}]
    for text in MIXED_TEXTS:
        expected = fresh(text)["input_ids"]
        assert loaded(text)["input_ids"] == expected, text
        assert reloaded(text)["input_ids"] == expected, text
    expected_chat = fresh.apply_chat_template(chat, tokenize=True, return_dict=False)
    assert loaded.apply_chat_template(chat, tokenize=True, return_dict=False) == expected_chat
    assert (loaded.eos_token_id, loaded.pad_token_id, len(loaded)) == (2, 0, len(fresh))


def test_chat_template_renders_chatml():
    tok = build_tokenizer()
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 12 plus 7?"},
        {"role": "assistant", "content": "19"},
    ]
    assert tok.apply_chat_template(messages, tokenize=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nWhat is 12 plus 7?<|im_end|>\n"
        "<|im_start|>assistant\n19<|im_end|>\n"
    )
    assert tok.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nWhat is 12 plus 7?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_assistant_mask_marks_exactly_the_assistant_turns():
    tok = build_tokenizer()
    messages = [
        {"role": "user", "content": "What is 12 plus 7?"},
        {"role": "assistant", "content": "19"},
        {"role": "user", "content": "And 3 minus 5?"},
        {"role": "assistant", "content": "The answer is -2."},
    ]
    out = tok.apply_chat_template(messages, tokenize=True, return_dict=True,
                                  return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    assert len(ids) == len(mask)
    spans, current = [], []
    for token_id, flag in zip(ids, mask):
        if flag:
            current.append(token_id)
        elif current:
            spans.append(current)
            current = []
    assert not current  # the final "\n" after <|im_end|> is not the assistant's
    assert [tok.decode(span) for span in spans] == ["19<|im_end|>", "The answer is -2.<|im_end|>"]
    # The masked ids are exactly the ids of content + <|im_end|> (no header, no newline).
    assert spans[0] == [tok.convert_tokens_to_ids("1"), tok.convert_tokens_to_ids("9"), 2]


def test_template_satisfies_trl_assistant_only_loss_checks():
    """TRL's SFT assistant_only_loss checks: stop token inside the mask, prefix preserving."""
    from trl import chat_template_utils as chat_utils  # trl is a hard dependency
    tok = build_tokenizer()
    assert chat_utils.has_generation_markers(tok.chat_template)
    assert chat_utils.is_chat_template_stop_token_trained(tok)
    assert chat_utils.is_chat_template_prefix_preserving(tok)


def test_training_is_cached_per_corpus(tmp_path):
    build_tokenizer()
    hits = tokmod._trained_json.cache_info().hits
    first, second = build_tokenizer(), build_tokenizer()
    assert tokmod._trained_json.cache_info().hits == hits + 2
    assert first is not second  # callers may mutate their copy freely
    other = tmp_path / "corpus.txt"
    other.write_text("aaa bbb aaa bbb 12 34\n" * 50, encoding="utf-8")
    small = build_tokenizer(corpus_path=other)
    assert len(small) < len(first)  # a different corpus is trained separately, not served from cache


def test_bad_corpus_raises_config_error(tmp_path):
    with pytest.raises(ConfigError, match="missing.txt"):
        build_tokenizer(corpus_path=tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n", encoding="utf-8")
    with pytest.raises(ConfigError, match="empty.txt.*empty"):
        build_tokenizer(corpus_path=empty)


def test_load_tokenizer(tiny_qwen2, tmp_path):
    tok = load_tokenizer(tiny_qwen2)
    assert tok("19")["input_ids"] == build_tokenizer()("19")["input_ids"]
    with pytest.raises(ConfigError, match="nowhere"):
        load_tokenizer(tmp_path / "nowhere")
