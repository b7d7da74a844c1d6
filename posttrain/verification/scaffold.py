"""``posttrain verifiers new NAME``: write a plugin package that works as generated.

The package has a ``pyproject.toml`` declaring the ``posttrain.verifiers`` entry point, a module
with one ``@verifier`` function (a containment check to edit), and a pytest file that passes.
"""
from __future__ import annotations

import keyword
import re
from pathlib import Path

from posttrain.errors import VerifierError

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")

PYPROJECT = '''\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "posttrain-verifier-{dist}"
version = "0.1.0"
description = "The {name!r} verifier for posttrain."
requires-python = ">=3.10"
dependencies = ["posttrain"]

# posttrain finds installed verifiers through this entry-point group: after
# `pip install -e .` the recipe can say `verifier: {name}`.
[project.entry-points."posttrain.verifiers"]
{name} = "{module}:{name}"

[tool.setuptools]
py-modules = ["{module}"]

[tool.pytest.ini_options]
pythonpath = ["."]
'''

MODULE = '''\
"""The {name!r} verifier: scores a completion against the sample's ``answer`` column.

Edit ``{name}`` below; keep the contract: the completion comes first (a string, or the message
list of a chat completion), dataset columns arrive as keyword arguments by name, and the return
value is a score in [0, 1] or a VerifierResult.
"""
from posttrain.verification import VerifierResult, completion_text, verifier


@verifier(name="{name}", description="Completion contains the expected answer (edit me).")
def {name}(completion, answer):
    """Score 1 when the completion's text contains ``answer``, else 0.

    >>> {name}("The answer is 42.", answer=42).score
    1.0
    """
    text = completion_text(completion)
    expected = str(answer).strip()
    found = bool(expected) and expected in text
    return VerifierResult(score=1.0 if found else 0.0, passed=found,
                          extracted=expected if found else None,
                          reason="answer found" if found else "answer not in completion")
'''

TEST = '''\
from posttrain.verification import load_verifier

from {module} import {name}


def test_correct_completion_scores_one():
    assert {name}("The answer is 42.", answer="42").score == 1.0


def test_wrong_completion_scores_zero():
    result = {name}("The answer is 41.", answer="42")
    assert result.score == 0.0 and result.passed is False


def test_loads_through_posttrain_like_a_recipe_would():
    loaded = load_verifier("{module}:{name}")
    assert loaded([{{"role": "assistant", "content": "42"}}], answer=42).passed is True
'''


def scaffold_plugin(name: str, directory: str | Path = ".") -> Path:
    """Create ``directory/posttrain-verifier-NAME/`` and return its path.

    Raises VerifierError for a name that is not a lowercase Python identifier or when the
    folder already exists (nothing is overwritten).
    """
    if not _NAME.match(name) or keyword.iskeyword(name):
        raise VerifierError(f"verifier name {name!r} is invalid; expected a lowercase Python "
                            "identifier such as 'unit_match' (letters, digits, underscores)")
    dist = name.replace("_", "-")
    module = f"{name}_verifier"
    root = Path(directory) / f"posttrain-verifier-{dist}"
    if root.exists():
        raise VerifierError(f"{root} already exists; expected a new folder (choose another "
                            "--dir or name)")
    (root / "tests").mkdir(parents=True)
    fields = {"name": name, "dist": dist, "module": module}
    (root / "pyproject.toml").write_text(PYPROJECT.format(**fields))
    (root / f"{module}.py").write_text(MODULE.format(**fields))
    (root / "tests" / f"test_{name}.py").write_text(TEST.format(**fields))
    return root
