"""Generate the bundled tokenizer-training text, posttrain/assets/tokenizer_corpus.txt.

The tiny models built by ``posttrain.models.init_model`` need a tokenizer, and nothing may be
downloaded, so the BPE is trained on this file. It is generated once from a fixed seed and
committed; re-running the script must reproduce it byte for byte (a test checks that).

The text mixes the registers the later tasks use, so common pieces of each get their own merges:
English-like sentences, chat-style arithmetic questions and answers, word lists, punctuation,
Python-ish code and JSON records.

Usage:
    python scripts/make_tokenizer_corpus.py            # rewrite the asset
    python scripts/make_tokenizer_corpus.py --check    # exit 1 if the asset is out of date
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

SEED = 0
ASSET = Path(__file__).resolve().parent.parent / "posttrain" / "assets" / "tokenizer_corpus.txt"


def _words(text: str) -> list[str]:
    """Split a space-separated word list (kept as prose so the lists stay compact)."""
    return text.split()


NOUNS = _words(
    "model answer question number word sentence student teacher cat dog bird tree river house "
    "city road book letter table chair window door garden morning evening day night year week "
    "friend family child water fire light sound idea problem result reason example list string "
    "value step test file line page story game team car train ship market price apple orange "
    "box key door song picture computer program function loop name color paper world group "
    "point hand head eye face room school class lesson rule plan note"
)
ADJECTIVES = _words(
    "small large quick slow bright dark happy sad old new young warm cold long short simple "
    "hard easy good bad red blue green yellow quiet loud clean empty full early late first last "
    "correct wrong careful strange common rare tiny huge"
)
VERBS = _words(
    "see find write read take make give keep open close count add check move build help like "
    "want need know learn teach answer solve return print sort repeat reverse copy follow carry"
)


def third_person(verb: str) -> str:
    """'carry' -> 'carries', 'teach' -> 'teaches', 'see' -> 'sees'."""
    if verb.endswith("y") and verb[-2] not in "aeiou":
        return verb[:-1] + "ies"
    if verb.endswith(("ch", "sh", "s", "x")):
        return verb + "es"
    return verb + "s"


ADVERBS = _words("quickly slowly carefully often never always sometimes again soon today")
NAMES = _words("Alice Bob Carol Dave Eve Frank Grace Heidi Ivan Judy Mallory Oscar Peggy Trent")
OPS = {
    "plus": lambda a, b: a + b,
    "minus": lambda a, b: a - b,
    "times": lambda a, b: a * b,
}


def english_sentence(rng: random.Random) -> str:
    """One simple declarative or interrogative sentence."""
    described = f"The {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"
    subject = rng.choice([rng.choice(NAMES), described])
    pattern = rng.randrange(5)
    if pattern == 0:
        return f"{subject} {third_person(rng.choice(VERBS))} the {rng.choice(NOUNS)}."
    if pattern == 1:
        verb, again = third_person(rng.choice(VERBS)), third_person(rng.choice(VERBS))
        return (f"{subject} {rng.choice(ADVERBS)} {verb} a {rng.choice(ADJECTIVES)} "
                f"{rng.choice(NOUNS)}, and then {again} it again.")
    if pattern == 2:
        subject = subject.replace("The ", "the ")
        return f"Why does {subject} {rng.choice(VERBS)} the {rng.choice(NOUNS)}?"
    if pattern == 3:
        return (f"\"I {rng.choice(VERBS)} {rng.randint(2, 99)} {rng.choice(NOUNS)}s,\" said "
                f"{rng.choice(NAMES)}; it's {rng.choice(ADJECTIVES)}!")
    return (f"In {rng.randint(1900, 2030)}, {rng.randint(2, 40)} {rng.choice(ADJECTIVES)} "
            f"{rng.choice(NOUNS)}s were {rng.choice(['here', 'there', 'gone', 'found', 'lost'])}.")


def arithmetic_chat(rng: random.Random) -> str:
    """A ChatML-formatted Q/A about arithmetic, as the chat template renders it."""
    n_terms = rng.choice([2, 2, 3])
    terms = [rng.randint(0, 99) for _ in range(n_terms)]
    words = [rng.choice(list(OPS)) for _ in range(n_terms - 1)]
    value = terms[0]
    question = f"What is {terms[0]}"
    for word, term in zip(words, terms[1:]):
        value = OPS[word](value, term)
        question += f" {word} {term}"
    question += "?"
    if rng.random() < 0.3:
        answer = f"The answer is {value}."
    elif rng.random() < 0.3:
        answer = f"Let me think. {question[8:-1]} = {value}. So the answer is {value}."
    else:
        answer = str(value)
    system = ""
    if rng.random() < 0.3:
        system = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    return (f"{system}<|im_start|>user\n{question}<|im_end|>\n"
            f"<|im_start|>assistant\n{answer}<|im_end|>\n")


def word_list(rng: random.Random) -> str:
    """Lists and transforms of words (the string-manipulation tasks use these)."""
    words = rng.sample(NOUNS + ADJECTIVES, rng.randint(3, 7))
    pattern = rng.randrange(3)
    if pattern == 0:
        return f"Sort these words: {', '.join(words)}. Sorted: {', '.join(sorted(words))}."
    if pattern == 1:
        word = words[0]
        return f"Reverse the word {word}: {word[::-1]}. Uppercase: {word.upper()}."
    return "- " + "\n- ".join(words)


def code_snippet(rng: random.Random) -> str:
    """A short Python-ish function."""
    name = rng.choice(["add", "count_words", "reverse", "is_even", "total", "parse_line", "score"])
    arg = rng.choice(["x", "text", "items", "n", "values"])
    body = rng.choice([
        [f"return {arg} + {rng.randint(1, 9)}"],
        [f"if {arg} % 2 == 0:", "    return True", "return False"],
        ["result = []", f"for item in {arg}:",
         f"    result.append(item * {rng.randint(2, 5)})", "return result"],
        [f"return len({arg}.split())"],
        [f"return {arg}[::-1]"],
        ["total = 0", f"for i in range({rng.randint(3, 20)}):", "    total += i", "return total"],
    ])
    lines = [f"def {name}({arg}):", f'    """{rng.choice(NOUNS).title()} helper."""']
    lines += ["    " + line for line in body]
    lines += ["", f"print({name}({rng.randint(0, 50)}))  # -> {rng.randint(0, 99)}"]
    return "\n".join(lines)


def json_record(rng: random.Random) -> str:
    """One JSONL-style record like the bundled datasets use."""
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    record = rng.choice([
        {"prompt": f"What is {a} plus {b}?", "answer": str(a + b)},
        {"id": rng.randint(0, 9999), "name": rng.choice(NAMES), "score": round(rng.random(), 3),
         "tags": rng.sample(ADJECTIVES, 2)},
        {"messages": [{"role": "user", "content": f"What is {a} minus {b}?"},
                      {"role": "assistant", "content": str(a - b)}]},
        {"prompt": english_sentence(rng), "chosen": str(a), "rejected": str(b),
         "ok": rng.random() < 0.5, "extra": None},
    ])
    return json.dumps(record)


def punctuation_line(rng: random.Random) -> str:
    """Symbols and brackets so they are not all split into single bytes."""
    pieces = ["(a, b)", "[1, 2, 3]", "{x: y}", "a == b", "x != y", "i += 1", "a -> b", "#",
              "...", "--", "**", "//", "<= >=", "@", "$5", "100%", "&", "|", ":", ";", "'quoted'",
              "`code`", "e.g.", "i.e.", "Q:", "A:", "=>", "\\n", "\t"]
    return " ".join(rng.choice(pieces) for _ in range(rng.randint(4, 10)))


GENERATORS = (
    (english_sentence, 6),
    (arithmetic_chat, 5),
    (word_list, 2),
    (code_snippet, 2),
    (json_record, 3),
    (punctuation_line, 1),
)


def make_corpus(seed: int = SEED, n_items: int = 3000) -> str:
    """Return the corpus text for ``seed``; items are separated by blank lines."""
    rng = random.Random(seed)
    funcs = [f for f, _ in GENERATORS]
    weights = [w for _, w in GENERATORS]
    items = [rng.choices(funcs, weights)[0](rng) for _ in range(n_items)]
    return "\n\n".join(items) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write (or with --check, verify) the bundled corpus."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only verify the committed asset")
    args = parser.parse_args(argv)
    text = make_corpus()
    if args.check:
        current = ASSET.read_text(encoding="utf-8") if ASSET.exists() else None
        if current != text:
            print(f"{ASSET} is out of date; run scripts/make_tokenizer_corpus.py", file=sys.stderr)
            return 1
        return 0
    ASSET.parent.mkdir(parents=True, exist_ok=True)
    ASSET.write_text(text, encoding="utf-8")
    print(f"wrote {ASSET} ({len(text.encode('utf-8'))} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
