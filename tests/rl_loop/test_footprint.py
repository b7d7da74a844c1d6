"""The step's memory estimate (posttrain.rl.loop.footprint): each term on hand-computed values, the
sizes read from a stage config, and `posttrain validate --memory` against the peak a real run
measures (within 25%), on a tiny model and on one with Qwen2's 151,936-token vocabulary."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import yaml
from rl_loop_helpers import write_jsonl

from posttrain.models import pad_vocabulary
from posttrain.rl.loop.footprint import ModelShape, StepShape, estimate, model_shape, step_shape

MODEL = ModelShape(params=1000, trainable=1000, layers=2, hidden=8, intermediate=16, kv_dim=4, vocab=10)
STEP = StepShape(rows=4, prompt_tokens=6, max_tokens=4, micro_tokens=40, micro_generated=16, chunk_bytes=2**20)


def test_terms_by_hand():
    """static: runtime 100, weights 4*1000, optimizer 8*1000 (12,100 B in all);
    generate: kv 4 rows x (6+4) x 2 layers x 2 x 4 x 4 B = 2,560; the prompts' forward
    4 x 6 x (4*8 + 3*16) x 4 = 7,680 outweighs sampling's 6 x 4 x 10 x 4 = 960, so only it counts;
    logprobs: 40 tokens x (4*8 + 3*16) x 4 = 12,800; logits 3 x (16 x 10 x 4) = 1,920;
    update: gradients 4,000; activations 40 x 2 x (14*8 + 4*16 + 2*4) x 4 = 58,880; logits 4 x 640."""
    e = estimate(MODEL, STEP, runtime_bytes=100)
    assert e.phases["generate"] == {"runtime": 100, "weights": 4000, "reference": 0, "engine copy": 0,
                                    "optimizer": 8000, "kv cache": 2560, "prompt forward": 7680, "sampling": 0}
    wide = ModelShape(**{**MODEL.__dict__, "vocab": 1000})  # 6 x 4 x 1000 x 4 = 96,000 > 7,680
    assert estimate(wide, STEP, 100).phases["generate"]["sampling"] == 96000
    assert e.total("logprobs") == 12100 + 12800 + 1920
    assert e.phases["update"]["activations"] == 58880 and e.phases["update"]["logits"] == 2560
    assert (e.peak_phase, e.peak) == ("update", 12100 + 4000 + 58880 + 2560)


def test_sharding_offload_checkpointing_and_the_critic():
    """ZeRO-3 over 2 processes halves weights, reference, moments and gradients; on CUDA with
    optimizer offload the moments leave the device and the runtime is not counted; checkpointing
    keeps h per layer plus one layer: 2*8 + 184 = 200 values a token; a critic adds its own."""
    sharded = StepShape(**{**STEP.__dict__, "zero": 3, "processes": 2, "reference": True})
    update = estimate(MODEL, sharded, 0).phases["update"]
    assert (update["weights"], update["reference"], update["optimizer"], update["gradients"]) == (2000, 2000, 4000, 2000)
    ddp = StepShape(**{**STEP.__dict__, "processes": 2})
    assert estimate(MODEL, ddp, 0).phases["update"]["gradient buckets"] == 4000  # DDP's all-reduce copy
    ref = ModelShape(**{**MODEL.__dict__, "params": 3000})
    with_ref = StepShape(**{**STEP.__dict__, "reference": True})
    assert estimate(MODEL, with_ref, 0, reference=ref).phases["update"]["reference"] == 12000
    full = ModelShape(**{**MODEL.__dict__, "chunked_logits": False})  # the model's own 40 x 10 logits
    assert estimate(full, STEP, 0).phases["update"]["logits"] == 4 * 40 * 10 * 4
    offload = StepShape(**{**STEP.__dict__, "zero": 2, "offload": "optimizer", "cuda": True})
    e = estimate(MODEL, offload, runtime_bytes=10**9)
    assert e.cuda and e.phases["update"]["optimizer"] == 0 and e.phases["update"]["runtime"] == 0
    ckpt = StepShape(**{**STEP.__dict__, "checkpointing": True})
    assert estimate(MODEL, ckpt, 0).phases["update"]["activations"] == 40 * 200 * 4
    critic = ModelShape(params=500, trainable=500, layers=2, hidden=8, intermediate=16, kv_dim=4, vocab=10)
    both = estimate(MODEL, STEP, 0, critic=critic).phases["update"]
    assert both["weights"] == 6000 and both["activations"] == 2 * 58880
    vllm = StepShape(**{**STEP.__dict__, "hf_engine": False})
    assert estimate(MODEL, vllm, 0).phases["generate"]["kv cache"] == 0


def test_sizes_from_the_config(tiny_model_dir, prompts_file):
    from posttrain.common.config import LoraConfig
    from posttrain.stages.grpo import GRPOConfig

    def config(**keys):
        return GRPOConfig.model_validate({"kind": "grpo", "model": str(tiny_model_dir), "data": str(prompts_file),
                                          "rewards": [{"function": "m:f"}], "prompts_per_step": 4, "group_size": 4,
                                          "max_tokens": 8, "engine": "hf", **keys})

    padded = step_shape(config(grad_accum=2), prompt_tokens=10, cuda=False)
    assert (padded.rows, padded.micro_tokens, padded.micro_generated) == (16, 8 * 18, 8 * 8)
    # packing.split_rows: whole rows as wide as the longest sequence (10 + 8), at least one a micro-batch
    packed = step_shape(config(max_tokens_per_microbatch=100), prompt_tokens=10, cuda=False)
    assert (packed.micro_tokens, packed.micro_generated) == (5 * 18, 5 * 8)
    tight = step_shape(config(max_tokens_per_microbatch=10), prompt_tokens=10, cuda=False)
    assert (tight.micro_tokens, tight.micro_generated) == (18, 8)
    zero3 = step_shape(config(kl_coef=0.1, distributed={"processes": 2, "zero": 3}), prompt_tokens=10, cuda=False)
    assert zero3.engine_copy and zero3.reference and zero3.processes == 2 and zero3.rows == 8
    lora = config(kl_coef=0.1, lora={"r": 4})
    assert not step_shape(lora, prompt_tokens=10, cuda=False).reference  # the base with adapters off
    shape = model_shape(str(tiny_model_dir), LoraConfig(r=4))
    full = model_shape(str(tiny_model_dir))
    assert shape.params > full.params > shape.trainable > 0 and full.trainable == full.params
    assert (full.layers, full.hidden, full.kv_dim, full.chunked_logits) == (2, 64, 32, True)
    critic = model_shape(str(tiny_model_dir), critic=True)  # a one-label token classifier, as the loop loads it
    assert critic.params == full.params + full.hidden  # the (tied) embedding once, plus a bias-free score head


def test_pad_vocabulary_refuses_to_drop_tokens(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="would drop tokens"):
        pad_vocabulary(tiny_model_dir, tmp_path / "small", 10)


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("vocab", [None, 151_936])
def test_validate_memory_within_a_quarter_of_the_measured_peak(tmp_path, tiny_model_dir, vocab):
    """As a user would: `posttrain validate --memory`, then `posttrain run`; the estimated peak is
    within 25% of the largest per-phase peak the run's summary records."""
    model = pad_vocabulary(tiny_model_dir, tmp_path / "big", vocab) if vocab else tiny_model_dir
    data = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"What is {i} plus {i + 3}?", "answer": str(2 * i + 3)}
                                                   for i in range(64)])
    recipe = {"name": "mem", "run_dir": str(tmp_path / "run"), "stages": {"rl": {
        "kind": "grpo", "variant": "grpo", "model": str(model), "data": str(data), "engine": "hf",
        "rewards": [{"verifier": "math", "options": {"extract": "last_number"}}], "prompts_per_step": 8,
        "group_size": 8, "max_tokens": 24, "total_steps": 3, "lr": 1e-5, "kl_coef": 0.0}}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    cli = [sys.executable, "-m", "posttrain"]
    validate = subprocess.run([*cli, "validate", str(path), "--memory"], capture_output=True, text=True, timeout=300)
    assert validate.returncode == 0, validate.stderr[-2000:]
    estimated = float(re.search(r"# rl memory \(estimate.*; peak (\d+) MB in", validate.stdout).group(1))
    run = subprocess.run([*cli, "run", str(path), "--no-progress"], capture_output=True, text=True, timeout=800)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "rl" / "stage.json").read_text())["summary"]
    kind = "cuda_mb_max" if "CUDA memory" in validate.stdout else "rss_mb_max"  # what the estimate is of
    measured = max(v for k, v in summary.items() if k.startswith("memory/") and k.endswith(kind))
    print(f"vocab {vocab}: estimated {estimated:.0f} MB, measured {measured:.0f} MB")
    assert abs(estimated - measured) <= 0.25 * measured, (estimated, measured, validate.stdout[-600:])
