"""The online RL loop, one for every variant: rollout -> score -> log-probs -> advantages ->
update -> weight sync, with checkpoints and metrics. The `grpo` and `ppo` stage kinds call
:func:`run_online_rl` with their (preset-resolved) configs; nothing here depends on the variant.

The same function runs in one process and in each of the N processes the launcher starts
(posttrain.runner.launch): every process generates its own share of the step's prompts with its
own engine; see :mod:`posttrain.rl.loop.dist` for how rewards, token counts and metrics are
combined. Where we differ from TRL's GRPOTrainer: old log-probs come from the trainer, never
from the sampler (a separate no-grad forward, skipped when the update is strictly on-policy and
they equal the update forward's detached log-probs; see experience.update_is_on_policy), and the
hf engine generates with the training module itself (no second copy) unless ZeRO-3 partitions it.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from posttrain.common.distributed import training_setup
from posttrain.common.memory import retained_heap
from posttrain.errors import ConfigError
from posttrain.rl.loop.checkpoint import resume, save_checkpoint
from posttrain.rl.loop.curriculum import CurriculumStream
from posttrain.rl.loop.dist import (
    Processes,
    check_replicas,
    local_device,
    make_accelerator,
    partition_reference,
    processes,
)
from posttrain.rl.loop.experience import build_experience
from posttrain.rl.loop.metrics import (
    PhaseTimer,
    reward_metrics,
    rollout_metrics,
    scalars,
    summarize,
)
from posttrain.rl.loop.models import (
    ActorCritic,
    build_optimizer,
    disable_dropout,
    load_critic,
    load_policy,
    load_reference,
)
from posttrain.rl.loop.probe import check_sync, probe_sequences
from posttrain.rl.loop.rollout_log import rollout_records, write_rollouts
from posttrain.rl.loop.sampling import PromptStream, collect_rollouts
from posttrain.rl.loop.update import ppo_update
from posttrain.rl.scored import joined

if TYPE_CHECKING:
    from accelerate import Accelerator
    from transformers import PreTrainedTokenizerBase

    from posttrain.agents.episodes import EpisodeRunner
    from posttrain.report.metrics import MetricsLogger
    from posttrain.report.progress import StageProgress
    from posttrain.rl.algos import AdaptiveKLController, FixedKLController
    from posttrain.rl.loop.config import BatchPlan, OnlineRLConfig
    from posttrain.rl.loop.pipeline import RolloutPipeline
    from posttrain.rl.rewards import RewardScorer
    from posttrain.rl.rollout.types import RolloutEngine


class StageIO(Protocol):
    """What the loop needs of the stage context it runs in (posttrain.stages.context.StageContext,
    a layer above, provides it): loggers, the process count, and where outputs and checkpoints go."""

    metrics: MetricsLogger
    progress: StageProgress
    world_size: int
    work_dir: Path                  # the stage folder (metrics, rollouts, model, checkpoints)

    @property
    def output_dir(self) -> Path: ...

    @property
    def checkpoint_dir(self) -> Path: ...

    def latest_checkpoint(self) -> Path | None: ...


class Learner(Protocol):
    """The phases of a step between scoring and the weight sync, chosen by the stage kind:
    :class:`PolicyGradient` (grpo, ppo) or posttrain.rl.loop.preference.PreferenceLearner
    (online_dpo). ``batch`` is whatever ``update`` consumes; ``exp`` and ``tensors`` are what the
    rollout log and the curriculum read (advantages, trained rows)."""

    def experience(self, session: RLSession, scored, timer, step: int) -> tuple[Any, Any, Any, dict]: ...

    def update(self, session: RLSession, batch, step: int) -> dict[str, float]: ...

    def save(self, session: RLSession, folder: Path) -> None: ...

    def load(self, session: RLSession, folder: Path) -> None: ...


class PolicyGradient:
    """Advantages and the clipped policy (and value) update: every grpo variant and ppo."""

    def experience(self, session: RLSession, scored, timer, step: int):
        exp, tensors, stats = build_experience(session, scored, timer, step)
        return exp, exp, tensors, stats

    def update(self, session: RLSession, batch, step: int) -> dict[str, float]:
        return ppo_update(session, batch, step)

    def save(self, session: RLSession, folder: Path) -> None:
        """Nothing beyond the models, optimizer and stream (checkpoint.py)."""

    def load(self, session: RLSession, folder: Path) -> None:
        """Nothing beyond the models, optimizer and stream (checkpoint.py)."""


@dataclass
class RLSession:
    """The live objects of one RL stage run (shared by the phase functions)."""

    config: OnlineRLConfig          # preset-resolved (GRPOConfig, PPOConfig)
    plan: BatchPlan                 # the step's split over the processes actually started
    ctx: StageIO
    accelerator: Accelerator
    procs: Processes                # rank, size and collectives (torch.distributed)
    tokenizer: PreTrainedTokenizerBase
    model: torch.nn.Module          # the prepared ActorCritic (DDP / DeepSpeed wrapper, or itself)
    unwrapped: ActorCritic
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    ref_model: ActorCritic | None
    engine: RolloutEngine           # hf or vllm
    scorer: RewardScorer
    stream: PromptStream | CurriculumStream  # the prompts' order, or a curriculum that learns from each step
    kl_controller: FixedKLController | AdaptiveKLController
    probe: list[list[int]]          # token ids the sync probe scores (empty: no probe)
    episodes: EpisodeRunner | None = None  # multi-turn episodes (`environment:`), else single completions
    pipeline: RolloutPipeline | None = None  # rollout.max_staleness > 0: batches requested ahead
    learner: Learner = field(default_factory=PolicyGradient)  # the phases between scoring and sync


def check_batch_shape(config, world_size: int) -> BatchPlan:
    """The step's BatchPlan over the processes actually started (the schema checked the split
    for distributed.processes; a launcher may start another number)."""
    try:
        return config.batch_plan(world_size)
    except ValueError as err:
        raise ConfigError(f"stage batch split over {world_size} processes: {err}") from None


def _kl_controller(config):
    from posttrain.rl.algos import AdaptiveKLController, FixedKLController

    if config.kl_target is not None:
        return AdaptiveKLController(config.kl_coef, target=config.kl_target, horizon=config.kl_horizon)
    return FixedKLController(config.kl_coef)


def make_scheduler(optimizer, schedule: str, warmup_steps: int, total_steps: int):
    """The stage's `lr_scheduler` over its optimizer steps (posttrain.common.schedule)."""
    from posttrain.common.schedule import lr_multiplier

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_multiplier(schedule, s, warmup_steps, total_steps))


def context_length(tokenizer, rows: list[dict], max_tokens: int) -> int:
    """The longest prompt of the data (rendered as the engine renders it) plus ``max_tokens``,
    rounded up to 64: what a vllm engine's KV cache must hold (vLLM otherwise sizes it for the
    model's whole context, e.g. 32k tokens of Qwen2.5)."""
    from posttrain.rl.rollout.types import longest_prompt

    longest = longest_prompt(tokenizer, [row["prompt"] for row in rows])
    return -(-(longest + max_tokens) // 64) * 64


def engine_options(config, policy: torch.nn.Module, device: torch.device, context: int | None = None) -> dict[str, Any]:
    """The hf engine generates with the training module itself (no copy; sync is a no-op), except
    under ZeRO-3, whose parameters become partitions: it then keeps its own copy, synced each step."""
    options = dict(config.engine_options)
    if config.engine == "hf" and "model" not in options:
        if config.distributed.zero == 3:
            options.setdefault("device", device)
        else:
            options["model"] = policy
    if config.engine == "vllm" and config.lora is not None and config.lora_sync == "adapter":
        options.setdefault("lora_rank", config.lora.r)  # vLLM serves the adapter: adapter-only syncs
    if config.engine == "vllm" and context is not None:
        options.setdefault("max_model_len", context)
    if config.engine == "vllm" and config.engine_sleep:
        options.setdefault("sleep", True)
    return options


def load_models(config, tokenizer, device: torch.device, rows: list[dict]):
    """(trainable ActorCritic, frozen reference or None, rollout engine), loaded BEFORE the
    Accelerator exists: once its DeepSpeed ZeRO-3 config is live, transformers' from_pretrained
    would partition the reference and the engine's copy too, and they are never gathered."""
    from posttrain.models.lora import add_adapters
    from posttrain.rl.rollout import make_engine

    critic = load_critic(config.critic_model or config.model, tokenizer.pad_token_id) if config.uses_critic else None
    policy = load_policy(config.model)
    if config.lora is not None:
        policy = disable_dropout(add_adapters(policy, config.lora))  # peft's lora_dropout modules too
    chunk_bytes = config.logits_chunk_mb * 2**20
    unwrapped = ActorCritic(policy, critic, chunk_bytes=chunk_bytes)
    ref_model = None  # with LoRA and no ref_model, the reference is the policy with its adapters off
    if config.needs_reference and (config.lora is None or config.ref_model is not None):
        ref_model = load_reference(config.ref_model or config.model, device, chunk_bytes)
    context = None
    if config.engine == "vllm":
        from posttrain.agents.session import tools_prompt_tokens

        context = context_length(tokenizer, rows, config.response_budget + tools_prompt_tokens(tokenizer, config.environment))
    if config.rollout.mode == "server":
        return unwrapped, ref_model, start_service(config, tokenizer, unwrapped.policy, context, device)
    engine = make_engine(config.engine, config.model, tokenizer,
                         **engine_options(config, unwrapped.policy, device, context))
    return unwrapped, ref_model, engine


def weight_copies(rollout) -> int:
    """How many shared weight copies the rollout service keeps: ``max_staleness`` (at least one)
    with copy transport. Sync t overwrites the copy that sync t-k's load read, and that load sat
    behind batch t, collected already, so no sync waits for generation; broadcast keeps none."""
    return max(1, rollout.max_staleness) if rollout.weight_transport == "copy" else 1


def start_service(config, tokenizer, policy: torch.nn.Module, context: int | None, device: torch.device | None = None):
    """Server mode: the rollout workers, each with its own engine on the stage's input model
    (their options as the colocated engine's, less what only shares the trainer's module)."""
    from posttrain.rl.rollout.service import RolloutService

    options = dict(config.engine_options)
    if config.engine == "vllm" and context is not None:
        options.setdefault("max_model_len", context)
    rollout = config.rollout
    common = {"policy": policy, "workers": rollout.workers, "threads": rollout.threads, "timeout_s": rollout.timeout_s,
              "max_restarts": rollout.max_restarts, "options": options, "retain_freed_memory": config.retain_freed_memory,
              "endpoint_port": rollout.endpoint_port if rollout.openai_endpoint else None,
              "weight_transport": rollout.weight_transport, "trainer_device": device,
              "weight_buffers": weight_copies(rollout)}
    if rollout.placement == "ray":
        from posttrain.rl.rollout.ray_service import RayRolloutService

        return RayRolloutService(config.engine, config.model, tokenizer, ray_address=rollout.ray_address,
                                 worker_resources=rollout.worker_resources, trainer_resources=rollout.trainer_resources,
                                 ray_strategy=rollout.ray_strategy, **common)
    return RolloutService(config.engine, config.model, tokenizer, **common)


def prepare_for_training(model: ActorCritic, gradient_checkpointing: bool) -> None:
    """Training mode (dropout is already off; the hf engine switches to eval to generate) and,
    when asked, non-reentrant activation checkpointing of the policy and critic, which HF models
    apply only in training mode."""
    if gradient_checkpointing:
        for module in (model.policy, model.critic):
            if module is not None:
                module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()


def open_session(config, ctx, learner: Learner | None = None) -> RLSession:
    """Load data, rewards, models, optimizer and the rollout engine; validate shapes first."""
    from transformers import AutoTokenizer

    from posttrain.common.config import warmup_optimizer_steps
    from posttrain.common.runtime import quiet_libraries
    from posttrain.data import load_dataset_spec
    from posttrain.rl.rewards import RewardScorer

    quiet_libraries()
    plan = check_batch_shape(config, ctx.world_size)
    torch.manual_seed(config.seed)
    device = local_device()
    train, _ = load_dataset_spec(config.data, type(config).data_formats)
    scorer = RewardScorer(config.rewards, device=device)
    scorer.check_columns(train.column_names, f"data file {config.data.path}")
    tokenizer = AutoTokenizer.from_pretrained(config.model)
    episodes = None
    if config.environment is not None:
        from posttrain.agents.session import build_episode_runner

        episodes = build_episode_runner(config.environment, tokenizer, config.max_tokens, key=f"stages.{getattr(ctx, 'name', 'rl')}.environment")
    rows = train.to_list()
    unwrapped, ref_model, engine = load_models(config, tokenizer, device, rows)
    with contextlib.ExitStack() as cleanup:  # rollout workers started: closed if the rest fails
        cleanup.callback(engine.close)
        prepare_for_training(unwrapped, config.gradient_checkpointing)
        acc = make_accelerator(config, ctx.world_size)
        optimizer = build_optimizer(unwrapped, config.lr, config.weight_decay,
                                    config.critic_lr if config.uses_critic else None)
        model, optimizer = acc.prepare(unwrapped, optimizer)
        ref_model = partition_reference(ref_model, acc)
        total = config.optimizer_steps(plan)
        scheduler = make_scheduler(optimizer, config.lr_scheduler, warmup_optimizer_steps(config.warmup_steps, total), total)
        acc.register_for_checkpointing(scheduler)
        pipeline = None
        if config.rollout.max_staleness:
            from posttrain.rl.loop.pipeline import RolloutPipeline

            pipeline = RolloutPipeline(config.rollout.max_staleness, config.total_steps)
        session = RLSession(config=config, plan=plan, ctx=ctx, accelerator=acc, procs=processes(acc.device),
                            tokenizer=tokenizer, model=model, unwrapped=unwrapped, optimizer=optimizer,
                            scheduler=scheduler, ref_model=ref_model, engine=engine, scorer=scorer,
                            stream=prompt_stream(config, rows), kl_controller=_kl_controller(config),
                            probe=probe_sequences(tokenizer, rows, config.sync_probe_prompts, engine), episodes=episodes,
                            learner=learner or PolicyGradient(), pipeline=pipeline)
        cleanup.pop_all()  # the caller closes the engine from here on
        return session


def prompt_stream(config, rows: list[dict]) -> PromptStream | CurriculumStream:
    """The data in a seeded order, or the stage's curriculum over it."""
    if config.curriculum is None:
        return PromptStream(rows, config.seed)
    return CurriculumStream(rows, config.curriculum, config.seed)


def sync_engine(session: RLSession, step: int) -> dict[str, float]:
    """Hand the policy's current weights to the rollout engine, then probe that it serves them
    (posttrain.rl.loop.probe) -> the sync's metrics. Every process calls it: under ZeRO-3 the
    engine's weight reader gathers partitions collectively (posttrain.rl.rollout)."""
    if session.config.rollout.mode == "server":
        from posttrain.rl.loop.pipeline import sync_service

        return sync_service(session, step)
    session.engine.sync_weights(session.unwrapped.policy)
    stats = check_sync(session, step, session.tokenizer.pad_token_id or 0)  # every process raises alike
    version = getattr(session.engine, "adapter_version", 0)
    if version:
        stats["sync/adapter_version"] = float(version)
    return stats


def train_step(session: RLSession, step: int) -> dict[str, float]:
    """One step: sample and score, build experience, update, sync; returns the step's metrics."""
    config, timer, start = session.config, PhaseTimer(), time.perf_counter()
    if session.pipeline is not None:
        scored, sampling_stats = session.pipeline.collect(session, step, timer)
    else:
        scored, sampling_stats = collect_rollouts(session, step, timer)
    if config.engine_sleep:
        with timer("engine_sleep"):
            session.engine.sleep()  # its memory goes to the update until the sync
    if getattr(session.engine, "adapter_version", 0):  # the adapter version this step's requests named
        sampling_stats["rollout/adapter_version"] = float(session.engine.adapter_version)
    batch, exp, tensors, exp_stats = session.learner.experience(session, scored, timer, step)
    scored = joined(scored)  # joined inside the experience phase: already there
    sampling_stats.update(session.stream.observe(scored, exp, tensors, session.procs))
    if config.save_rollouts:
        records = rollout_records(step, scored, exp, tensors, session.procs.rank, session.procs.size)
        write_rollouts(session.ctx.work_dir, step, session.procs.rank, records)
    lr = session.scheduler.get_last_lr()[0]  # of this step's first optimizer step
    with timer("update"):
        update_stats = session.learner.update(session, batch, step)
    with timer("sync"):
        if config.engine_sleep:
            session.engine.wake()
        sync_stats = sync_engine(session, step)
    if scored.rollout.episodes is not None:
        from posttrain.agents.episodes import episode_metrics

        sampling_stats.update(episode_metrics(scored.rollout.episodes))
    metrics = {**reward_metrics(scored), **scalars(exp_stats), **update_stats, **sampling_stats, **sync_stats,
               **rollout_metrics(tensors, timer, config.ppo_epochs),
               "lr": lr, "kl_coef": session.kl_controller.value}
    if "kl/sequence" in exp_stats:  # adaptive KL (Ziegler et al.) steers beta for the next step
        session.kl_controller.update(float(exp_stats["kl/sequence"]), n_steps=len(exp) * session.procs.size)
    metrics.update({f"time/{k}": v for k, v in timer.seconds.items()}, **timer.memory)
    if config.rollout.mode == "server":
        metrics.update(session.engine.stats())
    if "score_wait" in timer.seconds:  # overlap_scoring: what ran while the log-probs did
        metrics["time/score_overlapped"] = max(0.0, timer.seconds["score"] - timer.seconds["score_wait"])
    metrics["time/step"] = time.perf_counter() - start
    return session.procs.reduce_metrics(metrics)


def save_lora_policy(session: RLSession, out: str) -> None:
    """A LoRA policy's output, written by the main process (every process calls it: under ZeRO-3
    reading the weights is a collective): the merged plain model (``lora.merge``, the adapters
    merged into copies of the base weights) or the adapter alone, which peft and transformers load
    over the base."""
    from posttrain.rl.rollout.weights import gathered, iter_full_state_dict, unwrap_model

    policy, main = session.unwrapped.policy, session.procs.is_main
    if session.config.lora.merge:
        merged = {}  # HF names, as the base model has them; every process iterates (a collective under ZeRO-3)
        for name, tensor in iter_full_state_dict(policy):
            if main:
                merged[name] = tensor.to("cpu", copy=True)  # the output in host memory, never a second model on the GPU
        if main:
            unwrap_model(policy).save_pretrained(out, state_dict=merged)
        return
    with gathered([p for p in policy.parameters() if p.requires_grad]):
        if main:
            policy.save_pretrained(out)


def save_policy(session: RLSession, folder: Path) -> None:
    """The policy as a plain HF model (or a LoRA adapter) plus tokenizer in ``folder``, written by
    the main process (every process calls it): the stage's output, or a `save_model_steps` model."""
    acc, procs = session.accelerator, session.procs
    out = str(folder)
    procs.barrier()
    if session.config.lora is not None:
        save_lora_policy(session, out)
    else:
        state = acc.get_state_dict(session.model)  # full tensors, gathered under ZeRO-3
        if procs.is_main:
            policy_state = {k[len("policy."):]: v for k, v in state.items() if k.startswith("policy.")}
            session.unwrapped.policy.save_pretrained(out, state_dict=policy_state)
    if procs.is_main:
        session.tokenizer.save_pretrained(out)
    procs.barrier()


def run_online_rl(config, ctx, learner: Learner | None = None) -> dict[str, Any]:
    """Train `config.total_steps` steps (resuming from the last checkpoint); return the summary.
    ``learner``: the phases between scoring and sync (default: :class:`PolicyGradient`)."""
    session = open_session(config, ctx, learner)
    with contextlib.ExitStack() as stack:
        stack.enter_context(retained_heap(config.retain_freed_memory))
        stack.callback(session.scorer.close)
        stack.callback(session.engine.close)
        if session.episodes is not None:
            stack.callback(session.episodes.close)
        start = resume(session)
        if start:
            sync_engine(session, start)
        if session.procs.is_main:
            ctx.progress.set_total(config.total_steps)
        for step in range(start + 1, config.total_steps + 1):
            metrics = train_step(session, step)
            if session.procs.is_main:
                ctx.metrics.log(step, metrics)
            if config.save_model_steps and step % config.save_model_steps == 0:
                save_policy(session, ctx.work_dir / "models" / f"step-{step:06d}")
            if step % config.save_steps == 0 and step < config.total_steps:
                save_checkpoint(session, step)
        if config.rollout.mode == "server":  # the last sync's loads (and, with max_staleness, its probe)
            from posttrain.rl.loop.pipeline import finish_probe

            finish_probe(session, final=True)
        setup = training_setup(session.model, session.procs.size)
        checksum = check_replicas(session.model, session.procs, setup["zero"])
        save_policy(session, ctx.output_dir)
    if not session.procs.is_main:
        return {}
    summary = summarize(ctx.metrics.path, config.total_steps)
    summary.update({f"distributed/{k}": v for k, v in setup.items()})
    if checksum is not None:
        summary["distributed/replica_checksum"] = checksum  # equal on every process (checked)
    summary["distributed/reference"] = reference_kind(session)
    return summary


def reference_kind(session: RLSession) -> str:
    """How the KL reference is held: none, the policy's base with adapters off (LoRA), a
    ZeRO-3 partitioned engine, or a full copy per process."""
    if session.ref_model is None:
        return "base-without-adapters" if session.config.needs_reference else "none"
    return "partitioned" if type(session.ref_model).__name__ == "DeepSpeedEngine" else "replicated"
