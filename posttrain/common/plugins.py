"""The one loader of user code: ``'module:attr'`` or ``'./file.py:attr'`` to a Python object.

Verifiers and batch reward functions (:mod:`posttrain.verification.loading`) and a recipe's
``plugins:`` (modules that register algorithms) all load through here, so a file is executed once per process
however many channels name it, under a module name unique to its path (two ``checks.py`` in
different folders do not collide), registered in ``sys.modules`` so dataclasses and pickling
can find it. Errors name the reference, say what was expected, and use the caller's error class.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
import threading
from pathlib import Path
from typing import Any

_file_modules: dict[Path, Any] = {}
_file_lock = threading.Lock()


def looks_like_path(text: str) -> bool:
    """Whether the module part of a reference is a file path rather than a dotted module name."""
    return text.endswith(".py") or "/" in text or text.startswith((".", "~"))


#: Modules executed from a file (``./my_verifier.py``) are registered under this package name:
#: a fresh interpreter cannot import them by name, only re-execute the file.
USER_CODE_PACKAGE = "posttrain_user_code"


def import_file(path: Path, ref: str, what: str, error: type[Exception]) -> Any:
    """Execute the Python file ``path`` once per process and return its module."""
    with _file_lock:
        if path in _file_modules:
            return _file_modules[path]
        digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
        module_name = f"{USER_CODE_PACKAGE}.{path.stem}_{digest}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(module_name, None)
            raise error(f"{what} {ref!r}: executing {path} failed: {type(exc).__name__}: {exc}") from exc
        _file_modules[path] = module
        return module


def import_plugin(ref: str, base_dir: str | Path | None, what: str, error: type[Exception]) -> str:
    """Import a plugin module for its registrations (``@register_policy_loss``, ``@verifier``, ...):
    a dotted module name or a ``.py`` file (relative to ``base_dir``); return what was imported, a
    module name or the file's absolute path (what a worker process imports again).

    >>> import_plugin("posttrain.rewards.arithmetic", None, "plugin", ValueError)
    'posttrain.rewards.arithmetic'
    """
    ref = ref.strip()
    if looks_like_path(ref):
        path = (Path(base_dir or Path.cwd()) / Path(ref).expanduser()).resolve()
        if not path.is_file():
            raise error(f"{what} {ref!r}: file {path} does not exist; expected a Python file or a module name")
        import_file(path, ref, what, error)
        return str(path)
    try:
        importlib.import_module(ref)
    except Exception as exc:
        raise error(f"{what} {ref!r}: importing it failed: {type(exc).__name__}: {exc}") from exc
    return ref


def _public_callables(module: Any) -> list[str]:
    return sorted(n for n, v in vars(module).items()
                  if callable(v) and not n.startswith("_") and not inspect.ismodule(v)
                  and getattr(v, "__module__", None) == module.__name__)


def resolve_attr(module: Any, attr: str, ref: str, what: str, where: str, error: type[Exception]) -> Any:
    """``module.attr`` (dotted attributes allowed); a miss lists the module's public functions."""
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise error(f"{what} {ref!r}: {where} has no attribute {attr!r}; "
                        f"it defines: {', '.join(_public_callables(module)) or '(no public functions)'}")
        obj = getattr(obj, part)
    return obj


def load_object(ref: str, what: str, error: type[Exception], base_dir: str | Path | None = None) -> tuple[Any, str]:
    """Load ``'module:attr'`` or ``'path.py:attr'`` (relative to ``base_dir``, default the working
    directory); return ``(object, origin)`` where origin is ``'module:attr'`` or ``'/abs/path.py:attr'``.

    >>> load_object("math:sqrt", "function", ValueError)[1]
    'math:sqrt'
    """
    head, sep, attr = ref.strip().rpartition(":")
    if not sep or not head or not attr:
        raise error(f"{what} {ref!r} is incomplete; expected 'module:function' or './file.py:function'")
    if looks_like_path(head):
        root = Path(base_dir or Path.cwd())
        path = Path(head).expanduser()
        path = (path if path.is_absolute() else root / path).resolve()
        if not path.is_file():
            raise error(f"{what} {ref!r}: file {path} does not exist; expected a Python file "
                        f"(paths are relative to {root.resolve()})")
        module = import_file(path, ref, what, error)
        return resolve_attr(module, attr, ref, what, f"file {path}", error), f"{path}:{attr}"
    try:
        module = importlib.import_module(head)
    except ImportError as exc:
        raise error(f"{what} {ref!r}: cannot import module {head!r} ({exc}); expected an importable module "
                    "(installed, or on PYTHONPATH) or a file path like ./file.py:fn") from exc
    return resolve_attr(module, attr, ref, what, f"module {head!r}", error), f"{head}:{attr}"
