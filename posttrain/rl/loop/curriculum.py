"""`curriculum:`: which prompts a step draws, steered by what earlier steps learned from them.

:class:`CurriculumStream` replaces the plain :class:`~posttrain.rl.loop.sampling.PromptStream`
when a stage sets ``curriculum:``. Its math is :mod:`posttrain.rl.algos.curriculum`:

- ``sampler: dump``: each prompt's data source (the ``source_column``) is drawn with DUMP's
  softmax over UCB scores of the sources' recent mean |advantage|; then the source's next prompt
  in its own seeded order (ours: without replacement, reshuffled per epoch; the authors' code
  draws a prompt uniformly with replacement). ``sampler: uniform``: the data's seeded order.
- ``skip_settled``: a prompt whose recent pass rate (the last ``settled_memory`` group pass rates,
  a completion passing when its reward reaches ``pass_reward``) is 0 or 1 is skipped; if every
  prompt a draw could take is settled, the draw takes one anyway (counted as forced).

After each step :meth:`CurriculumStream.observe` gathers every process's completions (the stream's
state must be the same on all of them: each takes its share of the same drawn prompts) and
updates the windows, counts and memories; all of it is in the checkpoint (``state_dict``).
Metrics: ``curriculum/p/<source>`` (the probabilities the step drew with), ``curriculum/drawn/
<source>`` (its share of the step's prompts), ``curriculum/reward/<source>`` (mean reward of its
completions), ``curriculum/mean_abs_adv/<source>``, ``curriculum/skipped`` and ``curriculum/forced``
(prompts skipped and forced while drawing the step), ``curriculum/settled`` (prompts whose memory
says settled).
"""
from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

import torch

from posttrain.common.seeds import derive_seed
from posttrain.rl.algos.curriculum import (
    dump_ucb_scores,
    skip_settled_prompts,
    source_probabilities,
    window_mean_abs,
)
from posttrain.rl.loop.sampling import PromptStream

if TYPE_CHECKING:
    from posttrain.rl.loop.batches import ExperienceBatch, RolloutTensors
    from posttrain.rl.loop.config import CurriculumConfig
    from posttrain.rl.loop.dist import Processes
    from posttrain.rl.scored import ScoredBatch


class CurriculumStream:
    """Prompts drawn by a curriculum (see the module docstring); ``take``/``state_dict`` as PromptStream."""

    def __init__(self, rows: list[dict[str, Any]], config: CurriculumConfig, seed: int):
        self.rows, self.config, self.seed = rows, config, seed
        self.index_of = {id(row): i for i, row in enumerate(rows)}
        column = config.source_column
        self.sources = sorted({str(row[column]) for row in rows}) if config.sampler == "dump" else []
        self.source_of = [str(row[column]) for row in rows] if self.sources else []
        self.streams = {s: PromptStream([i for i, src in enumerate(self.source_of) if src == s],
                                        derive_seed(seed, "curriculum_source", j))
                        for j, s in enumerate(self.sources)}
        self.order = PromptStream(list(range(len(rows))), seed)  # uniform sampler
        self.windows: dict[str, list[float]] = {s: [] for s in self.sources}
        self.counts: dict[str, int] = {s: 0 for s in self.sources}
        self.memory: dict[int, list[float]] = {}
        self.draws = 0
        self._last: dict[str, float] = {}

    # --- drawing -------------------------------------------------------------------------------
    def probabilities(self) -> torch.Tensor:
        """(S,) DUMP's probabilities of drawing each source now."""
        mu = torch.tensor([window_mean_abs(self.windows[s]) for s in self.sources], dtype=torch.float64)
        counts = torch.tensor([self.counts[s] for s in self.sources], dtype=torch.float64)
        return source_probabilities(dump_ucb_scores(mu, counts, self.config.dump_exploration), self.config.dump_temperature)

    def _settled(self, index: int) -> bool:
        slots = self.memory.get(index)
        if not self.config.skip_settled or not slots:
            return False
        return bool(skip_settled_prompts(torch.tensor([slots], dtype=torch.float64))[0])

    def _next_kept(self, stream: PromptStream, stats: dict[str, float]) -> int:
        """The stream's next prompt that is not settled; after a whole pass of settled ones, the next one."""
        for _ in range(len(stream.rows)):
            index = stream.take(1)[0]
            if not self._settled(index):
                return index
            stats["curriculum/skipped"] += 1
        stats["curriculum/forced"] += 1
        return stream.take(1)[0]

    def take(self, count: int) -> list[dict[str, Any]]:
        stats: dict[str, float] = defaultdict(float, {"curriculum/skipped": 0.0, "curriculum/forced": 0.0})
        picked = []
        if self.sources:
            probs = self.probabilities()
            stats.update({f"curriculum/p/{s}": float(p) for s, p in zip(self.sources, probs)})
            stats.update({f"curriculum/drawn/{s}": 0.0 for s in self.sources})
            for _ in range(count):
                generator = torch.Generator().manual_seed(derive_seed(self.seed, "curriculum_draw", self.draws))
                source = self.sources[int(torch.multinomial(probs, 1, generator=generator))]
                self.draws += 1
                picked.append(self._next_kept(self.streams[source], stats))
                stats[f"curriculum/drawn/{source}"] += 1 / count
        else:
            picked = [self._next_kept(self.order, stats) for _ in range(count)]
        self._last = dict(stats)
        return [self.rows[i] for i in picked]

    # --- learning from the step -------------------------------------------------------------------
    def observe(self, scored: ScoredBatch, exp: ExperienceBatch, tensors: RolloutTensors,
                procs: Processes) -> dict[str, float]:
        """Update the curriculum from every process's completions of this step -> its metrics."""
        generated = tensors.response_mask.float()
        abs_adv = ((exp.advantages.float() * generated).sum(1) / generated.sum(1).clamp(min=1.0)).abs()  # (B,)
        index = torch.tensor([float(self.index_of[id(row)]) for row in scored.rows], device=abs_adv.device)
        rewards = scored.rewards.to(abs_adv.device).float()
        passed = (rewards >= self.config.pass_reward).float()  # NaN (unscorable) does not pass
        index, abs_adv, rewards, passed = (procs.gather_rows(t)[0].cpu() for t in (index, abs_adv, rewards, passed))
        stats = dict(self._last)
        by_source: dict[str, list[float]] = defaultdict(list)
        G = scored.group_size
        for row in range(0, len(index), G):
            prompt = int(index[row])
            if self.sources:
                source = self.source_of[prompt]
                window = self.windows[source]
                window.extend(float(a) for a in abs_adv[row:row + G])
                del window[:max(0, len(window) - self.config.dump_window)]
                self.counts[source] += G
                by_source[source].extend(float(r) for r in rewards[row:row + G])
            slots = self.memory.setdefault(prompt, [])
            slots.append(float(passed[row:row + G].mean()))
            del slots[:max(0, len(slots) - self.config.settled_memory)]
        for source in self.sources:
            stats[f"curriculum/mean_abs_adv/{source}"] = window_mean_abs(self.windows[source])
            if by_source[source]:
                finite = [r for r in by_source[source] if r == r]
                stats[f"curriculum/reward/{source}"] = sum(finite) / max(1, len(finite))
        if self.config.skip_settled:
            stats["curriculum/settled"] = float(sum(self._settled(i) for i in self.memory))
        return stats

    # --- checkpoint --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"draws": self.draws, "order": self.order.state_dict(),
                "streams": {s: st.state_dict() for s, st in self.streams.items()},
                "windows": self.windows, "counts": self.counts,
                "memory": {str(i): slots for i, slots in self.memory.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.draws = int(state["draws"])
        self.order.load_state_dict(state["order"])
        for source, stream_state in state["streams"].items():
            self.streams[source].load_state_dict(stream_state)
        self.windows = {s: list(v) for s, v in state["windows"].items()}
        self.counts = {s: int(v) for s, v in state["counts"].items()}
        self.memory = {int(i): list(v) for i, v in state["memory"].items()}
