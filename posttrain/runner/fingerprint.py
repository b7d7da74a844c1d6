"""Stage fingerprints: a stage reruns when its resolved config, its inputs or an upstream stage change."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel

_FILE_CACHE: dict[tuple[str, int, int], str] = {}
_IGNORED_KEYS = {"notes", "report_to"}  # neither changes what the stage computes


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes, cached per (path, size, mtime)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _FILE_CACHE:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _FILE_CACHE[key] = h.hexdigest()
    return _FILE_CACHE[key]


def dir_digest(path: Path) -> str:
    """A directory's listing (relative path, size, mtime); cheap for model directories."""
    h = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            full = Path(root) / name
            st = full.stat()
            h.update(f"{full.relative_to(path)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _inputs(value: Any, skip: set[str], out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _inputs(v, skip, out)
    elif isinstance(value, list):
        for v in value:
            _inputs(v, skip, out)
    elif isinstance(value, str) and value and value not in skip and len(value) < 4096:
        # a plugin reference './my_reward.py:score' names the file before the ':'
        path = Path(value.rpartition(":")[0] if ".py:" in value else value)
        try:
            if path.is_file():
                out[value] = file_digest(path)
            elif path.is_dir():
                out[value] = dir_digest(path)
        except OSError:
            pass


def plugin_digests(plugins: list[str]) -> dict[str, str]:
    """``{"plugin:REF": sha256}`` of each recipe plugin: a file's bytes, a module's source file,
    or every ``.py`` file of a package (editing ``my_pkg/losses.py`` must rerun the stages)."""
    import importlib.util

    out = {}
    for ref in plugins:
        files: list[Path] = []
        if ref.endswith(".py"):
            files = [Path(ref)]
        elif (spec := importlib.util.find_spec(ref)) is not None:
            if spec.submodule_search_locations:  # a package
                files = sorted(p for root in spec.submodule_search_locations for p in Path(root).rglob("*.py"))
            elif spec.origin and spec.origin.endswith(".py"):
                files = [Path(spec.origin)]
        digest = hashlib.sha256()
        for path in files:
            if path.is_file():
                digest.update(f"{path}\n{file_digest(path)}\n".encode())
        out[f"plugin:{ref}"] = digest.hexdigest() if files else ref
    return out


def stage_fingerprint(config_json: dict[str, Any], upstream: dict[str, str], upstream_outputs: dict[str, str],
                      relocatable: bool = True) -> str:
    """Hash of (config without notes and report_to, upstream stage hashes, contents of the files it names).

    Paths that are upstream stage outputs (``upstream_outputs``: path -> stage name) are covered by
    those stages' hashes, not re-read. With ``relocatable`` they enter the hash as
    ``<stages.NAME.output>``, not as where the run directory happens to be, so a run directory
    moved or copied elsewhere is still up to date (``relocatable=False``: the hashes of runs made
    before, which named the absolute paths).
    """
    config = {k: v for k, v in config_json.items() if k not in _IGNORED_KEYS}
    inputs: dict[str, str] = {}
    _inputs(config, set(upstream_outputs), inputs)
    if relocatable:
        config = _placeholders(config, upstream_outputs)
        inputs = {_placeholders(k, upstream_outputs): v for k, v in inputs.items()}
    payload = json.dumps({"config": config, "upstream": upstream, "inputs": inputs}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def _placeholders(value: Any, outputs: dict[str, str]) -> Any:
    """``value`` with every upstream output path (or a path inside one) named by its stage."""
    if isinstance(value, dict):
        return {k: _placeholders(v, outputs) for k, v in value.items()}
    if isinstance(value, list):
        return [_placeholders(v, outputs) for v in value]
    if isinstance(value, str):
        for path, name in outputs.items():
            if value == path or value.startswith(path + "/"):
                return f"<stages.{name}.output>" + value[len(path):]
    return value


def as_recorded(config: BaseModel, saved: dict[str, Any]) -> dict[str, Any]:
    """``config`` dumped as an earlier posttrain wrote it: without the keys its ``saved`` dump
    lacks that are at their defaults here, in sub-configs and lists of them too (a reward channel).

    A key added to posttrain with a default that keeps what runs did before changes every full
    config, so a stage saved before it hashes as the config without that key. A key the recipe
    sets, or a default that changed, keeps the hashes apart, and the stage reruns. A plain dict
    (``columns``, ``ray_resources``) is a value, compared whole.
    """
    full = config.model_dump(mode="json")
    explicit = config.model_dump(mode="json", exclude_defaults=True)
    out: dict[str, Any] = {}
    for key, value in full.items():
        if key not in saved and key not in explicit:
            continue
        field, before = getattr(config, key, None), saved.get(key)
        if isinstance(field, BaseModel) and isinstance(before, dict):
            value = as_recorded(field, before)
        elif (isinstance(field, list) and isinstance(before, list) and len(field) == len(before)
              and all(isinstance(item, BaseModel) and isinstance(b, dict) for item, b in zip(field, before))):
            value = [as_recorded(item, b) for item, b in zip(field, before)]
        out[key] = value
    return out
