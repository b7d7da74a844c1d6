"""Fast checks of the pure pieces: loss-term mapping, ensemble aggregation, launch configs, data conversion."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import posttrain
from posttrain.common.config import DistributedConfig
from posttrain.common.distributed import deepspeed_config, uses_launcher
from posttrain.errors import ConfigError, DataError
from posttrain.models.reward import aggregate
from posttrain.runner import launch
from posttrain.stages.dpo import trl_loss_terms
from posttrain.stages.reward_model import bootstrap_indices, pairwise_accuracy

# --- DPO loss terms --------------------------------------------------------------------------

@pytest.mark.parametrize("args, expected", [
    (("sigmoid", 0.0, 0.0), (["sigmoid"], [1.0])),
    (("sigmoid", 0.1, 0.5), (["sigmoid", "robust", "sft"], [1.8, -0.8, 0.5])),
    (("robust", 0.2, 0.0), (["robust"], [1.0])),
    (("ipo", 0.0, 2.0), (["ipo", "sft"], [1.0, 2.0])),
    (("hinge", 0.0, 0.0), (["hinge"], [1.0])),
])
def test_trl_loss_terms(args, expected):
    types, weights = trl_loss_terms(*args)
    assert types == expected[0]
    assert weights == pytest.approx(expected[1], abs=1e-12)


def _trl_term(name: str, h: torch.Tensor, eps: float) -> torch.Tensor:
    """TRL 1.16 DPOTrainer's per-pair formulas for these two types (dpo_trainer.py, _compute_loss)."""
    if name == "sigmoid":
        return -F.logsigmoid(h)
    clean = -(1 - eps) * F.logsigmoid(h)
    flipped = -eps * F.logsigmoid(-h)
    return (clean - flipped) / (1 - 2 * eps)


@pytest.mark.parametrize("eps", [0.05, 0.1, 0.25, 0.45])
def test_cdpo_combination_equals_conservative_dpo(eps):
    """sum_i w_i * term_i == -(1-eps) log sigmoid(h) - eps log sigmoid(-h), values and gradients."""
    h = torch.linspace(-6, 6, 25, dtype=torch.float64, requires_grad=True)
    types, weights = trl_loss_terms("sigmoid", eps, 0.0)
    combined = sum(w * _trl_term(t, h, eps) for t, w in zip(types, weights))
    cdpo = -(1 - eps) * F.logsigmoid(h) - eps * F.logsigmoid(-h)
    torch.testing.assert_close(combined, cdpo, rtol=0, atol=1e-12)
    (g_combined,) = torch.autograd.grad(combined.sum(), h, retain_graph=True)
    (g_cdpo,) = torch.autograd.grad(cdpo.sum(), h)
    torch.testing.assert_close(g_combined, g_cdpo, rtol=0, atol=1e-12)


def test_cdpo_hand_values():
    """h=0: log 2 for any eps. h=2, eps=0.25: log(1+e^-2) + 0.25*2 = 0.126928 + 0.5 = 0.626928."""
    for h, eps, expected in ((0.0, 0.1, math.log(2)), (2.0, 0.25, math.log1p(math.exp(-2)) + 0.5)):
        ht = torch.tensor([h], dtype=torch.float64)
        types, weights = trl_loss_terms("sigmoid", eps, 0.0)
        got = sum(w * _trl_term(t, ht, eps) for t, w in zip(types, weights))
        assert float(got) == pytest.approx(expected, abs=1e-12)
    assert math.log1p(math.exp(-2)) + 0.5 == pytest.approx(0.626928, abs=1e-6)


def test_label_smoothing_rejected_for_hinge_and_ipo(tmp_path):
    recipe = {"name": "x", "run_dir": str(tmp_path), "model": str(tmp_path),
              "stages": {"dpo": {"kind": "dpo", "data": "d.jsonl", "loss_type": "ipo", "label_smoothing": 0.1}}}
    with pytest.raises(ConfigError, match="label_smoothing"):
        posttrain.resolve(recipe)


# --- reward ensembles ------------------------------------------------------------------------

def test_aggregate_hand_values():
    """Members (K=3) x samples (B=2): [[1,2],[3,2],[5,2]].

    mean = [3, 2]; min = [1, 2]; population std = [sqrt(((1-3)^2+0+(5-3)^2)/3), 0] = [1.632993, 0];
    mean - 0.5 * std = [3 - 0.816497, 2] = [2.183503, 2].
    """
    r = torch.tensor([[1.0, 2.0], [3.0, 2.0], [5.0, 2.0]])
    torch.testing.assert_close(aggregate(r, "mean"), torch.tensor([3.0, 2.0]))
    torch.testing.assert_close(aggregate(r, "min"), torch.tensor([1.0, 2.0]))
    torch.testing.assert_close(aggregate(r, "mean_minus_std", std_coef=0.5), torch.tensor([2.183503, 2.0]),
                               rtol=0, atol=1e-6)


def test_ensemble_of_one_aggregates_to_itself():
    r = torch.tensor([[0.3, -1.2, 4.0]])
    for how in ("mean", "min", "mean_minus_std"):
        torch.testing.assert_close(aggregate(r, how, std_coef=3.0), r[0])


def test_aggregate_rejects_unknown():
    with pytest.raises(ValueError, match="median"):
        aggregate(torch.zeros(2, 3), "median")


def test_pairwise_accuracy_hand_values():
    """Member 0 ranks pairs 0,1 right (2/4); member 1 ranks 0,1,2 right (3/4); ties count as wrong.

    mean chosen = [1.5, 1, 0.5, 0], mean rejected = [0, 0, 0, 0.5] -> 3/4.
    """
    chosen = torch.tensor([[1.0, 2.0, 0.0, 0.0], [2.0, 0.0, 1.0, 0.0]])
    rejected = torch.tensor([[0.0, 0.0, 0.0, 1.0], [0.0, -1.0, 0.0, 0.0]])
    got = pairwise_accuracy(chosen, rejected, "mean", 1.0)
    assert got == {"eval_pairwise_accuracy": 0.75, "eval_pairwise_accuracy_member_0": 0.5,
                   "eval_pairwise_accuracy_member_1": 0.75}


def test_bootstrap_indices_resample_with_replacement():
    a, b = bootstrap_indices(200, 0), bootstrap_indices(200, 1)
    assert a == bootstrap_indices(200, 0) and a != b
    assert len(a) == 200 and min(a) >= 0 and max(a) < 200
    assert len(set(a)) < 200  # P(no repeat in 200 draws from 200) is ~1e-86


# --- launch configuration --------------------------------------------------------------------

def test_deepspeed_config_zero2_offload_optimizer():
    cfg = deepspeed_config(DistributedConfig(processes=2, zero=2, offload="optimizer"))
    zero = cfg["zero_optimization"]
    assert zero["stage"] == 2 and zero["offload_optimizer"]["device"] == "cpu" and "offload_param" not in zero
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping", "train_batch_size"):
        assert cfg[key] == "auto"
    assert cfg["bf16"] == {"enabled": "auto"} and cfg["zero_force_ds_cpu_optimizer"] is False


def test_deepspeed_config_zero3_params_gathers_on_save():
    zero = deepspeed_config(DistributedConfig(processes=2, zero=3, offload="params"))["zero_optimization"]
    assert zero["stage"] == 3 and zero["offload_param"]["device"] == "cpu" and zero["offload_optimizer"]["device"] == "cpu"
    assert zero["stage3_gather_16bit_weights_on_model_save"] is True


@pytest.mark.parametrize("kwargs, match", [
    ({"zero": 0, "offload": "optimizer"}, "offload"),
    ({"zero": 2, "offload": "params"}, "zero: 3"),
    ({"nodes": 2, "node_rank": 2}, "node_rank"),
])
def test_distributed_config_rejects(kwargs, match):
    with pytest.raises(ValueError, match=match):  # pydantic's ValidationError: validate reports it with the key path
        DistributedConfig(processes=2, **kwargs)


def test_recipe_validation_rejects_offload_without_zero(tmp_path):
    recipe = {"name": "r", "model": str(tmp_path), "run_dir": str(tmp_path / "run"),
              "stages": {"s": {"kind": "sft", "data": str(tmp_path / "d.jsonl"),
                               "distributed": {"processes": 1, "offload": "optimizer"}}}}
    with pytest.raises(ConfigError, match=r"stages\.s\.distributed.*offload: optimizer needs DeepSpeed"):
        posttrain.resolve(recipe)


def test_deepspeed_is_for_stages_that_train():
    from posttrain.stages.registry import get_stage_kind

    with pytest.raises(ValueError, match="distributed.zero: 2 shards optimizer state .* a eval stage does not train"):
        get_stage_kind("eval").config_cls.model_validate({"kind": "eval", "data": "x", "verifier": "math",
                                                           "distributed": {"zero": 2}})


def test_deepspeed_runs_launched_also_with_one_process():
    assert not uses_launcher(DistributedConfig())
    assert uses_launcher(DistributedConfig(processes=2)) and uses_launcher(DistributedConfig(nodes=2))
    assert uses_launcher(DistributedConfig(processes=1, zero=3, offload="params"))


def test_accelerate_config_and_command(tmp_path):
    dist = DistributedConfig(processes=2, nodes=3, node_rank=1, main_address="10.0.0.1", main_port=29555)
    ddp = launch.accelerate_config(dist, None)
    assert ddp["distributed_type"] == "MULTI_GPU" and "mixed_precision" not in ddp
    assert (ddp["num_processes"], ddp["num_machines"], ddp["machine_rank"]) == (6, 3, 1)
    ds = launch.accelerate_config(dist, tmp_path / "ds.json")
    assert ds["distributed_type"] == "DEEPSPEED" and "mixed_precision" not in ds
    assert ds["deepspeed_config"]["deepspeed_config_file"] == str(tmp_path / "ds.json")
    cmd = launch.launch_command(dist, tmp_path, "fp32")
    joined = " ".join(cmd)
    assert "-m accelerate.commands.launch" in joined and "--num_processes 6 --num_machines 3 --machine_rank 1" in joined
    assert "--main_process_ip 10.0.0.1 --main_process_port 29555 --mixed_precision no" in joined
    assert "--mixed_precision bf16" in " ".join(launch.launch_command(dist, tmp_path, "bf16"))
    assert cmd[-3:] == ["-m", "posttrain.runner.worker", str(tmp_path)]
    torchrun = launch.launch_command(dist.model_copy(update={"launcher": "torchrun"}), tmp_path)
    assert "--nproc_per_node 2 --nnodes 3 --node_rank 1" in " ".join(torchrun)


def test_worker_error_is_rebuilt_as_its_class(tmp_path):
    from posttrain.runner.records import write_json

    write_json(tmp_path / "error-rank1.json", {"type": "DataError", "message": "Data file x.jsonl, line 3: bad"})
    err = launch._worker_error(tmp_path)
    assert isinstance(err, DataError) and "line 3" in str(err)


def test_worker_rebuilds_config_from_yaml(tmp_path):
    import yaml

    from posttrain.runner.worker import load_stage_config, stage_name
    from posttrain.stages.dpo import DPOConfig

    config = DPOConfig(model="m", data="d.jsonl", beta=0.3, loss_type="robust", label_smoothing=0.1)
    work = tmp_path / "dpo-0123456789ab"
    work.mkdir()
    (work / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json")))
    kind, rebuilt = load_stage_config(work)
    assert kind.kind == "dpo" and rebuilt == config
    assert stage_name(work) == "dpo"


# --- precision and data conversion -----------------------------------------------------------

@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU defaults")
def test_every_trl_config_gets_bf16_false_on_cpu(tmp_path):
    from trl import DPOConfig, KTOConfig, RewardConfig
    from trl.experimental.cpo import CPOConfig
    from trl.experimental.orpo import ORPOConfig

    from posttrain.report.metrics import MetricsLogger
    from posttrain.report.progress import StageProgress
    from posttrain.stages import dpo, kto, orpo, reward_model
    from posttrain.stages.context import StageContext
    from posttrain.stages.trl_bridge import training_args

    ctx = StageContext("s", tmp_path, MetricsLogger(tmp_path / "m.jsonl"), StageProgress("s", enabled=False))
    pairs = [(reward_model.RewardModelConfig, RewardConfig), (dpo.DPOConfig, DPOConfig), (kto.KTOConfig, KTOConfig),
             (orpo.ORPOConfig, ORPOConfig), (orpo.SimPOConfig, CPOConfig)]
    for ours, theirs in pairs:
        args = theirs(**training_args(ours(model="m", data="d.jsonl"), ctx, has_eval=False))
        assert args.bf16 is False and args.fp16 is False, theirs.__name__


def test_fp16_on_cpu_is_a_config_error():
    from posttrain.stages.trl_bridge import check_precision

    if torch.cuda.is_available():
        pytest.skip("fp16 is valid on CUDA")
    with pytest.raises(ConfigError, match="fp16"):
        check_precision("fp16")


def test_kto_unpairs_and_shuffles_preference_pairs():
    import datasets

    from posttrain.stages.kto import to_unpaired

    pairs = datasets.Dataset.from_list([{"prompt": f"p{i}", "chosen": f"c{i}", "rejected": f"r{i}"} for i in range(50)])
    rows = to_unpaired(pairs, seed=0, source="x.jsonl")
    assert len(rows) == 100 and sum(rows["label"]) == 50
    assert {(r["prompt"], r["completion"], r["label"]) for r in rows} == \
        {(f"p{i}", f"c{i}", True) for i in range(50)} | {(f"p{i}", f"r{i}", False) for i in range(50)}
    assert sum(rows["label"][:10]) not in (0, 10)  # shuffled: TRL's own unpairing puts all chosen first
    assert rows["completion"] == to_unpaired(pairs, seed=0, source="x.jsonl")["completion"]


def test_kto_needs_boolean_labels():
    import datasets

    from posttrain.stages.kto import to_unpaired

    with pytest.raises(DataError, match="'label'"):
        to_unpaired(datasets.Dataset.from_list([{"prompt": "p", "completion": "c"}]), 0, "x.jsonl")
    with pytest.raises(DataError, match="true"):
        to_unpaired(datasets.Dataset.from_list([{"prompt": "p", "completion": "c", "label": 1}]), 0, "x.jsonl")


def test_single_machine_port_falls_back_to_a_free_one():
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        port = launch.port_for(DistributedConfig(processes=2, main_port=taken))
        assert port != taken and port > 0
        # across machines every node must use the agreed port, even if it looks taken here
        assert launch.port_for(DistributedConfig(processes=2, nodes=2, main_port=taken)) == taken
    # the default 29500, even written out as a saved config.yaml does: one the system picks (from
    # the ephemeral range, above 29500), so two runs starting together do not both take 29500
    ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for dist in (DistributedConfig(processes=2), DistributedConfig(processes=2, main_port=29500)):
        assert launch.port_for(dist) >= ephemeral > 29500
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        chosen = probe.getsockname()[1]
    assert launch.port_for(DistributedConfig(processes=2, main_port=chosen)) == chosen  # set and free: kept
