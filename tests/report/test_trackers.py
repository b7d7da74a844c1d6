"""report_to: each tracker gets the same numbers as metrics.jsonl, read back with the tracker's own
reader (TensorBoard's event accumulator, MLflow's client on the local store, the records of the W&B
offline run file)."""
from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path

import pytest

import posttrain
from posttrain.errors import ConfigError
from posttrain.report.metrics import MetricsLogger, read_metrics
from posttrain.report.trackers import TensorBoardSink, TrackerTarget, mlflow_name


def tensorboard_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def wandb_history(run_file: Path) -> list[dict]:
    """The history rows of a W&B offline `.wandb` file: a 7-byte header (":W&B", ident, version),
    then LevelDB-log framed records (32 KiB blocks; 7-byte chunk header crc32, length, type) each a
    wandb_internal_pb2.Record."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos, pending, rows = run_file.read_bytes(), 32768, 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            break
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST chunk: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in record.history.item})
    return rows


def mlflow_history(store: Path, experiment: str, run_name: str, key: str) -> list[tuple[int, float]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store.resolve().as_uri())
    exp = client.get_experiment_by_name(experiment)
    (run,) = [r for r in client.search_runs([exp.experiment_id]) if r.info.run_name == run_name]
    assert run.info.status == "FINISHED"
    return [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]


@pytest.mark.slow
def test_sft_stage_reports_the_same_numbers_to_all_three_trackers(tmp_path, tiny_model_dir, chat_sft_file, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_dir = tmp_path / "run"
    out = posttrain.sft(model=str(tiny_model_dir), data=str(chat_sft_file), max_steps=4, batch_size=8,
                        logging_steps=1, lr=1e-3, run_dir=run_dir, report_to=["tensorboard", "wandb", "mlflow"])
    assert out.status == "completed"
    stage_dir = run_dir / "sft"
    record = [r for r in read_metrics(stage_dir / "metrics.jsonl") if "loss" in r]
    expected = [(r["step"], r["loss"]) for r in record]
    assert [s for s, _ in expected] == [1, 2, 3, 4]

    tb = tensorboard_scalars(stage_dir / "tensorboard")
    assert [s for s, _ in tb["loss"]] == [1, 2, 3, 4]
    assert [v for _, v in tb["loss"]] == pytest.approx([v for _, v in expected], rel=1e-6)  # float32 in events

    (run_file,) = (stage_dir / "wandb").glob("offline-run-*/run-*.wandb")
    rows = [r for r in wandb_history(run_file) if "loss" in r]
    assert [(r["_step"], r["loss"]) for r in rows] == expected

    assert mlflow_history(run_dir / "mlruns", "sft", "sft", "loss") == expected
    assert mlflow_history(run_dir / "mlruns", "sft", "sft", mlflow_name("grad_norm"))  # every metric, not only loss


def test_tensorboard_drops_the_steps_after_the_checkpoint_a_resumed_stage_restarts_from(tmp_path):
    target = TrackerTarget(tmp_path, tmp_path, "r", "s", {"lr": 0.1})
    first = MetricsLogger(tmp_path / "metrics.jsonl", sinks=[TensorBoardSink(target)])
    for step in (1, 2, 3, 4):
        first.log(step, {"loss": float(step), "note": "text is not a scalar"})
    first.close()
    resumed = MetricsLogger(tmp_path / "metrics.jsonl", sinks=[TensorBoardSink(target)])
    resumed.truncate_after(2)  # what checkpoint restore does
    for step in (3, 4):
        resumed.log(step, {"loss": 10.0 * step})
    resumed.close()
    assert tensorboard_scalars(tmp_path / "tensorboard") == {"loss": [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]}
    assert [r["loss"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1.0, 2.0, 30.0, 40.0]


def test_mlflow_names_keep_what_mlflow_accepts():
    assert mlflow_name("eval/pass@8") == "eval/pass_at_8"
    assert mlflow_name("rewards/math/timeouts") == "rewards/math/timeouts"
    assert mlflow_name("a(b)") == "a_b_"


def test_a_tracker_that_is_not_installed_is_named_with_its_extra_before_anything_trains(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: r\nrun_dir: {tmp_path / 'run'}\ndefaults:\n  report_to: [wandb]\n"
                      "stages:\n  init:\n    kind: init_model\n    size: tiny\n")
    with pytest.raises(ConfigError) as err:
        posttrain.run(str(recipe), show_progress=False)
    assert "stages.init.report_to: wandb needs the wandb package" in str(err.value)
    assert "pip install 'posttrain[wandb]'" in str(err.value)
    assert not (tmp_path / "run" / "init").exists()


def test_report_to_is_validated_and_does_not_change_the_stage_hash(tmp_path):
    from posttrain.recipe import load_recipe
    from posttrain.runner.runner import compute_hashes

    def recipe(extra: str) -> Path:
        path = tmp_path / f"r{len(extra)}.yaml"
        path.write_text(f"name: r\nrun_dir: {tmp_path / 'run'}\nstages:\n  init:\n    kind: init_model\n    size: tiny\n{extra}")
        return path

    plain, tracked = load_recipe(recipe("")), load_recipe(recipe("    report_to: [tensorboard, mlflow]\n"))
    assert tracked.stage("init").config.report_to == ["tensorboard", "mlflow"]
    assert compute_hashes(plain) == compute_hashes(tracked)
    with pytest.raises(ConfigError, match="report_to"):
        load_recipe(recipe("    report_to: [comet]\n"))


class _Broken:
    def __init__(self):
        self.closed = []

    def write(self, step, record):
        raise RuntimeError("tracker server unreachable")

    def truncate_after(self, step):
        pass

    def close(self, failed=False):
        self.closed.append(failed)


def test_a_failing_tracker_is_dropped_with_a_warning_and_never_stops_the_record(tmp_path, caplog):
    broken = _Broken()
    logger = MetricsLogger(tmp_path / "metrics.jsonl", sinks=[broken])
    logger.log(1, {"loss": 1.0})
    logger.log(2, {"loss": 0.5})
    logger.close()
    assert [r["loss"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1.0, 0.5]
    assert logger.sinks == [] and broken.closed == []  # dropped at the first failure
    assert "tracker _Broken failed in write (RuntimeError: tracker server unreachable)" in caplog.text


def test_a_failed_stage_marks_its_mlflow_run_failed(tmp_path, monkeypatch):
    from posttrain.report.trackers import MlflowSink

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    sink = MlflowSink(TrackerTarget(tmp_path, tmp_path, "exp", "broken_stage", {"lr": 0.1}))
    logger = MetricsLogger(tmp_path / "metrics.jsonl", sinks=[sink])
    logger.log(1, {"loss": 2.0})
    logger.close(failed=True)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").resolve().as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("exp").experiment_id])
    assert run.info.status == "FAILED" and run.data.metrics["loss"] == 2.0
