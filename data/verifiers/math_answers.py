"""Write math_answers.jsonl: a labelled set of (gold answer, completion, equal?) in public answer formats.

    python data/verifiers/math_answers.py            # rewrite math_answers.jsonl next to this file
    python data/verifiers/math_answers.py --check    # exit 1 if the committed file differs

Each case below is a gold answer as datasets write it (MATH / NuminaMath style LaTeX, with or
without ``$`` delimiters, sometimes a whole boxed solution; GSM8K style plain numbers), answers a
model may give that are mathematically equal to it, and answers that are not. Labels are ours (a
person's judgement of mathematical equality), not any verifier's. Every answer is put into a
completion by a seeded choice of phrasing ("... so the answer is $\\boxed{X}$.", "Therefore, the
final answer is $X$.", "\\[ X \\]", "Answer: X"), after a line of working that has other numbers
in it, so extraction has something to get wrong. tests/verification/test_math_verifier.py scores
the file with the ``math`` verifier and with math-verify's own ``verify(parse(gold),
parse(completion))``, and docs/verifiers.md lists where they disagree and why.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

OUT = Path(__file__).resolve().with_name("math_answers.jsonl")

# (category, gold, equal answers, different answers). Answers are LaTeX without delimiters
# unless they carry their own; "plain:" marks an answer written as plain text.
CASES = [
    ("integer", "19", ["19", "19.0", "plain:19"], ["18", "plain:91"]),
    ("integer", "-7", ["-7", "plain:-7"], ["7"]),
    ("integer", "35", ["plain:ones 8+7=15, tens 2+1=3, so 35"], ["plain:ones 8+7=15, so 25"]),
    ("decimal", "0.25", ["\\frac{1}{4}", "0.250", ".25"], ["0.24", "2.5"]),
    ("decimal", "3.14159", ["3.14159"], ["3.14"]),
    ("fraction", "10/9", ["\\frac{10}{9}", "\\dfrac{10}{9}", "\\frac{20}{18}"], ["\\frac{9}{10}"]),
    ("fraction", "\\frac{10}{9}", ["10/9", "\\tfrac{10}{9}"], ["\\frac{10}{7}"]),
    ("fraction", "$-\\frac{3}{4}$", ["-0.75", "\\frac{-3}{4}", "-\\dfrac{3}{4}"], ["\\frac{3}{4}"]),
    ("fraction", "\\frac{1}{3}", ["\\frac{2}{6}", "1/3"], ["0.3", "\\frac{1}{4}"]),
    ("radical", "\\frac{\\sqrt{2}}{2}", ["\\frac{1}{\\sqrt{2}}", "\\sqrt{2}/2", "\\frac{\\sqrt2}{2}"],
     ["\\sqrt{2}", "\\frac{\\sqrt{3}}{2}"]),
    ("radical", "2\\sqrt{3}", ["\\sqrt{12}", "2 \\sqrt{3}"], ["3\\sqrt{2}", "\\sqrt{6}"]),
    ("radical", "3+2\\sqrt{2}", ["2\\sqrt{2}+3", "(1+\\sqrt{2})^2"], ["3-2\\sqrt{2}"]),
    ("radical", "$\\sqrt[3]{2}$", ["2^{1/3}", "\\sqrt[3]{2}"], ["\\sqrt{2}"]),
    ("interval", "$[0,1)$", ["[0,1)", "[0, 1)"], ["(0,1]", "[0,1]"]),
    ("interval", "$$(1, +\\infty)$$", ["(1, +\\infty)", "(1,\\infty)"], ["[1,\\infty)"]),
    ("interval", "(-\\infty, 2] \\cup [5, \\infty)", ["(-\\infty,2]\\cup[5,\\infty)"],
     ["(-\\infty, 2) \\cup (5, \\infty)"]),
    ("set", "\\{1, 2, 3\\}", ["\\{3, 2, 1\\}", "\\{1,2,3\\}"], ["\\{1, 2\\}"]),
    ("set", "$\\{-2, 5\\}$", ["\\{5, -2\\}"], ["\\{2, 5\\}"]),
    ("tuple", "(3, 2)", ["(3,2)"], ["(2, 3)", "(3, 3)"]),
    ("tuple", "$(p,q)=(3,2)$", ["(3,2)", "(p, q) = (3, 2)"], ["(2,3)"]),
    ("tuple", "(1, -1, 2)", ["(1,-1,2)"], ["(1, 1, 2)"]),
    ("equation", "y = 2x + 3", ["y=3+2x", "y = 2x + 3"], ["y = 2x - 3"]),
    ("equation", "x=3", ["3", "x = 3"], ["x = 4"]),
    ("equation", "5", ["x = 5", "n=5"], ["x = 6"]),
    ("ratio", "$V_1:V_2=11:21$", ["11:21", "V_1:V_2=11:21"], ["21:11"]),
    ("ratio", "3:4", ["3:4", "\\frac{3}{4}"], ["4:3"]),
    ("text", "$\\text{odd}$", ["odd", "\\text{odd}", "\\textbf{odd}"], ["\\text{even}"]),
    ("text", "\\text{Tuesday}", ["\\text{Tuesday}", "plain:Tuesday"], ["\\text{Monday}"]),
    ("text", "\\text{(C)}", ["\\text{(C)}", "(C)"], ["\\text{(B)}"]),
    ("unit", "5\\text{ cm}", ["5", "5 \\text{ cm}", "5\\,\\mathrm{cm}"], ["6 \\text{ cm}"]),
    ("unit", "12", ["12 \\text{ meters}", "12\\text{ m}", "plain:12 meters"], ["13 \\text{ m}"]),
    ("unit", "90^\\circ", ["90", "90^{\\circ}", "90^\\circ"], ["45^\\circ"]),
    ("unit", "\\$18.90", ["18.90", "18.9", "\\$18.90"], ["19.80"]),
    ("percent", "50\\%", ["50\\%", "50"], ["5\\%", "25\\%"]),
    ("percent", "12.5\\%", ["12.5\\%", "12.5"], ["1.25\\%"]),
    ("thousands", "1000", ["1,000", "1{,}000", "plain:1 000", "1000"], ["100", "10000"]),
    ("thousands", "1234567", ["1,234,567", "1{,}234{,}567"], ["1,234,576"]),
    ("thousands", "1,000,000", ["1000000", "10^6"], ["100000"]),
    ("locale decimal", "1.22", ["plain:1,22"], ["plain:1,23"]),
    ("locale decimal", "3.5", ["plain:3,5", "3.5"], ["plain:3,6"]),
    ("multiple boxes", "(2, 2), (6, 2)", ["boxes:(2, 2)|(6, 2)", "(2,2),(6,2)"],
     ["boxes:(2, 2)|(6, 3)"]),
    ("multiple boxes", "1, 2", ["boxes:1|2", "boxes:2|1"], ["boxes:1|3"]),
    ("expression", "x^2+2x+1", ["(x+1)^2", "1+2x+x^2"], ["(x-1)^2"]),
    ("expression", "\\frac{x+1}{x-1}", ["\\frac{1+x}{x-1}"], ["\\frac{x-1}{x+1}"]),
    ("expression", "2\\pi", ["2\\pi", "\\pi \\cdot 2", "6.283185"], ["\\pi", "4\\pi"]),
    ("expression", "3+4i", ["4i+3"], ["3-4i"]),
    ("matrix", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}",
     ["\\begin{pmatrix}1\\\\2\\end{pmatrix}"], ["\\begin{pmatrix} 2 \\\\ 1 \\end{pmatrix}"]),
    ("boxed solution", "The sum is $3+4=\\boxed{7}$.", ["7", "plain:7"], ["8"]),
    ("boxed solution", "Hence $x = \\boxed{\\frac{5}{2}}$.", ["2.5", "\\frac{5}{2}"], ["\\frac{2}{5}"]),
]

WORKING = ["First, 3 + 4 = 7 and 12/5 = 2.4, which we use below.",
           "We substitute x = 2 into the first equation, so 2x + 1 = 5.",
           "Let me check the case n = 10 first; it gives 100."]
LATEX_PHRASES = ["{w} So the answer is $\\boxed{{{a}}}$.",
                 "{w} Therefore, the final answer is ${a}$.",
                 "{w}\nWe conclude:\n\\[ {a} \\]",
                 "{w} The answer is $\\boxed{{{a}}}$"]
PLAIN_PHRASES = ["{w} Answer: {a}", "{w} So the answer is {a}", "{w}\n{a}"]


def completion(rng: random.Random, answer: str) -> str:
    working = rng.choice(WORKING)
    if answer.startswith("plain:"):
        return rng.choice(PLAIN_PHRASES).format(w=working, a=answer.removeprefix("plain:"))
    if answer.startswith("boxes:"):
        boxes = " \\quad \\text{and} \\quad ".join(
            f"\\boxed{{{b}}}" for b in answer.removeprefix("boxes:").split("|"))
        return f"{working} The solutions are ${boxes}$."
    return rng.choice(LATEX_PHRASES).format(w=working, a=answer)


def rows() -> list[dict]:
    rng = random.Random(14)
    out = []
    for category, gold, equal, different in CASES:
        for answers, label in ((equal, True), (different, False)):
            for answer in answers:
                for _ in range(2):  # two phrasings of each answer
                    out.append({"category": category, "answer": gold,
                                "completion": completion(rng, answer), "label": label})
    return out


def render() -> str:
    return "".join(json.dumps(r, ensure_ascii=True) + "\n" for r in rows())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    args = parser.parse_args()
    text = render()
    if args.check:
        same = OUT.exists() and OUT.read_text() == text
        print(f"{OUT}: {'up to date' if same else 'differs from a fresh run'}")
        return 0 if same else 1
    OUT.write_text(text)
    print(f"wrote {len(text.splitlines())} rows to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
