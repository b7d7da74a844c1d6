"""Import the first-party verifiers (``verifiers/`` at the repo root, package ``posttrain.verifiers``).

They register themselves through the public ``@verifier`` decorator on import, exactly as a
user's plugin module would. ``pyproject.toml`` maps the package name onto the top-level
``verifiers/`` folder; an editable install made before that folder existed (or a build whose
package list misses it) cannot import it, so we fall back to loading the folder next to the
``posttrain`` package by path under the same package name.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
from pathlib import Path

from posttrain.errors import VerifierError

PACKAGE = "posttrain.verifiers"
_lock = threading.Lock()


def _source_folder() -> Path:
    import posttrain

    return Path(posttrain.__file__).resolve().parent.parent / "verifiers"


def _import_from_source() -> None:
    folder = _source_folder()
    init = folder / "__init__.py"
    if not init.is_file():
        raise VerifierError(f"cannot import {PACKAGE}: it is not installed and {init} does not "
                            "exist; reinstall posttrain (pip install -e .)")
    spec = importlib.util.spec_from_file_location(PACKAGE, init,
                                                  submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(PACKAGE, None)
        raise
    import posttrain

    posttrain.verifiers = module  # what a normal import of the subpackage would set


def load_builtins() -> None:
    """Import ``posttrain.verifiers`` (idempotent), registering the built-in verifiers."""
    if PACKAGE in sys.modules:
        return
    with _lock:
        if PACKAGE in sys.modules:
            return
        try:
            importlib.import_module(PACKAGE)
        except ModuleNotFoundError as exc:
            if exc.name != PACKAGE:
                raise
            _import_from_source()
