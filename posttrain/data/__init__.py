"""Stage data: the ``data:`` spec, local loading, format validation and fingerprints.

>>> from posttrain.data import DataSpec, load_dataset_spec
>>> spec = DataSpec.model_validate("data/arithmetic/sft.jsonl")
>>> train, eval_ = load_dataset_spec(spec, "messages")  # doctest: +SKIP

The formats are described in :mod:`posttrain.data.formats` and in docs/data.md.
"""
from posttrain.data.formats import FORMATS, REQUIRED_COLUMNS, resolve_format
from posttrain.data.loader import fingerprint, load_dataset_spec, split_rows
from posttrain.data.spec import DataSpec, FormatName

__all__ = [
    "FORMATS",
    "REQUIRED_COLUMNS",
    "DataSpec",
    "FormatName",
    "fingerprint",
    "load_dataset_spec",
    "resolve_format",
    "split_rows",
]
