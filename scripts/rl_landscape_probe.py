"""Probe the RL objective around a checkpoint: how good is the policy gradient, how far can one step go?

    .venv/bin/python scripts/rl_landscape_probe.py runs/quickstart/sft/model
    .venv/bin/python scripts/rl_landscape_probe.py MODEL --prompts 128 --samples 8 32 --json out.json

For an `rl` dataset whose answers are short (the bundled arithmetic), the expected reward of
sampling at temperature 1 is known exactly: J = mean over prompts of p(answer tokens + <|im_end|>),
teacher-forced (completions that reach the same number another way, e.g. "035", are ignored; for
the quickstart's SFT model J matches the sampled reward to 0.001). So is its gradient. The probe
prints, on a fixed set of training prompts and on held-out prompts:

* the cosine between the exact gradient of J and (a) the GRPO gradient that posttrain's own loss
  gives from ``G`` sampled completions per prompt (group-normalised advantages, PPO-clip at
  ratio 1, token-mean), (b) the SFT gradient (mean log-likelihood of the answers);
* J after one step of plain gradient ascent of a given norm along each direction, and after one
  step of ``lr * sign(gradient)``, which is what Adam's first update is.

On the quickstart's 0.9M-parameter SFT model this is what shows that RL's trouble there is the
landscape, not the gradient estimate (docs/quickstart.md).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from posttrain.rl.algos import aggregate, group_normalized, ppo_clip

REPO = Path(__file__).resolve().parent.parent


def _rows(path: Path, count: int) -> list[dict]:
    with open(path) as handle:
        return [json.loads(line) for _, line in zip(range(count), handle)]


def answer_logprobs(model, tok, rows: list[dict]) -> torch.Tensor:
    """(N,) log p(answer + end-of-turn | prompt) under ``model``, teacher-forced."""
    prompts = [tok.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True) for r in rows]
    targets = [r["answer"] + tok.eos_token for r in rows]
    prompt_ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    target_ids = [tok(t, add_special_tokens=False)["input_ids"] for t in targets]
    width = max(len(p) + len(t) for p, t in zip(prompt_ids, target_ids))
    ids = torch.full((len(rows), width), tok.pad_token_id)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    gather = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, (p, t) in enumerate(zip(prompt_ids, target_ids)):
        ids[i, :len(p) + len(t)] = torch.tensor(p + t)
        mask[i, :len(p) + len(t)] = 1
        gather[i, len(p):len(p) + len(t)] = True
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    token_lp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return (token_lp * gather[:, 1:]).sum(1)


def flat_grad(model, loss: torch.Tensor) -> torch.Tensor:
    model.zero_grad()
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def grpo_gradient(model, tok, rows: list[dict], group: int, max_tokens: int, seed: int):
    """The gradient of posttrain's GRPO loss (on-policy, ratio 1) from ``group`` samples per prompt."""
    tok.padding_side = "left"
    prompts = [tok.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True)
               for r in rows for _ in range(group)]
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(**enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                             max_new_tokens=max_tokens, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id)
    start = enc["input_ids"].shape[1]
    completion = out[:, start:]
    ended = (completion == tok.eos_token_id).long().cumsum(1)
    response_mask = ((ended == 0) | ((ended == 1) & (completion == tok.eos_token_id))).float()
    texts = tok.batch_decode(completion, skip_special_tokens=True)
    answers = [r["answer"] for r in rows for _ in range(group)]
    rewards = torch.tensor([float((re.findall(r"\d+", t) or [""])[-1] == a) for t, a in zip(texts, answers)])
    advantages, _ = group_normalized(rewards, group_size=group)
    attention = torch.cat([enc["attention_mask"], response_mask.long()], 1)
    logits = model(input_ids=out, attention_mask=attention).logits[:, start - 1:-1].float()
    logprobs = torch.log_softmax(logits, -1).gather(-1, completion[..., None]).squeeze(-1)
    loss_t, _ = ppo_clip(logprobs, logprobs.detach(), advantages, clip_ratio_low=0.2, clip_ratio_high=0.28,
                         response_mask=response_mask)
    loss = aggregate(loss_t, response_mask, "token-mean")
    return rewards.mean().item(), flat_grad(model, loss)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine in float64; 0 when either vector is zero (a GRPO batch whose groups all tie).

    By hand because F.cosine_similarity clamps the norms' product at 1e-8, and J (so its gradient)
    is ~1e-9 on an untrained model."""
    a, b = a.double(), b.double()
    norms = a.norm() * b.norm()
    return 0.0 if norms == 0 else (a @ b / norms).item()


def objective_after(model, base: list[torch.Tensor], delta: torch.Tensor, sets: dict) -> dict:
    """J on each prompt set after moving the parameters from ``base`` by ``delta``; restores them."""
    with torch.no_grad():
        offset = 0
        for p, b in zip(model.parameters(), base):
            p.copy_(b + delta[offset:offset + p.numel()].view_as(p))
            offset += p.numel()
        values = {name: answer_logprobs(model, *args).exp().mean().item() for name, args in sets.items()}
        for p, b in zip(model.parameters(), base):
            p.copy_(b)
    return values


def probe(model_dir: str, prompts: int, samples: list[int], norms: list[float], lrs: list[float],
          max_tokens: int, seed: int) -> dict:
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    train = _rows(REPO / "data" / "arithmetic" / "rl.jsonl", prompts)
    held = _rows(REPO / "data" / "arithmetic" / "heldout.jsonl", 300)
    sets = {"train": (tok, train), "heldout": (tok, held)}
    ascent = {"exact J": flat_grad(model, -answer_logprobs(model, tok, train).exp().mean()),
              "SFT": flat_grad(model, -answer_logprobs(model, tok, train).mean())}
    result = {"model": model_dir, "prompts": prompts, "cosine_with_exact": {}, "sampled_reward": {}}
    for group in samples:
        reward, grad = grpo_gradient(model, tok, train, group, max_tokens, seed)
        ascent[f"GRPO G={group}"] = grad
        result["sampled_reward"][group] = reward
    exact = ascent["exact J"]
    for name, grad in ascent.items():
        result["cosine_with_exact"][name] = _cosine(grad, exact)
    base = [p.detach().clone() for p in model.parameters()]
    result["J"] = objective_after(model, base, torch.zeros_like(exact), sets)
    result["gradient_norm"] = {name: grad.norm().item() for name, grad in ascent.items()}
    result["gradient_step"] = {name: {norm: objective_after(model, base, -norm * grad / grad.norm(), sets)
                                      for norm in norms} for name, grad in ascent.items() if grad.norm() > 0}
    result["sign_step"] = {name: {lr: objective_after(model, base, -lr * torch.sign(grad), sets) for lr in lrs}
                           for name, grad in ascent.items()}
    return result


def _print(result: dict) -> None:
    print(f"J at the checkpoint: train {result['J']['train']:.4f}, held-out {result['J']['heldout']:.4f}; "
          f"sampled reward {result['sampled_reward']}")
    for name, cos in result["cosine_with_exact"].items():
        print(f"  {name:<12} |grad| {result['gradient_norm'][name]:7.3f}  cosine with exact {cos:+.3f}")
    for kind, label in (("gradient_step", "step of norm"), ("sign_step", "sign step, lr")):
        for name, steps in result[kind].items():
            cells = "  ".join(f"{size:g}: {v['train']:.4f}/{v['heldout']:.4f}" for size, v in steps.items())
            print(f"  {label} along {name:<12} J train/held-out  {cells}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="HF model directory (e.g. runs/quickstart/sft/model)")
    parser.add_argument("--prompts", type=int, default=128, help="training prompts (from data/arithmetic/rl.jsonl)")
    parser.add_argument("--samples", type=int, nargs="+", default=[8, 32], help="completions per prompt for GRPO")
    parser.add_argument("--norms", type=float, nargs="+", default=[1e-4, 1e-3, 3e-3, 1e-2])
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-5, 3e-5, 1e-4])
    parser.add_argument("--max-tokens", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)
    result = probe(args.model, args.prompts, args.samples, args.norms, args.lrs, args.max_tokens, args.seed)
    _print(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
