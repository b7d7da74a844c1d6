"""Run one stage's processes as Ray actors placed by a placement group (`distributed.launcher: ray`).

Ray is the scheduler here, not posttrain: the runner joins the cluster at `distributed.ray_address`
(`ray start --head` on one machine, `ray start --address HEAD:6379` on the others; unset: a local
Ray for this run), reserves one bundle of `distributed.ray_resources` per process in a placement
group with `distributed.ray_strategy`, and starts one actor in each bundle. Every actor then runs
:mod:`posttrain.runner.worker` in its own process, exactly as a process started by torchrun would:
the runner gives it ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` / ``LOCAL_WORLD_SIZE`` (its place among
the stage's actors on its node), and ``MASTER_ADDR`` / ``MASTER_PORT`` (a free port on rank 0's
node), so the processes form their gloo / NCCL group across the nodes Ray chose. On GPU bundles the
actors of one node see all of that node's GPUs Ray gave the stage (``CUDA_VISIBLE_DEVICES``) and
``LOCAL_RANK`` picks their own, as Ray Train does.

Each rank's output goes to ``WORK_DIR/launch-rankR.log``; the runner echoes rank 0's progress lines
and writes where every rank ran to ``WORK_DIR/placement.json``. When one rank fails, the others
are stopped at once (they would otherwise wait in a collective), and the stage fails with the
worker's own error or the tail of the failed rank's log. The work directory must be on a
filesystem every node sees (as for multi-node accelerate), and posttrain installed on every node.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from posttrain.errors import ConfigError, StageFailed

if TYPE_CHECKING:
    from rich.console import Console

    from posttrain.common.config import DistributedConfig
    from posttrain.recipe.resolve import ResolvedStage
    from posttrain.stages.context import StageContext

PLACE_TIMEOUT_S = 120.0  # Ray reserving the bundles and starting the actors
# The runner's settings every rank gets (actors otherwise inherit the raylet's environment): the
# hub and cache locations, offline switches, trackers' keys, posttrain's own, the import path,
# and the collectives' and BLAS knobs. Machine-specific variables (PATH, HOME, CUDA devices) are not.
FORWARDED_PREFIXES = ("HF_", "HUGGINGFACE_", "TRANSFORMERS_", "POSTTRAIN_", "WANDB_", "MLFLOW_", "NCCL_", "GLOO_",
                      "TORCH_", "OMP_", "MKL_", "TOKENIZERS_")
FORWARDED_NAMES = ("PYTHONPATH",)
PLACEMENT_NAME = "placement.json"
TAIL_LINES = 40


class StageProcess:
    """One process of the stage (a Ray actor): where it runs, then the worker's run."""

    def where(self) -> dict[str, Any]:
        """Its node, the GPUs Ray gave it, and a free port on its node (rank 0's is the rendezvous)."""
        import socket

        import ray

        context = ray.get_runtime_context()
        with socket.socket() as probe:
            probe.bind(("", 0))
            port = probe.getsockname()[1]
        return {"node": context.get_node_id(), "ip": ray.util.get_node_ip_address(), "pid": os.getpid(),
                "gpus": [str(g) for g in ray.get_gpu_ids()], "port": port}

    def run(self, work_dir: str, env: dict[str, str]) -> int:
        """Run the stage's worker in this process, its output into launch-rankR.log -> exit status."""
        from posttrain.runner.worker import run_worker

        os.environ.update(env)
        log = open(Path(work_dir) / f"launch-rank{env['RANK']}.log", "a", buffering=1)  # noqa: SIM115 - the process's stdout from here on
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            return run_worker(Path(work_dir))
        except BaseException:  # noqa: BLE001 - into the rank's log, as a torchrun worker's would go
            traceback.print_exc()
            return 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()


def rank_envs(places: list[dict[str, Any]], base: dict[str, str] | None = None) -> list[dict[str, str]]:
    """The torchrun-style environment of each rank, from where Ray placed it (rank = bundle order).

    >>> places = [{"node": "a", "ip": "10.0.0.1", "gpus": [], "port": 6000},
    ...           {"node": "b", "ip": "10.0.0.2", "gpus": [], "port": 6001},
    ...           {"node": "a", "ip": "10.0.0.1", "gpus": [], "port": 6002}]
    >>> [(e["RANK"], e["LOCAL_RANK"], e["LOCAL_WORLD_SIZE"], e["MASTER_ADDR"], e["MASTER_PORT"]) for e in rank_envs(places)]
    [('0', '0', '2', '10.0.0.1', '6000'), ('1', '0', '1', '10.0.0.1', '6000'), ('2', '1', '2', '10.0.0.1', '6000')]
    """
    by_node: dict[str, list[int]] = {}
    for rank, place in enumerate(places):
        by_node.setdefault(place["node"], []).append(rank)
    envs = []
    for rank, place in enumerate(places):
        peers = by_node[place["node"]]
        env = {**(base or {}), "RANK": str(rank), "WORLD_SIZE": str(len(places)),
               "LOCAL_RANK": str(peers.index(rank)), "LOCAL_WORLD_SIZE": str(len(peers)),
               "GROUP_RANK": str(list(by_node).index(place["node"])), "MASTER_ADDR": places[0]["ip"],
               "MASTER_PORT": str(places[0]["port"])}
        gpus = [g for peer in peers for g in places[peer]["gpus"]]
        if gpus:  # one node's actors see all of its GPUs given to the stage; LOCAL_RANK picks their own
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
            env["LOCAL_RANK"] = str(gpus.index(place["gpus"][0]))
        envs.append(env)
    return envs


def forwarded_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The runner's variables the ranks get (FORWARDED_PREFIXES, FORWARDED_NAMES), plus unbuffered output.

    >>> forwarded_env({"HF_HOME": "/cache", "PATH": "/bin", "PYTHONPATH": "/src"})["HF_HOME"], "PATH" in forwarded_env({"PATH": "/bin"})
    ('/cache', False)
    """
    environ = os.environ if environ is None else environ
    env = {k: v for k, v in environ.items() if k.startswith(FORWARDED_PREFIXES) or k in FORWARDED_NAMES}
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return {**env, "PYTHONUNBUFFERED": "1"}


def _place(dist: DistributedConfig, actors: int):
    """The placement group with one bundle per process, ready -> (group, [StageProcess handles])."""
    import ray
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    bundle = {k: float(v) for k, v in dist.ray_resources.items()}
    group = placement_group([dict(bundle) for _ in range(actors)], strategy=dist.ray_strategy)
    if not group.wait(timeout_seconds=PLACE_TIMEOUT_S):
        ray.util.remove_placement_group(group)
        raise ConfigError(f"distributed.ray_resources {dist.ray_resources}: Ray could not place {actors} stage "
                          f"process(es) with strategy {dist.ray_strategy} within {PLACE_TIMEOUT_S:g} s; the cluster "
                          f"has {ray.cluster_resources()}")
    rest = dict(bundle)
    num_cpus, num_gpus = rest.pop("CPU", 0.0), rest.pop("GPU", 0.0)
    remote = ray.remote(StageProcess)
    handles = [remote.options(num_cpus=num_cpus, num_gpus=num_gpus, resources=rest, max_restarts=0,
                              scheduling_strategy=PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=i))
               .remote() for i in range(actors)]
    return group, handles


def launch_ray(stage: ResolvedStage, ctx: StageContext, console: Console | None = None) -> dict[str, Any]:
    """Run ``stage`` as ``distributed.processes`` Ray actors; return rank 0's summary (module doc)."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"stages.{stage.name}.distributed.launcher: ray needs Ray installed: "
                          "pip install 'posttrain[ray]'") from None

    from posttrain.rl.rollout.ray_service import connect
    from posttrain.runner.launch import SUMMARY_NAME, _worker_error

    dist = stage.config.distributed
    work_dir = ctx.work_dir.resolve()
    for stale in [work_dir / SUMMARY_NAME, *work_dir.glob("error-rank*.json"), *work_dir.glob("launch-rank*.log")]:
        stale.unlink(missing_ok=True)
    started_ray = not ray.is_initialized()
    connect(dist.ray_address, key="distributed.ray_address")
    group, actors = None, []
    try:
        group, actors = _place(dist, dist.processes)
        try:
            places = ray.get([actor.where.remote() for actor in actors], timeout=PLACE_TIMEOUT_S)
        except (ray.exceptions.RayError, TimeoutError) as exc:
            raise StageFailed(f"stage '{stage.name}': its Ray processes did not start within {PLACE_TIMEOUT_S:g} s "
                              f"(is posttrain installed on every node?): {exc}") from None
        envs = rank_envs(places, forwarded_env())
        (work_dir / PLACEMENT_NAME).write_text(json.dumps(
            [{"rank": r, "node": p["node"], "ip": p["ip"], "pid": p["pid"], "gpus": p["gpus"]} for r, p in enumerate(places)],
            indent=2) + "\n")
        if console is not None:
            nodes = len({p["node"] for p in places})
            console.print(f"[dim]{stage.name}: {dist.processes} process(es) on {nodes} Ray node(s); logs: "
                          f"{work_dir}/launch-rank*.log[/dim]", highlight=False)
        failed = _wait([actor.run.remote(str(work_dir), env) for actor, env in zip(actors, envs)], work_dir,
                       f"[{stage.name}]", console)
    finally:
        _release(actors, group, started_ray)
    if failed:  # ranks in the order their failure was seen (a dead actor before the errors it caused)
        user_error = _worker_error(work_dir)
        if user_error is not None:
            raise user_error
        rank, code = failed[0]
        also = ", ".join(f"rank {r} ({c})" for r, c in failed[1:])
        raise StageFailed(f"stage '{stage.name}' ({stage.kind.kind}) failed in its Ray process of rank {rank} ({code})"
                          f"{'; then ' + also if also else ''}. Last lines of {work_dir / f'launch-rank{rank}.log'}:\n"
                          f"{_tail(work_dir, rank)}")
    summary_file = work_dir / SUMMARY_NAME
    if summary_file.is_file():
        return json.loads(summary_file.read_text())
    raise StageFailed(f"stage '{stage.name}': the Ray processes exited cleanly but rank 0 wrote no {summary_file}.")


def _wait(refs: list, work_dir: Path, echo_prefix: str, console: Console | None) -> list[tuple[int, str]]:
    """Wait for every rank, echoing rank 0's progress -> the failed ranks as (rank, how), in the
    order seen, a dead actor first within one poll (the others' errors follow from it); empty
    when all exited 0. At the first failure it returns at once: the caller stops the ranks still
    running, which would wait for the failed one in a collective."""
    import ray

    running = dict(enumerate(refs))
    echoed = 0
    while running:
        ray.wait(list(running.values()), num_returns=1, timeout=1.0)
        failed: list[tuple[int, str, bool]] = []
        for rank, ref in list(running.items()):
            if not ray.wait([ref], timeout=0)[0]:
                continue
            del running[rank]
            try:
                code = ray.get(ref)
            except ray.exceptions.RayActorError as exc:  # the process died: OOM kill, node lost, SIGKILL
                failed.append((rank, f"its actor died: {type(exc).__name__}", True))
            except ray.exceptions.RayError as exc:
                failed.append((rank, f"{type(exc).__name__}: {exc}", False))
            else:
                if code != 0:
                    failed.append((rank, f"exit status {code}", False))
        echoed = _echo(work_dir / "launch-rank0.log", echoed, echo_prefix, console)
        if failed:
            return [(rank, how) for rank, how, _ in sorted(failed, key=lambda f: not f[2])]
    return []


def _echo(log: Path, offset: int, prefix: str, console: Console | None) -> int:
    """Print the progress lines rank 0 wrote since ``offset`` -> the new offset."""
    if console is None or not log.is_file():
        return offset
    with log.open("rb") as f:
        f.seek(offset)
        chunk = f.read()
    complete = chunk[:chunk.rfind(b"\n") + 1]
    for line in complete.decode("utf-8", errors="replace").splitlines():
        if line.startswith(prefix):
            console.print(line, highlight=False, markup=False)
    return offset + len(complete)


def _release(actors: list, group, started_ray: bool) -> None:
    """Kill the stage's actors, give their bundles back, and stop a Ray this run started."""
    import ray

    for actor in actors:
        with contextlib.suppress(Exception):  # already gone; the others must still go
            ray.kill(actor)
    if group is not None:
        ray.util.remove_placement_group(group)
    if started_ray:
        ray.shutdown()


def _tail(work_dir: Path, rank: int) -> str:
    log = work_dir / f"launch-rank{rank}.log"
    lines = log.read_text(errors="replace").splitlines() if log.is_file() else ["(no output)"]
    return "\n".join(lines[-TAIL_LINES:])
