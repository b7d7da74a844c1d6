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
import sys
from pathlib import Path

import torch
from posttrain.verifiers.math import math_verifier
from transformers import AutoTokenizer

from posttrain.rl.algos import aggregate, group_normalized, ppo_clip
from posttrain.rl.loop.models import ActorCritic, load_policy
from posttrain.rl.loop.tokens import collate, padded_forward
from posttrain.rl.rollout import HFEngine, RolloutBatch, SamplingConfig, render_prompts

REPO = Path(__file__).resolve().parent.parent


def _rows(path: Path, count: int) -> list[dict]:
    with open(path) as handle:
        return [json.loads(line) for _, line in zip(range(count), handle)]


def _response_logprobs(model: ActorCritic, batch: RolloutBatch, pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The loop's own layout and forward: (log-probs (B, T), response mask (B, T))."""
    t = collate(batch, pad_token_id)
    logprobs, _, _ = padded_forward(model, t.input_ids, t.attention_mask, t.position_ids, t.prompt_width,
                                    temperature=1.0)
    return logprobs, t.response_mask


def answer_logprobs(model: ActorCritic, tok, rows: list[dict]) -> torch.Tensor:
    """(N,) log p(answer + end-of-turn | prompt) under ``model``, teacher-forced."""
    answers = [tok(r["answer"] + tok.eos_token, add_special_tokens=False)["input_ids"] for r in rows]
    batch = RolloutBatch(render_prompts(tok, [r["prompt"] for r in rows]), answers, [], ["stop"] * len(rows),
                         [r["answer"] for r in rows], list(range(len(rows))))
    logprobs, mask = _response_logprobs(model, batch, tok.pad_token_id)
    return (logprobs * mask).sum(1)


def flat_grad(model, loss: torch.Tensor) -> torch.Tensor:
    model.zero_grad()
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def grpo_gradient(model: ActorCritic, tok, rows: list[dict], group: int, max_tokens: int, seed: int):
    """The gradient of posttrain's GRPO loss (on-policy, ratio 1) from ``group`` samples per prompt,
    sampled by the hf engine and scored by the `math` verifier, as in the RL loop."""
    engine = HFEngine(None, tok, model=model.policy)
    batch = engine.generate([r["prompt"] for r in rows], SamplingConfig(n=group, max_tokens=max_tokens, seed=seed))
    rewards = torch.tensor([float(math_verifier(text, answer=rows[i]["answer"]).passed)
                            for text, i in zip(batch.completions, batch.prompt_index)])
    advantages, _ = group_normalized(rewards, group_size=group)
    logprobs, mask = _response_logprobs(model, batch, engine.pad_token_id)
    loss_t, _ = ppo_clip(logprobs, logprobs.detach(), advantages, clip_ratio_low=0.2, clip_ratio_high=0.28,
                         response_mask=mask)
    return rewards.mean().item(), flat_grad(model, aggregate(loss_t, mask, "token-mean"))


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
    model = ActorCritic(load_policy(model_dir)).eval()
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
