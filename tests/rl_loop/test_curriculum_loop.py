"""Curricula in the loop: what CurriculumStream draws and learns from a step, its checkpoint, the
config checks, and a run on a tiny model."""
import json
from types import SimpleNamespace

import pytest
import torch
from pydantic import ValidationError
from rl_loop_helpers import read_metrics, rl_recipe, write_jsonl

import posttrain
from posttrain.rl.loop.config import CurriculumConfig
from posttrain.rl.loop.curriculum import CurriculumStream
from posttrain.rl.loop.dist import Processes
from posttrain.stages.grpo import GRPOConfig

ROWS = [{"prompt": f"p{i}", "source": "easy" if i < 4 else "hard"} for i in range(8)]
G = 2


def step_outcome(stream, rows, abs_adv, rewards):
    """A step's ScoredBatch / ExperienceBatch / RolloutTensors stand-ins: G completions per row,
    one response token each, advantage +-abs_adv, rewards as given (one per completion)."""
    adv = torch.tensor([[a * s] for a in abs_adv for s in (1.0, -1.0)])
    scored = SimpleNamespace(rows=[r for r in rows for _ in range(G)], group_size=G, rewards=torch.tensor(rewards))
    return scored, SimpleNamespace(advantages=adv), SimpleNamespace(response_mask=torch.ones(len(adv), 1))


def test_dump_moves_draws_to_the_source_with_larger_advantages():
    """Before any step the probabilities are uniform; after a step in which the hard prompts' |A|
    is 1 and the easy ones' 0, with n = 2 completions each: mu = [0, 1], N = 4,
    bonus sqrt(2 ln 5 / 3) each, so p(hard) = 1 / (1 + e^-10) at tau 0.1."""
    stream = CurriculumStream(ROWS, CurriculumConfig(sampler="dump"), seed=0)
    assert stream.probabilities().tolist() == pytest.approx([0.5, 0.5])
    rows = [ROWS[0], ROWS[5]]
    stats = stream.observe(*step_outcome(stream, rows, [0.0, 1.0], [1.0, 1.0, 0.0, 1.0]), Processes())
    assert stream.counts == {"easy": 2, "hard": 2} and stream.windows == {"easy": [0.0, 0.0], "hard": [1.0, 1.0]}
    assert stream.probabilities()[1].item() == pytest.approx(1 / (1 + torch.exp(torch.tensor(-10.0)).item()))
    assert stats["curriculum/mean_abs_adv/hard"] == 1.0 and stats["curriculum/reward/easy"] == 1.0
    assert stats["curriculum/reward/hard"] == 0.5
    drawn = stream.take(20)
    assert sum(r["source"] == "hard" for r in drawn) >= 19
    stats = stream.observe(*step_outcome(stream, drawn[:1], [0.5], [0.0, 0.0]), Processes())
    assert stats["curriculum/drawn/hard"] >= 0.95 and stats["curriculum/p/hard"] > 0.99


def test_window_keeps_the_last_completions_only():
    stream = CurriculumStream(ROWS, CurriculumConfig(sampler="dump", dump_window=3), seed=0)
    stream.observe(*step_outcome(stream, [ROWS[4], ROWS[5]], [0.1, 0.2], [0.0] * 4), Processes())
    assert stream.windows["hard"] == pytest.approx([0.1, 0.2, 0.2]) and stream.counts["hard"] == 4


def test_settled_prompts_are_skipped_then_retried():
    """The first 7 rows of the seeded order are observed: six solved 2/2 (pass rate 1), one 0/2 (a
    NaN reward is not a pass). In the next pass over the data only the 8th row (never seen) is
    taken at once; a settled prompt's turn is skipped settled_patience (1) times, then it is drawn
    again (retried) to re-measure it."""
    config = CurriculumConfig(skip_settled=True, pass_reward=1.0)
    stream = CurriculumStream(ROWS, config, seed=0)
    first = stream.take(7)
    index = [ROWS.index(r) for r in first]
    stats = stream.observe(*step_outcome(stream, first, [0.0] * 7, [1.0, 1.0] * 6 + [float("nan"), 0.0]), Processes())
    assert stream.settled == set(index) and stats["curriculum/settled"] == 7.0
    assert stream.memory[index[6]] == [0.0] and stream.memory[index[0]] == [1.0]
    drawn = stream.take(8)
    last = next(r for r in ROWS if r not in first)
    # the first epoch's 8th row; in the second epoch the 7 settled rows are skipped once and only the
    # 8th is taken; in the third the settled rows have used their patience: 6 are retried
    assert drawn[0] == last and sum(r is last for r in drawn) == 2
    drew = stream._unobserved[-1]  # the stats of that draw, kept for its step's observation
    assert drew["curriculum/skipped"] == 7 and drew["curriculum/retried"] == 6
    # memory is bounded: one mixed group unsettles a prompt (mean of [1, 0.5] is 0.75)
    stream.observe(*step_outcome(stream, [first[0]], [0.5], [1.0, 0.0]), Processes())
    assert stream.memory[index[0]] == [1.0, 0.5] and index[0] not in stream.settled


def test_uniform_curriculum_draws_the_plain_order():
    from posttrain.rl.loop.sampling import PromptStream

    stream = CurriculumStream(ROWS, CurriculumConfig(), seed=5)
    assert stream.take(12) == PromptStream(ROWS, seed=5).take(12)


def test_each_step_is_observed_with_its_own_draws_stats_and_checkpointed_with_its_draws():
    """Asynchronously (k = 1) step t+1 is drawn before step t is observed: take 1, take 2, observe
    1, take 3, observe 2, observe 3. Each observation reports its own step's draw: steps 1 and 2
    were drawn uniformly, step 3 after step 1 taught the stream that hard prompts carry the
    advantages. A checkpoint of step 2 records what was learned with the draws as of step 2."""
    stream = CurriculumStream(ROWS, CurriculumConfig(sampler="dump"), seed=0)
    step1 = stream.take(4)
    step2 = stream.take(4)
    after_step2 = stream.draw_state_dict()
    first = stream.observe(*step_outcome(stream, step1, [0.0 if r["source"] == "easy" else 1.0 for r in step1],
                                         [1.0] * 8), Processes())
    step3 = stream.take(4)
    second = stream.observe(*step_outcome(stream, step2, [0.0] * 4, [0.0] * 8), Processes())
    third = stream.observe(*step_outcome(stream, step3, [0.0] * 4, [0.0] * 8), Processes())
    assert {r["source"] for r in step1} == {"easy", "hard"}  # seed 0: both, so step 3's p moves
    for stats, rows in ((first, step1), (second, step2), (third, step3)):
        assert stats["curriculum/drawn/hard"] == sum(r["source"] == "hard" for r in rows) / len(rows)
    assert first["curriculum/p/hard"] == second["curriculum/p/hard"] == 0.5 and third["curriculum/p/hard"] > 0.99
    state = stream.state_dict(after_step2)
    assert state["draws"] == 8 and sum(state["counts"].values()) == 12 * G  # every observed group
    assert stream.state_dict()["draws"] == 12


def test_state_dict_resumes_the_same_draws():
    config = CurriculumConfig(sampler="dump", skip_settled=True)
    a = CurriculumStream(ROWS, config, seed=3)
    a.observe(*step_outcome(a, a.take(2), [0.3, 0.9], [1.0, 1.0, 1.0, 1.0]), Processes())
    b = CurriculumStream(ROWS, config, seed=3)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))  # through JSON, as rl_state.json
    assert b.state_dict() == a.state_dict() and b.settled == a.settled and a.settled
    assert [r["prompt"] for r in a.take(6)] == [r["prompt"] for r in b.take(6)]
    other = CurriculumStream(ROWS[:6], config, seed=3)
    with pytest.raises(ValueError, match="built over 8 rows"):
        other.load_state_dict(a.state_dict())


BASE = {"kind": "grpo", "model": "m", "data": "d.jsonl", "rewards": [{"verifier": "math"}]}


def test_curriculum_config_checks(tmp_path):
    with pytest.raises(ValidationError, match="curriculum and dynamic_sampling"):
        GRPOConfig.model_validate({**BASE, "variant": "dapo", "curriculum": {"skip_settled": True}})
    with pytest.raises(ValidationError, match="extra"):
        GRPOConfig.model_validate({**BASE, "curriculum": {"samplr": "dump"}})
    config = GRPOConfig.model_validate({**BASE, "curriculum": {"sampler": "dump", "source_column": "level"}})
    problems = config.preflight_problems("stages.rl", tmp_path, columns=["prompt", "answer"])
    assert any(p.startswith("stages.rl.curriculum.source_column: data file d.jsonl has no column 'level'")
               for p in problems), problems


def test_a_run_draws_by_source_and_logs_the_curriculum(tiny_model_dir, rewards_file, tmp_path):
    data = write_jsonl(tmp_path / "sources.jsonl", [{"prompt": f"Item {i}:", "answer": "1", "source": f"s{i % 2}"}
                                                     for i in range(16)])
    rewards = [{"function": f"{rewards_file}:vowel_fraction"}]
    recipe = rl_recipe(tiny_model_dir, data, rewards, tmp_path / "run", total_steps=3, save_steps=2,
                       curriculum={"sampler": "dump", "skip_settled": True, "pass_reward": 0.5})
    posttrain.run(recipe, show_progress=False)
    records = read_metrics(tmp_path / "run")
    assert [r["step"] for r in records] == [1, 2, 3]
    for r in records:
        assert r["curriculum/p/s0"] + r["curriculum/p/s1"] == pytest.approx(1.0)
        assert r["curriculum/drawn/s0"] + r["curriculum/drawn/s1"] == pytest.approx(1.0)
        assert {"curriculum/mean_abs_adv/s0", "curriculum/settled", "curriculum/skipped"} <= r.keys()
    assert records[0]["curriculum/p/s0"] == pytest.approx(0.5)  # uniform before any observation
