"""The ``data:`` block of a stage: where the rows come from and how to read them.

A recipe can say ``data: data/arithmetic/sft.jsonl`` (a bare path) or spell the block out::

    data:
      path: data/arithmetic/rl.jsonl
      format: rl
      columns: {question: prompt}
      eval_fraction: 0.05
      seed: 1

The model only describes and checks the settings; reading happens in
:func:`posttrain.data.load_dataset_spec`. Relative paths stay as written until the caller (the
recipe runner) calls :meth:`DataSpec.resolve` with the recipe's folder, so a recipe reads the same
files whatever the current directory is.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: The dataset formats a stage can ask for; ``auto`` detects one from the columns.
FormatName = Literal["auto", "text", "messages", "prompt_completion", "preference", "rl", "steps"]


class DataSpec(BaseModel):
    """Where a stage's rows come from, their format, renames and the eval split.

    >>> DataSpec.model_validate("data/arithmetic/sft.jsonl").path
    'data/arithmetic/sft.jsonl'
    >>> DataSpec(path="x.jsonl", eval_fraction=0.1).resolve("/recipes").path
    '/recipes/x.jsonl'
    """

    model_config = ConfigDict(extra="forbid")

    path: str | None = Field(
        default=None,
        description="Data file (.jsonl, .json, .parquet, .csv) or a folder written by "
        "datasets' save_to_disk; relative paths are read from the recipe's folder.",
    )
    format: FormatName = Field(
        default="auto",
        description="Row format: text, messages, prompt_completion, preference, rl or steps; auto "
        "detects it from the column names (see docs/data.md).",
    )
    eval_path: str | None = Field(
        default=None,
        description="Optional second file with evaluation rows, read with the same format and "
        "column renames as path.",
    )
    eval_fraction: float = Field(
        default=0.0,
        ge=0.0,
        lt=1.0,
        description="Fraction of the rows of path held out for evaluation (0 = none), drawn "
        "with seed; cannot be combined with eval_path.",
    )
    seed: int = Field(
        default=0,
        description="Seed of the random draw that picks the eval_fraction rows.",
    )
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Column renames applied before validation, from the file's name to ours, "
        "e.g. {question: prompt}.",
    )
    max_samples: int | None = Field(
        default=None,
        ge=1,
        description="Keep only the first max_samples training rows (after the eval split, so "
        "the eval rows do not change with it); null keeps all.",
    )
    split: str = Field(
        default="train",
        description="Which split to read when path is a saved DatasetDict folder.",
    )

    @model_validator(mode="before")
    @classmethod
    def _bare_path(cls, data: Any) -> Any:
        # `data: some/file.jsonl` in YAML is the common case; treat it as {path: ...}.
        if isinstance(data, (str, Path)):
            return {"path": str(data)}
        return data

    @model_validator(mode="after")
    def _check_combination(self) -> DataSpec:
        if self.eval_path is not None and self.eval_fraction > 0:
            raise ValueError(
                "set either eval_path (a separate eval file) or eval_fraction (a split of path), "
                "not both"
            )
        targets = list(self.columns.values())
        doubled = sorted({t for t in targets if targets.count(t) > 1})
        if doubled:
            raise ValueError(f"columns maps several source columns onto {doubled}")
        return self

    def resolve(self, base_dir: str | Path) -> DataSpec:
        """Return a copy whose relative ``path``/``eval_path`` are joined to ``base_dir``.

        ``~`` is expanded; absolute paths, and ``${...}`` references the recipe resolver has yet
        to substitute (e.g. ``${stages.gen.output}``), are kept as they are.
        """
        base = Path(base_dir).expanduser()

        def _abs(p: str | None) -> str | None:
            if p is None or "${" in p:
                return p
            candidate = Path(p).expanduser()
            return str(candidate if candidate.is_absolute() else base / candidate)

        return self.model_copy(update={"path": _abs(self.path), "eval_path": _abs(self.eval_path)})
