"""One calling convention for every verifier form (sync, async, batched)."""
from __future__ import annotations

import asyncio
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from posttrain.errors import VerifierError
from posttrain.verification.contract import VerifierResult, VerifierSpec, coerce_result


class LoadedVerifier:
    """A verifier with its recipe options bound.

    ``v(completion, **columns) -> VerifierResult`` scores one item whatever the verifier's form
    (an async verifier is run to completion; a batched one gets lists of one).
    ``v.call_batch(completions, columns) -> list[VerifierResult]`` scores a batch (one call for a
    batched verifier). Both validate the returned scores (see ``coerce_result``). Scoring many
    items with timeouts and error accounting is the pool's job (:class:`VerifierPool`).
    """

    def __init__(self, spec: VerifierSpec, options: Mapping[str, Any] | None = None,
                 ref: str | None = None, base_dir: str | None = None):
        self.spec = spec
        self.options = dict(options or {})
        self.ref = ref or spec.name
        self.base_dir = base_dir  # where a file reference is resolved (worker processes reload it)
        params = list(inspect.signature(spec.fn).parameters.values())
        first = next(p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD,
                                                     p.VAR_POSITIONAL))
        self._completion_param = first.name
        self._accepts_any = any(p.kind == p.VAR_KEYWORD for p in params)
        keywordable = [p for p in params if p is not first
                       and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        self._accepted = {p.name for p in keywordable}
        self._required = {p.name for p in keywordable if p.default is p.empty}
        unknown = sorted(k for k in self.options if k not in self._accepted)
        if unknown and not self._accepts_any:
            raise VerifierError(
                f"verifier {self.name!r} ({spec.origin}) has no option {', '.join(unknown)}; "
                f"it accepts: {', '.join(sorted(self._accepted)) or '(no options)'}")

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def batched(self) -> bool:
        return self.spec.batched

    def has_parameter(self, name: str) -> bool:
        """Whether the verifier names ``name`` as a keyword parameter (``**kwargs`` does not count)."""
        return name in self._accepted

    def required_columns(self) -> set[str]:
        """Columns the verifier needs per sample (parameters without default, not bound as options)."""
        return self._required - set(self.options)

    def check_columns(self, available: Sequence[str], source: str = "the data") -> None:
        """Raise VerifierError naming the missing column(s) before any scoring starts."""
        missing = sorted(self.required_columns() - set(available))
        if missing:
            raise VerifierError(
                f"{'verifier' if self.spec.bounded else 'reward function'} {self.name!r} needs column(s) {', '.join(missing)} but {source} has: "
                f"{', '.join(sorted(available)) or '(no columns)'}; add them or bind them as options")

    def _kwargs(self, columns: Mapping[str, Any]) -> dict[str, Any]:
        kwargs = dict(self.options)
        for key, value in columns.items():
            if key != self._completion_param and (self._accepts_any or key in self._accepted):
                kwargs[key] = value  # a per-sample column overrides an option of the same name
        return kwargs

    def invoke(self, completions_or_completion: Any, kwargs: dict[str, Any]) -> Any:
        """Call the underlying function once, running it to completion if it is async."""
        out = self.spec.fn(completions_or_completion, **kwargs)
        if inspect.isawaitable(out):
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                return asyncio.run(_await(out))
            if hasattr(out, "close"):
                out.close()  # avoid "coroutine was never awaited" noise
            raise VerifierError(f"verifier {self.name!r} is async and was called from a running "
                                "event loop; use `await verifier.acall(...)` there")
        return out

    async def acall(self, completion: Any, **columns: Any) -> VerifierResult:
        """Score one item from async code (a sync verifier runs inline)."""
        if self.batched:
            return self._batched_results(await _maybe_await(
                self.spec.fn([completion], **self._kwargs({k: [v] for k, v in columns.items()}))),
                1)[0]
        return coerce_result(await _maybe_await(self.spec.fn(completion, **self._kwargs(columns))), self.spec.bounded)

    def __call__(self, completion: Any, **columns: Any) -> VerifierResult:
        if self.batched:
            return self.call_batch([completion], {k: [v] for k, v in columns.items()})[0]
        return coerce_result(self.invoke(completion, self._kwargs(columns)), self.spec.bounded)

    def call_batch(self, completions: Sequence[Any],
                   columns: Mapping[str, Sequence[Any]]) -> list[VerifierResult]:
        """Score a batch; ``columns`` maps each column name to a list aligned with completions."""
        n = len(completions)
        for key, values in columns.items():
            if len(values) != n:
                raise VerifierError(f"column {key!r} has {len(values)} values for {n} completions")
        if self.batched:
            return [coerce_result(x, self.spec.bounded) for x in self.call_batched_raw(completions, columns)]
        return [self(c, **{k: v[i] for k, v in columns.items()}) for i, c in enumerate(completions)]

    def call_batched_raw(self, completions: Sequence[Any],
                         columns: Mapping[str, Sequence[Any]]) -> list[Any]:
        """One call of a batched verifier; returns its raw per-item values (length checked)."""
        return _check_length(self.invoke(list(completions), self._kwargs(columns)),
                             len(completions), self.name)

    def _batched_results(self, out: Any, n: int) -> list[VerifierResult]:
        return [coerce_result(x, self.spec.bounded) for x in _check_length(out, n, self.name)]

    def __repr__(self) -> str:
        return f"LoadedVerifier({self.name!r}, origin={self.spec.origin!r}, options={self.options})"


def _check_length(out: Any, n: int, name: str) -> list[Any]:
    if not isinstance(out, (list, tuple)) or len(out) != n:
        got = f"{type(out).__name__} of length {len(out)}" if hasattr(out, "__len__") else \
            type(out).__name__
        raise TypeError(f"batched verifier {name!r} returned {got}; expected a list of "
                        f"{n} scores or VerifierResults")
    return list(out)


async def _await(awaitable: Any) -> Any:
    return await awaitable


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value
