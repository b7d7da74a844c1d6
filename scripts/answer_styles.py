"""Split an eval stage's answers by style: how often the model works the sum out, and how often each style is right.

    .venv/bin/python scripts/answer_styles.py runs/quickstart/eval_sft runs/quickstart/eval_grpo

The quickstart trains on `data/arithmetic/sft_mixed.jsonl`, where 40% of the demonstrations add
column by column ("ones 3+2+8=13, tens 4+3+3+1=11, so 113") and the rest give the bare number. This
reads each eval folder's `samples.jsonl` (written by every `eval` stage) and prints, for greedy and
for sampled answers, the share that start the worked way and the accuracy of each style; that is
how docs/quickstart.md shows *what* GRPO changed, not only that accuracy rose.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

WORKED_PREFIX = "ones"


def _accuracy(group: list[dict]) -> float | None:
    return sum(bool(r["passed"]) for r in group) / len(group) if group else None


def style_table(rows: list[dict], prefix: str = WORKED_PREFIX) -> dict[str, dict[str, float | None]]:
    """Per eval mode ("greedy", "sampled"): answer count, worked share and accuracy per style.

    An accuracy is None where no answer has that style.
    """
    out: dict[str, dict[str, float | None]] = {}
    for mode in sorted({r["mode"] for r in rows}):
        answers = [r for r in rows if r["mode"] == mode]
        worked, bare = [], []
        for r in answers:
            (worked if r["completion"].lstrip().startswith(prefix) else bare).append(r)
        out[mode] = {
            "answers": len(answers),
            "worked_share": len(worked) / len(answers),
            "accuracy": _accuracy(answers),
            "accuracy_worked": _accuracy(worked),
            "accuracy_bare": _accuracy(bare),
        }
    return out


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("eval_dirs", nargs="+", type=Path, help="eval stage folders (holding samples.jsonl)")
    parser.add_argument("--prefix", default=WORKED_PREFIX, help="how a worked answer starts")
    args = parser.parse_args(argv)
    print("| eval | mode | answers | worked share | accuracy | worked right | bare right |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for folder in args.eval_dirs:
        path = folder / "samples.jsonl"
        if not path.is_file():
            print(f"error: {path} not found; pass an eval stage's folder (e.g. runs/quickstart/eval_sft)",
                  file=sys.stderr)
            return 2
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        for mode, t in style_table(rows, args.prefix).items():
            print(f"| {folder} | {mode} | {t['answers']} | {t['worked_share']:.3f} | {_fmt(t['accuracy'])} "
                  f"| {_fmt(t['accuracy_worked'])} | {_fmt(t['accuracy_bare'])} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
