"""``code``: run a Python solution in the sandbox against the sample's ``tests``.

The solution is the last ```python (or ```py) block of the completion, else the last fenced
block, else the whole text. ``tests`` is either

* assert-style test code: a string (each top-level ``assert`` is one test; other top-level
  statements are set-up; code without top-level asserts, such as HumanEval's
  ``def check(candidate): ...`` + ``check(fn)``, is one test) or a list of such strings
  (MBPP's ``test_list``: one test each); or
* stdin/stdout cases: a list of ``{"input": ..., "output": ...}`` or ``{"inputs": [...],
  "outputs": [...]}`` (also accepted as a JSON string). Each case is a separate sandboxed run;
  outputs are compared token by token (``compare="tokens"``) or line by line (``"lines"``).

score = fraction of tests passed; passed = all passed. For assert-style tests a harness runs the
solution then each test, and after each one writes ``<nonce> pass|fail <i>`` to a private copy
of stdout; the nonce is random per run and handed over on stdin, so ``os._exit(0)``,
``sys.exit(0)``, killing the harness or printing fake results cannot earn credit for tests that
did not run. (Code that deliberately inspects the harness's frames could find the nonce: the
harness shares the solution's interpreter, as assert-style tests must.)

>>> code_verifier("```python\\ndef add(a, b):\\n    return a + b\\n```",
...               tests="assert add(1, 2) == 3").passed
True
"""
from __future__ import annotations

import ast
import json
import re
import secrets
from typing import Any

from posttrain.sandbox import run_python
from posttrain.verification import VerifierResult, completion_text, verifier

_FENCE = re.compile(r"```([\w+-]*)[^\n]*\n(.*?)```", re.DOTALL)

HARNESS = '''\
import collections, os, sys, traceback, types

_PLAIN = frozenset({int, float, complex, str, bytes, bool, type(None)})
_CONTAINERS = frozenset({list, tuple, set, frozenset})
# Mappings whose == is the standard library's own (captured now: the solution may patch classes).
_MAPPINGS = {kind: kind.__eq__ for kind in (dict, collections.OrderedDict, collections.defaultdict,
                                             collections.Counter)}
_LAZY = frozenset({types.GeneratorType, map, filter, zip, enumerate, reversed, type(iter([])),
                   type(iter(())), type(iter(range(0)))})


# Everything the guard uses is bound here, before the solution runs: it cannot swap out
# type/all/exec/... or the harness's globals for its own.
def _plain(value, depth=0, _type=type, _all=all, _plain_types=_PLAIN, _containers=_CONTAINERS,
           _mappings=_MAPPINGS):
    kind = _type(value)  # exact types: an int subclass with an always-true __eq__ is not plain
    if kind in _plain_types:
        return True
    if depth > 100:
        return False
    if kind in _containers:
        return _all(_plain(item, depth + 1) for item in value)
    if kind in _mappings and kind.__eq__ is _mappings[kind]:
        return _all(_plain(k, depth + 1) and _plain(v, depth + 1) for k, v in value.items())
    return False


def _refuse(name, value, _type=type):
    raise TypeError("%s returned a %s, not a plain built-in value (int, float, str, bool, None, bytes, or "
                    "list/tuple/set/dict of them); custom return types are refused unless the task allows "
                    "them (allow_custom_types)" % (name, _type(value).__name__))


def _checked_items(iterator, name, _plain=_plain, _refuse=_refuse):
    for item in iterator:
        if not _plain(item):
            _refuse(name, item)
        yield item


def _guarded(fn, instance_of=None, _type=type, _plain=_plain, _lazy=_LAZY, _refuse=_refuse,
             _checked_items=_checked_items, _getattr=getattr):
    name = _getattr(fn, "__name__", "the solution")

    def call(*args, **kwargs):
        out = fn(*args, **kwargs)
        kind = _type(out)
        if kind in _lazy:  # a generator, map, zip...: each item is checked as the test draws it
            return _checked_items(out, name)
        if not _plain(out) and not (instance_of is not None and kind is instance_of):
            _refuse(name, out)
        return out

    call.__name__ = name
    return call


def _posttrain_harness(solution, tests, allow_custom_types=False, _guarded=_guarded, _callable=callable,
                       _isinstance=isinstance, _type=type, _exec=exec, _compile=compile, _dict=dict,
                       _list=list, _vars=vars):
    nonce = sys.stdin.readline().strip()
    channel = os.dup(1)  # private copy: the solution may close or redirect fd 1

    def report(line):
        sys.stdout.flush()
        os.write(channel, ("\\n" + nonce + " " + line + "\\n").encode())

    namespace = {"__name__": "__solution__", "__builtins__": __builtins__}
    try:
        _exec(_compile(solution, "solution.py", "exec"), namespace)
    except BaseException:  # SystemExit too: exiting early is a failure, not a pass
        traceback.print_exc()
        report("solution-failed")
        return
    # The tests see every callable the solution defines or imports through a guard on its return
    # values; a class is guarded only when it takes over construction (its own __new__ or a
    # metaclass), and may then return its own instances. The solution's own calls, recursion
    # included, go to the raw callables. Methods of the solution's classes are not guarded.
    guarded = {}
    if not allow_custom_types:
        for name, value in _list(namespace.items()):
            if name == "__builtins__" or not _callable(value):
                continue
            if not _isinstance(value, _type):
                guarded[name] = _guarded(value)
            elif "__new__" in _vars(value) or _type(value) is not _type:
                guarded[name] = _guarded(value, instance_of=value)
    test_namespace = _dict(namespace)
    test_namespace.update(guarded)
    for i, (kind, code) in enumerate(tests):
        try:
            _exec(_compile(code, "test_%d.py" % i, "exec"), test_namespace)
        except BaseException:
            traceback.print_exc()
            if kind == "setup":  # later tests may depend on it: they count as failed
                report("setup-failed")
                return
            report("fail %d" % i)
        else:
            if kind == "test":
                report("pass %d" % i)
        for name, value in _list(test_namespace.items()):  # what the tests define, the solution sees
            if name not in guarded:
                namespace[name] = value
    report("done")
'''


def extract_code(text: str) -> str:
    """The last ```python block, else the last fenced block, else the text itself."""
    blocks = _FENCE.findall(text)
    python = [body for lang, body in blocks if lang.lower() in ("python", "py", "python3")]
    if python:
        return python[-1]
    if blocks:
        return blocks[-1][1]
    return text


def split_assert_tests(tests: str | list[str]) -> list[tuple[str, str]]:
    """``[(kind, code)]`` with kind "test" or "setup" (see the module docstring)."""
    if isinstance(tests, list):
        return [("test", t) for t in tests]
    tree = ast.parse(tests)  # the tests are dataset content: a syntax error is a data error
    if not any(isinstance(node, ast.Assert) for node in tree.body):
        return [("test", tests)]
    return [("test" if isinstance(node, ast.Assert) else "setup",
             ast.get_source_segment(tests, node, padded=True) or ast.unparse(node))
            for node in tree.body]


def _io_cases(tests: Any) -> list[dict[str, str]] | None:
    """Normalise stdin/stdout cases, or None if ``tests`` is assert-style."""
    if isinstance(tests, str):
        stripped = tests.strip()
        if not stripped.startswith(("[", "{")):
            return None
        try:
            tests = json.loads(stripped)
        except json.JSONDecodeError:
            return None  # e.g. assert-style code that starts with a list literal
    if isinstance(tests, dict) and "inputs" in tests and "outputs" in tests:
        return [{"input": i, "output": o} for i, o in zip(tests["inputs"], tests["outputs"])]
    if isinstance(tests, list) and tests and all(isinstance(t, dict) for t in tests):
        for t in tests:
            if "input" not in t or "output" not in t:
                raise ValueError(f"stdin/stdout test case {t!r:.80} needs 'input' and 'output'")
        return [{"input": t["input"], "output": t["output"]} for t in tests]
    return None


def _same_output(got: str, expected: Any, compare: str) -> bool:
    expected = expected if isinstance(expected, str) else "\n".join(map(str, expected)) \
        if isinstance(expected, list) else str(expected)
    if compare == "tokens":
        return got.split() == expected.split()
    if compare == "lines":
        return [l.rstrip() for l in got.strip().splitlines()] == \
            [l.rstrip() for l in expected.strip().splitlines()]
    raise ValueError(f"compare={compare!r}; expected 'tokens' or 'lines'")


def _run_io(code: str, cases, timeout_s, memory_mb, compare) -> tuple[int, int, str | None]:
    passed, first_failure = 0, None
    for i, case in enumerate(cases):
        stdin = case["input"] if isinstance(case["input"], str) else \
            "\n".join(map(str, case["input"]))
        out = run_python(code, stdin=stdin, timeout_s=timeout_s, memory_mb=memory_mb)
        ok = out.returncode == 0 and not out.timed_out and \
            _same_output(out.stdout, case["output"], compare)
        passed += ok
        if not ok and first_failure is None:
            why = out.killed_by or (f"exit {out.returncode}" if out.returncode else "wrong output")
            first_failure = f"case {i}: {why}"
    return passed, len(cases), first_failure


def _run_asserts(code: str, tests, timeout_s, memory_mb, allow_custom_types: bool = False) -> tuple[int, int, str | None]:
    units = split_assert_tests(tests)
    total = sum(kind == "test" for kind, _ in units)
    nonce = secrets.token_hex(16)
    program = f"{HARNESS}\n_posttrain_harness({code!r}, {units!r}, {bool(allow_custom_types)!r})\n"
    out = run_python(program, stdin=nonce + "\n",
                     timeout_s=timeout_s, memory_mb=memory_mb)
    passed, failed, done, solution_failed = set(), set(), False, False
    for line in out.stdout.splitlines():
        parts = line.split()
        if not parts or parts[0] != nonce:
            continue
        if parts[1:] == ["done"]:
            done = True
        elif parts[1:] in (["solution-failed"], ["setup-failed"]):
            solution_failed = parts[1]
        elif len(parts) == 3 and parts[1] in ("pass", "fail") and parts[2].isdigit():
            (passed if parts[1] == "pass" else failed).add(int(parts[2]))
    passed -= failed
    if solution_failed:
        what = "solution" if solution_failed == "solution-failed" else "test set-up"
        why = f"{what} raised: " + (out.stderr.strip().splitlines() or ["?"])[-1]
    elif not done:
        why = out.killed_by or f"harness did not finish (exit {out.returncode})"
    else:
        why = None if len(passed) == total else f"{total - len(passed)} assertion(s) failed"
    return len(passed), total, why


@verifier(name="code", description="Python solution run in the sandbox against assert-style or "
                                    "stdin/stdout tests; score = fraction passed.")
def code_verifier(completion: Any, tests: Any, *, timeout_s: float = 5.0, memory_mb: int = 512,
                  compare: str = "tokens", allow_custom_types: bool = False) -> VerifierResult:
    """Score = fraction of ``tests`` passed by the extracted solution (see module docstring).

    ``timeout_s`` and ``memory_mb`` bound each sandboxed run (one per stdin/stdout case), so
    give the pool's per-item timeout room for all cases. Assert-style tests call the solution's
    functions through a guard that fails a call returning anything but a plain built-in value
    (exact int, float, complex, str, bytes, bool, None, list/tuple/set/frozenset of them, or a
    dict, OrderedDict, defaultdict or Counter whose ``==`` is still the standard library's; a
    generator or map is checked item by item): the always-equal reward hack (an int subclass or a
    class whose ``__eq__`` always says True, returned by a function, a callable object or a class
    with its own ``__new__``) earns no credit. ``allow_custom_types=True`` turns the guard off for
    tasks whose functions return their own classes. Not guarded: methods of the solution's
    classes (``Solution().f()``), so class-style tasks are still open to the hack.
    """
    code = extract_code(completion_text(completion))
    cases = _io_cases(tests)
    if cases is not None:
        passed, total, why = _run_io(code, cases, timeout_s, memory_mb, compare)
    elif isinstance(tests, (str, list)):
        passed, total, why = _run_asserts(code, tests, timeout_s, memory_mb, allow_custom_types)
    else:
        raise TypeError(f"tests is {type(tests).__name__}; expected assert code (str or list of "
                        "str) or stdin/stdout cases (list of {input, output})")
    if total == 0:
        raise ValueError("tests contain no test cases")
    reason = f"{passed}/{total} tests passed" + (f"; {why}" if why else "")
    return VerifierResult(passed / total, passed == total, code[:2000], reason)
