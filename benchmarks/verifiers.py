"""Verifier throughput: verifications/s of the built-in ``math`` and ``code`` verifiers.

    .venv/bin/python benchmarks/verifiers.py            # full run (about 1-2 minutes)
    .venv/bin/python benchmarks/verifiers.py --quick    # smaller batches, 3 repetitions

Each case scores a batch of seeded items through :class:`VerifierPool` instances (the path
the RL loop takes): threads with 1 and 2 workers, and for ``math`` also worker processes with 1 and 2
workers, alternating within each repetition; it reports the median verifications/s (and the
slowest/fastest repetition). Every repetition draws fresh items: math-verify caches parsed
expressions, so repeating one batch would measure its cache. Every verdict is checked against
the expected one, so a broken verifier cannot post a fast number.

Cases:
* math / numeric, extract: last_number: "... The answer is N." against N, the plain-text path
  (no sympy after the gold is parsed);
* math / numeric, default extraction: the same items through math-verify's extraction;
* math / symbolic: 32 prompts x 8 completions of boxed LaTeX only math-verify can decide
  (radicals, polynomials, sets), the gold answer shared within a prompt (parsed once; repeated
  answers are decided once); the same with golds that recur across repetitions (as epochs over
  a dataset do: a worker that has parsed a gold before is faster, so this is where sending a
  prompt to the same worker again pays); and 256 items with distinct gold answers (nothing
  repeats: what scaling with processes looks like on math-verify's full per-item cost);
* code / assert: a function plus three asserts, one sandboxed run per item;
* code / stdin: a program reading stdin, two cases, two sandboxed runs per item.

The markdown table is printed and written to benchmarks/results/verifiers.md, with the machine
(CPU model, cores) and the load average before and after, since the machine may be shared.
"""
from __future__ import annotations

import argparse
import functools
import logging
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from posttrain.verification import VerifierPool, load_verifier

RESULTS = Path(__file__).resolve().parent / "results" / "verifiers.md"
Batch = tuple[list[str], dict[str, list[Any]], list[bool]]  # completions, columns, expected


@dataclass(frozen=True)
class Case:
    verifier: str
    name: str
    make: Callable[[random.Random, int], Batch]
    full_items: int
    quick_items: int
    runs_per_item: int  # sandboxed executions per verification (0: no sandbox)
    options: tuple[tuple[str, Any], ...] = ()  # bound to the verifier
    # (executor, workers, sandbox launcher): what is compared, side by side in one run.
    pools: tuple[tuple[str, int, str], ...] = (("thread", 1, "-"), ("thread", 2, "-"))


def numeric_batch(rng: random.Random, n: int) -> Batch:
    completions, answers, expected = [], [], []
    for _ in range(n):
        a, b = rng.randint(10, 999), rng.randint(10, 999)
        right = rng.random() < 0.5
        shown = a + b if right else a + b + rng.randint(1, 9)
        completions.append(f"We add {a} and {b} step by step. The answer is {shown}.")
        answers.append(str(a + b))
        expected.append(right)
    return completions, {"answer": answers}, expected


def _symbolic_forms(rng: random.Random, recur: bool = False) -> tuple[str, list[str], list[str]]:
    """A gold answer, spellings equal to it, spellings that are not (radicals, polynomials, sets).

    Fresh golds come from ranges wide enough that a repetition rarely meets one seen before; with
    ``recur`` they come from about 2,000 forms (three of the four kinds from 117), so later
    repetitions meet golds already parsed
    (as epochs over a dataset do), which rewards sending a prompt to the same worker again.
    """
    a, b = (rng.randint(2, 40), rng.randint(41, 90)) if recur else (rng.randint(2, 9999), rng.randint(10000, 99999))
    kind = rng.randrange(4)
    if kind == 0:
        return (f"\\frac{{{a}}}{{\\sqrt{{2}}}}", [f"\\frac{{{a}\\sqrt{{2}}}}{{2}}", f"\\dfrac{{{a} \\sqrt{{2}}}}{{2}}"],
                [f"\\frac{{{a}\\sqrt{{3}}}}{{2}}", f"{a}\\sqrt{{2}}"])
    if kind == 1:
        return (f"x^2+{2 * a}x+{a * a}", [f"(x+{a})^2", f"(x + {a})^{{2}}"],
                [f"(x-{a})^2", f"x^2+{a * a}"])
    if kind == 2:
        return (f"\\{{{a}, {b}\\}}", [f"\\{{{b}, {a}\\}}", f"\\{{{b},{a}\\}}"],
                [f"\\{{{a}, {b + 1}\\}}", f"\\{{{b}\\}}"])
    return (f"\\sqrt{{{3 * a * a}}}", [f"{a}\\sqrt{{3}}", f"{a} \\sqrt{{3}}"],
            [f"{a}\\sqrt{{2}}", f"\\sqrt{{{3 * a}}}"])


SYMBOLIC_GROUP = 8  # completions per prompt: they share the gold answer (parsed once)


def symbolic_batch(rng: random.Random, n: int, group: int = SYMBOLIC_GROUP, recur: bool = False) -> Batch:
    """n // group prompts (distinct gold answers), ``group`` completions each, about half right."""
    completions, answers, expected = [], [], []
    while len(completions) < n:
        gold, same, different = _symbolic_forms(rng, recur)
        for _ in range(min(group, n - len(completions))):
            right = rng.random() < 0.5
            pred = rng.choice(same if right else different)
            completions.append(f"Simplifying step by step, we get $\\boxed{{{pred}}}$.")
            answers.append(gold)
            expected.append(right)
    return completions, {"answer": answers}, expected


def assert_batch(rng: random.Random, n: int) -> Batch:
    completions, tests, expected = [], [], []
    for _ in range(n):
        k = rng.randint(1, 99)
        right = rng.random() < 0.5
        body = f"a + b + {k}" if right else f"a + b + {k + 1}"
        completions.append(f"Here is the code:\n```python\ndef f(a, b):\n    return {body}\n```")
        tests.append(f"assert f(1, 2) == {3 + k}\nassert f(0, 0) == {k}\n"
                     f"assert f(-5, 5) == {k}\n")
        expected.append(right)
    return completions, {"tests": tests}, expected


def stdin_batch(rng: random.Random, n: int) -> Batch:
    completions, tests, expected = [], [], []
    for _ in range(n):
        k = rng.randint(1, 99)
        right = rng.random() < 0.5
        offset = k if right else k + 1
        completions.append("```python\na, b = map(int, input().split())\n"
                           f"print(a * b + {offset})\n```")
        cases = [{"input": f"{x} {y}\n", "output": f"{x * y + k}\n"}
                 for x, y in ((rng.randint(1, 50), rng.randint(1, 50)) for _ in range(2))]
        tests.append(cases)
        expected.append(right)
    return completions, {"tests": tests}, expected


PROCESS_POOLS = (("thread", 1, "-"), ("process", 1, "-"), ("process", 2, "-"))
# The sandbox: a fresh interpreter per run (the launcher before issue 14) vs the warm zygote.
LAUNCHER_POOLS = tuple((e, w, launcher) for launcher in ("fresh", "zygote")
                       for e, w in (("thread", 1), ("thread", 2)))
CASES = (
    Case("math", "numeric, extract: last_number", numeric_batch, 5000, 500, 0,
         (("extract", "last_number"),)),
    Case("math", "numeric, default extraction", numeric_batch, 1024, 256, 0, (), PROCESS_POOLS),
    Case("math", "symbolic, 32 golds x 8", symbolic_batch, 256, 256, 0, (), PROCESS_POOLS),
    Case("math", "symbolic, 32 golds x 8, golds recur", functools.partial(symbolic_batch, recur=True), 256, 256, 0,
         (), PROCESS_POOLS),
    Case("math", "symbolic, 256 distinct golds", functools.partial(symbolic_batch, group=1), 256, 128, 0,
         (), PROCESS_POOLS),
    Case("code", "assert-style (3 asserts)", assert_batch, 48, 16, 1, (), LAUNCHER_POOLS),
    Case("code", "stdin/stdout (2 cases)", stdin_batch, 24, 8, 2, (), LAUNCHER_POOLS),
)


def run_once(pool: VerifierPool, batch: Batch, launcher: str = "-") -> float:
    """Score one batch; return verifications/s; fail loudly on a wrong verdict."""
    completions, columns, expected = batch
    if launcher != "-":
        os.environ["POSTTRAIN_SANDBOX_LAUNCHER"] = launcher
    start = time.perf_counter()
    scored = pool.run(completions, columns)
    elapsed = time.perf_counter() - start
    verdicts = [o.result.passed if o.result is not None else None for o in scored.outcomes]
    wrong = [i for i, (v, e) in enumerate(zip(verdicts, expected)) if v is not e]
    if wrong:
        i = wrong[0]
        raise RuntimeError(f"{pool.verifier.name}: item {i} got {verdicts[i]} (expected "
                           f"{expected[i]}; {scored.outcomes[i].error or ''}): {completions[i]!r}")
    return len(completions) / elapsed


def measure(case: Case, reps: int, items: int, seed: int) -> dict[tuple[str, int, str], list[float]]:
    """Verifications/s of each repetition per (executor, workers), after an untimed warm-up batch.

    The pools alternate within each repetition (1, 2, 1, 2, ...) so that slow drift in the load
    of a shared machine hits them alike. Thread pools (which share this process, where
    math-verify and the gold cache memoise parses) each get their own fresh batch; process pools
    (each with its own worker processes and caches) score the same batch, a paired comparison.
    """
    verifier = load_verifier(case.verifier, **dict(case.options))
    pools = {key: VerifierPool(verifier, timeout_s=30.0, workers=key[1], executor=key[0])
             for key in case.pools}
    rates: dict[tuple[str, int, str], list[float]] = {key: [] for key in pools}
    try:
        for key, pool in pools.items():
            run_once(pool, case.make(random.Random(f"{seed}-warmup-{key}"), min(items, 16)), key[2])
        for rep in range(reps):
            for key, pool in pools.items():
                stream = key if key[0] == "thread" and case.verifier == "math" else "shared"
                batch = case.make(random.Random(f"{seed}-{stream}-{rep}"), items)
                rates[key].append(run_once(pool, batch, key[2]))
    finally:
        for pool in pools.values():
            pool.close()
    return rates


def cpu_model() -> str:
    """The "model name" of /proc/cpuinfo, with its family/model numbers (VMs often shorten it)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        return platform.processor() or "unknown CPU"
    name = fields.get("model name", "unknown CPU")
    if "cpu family" in fields and "model" in fields:
        name += f" (cpu family {fields['cpu family']}, model {fields['model']})"
    return name


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| verifier | case | executor | workers | sandbox launcher | items/batch | reps "
             + "| median verif/s | min-max verif/s | x 1 worker (paired median) | sandboxed runs/s |",
             "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        runs = f"{r['median'] * r['runs_per_item']:.1f}" if r["runs_per_item"] else "-"
        lines.append(f"| {r['verifier']} | {r['case']} | {r['executor']} | {r['workers']} | "
                     f"{r['launcher']} | {r['items']} | "
                     f"{r['reps']} | {r['median']:.1f} | {r['min']:.1f}-{r['max']:.1f} | "
                     f"{r['ratio']:.2f} | {runs} |")
    return "\n".join(lines)


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def under_load(load_before: tuple[float, ...], load_after: tuple[float, ...],
               cores: int) -> bool:
    """True when the 1-minute load average exceeded the core count before or after the run."""
    return max(load_before[0], load_after[0]) > cores


def header(args: argparse.Namespace, load_before, load_after, wall_s: float) -> str:
    cores = os.cpu_count() or 1
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    loads = [" / ".join(f"{x:.2f}" for x in load) for load in (load_before, load_after)]
    lines = [
        "# Verifier throughput",
        "",
        f"- command: `python benchmarks/verifiers.py{' --quick' if args.quick else ''}`",
        f"- date: {date}, wall time {wall_s:.0f} s",
        f"- machine: {cpu_model()}, {cores} cores, Python {platform.python_version()}, "
        + f"{platform.system()} {platform.release()}",
        f"- math-verify {_version('math-verify')}, sympy {_version('sympy')}",
        f"- load average (1/5/15 min) before: {loads[0]}, after: {loads[1]}"
        + (" -- **taken under load** (other processes shared the cores)"
           if under_load(load_before, load_after, cores) else ""),
    ]
    return "\n".join(lines) + "\n\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small batches, 3 repetitions")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 5, quick 3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS, help="markdown file to write")
    parser.add_argument("--only", default="", help="run only the cases whose name contains this")
    args = parser.parse_args(argv)
    reps = args.reps or (3 if args.quick else 5)
    # Pool threads run math-verify without its SIGALRM timeouts (the pool enforces them) and
    # math-verify warns about that on every call.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    load_before, start = os.getloadavg(), time.perf_counter()
    rows = []
    for case in (c for c in CASES if args.only in f"{c.verifier} {c.name}"):
        items = case.quick_items if args.quick else case.full_items
        measured = measure(case, reps, items, args.seed)
        for (executor, workers, launcher), rates in measured.items():
            base = measured.get((executor, 1, launcher), rates)  # the same pool kind, 1 worker
            rows.append({"verifier": case.verifier, "case": case.name, "executor": executor,
                         "workers": workers, "launcher": launcher,
                         "items": items, "reps": reps, "median": statistics.median(rates),
                         "min": min(rates), "max": max(rates),
                         # each repetition against the 1-worker pool of its kind in that repetition
                         "ratio": statistics.median(r / b for r, b in zip(rates, base)),
                         "runs_per_item": case.runs_per_item})
            print(f"{case.verifier:>4} {case.name:<30} {executor:>7} x{workers} {launcher:>6}: "
                  f"{statistics.median(rates):8.1f} verif/s", file=sys.stderr)
    wall = time.perf_counter() - start
    report = header(args, load_before, os.getloadavg(), wall) + format_table(rows) + "\n"
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
