"""A recipe's `plugins:` imports user modules before the stages validate, so a policy loss
registered in a file is usable from the CLI (and in worker processes); the plugin's contents are
part of every stage's hash."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from posttrain.errors import ConfigError
from posttrain.recipe import load_recipe
from posttrain.runner.runner import compute_hashes

PLUGIN = '''\
from posttrain.rl.algos import register_policy_loss


@register_policy_loss("user_plugin_reinforce_{tag}")
def reinforce(logprobs, old_logprobs, advantages, response_mask=None):
    """-A * log pi per token."""
    adv = advantages[:, None] if advantages.dim() == 1 else advantages
    return -(adv * logprobs) * response_mask, {{}}
'''


def _recipe(tmp_path, tag: str, plugins: str = "[./algos.py]"):
    (tmp_path / "model").mkdir(exist_ok=True)
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "rl.jsonl").write_text('{"prompt": "1 plus 1?", "answer": "2"}\n')
    (tmp_path / "algos.py").write_text(PLUGIN.format(tag=tag))
    path = tmp_path / "recipe.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: plug
        model: model
        plugins: {plugins}
        stages:
          rl:
            kind: grpo
            data: rl.jsonl
            rewards: [{{verifier: math}}]
            policy_loss: user_plugin_reinforce_{tag}
        """))
    return path


def test_the_cli_validates_a_recipe_whose_loss_is_registered_by_its_plugin(tmp_path):
    path = _recipe(tmp_path, "cli")
    proc = subprocess.run([sys.executable, "-m", "posttrain", "validate", str(path)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "policy_loss: user_plugin_reinforce_cli" in proc.stdout
    assert f"plugins:\n- {tmp_path / 'algos.py'}" in proc.stdout
    path.write_text(path.read_text().replace("plugins: [./algos.py]\n", ""))
    proc = subprocess.run([sys.executable, "-m", "posttrain", "validate", str(path)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300, check=False)
    assert proc.returncode == 2 and "unknown policy loss 'user_plugin_reinforce_cli'" in proc.stderr


def test_a_plugin_that_is_missing_or_fails_is_a_config_error_naming_it(tmp_path):
    path = _recipe(tmp_path, "missing", plugins="[./nope.py, no_such_module_xyz]")
    with pytest.raises(ConfigError) as err:
        load_recipe(path)
    assert f"plugins[0] './nope.py': file {tmp_path / 'nope.py'} does not exist" in str(err.value)
    assert "plugins[1] 'no_such_module_xyz': importing it failed: ModuleNotFoundError" in str(err.value)


def test_the_plugins_contents_are_part_of_every_stage_hash_and_workers_import_them(tmp_path):
    from posttrain.runner.records import StageRecord
    from posttrain.runner.worker import import_recorded_plugins

    recipe = load_recipe(_recipe(tmp_path, "hash"))
    before = compute_hashes(recipe)
    (tmp_path / "algos.py").write_text(PLUGIN.format(tag="hash") + "\n# edited\n")
    assert compute_hashes(load_recipe(tmp_path / "recipe.yaml")) != before

    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "worker_plugin.py").write_text("import os\nos.environ['POSTTRAIN_TEST_PLUGIN_RAN'] = '1'\n")
    StageRecord(name="rl", kind="grpo", hash="h", status="running", plugins=[str(tmp_path / "worker_plugin.py")]).write(work)
    assert json.loads((work / "stage.json").read_text())["plugins"] == [str(tmp_path / "worker_plugin.py")]
    import_recorded_plugins(work)
    import os

    assert os.environ.pop("POSTTRAIN_TEST_PLUGIN_RAN") == "1"


def test_every_file_of_a_package_plugin_is_part_of_the_hash(tmp_path, monkeypatch):
    from posttrain.runner.fingerprint import plugin_digests

    package = tmp_path / "my_algos_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("from . import losses\n")
    (package / "losses.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    before = plugin_digests(["my_algos_pkg"])
    (package / "losses.py").write_text("X = 2\n")
    assert plugin_digests(["my_algos_pkg"]) != before
