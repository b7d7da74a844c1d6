"""Every YAML under recipes/ (recursively) loads and validates against the schema."""
from __future__ import annotations

from pathlib import Path

import pytest

from posttrain.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "recipes").rglob("*.y*ml"))


def test_recipes_exist():
    assert any(p.name == "quickstart.yaml" for p in RECIPES)


@pytest.mark.parametrize("path", RECIPES, ids=[str(p.relative_to(REPO)) for p in RECIPES])
def test_recipe_validates(path):
    recipe = load_recipe(path)
    assert recipe.stages
    header = path.read_text().splitlines()[0]
    assert header.startswith("#"), f"{path} must open with a comment giving its command"
    assert "posttrain run" in path.read_text() or "make quickstart" in path.read_text()
    for stage in recipe.stages:
        data = getattr(stage.config, "data", None)
        if data is not None and data.path:
            assert Path(data.path).exists(), f"{path}: stage {stage.name} reads missing {data.path}"
