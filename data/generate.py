"""Generate the bundled datasets under data/ from fixed seeds.

Usage:
    python data/generate.py                 # rewrite the files next to this script
    python data/generate.py --out DIR       # write them under DIR instead
    python data/generate.py --check         # exit 1 if a committed file differs from a fresh run

Running it twice gives byte-identical files (a test regenerates into a temp folder and compares
hashes with the committed ones). Every dataset draws from its own ``random.Random(seed)``, so
changing one does not change the others. See data/README.md for the formats and sizes.

Arithmetic: "What is A plus B?" (25%) and "What is A plus B plus C?" (75%), operands 0..49. The
assistant answer is the bare number ("49"), in every file but sft_mixed.jsonl: the problems of
sft.jsonl, 40% of them answered the worked way, column by column ("ones 3+2+8=13, tens
4+3+3+1=11, so 113"), the rest bare, as two teachers would. The problems of heldout.jsonl,
sft_eval.jsonl and preference_eval.jsonl are drawn first, without replacement, and kept out of
every training file and out of the text corpus, so evaluation never sees a trained problem.
sft_feedback.jsonl (the feedback recipe's SFT, prompt/completion): the problems of sft.jsonl, 25%
of them as second attempts: the prompt holds a plausible mistake as a bare number and the feedback
environment's "N is not correct. Try again.", the completion is the right answer, worked column by
column (as in sft_mixed.jsonl) in half of them and bare in the rest, as two teachers would. The
mistake is in the prompt, so SFT never trains the model to make it.
rl_feedback.jsonl (the feedback recipe's GRPO): the rows of rl.jsonl, half of them with a
`first_attempt` column, a plausible mistake the feedback environment's episode starts after (null
in the others). heldout_feedback.jsonl: the rows of heldout.jsonl, every one with such a mistake.

Strings: "Sort these words alphabetically: pear apple kiwi" -> "apple kiwi pear", and "Reverse
the letters of the word: apple" -> "elppa". Held-out problems are kept out of training the same
way; for reversal, whole words are held out (a reversed word is memorisable).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from pathlib import Path

from generate_text import sentence, strings_files  # data/, this script's folder

HERE = Path(__file__).resolve().parent
MAX_OPERAND = 49
TWO_OPERAND_SHARE = 0.25
SIZES = {
    "arithmetic": {
        "heldout": 300,
        "sft_eval": 500,
        "preference_eval": 200,
        "sft": 8000,
        "preference": 2000,
        "rl": 2000,
    },
    "strings": {"heldout": 300, "sft": 4000, "rl": 1000},
    "text": {"sentences": 3000, "arithmetic": 1500},
}
SEEDS = {"arithmetic": 1234, "strings": 2345, "text": 3456, "worked": 4567, "agent": 5678, "feedback": 6789,
         "curriculum": 7890, "prm": 8901,
         "feedback_rl": 9012, "feedback_heldout": 9123}
# curriculum/: sums of 2, 3 and 4 operands as three sources (a `source` column); the SFT data has
# only 2 and 3, so 4 is the source too hard at the start
CURRICULUM_SOURCES = {"2op": 2, "3op": 3, "4op": 4}
CURRICULUM_SIZES = {"rl": 200, "heldout": 100}  # per source
# agent/: easy sums a tiny model learns by heart, products it cannot compute; two teachers
AGENT_SIZES = {"heldout": 200, "sft": 4000, "rl": 2000}
AGENT_TOOL_SHARE = {"easy": 0.5, "hard": 0.15}  # answers given by the calculator-calling teacher
WORKED_SHARE = 0.4
# prm/: worked answers split into their three steps (ones, tens, answer), a mistake injected at a
# known step in most rows; a step is labelled 1 when it and every step before it are right
PRM_SIZES = {"train": 4000, "heldout": 300}
PRM_MISTAKES = {"none": 0.4, "ones": 0.2, "tens": 0.2, "answer": 0.2}  # where the first mistake is
FEEDBACK_SHARE = 0.25  # sft_feedback.jsonl: a wrong bare first attempt, feedback, a second attempt
FEEDBACK_WORKED_SHARE = 0.5  # of those second attempts, worked column by column (the rest bare)
FEEDBACK_GIVEN_SHARE = 0.5  # rl_feedback.jsonl: rows with a given wrong first attempt
# The feedback environment's default message (posttrain.agents.builtin_envs.FeedbackEnvironment;
# tests/data checks they agree).
FEEDBACK_MESSAGE = "{answer} is not correct. Try again."


def _ask(ops: tuple[int, ...]) -> str:
    return "What is " + " plus ".join(str(x) for x in ops) + "?"


def _draw_unique(rng: random.Random, count: int, taken: set) -> list[tuple[int, ...]]:
    """Draw ``count`` problems not in ``taken`` and distinct from each other.

    The operand count is drawn first, so the two-operand share stays TWO_OPERAND_SHARE even
    though only 2,500 two-operand problems exist and the big files use most of them.
    """
    out: list[tuple[int, ...]] = []
    seen = set(taken)
    for _ in range(count):
        n = 2 if rng.random() < TWO_OPERAND_SHARE else 3
        while True:
            ops = tuple(rng.randint(0, MAX_OPERAND) for _ in range(n))
            if ops not in seen:
                break
        seen.add(ops)
        out.append(ops)
    return out


def _wrong_answer(rng: random.Random, answer: int) -> int:
    """A plausible mistake: off by a little, off by ten, or one digit changed."""
    while True:
        kind = rng.choice(("small", "ten", "digit"))
        if kind == "small":
            wrong = answer + rng.choice((-2, -1, 1, 2))
        elif kind == "ten":
            wrong = answer + rng.choice((-10, 10))
        else:
            digits = list(str(answer))
            i = rng.randrange(len(digits))
            digits[i] = rng.choice([d for d in "0123456789" if d != digits[i]])
            wrong = int("".join(digits))
        if wrong >= 0 and wrong != answer:
            return wrong


def _worked(ops: tuple[int, ...]) -> str:
    """Column addition written out: ones digits plus nothing, tens digits plus the carry."""
    ones = [x % 10 for x in ops]
    tens = [x // 10 for x in ops]
    low = sum(ones)
    high = sum(tens) + low // 10
    return (
        f"ones {'+'.join(map(str, ones))}={low}, "
        f"tens {'+'.join(map(str, tens))}+{low // 10}={high}, so {sum(ops)}"
    )


def _worked_steps(ops: tuple[int, ...], rng: random.Random, mistake: str) -> tuple[list[str], list[int]]:
    """The worked answer's three steps, with the first mistake at step ``mistake`` (or none), and
    the step labels: 1 while every step so far is right, 0 from the first mistake on. Steps after
    a mistake compute on from the wrong value, as a model that slipped would."""
    ones = [x % 10 for x in ops]
    tens = [x // 10 for x in ops]
    low = sum(ones)
    if mistake == "ones":
        low = _wrong_answer(rng, low)
    carry = low // 10
    high = sum(tens) + carry
    if mistake == "tens":
        high = _wrong_answer(rng, high)
    answer = high * 10 + low % 10
    if mistake == "answer":
        answer = _wrong_answer(rng, answer)
    steps = [f"ones {'+'.join(map(str, ones))}={low}", f"tens {'+'.join(map(str, tens))}+{carry}={high}",
             f"so {answer}"]
    first = {"none": 3, "ones": 0, "tens": 1, "answer": 2}[mistake]
    return steps, [int(i < first) for i in range(3)]


def prm_files(rng: random.Random, train: list[tuple[int, ...]], heldout: list[tuple[int, ...]]) -> dict[str, list[dict]]:
    """Step-labelled worked answers: training rows from the SFT problems, held-out rows from the
    held-out problems (never trained on)."""
    kinds, weights = list(PRM_MISTAKES), list(PRM_MISTAKES.values())

    def row(ops):
        steps, labels = _worked_steps(ops, rng, rng.choices(kinds, weights)[0])
        return {"prompt": _user(_ask(ops)), "steps": steps, "labels": labels, "answer": str(sum(ops))}

    return {"train": [row(o) for o in train[:PRM_SIZES["train"]]],
            "heldout": [row(o) for o in heldout[:PRM_SIZES["heldout"]]]}


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def arithmetic_files(rng: random.Random) -> tuple[dict[str, list[dict]], set]:
    """All arithmetic files, plus the reserved (eval and held-out) problems for the corpus."""
    n = SIZES["arithmetic"]
    reserved: dict[str, list[tuple[int, ...]]] = {}
    taken: set = set()
    for name in ("heldout", "sft_eval", "preference_eval"):
        reserved[name] = _draw_unique(rng, n[name], taken)
        taken.update(reserved[name])
    # Training files each draw distinct problems outside the reserved set; they may share some.
    train = {name: _draw_unique(rng, n[name], taken) for name in ("sft", "preference", "rl")}

    def sft_row(ops):
        return {"messages": _user(_ask(ops)) + _assistant(str(sum(ops)))}

    def pref_row(ops):
        return {
            "prompt": _user(_ask(ops)),
            "chosen": _assistant(str(sum(ops))),
            "rejected": _assistant(str(_wrong_answer(rng, sum(ops)))),
        }

    def rl_row(ops):
        return {"prompt": _user(_ask(ops)), "answer": str(sum(ops))}

    # Its own generator, so the mixed file leaves every other file's bytes as they were.
    worked_rng = random.Random(SEEDS["worked"])
    worked = set(worked_rng.sample(range(n["sft"]), round(WORKED_SHARE * n["sft"])))

    def mixed_row(i, ops):
        answer = _worked(ops) if i in worked else str(sum(ops))
        return {"messages": _user(_ask(ops)) + _assistant(answer)}

    # Its own generator too: SCoRe-style transcripts for the feedback recipe.
    feedback_rng = random.Random(SEEDS["feedback"])

    def feedback_row(ops):
        # prompt/completion: the wrong first attempt is context, never trained on (only the answer is)
        if feedback_rng.random() >= FEEDBACK_SHARE:
            return {"prompt": _user(_ask(ops)), "completion": _assistant(str(sum(ops)))}
        wrong = _wrong_answer(feedback_rng, sum(ops))
        second = _worked(ops) if feedback_rng.random() < FEEDBACK_WORKED_SHARE else str(sum(ops))
        return {"prompt": _user(_ask(ops)) + _assistant(str(wrong)) + _user(FEEDBACK_MESSAGE.format(answer=wrong)),
                "completion": _assistant(second)}

    # And for its given-first-attempt runs: half the RL problems start after a wrong first attempt
    # (the feedback environment's first_attempt_column), so the correction gets trained directly.
    given_rng = random.Random(SEEDS["feedback_rl"])

    def feedback_rl_row(ops):
        given = str(_wrong_answer(given_rng, sum(ops))) if given_rng.random() < FEEDBACK_GIVEN_SHARE else None
        return {**rl_row(ops), "first_attempt": given}

    # The held-out problems after a given wrong first attempt: the second attempt measured on every
    # row, where the model's own first answers leave few (tens of) second attempts.
    heldout_rng = random.Random(SEEDS["feedback_heldout"])

    def heldout_feedback_row(ops):
        return {**rl_row(ops), "first_attempt": str(_wrong_answer(heldout_rng, sum(ops)))}

    files = {
        "sft": [sft_row(o) for o in train["sft"]],
        "sft_mixed": [mixed_row(i, o) for i, o in enumerate(train["sft"])],
        "sft_feedback": [feedback_row(o) for o in train["sft"]],
        "sft_eval": [sft_row(o) for o in reserved["sft_eval"]],
        "preference": [pref_row(o) for o in train["preference"]],
        "preference_eval": [pref_row(o) for o in reserved["preference_eval"]],
        "rl": [rl_row(o) for o in train["rl"]],
        "rl_feedback": [feedback_rl_row(o) for o in train["rl"]],
        "heldout": [rl_row(o) for o in reserved["heldout"]],
        "heldout_feedback": [heldout_feedback_row(o) for o in reserved["heldout"]],
    }
    return files, taken


def text_corpus(rng: random.Random, reserved: set) -> list[dict]:
    """English sentences mixed with "12 plus 7 is 19." statements, never a reserved problem."""
    n = SIZES["text"]
    lines = [sentence(rng) for _ in range(n["sentences"])]
    for ops in _draw_unique(rng, n["arithmetic"], reserved):
        lines.append(" plus ".join(str(x) for x in ops) + f" is {sum(ops)}.")
    rng.shuffle(lines)
    return [{"text": line} for line in lines]


def _agent_problem(rng: random.Random, difficulty: str) -> tuple[str, str, int]:
    """(question, calculator expression, answer): easy "A plus B" (A, B < 10), hard "A times B"
    (a 3-digit times a 2-digit number)."""
    if difficulty == "easy":
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        return f"What is {a} plus {b}?", f"{a}+{b}", a + b
    a, b = rng.randint(100, 999), rng.randint(10, 99)
    return f"What is {a} times {b}?", f"{a}*{b}", a * b


def _tool_call(expression: str) -> str:
    """The assistant's call, as the chat template renders a structured tool call."""
    return "<tool_call>" + json.dumps({"name": "calculator", "arguments": {"expression": expression}}) + "</tool_call>"


def agent_files(rng: random.Random) -> dict[str, list[dict]]:
    """Tool-use arithmetic: SFT transcripts from two teachers (one answers directly, one calls the
    calculator and copies its result), RL and held-out prompts with `answer` and `difficulty`.
    Held-out hard questions are drawn first and kept out of the training files (only 100 easy
    questions exist, so those repeat). The sft stage's `tools:` key lists the calculator in each
    transcript's prompt, as the RL stage's environment does."""
    taken: set = set()

    def draw(count: int) -> list[tuple[str, str, str, int]]:
        out = []
        for i in range(count):
            difficulty = "easy" if i % 2 == 0 else "hard"
            while True:
                question, expression, answer = _agent_problem(rng, difficulty)
                if difficulty == "easy" or question not in taken:
                    break
            if difficulty == "hard":  # only 100 easy questions exist: they repeat across files
                taken.add(question)
            out.append((difficulty, question, expression, answer))
        return out

    heldout = draw(AGENT_SIZES["heldout"])
    sft, rl = draw(AGENT_SIZES["sft"]), draw(AGENT_SIZES["rl"])

    def sft_row(problem):
        difficulty, question, expression, answer = problem
        if rng.random() < AGENT_TOOL_SHARE[difficulty]:
            turns = [{"role": "assistant", "content": _tool_call(expression)},
                     {"role": "tool", "content": str(answer)},
                     {"role": "assistant", "content": str(answer)}]
        else:
            turns = [{"role": "assistant", "content": str(answer)}]
        return {"messages": _user(question) + turns}

    def rl_row(problem):
        difficulty, question, _, answer = problem
        return {"prompt": _user(question), "answer": str(answer), "difficulty": difficulty}

    return {"sft": [sft_row(p) for p in sft], "rl": [rl_row(p) for p in rl],
            "heldout": [rl_row(p) for p in heldout]}


def _operands(question: str) -> tuple[int, ...]:
    return tuple(int(x) for x in question.removeprefix("What is ").removesuffix("?").split(" plus "))


def curriculum_files(rng: random.Random, sft_rows: list[dict]) -> dict[str, list[dict]]:
    """RL prompts and held-out problems per source (2, 3 or 4 operands): a small RL set per source,
    so that a run sees each prompt several times (what an online difficulty filter needs), and
    held-out problems that are in neither the SFT data nor the RL set."""
    seen = {_operands(row["messages"][0]["content"]) for row in sft_rows}
    files: dict[str, list[dict]] = {"rl": [], "heldout": []}
    for source, n in CURRICULUM_SOURCES.items():
        heldout: list[tuple[int, ...]] = []
        while len(heldout) < CURRICULUM_SIZES["heldout"]:
            ops = tuple(rng.randint(0, MAX_OPERAND) for _ in range(n))
            if ops not in seen and ops not in heldout:
                heldout.append(ops)
        train: list[tuple[int, ...]] = []
        while len(train) < CURRICULUM_SIZES["rl"]:
            ops = tuple(rng.randint(0, MAX_OPERAND) for _ in range(n))
            if ops not in heldout and ops not in train:
                train.append(ops)
        for name, problems in (("rl", train), ("heldout", heldout)):
            files[name] += [{"prompt": _user(_ask(ops)), "answer": str(sum(ops)), "source": source} for ops in problems]
    return files


def build_all() -> dict[str, list[dict]]:
    """Every bundled file, keyed by its path relative to data/."""
    arithmetic, reserved = arithmetic_files(random.Random(SEEDS["arithmetic"]))
    files = {f"arithmetic/{name}.jsonl": rows for name, rows in arithmetic.items()}
    strings = strings_files(random.Random(SEEDS["strings"]), SIZES["strings"])
    files.update({f"strings/{name}.jsonl": rows for name, rows in strings.items()})
    files["text/corpus.jsonl"] = text_corpus(random.Random(SEEDS["text"]), reserved)
    agent = agent_files(random.Random(SEEDS["agent"]))
    files.update({f"agent/{name}.jsonl": rows for name, rows in agent.items()})
    curriculum = curriculum_files(random.Random(SEEDS["curriculum"]), arithmetic["sft"])
    files.update({f"curriculum/{name}.jsonl": rows for name, rows in curriculum.items()})
    problems = {name: [_operands(r["prompt"][0]["content"] if "prompt" in r else r["messages"][0]["content"])
                       for r in arithmetic[name]] for name in ("sft", "heldout")}
    prm = prm_files(random.Random(SEEDS["prm"]), problems["sft"], problems["heldout"])
    files.update({f"prm/{name}.jsonl": rows for name, rows in prm.items()})
    return files


def encode(rows: list[dict]) -> bytes:
    """JSON Lines, ASCII only, '\\n' line ends: the same bytes on every platform."""
    return "".join(json.dumps(row, ensure_ascii=True) + "\n" for row in rows).encode("ascii")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="folder to write into")
    parser.add_argument(
        "--check", action="store_true", help="compare with the files under --out instead of writing"
    )
    args = parser.parse_args(argv)
    stale = []
    for rel, rows in build_all().items():
        data = encode(rows)
        target = args.out / rel
        if args.check:
            if not target.exists() or target.read_bytes() != data:
                stale.append(rel)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        print(
            f"{rel}: {len(rows)} rows, {len(data) / 1024:.0f} KiB, "
            f"sha256 {hashlib.sha256(data).hexdigest()[:12]}"
        )
    if stale:
        print(f"out of date: {', '.join(stale)}; run python data/generate.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
