"""Find a verifier from a recipe reference and bind its options.

A reference is one of (tried in this order):

* ``"./my_verifier.py:check"`` - a Python file (relative to ``base_dir``, usually the recipe's
  folder) and a function in it;
* ``"my_package.checks:check"`` - an importable module and an attribute;
* ``"math"`` - a name: the ``@verifier`` registry (built-ins in ``posttrain.verifiers`` are
  registered that way), then the ``posttrain.verifiers`` entry-point group of installed plugins.

Options from the recipe are bound like ``functools.partial`` keyword arguments (not through a
factory): ``load_verifier("math", tolerance=1e-3)`` calls ``fn(completion, answer=...,
tolerance=1e-3)``. A dataset column with the same name as an option overrides it per sample.
"""
from __future__ import annotations

import importlib.metadata
from dataclasses import replace
from pathlib import Path
from typing import Any

from posttrain.common.plugins import load_object, looks_like_path
from posttrain.errors import VerifierError
from posttrain.verification.builtins import load_builtins
from posttrain.verification.callable import LoadedVerifier
from posttrain.verification.contract import SPEC_ATTR, VerifierSpec, make_spec, registered

ENTRY_POINT_GROUP = "posttrain.verifiers"


def spec_from_object(obj: Any, name: str, origin: str) -> VerifierSpec:
    """Turn a loaded object (decorated function, plain callable or VerifierSpec) into a spec."""
    if isinstance(obj, VerifierSpec):
        return obj
    spec = getattr(obj, SPEC_ATTR, None)
    if isinstance(spec, VerifierSpec):
        return replace(spec, origin=origin) if origin != spec.origin else spec
    return make_spec(obj, name, origin)


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    return list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


def _entry_point_origin(ep: importlib.metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    where = f" from {dist.name}" if dist is not None else ""
    return f"entry point {ep.name} = {ep.value}{where}"


def _load_entry_point(ep: importlib.metadata.EntryPoint) -> VerifierSpec:
    origin = _entry_point_origin(ep)
    try:
        obj = ep.load()
    except Exception as exc:
        raise VerifierError(
            f"verifier {ep.name!r} ({origin}) failed to load: {type(exc).__name__}: {exc}; "
            f"expected {ep.value!r} to name an importable module:function") from exc
    spec = spec_from_object(obj, ep.name, origin)
    return replace(spec, name=ep.name)


def _by_name(name: str) -> VerifierSpec:
    load_builtins()
    specs = registered()
    if name in specs:
        return specs[name]
    for ep in _entry_points():
        if ep.name == name:
            return _load_entry_point(ep)
    known = sorted(set(specs) | {ep.name for ep in _entry_points()})
    raise VerifierError(
        f"unknown verifier {name!r}; expected a registered name ({', '.join(known)}), "
        "'module:function', or './file.py:function'")


def _by_reference(ref: str, base_dir: str | Path | None) -> VerifierSpec:
    """``'module:fn'`` or ``'./file.py:fn'``, through the loader shared with reward functions."""
    obj, origin = load_object(ref, "verifier", VerifierError, base_dir)
    return spec_from_object(obj, ref.rpartition(":")[2], origin)


def resolve_spec(ref: Any, base_dir: str | Path | None = None) -> VerifierSpec:
    """Resolve a reference (string, function or spec) to a :class:`VerifierSpec`."""
    if isinstance(ref, VerifierSpec):
        return ref
    if isinstance(ref, LoadedVerifier):
        return ref.spec
    if not isinstance(ref, str):
        return spec_from_object(ref, getattr(ref, "__name__", type(ref).__name__), repr(ref))
    ref = ref.strip()
    head, sep, attr = ref.rpartition(":")
    if sep and (not head or not attr):
        raise VerifierError(f"verifier reference {ref!r} is incomplete; expected "
                            "'module:function' or './file.py:function'")
    if sep:
        return _by_reference(ref, base_dir)
    if looks_like_path(ref):
        raise VerifierError(f"verifier reference {ref!r} names a file but no function; "
                            f"expected '{ref}:function_name'")
    return _by_name(ref)


def load_batch_function(ref: str, base_dir: str | Path | None = None, **options: Any) -> LoadedVerifier:
    """A batch reward function ``f(completions, **columns) -> list[float]`` ('module:attr' or
    './file.py:fn') as what it is: a batched verifier whose scores may be any finite float, so it
    is scored by the same pool (timeout, error counting, error-rate stop) as every verifier.

    >>> f = load_batch_function("posttrain.rewards.arithmetic:final_number_matches")
    >>> f.batched, f.spec.bounded, f.call_batch(["it is 4", "5"], {"answer": ["4", "4"]})[0].score
    (True, False, 1.0)
    """
    fn, origin = load_object(ref, "reward function", VerifierError, base_dir)
    spec = make_spec(fn, ref.rpartition(":")[2], origin, batched=True, bounded=False)
    return LoadedVerifier(spec, options, ref=ref)


def load_verifier(ref: Any, base_dir: str | Path | None = None, **options: Any) -> LoadedVerifier:
    """Load a verifier by reference and bind ``options``; see the module docstring for routes.

    >>> v = load_verifier("exact")
    >>> v("42", answer="42").score
    1.0
    """
    return LoadedVerifier(resolve_spec(ref, base_dir), options, ref=str(ref),
                          base_dir=None if base_dir is None else str(base_dir))


def list_verifiers() -> list[VerifierSpec]:
    """Every verifier reachable by name: built-ins, other registered ones, and entry points.

    An entry point that fails to load is listed with the error as its description.
    """
    load_builtins()
    specs = registered()
    for ep in _entry_points():
        if ep.name in specs:
            continue
        try:
            specs[ep.name] = _load_entry_point(ep)
        except VerifierError as exc:
            specs[ep.name] = VerifierSpec(ep.name, None, _entry_point_origin(ep),
                                          f"failed to load: {exc}", False, False)
    return [specs[name] for name in sorted(specs)]
