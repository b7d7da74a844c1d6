"""Each first-party verifier on real positive and negative cases (code: test_code_verifier.py)."""
from __future__ import annotations

import pytest

from posttrain.errors import VerifierError
from posttrain.verification import load_verifier, run_verifier


@pytest.mark.parametrize("completion, answer, extracted, passed", [
    ("We get $x = \\boxed{\\frac{1}{2}}$.", "0.5", "\\frac{1}{2}", True),
    ("The answer is 19.", "19", "19", True),
    ("So the final answer is: $\\dfrac{3}{4}$", "0.75", "\\frac{3}{4}", True),  # normalised
    ("Total: 1,234 apples, so 1234", 1234, "1234", True),
    ("\\boxed{\\sqrt{2}/2}", "\\frac{\\sqrt{2}}{2}", "\\sqrt{2}/2", True),
    ("Answer: \\boxed{\\{1, 2\\}}", "\\{2, 1\\}", "\\{1, 2\\}", True),
    ("Thus 50\\%.", "0.5", "50", False),  # math-verify reads 50 here, not 50%
])
def test_math_extracts_and_compares(completion, answer, extracted, passed):
    result = load_verifier("math")(completion, answer=answer)
    assert result.extracted == extracted
    assert result.passed is passed
    assert result.score == (1.0 if passed else 0.0)


@pytest.mark.parametrize("completion, answer, reason", [
    ("The answer is 18.", "19", "18 != 19"),
    ("\\boxed{\\frac{1}{3}}", "0.33", "not equivalent (math-verify)"),
    ("I am not sure.", "7", "no answer found"),
    ("\\boxed{x^2+1}", "x^2-1", "not equivalent (math-verify)"),
    ("\\boxed{4}", None, "the answer column is empty"),
])
def test_math_rejects_wrong_answers(completion, answer, reason):
    result = load_verifier("math")(completion, answer=answer)
    assert (result.score, result.passed, result.reason) == (0.0, False, reason)


def test_math_options_tolerance_and_extraction_order():
    """|1/3 - 0.33| = 0.00333: within 0.01 * max(1, 0.33) = 0.01, not within 0.001."""
    assert load_verifier("math", tolerance=0.01)("\\boxed{\\frac{1}{3}}", answer="0.33").passed
    assert not load_verifier("math", tolerance=1e-3)("\\boxed{\\frac{1}{3}}", answer="0.33").passed
    # Relative above 1: |3.141 - 3.14159| = 0.00059 <= 2e-4 * 3.14159 = 0.00063.
    assert load_verifier("math", tolerance=2e-4)("\\boxed{3.141}", answer="3.14159").passed
    boxed_only = load_verifier("math", extract="boxed")
    assert boxed_only("The answer is 19.", answer="19").reason == "no answer found"
    assert boxed_only("The answer is $5$, no: \\boxed{6}", answer="6").passed is True
    assert load_verifier("math")("\\boxed{2} but the answer is 3", answer="2").passed is True
    # A gold answer written as a boxed solution (MATH style) is read from its box.
    assert load_verifier("math")("so 12", answer="... hence \\boxed{12}.").passed is True


def test_math_accepts_chat_message_lists():
    chat = [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "\\boxed{2}"}]
    assert load_verifier("math")(chat, answer=2).passed is True


def test_exact_and_normalized_match():
    exact, norm = load_verifier("exact"), load_verifier("normalized_match")
    assert exact("  Paris\n", answer="Paris").passed is True
    assert exact("paris", answer="Paris").passed is False
    assert load_verifier("exact", strip=False)(" Paris", answer="Paris").passed is False
    assert exact("B", answer=["A", "B"]).passed is True
    assert norm("  THE eiffel-tower!! ", answer="The Eiffel Tower").passed is True
    assert norm("Eiffel Towers", answer="Eiffel Tower").passed is False
    assert load_verifier("normalized_match", remove_articles=True)(
        "Eiffel Tower", answer="the eiffel tower").passed is True


@pytest.mark.parametrize("completion, picked", [
    ("The answer is (C).", "C"), ("Answer: B", "B"), ("Reasoning...\n\nD\n", "D"),
    ("\\boxed{E}", "E"), ("Between (A) and (B), I pick (A)", "A"), ("No idea", None),
    ("Answer: Apple", None),
])
def test_multiple_choice_extraction(completion, picked):
    result = load_verifier("multiple_choice")(completion, answer="C")
    assert result.extracted == picked and result.passed is (picked == "C")


def test_multiple_choice_index_answer_and_bad_answer():
    mc = load_verifier("multiple_choice")
    assert mc("Answer: B", answer=1).passed is True
    with pytest.raises(ValueError, match="not one of the choices"):
        mc("Answer: B", answer="Z")


def test_format_and_regex():
    fmt = load_verifier("format")
    good = "<think>2+2 is 4</think>\n<answer>4</answer>"
    assert fmt(good).passed is True and fmt(good).extracted == "4"
    assert fmt("<answer>4</answer>").passed is False
    assert fmt(good + " trailing").passed is False
    rx = load_verifier("regex", pattern=r"Final: (?P<answer>\d+)")
    assert rx("blah Final: 42 blah").extracted == "42"
    assert rx("no final").score == 0.0
    assert load_verifier("regex", pattern="abc", mode="fullmatch")("abcd").passed is False
    with pytest.raises(VerifierError, match=r"needs column\(s\) pattern"):
        load_verifier("regex").check_columns([])


SCHEMA = {"type": "object", "properties": {"name": {"type": "string"},
                                           "age": {"type": "integer", "minimum": 0}},
          "required": ["name", "age"], "additionalProperties": False}


def test_json_schema_from_column_and_option():
    js = load_verifier("json_schema")
    assert js('{"name": "Ada", "age": 36}', schema=SCHEMA).passed is True
    fenced = 'Here:\n```json\n{"name": "Ada", "age": 36}\n```'
    assert js(fenced, schema=SCHEMA).passed is True
    bad = js('{"name": "Ada", "age": -1}', schema=SCHEMA)
    assert bad.passed is False and bad.reason == "age: -1 is less than the minimum of 0"
    assert js("not json", schema=SCHEMA).reason.startswith("not JSON")
    with_option = load_verifier("json_schema", schema=SCHEMA)
    assert with_option('{"name": "A", "age": 1, "x": 2}').passed is False
    import json
    assert js('{"name": "A", "age": 1}', schema=json.dumps(SCHEMA)).passed is True
    with pytest.raises(ValueError, match="needs a `schema` column or option"):
        js("{}")


@pytest.mark.parametrize("length, expected", [(50, 1.0), (80, 1.0), (90, 0.5), (100, 0.0),
                                               (150, 0.0)])
def test_length_overlong_matches_dapo_shifted(length, expected):
    """DAPO eq. 13 with L_max=100, L_cache=20: R=0 up to 80, (80-L)/20 to 100, -1 beyond; +1."""
    v = load_verifier("length", mode="overlong", max_length=100, cache_length=20)
    assert v("x" * length).score == pytest.approx(expected, abs=1e-12)


def test_length_target_and_units():
    target = load_verifier("length", target=10)
    assert target("x" * 10).score == 1.0
    assert target("x" * 13).score == pytest.approx(0.7)
    assert target("x" * 25).score == 0.0
    words = load_verifier("length", target=4, scale=2, unit="words")
    assert words("one two three").score == pytest.approx(0.5)
    tokens = load_verifier("length", mode="overlong", max_length=10, cache_length=5, unit="tokens")
    assert tokens("ignored", num_tokens=8).score == pytest.approx(0.4)


def test_majority_vote_with_group_column_and_group_size():
    """Group p1 answers 4, 4, 5 -> majority 4; group p2: 1/2, 0.5, 3, none -> majority 0.5."""
    completions = ["\\boxed{4}", "it is 4", "5", "\\boxed{\\frac{1}{2}}", "0.5", "3", "hmm"]
    groups = ["p1", "p1", "p1", "p2", "p2", "p2", "p2"]
    scored = run_verifier("majority_vote", completions, {"group": groups})
    assert scored.scores == [1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0]
    assert scored.results[3].reason == "majority '0.5' with 2/4 votes"
    by_size = run_verifier("majority_vote", ["1", "2", "2", "7", "7", "8"], {}, group_size=3)
    assert by_size.scores == [0.0, 1.0, 1.0, 1.0, 1.0, 0.0]


def test_majority_vote_needs_a_grouping():
    with pytest.raises(VerifierError, match="needs a `group` column or a positive `group_size`"):
        run_verifier("majority_vote", ["1"] * 8, {})
