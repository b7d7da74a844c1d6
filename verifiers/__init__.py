"""First-party verifiers, written exactly as a user plugin would be (``@verifier``).

Importing this package registers them all by name; ``load_verifier("math")`` does so on demand.
Each module is small and self-contained; see docs/verifiers.md for the catalogue.
"""
from posttrain.verifiers import (
                                 code,
                                 exact,
                                 json_schema,
                                 length,
                                 majority_vote,
                                 math,
                                 multiple_choice,
                                 regex,
)

__all__ = ["code", "exact", "json_schema", "length", "majority_vote", "math", "multiple_choice",
           "regex"]
