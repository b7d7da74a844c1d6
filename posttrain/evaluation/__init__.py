"""Evaluation: pass@k estimators and the eval runner shared by the `eval` stage and `posttrain eval`."""
from posttrain.evaluation.metrics import pass_at_k, summarize_groups

__all__ = ["pass_at_k", "summarize_groups"]
