"""Recipe schema, loading and resolution (the config base classes live in posttrain.common.config)."""
from posttrain.recipe.resolve import ResolvedRecipe, ResolvedStage, load_recipe, resolve_recipe

__all__ = ["ResolvedRecipe", "ResolvedStage", "load_recipe", "resolve_recipe"]
