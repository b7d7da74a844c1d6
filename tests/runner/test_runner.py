"""Runner behaviour: caching, rerun on change, --force/--only/--from, failure isolation, records."""
from __future__ import annotations

import json
from typing import ClassVar, Literal

import pytest

import posttrain
from posttrain.common.config import StageConfig
from posttrain.errors import ConfigError, StageFailed
from posttrain.stages.registry import register_stage

CALLS: list[str] = []


class ProbeConfig(StageConfig):
    """A stage that writes one file; counts its runs in CALLS."""

    kind: Literal["probe"] = "probe"
    value: int = 0
    fail: bool = False
    function: str = ""  # a plugin reference, as a reward channel's `function`
    key_metrics: ClassVar[tuple[str, ...]] = ("value",)


@register_stage("probe", ProbeConfig, "test stage")
def _run_probe(config: ProbeConfig, ctx) -> dict:
    CALLS.append(ctx.name)
    for step in range(1, 4):
        ctx.metrics.log(step, {"value": config.value * step})
    if config.fail:
        raise ValueError("probe asked to fail")
    ctx.output_dir.mkdir(parents=True)
    (ctx.output_dir / "weights.txt").write_text(str(config.value))
    return {"value": config.value}


@pytest.fixture
def recipe(tmp_path):
    CALLS.clear()
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")  # preflight checks the input is a model folder
    return {"name": "probe-run", "model": str(base), "run_dir": str(tmp_path / "run"),
            "stages": {"a": {"kind": "probe", "value": 1}, "b": {"kind": "probe", "value": 2},
                       "c": {"kind": "probe", "value": 3}}}


def _run(recipe, overrides=None, **kw):
    return posttrain.run(recipe, overrides, show_progress=False, **kw)


def test_second_run_skips_everything(recipe, tmp_path):
    first = _run(recipe)
    assert [s.status for s in first.stages] == ["completed"] * 3 and CALLS == ["a", "b", "c"]
    second = _run(recipe)
    assert [s.status for s in second.stages] == ["cached"] * 3 and CALLS == ["a", "b", "c"]
    assert second.stage("b").summary == {"value": 2}
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert [s["status"] for s in manifest["stages"]] == ["cached"] * 3
    record = json.loads((tmp_path / "run" / "b" / "stage.json").read_text())
    assert record["status"] == "completed" and record["hash"] == first.stage("b").hash
    assert (tmp_path / "run" / "b" / "metrics.jsonl").read_text().count("\n") == 3
    assert (tmp_path / "run" / "b" / "config.yaml").exists()


def test_a_moved_run_directory_is_still_up_to_date(recipe, tmp_path):
    """Stage fingerprints name upstream outputs by stage, not by absolute path: a run directory
    moved (or copied to try a variant) reruns nothing; a change still reruns what it touches."""
    import shutil

    first = _run(recipe)
    shutil.move(tmp_path / "run", tmp_path / "moved")
    CALLS.clear()
    moved = _run(recipe, {"run_dir": str(tmp_path / "moved")})
    assert [s.status for s in moved.stages] == ["cached"] * 3 and CALLS == []
    assert [s.hash for s in moved.stages] == [s.hash for s in first.stages]
    shutil.copytree(tmp_path / "moved", tmp_path / "variant")
    _run(recipe, {"run_dir": str(tmp_path / "variant"), "stages.c.value": 30})
    assert CALLS == ["c"] and (moved.stage("c").output / "weights.txt").read_text() == "3"


def _earlier_records(recipe, tmp_path, drop: str = "", relocatable: bool = True) -> dict[str, str]:
    """Rewrite a's, b's and c's records as an earlier posttrain would have made them: fingerprints
    that name absolute paths (``relocatable=False``), or a config without the key ``drop``."""
    import yaml

    from posttrain.recipe.resolve import resolve_recipe
    from posttrain.runner.fingerprint import stage_fingerprint

    resolved = resolve_recipe(recipe)
    hashes: dict[str, str] = {}
    outputs: dict[str, str] = {}
    for stage in resolved.stages:
        config = stage.config.model_dump(mode="json")
        *parents, last = drop.split(".") if drop else [None]
        inner = config
        for key in parents:
            inner = inner[key]
        inner.pop(last, None)
        upstream = {dep: hashes[dep] for dep in stage.depends_on}
        hashes[stage.name] = stage_fingerprint(config, upstream, outputs, relocatable)
        outputs[str(stage.output_dir)] = stage.name
        folder = tmp_path / "run" / stage.name
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
        (folder / "stage.json").write_text(json.dumps({**json.loads((folder / "stage.json").read_text()),
                                                       "hash": hashes[stage.name]}))
    return hashes


def test_a_run_made_before_relocatable_fingerprints_is_not_retrained(recipe, tmp_path):
    """Records written with the old fingerprints (absolute paths) count as up to date and are
    rewritten with the new ones: upgrading posttrain never retrains what a run has."""
    first = _run(recipe)
    legacy = _earlier_records(recipe, tmp_path, relocatable=False)
    assert legacy["b"] != first.stage("b").hash  # b names a's output: the two fingerprints differ
    CALLS.clear()
    again = _run(recipe)
    assert [s.status for s in again.stages] == ["cached"] * 3 and CALLS == []
    assert json.loads((tmp_path / "run" / "b" / "stage.json").read_text())["hash"] == first.stage("b").hash


@pytest.mark.parametrize("drop", ["function", "distributed.ray_strategy"])
def test_a_key_added_since_a_run_leaves_it_up_to_date(recipe, tmp_path, capsys, drop):
    """A run made before posttrain had a key (at its default; at the top or in a sub-config) is up
    to date, `validate --status` agrees, and its records are rewritten with this version's hashes
    and full config. Had the recipe set the new key, that stage and the ones after it would rerun."""
    import yaml

    from posttrain.cli import main

    first = _run(recipe)
    earlier = _earlier_records(recipe, tmp_path, drop=drop)
    assert all(earlier[name] != first.stage(name).hash for name in "abc")
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    capsys.readouterr()
    assert main(["validate", str(tmp_path / "recipe.yaml"), "--status"]) == 0
    status = capsys.readouterr().out
    assert all(f"# {name}: up to date" in status for name in "abc"), status
    CALLS.clear()
    again = _run(recipe)
    assert [s.status for s in again.stages] == ["cached"] * 3 and CALLS == []
    for name in "abc":
        folder = tmp_path / "run" / name
        assert json.loads((folder / "stage.json").read_text())["hash"] == first.stage(name).hash
        saved = yaml.safe_load((folder / "config.yaml").read_text())
        assert drop.split(".")[-1] in (saved["distributed"] if "." in drop else saved)

    _earlier_records(recipe, tmp_path, drop=drop)
    if drop == "function":
        recipe["stages"]["b"]["function"] = "not_a_plugin_file"
    else:
        recipe["stages"]["b"]["distributed"] = {"ray_strategy": "SPREAD"}
    changed = _run(recipe)
    assert [s.status for s in changed.stages] == ["cached", "completed", "completed"] and CALLS == ["b", "c"]


def test_an_upgrade_rewrites_every_up_to_date_record_before_a_stage_runs(recipe, tmp_path):
    """c builds on a, not on b. A run after the upgrade where b (changed) fails has already
    rewritten a's and c's records, so c still matches a once b is put back: nothing reruns."""
    recipe["stages"]["c"]["model"] = "${stages.a.output}"
    _run(recipe)
    _earlier_records(recipe, tmp_path, drop="function")
    CALLS.clear()
    with pytest.raises(StageFailed):
        _run(recipe, {"stages.b.fail": True})
    assert CALLS == ["b"]
    CALLS.clear()
    assert [s.status for s in _run(recipe).stages] == ["cached"] * 3 and CALLS == []


def test_as_recorded_drops_only_new_keys_at_their_defaults():
    """Sub-configs and lists of them are walked key by key; a plain dict is one value; a new key
    the config sets is kept (the hashes then differ, and the stage reruns)."""
    from pydantic import BaseModel, Field

    from posttrain.runner.fingerprint import as_recorded

    class Channel(BaseModel):
        weight: float = 1.0
        new: int = 0

    class Config(BaseModel):
        lr: float = 1e-3
        new: str = "x"
        resources: dict[str, float] = Field(default_factory=lambda: {"CPU": 1.0})
        channels: list[Channel] = Field(default_factory=list)

    saved = {"lr": 0.1, "resources": {}, "channels": [{"weight": 2.0}, {"weight": 1.0}]}
    config = Config(lr=0.1, channels=[Channel(weight=2.0), Channel(new=3)])
    assert as_recorded(config, saved) == {"lr": 0.1, "resources": {"CPU": 1.0},
                                          "channels": [{"weight": 2.0}, {"weight": 1.0, "new": 3}]}
    assert as_recorded(Config(new="y"), {"lr": 1e-3})["new"] == "y"


def test_change_reruns_stage_and_everything_after(recipe):
    _run(recipe)
    CALLS.clear()
    result = _run(recipe, {"stages.b.value": 20})
    assert CALLS == ["b", "c"]
    assert [s.status for s in result.stages] == ["cached", "completed", "completed"]
    assert (result.stage("b").output / "weights.txt").read_text() == "20"


def test_input_file_change_reruns(recipe, tmp_path):
    (tmp_path / "base" / "w.bin").write_text("v1")
    _run(recipe)
    CALLS.clear()
    (tmp_path / "base" / "w.bin").write_text("v2-longer")
    _run(recipe)
    assert CALLS == ["a", "b", "c"]


def test_plugin_file_change_reruns(recipe, tmp_path):
    """A './file.py:fn' reference hashes the file: editing a reward function reruns its stage."""
    plugin = tmp_path / "my_reward.py"
    plugin.write_text("def score(prompts, completions, **kw):\n    return [0.0] * len(completions)\n")
    recipe["stages"]["b"]["function"] = f"{plugin}:score"
    _run(recipe)
    CALLS.clear()
    _run(recipe)
    assert CALLS == []
    plugin.write_text("def score(prompts, completions, **kw):\n    return [1.0] * len(completions)\n")
    _run(recipe)
    assert CALLS == ["b", "c"]


def test_force_only_and_from(recipe):
    _run(recipe)
    CALLS.clear()
    _run(recipe, force=True)
    assert CALLS == ["a", "b", "c"]
    CALLS.clear()
    _run(recipe, only="b")
    assert CALLS == []  # up to date
    _run(recipe, only="b", force=True)
    assert CALLS == ["b"]
    CALLS.clear()
    _run(recipe, from_stage="b")
    assert CALLS == ["b", "c"]
    with pytest.raises(ConfigError, match="--only zz: no such stage"):
        _run(recipe, only="zz")


def test_only_needs_complete_inputs(recipe):
    with pytest.raises(ConfigError, match="stage 'c' needs the output of b"):
        _run(recipe, only="c")


def test_failing_rerun_keeps_earlier_output(recipe, tmp_path):
    _run(recipe)
    before = (tmp_path / "run" / "b" / "model" / "weights.txt").read_text()
    with pytest.raises(StageFailed, match="stage 'b' \\(probe\\) failed: ValueError: probe asked to fail"):
        _run(recipe, {"stages.b.value": 99, "stages.b.fail": True})
    assert (tmp_path / "run" / "b" / "model" / "weights.txt").read_text() == before
    record = json.loads((tmp_path / "run" / "b" / "stage.json").read_text())
    assert record["status"] == "completed"
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert [s["status"] for s in manifest["stages"]] == ["cached", "failed"]
    # the failed attempt's record stays in its work dir for inspection
    failed = list((tmp_path / "run" / ".work").glob("b-*/stage.json"))
    assert json.loads(failed[0].read_text())["status"] == "failed"


def test_replaced_output_is_kept_in_history(recipe, tmp_path):
    _run(recipe)
    _run(recipe, {"stages.c.value": 30})
    history = list((tmp_path / "run" / ".history").glob("c-*/model/weights.txt"))
    assert [p.read_text() for p in history] == ["3"]


def test_report_has_table_and_plots(recipe, tmp_path):
    _run(recipe)
    report = (tmp_path / "run" / "report.md").read_text()
    assert "| a | probe | completed |" in report
    assert "![a](plots/a.png)" in report
    assert (tmp_path / "run" / "plots" / "a.png").stat().st_size > 1000


class ReportOnlyConfig(StageConfig):
    """A stage that produces no model (like eval)."""

    kind: Literal["report_only"] = "report_only"
    produces_model: ClassVar[bool] = False


@register_stage("report_only", ReportOnlyConfig, "test stage without a model output")
def _run_report_only(config: ReportOnlyConfig, ctx) -> dict:
    CALLS.append(ctx.name)
    (ctx.work_dir / "results.json").write_text("{}")
    return {"score": 1.0}


def test_stage_without_model_output_is_cached_too(recipe):
    recipe["stages"]["check"] = {"kind": "report_only"}
    _run(recipe)
    CALLS.clear()
    second = _run(recipe)
    assert CALLS == [] and second.stage("check").status == "cached"


def test_validate_status_says_which_stages_are_up_to_date(recipe, tmp_path, capsys):
    import yaml

    from posttrain.cli.main import main

    path = tmp_path / "probe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    _run(str(path), {"stages.c.value": 30})
    capsys.readouterr()
    assert main(["validate", str(path), "--status"]) == 0
    out = capsys.readouterr().out
    assert "# a: up to date" in out and "# b: up to date" in out and "# c: will run" in out
