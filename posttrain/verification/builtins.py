"""Import the first-party verifiers (``verifiers/`` at the repo root, package ``posttrain.verifiers``).

They register themselves through the public ``@verifier`` decorator on import, exactly as a
user's plugin module would. setup.py maps the package name onto the top-level ``verifiers/``
folder for both editable and normal installs.
"""
from __future__ import annotations

import importlib


def load_builtins() -> None:
    """Import ``posttrain.verifiers`` (idempotent), registering the built-in verifiers."""
    importlib.import_module("posttrain.verifiers")
