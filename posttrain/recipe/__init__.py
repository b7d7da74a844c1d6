"""Recipe schema, loading and resolution."""
from posttrain.recipe.base import DistributedConfig, StageConfig, StrictModel
from posttrain.recipe.resolve import ResolvedRecipe, ResolvedStage, load_recipe, resolve_recipe

__all__ = [
           "DistributedConfig",
           "ResolvedRecipe",
           "ResolvedStage",
           "StageConfig",
           "StrictModel",
           "load_recipe",
           "resolve_recipe",
]
