"""Reward channels: config validation, column routing, weighted sums, pass rates, loud failures."""
from dataclasses import dataclass

import pytest
import torch
from posttrain.rewards.arithmetic import final_number_matches
from pydantic import ValidationError

from posttrain.errors import ConfigError, VerifierError
from posttrain.rl.loop.metrics import reward_metrics
from posttrain.rl.rewards import RewardChannelConfig, RewardScorer


@dataclass
class FakeRollout:
    """Only the field the scorer reads (completions); the real RolloutBatch has more."""

    completions: list[str]


def channel(**kwargs) -> RewardChannelConfig:
    return RewardChannelConfig.model_validate(kwargs)


def test_channel_needs_exactly_one_source():
    with pytest.raises(ValidationError, match="exactly one"):
        channel(weight=1.0)
    with pytest.raises(ValidationError, match="exactly one"):
        channel(function="a:b", verifier="math")
    with pytest.raises(ValidationError, match="module:attr"):
        channel(function="no_colon")
    assert channel(function="pkg.mod:fn").channel_name == "fn"
    assert channel(verifier="math").channel_name == "math"
    assert channel(reward_model="/m", name="rm").channel_name == "rm"


def test_final_number_matches():
    out = final_number_matches(["2 plus 3 is 5", "5.0", "-4", "none", "5 or 6"], answer=["5", "5", "-4", "5", "5"])
    assert out == [1.0, 1.0, 1.0, 0.0, 0.0]


def test_weighted_sum_columns_by_name_and_pass_rate(rewards_file):
    scorer = RewardScorer([
        channel(function=f"{rewards_file}:length_is_answer", weight=2.0),
        channel(function=f"{rewards_file}:vowel_fraction", weight=0.5, name="vowels"),
    ])
    rows = [{"prompt": "p", "answer": "2"}, {"prompt": "p", "answer": "3"}]
    scored = scorer.score(FakeRollout(["ab", "xyz"]), rows, group_size=2)
    # length_is_answer: [1, 1]; vowels: ["ab" -> 1/2, "xyz" -> 0]; total = 2*1 + 0.5*v
    torch.testing.assert_close(scored.channel_scores["vowels"], torch.tensor([0.5, 0.0]))
    torch.testing.assert_close(scored.rewards, torch.tensor([2.25, 2.0]))
    metrics = reward_metrics(scored)
    assert metrics["rewards/length_is_answer/pass_rate"] == 1.0  # a 0/1 channel is pass/fail
    assert "rewards/vowels/pass_rate" not in metrics               # a graded one is not
    assert metrics["pass_rate"] == 1.0
    assert metrics["reward"] == pytest.approx(2.125)
    assert metrics["rewards/vowels/std"] == pytest.approx(0.25)


def test_missing_column_is_reported_before_scoring(rewards_file):
    scorer = RewardScorer([channel(function=f"{rewards_file}:length_is_answer")])
    with pytest.raises(ConfigError, match=r"length_is_answer.*needs column\(s\) answer.*prompt"):
        scorer.check_columns(["prompt"], "data file x.jsonl")


def test_raising_channel_names_itself_and_an_example(rewards_file):
    scorer = RewardScorer([channel(function=f"{rewards_file}:broken", name="judge")])
    with pytest.raises(VerifierError, match=r"reward channel 'judge'.*ValueError: cannot score this.*'completion': 'hello'"):
        scorer.score(FakeRollout(["hello"] * 8), [{"prompt": "p"}] * 8, group_size=8)
    scorer.close()


def test_a_function_is_contained_like_a_verifier_until_too_many_items_fail(tmp_path):
    """One plugin contract: a batch function that fails scores its items 0 and is counted, below
    max_error_rate the stage goes on, past it the stage stops naming the channel. Functions run in
    the caller's thread (math-verify's signal timeouts need the main thread) and may return numpy
    scalars and any finite score."""
    module = tmp_path / "flaky.py"
    module.write_text("import signal, threading\nimport numpy as np\n"
                      "def flaky(completions, **_):\n"
                      "    assert threading.current_thread() is threading.main_thread()\n"
                      "    signal.signal(signal.SIGALRM, signal.getsignal(signal.SIGALRM))  # main thread only\n"
                      "    if completions[0] == 'boom':\n        raise RuntimeError('bad batch')\n"
                      "    return list(np.array([-0.5 * len(c) for c in completions], dtype=np.float32))\n")
    scorer = RewardScorer([channel(function=f"{module}:flaky", max_error_rate=0.5)])
    ok = scorer.score(FakeRollout(["ab", "abcd"] * 4), [{"prompt": "p"}] * 8, group_size=8)
    assert ok.rewards.tolist() == [-1.0, -2.0] * 4 and ok.channel_errors["flaky"] == 0
    assert "flaky" not in ok.channel_passed  # graded, not pass/fail
    one = scorer.score(FakeRollout(["boom"]), [{"prompt": "p"}], group_size=1)  # 1 of the last 9: contained
    assert one.rewards.tolist() == [0.0] and one.channel_errors["flaky"] == 1
    assert reward_metrics(one)["rewards/flaky/errors"] == 1.0
    with pytest.raises(VerifierError, match=r"reward channel 'flaky': verifier 'flaky'.*RuntimeError: bad batch"):
        scorer.score(FakeRollout(["boom"] * 8), [{"prompt": "p"}] * 8, group_size=8)
    scorer.close()


def test_bad_return_values_are_errors(tmp_path):
    module = tmp_path / "bad.py"
    module.write_text("def short(completions, **_):\n    return [1.0]\n"
                      "def nan(completions, **_):\n    return [float('nan')] * len(completions)\n")
    rows = [{"prompt": "p"}, {"prompt": "q"}] * 4
    with pytest.raises(VerifierError, match="returned list of length 1; expected a list of 8"):
        RewardScorer([channel(function=f"{module}:short")]).score(FakeRollout(["a", "b"] * 4), rows, 1)
    with pytest.raises(VerifierError, match=r"reward function returned nan; expected a finite float.*'prompt': 'p'"):
        RewardScorer([channel(function=f"{module}:nan")]).score(FakeRollout(["a", "b"] * 4), rows, 1)


def test_unknown_function_reference():
    with pytest.raises(ConfigError, match="has no attribute 'nope'; it defines: .*RewardScorer"):
        RewardScorer([channel(function="posttrain.rl.rewards:nope")])
    with pytest.raises(ConfigError, match="does not exist"):
        RewardScorer([channel(function="./missing_file.py:fn")])


def test_one_loader_executes_a_user_file_once_for_function_and_verifier_channels(tmp_path):
    """A file named by a batch reward function and by a verifier is run once (one module, one state)."""
    from posttrain.verification import load_verifier

    module = tmp_path / "both.py"
    module.write_text("RUNS = []\nRUNS.append(1)\n"
                      "def batch(completions, **_):\n    return [float(len(RUNS)) for _ in completions]\n"
                      "def check(completion, **_):\n    return float(len(RUNS))\n")
    function = RewardScorer([channel(function=f"{module}:batch")]).channels[0]
    verifier = load_verifier(f"{module}:check")
    assert function.verifier.spec.fn.__module__ == verifier.spec.fn.__module__
    assert function.verifier.spec.fn(["a"]) == [1.0] and verifier("a").score == 1.0


def test_verifier_channel_pass_rate_and_error_counting(tmp_path):
    module = tmp_path / "verifier.py"
    module.write_text(
        "from posttrain.verification.contract import VerifierResult\n"
        "def exact(completion, answer):\n"
        "    if completion == 'boom':\n"
        "        raise RuntimeError('bad input')\n"
        "    ok = completion.strip() == str(answer)\n"
        "    return VerifierResult(score=float(ok), passed=ok)\n")
    scorer = RewardScorer([channel(verifier=f"{module}:exact", max_error_rate=0.5)])
    rows = [{"prompt": "p", "answer": "4"}] * 4
    scored = scorer.score(FakeRollout(["4", "5", "4", "boom"]), rows, group_size=4)
    scorer.close()
    assert scored.rewards.tolist() == [1.0, 0.0, 1.0, 0.0]
    assert scored.channel_passed["exact"].tolist() == [True, False, True, False]
    assert scored.channel_errors["exact"] == 1


def test_verifier_timeouts_are_counted_apart_from_errors(tmp_path):
    """A hung check is a timeout, a raising one an error; each has its own count and metric."""
    module = tmp_path / "slow.py"
    module.write_text("import time\n"
                      "def check(completion, **_):\n"
                      "    if completion == 'hang':\n        time.sleep(3)\n"
                      "    if completion == 'boom':\n        raise RuntimeError('bad')\n"
                      "    return 1.0\n")
    scorer = RewardScorer([channel(verifier=f"{module}:check", timeout_s=0.3, max_error_rate=0.9),
                           channel(function="posttrain.rewards.arithmetic:final_number_matches")])
    rows = [{"prompt": "p", "answer": "4"}] * 4
    scored = scorer.score(FakeRollout(["4", "hang", "boom", "4"]), rows, group_size=4)
    scorer.close()
    assert scored.channel_scores["check"].tolist() == [1.0, 0.0, 0.0, 1.0]
    assert scored.channel_errors["check"] == 1 and scored.channel_timeouts == {"check": 1, "final_number_matches": 0}
    metrics = reward_metrics(scored)
    assert metrics["rewards/check/errors"] == 1.0 and metrics["rewards/check/timeouts"] == 1.0
    assert metrics["rewards/final_number_matches/timeouts"] == 0.0  # a function has a time limit too


def test_verifier_channel_stops_on_error_rate(tmp_path):
    module = tmp_path / "verifier.py"
    module.write_text("def always_fails(completion, **_):\n    raise KeyError('missing')\n")
    scorer = RewardScorer([channel(verifier=f"{module}:always_fails")])
    with pytest.raises(VerifierError, match="always_fails.*max_error_rate"):
        scorer.score(FakeRollout(["a"] * 8), [{"prompt": "p"}] * 8, group_size=8)
    scorer.close()


# two prompts x G = 3: the first group's majority is 4, the second's 5. Pooled as one group of 6
# (a wrong divisor) the majority would be 5 (3 votes to 2) and the first group would score 0, 0, 1.
VOTES = ["so 4", "4", "5", "5", "it is 5", "7"]
PER_GROUP = [1.0, 1.0, 0.0, 1.0, 1.0, 0.0]


def test_majority_vote_channel_votes_within_the_stages_groups():
    """No group_size option: the scorer binds the stage's G, on both of the loop's paths (scored
    now, and submitted to the background thread and joined)."""
    scorer = RewardScorer([channel(verifier="majority_vote")])
    rows = [{"prompt": "p"}] * 3 + [{"prompt": "q"}] * 3
    assert scorer.score(FakeRollout(VOTES), rows, group_size=3).rewards.tolist() == PER_GROUP
    assert scorer.submit(FakeRollout(VOTES), rows, group_size=3).join().rewards.tolist() == PER_GROUP
    assert scorer.score(FakeRollout(VOTES), rows, group_size=3).channel_errors["majority_vote"] == 0
    scorer.close()


def test_majority_vote_group_size_set_by_hand_must_be_the_stages():
    rows = [{"prompt": "p"}] * 6
    same = RewardScorer([channel(verifier="majority_vote", options={"group_size": 3})])
    assert same.score(FakeRollout(VOTES), rows, group_size=3).rewards.tolist() == PER_GROUP
    wrong = RewardScorer([channel(verifier="majority_vote", options={"group_size": 6})])
    with pytest.raises(ConfigError, match=r"reward channel 'majority_vote': options.group_size is 6 but the "
                                          r"stage's group_size is 3"):
        wrong.score(FakeRollout(VOTES), rows, group_size=3)
    same.close()
    wrong.close()
