"""Run one stage on several processes (and machines) with `accelerate launch`, DDP or DeepSpeed ZeRO.

The runner calls :func:`launch_distributed` for a stage whose `distributed.processes` (or
`nodes`) is above 1. It writes into the stage's work directory

* `accelerate.yaml`: the accelerate config (MULTI_GPU for plain DDP, DEEPSPEED for ZeRO 2/3);
* `deepspeed.json` (ZeRO 2/3 only): batch size, gradient accumulation, clipping and precision
  are `"auto"` so the HF Trainer integration fills them from the stage's own keys; optimizer and
  parameter offload to CPU follow `distributed.offload`; ZeRO-3 gathers 16-bit (i.e. the model's
  own dtype) weights on save so the output is an ordinary HF checkpoint;

then runs ``python -m accelerate.commands.launch --config_file accelerate.yaml --num_processes N
--num_machines M --machine_rank R --main_process_ip A --main_process_port P --mixed_precision no|bf16|fp16
-m posttrain.runner.worker WORK_DIR``, streams the children's output into `WORK_DIR/launch.log`
(echoing the progress lines of rank 0), waits, and returns the `summary.json` that rank 0 of the
:mod:`posttrain.runner.worker` wrote. A failure raises the worker's own PosttrainError (e.g. a
DataError) when it wrote one, otherwise :class:`posttrain.errors.StageFailed` with the log's tail.

On a machine without CUDA, accelerate's MULTI_GPU launcher still starts the processes (through
torchrun); each process then sees `use_cpu` and no GPU and joins a gloo process group
(accelerate's MULTI_CPU), and DeepSpeed picks its CPU accelerator and gloo as well. The optimizer
stays torch's AdamW (`zero_force_ds_cpu_optimizer: false`): DeepSpeedCPUAdam would JIT-compile C++
for about a minute first.

Multi-node, recipe keys under `distributed:` (run the same `posttrain run` on every machine, with
the same run_dir path; a shared filesystem is simplest because only global rank 0 writes the model):

=============  ================================================================
key            meaning
=============  ================================================================
processes      processes on each machine (`--num_processes` = processes * nodes)
nodes          machines taking part (`--num_machines`)
node_rank      this machine's index, 0 .. nodes-1 (`--machine_rank`); override it
               per machine: `posttrain run r.yaml -s stages.dpo.distributed.node_rank=1`
main_address   address of node 0 that every node can reach (`--main_process_ip`)
main_port      rendezvous port on node 0 (`--main_process_port`); on one machine
               the default 29500 means any free port
launcher       accelerate (default) or torchrun (same worker, plain torch.distributed.run)
=============  ================================================================

See docs/distributed.md.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from posttrain import errors
from posttrain.common.distributed import deepspeed_config, describe
from posttrain.errors import StageFailed

if TYPE_CHECKING:
    from rich.console import Console

    from posttrain.common.config import DistributedConfig
    from posttrain.recipe.resolve import ResolvedStage
    from posttrain.stages.context import StageContext

LOG_NAME = "launch.log"
SUMMARY_NAME = "summary.json"
TAIL_LINES = 40


def mixed_precision(precision: str) -> str:
    """accelerate's name for a resolved precision (fp32 -> "no")."""
    return {"fp32": "no"}.get(precision, precision)


def accelerate_config(dist: DistributedConfig, deepspeed_file: Path | None) -> dict[str, Any]:
    """The accelerate config file contents (MULTI_GPU for DDP, DEEPSPEED for ZeRO).

    `mixed_precision` is not in the file but on the command line: with a DeepSpeed config file,
    accelerate rejects a file-level mixed_precision as a conflicting duplicate.
    """
    cfg: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        # MULTI_GPU starts the processes via torchrun; without CUDA each one becomes MULTI_CPU/gloo.
        "distributed_type": "DEEPSPEED" if deepspeed_file else "MULTI_GPU",
        "num_processes": dist.processes * dist.nodes,
        "num_machines": dist.nodes,
        "machine_rank": dist.node_rank,
        "main_process_ip": dist.main_address,
        "main_process_port": dist.main_port,
        "use_cpu": False,
        "rdzv_backend": "static",
        "same_network": True,
        "gpu_ids": "all",
    }
    if deepspeed_file:
        cfg["deepspeed_config"] = {"deepspeed_config_file": str(deepspeed_file), "zero3_init_flag": False,
                                   "deepspeed_multinode_launcher": "standard"}
    return cfg


def launch_command(dist: DistributedConfig, work_dir: Path, precision: str = "fp32") -> list[str]:
    """argv that starts every local process of the stage running posttrain.runner.worker.

    `precision` (resolved: fp32, bf16 or fp16) must agree with the trainer's bf16/fp16 flags, or
    accelerate stops with a mismatch error.
    """
    worker = ["-m", "posttrain.runner.worker", str(work_dir)]
    if dist.launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(dist.processes),
                "--nnodes", str(dist.nodes), "--node_rank", str(dist.node_rank), "--master_addr", dist.main_address,
                "--master_port", str(dist.main_port), *worker]
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(work_dir / "accelerate.yaml"),
            "--num_processes", str(dist.processes * dist.nodes), "--num_machines", str(dist.nodes),
            "--machine_rank", str(dist.node_rank), "--main_process_ip", dist.main_address,
            "--main_process_port", str(dist.main_port), "--mixed_precision", mixed_precision(precision), *worker]


def port_for(dist: DistributedConfig) -> int:
    """The rendezvous port: across machines `main_port` as configured; on one machine a free port
    the system picks where `main_port` is the default (29500), else `main_port` while it is free.

    Several runs on one machine (parallel test workers, two users) would otherwise collide on the
    default 29500 and fail at the rendezvous; probing 29500 first did not stop two runs that started
    together from both finding it free and both taking it. (The default is recognised by value, not
    by whether the recipe wrote it: a stage's saved config.yaml writes every key.)
    """
    if dist.nodes > 1:
        return dist.main_port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        if dist.main_port != type(dist).model_fields["main_port"].default:
            try:
                probe.bind(("127.0.0.1", dist.main_port))
                return dist.main_port
            except OSError:
                pass
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_launch_files(stage_config, work_dir: Path) -> list[str]:
    """Write accelerate.yaml (and deepspeed.json for ZeRO); return the launch argv."""
    from posttrain.common.runtime import resolve_precision

    dist = stage_config.distributed
    dist = dist.model_copy(update={"main_port": port_for(dist)})
    deepspeed_file = None
    if dist.zero:
        deepspeed_file = work_dir / "deepspeed.json"
        deepspeed_file.write_text(json.dumps(deepspeed_config(dist), indent=2) + "\n")
    (work_dir / "accelerate.yaml").write_text(yaml.safe_dump(accelerate_config(dist, deepspeed_file), sort_keys=False))
    return launch_command(dist, work_dir, resolve_precision(stage_config.precision))


def _child_env(processes: int) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    # One BLAS pool per process sized to its share of the cores; oversubscription is many times slower.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def _stream(proc: subprocess.Popen, log_path: Path, echo_prefix: str, console: Console | None) -> deque[str]:
    """Copy the children's output into the log; echo rank 0's progress lines; keep the tail."""
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    with log_path.open("a", encoding="utf-8", errors="replace") as log:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode("utf-8", errors="replace")
            log.write(line)
            log.flush()
            tail.append(line.rstrip("\n"))
            if console is not None and line.startswith(echo_prefix):
                console.print(line.rstrip("\n"), highlight=False, markup=False)
    return tail


def _worker_error(work_dir: Path) -> errors.PosttrainError | None:
    """The user error a worker recorded (error-rank*.json), rebuilt as its own class."""
    for path in sorted(work_dir.glob("error-rank*.json")):
        data = json.loads(path.read_text())
        cls = getattr(errors, data.get("type", ""), None)
        if isinstance(cls, type) and issubclass(cls, errors.PosttrainError):
            return cls(data.get("message", ""))
    return None


def launch_distributed(stage: ResolvedStage, ctx: StageContext, console: Console | None = None) -> dict[str, Any]:
    """Run `stage` on `distributed.processes` processes per node; return rank 0's summary (see module doc)."""
    dist = stage.config.distributed
    work_dir = ctx.work_dir.resolve()
    for stale in [work_dir / SUMMARY_NAME, *work_dir.glob("error-rank*.json")]:
        stale.unlink(missing_ok=True)
    cmd = write_launch_files(stage.config, work_dir)
    log_path = work_dir / LOG_NAME
    if console is not None:
        console.print(f"[dim]{stage.name}: {describe(stage.config)}, node {dist.node_rank}/{dist.nodes}; "
                      f"log: {log_path}[/dim]", highlight=False)
    with log_path.open("a") as log:
        log.write("$ " + " ".join(cmd) + "\n")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_child_env(dist.processes),
                            cwd=os.getcwd(), start_new_session=True)
    try:
        tail = _stream(proc, log_path, f"[{stage.name}]", console)
        code = proc.wait()
    except BaseException:
        # Ctrl-C or an error here: stop the whole process group we started, then re-raise.
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
        raise
    if code != 0:
        user_error = _worker_error(work_dir)
        if user_error is not None:
            raise user_error
        raise StageFailed(f"stage '{stage.name}' ({stage.kind.kind}) failed in its worker processes (exit status {code}). "
                          f"Last lines of {log_path}:\n" + "\n".join(tail))
    summary_file = work_dir / SUMMARY_NAME
    if summary_file.is_file():
        return json.loads(summary_file.read_text())
    if dist.node_rank != 0:
        return {"node_rank": dist.node_rank}  # the model and summary are written on node 0
    raise StageFailed(f"stage '{stage.name}': the workers exited cleanly but rank 0 wrote no {summary_file}; see {log_path}.")
