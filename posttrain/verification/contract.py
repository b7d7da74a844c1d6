"""The verifier plugin contract: what a verifier is, what it returns, and the name registry.

A verifier is a function that receives one completion (a string, or the message list of a chat
completion) plus the sample's dataset columns as keyword arguments, and returns a score in
[0, 1] or a :class:`VerifierResult`. It may be ``async def``. A *batched* verifier
(``@verifier(batched=True)``) receives ``completions: list`` and each column as a list, and
returns a list of the same length.

>>> @verifier(name="doc_example_exact", description="Completion equals the answer column.")
... def exact_answer(completion, answer):
...     return float(completion.strip() == str(answer))
>>> exact_answer("42 ", answer=42)
1.0
>>> get_spec("doc_example_exact").batched
False
"""
from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from posttrain.errors import VerifierError


@dataclass(frozen=True)
class VerifierResult:
    """A structured verdict.

    ``score`` in [0, 1]; ``passed`` says whether the completion is judged correct (None when the
    verifier only grades); ``extracted`` is the answer the verifier read from the completion;
    ``reason`` says why, in a few words.
    """

    score: float
    passed: bool | None = None
    extracted: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class VerifierSpec:
    """A registered verifier: ``origin`` says where it came from (module, file or entry point)."""

    name: str
    fn: Callable[..., Any]
    origin: str
    description: str
    batched: bool
    is_async: bool
    #: True for verifiers (scores in [0, 1]); False for batch reward functions (any finite float).
    bounded: bool = True
    #: Where a pool runs it by default: "thread", or "process" for CPU-bound checks (sympy holds
    #: the GIL) that should scale with cores and be killable (see verification/processes.py).
    executor: str = "thread"


_REGISTRY: dict[str, VerifierSpec] = {}
SPEC_ATTR = "__posttrain_verifier__"


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0].strip() if (text or "").strip() else ""


EXECUTORS = ("thread", "process")
#: A recipe's choice of executor: one of EXECUTORS, or "auto" (the verifier's own).
ExecutorChoice = Literal["auto", "thread", "process"]


def make_spec(fn: Callable[..., Any], name: str, origin: str, description: str | None = None,
              batched: bool = False, bounded: bool = True, executor: str = "thread") -> VerifierSpec:
    """Build a :class:`VerifierSpec` for ``fn``, checking it can take a completion argument."""
    if inspect.isclass(fn) or not callable(fn):
        kind = "a class" if inspect.isclass(fn) else type(fn).__name__
        raise VerifierError(
            f"verifier {name!r} ({origin}) is {kind}; expected a function (or callable object) "
            "taking the completion as first argument")
    check_signature(fn, name, origin, batched)
    if executor not in EXECUTORS or (batched and executor != "thread"):
        raise VerifierError(f"verifier {name!r} ({origin}): executor={executor!r}; expected one of "
                            f"{', '.join(EXECUTORS)} (a batched verifier runs on a thread)")
    # A callable object is async when its __call__ is (inspect does not look there itself).
    is_async = inspect.iscoroutinefunction(fn) or (
        not inspect.isroutine(fn) and inspect.iscoroutinefunction(type(fn).__call__))
    desc = description if description is not None else _first_line(inspect.getdoc(fn))
    return VerifierSpec(name, fn, origin, desc, batched, is_async, bounded, executor)


def check_signature(fn: Callable[..., Any], name: str, origin: str, batched: bool) -> None:
    """Raise VerifierError unless ``fn`` accepts a positional completion(s) argument."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError) as exc:
        raise VerifierError(f"verifier {name!r} ({origin}): cannot read its signature: {exc}")
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD,
                                                   p.VAR_POSITIONAL)]
    if not positional:
        what = "completions (a list)" if batched else "the completion"
        raise VerifierError(
            f"verifier {name!r} ({origin}) has signature {inspect.signature(fn)}; expected "
            f"{what} as first positional parameter, then dataset columns as keyword arguments, "
            f"e.g. def {getattr(fn, '__name__', 'check')}(completion, answer): ...")


def verifier(fn: Callable[..., Any] | None = None, *, name: str | None = None,
             description: str | None = None, batched: bool = False, executor: str = "thread"):
    """Register ``fn`` as a verifier under ``name`` (default: the function's name).

    ``executor="process"`` asks pools to run it in worker processes by default (CPU-bound
    checks); it must then be loadable by reference in a fresh interpreter.

    Usable bare (``@verifier``) or with arguments. The function is returned unchanged (so it
    stays directly callable and testable) with its spec attached as ``__posttrain_verifier__``.
    Registering a different function under a taken name raises VerifierError; re-registering
    the same module-level function (a module reloaded) replaces it.
    """
    def register(func: Callable[..., Any]) -> Callable[..., Any]:
        reg_name = name or getattr(func, "__name__", None)
        if not reg_name:
            raise VerifierError(f"@verifier on {func!r}: give it a name=")
        origin = f"{getattr(func, '__module__', '?')}:{getattr(func, '__qualname__', reg_name)}"
        spec = make_spec(func, reg_name, origin, description, batched, executor=executor)
        old = _REGISTRY.get(reg_name)
        if old is not None and old.origin != origin:
            raise VerifierError(
                f"verifier name {reg_name!r} is already registered by {old.origin}; "
                f"{origin} must use another name=")
        _REGISTRY[reg_name] = spec
        setattr(func, SPEC_ATTR, spec)
        return func

    return register(fn) if fn is not None else register


def registered() -> dict[str, VerifierSpec]:
    """A copy of the decorator registry (name -> spec), without loading built-ins or plugins."""
    return dict(_REGISTRY)


def get_spec(name: str) -> VerifierSpec | None:
    """The registered spec for ``name``, or None."""
    return _REGISTRY.get(name)


def unregister(name: str) -> None:
    """Remove ``name`` from the registry (for tests and interactive sessions)."""
    _REGISTRY.pop(name, None)


def coerce_result(value: Any, bounded: bool = True) -> VerifierResult:
    """Validate a verifier's return value: a real number in [0, 1] (any finite one when not
    ``bounded``: a batch reward function's) or a VerifierResult.

    Raises ``ValueError``/``TypeError`` (counted as a verifier error by the pool) for NaN,
    out-of-range scores and wrong types.
    """
    if isinstance(value, VerifierResult):
        result = value
        score = value.score
    else:
        score = value
        result = None
    if isinstance(score, bool):
        score = float(score)
    if not bounded and not isinstance(score, (str, bytes, complex)) and hasattr(score, "__float__"):
        score = float(score)  # a reward function's numpy / torch scalar
    if not isinstance(score, (int, float)) or isinstance(score, complex):
        raise TypeError(f"verifier returned {type(value).__name__} {value!r:.80}; expected a "
                        "float in [0, 1] or a VerifierResult")
    score = float(score)
    if not bounded:
        if not math.isfinite(score):
            raise ValueError(f"reward function returned {score!r}; expected a finite float")
    elif math.isnan(score) or not 0.0 <= score <= 1.0:
        raise ValueError(f"verifier returned score {score!r}; expected a float in [0, 1]")
    if result is None:
        return VerifierResult(score=score)
    if result.passed is not None and not isinstance(result.passed, bool):
        raise TypeError(f"VerifierResult.passed is {result.passed!r}; expected bool or None")
    return VerifierResult(score, result.passed, result.extracted, result.reason)


def completion_text(completion: Any) -> str:
    """The text of a completion: the string itself, or the last assistant message's content.

    >>> completion_text([{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}])
    '4'
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict) and "content" in completion:
        return str(completion["content"])
    if isinstance(completion, (list, tuple)):
        for message in reversed(completion):
            if isinstance(message, dict) and message.get("role", "assistant") == "assistant":
                return str(message.get("content", ""))
        return ""
    raise TypeError(f"completion is {type(completion).__name__}; expected str or a message list")
