"""Fixtures for the data tests: small files written into tmp_path."""
from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture
def write_jsonl(tmp_path):
    """Write rows (dicts, or raw strings written verbatim as lines) to tmp_path/name."""

    def _write(name: str, rows: list) -> Path:
        path = tmp_path / name
        lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
        path.write_text("".join(line + "\n" for line in lines))
        return path

    return _write
