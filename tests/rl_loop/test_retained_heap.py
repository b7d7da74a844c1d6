"""retain_freed_memory: the loop runs inside posttrain.common.memory.retained_heap when asked."""
import contextlib

import pytest
from rl_loop_helpers import rl_recipe

import posttrain
from posttrain.common import memory
from posttrain.rl.loop import trainer


@pytest.mark.parametrize("retain", [True, False])
def test_the_loop_runs_inside_the_retained_heap_when_asked(tiny_model_dir, prompts_file, rewards_file, tmp_path,
                                                           monkeypatch, retain):
    seen = []
    real = trainer.retained_heap

    @contextlib.contextmanager
    def recording(enabled=True):
        with real(enabled) as applied:
            seen.append(("enter", enabled, applied))
            yield applied
        seen.append(("exit", enabled))

    monkeypatch.setattr(trainer, "retained_heap", recording)
    recipe = rl_recipe(tiny_model_dir, prompts_file, [{"function": f"{rewards_file}:vowel_fraction"}], tmp_path / "run",
                       engine="hf", retain_freed_memory=retain)
    posttrain.run(recipe, show_progress=False)
    assert [s[:2] for s in seen] == [("enter", retain), ("exit", retain)]
    assert seen[0][2] is (retain and memory._glibc() is not None)  # applied when asked, where glibc is
