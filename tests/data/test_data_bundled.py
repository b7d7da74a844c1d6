"""The bundled datasets under data/: reproducible, correct, disjoint, and loadable."""
from __future__ import annotations

import hashlib
import inspect
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from posttrain.data import load_dataset_spec

DATA = Path(__file__).resolve().parents[2] / "data"
# Every committed data file and the format a stage reads it as.
BUNDLED = {
    "arithmetic/sft.jsonl": "messages",
    "arithmetic/sft_mixed.jsonl": "messages",
    "arithmetic/sft_feedback.jsonl": "prompt_completion",
    "arithmetic/sft_eval.jsonl": "messages",
    "arithmetic/preference.jsonl": "preference",
    "arithmetic/preference_eval.jsonl": "preference",
    "arithmetic/rl.jsonl": "rl",
    "arithmetic/rl_feedback.jsonl": "rl",
    "arithmetic/heldout.jsonl": "rl",
    "arithmetic/heldout_feedback.jsonl": "rl",
    "strings/sft.jsonl": "messages",
    "strings/rl.jsonl": "rl",
    "strings/heldout.jsonl": "rl",
    "text/corpus.jsonl": "text",
    "agent/sft.jsonl": "messages",
    "agent/rl.jsonl": "rl",
    "agent/heldout.jsonl": "rl",
    "curriculum/rl.jsonl": "rl",
    "curriculum/heldout.jsonl": "rl",
    "prm/train.jsonl": "steps",
    "prm/heldout.jsonl": "steps",
}
ROWS = {
    "arithmetic/sft.jsonl": 8000, "arithmetic/sft_mixed.jsonl": 8000, "arithmetic/sft_feedback.jsonl": 8000,
    "arithmetic/sft_eval.jsonl": 500,
    "arithmetic/preference.jsonl": 2000, "arithmetic/preference_eval.jsonl": 200,
    "arithmetic/rl.jsonl": 2000, "arithmetic/rl_feedback.jsonl": 2000, "arithmetic/heldout.jsonl": 300,
    "arithmetic/heldout_feedback.jsonl": 300,
    "strings/sft.jsonl": 4000, "strings/rl.jsonl": 1000, "strings/heldout.jsonl": 300,
    "curriculum/rl.jsonl": 600, "curriculum/heldout.jsonl": 300,
    "prm/train.jsonl": 4000, "prm/heldout.jsonl": 300,
    "text/corpus.jsonl": 4500,
    "agent/sft.jsonl": 4000, "agent/rl.jsonl": 2000, "agent/heldout.jsonl": 200,
}


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def loaded():
    """Each bundled file read through load_dataset_spec in its format (validates every row)."""
    return {rel: load_dataset_spec(str(DATA / rel), fmt)[0].to_list()
            for rel, fmt in BUNDLED.items()}


def _prompts(rows) -> set[str]:
    """The user question of each row, whatever the row's format."""
    out = set()
    for row in rows:
        turns = row["messages"] if "messages" in row else row["prompt"]
        out.add(next(t["content"] for t in turns if t["role"] == "user"))
    return out


def test_generator_reproduces_the_committed_files(tmp_path):
    subprocess.run([sys.executable, str(DATA / "generate.py"), "--out", str(tmp_path)],
                   check=True, capture_output=True, timeout=60)
    generated = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.jsonl"))
    # data/verifiers/ holds labelled sets for verifier tests, not training data: its own script
    # writes it and tests/verification/test_math_verifier.py checks that it is current.
    committed = sorted(str(p.relative_to(DATA)) for p in DATA.rglob("*.jsonl")
                       if p.relative_to(DATA).parts[0] != "verifiers")
    assert generated == committed == sorted(BUNDLED)
    for rel in generated:
        assert _sha(tmp_path / rel) == _sha(DATA / rel), f"{rel} differs: run data/generate.py"
    check = subprocess.run([sys.executable, str(DATA / "generate.py"), "--check"],
                           check=False, capture_output=True, timeout=60)
    assert check.returncode == 0, check.stderr


@pytest.mark.parametrize("rel", sorted(BUNDLED))
def test_files_are_small_plain_ascii_and_sized(rel, loaded):
    raw = (DATA / rel).read_bytes()
    assert len(raw) < 2 * 1024 * 1024
    raw.decode("ascii")  # the tokenizer sees plain ASCII only
    assert len(loaded[rel]) == ROWS[rel]


def test_arithmetic_answers_are_right_and_rejected_are_wrong(loaded):
    ask = re.compile(r"^What is (\d+(?: plus \d+){1,2})\?$")
    counts = {2: 0, 3: 0}
    for rel in ("arithmetic/sft.jsonl", "arithmetic/sft_eval.jsonl"):
        for row in loaded[rel]:
            question, answer = (m["content"] for m in row["messages"])
            ops = [int(x) for x in ask.match(question).group(1).split(" plus ")]
            assert all(0 <= x <= 49 for x in ops) and answer == str(sum(ops))
            counts[len(ops)] += 1
    assert 0.2 < counts[2] / (counts[2] + counts[3]) < 0.3  # the 25% two-operand share
    for rel in ("arithmetic/rl.jsonl", "arithmetic/heldout.jsonl"):
        for row in loaded[rel]:
            ops = ask.match(row["prompt"][0]["content"]).group(1).split(" plus ")
            assert row["answer"] == str(sum(int(x) for x in ops))
    for rel in ("arithmetic/preference.jsonl", "arithmetic/preference_eval.jsonl"):
        for row in loaded[rel]:
            ops = ask.match(row["prompt"][0]["content"]).group(1).split(" plus ")
            right, wrong = row["chosen"][0]["content"], row["rejected"][0]["content"]
            assert right == str(sum(int(x) for x in ops)) and wrong.isdigit() and wrong != right
            # A plausible slip: off by 1, 2 or 10, or one digit changed (a leading 0 drops).
            padded = wrong.zfill(len(right))
            one_digit = len(padded) == len(right) and \
                sum(a != b for a, b in zip(padded, right)) == 1
            assert abs(int(wrong) - int(right)) in (1, 2, 10) or one_digit, (right, wrong)


def test_mixed_sft_asks_the_same_problems_and_works_40_percent_correctly(loaded):
    """sft_mixed.jsonl: sft.jsonl's questions; 40% answered column by column, every step right."""
    worked = re.compile(r"^ones ([\d+]+)=(\d+), tens ([\d+]+)\+(\d)=(\d+), so (\d+)$")
    n_worked = 0
    for plain, mixed in zip(loaded["arithmetic/sft.jsonl"], loaded["arithmetic/sft_mixed.jsonl"]):
        question, answer = (m["content"] for m in mixed["messages"])
        assert question == plain["messages"][0]["content"]
        right = plain["messages"][1]["content"]
        if answer == right:
            continue
        n_worked += 1
        ops = [int(x) for x in question.removeprefix("What is ").removesuffix("?").split(" plus ")]
        ones, low, tens, carry, high, final = worked.match(answer).groups()
        assert [int(d) for d in ones.split("+")] == [x % 10 for x in ops]
        assert [int(d) for d in tens.split("+")] == [x // 10 for x in ops]
        assert int(low) == sum(x % 10 for x in ops) and int(carry) == int(low) // 10
        assert int(high) == sum(x // 10 for x in ops) + int(carry) and final == right
    assert n_worked == 3200


def test_feedback_sft_has_a_wrong_attempt_the_environments_feedback_and_the_right_answer(loaded):
    """sft_feedback.jsonl: sft.jsonl's rows as prompt/completion, ~25% as second attempts: the
    prompt holds a wrong answer and the feedback environment's words (context, never trained on),
    the completion is the right answer, half worked column by column and half bare (two teachers)."""
    from posttrain.agents.builtin_envs import FeedbackEnvironment

    message = inspect.signature(FeedbackEnvironment).parameters["message"].default
    second = worked = 0
    for plain, row in zip(loaded["arithmetic/sft.jsonl"], loaded["arithmetic/sft_feedback.jsonl"]):
        question, answer = plain["messages"]
        [completion] = row["completion"]
        assert completion["role"] == "assistant" and row["prompt"][0] == question
        if len(row["prompt"]) == 1:
            assert completion == answer
            continue
        second += 1
        _, wrong, feedback = row["prompt"]
        assert [m["role"] for m in row["prompt"]] == ["user", "assistant", "user"]
        assert completion["content"] == answer["content"] or completion["content"].endswith(f"so {answer['content']}")
        worked += completion["content"] != answer["content"]
        assert wrong["content"] != answer["content"] and feedback["content"] == message.format(answer=wrong["content"])
    assert 0.23 < second / len(loaded["arithmetic/sft.jsonl"]) < 0.27
    assert 0.45 < worked / second < 0.55


def test_string_answers_are_right(loaded):
    for rel in ("strings/sft.jsonl", "strings/rl.jsonl", "strings/heldout.jsonl"):
        for row in loaded[rel]:
            if "messages" in row:
                question, answer = (m["content"] for m in row["messages"])
            else:
                question, answer = row["prompt"][0]["content"], row["answer"]
            task, _, arg = question.partition(": ")
            if task == "Sort these words alphabetically":
                assert answer == " ".join(sorted(arg.split()))
            else:
                assert task == "Reverse the letters of the word" and answer == arg[::-1]


def test_heldout_and_eval_prompts_never_appear_in_training(loaded):
    train = set().union(*(_prompts(loaded[f"arithmetic/{n}.jsonl"])
                          for n in ("sft", "preference", "rl")))
    held = {n: _prompts(loaded[f"arithmetic/{n}.jsonl"])
            for n in ("heldout", "sft_eval", "preference_eval")}
    assert len(held["heldout"]) == 300  # distinct prompts
    for name, prompts in held.items():
        assert not prompts & train, name
    assert not held["heldout"] & (held["sft_eval"] | held["preference_eval"])
    # The pretraining corpus states no reserved problem either ("12 plus 7 is 19.").
    statements = {row["text"].rsplit(" is ", 1)[0] for row in loaded["text/corpus.jsonl"]}
    reserved = {p.removeprefix("What is ").removesuffix("?") for p in set().union(*held.values())}
    assert not statements & reserved

    strings_train = _prompts(loaded["strings/sft.jsonl"]) | _prompts(loaded["strings/rl.jsonl"])
    strings_held = _prompts(loaded["strings/heldout.jsonl"])
    assert len(strings_held) == 300 and not strings_held & strings_train
    held_words = {p.rsplit(": ", 1)[1] for p in strings_held if p.startswith("Reverse")}
    assert len(held_words) == 60


def test_corpus_mixes_sentences_and_arithmetic(loaded):
    texts = [row["text"] for row in loaded["text/corpus.jsonl"]]
    arithmetic = [t for t in texts if re.fullmatch(r"\d+( plus \d+)+ is \d+\.", t)]
    assert len(arithmetic) == 1500
    for statement in arithmetic:
        lhs, rhs = statement.rstrip(".").split(" is ")
        assert int(rhs) == sum(int(x) for x in lhs.split(" plus "))
    assert all(t[0].isupper() and t.endswith((".", "?")) for t in texts if t not in arithmetic)


def test_agent_transcripts_are_right_and_held_out(loaded):
    """Every answer is right; calls name the calculator on the question's own expression and the
    tool turn holds its result; the calculator teacher's share is ~50% easy, ~15% hard; held-out
    hard questions appear in no training file."""
    import json

    ask = re.compile(r"^What is (\d+) (plus|times) (\d+)\?$")
    calls = {"easy": [], "hard": []}
    for row in loaded["agent/sft.jsonl"]:
        question, *turns = row["messages"]
        a, op, b = ask.match(question["content"]).groups()
        value = int(a) + int(b) if op == "plus" else int(a) * int(b)
        difficulty = "easy" if op == "plus" else "hard"
        assert (int(a) < 10 and int(b) < 10) if difficulty == "easy" else (99 < int(a) < 1000 and 9 < int(b) < 100)
        assert turns[-1] == {"role": "assistant", "content": str(value)}
        calls[difficulty].append(len(turns) == 3)
        if len(turns) == 3:
            call = json.loads(turns[0]["content"].removeprefix("<tool_call>").removesuffix("</tool_call>"))
            assert call == {"name": "calculator", "arguments": {"expression": f"{a}{'+' if op == 'plus' else '*'}{b}"}}
            assert turns[1] == {"role": "tool", "content": str(value)}
    assert 0.45 < sum(calls["easy"]) / len(calls["easy"]) < 0.55 and 0.12 < sum(calls["hard"]) / len(calls["hard"]) < 0.18
    for rel in ("agent/rl.jsonl", "agent/heldout.jsonl"):
        for row in loaded[rel]:
            a, op, b = ask.match(row["prompt"][0]["content"]).groups()
            assert row["answer"] == str(int(a) + int(b) if op == "plus" else int(a) * int(b))
            assert row["difficulty"] == ("easy" if op == "plus" else "hard")
    held = {q for q in _prompts(loaded["agent/heldout.jsonl"]) if "times" in q}
    assert len(held) == 100
    assert not held & (_prompts(loaded["agent/sft.jsonl"]) | _prompts(loaded["agent/rl.jsonl"]))


def test_curriculum_sources_have_2_3_4_operands_and_held_out_problems_are_unseen(loaded):
    """Three sources of equal size; each question has the operand count its source names, the
    answer is right, and no held-out question is in the curriculum RL set or the SFT data."""
    for name, per_source in (("curriculum/rl.jsonl", 200), ("curriculum/heldout.jsonl", 100)):
        rows = loaded[name]
        for source, operands in (("2op", 2), ("3op", 3), ("4op", 4)):
            mine = [r for r in rows if r["source"] == source]
            assert len(mine) == per_source
            for row in mine:
                numbers = [int(x) for x in row["prompt"][0]["content"][len("What is "):-1].split(" plus ")]
                assert len(numbers) == operands and str(sum(numbers)) == row["answer"]
    held_out = _prompts(loaded["curriculum/heldout.jsonl"])
    assert not held_out & _prompts(loaded["curriculum/rl.jsonl"])
    assert not held_out & _prompts(loaded["arithmetic/sft_mixed.jsonl"])


def _check_worked_steps(row) -> None:
    """Recompute each step of a worked answer; its label is 1 exactly while every step so far is right."""
    ops = [int(x) for x in row["prompt"][0]["content"][len("What is "):-1].split(" plus ")]
    ones_step, tens_step, answer_step = row["steps"]
    ones_shown = [int(x) for x in ones_step.split()[1].split("=")[0].split("+")]
    low = int(ones_step.split("=")[1])
    tens_terms, high = tens_step.split()[1].split("="), None
    *tens_shown, carry = (int(x) for x in tens_terms[0].split("+"))
    high = int(tens_terms[1])
    answer = int(answer_step.split()[1])
    assert ones_shown == [x % 10 for x in ops] and tens_shown == [x // 10 for x in ops]
    right = [low == sum(ones_shown),
             carry == low // 10 and high == sum(tens_shown) + carry,
             answer == high * 10 + low % 10]
    so_far = [int(all(right[:k + 1])) for k in range(3)]
    assert row["labels"] == so_far, row
    assert (so_far == [1, 1, 1]) == (answer == sum(ops)) and row["answer"] == str(sum(ops))


def test_prm_steps_are_labelled_by_their_first_mistake(loaded):
    """Every row's labels follow from recomputing its steps; about 40% of rows are right, the rest
    have their first mistake at each step about equally often; held-out rows use held-out problems."""
    from collections import Counter

    for name in ("prm/train.jsonl", "prm/heldout.jsonl"):
        for row in loaded[name]:
            _check_worked_steps(row)
    kinds = Counter(tuple(r["labels"]) for r in loaded["prm/train.jsonl"])
    assert set(kinds) == {(1, 1, 1), (0, 0, 0), (1, 0, 0), (1, 1, 0)}
    assert 0.35 < kinds[(1, 1, 1)] / 4000 < 0.45 and all(0.15 < kinds[k] / 4000 < 0.25 for k in kinds if 0 in k)
    assert _prompts(loaded["prm/heldout.jsonl"]) <= _prompts(loaded["arithmetic/heldout.jsonl"])
    assert not _prompts(loaded["prm/heldout.jsonl"]) & _prompts(loaded["prm/train.jsonl"])


def test_the_given_first_attempts_are_wrong_answers_to_the_rl_problems():
    """rl_feedback.jsonl: rl.jsonl's rows, half with a first attempt that the math verifier
    judges wrong (the feedback environment would play a right one as an ordinary episode)."""
    from posttrain.verification import load_verifier

    rl = [json.loads(line) for line in (DATA / "arithmetic/rl.jsonl").read_text().splitlines()]
    rows = [json.loads(line) for line in (DATA / "arithmetic/rl_feedback.jsonl").read_text().splitlines()]
    assert [{k: v for k, v in r.items() if k != "first_attempt"} for r in rows] == rl
    given = [r for r in rows if r["first_attempt"] is not None]
    assert 0.45 < len(given) / len(rows) < 0.55
    verify = load_verifier("math", extract="last_number")
    assert not any(verify(r["first_attempt"], answer=r["answer"]).passed for r in given)


def test_the_heldout_feedback_rows_are_the_heldout_problems_each_after_a_wrong_answer():
    """heldout_feedback.jsonl: heldout.jsonl's rows, every one with a given wrong first attempt, so
    the feedback recipe's eval measures the second attempt on all 300 problems."""
    from posttrain.verification import load_verifier

    heldout = [json.loads(line) for line in (DATA / "arithmetic/heldout.jsonl").read_text().splitlines()]
    rows = [json.loads(line) for line in (DATA / "arithmetic/heldout_feedback.jsonl").read_text().splitlines()]
    assert [{k: v for k, v in r.items() if k != "first_attempt"} for r in rows] == heldout
    verify = load_verifier("math", extract="last_number")
    assert not any(verify(r["first_attempt"], answer=r["answer"]).passed for r in rows)
