"""A verifier's measured false-positive / false-negative rates, read from `posttrain verify --json`.

They feed the noisy-verifier corrections (posttrain.rl.algos.noisy) of a reward channel.
"""
from __future__ import annotations

import json
from pathlib import Path

from posttrain.errors import DataError

FP_KEY, FN_KEY = "fp_rate", "fn_rate"


def rates_from_report(path: str | Path) -> tuple[float, float]:
    """``(fp_rate, fn_rate)`` = (rho_0, rho_1) from the JSON of ``posttrain verify --json``.

    Raises DataError naming the file and the key when the file is missing or malformed, or when a
    rate is null (the labelled data had no row with that label, so the rate is undefined).

    >>> fp, fn = rates_from_report("math_report.json")      # doctest: +SKIP
    >>> from posttrain.rl.algos.noisy import backward_correction  # doctest: +SKIP
    >>> backward_correction(torch.tensor([1.0, 0.0]), fp, fn)  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"verifier report {path} does not exist; expected the JSON written by "
                        "`posttrain verify -v NAME -d labelled.jsonl --json > report.json`")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"verifier report {path} is not valid JSON ({exc}); expected the output "
                        "of `posttrain verify --json`") from None
    if not isinstance(report, dict):
        raise DataError(f"verifier report {path} holds a {type(report).__name__}; expected a JSON "
                        f"object with keys '{FP_KEY}' and '{FN_KEY}'")
    label_key = report.get("label_key", "label")
    if label_key != "label":
        raise DataError(f"verifier report {path} compares with '{label_key}', a reference verdict, not "
                        "ground-truth labels: its FP/FN rates are disagreements with that reference. Measure "
                        "the rates on a 'label' column for noise_correction")
    rates = []
    for key, label in ((FP_KEY, "false"), (FN_KEY, "true")):
        if key not in report:
            raise DataError(f"verifier report {path} lacks '{key}'; expected the output of "
                            "`posttrain verify --json`")
        value = report[key]
        if value is None:
            raise DataError(f"verifier report {path}: '{key}' is null because no labelled row had "
                            f"label={label}; add such rows to the labelled data to measure it")
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not 0.0 <= value <= 1.0:
            raise DataError(f"verifier report {path}: '{key}' is {value!r}; expected a "
                            "probability in [0, 1]")
        rates.append(float(value))
    return rates[0], rates[1]
