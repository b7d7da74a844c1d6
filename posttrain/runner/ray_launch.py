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

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from posttrain.errors import ConfigError, StageFailed

if TYPE_CHECKING:
    from rich.console import Console

    from posttrain.common.config import DistributedConfig
    from posttrain.recipe.resolve import ResolvedStage
    from posttrain.stages.context import StageContext

PLACE_TIMEOUT_S = 120.0  # Ray reserving the bundles and starting the actors
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
    import ray

    from posttrain.rl.rollout.ray_service import connect
    from posttrain.runner.launch import SUMMARY_NAME, _worker_error

    dist = stage.config.distributed
    work_dir = ctx.work_dir.resolve()
    for stale in [work_dir / SUMMARY_NAME, *work_dir.glob("error-rank*.json"), *work_dir.glob("launch-rank*.log")]:
        stale.unlink(missing_ok=True)
    started_ray = not ray.is_initialized()
    connect(dist.ray_address, key="distributed.ray_address")
    group, actors = _place(dist, dist.processes)
    try:
        places = ray.get([actor.where.remote() for actor in actors], timeout=PLACE_TIMEOUT_S)
        envs = rank_envs(places, {"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"})
        (work_dir / PLACEMENT_NAME).write_text(json.dumps(
            [{"rank": r, "node": p["node"], "ip": p["ip"], "pid": p["pid"], "gpus": p["gpus"]} for r, p in enumerate(places)],
            indent=2) + "\n")
        if console is not None:
            nodes = len({p["node"] for p in places})
            console.print(f"[dim]{stage.name}: {dist.processes} process(es) on {nodes} Ray node(s); logs: "
                          f"{work_dir}/launch-rank*.log[/dim]", highlight=False)
        codes = _wait([actor.run.remote(str(work_dir), env) for actor, env in zip(actors, envs)], work_dir,
                      f"[{stage.name}]", console)
    finally:
        for actor in actors:
            ray.kill(actor)
        ray.util.remove_placement_group(group)
        if started_ray:
            ray.shutdown()
    failed = [(rank, code) for rank, code in enumerate(codes) if code not in (0, None)]
    if failed:
        user_error = _worker_error(work_dir)
        if user_error is not None:
            raise user_error
        rank, code = failed[0]
        raise StageFailed(f"stage '{stage.name}' ({stage.kind.kind}) failed in its Ray process of rank {rank} ({code}). "
                          f"Last lines of {work_dir / f'launch-rank{rank}.log'}:\n{_tail(work_dir, rank)}")
    summary_file = work_dir / SUMMARY_NAME
    if summary_file.is_file():
        return json.loads(summary_file.read_text())
    raise StageFailed(f"stage '{stage.name}': the Ray processes exited cleanly but rank 0 wrote no {summary_file}.")


def _wait(refs: list, work_dir: Path, echo_prefix: str, console: Console | None) -> list[int | str | None]:
    """Every rank's exit status (or how its actor died), echoing rank 0's progress meanwhile; at
    the first failure it returns at once, None for the ranks still running (the caller stops them:
    they would wait for the failed one in a collective)."""
    import ray

    codes: list[int | str | None] = [None] * len(refs)
    echoed = 0
    while any(code is None for code in codes):
        ray.wait([r for r, c in zip(refs, codes) if c is None], num_returns=1, timeout=1.0)
        for rank, ref in enumerate(refs):
            if codes[rank] is None and ray.wait([ref], timeout=0)[0]:
                try:
                    codes[rank] = ray.get(ref)
                except ray.exceptions.RayError as exc:  # the actor died: OOM kill, node lost, SIGKILL
                    codes[rank] = f"its actor died: {type(exc).__name__}"
        echoed = _echo(work_dir / "launch-rank0.log", echoed, echo_prefix, console)
        if any(code not in (None, 0) for code in codes):
            break  # the ranks still running (None) are stopped by the caller
    return codes


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


def _tail(work_dir: Path, rank: int) -> str:
    log = work_dir / f"launch-rank{rank}.log"
    lines = log.read_text(errors="replace").splitlines() if log.is_file() else ["(no output)"]
    return "\n".join(lines[-TAIL_LINES:])
