"""On-disk records: `stage.json` per stage and `manifest.json` per run."""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class StageRecord:
    """Contents of `stage.json`: what ran, with which config hash, how long, and its summary metrics."""

    name: str
    kind: str
    hash: str
    status: str  # running | completed | failed
    started: float = 0.0
    finished: float | None = None
    seconds: float | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    resumed_from: str | None = None
    engine: str | None = None  # the rollout engine `engine: auto` resolved to (stages that generate)
    recipe: str | None = None  # the recipe's name (the W&B project / MLflow experiment of report_to)
    plugins: list[str] = field(default_factory=list)  # the recipe's plugins, imported again by workers
    earlier: list[str] = field(default_factory=list)  # hashes an earlier posttrain gave it (later stages built on them)

    def write(self, directory: Path) -> None:
        write_json(directory / "stage.json", asdict(self))

    @classmethod
    def read(cls, directory: Path) -> StageRecord | None:
        path = directory / "stage.json"
        if not path.is_file():
            return None
        try:
            return cls(**json.loads(path.read_text()))
        except (ValueError, TypeError):
            return None


def write_json(path: Path, data: Any) -> None:
    """Write atomically (temp file + rename) so a kill never leaves half a record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def write_manifest(run_dir: Path, recipe_name: str, source: str, stages: list[dict[str, Any]]) -> None:
    write_json(run_dir / "manifest.json", {
        "recipe": recipe_name,
        "source": source,
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "stages": stages,
    })
