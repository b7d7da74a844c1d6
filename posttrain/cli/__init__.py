"""The `posttrain` command line."""
from posttrain.cli.main import app, main

__all__ = ["app", "main"]
