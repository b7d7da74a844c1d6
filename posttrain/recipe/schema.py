"""The recipe's top level: name, base model, run directory, shared defaults, ordered stages."""
from __future__ import annotations

from typing import Any

from pydantic import Field

from posttrain.common.config import StrictModel


class RecipeHeader(StrictModel):
    """Top-level recipe keys. Each stage under `stages` is validated by its kind's own config class."""

    name: str = Field(description="Recipe name; used in the default run_dir and the report title.")
    model: str | None = Field(None, description="Base model directory for the first stage (not needed when the first stage is init_model).")
    run_dir: str = Field("runs/${name}", description="Where stage outputs, metrics, manifest.json and report.md go (relative to the working directory).")
    plugins: list[str] = Field(default_factory=list, description="Python modules or ./files.py imported before the stages are validated, for what they register (register_policy_loss, register_advantage_estimator, @verifier, ...); relative files are read from the recipe's folder. Their contents are part of every stage's hash.")
    defaults: dict[str, Any] = Field(default_factory=dict, description="Keys applied to every stage whose kind has them, unless the stage sets them itself (e.g. seed, precision).")
    stages: dict[str, Any] = Field(description="Ordered mapping: stage name -> stage config with a `kind`.")
