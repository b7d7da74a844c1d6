"""Run by test_update.py under torchrun: one real update over 2 gloo processes, each with half the rows.

    torchrun --nproc_per_node 2 two_process_update.py MODEL_DIR OUT_DIR AGGREGATION [ZERO]

Every process builds the same 8-row experience (same seed), keeps rows rank*4 .. rank*4+3, takes one
minibatch_step through a DDP-prepared Accelerator (ZERO 0) or a DeepSpeed ZeRO-2 engine (ZERO 2, the
plugin make_accelerator builds from the stage config, as under the torchrun launcher), and rank 0 saves the parameter change.
"""
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
from test_update import experience, make_config

from posttrain.rl.algos import FixedKLController
from posttrain.rl.loop.dist import make_accelerator, processes
from posttrain.rl.loop.models import ActorCritic, load_policy
from posttrain.rl.loop.update import minibatch_step


def main(model_dir: str, out_dir: str, aggregation: str, zero: str = "0") -> None:
    from posttrain.common.config import DistributedConfig

    config = make_config(loss_aggregation=aggregation, grad_accum=1)
    if int(zero):  # no accelerate settings in the environment (torchrun): the loop builds the plugin
        config = config.model_copy(update={"distributed": DistributedConfig(processes=2, zero=int(zero))})
    acc = make_accelerator(config, world_size=2)  # the loop's own: gloo DDP or DeepSpeed over the CPU processes
    procs = processes()
    assert procs.size == 2, procs
    exp = experience(load_policy(model_dir)).select(torch.arange(procs.rank * 4, procs.rank * 4 + 4))
    policy = load_policy(model_dir)
    model = ActorCritic(policy)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    prepared, optimizer = acc.prepare(model, optimizer)
    session = SimpleNamespace(config=config, accelerator=acc, procs=procs, model=prepared, unwrapped=model,
                              optimizer=optimizer, scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0),
                              kl_controller=FixedKLController(config.kl_coef))
    expected = "DeepSpeedEngine" if int(zero) else "DistributedDataParallel"
    assert type(prepared).__name__ == expected, (type(prepared), acc.distributed_type)
    before = {k: v.detach().clone() for k, v in policy.named_parameters()}
    stats = procs.reduce_metrics(minibatch_step(session, exp))
    if procs.is_main:
        delta = {k: before[k] - v.detach() for k, v in policy.named_parameters()}
        torch.save({"delta": delta, "stats": stats}, Path(out_dir) / "two.pt")
    dist.barrier()
    # torn down explicitly: a process exiting with gloo's threads alive was once aborted by
    # std::terminate ("terminate called without an active exception", SIGABRT) in the full suite
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:5])
