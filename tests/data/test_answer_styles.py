"""scripts/answer_styles.py: splits an eval stage's samples.jsonl by answer style, exactly."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from repo_scripts import load_script

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "answer_styles.py"


@pytest.fixture(scope="module")
def styles():
    return load_script("scripts/answer_styles.py")


def _row(mode, completion, passed):
    return {"mode": mode, "prompt_index": 0, "completion": completion, "passed": passed, "score": float(passed)}


ROWS = [
    _row("greedy", "ones 3+2+8=13, tens 4+3+3+1=11, so 113", True),
    _row("greedy", "112", False),
    _row("greedy", "27", True),
    _row("sampled", " ones 2+5=7, tens 0+2+0=2, so 27", True),
    _row("sampled", "ones 2+5=7, tens 0+2+0=2, so 28", False),
    _row("sampled", "ones 1+1=2, tens 0+0+0=0, so 2", True),
    _row("sampled", "27", False),
]


def test_style_table_counts_share_and_accuracy_per_style(styles):
    table = styles.style_table(ROWS)
    assert table["greedy"] == {"answers": 3, "worked_share": pytest.approx(1 / 3), "accuracy": pytest.approx(2 / 3),
                               "accuracy_worked": 1.0, "accuracy_bare": 0.5}
    assert table["sampled"] == {"answers": 4, "worked_share": 0.75, "accuracy": 0.5,
                                "accuracy_worked": pytest.approx(2 / 3), "accuracy_bare": 0.0}
    # a style nobody used has no accuracy rather than a made-up 0
    only_bare = styles.style_table([r for r in ROWS if r["mode"] == "greedy"][1:])
    assert only_bare["greedy"]["accuracy_worked"] is None and only_bare["greedy"]["worked_share"] == 0.0


def test_cli_prints_a_row_per_mode_and_names_a_missing_folder(tmp_path):
    folder = tmp_path / "eval_sft"
    folder.mkdir()
    (folder / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    ok = subprocess.run([sys.executable, str(SCRIPT), str(folder)], capture_output=True, text=True, timeout=60, check=False)
    assert ok.returncode == 0, ok.stderr
    assert f"| {folder} | greedy | 3 | 0.333 | 0.667 | 1.000 | 0.500 |" in ok.stdout
    assert f"| {folder} | sampled | 4 | 0.750 | 0.500 | 0.667 | 0.000 |" in ok.stdout
    bad = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "nope")], capture_output=True, text=True, check=False,
                         timeout=60)
    assert bad.returncode == 2 and "nope/samples.jsonl not found" in bad.stderr and "Traceback" not in bad.stderr
