"""The knobs of the online RL loop: one documented key per knob, shared by the `grpo` and `ppo` kinds.

Every algorithmic choice is a value here and a small registered function in
:mod:`posttrain.rl.algos`, which declares the keys it reads and its properties (the knob table); a
"variant" (GRPO, Dr.GRPO, DAPO, GSPO, CISPO, RLOO, REINFORCE++, PPO) is a preset of these values (see
:mod:`posttrain.stages.grpo`), never a branch in the loop. Names are checked against the algos
registries, so validating an RL stage imports torch (about 2 s).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from posttrain.agents.config import EnvironmentConfig
from posttrain.common.config import (
    OptimizerConfig,
    StrictModel,
    lr_field,
    rebase_dir,
    rebase_file_ref,
    save_steps_field,
)
from posttrain.common.runtime import cuda_present, resolve_engine, sampler_precision_differs
from posttrain.data import DataSpec
from posttrain.rl.presets import preset_values
from posttrain.rl.rewards import RewardChannelConfig


@dataclass(frozen=True)
class BatchPlan:
    """How one step's batch splits over processes, minibatches and micro-batches: derived once
    from the config and the process count, checked in the schema (so `posttrain validate` rejects
    a split that cannot run) and read by the loop, never re-derived.

    >>> plan = BatchPlan.derive(prompts_per_step=8, group_size=4, processes=2, minibatch_size=8, grad_accum=2)
    >>> plan.completions_per_process, plan.minibatch, plan.micro_batch, plan.minibatches
    (16, 8, 4, 2)
    """

    processes: int                 # over all nodes
    prompts_per_process: int
    completions_per_process: int   # prompts_per_process x group_size
    minibatch: int                 # completions per optimizer step, per process
    micro_batch: int               # completions per forward/backward pass
    minibatches: int               # optimizer steps per epoch

    @classmethod
    def derive(cls, *, prompts_per_step: int, group_size: int, processes: int, minibatch_size: int | None,
               grad_accum: int) -> BatchPlan:
        """The plan, or ValueError naming the keys whose values do not divide."""
        if prompts_per_step % processes:
            raise ValueError(f"prompts_per_step {prompts_per_step} must be a multiple of the {processes} processes "
                             f"(distributed.processes x distributed.nodes): each process takes an equal share")
        per_process = prompts_per_step // processes * group_size
        minibatch = minibatch_size or per_process
        if minibatch % grad_accum:
            raise ValueError(f"minibatch_size {minibatch} must be a multiple of grad_accum {grad_accum}"
                             + ("" if minibatch_size else " (minibatch_size defaults to the whole per-process batch)"))
        if per_process % minibatch:
            raise ValueError(f"minibatch_size {minibatch} must divide the {per_process} completions each process "
                             f"trains on per step (prompts_per_step x group_size / distributed.processes)")
        return cls(processes=processes, prompts_per_process=prompts_per_step // processes,
                   completions_per_process=per_process, minibatch=minibatch, micro_batch=minibatch // grad_accum,
                   minibatches=per_process // minibatch)


class RolloutConfig(StrictModel):
    """Where rollouts are generated (posttrain.rl.rollout.service) and how far ahead (posttrain.rl.loop.pipeline)."""

    mode: Literal["colocated", "server"] = Field("colocated", description="colocated: the engine lives in the trainer's process (the hf engine samples with the training module itself); server: `workers` rollout worker processes, each with its own engine, weights synced through shared memory after every step (docs/distributed.md).")
    workers: int = Field(1, ge=1, description="server: rollout worker processes per training process; a step's prompts are split over them by groups.")
    max_staleness: int = Field(0, ge=0, description="server: asynchronous training. The next this-many steps' batches are generated while the trainer updates; a batch sampled with weights more than this many updates old is never trained on (dropped and sampled again, counted). 0 = synchronous, the colocated loop's results. With weight_transport copy the workers' weights take k float32 copies in shared memory.")
    threads: int | None = Field(None, ge=1, description="server: torch threads of each worker process (None = torch's default). On a CPU machine give trainer and workers separate cores, e.g. threads 1 and OMP_NUM_THREADS=1 for the trainer on 2 cores.")
    timeout_s: float = Field(600.0, gt=0, description="server: how long the trainer waits for a worker's answer to one request (a generation, a whole batch of episodes with an environment, a weight load) before the stage stops naming the worker.")
    max_restarts: int = Field(3, ge=0, description="server: a worker that dies is restarted (from the last synced weights) and its unanswered requests sent again, at most this many times per worker; then the stage stops naming it.")
    openai_endpoint: bool = Field(False, description="server: each worker also serves an OpenAI-compatible chat-completions endpoint on 127.0.0.1 (POST /v1/chat/completions, GET /v1/models) with the policy it holds, recording each request's token ids and log-probs for the trainer (posttrain.rl.rollout.openai_endpoint).")
    endpoint_port: int = Field(0, ge=0, le=65535, description="openai_endpoint: worker i listens on this port + i (0 = any free port; the URLs are in the stage log).")
    weight_transport: Literal["copy", "broadcast"] = Field("copy", description="server: how a weight sync reaches the workers. copy: the trainer writes a float32 copy the workers read (shared memory; Ray's object store with placement ray), so the sync returns at once and a worker that dies restarts from that copy. broadcast: each worker receives the trainer's tensors over its own two-rank group (NCCL GPU to GPU where trainer and worker sit on different GPUs, else gloo), with no copy in host memory; the sync waits for the requests already queued before the load (docs/distributed.md).")
    placement: Literal["local", "ray"] = Field("local", description="server: local (worker processes on the trainer's machine, weights through shared memory) or ray (workers as Ray actors placed by a Ray placement group on any node of the cluster, weights through Ray's object store; docs/distributed.md).")
    ray_address: str | None = Field(None, description="placement ray: the cluster to join: HOST:PORT of a running head (`ray start --head`), auto (the one on this machine), or None (start a local Ray).")
    worker_resources: dict[str, float] = Field(default_factory=lambda: {"CPU": 1.0}, description="placement ray: the Ray resources of one worker's bundle, e.g. {CPU: 4, GPU: 1} or a custom resource a node was started with ({rollout: 1}).")
    trainer_resources: dict[str, float] = Field(default_factory=dict, description="placement ray: resources reserved for the trainer on its own node (a first bundle in the placement group), so no worker is placed on them; Ray must place that bundle on the trainer's node (use a custom resource only that node has). Empty = none reserved.")
    ray_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field("PACK", description="placement ray: the placement group's strategy over its bundles (Ray's names).")


class CurriculumConfig(StrictModel):
    """Which prompts a step draws (posttrain.rl.loop.curriculum; the math: posttrain.rl.algos.curriculum)."""

    sampler: Literal["uniform", "dump"] = Field("uniform", description="uniform: the data's rows in a seeded order (as without a curriculum); dump: each prompt's source drawn by DUMP's softmax over UCB scores of the sources' recent mean |advantage| (arXiv 2504.09710), then the source's next prompt.")
    source_column: str = Field("source", description="dump: the data column naming each row's source (distribution).")
    dump_window: int = Field(300, ge=1, description="dump: a source's learnability is the mean |advantage| of its last this many completions (DUMP's code: 300).")
    dump_exploration: float = Field(1.0, ge=0, description="dump: c, the weight of the UCB exploration bonus sqrt(2 ln(N+1) / (n_j+1)).")
    dump_temperature: float = Field(0.1, gt=0, description="dump: tau of the softmax over the UCB scores (DUMP's code: 0.1).")
    skip_settled: bool = Field(False, description="Online difficulty filter: skip a prompt whose recent pass rate is 0 or 1 (its group would have zero advantage), before generating; DAPO's dynamic sampling drops such groups after.")
    settled_memory: int = Field(4, ge=1, description="skip_settled: a prompt's recent pass rate is the mean over its last this many groups.")
    settled_patience: int = Field(1, ge=1, description="skip_settled: a settled prompt is skipped this many times when its turn comes (about one epoch each), then drawn again to re-measure it.")
    pass_reward: float = Field(1.0, allow_inf_nan=False, description="skip_settled: a completion passes when its reward (the channels' weighted sum) is at least this. With graded rewards a group that all passes may still differ in reward (and advantage): the filter skips it anyway.")


class OnlineRLConfig(OptimizerConfig):
    """Online RL from a prompt dataset: rollout -> score -> advantages -> clipped policy update.
    The optimiser's keys (grad_accum, warmup_steps, weight_decay, max_grad_norm,
    gradient_checkpointing) are :class:`~posttrain.common.config.OptimizerConfig`'s."""

    # data and rewards
    data: DataSpec = Field(description="Prompts: an `rl` dataset (a `prompt` column, string or messages, plus any columns the rewards read by name, e.g. `answer`).")
    rewards: list[RewardChannelConfig] = Field(min_length=1, description="Reward channels, summed with their weights: {function: 'module:attr' | './file.py:fn'}, {verifier: NAME}, or {reward_model: PATH}; {process_reward_model: PATH} adds per-step rewards at the step ends (token-level estimators); see posttrain/rl/rewards.py.")
    ref_model: str | None = Field(None, description="Reference model for the KL term (default: this stage's input model, frozen). Not loaded when kl_coef is 0.")

    # rollout
    engine: Literal["auto", "hf", "vllm"] = Field("auto", validate_default=True, description="Rollout engine: auto (vllm where CUDA and vllm are present, else hf; the resolved choice is what `posttrain validate` prints and stage.json records), hf (batched transformers generate; fastest for tiny models on CPU) or vllm.")
    engine_options: dict = Field(default_factory=dict, description="Extra keyword arguments for the rollout engine (see posttrain.rl.rollout.make_engine).")
    lora_sync: Literal["adapter", "merged"] = Field("adapter", description="With lora and engine vllm: send vLLM the adapter alone after each update (vLLM's LoRA support, versioned so no request is served by a stale adapter), or the merged weights.")
    engine_sleep: bool = Field(False, description="vllm on CUDA: put the engine to sleep (vLLM sleep mode level 1: KV cache freed, weights parked in CPU memory) from the end of generation until the weight sync, so the update gets the GPU memory; the hf engine has nothing to free.")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="Rollout placement: {mode: colocated} (default) or {mode: server, workers: N, max_staleness: k} (rollout workers in their own processes; k > 0 trains asynchronously on batches at most k updates old); see docs/distributed.md.")
    sync_probe_prompts: int = Field(4, ge=0, description="After every weight sync, trainer and rollout engine score the first this many prompts; their mean log-prob gap is logged as sync/probe_gap (0 = off; engines that share the trainer's module have nothing to probe).")
    sync_probe_max_gap: float = Field(0.1, gt=0, description="Stop the stage when sync/probe_gap (mean absolute per-token log-prob difference, nats) exceeds this: the engine is not serving the trainer's weights. Float32 engines on CPU measure ~1e-7; 0.1 leaves room for a 16-bit CUDA engine's rounding, a bound not yet measured on a GPU (benchmarks/gpu_smoke.py reports it).")
    prompts_per_step: int = Field(8, ge=1, description="Prompts per training step, over all processes (each yields group_size completions).")
    group_size: int = Field(8, ge=1, description="Completions sampled per prompt (GRPO's G, vLLM's n); group advantages compare them.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature; the trainer's log-probs use the same temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling threshold (1 = off).")
    top_k: int = Field(-1, description="Top-k sampling (-1 = off).")
    max_tokens: int = Field(64, ge=1, description="Max new tokens per completion; a completion that hits it is `truncated`.")
    stop: list[str] = Field(default_factory=list, description="Extra stop strings for generation.")
    curriculum: CurriculumConfig | None = Field(None, description="Steer which prompts each step draws (posttrain.rl.loop.curriculum): {sampler: dump, source_column: source} draws data sources by DUMP's UCB over their recent mean |advantage|; {skip_settled: true} skips prompts whose recent pass rate is 0 or 1. None = the data in a seeded order.")
    environment: EnvironmentConfig | None = Field(None, description="Multi-turn episodes with tools or an environment instead of single completions (posttrain.agents; docs/agents.md): {name: tools, tools: [calculator], max_turns: 4}. Only the model's tokens are trained on; the reward channels score the final turn.")

    # schedule
    total_steps: int = Field(100, ge=1, description="Training steps (one rollout batch and its updates each).")
    ppo_epochs: int = Field(1, ge=1, description="Passes over each rollout batch (1 = on-policy; the ratio is then 1 on the first minibatch).")
    minibatch_size: int | None = Field(None, ge=1, description="Completions per optimizer step, per process (default: the whole step batch, one optimizer step per epoch).")
    lr: float = lr_field(1e-5, "Of the policy; see lr_scheduler.")
    save_steps: int = save_steps_field(10)
    max_tokens_per_microbatch: int | None = Field(None, ge=1, description="Pack each minibatch's completions (prompt + response, no padding) into rows and split them into micro-batches of at most this many tokens, instead of grad_accum equal row slices: no compute on padding, memory bounded by tokens. Results equal the padded update's (posttrain.rl.loop.packing). None = padded micro-batches.")
    logits_chunk_mb: int = Field(256, ge=1, description="The lm_head runs over the generated tokens in chunks of at most this many MiB of float32 logits (recomputed per chunk in the backward), so no forward materialises the (batch x length x vocabulary) logits.")
    retain_freed_memory: bool = Field(False, description="Linux/glibc: the C allocator keeps the memory tensors free for reuse during the stage (and in rollout.mode server its workers do) instead of unmapping it and faulting it in again at every forward/backward (posttrain.common.memory.retained_heap). On CPU the update runs much faster where page faults are dear (W1 in a VM: 4.2 -> 3.0 s per update), and the resident set stays at its high-water mark plus fragmentation (W1: +38% peak RSS; docs/memory.md). `validate --memory` does not count that fragmentation.")
    keep_checkpoints: int = Field(2, ge=1, description="How many recent checkpoints to keep on disk.")
    save_model_steps: int = Field(0, ge=0, description="Also write the policy as a plain HF model (with its tokenizer) to models/step-NNNNNN/ in the stage folder every this many steps; unlike checkpoints (removed when the stage succeeds) they stay, e.g. each RAFT iteration's model. 0 = off.")
    save_rollouts: bool = Field(False, description="Write each step's completions to rollouts/step-NNNNNN.rankR.jsonl in the stage folder (one file per step and process): prompt, completion, reward per channel, advantage and whether it entered the loss, e.g. the data of each RAFT iteration (verl: trainer.rollout_data_dir).")

    # advantages and loss
    advantage_estimator: str = Field("group_normalized", description="A registered advantage estimator (posttrain.rl.algos.register_advantage_estimator): group_normalized (GRPO), rloo, reinforce_pp, gae (PPO, needs a critic), gigpo (multi-turn episodes: episode plus step-group advantages), raft (1 for every completion reward_filter keeps: RAFT's SFT target), or your own.")
    advantage_scale: Literal["group", "batch", "none"] = Field("group", description="group_normalized only: divide by the group's std, the batch's std, or not at all (Dr.GRPO).")
    policy_loss: str = Field("ppo_clip", description="A registered policy loss (posttrain.rl.algos.register_policy_loss): ppo_clip (PPO clipped surrogate; GSPO at ratio_level sequence), gspo, cispo (clipped, detached IS weights), decoupled_ppo (AReaL's objective for stale samples: ppo_clip around the trainer's policy, weighted by pi_prox/pi_sampler; with rollout.max_staleness), pg (-A log pi, no ratio: with raft the SFT loss), or your own.")
    ratio_level: Literal["token", "sequence"] = Field("token", description="Importance ratio per token (PPO/GRPO) or per sequence, length-normalised (GSPO).")
    clip_ratio_low: float = Field(0.2, ge=0, description="Lower clip range: the ratio is clipped at 1 - clip_ratio_low.")
    clip_ratio_high: float = Field(0.2, ge=0, description="Upper clip range: 1 + clip_ratio_high (DAPO's clip-higher raises it to 0.28).")
    dual_clip_c: float | None = Field(None, gt=1, description="Dual-clip PPO bound c > 1 on negative-advantage tokens (None = off).")
    cispo_weight_max: float = Field(5.0, gt=0, description="cispo only: the upper bound of the detached IS weight.")
    decoupled_weight_cap: float | None = Field(5.0, gt=0, description="decoupled_ppo only: a token whose behavior weight pi_prox/pi_behav (trainer's old log-probs vs the sampler's) exceeds this gets weight 0 (AReaL's behav_imp_weight_cap); None = no cap.")
    loss_aggregation: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"] = Field("token-mean", description="How per-token losses reduce to a scalar (see posttrain.rl.algos.aggregation).")
    entropy_coef: float = Field(0.0, ge=0, description="Weight of the entropy bonus (0 = off; entropy is logged either way).")
    gamma: float = Field(1.0, ge=0, le=1, description="Discount for token-level returns (gae, reinforce_pp) and for the step returns of gigpo (0: each turn scored by its own reward only).")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda.")
    gigpo_step_weight: float = Field(1.0, ge=0, description="gigpo only: omega, the weight of the step-level advantage added to the episode-level one (GiGPO eq. 8).")
    whiten_advantages: bool = Field(False, description="Whiten token advantages over the batch after estimation (standard for PPO with GAE).")

    # KL to the reference
    kl_coef: float = Field(0.0, ge=0, description="KL coefficient (beta); 0 = no reference model at all.")
    kl_estimator: Literal["k1", "k2", "k3"] = Field("k3", description="KL estimator (Schulman's k1/k2/k3).")
    kl_placement: Literal["loss", "reward"] = Field("loss", description="loss: add beta*KL per token to the loss (GRPO); reward: subtract it from the reward before advantages (PPO-RLHF, RLOO).")
    kl_target: float | None = Field(None, gt=0, description="Adaptive KL (Ziegler et al. 2019): steer the per-sequence KL to this target by adjusting kl_coef (None = fixed coefficient).")
    kl_horizon: int = Field(10000, ge=1, description="Adaptive KL horizon in samples.")
    kl_turn_weights: Annotated[list[Annotated[float, Field(ge=0, allow_inf_nan=False)]], Field(min_length=1)] | None = Field(None, description="Multi-turn episodes: a factor on kl_coef for each assistant turn by its place in the conversation, assistant turns given in the prompt counted (a row that starts after a given wrong answer generates turn 1 first); the last entry holds for later turns. [10, 1]: the first attempt held 10 times closer to the reference than the second (SCoRe's Stage I, arXiv 2409.12917). None = kl_coef on every token. With kl_target the controller steers kl_coef by the unweighted KL.")

    # DAPO pieces
    overlap_scoring: bool = Field(True, description="Score a step's completions in the background while the trainer computes their log-probs (joined before advantages; same results). Not with dynamic_sampling, whose next round waits on the rewards.")
    dynamic_sampling: bool = Field(False, description="DAPO dynamic sampling: drop groups whose rewards are all equal and sample more prompts until the batch is full.")
    max_sampling_rounds: int = Field(3, ge=1, description="Dynamic sampling: at most this many generation rounds per step; a batch still short is filled with dropped groups (zero advantage).")
    overlong_filtering: bool = Field(False, description="Mask truncated completions out of the loss (DAPO overlong filtering).")
    reward_filter: Literal["none", "bands", "best_of_n", "best_worst", "best_random"] = Field("none", description="PF-PPO-style filtering (arXiv 2409.06957): train only on completions whose reward lies in `reward_filter_bands`, or the best / best+worst / best+random one per prompt. Advantages are computed on the whole group first.")
    reward_filter_bands: list[tuple[float, float]] = Field(default_factory=list, description="[[lo, hi], ...] inclusive reward bands kept when reward_filter is 'bands'.")
    reward_filter_min: float | None = Field(None, allow_inf_nan=False, description="With a reward_filter: a completion whose reward is below this is never kept, nor counted as a group's best or worst (rejection sampling's threshold: best_of_n keeps a prompt's best completion only if it reaches it; RAFT, ReST). None = no threshold.")
    overlong_buffer_ratio: float = Field(0.0, ge=0, lt=1, description="DAPO soft overlong punishment: the last fraction of max_tokens over which the penalty ramps to -overlong_penalty (0 = off).")
    overlong_penalty: float = Field(1.0, ge=0, description="Maximum soft overlong penalty (DAPO uses 1).")

    # sampler/trainer mismatch
    mismatch_correction: Literal["auto", "none", "tis", "mis"] = Field("auto", validate_default=True, description="Correct sampler/trainer log-prob mismatch with truncated (tis) or masked (mis) IS weights; metrics are logged either way. auto: tis when the sampler runs in another precision than the trainer (vllm on CUDA, whose dtype is not float32), else none.")
    mismatch_level: Literal["token", "sequence"] = Field("token", description="Mismatch weights per token or per sequence.")
    mismatch_clip_max: float = Field(2.0, gt=0, description="Upper bound of the mismatch weight (truncate) or of its accepted range (mask).")
    mismatch_clip_min: float | None = Field(None, ge=0, description="Lower bound of the accepted range (mis only; None = open).")

    #: True for kinds that train a value model next to the policy (ppo).
    uses_critic: ClassVar[bool] = False
    data_formats: ClassVar[str | tuple[str, ...] | None] = "rl"
    model_keys: ClassVar[tuple[str, ...]] = ("model", "ref_model")
    # episode metrics lead where they exist: a multi-turn run's report charts turns and tool calls
    key_metrics: ClassVar[tuple[str, ...]] = ("reward", "episode/turns", "episode/tool_calls", "sampling/reward_drawn",
                                              "pass_rate", "kl", "entropy", "response_length/mean")

    @classmethod
    def preset_name(cls, data: dict[str, Any]) -> str | None:
        """The preset (posttrain.rl.presets) that fills the knobs ``data`` leaves unset; None = none."""
        return None

    @classmethod
    def default_values(cls, data: dict[str, Any] | None = None) -> dict[str, Any]:
        """Every top-level key's default as a stage of this kind really gets it: the field's own
        default, overlaid by the kind's (or the chosen variant's) preset. `posttrain stages` prints
        these; a test checks them against what `posttrain validate` resolves."""
        values = {name: field.get_default(call_default_factory=True)
                  for name, field in cls.model_fields.items() if not field.is_required()}
        name = cls.preset_name(data or {})
        return {**values, **(preset_values(name) if name else {})}

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        try:
            name = cls.preset_name(data)
            preset = preset_values(name) if name else {}
        except KeyError:
            return data  # an unknown variant: its Literal field reports it with the valid names
        return {**preset, **data}

    @field_validator("engine")
    @classmethod
    def _resolve_engine(cls, engine: str) -> str:
        return resolve_engine(engine)

    @field_validator("mismatch_correction")
    @classmethod
    def _resolve_mismatch(cls, value: str, info: Any) -> str:
        if value == "auto" and info.data.get("policy_loss") == "decoupled_ppo":
            return "none"  # the loss weights by the sampler's log-probs itself
        if value != "auto":
            return value
        return "tis" if sampler_precision_differs(info.data.get("engine"), info.data.get("engine_options") or {}) else "none"

    @field_validator("advantage_estimator", "policy_loss")
    @classmethod
    def _registered(cls, name: str, info: Any) -> str:
        from posttrain.rl.algos import get_advantage_estimator, get_policy_loss

        (get_advantage_estimator if info.field_name == "advantage_estimator" else get_policy_loss)(name)
        return name  # ValueError above lists the registered names

    @field_validator("rewards")
    @classmethod
    def _unique_channel_names(cls, channels: list[RewardChannelConfig]) -> list[RewardChannelConfig]:
        names = [c.channel_name for c in channels]
        doubled = sorted({n for n in names if names.count(n) > 1})
        if doubled:
            raise ValueError(f"reward channel names must be unique; {doubled} appear twice (set `name:` on each)")
        return channels

    @model_validator(mode="after")
    def _deterministic_adapters_and_a_sleeping_engine(self) -> OnlineRLConfig:
        if self.lora is not None and self.lora.dropout > 0:
            raise ValueError(f"lora.dropout is {self.lora.dropout} but must be 0 in RL stages: the rollout's and the "
                             "update's log-probs must come from one deterministic function, or the PPO ratio is "
                             "noise (the loop disables every other dropout for the same reason)")
        if self.environment is not None and "environment" in [c.channel_name for c in self.rewards]:
            raise ValueError("rewards: a channel is named 'environment', the name under which the environment's "
                             "per-turn rewards are logged; give it another `name:`")
        if self.engine_sleep and self.engine == "vllm" and not cuda_present():
            raise ValueError("engine_sleep: vLLM's sleep mode needs a CUDA GPU, and this machine has none; "
                             "set engine_sleep: false")
        return self

    def _check_kl(self) -> None:
        if self.kl_target is not None and self.kl_coef == 0:
            raise ValueError("kl_target (adaptive KL) needs a starting kl_coef > 0")
        if self.kl_turn_weights is None:
            return
        if self.environment is None:
            raise ValueError("kl_turn_weights weighs the KL of each turn of multi-turn episodes: set `environment:` "
                             "(see docs/agents.md), or use kl_coef alone")
        if self.kl_coef == 0 or self.kl_placement != "loss":
            raise ValueError("kl_turn_weights are factors on the loss's KL term: set kl_coef > 0 and kl_placement: loss")

    @model_validator(mode="after")
    def _check_knobs(self) -> OnlineRLConfig:
        from posttrain.rl.algos import advantage_estimator_spec, resolve_policy_loss

        resolve_policy_loss(self.policy_loss, self.ratio_level)  # ValueError names the levels it has
        estimator = advantage_estimator_spec(self.advantage_estimator)
        if self.group_size < estimator.min_group_size:
            raise ValueError(f"advantage_estimator {self.advantage_estimator!r} compares completions of one prompt: set group_size >= {estimator.min_group_size}")
        if self.dynamic_sampling and self.group_size < 2:
            raise ValueError("dynamic_sampling drops groups whose rewards are all equal: it needs group_size >= 2")
        if estimator.level == "step" and self.environment is None:
            raise ValueError(f"advantage_estimator {self.advantage_estimator!r} groups the turns of multi-turn episodes: "
                             "set `environment:` (see docs/agents.md)")
        if estimator.level == "step" and self.kl_coef > 0 and self.kl_placement == "reward":
            raise ValueError(f"advantage_estimator {self.advantage_estimator!r} takes no KL in the reward; "
                             "use kl_placement: loss")
        if estimator.needs_filter:
            self._check_imitation(estimator)
        self._check_process_rewards(estimator)
        self._check_rollout()
        if self.policy_loss == "decoupled_ppo" and self.mismatch_correction != "none":
            raise ValueError(f"policy_loss decoupled_ppo already weights every token by pi_prox/pi_sampler; "
                             f"mismatch_correction {self.mismatch_correction!r} would weight it twice: set it to none")
        if self.curriculum is not None and self.dynamic_sampling:
            raise ValueError("curriculum and dynamic_sampling: a curriculum learns from each drawn prompt's group, and "
                             "dynamic sampling redraws and drops groups; set one of them (curriculum.skip_settled is "
                             "the filter before generation, dynamic_sampling the one after)")
        if self.reward_filter_min is not None and self.reward_filter == "none":
            raise ValueError("reward_filter_min is the threshold of a reward_filter; set reward_filter (e.g. best_of_n)")
        if estimator.needs_critic and not self.uses_critic:
            raise ValueError(f"advantage_estimator {self.advantage_estimator!r} needs a value model: use the `ppo` stage kind")
        if self.uses_critic and not estimator.needs_critic:
            raise ValueError(f"the critic learns the returns of a critic-based estimator (gae); advantage_estimator {self.advantage_estimator!r} does not use one")
        self._check_kl()
        if self.max_tokens_per_microbatch is not None and self.grad_accum > 1:
            raise ValueError(f"max_tokens_per_microbatch splits each minibatch by tokens, grad_accum "
                             f"({self.grad_accum}) by rows: set one of them (grad_accum: 1 with the token budget)")
        self.batch_plan()  # a split that cannot run fails here, naming its keys
        if self.mismatch_clip_min is not None and self.mismatch_clip_min >= self.mismatch_clip_max:
            raise ValueError("mismatch_clip_min must be below mismatch_clip_max")
        if self.reward_filter == "bands" and not self.reward_filter_bands:
            raise ValueError("reward_filter 'bands' needs reward_filter_bands: [[lo, hi], ...]")
        if any(lo > hi for lo, hi in self.reward_filter_bands):
            raise ValueError(f"reward_filter_bands {self.reward_filter_bands}: each band needs lo <= hi")
        return self

    def _check_rollout(self) -> None:
        """Server mode and asynchronous training: what they cannot combine with yet, and why."""
        rollout = self.rollout
        if rollout.mode != "server":
            if rollout.openai_endpoint:
                raise ValueError("rollout.openai_endpoint is served by rollout workers: it needs rollout.mode: server")
            if rollout.placement != "local":
                raise ValueError(f"rollout.placement {rollout.placement} places rollout workers: it needs rollout.mode: server")
            if rollout.weight_transport != "copy":
                raise ValueError(f"rollout.weight_transport {rollout.weight_transport} sends weights to rollout workers: "
                                 "it needs rollout.mode: server")
            if rollout.max_staleness:
                raise ValueError(f"rollout.max_staleness {rollout.max_staleness} needs rollout.mode: server (the colocated "
                                 "engine generates in the trainer's process, so it cannot generate while the trainer updates)")
            return
        if self.engine_sleep:
            raise ValueError("engine_sleep frees a colocated vLLM engine's GPU memory during the update; with "
                             "rollout.mode: server the engines live in their own processes: unset engine_sleep")
        ray_launched = self.distributed.launcher == "ray"  # the trainer's processes are Ray actors already
        if ray_launched and rollout.placement == "ray" and rollout.ray_address is not None:
            raise ValueError("rollout.ray_address with distributed.launcher ray: the workers join the cluster the trainer's "
                             "processes run in (distributed.ray_address); remove rollout.ray_address")
        if (rollout.placement == "ray" and rollout.ray_address is None and not ray_launched
                and self.distributed.processes * self.distributed.nodes > 1):
            raise ValueError("rollout.placement ray with several training processes: each would start a Ray of its own; "
                             "start one (`ray start --head`) and set rollout.ray_address (auto, or HOST:PORT)")
        if not rollout.max_staleness:
            return
        if self.dynamic_sampling and rollout.max_staleness > 1:
            raise ValueError(f"rollout.max_staleness {rollout.max_staleness} with dynamic_sampling: a step's extra rounds "
                             "draw prompts after the next steps' were drawn ahead, which a checkpoint cannot replay "
                             "exactly beyond max_staleness 1; use max_staleness: 1 (or dynamic_sampling: false)")

    def _check_process_rewards(self, estimator) -> None:
        """Per-step rewards need token-level advantages, and single-turn answers to split into steps."""
        process = [c.channel_name for c in self.rewards if c.process_reward_model]
        if not process or "advantage_estimator" in getattr(type(self), "unused_keys", ()):
            return  # a kind without advantages (online_dpo) says for itself why it cannot use them
        if estimator.level != "token":
            raise ValueError(f"rewards: channel {process[0]!r} (process_reward_model) gives per-step rewards at the "
                             f"tokens that end the steps; advantage_estimator {self.advantage_estimator!r} scores whole "
                             "completions. Use a token-level one: reinforce_pp (variant reinforce_pp) or gae (kind ppo)")
        if self.environment is not None:
            raise ValueError(f"rewards: channel {process[0]!r} (process_reward_model) scores the steps of one answer; "
                             "multi-turn episodes (`environment:`) are not supported with it")

    def _check_imitation(self, estimator) -> None:
        """An estimator that gives every completion advantage 1 (raft) imitates what reward_filter
        keeps: only a filter that keeps the better answers, a loss over the kept tokens, no whitening."""
        name = repr(self.advantage_estimator)
        if self.reward_filter not in ("best_of_n", "bands"):
            raise ValueError(f"advantage_estimator {name} gives every completion the same advantage and learns from the "
                             f"rewards only through reward_filter, which is {self.reward_filter!r}: set best_of_n (RAFT; "
                             "with reward_filter_min as a threshold) or bands (ReST: [[threshold, .inf]])")
        if self.loss_aggregation != "token-mean":
            raise ValueError(f"advantage_estimator {name} fine-tunes on the kept completions with the SFT loss, a mean over "
                             f"their tokens: set loss_aggregation: token-mean (not {self.loss_aggregation!r}, whose "
                             "sequence count includes the filtered completions)")
        if self.whiten_advantages:
            raise ValueError(f"advantage_estimator {name}: whiten_advantages would turn its constant advantages into 0")

    def preflight_problems(self, key: str, run_dir: Path, columns: list[str] | None = None) -> list[str]:
        """Model folders, then every `rewards:` entry: its function or verifier loads, its reward
        model folder exists, the prompt data has the columns it reads (when read), and a grouped
        verifier's options.group_size (if set) is this stage's group_size."""
        from posttrain.agents.session import environment_problems
        from posttrain.rl.rewards import reward_problems

        return [*super().preflight_problems(key, run_dir, columns),
                *reward_problems(self.rewards, f"{key}.rewards", run_dir, columns, f"data file {self.data.path}",
                                 self.group_size),
                *environment_problems(self.environment, f"{key}.environment", columns, f"data file {self.data.path}"),
                *self._curriculum_problems(key, columns)]

    def _curriculum_problems(self, key: str, columns: list[str] | None) -> list[str]:
        """A dump curriculum reads its source column: the prompt data must have it."""
        curriculum = self.curriculum
        if curriculum is None or curriculum.sampler != "dump" or columns is None or curriculum.source_column in columns:
            return []
        return [(f"{key}.curriculum.source_column: data file {self.data.path} has no column "
                 f"{curriculum.source_column!r} (columns: {', '.join(columns)}); sampler dump draws prompts by it")]

    def config_warnings(self, key: str) -> list[str]:
        """Valid settings that do not do what they say, one line each, for preflight to log: a
        noisy-verifier correction that this stage's advantages cancel (or only rescale)."""
        from posttrain.rl.loop.advantages import noise_correction_warnings

        return noise_correction_warnings(self, key)

    def rebase_paths(self, base_dir: Path) -> None:
        """`./file.py:fn` reward functions/verifiers and literal model directories (reward_model,
        ref_model, critic_model) are read relative to the recipe's folder."""
        for channel in self.rewards:
            channel.function = rebase_file_ref(channel.function, base_dir)
            channel.verifier = rebase_file_ref(channel.verifier, base_dir)
            channel.reward_model = rebase_dir(channel.reward_model, base_dir)
            channel.process_reward_model = rebase_dir(channel.process_reward_model, base_dir)
            channel.rates_from = rebase_dir(channel.rates_from, base_dir)
        self.ref_model = rebase_dir(self.ref_model, base_dir)
        if self.environment is not None:
            self.environment.rebase_paths(base_dir)

    @property
    def policy_loss_name(self) -> str:
        """The registered loss that policy_loss means at ratio_level (ppo_clip at sequence is gspo)."""
        from posttrain.rl.algos import resolve_policy_loss

        return resolve_policy_loss(self.policy_loss, self.ratio_level)

    def batch_plan(self, processes: int | None = None) -> BatchPlan:
        """The step's batch split over ``processes`` (default: distributed.processes x nodes)."""
        dist = self.distributed
        return BatchPlan.derive(prompts_per_step=self.prompts_per_step, group_size=self.group_size,
                                processes=processes or dist.processes * dist.nodes,
                                minibatch_size=self.minibatch_size, grad_accum=self.grad_accum)

    def optimizer_steps(self, plan: BatchPlan | None = None) -> int:
        """Optimizer steps over the whole run (what a fractional `warmup_steps` is a fraction of),
        for ``plan`` (default: the plan for distributed.processes)."""
        return self.total_steps * self.ppo_epochs * (plan or self.batch_plan()).minibatches

    @property
    def needs_reference(self) -> bool:
        """A reference model is loaded only when some KL term can be non-zero."""
        return self.kl_coef > 0

    @property
    def response_budget(self) -> int:
        """Tokens after the prompt at most: max_tokens, or an episode's max_episode_tokens."""
        return self.environment.max_episode_tokens if self.environment is not None else self.max_tokens

    @property
    def overlong_buffer(self) -> int:
        """DAPO's L_cache in tokens (0 = no soft overlong punishment)."""
        return round(self.overlong_buffer_ratio * self.max_tokens)
