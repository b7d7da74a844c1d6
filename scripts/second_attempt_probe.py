"""Second attempts on the same wrong first answers: self-correction measured without selection.

    .venv/bin/python scripts/second_attempt_probe.py runs/agent_feedback/sft/model runs/agent_feedback/grpo/model

The eval of ``recipes/agent_feedback.yaml`` reports the second attempt's accuracy over the
episodes whose first attempt was wrong, and which first attempts are wrong changes when RL changes
the first attempt: a model that fixes its easy slips is left with harder ones, so that number can
fall while self-correction improves (or rise while it worsens). This probe holds the first attempt
fixed. The first model given (the SFT model) samples ``--samples`` first answers per held-out
question at ``--temperature``; every distinct wrong one becomes a context [question, wrong answer,
the feedback environment's message], and every model answers each context greedily. The models are
compared on the same contexts: accuracy, and the paired counts (right only with this model, only
with the first).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _rows(path: Path, count: int | None) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows[:count] if count else rows


def wrong_first_answers(model: str, rows: list[dict], samples: int, temperature: float, seed: int,
                        max_tokens: int) -> list[tuple[dict, str, list[dict]]]:
    """(row, wrong first answer, second-attempt context) for each distinct wrong answer ``model``
    samples; the context's feedback message is the feedback environment's own."""
    from transformers import AutoTokenizer

    from posttrain.agents.builtin_envs import FeedbackEnvironment
    from posttrain.agents.environment import first_messages
    from posttrain.rl.rollout import SamplingConfig, make_engine, render_prompts

    tokenizer = AutoTokenizer.from_pretrained(model)
    engine = make_engine("hf", model, tokenizer)
    prompts = render_prompts(tokenizer, [first_messages(row["prompt"], "data") for row in rows])
    batch = engine.generate_ids(prompts, SamplingConfig(n=samples, temperature=temperature, max_tokens=max_tokens,
                                                        seed=seed))
    engine.close()
    contexts, seen = [], set()
    for index, text in zip(batch.prompt_index, batch.completions):
        row = rows[index]
        env = FeedbackEnvironment(extract="last_number")
        env.reset(row)
        result = env.step(text)
        if result.done or (index, text.strip()) in seen:  # right, or already a context
            continue
        seen.add((index, text.strip()))
        messages = [*first_messages(row["prompt"], "data"), {"role": "assistant", "content": text}, *result.messages]
        contexts.append((row, text, messages))
    return contexts


def second_attempts(model: str, contexts: list[tuple[dict, str, list[dict]]], max_tokens: int) -> list[bool]:
    """Whether ``model``'s greedy answer to each context is right (the math verifier, last number)."""
    from transformers import AutoTokenizer

    from posttrain.rl.rollout import SamplingConfig, make_engine, render_prompts
    from posttrain.verification import load_verifier

    tokenizer = AutoTokenizer.from_pretrained(model)
    engine = make_engine("hf", model, tokenizer)
    verify = load_verifier("math", extract="last_number")
    right = []
    for start in range(0, len(contexts), 64):
        chunk = contexts[start:start + 64]
        batch = engine.generate_ids(render_prompts(tokenizer, [m for _, _, m in chunk]),
                                    SamplingConfig(n=1, temperature=0.0, max_tokens=max_tokens))
        right += [bool(verify(text, answer=row["answer"]).passed) for (row, _, _), text in zip(chunk, batch.completions)]
    engine.close()
    return right


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="model folders; the first samples the wrong first answers")
    parser.add_argument("--data", type=Path, default=REPO / "data/arithmetic/heldout.jsonl")
    parser.add_argument("--rows", type=int, default=None, help="the first N rows only")
    parser.add_argument("--samples", type=int, default=4, help="first answers sampled per question")
    parser.add_argument("--temperature", type=float, default=0.6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args(argv)
    rows = _rows(args.data, args.rows)
    contexts = wrong_first_answers(args.models[0], rows, args.samples, args.temperature, args.seed, args.max_tokens)
    if not contexts:
        print(f"{args.models[0]} answered every sampled first attempt right: no contexts", file=sys.stderr)
        return 1
    results = {model: second_attempts(model, contexts, args.max_tokens) for model in args.models}
    base = results[args.models[0]]
    report = {"contexts": len(contexts), "questions": len({id(row) for row, _, _ in contexts}), "models": {}}
    print(f"{len(contexts)} wrong first answers ({report['questions']} questions) sampled by {args.models[0]}")
    for model, right in results.items():
        gained = sum(r and not b for r, b in zip(right, base))
        lost = sum(b and not r for r, b in zip(right, base))
        report["models"][model] = {"accuracy": sum(right) / len(right), "right": sum(right),
                                   "right_only_here": gained, "right_only_with_first": lost}
        print(f"  {model}: second attempt right {sum(right)}/{len(right)} = {sum(right) / len(right):.3f} "
              f"(only here {gained}, only with the first model {lost})")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
