"""PendingScores: a join that waits too long says what it waited for."""
from __future__ import annotations

from concurrent.futures import Future
from types import SimpleNamespace

import pytest

from posttrain.rl.scored import PendingScores


def test_a_join_past_its_timeout_names_what_it_waited_for():
    scorer = SimpleNamespace(score_channels=lambda indices, completions, columns: {})
    never: Future = Future()  # background scoring that never finishes
    rollout = SimpleNamespace(completions=["a", "b"])
    pending = PendingScores(scorer, rollout, [{}, {}], 2, never, [], 0.05, (["a", "b"], {}))
    assert len(pending) == 2
    with pytest.raises(TimeoutError, match="reward scoring of 2 completions did not finish within 0.05 s"):
        pending.join()
