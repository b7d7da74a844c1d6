"""evaluate_verifier and the CLI pieces (verifiers list/new, verify), plus the scaffolder."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import tomllib
import typer
from typer.testing import CliRunner

from posttrain.errors import DataError, VerifierError
from posttrain.verification import evaluate_verifier, load_verifier
from posttrain.verification.cli import parse_options, verifiers_app, verify_command
from posttrain.verification.scaffold import scaffold_plugin

# Hand-made labelled set for `math` (answer column) with known verdicts:
#   rows 1-3 correct & labelled True -> TP=3; row 4 correct but labelled False -> FP=1;
#   rows 5-6 wrong & labelled False -> TN=2; row 7 wrong ("no answer") but labelled True -> FN=1.
LABELLED = [
    {"completion": "\\boxed{\\frac{1}{2}}", "answer": "0.5", "label": True},
    {"completion": "The answer is 19.", "answer": "19", "label": True},
    {"completion": "so 7", "answer": 7, "label": True},
    {"completion": "\\boxed{4}", "answer": "4", "label": False},
    {"completion": "The answer is 18.", "answer": "19", "label": False},
    {"completion": "\\boxed{3}", "answer": "2", "label": 0},
    {"completion": "I give up", "answer": "5", "label": 1},
]


def test_confusion_matrix_and_rates_on_a_hand_made_set():
    """precision = 3/(3+1) = 0.75, recall = 3/(3+1) = 0.75, FP rate = 1/(1+2), FN rate = 1/4."""
    ev = evaluate_verifier(load_verifier("math"), LABELLED)
    assert (ev.tp, ev.fp, ev.tn, ev.fn) == (3, 1, 2, 1)
    assert ev.confusion_matrix == [[2, 1], [1, 3]]
    assert ev.precision == pytest.approx(0.75) and ev.recall == pytest.approx(0.75)
    assert ev.fp_rate == pytest.approx(1 / 3) and ev.fn_rate == pytest.approx(0.25)
    assert ev.accuracy == pytest.approx(5 / 7)
    assert (ev.errors, ev.timeouts, ev.n) == (0, 0, 7) and ev.items_per_s > 0
    assert [(m["row"], m["verdict"]) for m in ev.mistakes] == [(4, True), (7, False)]
    assert ev.mistakes[1]["reason"] == "no answer found"
    assert json.loads(json.dumps(ev.to_dict()))["confusion_matrix"] == \
        {"tp": 3, "fp": 1, "tn": 2, "fn": 1}


def test_errors_are_counted_not_raised_and_judged_negative(fresh_name):
    from posttrain.verification import verifier

    @verifier(name=fresh_name("flaky"))
    def flaky(completion):
        if completion == "boom":
            raise ValueError("cannot score")
        return 1.0

    rows = [{"completion": c, "label": True} for c in ["a", "boom", "boom", "b"]]
    ev = evaluate_verifier(load_verifier(flaky), rows, threshold=0.5)
    assert (ev.tp, ev.fn, ev.errors) == (2, 2, 2)
    assert ev.mistakes[0]["reason"] == "ValueError: cannot score"
    assert ev.fp_rate is None  # no row labelled False


@pytest.mark.parametrize("rows, message", [
    ([], "is empty"),
    ([{"completion": "x"}], "row 1 lacks 'label'"),
    ([{"completion": "x", "label": "yes"}], "row 1: 'label' is 'yes'; expected true/false"),
])
def test_bad_labelled_rows_raise_data_error(rows, message):
    with pytest.raises(DataError, match=message):
        evaluate_verifier(load_verifier("exact"), rows)


def _cli():
    app = typer.Typer()
    app.add_typer(verifiers_app, name="verifiers")
    app.command("verify")(verify_command)
    return app


def test_verify_command_text_and_json(tmp_path):
    data = tmp_path / "labelled.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in LABELLED))
    runner = CliRunner()
    text = runner.invoke(_cli(), ["verify", "-v", "math", "-d", str(data)])
    assert text.exit_code == 0, text.output
    assert "label=True              1             3" in text.output
    assert "agreement with label: 0.714 (5 of 7)" in text.output
    assert "FP rate 0.333  FN rate 0.250  precision 0.750  recall 0.750" in text.output
    as_json = runner.invoke(_cli(), ["verify", "-v", "math", "-d", str(data), "--json",
                                     "--option", "tolerance=0.6", "-o", "extract=boxed"])
    report = json.loads(as_json.output)
    # With only boxed extraction "The answer is 19." and "so 7" find no answer (FN 1 -> 3);
    # tolerance 0.6 makes \boxed{3} match 2 (|3-2| <= 0.6*2) -> one more FP.
    assert report["confusion_matrix"] == {"tp": 1, "fp": 2, "tn": 1, "fn": 3}


def test_verify_audits_a_verifier_against_a_reference_verdict_column(tmp_path):
    """Rows with an `expected` verdict (another verifier's, say) instead of a `label`: the report
    is the agreement with it, and the disagreeing rows."""
    rows = [{"completion": "4", "answer": "4", "expected": True},
            {"completion": "4.0", "answer": "4", "expected": True},   # exact says no: a disagreement
            {"completion": "5", "answer": "4", "expected": False},
            {"completion": "5", "answer": "4", "verdict_of_x": 1, "expected": 0}]
    data = tmp_path / "audit.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = CliRunner().invoke(_cli(), ["verify", "-v", "exact", "-d", str(data)])
    assert text.exit_code == 0, text.output
    assert "agreement with expected: 0.750 (3 of 4)" in text.output
    assert "row 2: expected=True verdict=False" in text.output
    report = json.loads(CliRunner().invoke(_cli(), ["verify", "-v", "exact", "-d", str(data), "--json"]).output)
    assert (report["label_key"], report["agreement"]) == ("expected", 0.75)
    named = CliRunner().invoke(_cli(), ["verify", "-v", "exact", "-d", str(data), "--label-column", "verdict_of_x"])
    assert isinstance(named.exception, DataError)  # a named column must be in every row
    assert f"{data} row 1 lacks 'verdict_of_x'" in str(named.exception)


def test_verify_command_errors_are_posttrain_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"completion": "x", "label": true}\nnot json\n')
    result = CliRunner().invoke(_cli(), ["verify", "-v", "exact", "-d", str(bad)])
    assert isinstance(result.exception, DataError)
    assert f"{bad} line 2: invalid JSON" in str(result.exception)
    missing = CliRunner().invoke(_cli(), ["verify", "-v", "nope_nope", "-d", str(bad)])
    assert isinstance(missing.exception, VerifierError)


def test_parse_options_reads_json_values():
    assert parse_options(["tolerance=1e-3", "extract=boxed", "flag=true", "xs=[1, 2]"]) == \
        {"tolerance": 1e-3, "extract": "boxed", "flag": True, "xs": [1, 2]}
    with pytest.raises(Exception, match="expected key=value"):
        parse_options(["novalue"])


def test_verifiers_list_shows_name_origin_description():
    result = CliRunner().invoke(_cli(), ["verifiers", "list"])
    assert result.exit_code == 0
    math_line = next(line for line in result.output.splitlines() if line.startswith("math "))
    assert "posttrain.verifiers.math:math_verifier" in math_line and "math-verify" in math_line
    listed = json.loads(CliRunner().invoke(_cli(), ["verifiers", "list", "--json"]).output)
    assert {"name": "majority_vote", "batched": True}.items() <= \
        next(x for x in listed if x["name"] == "majority_vote").items()


def test_scaffolded_plugin_imports_and_its_own_tests_pass(tmp_path, monkeypatch):
    result = CliRunner().invoke(_cli(), ["verifiers", "new", "unit_match", "--dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    root = tmp_path / "posttrain-verifier-unit-match"
    assert sorted(p.name for p in root.rglob("*") if p.is_file()) == \
        ["pyproject.toml", "test_unit_match.py", "unit_match_verifier.py"]
    meta = tomllib.loads((root / "pyproject.toml").read_text())
    assert meta["project"]["entry-points"]["posttrain.verifiers"] == \
        {"unit_match": "unit_match_verifier:unit_match"}
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            str(root / "tests")], cwd=root, capture_output=True, text=True, check=False,
                           timeout=120)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "3 passed" in tests.stdout
    monkeypatch.syspath_prepend(str(root))
    loaded = load_verifier("unit_match_verifier:unit_match")
    try:
        assert loaded("x = 5 m", answer="5 m").passed is True
    finally:
        from posttrain.verification import unregister
        unregister("unit_match")


def test_scaffold_refuses_bad_names_and_existing_folders(tmp_path):
    for bad in ("Bad", "1x", "with-dash", "class"):
        with pytest.raises(VerifierError, match="expected a lowercase Python identifier"):
            scaffold_plugin(bad, tmp_path)
    scaffold_plugin("twice", tmp_path)
    with pytest.raises(VerifierError, match="already exists"):
        scaffold_plugin("twice", tmp_path)
