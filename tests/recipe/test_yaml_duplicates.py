"""A key given twice in a recipe is an error naming both lines (YAML keeps the last one silently)."""
import subprocess
import sys

import pytest

from posttrain.errors import ConfigError
from posttrain.recipe.yaml_source import load_yaml_with_lines

TWO_INITS = """\
name: dup
stages:
  init: {kind: init_model}
  sft:
    kind: sft
    data: x.jsonl
  init: {kind: init_model, size: small}
"""


def test_two_stages_with_one_name_name_both_lines(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(TWO_INITS)
    with pytest.raises(ConfigError, match=r"lines 3 and 7: stages\.init is given twice"):
        load_yaml_with_lines(path)


def test_a_key_twice_in_a_stage_via_the_cli(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: dup\nstages:\n  sft:\n    kind: sft\n    lr: 1.0e-4\n    data: x.jsonl\n    lr: 1.0e-3\n")
    proc = subprocess.run([sys.executable, "-m", "posttrain", "validate", str(path)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 2
    assert "lines 5 and 7: stages.sft.lr is given twice" in proc.stderr and "Traceback" not in proc.stderr


def test_the_same_key_in_two_mappings_is_fine(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: ok\nstages:\n  a: {kind: sft, lr: 1}\n  b: {kind: sft, lr: 2}\n")
    data, lines = load_yaml_with_lines(path)
    assert data["stages"]["b"]["lr"] == 2 and lines[("stages", "b", "lr")] == 4
