"""What a stage's run function receives: where to write, how to log, and how to resume."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from posttrain.report.metrics import MetricsLogger
from posttrain.report.progress import StageProgress

_CKPT = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class StageContext:
    """Paths and loggers for one stage run.

    `work_dir` is private to this attempt (`run_dir/.work/NAME-HASH`); the runner moves it into
    place only when the stage succeeds. A stage writes its HF model to `output_dir` and its
    resumable state to `checkpoint_dir/checkpoint-STEP/` (a checkpoint is complete once its
    `COMPLETE` marker or HF `trainer_state.json` exists).
    """

    name: str
    work_dir: Path
    metrics: MetricsLogger
    progress: StageProgress
    rank: int = field(default_factory=lambda: int(os.environ.get("RANK", "0")))
    world_size: int = field(default_factory=lambda: int(os.environ.get("WORLD_SIZE", "1")))

    @property
    def output_dir(self) -> Path:
        return self.work_dir / "model"

    @property
    def checkpoint_dir(self) -> Path:
        return self.work_dir / "checkpoints"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def latest_checkpoint(self) -> Path | None:
        """The newest complete checkpoint, or None."""
        if not self.checkpoint_dir.is_dir():
            return None
        found = []
        for path in self.checkpoint_dir.iterdir():
            match = _CKPT.match(path.name)
            if match and ((path / "COMPLETE").exists() or (path / "trainer_state.json").exists()):
                found.append((int(match.group(1)), path))
        return max(found)[1] if found else None
