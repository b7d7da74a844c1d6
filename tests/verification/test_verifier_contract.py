"""The plugin contract: decorator, registry, result validation, one calling convention."""
from __future__ import annotations

import asyncio
import math

import pytest

from posttrain.errors import VerifierError
from posttrain.verification import (
    LoadedVerifier,
    VerifierResult,
    completion_text,
    get_spec,
    load_verifier,
    verifier,
)
from posttrain.verification.contract import coerce_result


def test_decorator_registers_spec_and_leaves_function_callable(fresh_name):
    name = fresh_name("plain")

    @verifier(name=name, description="Equal to the answer.")
    def check(completion, answer):
        return float(completion == answer)

    spec = get_spec(name)
    assert (spec.name, spec.fn, spec.description, spec.batched, spec.is_async) == \
        (name, check, "Equal to the answer.", False, False)
    assert spec.origin.endswith(":test_decorator_registers_spec_and_leaves_function_callable."
                                "<locals>.check")
    assert check("a", answer="a") == 1.0


def test_bare_decorator_uses_function_name_and_docstring():
    def make():
        @verifier
        async def bare_async_verifier_xyz(completion):
            """First line is the description.

            More text.
            """
            return 1.0
        return bare_async_verifier_xyz

    fn = make()
    spec = get_spec("bare_async_verifier_xyz")
    try:
        assert spec.fn is fn and spec.is_async
        assert spec.description == "First line is the description."
    finally:
        from posttrain.verification import unregister
        unregister("bare_async_verifier_xyz")


def test_name_collision_between_different_functions_is_refused(fresh_name):
    name = fresh_name("dup")
    verifier(name=name)(lambda completion: 1.0)
    with pytest.raises(VerifierError, match=f"'{name}' is already registered"):
        def other(completion):
            return 0.0
        verifier(name=name)(other)


@pytest.mark.parametrize("value, expected", [
    (1, 1.0), (0.25, 0.25), (True, 1.0), (False, 0.0),
    (VerifierResult(0.5, True, "x", "why"), VerifierResult(0.5, True, "x", "why")),
])
def test_coerce_result_accepts_scores_in_unit_interval(value, expected):
    assert coerce_result(value) == (expected if isinstance(expected, VerifierResult)
                                    else VerifierResult(expected))


@pytest.mark.parametrize("value, error", [
    (1.5, ValueError), (-0.1, ValueError), (math.nan, ValueError), (None, TypeError),
    ("1.0", TypeError), ([1.0], TypeError), (VerifierResult(2.0), ValueError),
    (VerifierResult(1.0, passed="yes"), TypeError),
])
def test_coerce_result_rejects_bad_scores(value, error):
    with pytest.raises(error):
        coerce_result(value)


def test_completion_text_handles_strings_and_chat_messages():
    chat = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
            {"role": "assistant", "content": "the reply"}]
    assert completion_text("plain") == "plain"
    assert completion_text(chat) == "the reply"
    assert completion_text({"role": "assistant", "content": "one"}) == "one"
    with pytest.raises(TypeError):
        completion_text(3)


def test_one_calling_convention_for_sync_async_and_batched(fresh_name):
    @verifier(name=fresh_name("sync"))
    def sync_v(completion, answer):
        return float(completion == answer)

    @verifier(name=fresh_name("async"))
    async def async_v(completion, answer):
        await asyncio.sleep(0)
        return VerifierResult(float(completion == answer), completion == answer)

    @verifier(name=fresh_name("batched"), batched=True)
    def batched_v(completions, answer):
        return [float(c == a) for c, a in zip(completions, answer)]

    for fn in (sync_v, async_v, batched_v):
        loaded = load_verifier(fn)
        assert isinstance(loaded, LoadedVerifier)
        assert loaded("x", answer="x").score == 1.0
        assert [r.score for r in loaded.call_batch(["x", "y"], {"answer": ["x", "x"]})] == [1, 0]
        assert asyncio.run(loaded.acall("y", answer="x")).score == 0.0


def test_options_are_bound_and_columns_override_them(fresh_name):
    @verifier(name=fresh_name("opts"))
    def with_option(completion, answer, *, bonus=0.0):
        return min(1.0, float(completion == answer) + bonus)

    loaded = load_verifier(with_option, bonus=0.5)
    assert loaded("no", answer="x").score == 0.5
    assert loaded("no", answer="x", bonus=0.25).score == 0.25  # a column of the same name wins
    with pytest.raises(VerifierError, match="has no option bonsu; it accepts: answer, bonus"):
        load_verifier(with_option, bonsu=1)


def test_required_columns_are_checked_before_scoring(fresh_name):
    @verifier(name=fresh_name("cols"))
    def needs(completion, answer, tests, *, strict=True):
        return 1.0

    loaded = load_verifier(needs)
    assert loaded.required_columns() == {"answer", "tests"}
    with pytest.raises(VerifierError, match=r"needs column\(s\) tests but the data has: answer"):
        loaded.check_columns(["answer"])
    # Columns the function does not take are not passed.
    assert loaded("c", answer=1, tests=2, unrelated=3).score == 1.0


def test_async_verifier_called_inside_running_loop_points_to_acall(fresh_name):
    @verifier(name=fresh_name("inloop"))
    async def av(completion):
        return 1.0

    loaded = load_verifier(av)

    async def main():
        with pytest.raises(VerifierError, match="acall"):
            loaded("x")
        return (await loaded.acall("x")).score

    assert asyncio.run(main()) == 1.0
