"""The package version (one definition; pyproject.toml's `version` must match it)."""
__version__ = "0.1.0"
