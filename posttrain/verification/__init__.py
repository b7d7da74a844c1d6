"""Verifiers: the plugin contract, loading, the scoring pool and labelled evaluation.

Write a verifier::

    from posttrain.verification import VerifierResult, verifier

    @verifier(name="ends_with_answer", description="Last line equals the answer column.")
    def ends_with_answer(completion, answer):
        last = completion.strip().splitlines()[-1] if completion.strip() else ""
        return VerifierResult(score=float(last == str(answer)), passed=last == str(answer),
                              extracted=last)

Use one::

    from posttrain.verification import load_verifier, run_verifier
    scored = run_verifier(load_verifier("math", tolerance=1e-4), completions, {"answer": answers})

See docs/verifiers.md for the authoring guide.
"""
from posttrain.verification.callable import LoadedVerifier
from posttrain.verification.contract import (
                                             VerifierResult,
                                             VerifierSpec,
                                             completion_text,
                                             get_spec,
                                             registered,
                                             unregister,
                                             verifier,
)
from posttrain.verification.evaluation import (
                                             VerifierEvaluation,
                                             evaluate_verifier,
                                             read_labelled_jsonl,
)
from posttrain.verification.loading import (
                                             ENTRY_POINT_GROUP,
                                             list_verifiers,
                                             load_verifier,
                                             resolve_spec,
)
from posttrain.verification.pool import (
                                             ItemOutcome,
                                             ScoredBatch,
                                             VerificationStats,
                                             VerifierPool,
                                             run_verifier,
)

__all__ = [
    "ENTRY_POINT_GROUP", "ItemOutcome", "LoadedVerifier", "ScoredBatch", "VerificationStats",
    "VerifierEvaluation", "VerifierPool", "VerifierResult", "VerifierSpec", "completion_text",
    "evaluate_verifier", "get_spec", "list_verifiers", "load_verifier", "read_labelled_jsonl",
    "registered", "resolve_spec", "run_verifier", "unregister", "verifier",
]
