"""``json_schema``: the completion is JSON that validates against a JSON Schema.

The JSON is the whole completion, or the last ```json fenced block. The schema comes from the
``schema`` column (per sample; a dict or a JSON string) or the ``schema`` option (a column of the
same name overrides the option). Validation uses ``jsonschema`` with the validator class the
schema's ``$schema`` asks for (Draft 2020-12 by default).

>>> json_schema('{"n": 3}', schema={"type": "object", "required": ["n"]}).passed
True
"""
from __future__ import annotations

import json
import re
from typing import Any

from posttrain.verification import VerifierResult, completion_text, verifier

_JSON_FENCE = re.compile(r"```(?:json)?[^\n]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


def _schema(schema: Any) -> dict:
    if schema is None:
        raise ValueError("json_schema needs a `schema` column or option")
    if isinstance(schema, str):
        schema = json.loads(schema)
    if not isinstance(schema, dict):
        raise TypeError(f"schema is {type(schema).__name__}; expected a JSON object")
    return schema


@verifier(name="json_schema", description="Completion parses as JSON and validates against the "
                                           "`schema` column or option (jsonschema).")
def json_schema(completion: Any, schema: Any = None) -> VerifierResult:
    """Score 1 when the completion's JSON validates against ``schema``."""
    import jsonschema

    schema = _schema(schema)
    validator_cls = jsonschema.validators.validator_for(schema, jsonschema.Draft202012Validator)
    validator_cls.check_schema(schema)  # a broken schema is a data error, not a wrong answer
    text = completion_text(completion).strip()
    blocks = _JSON_FENCE.findall(text)
    candidate = blocks[-1].strip() if blocks else text
    try:
        instance = json.loads(candidate)
    except json.JSONDecodeError as exc:
        return VerifierResult(0.0, False, candidate[:200], f"not JSON: {exc.msg}")
    error = jsonschema.exceptions.best_match(validator_cls(schema).iter_errors(instance))
    if error is not None:
        where = "/".join(map(str, error.absolute_path)) or "(root)"
        return VerifierResult(0.0, False, candidate[:200], f"{where}: {error.message}")
    return VerifierResult(1.0, True, candidate[:200], "valid")
