"""Recipe validation: every error path names the key, the line and what was expected."""
from __future__ import annotations

import textwrap

import pytest

from posttrain.errors import ConfigError
from posttrain.recipe import load_recipe, resolve_recipe


def _write(tmp_path, text: str):
    path = tmp_path / "recipe.yaml"
    path.write_text(textwrap.dedent(text))
    (tmp_path / "sft.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n')
    return path


BASE = """\
name: demo
run_dir: {run_dir}
stages:
  init:
    kind: init_model
  sft:
    kind: sft
    data: sft.jsonl
    lr: 1e-4
"""


def test_valid_recipe_resolves_defaults_and_refs(tmp_path):
    recipe = load_recipe(_write(tmp_path, BASE.format(run_dir=tmp_path / "run")))
    init, sft = recipe.stages
    assert sft.config.model == str(tmp_path / "run" / "init" / "model")  # defaults to previous output
    assert sft.depends_on == ["init"]
    assert sft.config.data.path == str(tmp_path / "sft.jsonl")  # relative to the recipe's folder
    assert sft.config.lr == 1e-4 and sft.config.batch_size == 8


def test_unknown_key_names_path_line_and_suggestion(tmp_path):
    path = _write(tmp_path, BASE.format(run_dir="run").replace("lr: 1e-4", "lrr: 1e-4"))
    with pytest.raises(ConfigError) as err:
        load_recipe(path)
    msg = str(err.value)
    assert f"{path}, line 9: stages.sft.lrr: unknown key. Did you mean 'lr'?" in msg


def test_nested_unknown_key(tmp_path):
    text = BASE.format(run_dir="run") + "    distributed:\n      procesess: 2\n"
    with pytest.raises(ConfigError, match=r"line 11: stages.sft.distributed.procesess: unknown key. Did you mean 'processes'\?"):
        load_recipe(_write(tmp_path, text))


def test_wrong_type_and_range(tmp_path):
    with pytest.raises(ConfigError, match=r"line 9: stages.sft.lr: Input should be greater than 0"):
        load_recipe(_write(tmp_path, BASE.format(run_dir="run").replace("lr: 1e-4", "lr: -1")))
    with pytest.raises(ConfigError, match=r"stages.sft.batch_size: Input should be a valid integer"):
        load_recipe(_write(tmp_path, BASE.format(run_dir="run") + "    batch_size: many\n"))


def test_unknown_kind_suggests(tmp_path):
    with pytest.raises(ConfigError, match=r"line 7: stages.sft.kind: unknown stage kind 'sf'.*Did you mean 'sft'\?"):
        load_recipe(_write(tmp_path, BASE.format(run_dir="run").replace("kind: sft", "kind: sf")))


def test_reference_to_later_or_unknown_stage_fails_before_running(tmp_path):
    text = BASE.format(run_dir="run").replace("    kind: init_model\n", "    kind: init_model\n").replace(
        "    data: sft.jsonl\n", "    data: sft.jsonl\n    model: ${stages.later.output}\n")
    with pytest.raises(ConfigError, match=r"reference '\$\{stages.later.output\}' names stage 'later', which is not an earlier stage"):
        load_recipe(_write(tmp_path, text))
    with pytest.raises(ConfigError, match=r"unknown reference '\$\{nope\}'"):
        load_recipe(_write(tmp_path, BASE.format(run_dir="run/${nope}")))


def test_missing_required_and_missing_model(tmp_path):
    with pytest.raises(ConfigError, match=r"stages.sft.data: required key is missing"):
        load_recipe(_write(tmp_path, BASE.format(run_dir="run").replace("    data: sft.jsonl\n", "")))
    text = "name: x\nstages:\n  sft:\n    kind: sft\n    data: sft.jsonl\n"
    with pytest.raises(ConfigError, match=r"stages.sft.model: no input model"):
        load_recipe(_write(tmp_path, text))


def test_overrides_are_typed_and_validated(tmp_path):
    path = _write(tmp_path, BASE.format(run_dir="run"))
    recipe = load_recipe(path, overrides=["stages.sft.lr=3e-5", "stages.sft.epochs=2"])
    assert recipe.stage("sft").config.lr == 3e-5 and recipe.stage("sft").config.epochs == 2
    with pytest.raises(ConfigError, match=r"\(command-line override\): stages.sft.lrr: unknown key. Did you mean 'lr'"):
        load_recipe(path, overrides=["stages.sft.lrr=1"])
    with pytest.raises(ConfigError, match=r"expected KEY=VALUE"):
        load_recipe(path, overrides=["stages.sft.lr"])


def test_defaults_apply_where_the_kind_has_the_key(tmp_path):
    text = BASE.format(run_dir="run") + "defaults:\n  seed: 7\n  lr: 5e-5\n"
    recipe = load_recipe(_write(tmp_path, text))
    assert recipe.stage("init").config.seed == 7
    assert recipe.stage("sft").config.lr == 1e-4  # the stage's own value wins
    with pytest.raises(ConfigError, match=r"defaults.sed: no stage kind has this key. Did you mean 'seed'"):
        load_recipe(_write(tmp_path, BASE.format(run_dir="run") + "defaults:\n  sed: 1\n"))


def test_python_dict_goes_through_the_same_validation():
    with pytest.raises(ConfigError, match=r"stages.a.arhc: unknown key. Did you mean 'arch'"):
        resolve_recipe({"name": "x", "stages": {"a": {"kind": "init_model", "arhc": "qwen2"}}})


def test_yaml_syntax_error_names_line(tmp_path):
    with pytest.raises(ConfigError, match=r"recipe.yaml, line \d+: invalid YAML"):
        load_recipe(_write(tmp_path, "name: x\nstages: [\n"))
    with pytest.raises(ConfigError, match="recipe file not found"):
        load_recipe(tmp_path / "absent.yaml")


def test_reference_model_paths_are_read_from_the_recipe_folder(tmp_path):
    (tmp_path / "prefs.jsonl").write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    recipe = resolve_recipe({"name": "x", "model": "base", "stages": {
        "dpo": {"kind": "dpo", "data": "prefs.jsonl", "ref_model": "refs/m"}}}, base_dir=tmp_path)
    config = recipe.stage("dpo").config
    assert config.ref_model == str(tmp_path / "refs" / "m") and config.model == str(tmp_path / "base")


GRPO = """\
  grpo:
    kind: grpo
    data: rl.jsonl
    rewards:
      - verifier: math
        wieght: 1.0
  after:
    kind: eval
    model: ${stages.grpo.output}
    data: rl.jsonl
"""


def test_a_key_in_a_list_item_lists_the_valid_keys_and_later_stages_do_not_pile_on(tmp_path):
    """A typo in a rewards entry: its line, a suggestion and the channel's keys; the stage that names the
    broken grpo stage gets no second, misleading 'not an earlier stage' error."""
    path = _write(tmp_path, BASE.format(run_dir="run") + GRPO)
    with pytest.raises(ConfigError) as err:
        load_recipe(path)
    msg = str(err.value)
    assert (f"{path}, line 15: stages.grpo.rewards.0.wieght: unknown key. Did you mean 'weight'? "
            "Valid keys: function, verifier, reward_model, process_reward_model, weight,") in msg
    assert "not an earlier stage" not in msg and len(msg.splitlines()) == 1, msg


def test_an_override_that_replaces_a_list_is_blamed_on_the_command_line(tmp_path):
    path = _write(tmp_path, BASE.format(run_dir="run") + GRPO.replace("wieght", "weight"))
    with pytest.raises(ConfigError, match=r"\(command-line override\): stages.grpo.rewards.0.wieght: unknown key"):
        load_recipe(path, overrides=["stages.grpo.rewards=[{verifier: math, wieght: 1.0}]"])
