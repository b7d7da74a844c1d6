"""Preflight: data problems in ANY stage stop `validate` and `run` before the first stage trains."""
import subprocess
import sys
import time
from pathlib import Path

import pytest

from posttrain.errors import ConfigError
from posttrain.recipe import resolve_recipe
from posttrain.recipe.preflight import preflight

REPO = Path(__file__).resolve().parents[2]
TYPO = ["-s", "stages.grpo.data=../data/arithmetic/rl_typo.jsonl"]


def _problems(recipe) -> str:
    """The message of the ConfigError preflight raises for ``recipe``."""
    with pytest.raises(ConfigError) as err:
        preflight(recipe)
    return str(err.value)


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "posttrain", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300, check=False)


def test_validate_names_a_missing_file_of_a_late_stage_in_seconds(tmp_path):
    start = time.time()
    proc = _cli("validate", str(REPO / "recipes" / "quickstart.yaml"), *TYPO, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "stages.grpo.data.path" in proc.stderr and "rl_typo.jsonl does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert time.time() - start < 60


def test_run_trains_nothing_when_a_late_stage_has_a_missing_file(tmp_path):
    run_dir = tmp_path / "qs"
    proc = _cli("run", str(REPO / "recipes" / "quickstart.yaml"), *TYPO, "-s", f"run_dir={run_dir}",
                "--no-progress", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "rl_typo.jsonl does not exist" in proc.stderr
    assert not (run_dir / "init").exists() and not (run_dir / "sft").exists()  # init/SFT never ran


def test_every_problem_of_every_stage_is_reported_with_its_line(tmp_path):
    (tmp_path / "config.json").write_text("{}")  # tmp_path is the input model folder
    good = tmp_path / "good.jsonl"
    good.write_text('{"prompt": "a", "completion": "b"}\n')
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "a", "completion": "b"}\n\n{"prompt": "c", \n')
    recipe = resolve_recipe({"name": "p", "model": str(tmp_path), "run_dir": str(tmp_path / "run"), "stages": {
        "sft": {"kind": "sft", "data": {"path": str(broken), "eval_path": str(good)}},
        "sft2": {"kind": "sft", "data": str(tmp_path / "nosuch.jsonl")},
        "sft3": {"kind": "sft", "data": str(good)}}}, base_dir=tmp_path)
    text = _problems(recipe)
    assert "2 problem(s)" in text
    assert f"stages.sft.data.path: {broken}, line 3: not valid JSON" in text
    assert f"stages.sft2.data.path: data file {tmp_path / 'nosuch.jsonl'} does not exist" in text
    preflight(recipe, stages={"sft3"})  # only the stages that will run are checked


def test_outputs_of_earlier_stages_are_not_checked(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    recipe = resolve_recipe({"name": "p", "model": str(tmp_path), "run_dir": str(tmp_path / "run"), "stages": {
        "sft": {"kind": "sft", "data": str(tmp_path / "run" / "gen" / "rows.jsonl")}}}, base_dir=tmp_path)
    preflight(recipe)


def test_a_run_dir_that_is_a_file_is_a_problem_not_a_traceback(tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("someone's notes\n")
    recipe = resolve_recipe({"name": "p", "model": str(tmp_path), "run_dir": str(taken), "stages": {
        "init": {"kind": "init_model"}}}, base_dir=tmp_path)
    with pytest.raises(ConfigError, match=f"run_dir: {taken} is a file; expected a folder"):
        preflight(recipe)
    assert taken.read_text() == "someone's notes\n"  # nothing the user had is touched


@pytest.mark.parametrize("override, expected", [
    ("stages.nosuch.lr=1", ("override 'stages.nosuch.lr': the recipe has no stage 'nosuch' (its stages: init, sft); "
                            "to add one, also set -s stages.nosuch.kind=KIND.")),
    ("stages.sfft.lr=1", "no stage 'sfft' (its stages: init, sft); did you mean 'sft'?"),
])
def test_an_override_of_an_unknown_stage_names_the_override(tmp_path, override, expected):
    data = {"name": "p", "model": str(tmp_path), "run_dir": str(tmp_path / "run"), "stages": {
        "init": {"kind": "init_model"}, "sft": {"kind": "sft", "data": str(tmp_path / "d.jsonl")}}}
    with pytest.raises(ConfigError) as err:
        resolve_recipe(data, overrides=[override], base_dir=tmp_path)
    assert expected in str(err.value)
    added = resolve_recipe(data, overrides=["stages.more.kind=init_model", "stages.more.seed=3"], base_dir=tmp_path)
    assert [s.name for s in added.stages] == ["init", "sft", "more"]


def test_model_folders_that_are_missing_or_not_models_are_named_before_anything_trains(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not a model\n")
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n')
    pairs = tmp_path / "p.jsonl"
    pairs.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    recipe = resolve_recipe({"name": "p", "run_dir": str(tmp_path / "run"), "stages": {
        "init": {"kind": "init_model"},
        "sft": {"kind": "sft", "model": str(tmp_path / "nosuch"), "data": str(data)},
        "sft2": {"kind": "sft", "model": str(tmp_path / "notes"), "data": str(data)},
        "dpo": {"kind": "dpo", "ref_model": str(data), "data": str(pairs)},  # model: init's output, not checked
    }}, base_dir=tmp_path)
    text = _problems(recipe)
    assert "3 problem(s)" in text
    assert f"stages.sft.model: model folder {tmp_path / 'nosuch'} does not exist" in text
    assert f"stages.sft2.model: {tmp_path / 'notes'} is a folder but not a Hugging Face model (no config.json)" in text
    assert f"stages.dpo.ref_model: {data} is a file; expected a model folder" in text


def test_reward_plugins_and_the_columns_they_read_are_checked_for_every_rl_stage(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    rl = tmp_path / "rl.jsonl"
    rl.write_text('{"prompt": "1 plus 1?", "answer": "2"}\n')
    bare = tmp_path / "bare.jsonl"
    bare.write_text('{"prompt": "1 plus 1?"}\n')
    (tmp_path / "mine.py").write_text("def needs_level(completions, level, **_):\n    return [0.0] * len(completions)\n")
    recipe = resolve_recipe({"name": "p", "model": str(tmp_path), "run_dir": str(tmp_path / "run"), "stages": {
        "good": {"kind": "grpo", "data": str(rl), "rewards": [{"verifier": "math"},
                 {"function": "posttrain.rewards.arithmetic:final_number_matches"}]},
        "bad": {"kind": "grpo", "data": str(rl), "rewards": [
            {"verifier": "maht"}, {"function": "./nofile.py:fn"}, {"function": "posttrain.rewards.arithmetic:nosuch"},
            {"function": "./mine.py:needs_level"}, {"reward_model": str(tmp_path / "no_rm")}]},
        "cols": {"kind": "ppo", "data": str(bare), "rewards": [{"verifier": "math"}]},
    }}, base_dir=tmp_path)
    text = _problems(recipe)
    assert "6 problem(s)" in text and "stages.good" not in text
    assert "stages.bad.rewards[0] (verifier): unknown verifier 'maht'; expected a registered name (" in text
    assert (f"stages.bad.rewards[1] (function): reward function '{tmp_path / 'nofile.py'}:fn': "
            f"file {tmp_path / 'nofile.py'} does not exist") in text
    assert "stages.bad.rewards[2] (function): " in text and "has no attribute 'nosuch'" in text
    assert (f"stages.bad.rewards[3] (function): reward function 'needs_level' needs column(s) level but data file {rl} "
            "has: answer, prompt") in text
    assert f"stages.bad.rewards[4] (reward_model): model folder {tmp_path / 'no_rm'} does not exist" in text
    assert f"stages.cols.rewards[0] (verifier): verifier 'math' needs column(s) answer but data file {bare} has: prompt" in text
    preflight(recipe, stages={"good"})


def test_validate_of_a_recipe_with_an_unknown_verifier_exits_2_naming_it(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "rl.jsonl").write_text('{"prompt": "1 plus 1?", "answer": "2"}\n')
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nmodel: model\nstages:\n  rl:\n    kind: grpo\n    data: rl.jsonl\n"
                      "    rewards: [{verifier: nosuch}]\n")
    proc = _cli("validate", str(recipe), cwd=tmp_path)
    assert proc.returncode == 2
    assert "stages.rl.rewards[0] (verifier): unknown verifier 'nosuch'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_every_stage_data_is_read_with_its_kinds_formats_before_anything_trains(tmp_path):
    """An SFT stage given preference pairs, or a DPO stage whose file lacks `rejected`, fails in
    preflight naming the stage, the file and the columns, as the stage itself would much later."""
    (tmp_path / "config.json").write_text("{}")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    half = tmp_path / "half.jsonl"
    half.write_text('{"prompt": "a", "chosen": "b"}\n')
    good = tmp_path / "sft.jsonl"
    good.write_text('{"prompt": "a", "completion": "b"}\n')
    recipe = resolve_recipe({"name": "p", "model": str(tmp_path), "run_dir": str(tmp_path / "run"), "stages": {
        "sft": {"kind": "sft", "data": str(pairs)},
        "dpo": {"kind": "dpo", "data": str(half)},
        "ok": {"kind": "sft", "data": str(good)},
        "later": {"kind": "dpo", "data": str(tmp_path / "run" / "gen" / "pairs.jsonl")},  # an earlier stage writes it
    }}, base_dir=tmp_path)
    text = _problems(recipe)
    assert "2 problem(s)" in text
    assert f"stages.sft.data: Data file {pairs} has no column 'messages' (needed by format 'messages')" in text
    assert f"stages.dpo.data: Data file {half} has no column 'rejected' (needed by format 'preference')" in text
    preflight(recipe, stages={"ok", "later"})


def test_a_reward_model_ensemble_folder_passes_preflight_and_a_broken_one_is_named(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    rl = tmp_path / "rl.jsonl"
    rl.write_text('{"prompt": "1 plus 1?", "answer": "2"}\n')
    ensemble = tmp_path / "rm"
    (ensemble / "member_0").mkdir(parents=True)
    (ensemble / "member_0" / "config.json").write_text("{}")
    (ensemble / "ensemble.json").write_text('{"members": ["member_0"]}')
    broken = tmp_path / "rm_broken"
    broken.mkdir()
    (broken / "ensemble.json").write_text('{"members": ["member_0", "member_1"]}')
    recipe = resolve_recipe({"name": "p", "model": str(tmp_path), "run_dir": str(tmp_path / "run"), "stages": {
        "ok": {"kind": "grpo", "data": str(rl), "rewards": [{"reward_model": str(ensemble)}]},
        "bad": {"kind": "grpo", "data": str(rl), "rewards": [{"reward_model": str(broken)}]}}}, base_dir=tmp_path)
    with pytest.raises(ConfigError) as err:
        preflight(recipe)
    assert "1 problem(s)" in str(err.value)
    assert "stages.bad.rewards[0] (reward_model): " in str(err.value) and "member folder(s) without a model" in str(err.value)


def test_a_grouped_verifiers_group_size_must_be_the_stages(tmp_path):
    """majority_vote votes over options.group_size completions at a time; one that differs from
    the stage's group_size would mix prompts' votes, so validate rejects it naming both numbers.
    Unset (the stage passes its own) or equal is fine."""
    (tmp_path / "config.json").write_text("{}")
    rl = tmp_path / "rl.jsonl"
    rl.write_text('{"prompt": "1 plus 1?", "answer": "2"}\n')

    def stage(**options):
        return {"kind": "grpo", "data": str(rl), "group_size": 4,
                "rewards": [{"verifier": "math"}, {"verifier": "majority_vote", "options": options}]}

    recipe = resolve_recipe({"name": "p", "model": str(tmp_path), "run_dir": str(tmp_path / "run"), "stages": {
        "unset": stage(), "equal": stage(group_size=4), "wrong": stage(group_size=8)}}, base_dir=tmp_path)
    text = _problems(recipe)
    assert "1 problem(s)" in text, text
    assert ("stages.wrong.rewards[1] (verifier): options.group_size is 8 but the stage's group_size is 4: "
            "'majority_vote' would group the completions 8 at a time") in text
