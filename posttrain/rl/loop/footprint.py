"""The memory an RL step will need, estimated from the recipe before anything trains
(``posttrain validate --memory``), per training process and per phase of the step: the phases
whose measured peaks the loop logs as ``memory/PHASE/rss_mb_max`` (CPU) or ``cuda_mb_max``.

Terms (float32, 4 bytes a value: posttrain's precision on CPU; a bf16/fp16 run on CUDA holds about
half the activations and DeepSpeed's 16-bit copies, which the estimate does not model; N
parameters of the policy, N_t of them trainable):

==============  =================================================================================
runtime         the process with torch, transformers and posttrain imported (on CPU, measured in
                the validating process; CUDA figures count allocations only, so 0 there)
weights         4 N (+ the critic's); / processes under ZeRO-3
reference       4 N_ref when a KL term needs a frozen copy (none with LoRA: the base with adapters
                off); / processes under ZeRO-3 (partitioned like the policy); off the GPU with
                parameter offload
engine copy     4 N when the hf engine cannot share the training module (ZeRO-3)
optimizer       8 N_t, AdamW's two moments; / processes under ZeRO-2/3; off the GPU with offload
gradients       4 N_t while the update's backward runs; / processes under ZeRO-2/3; DDP over
                several processes keeps another 4 N_t in its all-reduce buckets
kv cache        rows x (longest prompt + max_tokens) x layers x 2 x kv_dim x 4 (hf engine; vLLM
                runs in its own process and is not counted)
sampling        6 x rows x vocab x 4: one step's logits, their float copy, softmax, float64
                cumulative sums (two units) and log-softmax (posttrain.rl.rollout.decode keeps
                nothing else);
                or the prompts' forward, rows x longest prompt x (4 h + 3 i) x 4, if larger
                (it runs before the first sampling step, so only the larger counts)
activations     tokens x layers x (14 h + 4 i + 2 kv_dim) x 4 kept for the backward of one
                micro-batch: the hidden-size tensors (norms, q, rotary q/k, attention in/out,
                residuals) and the MLP's four intermediate tensors of a Llama/Qwen2 decoder
                layer; with gradient checkpointing, h per layer plus one layer's worth. A no-grad
                forward holds about one layer's (4 h + 3 i) per token.
logits          the lm_head over generated tokens in chunks of ``logits_chunk_mb``: 4 chunks in
                the backward (logits, their tempered copy, softmax, gradient), 3 in a no-grad
                forward (logits, tempered copy, logsumexp's exponentials); families whose
                logits are not ``lm_head(hidden)`` (models.HIDDEN_LOGIT_FAMILIES) hold their
                full (tokens x vocabulary) logits instead
==============  =================================================================================

Tokens per micro-batch are the worst case: every completion runs to ``max_tokens`` after the
data's longest prompt (padded layout), or as many such sequences as ``max_tokens_per_microbatch``
holds, at least one (packed). Checked
against the measured peaks on tiny models, a real vocabulary included
(tests/rl_loop/test_footprint.py: within 25%).
"""
from __future__ import annotations

from dataclasses import dataclass, field

MB = 2**20
FLOAT = 4


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs of a model's architecture."""

    params: int
    trainable: int
    layers: int
    hidden: int
    intermediate: int
    kv_dim: int           # key/value heads x head dim
    vocab: int
    chunked_logits: bool = True   # the loop runs its lm_head in chunks (else: the model's full logits)

    def activation_values(self, checkpointing: bool) -> int:
        """Values per token kept for the backward (all layers)."""
        per_layer = 14 * self.hidden + 4 * self.intermediate + 2 * self.kv_dim
        if checkpointing:
            return self.layers * self.hidden + per_layer
        return self.layers * per_layer

    def forward_values(self) -> int:
        """Values per token alive at once in a no-grad forward (about one layer's)."""
        return 4 * self.hidden + 3 * self.intermediate


@dataclass(frozen=True)
class StepShape:
    """What the estimate needs of the stage config and the data."""

    rows: int                      # completions this process generates per step
    prompt_tokens: int             # the data's longest rendered prompt
    max_tokens: int
    micro_tokens: int              # tokens per micro-batch forward (padding included)
    micro_generated: int           # generated tokens per micro-batch (the lm_head's rows)
    chunk_bytes: int
    checkpointing: bool = False
    reference: bool = False        # a separate frozen reference copy
    engine_copy: bool = False      # the hf engine holds its own copy of the policy
    hf_engine: bool = True         # generation in this process
    processes: int = 1
    zero: int = 0
    offload: str = "none"
    cuda: bool = False


@dataclass
class Estimate:
    """Bytes per term per phase; ``peak`` is the largest phase."""

    phases: dict[str, dict[str, int]] = field(default_factory=dict)
    cuda: bool = False        # CUDA allocations (the runtime is not among them) rather than the resident set

    def total(self, phase: str) -> int:
        return sum(self.phases[phase].values())

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=self.total)

    @property
    def peak(self) -> int:
        return self.total(self.peak_phase)

    def describe(self) -> str:
        """One line: each phase's total, then the peak phase's terms (MB)."""
        totals = ", ".join(f"{p} {self.total(p) / MB:.0f} MB" for p in self.phases)
        terms = " + ".join(f"{k} {v / MB:.0f}" for k, v in self.phases[self.peak_phase].items() if v)
        return f"{totals}; peak {self.peak / MB:.0f} MB in {self.peak_phase} = {terms}"


def _static(model: ModelShape, step: StepShape, runtime_bytes: int, critic: ModelShape | None,
            reference: ModelShape | None) -> dict[str, int]:
    """What every phase holds: runtime, weights, reference, engine copy, optimizer moments."""
    shard = step.processes
    params = model.params + (critic.params if critic else 0)
    trainable = model.trainable + (critic.trainable if critic else 0)
    on_device = not (step.cuda and step.offload == "params")  # offloaded parameters live in host memory
    ref = reference or model
    return {"runtime": 0 if step.cuda else runtime_bytes,
            "weights": FLOAT * params // (shard if step.zero == 3 else 1) if on_device else 0,
            "reference": FLOAT * ref.params // (shard if step.zero == 3 else 1) if step.reference and on_device else 0,
            "engine copy": FLOAT * model.params if step.engine_copy else 0,
            "optimizer": 0 if step.cuda and step.offload != "none"
            else 2 * FLOAT * trainable // (shard if step.zero >= 2 else 1)}


def estimate(model: ModelShape, step: StepShape, runtime_bytes: int, critic: ModelShape | None = None,
             reference: ModelShape | None = None) -> Estimate:
    """The step's memory per phase (see the module docstring for each term); ``reference`` is the
    frozen reference's shape where it is another model than the policy.

    >>> m = ModelShape(params=1000, trainable=1000, layers=2, hidden=8, intermediate=16, kv_dim=4, vocab=10)
    >>> s = StepShape(rows=4, prompt_tokens=6, max_tokens=4, micro_tokens=40, micro_generated=16, chunk_bytes=2**20)
    >>> e = estimate(m, s, runtime_bytes=0)
    >>> e.phases["update"]["activations"] == 40 * 2 * (14 * 8 + 4 * 16 + 2 * 4) * 4
    True
    """
    static = _static(model, step, runtime_bytes, critic, reference)
    kv = step.rows * (step.prompt_tokens + step.max_tokens) * model.layers * 2 * model.kv_dim * FLOAT
    prompt_forward = step.rows * step.prompt_tokens * model.forward_values() * FLOAT
    sampling = 6 * step.rows * model.vocab * FLOAT
    generate = {**static, "kv cache": kv, "prompt forward": prompt_forward if prompt_forward > sampling else 0,
                "sampling": sampling if sampling >= prompt_forward else 0}  # one after the other: the larger counts
    if not step.hf_engine:  # vLLM generates in its own process
        generate.update({"kv cache": 0, "prompt forward": 0, "sampling": 0})
    if model.chunked_logits:
        logits = min(step.chunk_bytes, step.micro_generated * model.vocab * FLOAT)
    else:  # the model's own (rows x width x vocabulary) logits
        logits = step.micro_tokens * model.vocab * FLOAT
    logprobs = {**static, "activations": step.micro_tokens * model.forward_values() * FLOAT, "logits": 3 * logits}
    trainable = model.trainable + (critic.trainable if critic else 0)
    saved = sum(m.activation_values(step.checkpointing) for m in [model] + ([critic] if critic else []))
    update = {**static, "gradients": FLOAT * trainable // (step.processes if step.zero >= 2 else 1),
              "gradient buckets": FLOAT * trainable if step.processes > 1 and step.zero == 0 else 0,  # DDP's copy
              "activations": step.micro_tokens * saved * FLOAT, "logits": 4 * logits}
    return Estimate(phases={"generate": generate, "logprobs": logprobs, "update": update}, cuda=step.cuda)


def _config_value(config, names: tuple[str, ...], path: str):
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    raise ValueError(f"{path}/config.json has none of {', '.join(names)}: cannot size this architecture")


def model_shape(path: str, lora=None, critic: bool = False) -> ModelShape:
    """The shape of the model in ``path`` (its config only: the weights are not read), as a causal
    LM or, for a PPO critic, as the loop loads it (a one-label token classifier); ``lora`` counts
    adapters as the trainable parameters. ValueError naming the keys for a config it cannot size."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForTokenClassification

    from posttrain.rl.loop.models import HIDDEN_LOGIT_FAMILIES

    config = AutoConfig.from_pretrained(path)
    if critic:  # as models.load_critic configures it
        config.num_labels, config.token_classification_bias = 1, False
    with torch.device("meta"):
        model = (AutoModelForTokenClassification if critic else AutoModelForCausalLM).from_config(config)
    if lora is not None:
        from posttrain.models.lora import add_adapters

        model = add_adapters(model, lora)
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    text = config.get_text_config(decoder=True)
    hidden = _config_value(text, ("hidden_size", "n_embd", "d_model"), path)
    heads = _config_value(text, ("num_attention_heads", "n_head"), path)
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    intermediate = getattr(text, "intermediate_size", None) or getattr(text, "ffn_dim", None) \
        or getattr(text, "n_inner", None) or 4 * hidden
    return ModelShape(params=params, trainable=trainable,
                      layers=_config_value(text, ("num_hidden_layers", "n_layer", "num_layers"), path),
                      hidden=hidden, intermediate=intermediate, kv_dim=kv_heads * head_dim, vocab=text.vocab_size,
                      chunked_logits=getattr(config, "model_type", None) in HIDDEN_LOGIT_FAMILIES)


def step_shape(config, prompt_tokens: int, cuda: bool) -> StepShape:
    """The step's sizes for one training process of the stage ``config`` (an OnlineRLConfig)."""
    dist = config.distributed
    processes = dist.processes * dist.nodes
    plan = config.batch_plan(processes)
    rows = min(plan.completions_per_process, config.engine_options.get("batch_size") or plan.completions_per_process)
    width = prompt_tokens + config.response_budget
    if config.max_tokens_per_microbatch is not None:  # packing.split_rows: whole rows of `width`, at least one
        rows_per_micro = min(max(1, config.max_tokens_per_microbatch // width), plan.minibatch)
        micro_tokens, micro_generated = rows_per_micro * width, rows_per_micro * config.response_budget
    else:
        micro_tokens, micro_generated = plan.micro_batch * width, plan.micro_batch * config.response_budget
    hf = config.engine == "hf"
    return StepShape(rows=rows, prompt_tokens=prompt_tokens, max_tokens=config.response_budget, micro_tokens=micro_tokens,
                     micro_generated=micro_generated, chunk_bytes=config.logits_chunk_mb * MB,
                     checkpointing=config.gradient_checkpointing,
                     reference=config.needs_reference and (config.lora is None or config.ref_model is not None),
                     engine_copy=hf and dist.zero == 3 and "model" not in config.engine_options, hf_engine=hf,
                     processes=processes, zero=dist.zero, offload=dist.offload, cuda=cuda)


def runtime_bytes() -> int:
    """This process's resident set once the modules an RL stage runs on are imported (CPU)."""
    import accelerate  # noqa: F401
    import transformers  # noqa: F401

    import posttrain.rl.loop.trainer  # noqa: F401
    from posttrain.common.memory import current_rss_mb

    return int((current_rss_mb() or 0) * MB)


def plan_memory(config) -> Estimate:
    """The estimate for an RL stage ``config`` whose model directory exists (ValueError naming the
    path otherwise: it is an earlier stage's output that has not been written yet)."""
    from pathlib import Path

    import torch
    from transformers import AutoTokenizer

    from posttrain.data import load_dataset_spec
    from posttrain.rl.rollout.types import longest_prompt

    for path in filter(None, (config.model, getattr(config, "critic_model", None), config.ref_model)):
        if not (Path(path) / "config.json").exists():
            raise ValueError(f"{path} does not exist yet (an earlier stage writes it); validate --memory once it does")
    tokenizer = AutoTokenizer.from_pretrained(config.model)
    train, _ = load_dataset_spec(config.data, type(config).data_formats)
    longest = longest_prompt(tokenizer, list(train["prompt"]))
    critic = model_shape(config.critic_model or config.model, critic=True) if config.uses_critic else None
    step = step_shape(config, longest, torch.cuda.is_available())
    reference = model_shape(config.ref_model) if step.reference and config.ref_model else None
    return estimate(model_shape(config.model, config.lora), step, runtime_bytes(), critic, reference)
