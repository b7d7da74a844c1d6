"""The typed schema behind recipes: the pieces every stage kind shares.

Every key has exactly one definition here or in a stage kind's config class, with its default and
a sentence of help (``Field(description=...)``); `posttrain stages KIND` prints them. Unknown keys
are rejected (``extra="forbid"``) with the key path, the YAML line and a "did you mean".
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from posttrain.common.schedule import LRSchedule


class StrictModel(BaseModel):
    """Base for every config object: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DistributedConfig(StrictModel):
    """How many processes a stage runs on, and how its state is sharded (DeepSpeed ZeRO).

    Multi-node: set `nodes`, `node_rank`, `main_address` and `main_port` and run the same
    `posttrain run` on every node; the runner hands them to `accelerate launch`.
    """

    processes: int = Field(1, ge=1, description="Processes on this node (1 = run in the runner's own process, unless zero > 0: DeepSpeed then runs in one launched worker).")
    zero: Literal[0, 2, 3] = Field(0, description="DeepSpeed ZeRO stage: 0 = plain DDP, 2 = shard optimizer+grads, 3 = shard parameters too.")
    offload: Literal["none", "optimizer", "params"] = Field("none", description="DeepSpeed CPU offload: none, optimizer states, or optimizer states and parameters (ZeRO-3).")
    launcher: Literal["accelerate", "torchrun", "ray"] = Field("accelerate", description="What starts the processes: accelerate, torchrun, or ray (Ray actors placed by a placement group on any node of a Ray cluster; posttrain.runner.ray_launch, docs/distributed.md).")
    nodes: int = Field(1, ge=1, description="Machines taking part (accelerate multi-node).")
    node_rank: int = Field(0, ge=0, description="This machine's rank among `nodes`.")
    main_address: str = Field("127.0.0.1", description="Address of node 0, reachable from every node.")
    main_port: int = Field(29500, ge=1, le=65535, description="Rendezvous port on node 0. On one machine the default (29500) means a free port the system picks; another port is used while it is free.")
    ray_address: str | None = Field(None, description="launcher ray: the cluster to join: HOST:PORT of a running head (`ray start --head`), auto (the one on this machine), or None (a local Ray for this run).")
    ray_resources: dict[str, float] = Field(default_factory=lambda: {"CPU": 1.0}, description="launcher ray: the Ray resources of one process's bundle, e.g. {CPU: 8, GPU: 1}, or a custom resource some nodes were started with ({trainer: 1}).")
    ray_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field("PACK", description="launcher ray: the placement group's strategy over the processes' bundles (Ray's names).")

    @model_validator(mode="after")
    def _runnable(self) -> DistributedConfig:
        """Reject combinations DeepSpeed cannot run (found at validate, before anything starts)."""
        if self.node_rank >= self.nodes:
            raise ValueError(f"node_rank {self.node_rank} must be below nodes ({self.nodes})")
        if self.offload != "none" and self.zero == 0:
            raise ValueError(f"offload: {self.offload} needs DeepSpeed; set zero: 2 or 3 (or offload: none)")
        if self.launcher == "ray":
            self._check_ray()
        if self.offload == "params" and self.zero != 3:
            raise ValueError(f"offload: params shards parameters, which needs zero: 3 (got zero: {self.zero})")
        return self


    def _check_ray(self) -> None:
        if self.nodes > 1:
            raise ValueError(f"launcher: ray places the processes on the cluster's nodes itself; set processes to the "
                             f"total ({self.processes} x {self.nodes}) and leave nodes at 1 (run `posttrain run` once)")
        resources = self.ray_resources
        if not resources or any(v <= 0 for v in resources.values()):
            raise ValueError(f"ray_resources {resources}: each process needs a bundle of positive amounts, e.g. {{CPU: 4}} "
                             "or {CPU: 4, GPU: 1}")
        if resources.get("GPU", 0) not in (0, 1):
            raise ValueError(f"ray_resources GPU: {resources['GPU']}: a training process uses one GPU (GPU: 1) or none")


class StageConfig(StrictModel):
    """Keys every stage kind accepts."""

    kind: str = Field(description="Stage kind; `posttrain stages` lists them.")
    model: str | None = Field(None, description="Input model: a HF model directory or `${stages.NAME.output}`. Default: the previous stage's output, or the recipe's `model` for the first stage.")
    seed: int = Field(0, description="Random seed for this stage (model init, data order, sampling).")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="Training precision; auto = bf16 where the hardware supports it (CUDA with bf16), fp32 otherwise (always on CPU).")
    distributed: DistributedConfig = Field(default_factory=DistributedConfig, description="Multi-process / DeepSpeed settings.")
    notes: str = Field("", description="Free text kept in the stage record and report.")
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=list,
        description="Experiment trackers that also get every metric (metrics.jsonl stays the record): "
                    "tensorboard event files in the stage folder, a W&B run in offline mode, an MLflow local "
                    "file store at RUN_DIR/mlruns. Each is an extra: pip install 'posttrain[tensorboard]'. "
                    "Not part of the stage's hash.")

    @model_validator(mode="after")
    def _deepspeed_needs_training(self) -> StageConfig:
        if self.distributed.zero and not isinstance(self, OptimizerConfig):
            raise ValueError(f"distributed.zero: {self.distributed.zero} shards optimizer state and gradients, but a "
                             f"{self.kind} stage does not train; remove it (or use zero: 0)")
        return self

    #: True for stage kinds that create a model instead of reading one (init_model).
    creates_model: ClassVar[bool] = False
    #: False for stage kinds whose output is not a model (eval); later stages then default to the
    #: last model-producing stage's output.
    produces_model: ClassVar[bool] = True
    #: The metric the runner shows in its summary table and live line first.
    key_metrics: ClassVar[tuple[str, ...]] = ("loss",)
    #: Keys naming a model folder the stage reads; preflight checks those outside the run.
    model_keys: ClassVar[tuple[str, ...]] = ("model",)
    #: The formats the stage's `data` may have (posttrain.data.FormatName; None: no `data` key).
    #: The stage reads its data with them and preflight checks the files against them.
    data_formats: ClassVar[str | tuple[str, ...] | None] = None

    def preflight_problems(self, key: str, run_dir: Path, columns: list[str] | None = None) -> list[str]:
        """Problems `posttrain validate` and the start of `run` report before anything trains:
        here the model folders; kinds with plugins (RL rewards) add theirs. ``key`` is
        ``stages.NAME``; ``columns`` are the data's columns once they read cleanly (None when
        they were not read: an earlier stage writes the file, or it had problems)."""
        return [problem for name in self.model_keys
                if (problem := model_dir_problem(getattr(self, name, None), f"{key}.{name}", run_dir))]

    def rebase_paths(self, base_dir: Path) -> None:
        """Make file references other than `model` and data blocks relative to the recipe's folder.

        Stage kinds with such keys (a verifier file, a reward function file) override this.
        """


def written_by_the_run(path: str | Path, run_dir: str | Path) -> bool:
    """Whether ``path`` lies under ``run_dir``: an earlier stage's output, which preflight leaves
    alone (it does not exist yet on a first run)."""
    return Path(run_dir).resolve() in Path(path).resolve().parents


def model_dir_problem(value: str | None, key: str, run_dir: Path) -> str | None:
    """Why ``value`` cannot be loaded as a model folder, or None (also for outputs of earlier
    stages, under ``run_dir``). Models are local folders: a recipe's relative path is read from
    its folder, so a hub id must be downloaded first (``hf download ORG/NAME --local-dir DIR``).

    >>> model_dir_problem("/no/such/model", "stages.sft.model", Path("run"))[:60]
    'stages.sft.model: model folder /no/such/model does not exist'
    """
    if not value or "${" in value:
        return None
    path = Path(value)
    if written_by_the_run(path, run_dir):
        return None
    if path.is_dir():
        if (path / "config.json").is_file():
            return None
        return (f"{key}: {path} is a folder but not a Hugging Face model (no config.json); expected a "
                "folder written by save_pretrained, e.g. an earlier run's NAME/model")
    if path.exists():
        return f"{key}: {path} is a file; expected a model folder (with config.json)"
    return (f"{key}: model folder {path} does not exist (models are local folders; download a hub model "
            "first: hf download ORG/NAME --local-dir DIR)")


class LoraConfig(StrictModel):
    """LoRA adapters via peft (Hu et al. 2021, arXiv 2106.09685)."""

    r: int = Field(8, ge=1, description="Adapter rank.")
    alpha: int = Field(16, ge=1, description="Scaling numerator: the update is scaled by alpha / r.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the adapter input.")
    target_modules: list[str] | str = Field("all-linear", description="Modules that get adapters: a list of names or 'all-linear'.")
    merge: bool = Field(True, description="Merge the adapters into the base weights when the stage ends, so the output is a plain model (false: the output is the adapter, which transformers and peft load over the base model).")


def lr_field(default: float, why: str = "") -> Any:
    """The `lr` key, defined once (type, bound, help); each training kind states its own default
    (TRL's defaults differ too: SFT 2e-5, DPO 1e-6, GRPO 1e-6)."""
    return Field(default, gt=0, description="Peak learning rate (AdamW)." + (f" {why}" if why else ""))


def save_steps_field(default: int) -> Any:
    """The `save_steps` key, defined once; each training kind states its own default."""
    return Field(default, ge=1, description="Checkpoint (model, optimizer, scheduler, RNG, data position) every this many "
                                            "steps; a killed run resumes from the last one.")


def lr_scheduler_field(default: str) -> Any:
    """The `lr_scheduler` key, defined once; the offline stages default to linear decay (as
    transformers does), RL to a constant lr after warm-up (as TRL's GRPO/PPO examples run)."""
    return Field(default, description="Learning-rate schedule: linear or cosine decay to 0 after the warm-up, "
                                      "constant_with_warmup, or constant (no warm-up). See posttrain.common.schedule.")


class OptimizerConfig(StageConfig):
    """Optimisation keys of every kind that trains with gradients: the offline stages (through
    TRL / transformers) and the online RL loop read the same definitions."""

    lr: float = lr_field(1e-4)
    grad_accum: int = Field(1, ge=1, description="Micro-batches (forward/backward passes) accumulated per optimizer step.")
    warmup_steps: float = Field(0, ge=0, description="Linear learning-rate warmup: a number of optimizer steps (an integer >= 1) or a fraction of the run's optimizer steps (< 1), as in transformers 5.")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Clip the gradient norm to this.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in the backward pass: much less memory for a second forward's compute.")
    save_steps: int = save_steps_field(100)
    lr_scheduler: LRSchedule = lr_scheduler_field("constant_with_warmup")
    lora: LoraConfig | None = Field(None, description="Train LoRA adapters instead of all weights. In RL stages the "
                                                      "reference is the base model with the adapters off (no second copy) "
                                                      "and a vllm engine is sent the adapter alone (see lora_sync).")

    @field_validator("warmup_steps")
    @classmethod
    def _whole_steps(cls, value: float) -> float:
        if value >= 1 and value != int(value):
            raise ValueError(f"{value} is neither a whole number of steps (>= 1) nor a fraction (< 1)")
        return value


def warmup_optimizer_steps(warmup_steps: float, total_optimizer_steps: int) -> int:
    """`warmup_steps` as optimizer steps: itself when >= 1, else that fraction of the total, rounded
    up (transformers 5's `TrainingArguments.get_warmup_steps`).

    >>> warmup_optimizer_steps(5, 100), warmup_optimizer_steps(0.05, 90), warmup_optimizer_steps(0, 90)
    (5, 5, 0)
    """
    return int(warmup_steps) if warmup_steps >= 1 else math.ceil(total_optimizer_steps * warmup_steps)


def rebase_file_ref(ref: str | None, base_dir: Path) -> str | None:
    """`./my_verifier.py:check` -> `/recipe/dir/my_verifier.py:check`; names and modules unchanged."""
    if not ref or "${" in ref:
        return ref
    path, sep, attr = ref.rpartition(":") if ".py:" in ref else (ref, "", "")
    if path.endswith(".py") and not Path(path).is_absolute():
        return str(base_dir / path) + sep + attr
    return ref


def rebase_dir(path: str | None, base_dir: Path) -> str | None:
    """A literal relative directory (a reference model, say) -> relative to the recipe's folder."""
    if not path or "${" in path or Path(path).is_absolute():
        return path
    return str(base_dir / path)
