"""`curriculum:`: which prompts a step draws, steered by what earlier steps learned from them.

:class:`CurriculumStream` replaces the plain :class:`~posttrain.rl.loop.sampling.PromptStream`
when a stage sets ``curriculum:``. Its math is :mod:`posttrain.rl.algos.curriculum`:

- ``sampler: dump``: each prompt's data source (the ``source_column``) is drawn with DUMP's
  softmax over UCB scores of the sources' recent mean |advantage|; then the source's next prompt
  in its own seeded order (ours: without replacement, reshuffled per epoch; the authors' code
  draws a prompt uniformly with replacement). ``sampler: uniform``: the data's seeded order.
- ``skip_settled``: a prompt whose recent pass rate (the last ``settled_memory`` group pass rates,
  a completion passing when its reward reaches ``pass_reward``) is 0 or 1 is skipped when its turn
  comes; after ``settled_patience`` skips it is drawn again (counted as retried), so that a prompt
  failed early can come back once the policy has learned (its memory is only updated when drawn).

After each step :meth:`CurriculumStream.observe` gathers every process's completions (the stream's
state must be the same on all of them: each takes its share of the same drawn prompts) and
updates the windows, counts and memories; all of it is in the checkpoint (``state_dict``).
Metrics: ``curriculum/p/<source>`` (the probabilities the step drew with), ``curriculum/drawn/
<source>`` (its share of the step's prompts), ``curriculum/reward/<source>`` (mean reward of its
completions), ``curriculum/mean_abs_adv/<source>``, ``curriculum/skipped`` and ``curriculum/retried``
(prompts skipped and retried while drawing the step), ``curriculum/settled`` (prompts whose memory
says settled).
"""
from __future__ import annotations

import math
from collections import defaultdict, deque
from typing import TYPE_CHECKING, Any

import torch

from posttrain.common.seeds import derive_seed
from posttrain.rl.algos.curriculum import (
    dump_ucb_scores,
    skip_settled_prompts,
    source_probabilities,
    window_mean_abs,
)
from posttrain.rl.loop.batches import sequence_advantages
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
        self.settled: set[int] = set()     # prompts whose memory says settled (kept in step with memory)
        self.skips: dict[int, int] = {}    # settled prompts: times skipped since last drawn
        self.draws = 0
        self._unobserved: deque[dict[str, float]] = deque()  # each draw's stats until its step is observed

    # --- drawing -------------------------------------------------------------------------------
    def probabilities(self) -> torch.Tensor:
        """(S,) DUMP's probabilities of drawing each source now."""
        mu = torch.tensor([window_mean_abs(self.windows[s]) for s in self.sources], dtype=torch.float64)
        counts = torch.tensor([self.counts[s] for s in self.sources], dtype=torch.float64)
        return source_probabilities(dump_ucb_scores(mu, counts, self.config.dump_exploration), self.config.dump_temperature)

    def _next_kept(self, stream: PromptStream, stats: dict[str, float]) -> int:
        """The stream's next prompt that is not settled, or a settled one skipped settled_patience times."""
        while True:  # ends: each settled prompt is skipped at most settled_patience times in a row
            index = stream.take(1)[0]
            if not self.config.skip_settled or index not in self.settled:
                return index
            if self.skips.get(index, 0) >= self.config.settled_patience:
                self.skips[index] = 0
                stats["curriculum/retried"] += 1
                return index
            self.skips[index] = self.skips.get(index, 0) + 1
            stats["curriculum/skipped"] += 1

    def take(self, count: int) -> list[dict[str, Any]]:
        """The next ``count`` prompts (see the module docstring); the draw's stats go to the step's metrics."""
        stats: dict[str, float] = defaultdict(float, {"curriculum/skipped": 0.0, "curriculum/retried": 0.0})
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
        self._unobserved.append(dict(stats))
        return [self.rows[i] for i in picked]

    # --- learning from the step -------------------------------------------------------------------
    def observe(self, scored: ScoredBatch, exp: ExperienceBatch, tensors: RolloutTensors,
                procs: Processes) -> dict[str, float]:
        """Update the curriculum from every process's completions of this step -> its metrics (with
        the stats of the draw that picked the step's prompts: the oldest draw not yet observed, as
        asynchronous training draws the next steps' prompts before this step is observed)."""
        # (B,) each; a NaN |A| would poison a window for 300 rows; row numbers exact up to 2**53
        abs_adv = torch.nan_to_num(sequence_advantages(exp, tensors).abs(), nan=0.0)
        index = torch.tensor([float(self.index_of[id(row)]) for row in scored.rows], dtype=torch.float64)
        rewards = scored.rewards.detach().double().cpu()
        passed = (rewards >= self.config.pass_reward).double()  # NaN (unscorable) does not pass
        index, abs_adv, rewards, passed = (procs.gather_rows(t)[0].cpu() for t in (index, abs_adv, rewards, passed))
        stats = self._unobserved.popleft() if self._unobserved else {}
        by_source: dict[str, list[float]] = defaultdict(list)
        size = scored.group_size
        observed = []
        for row in range(0, len(index), size):
            prompt = int(index[row])
            if self.sources:
                source = self.source_of[prompt]
                window = self.windows[source]
                window.extend(float(a) for a in abs_adv[row:row + size])
                del window[:max(0, len(window) - self.config.dump_window)]
                self.counts[source] += size
                by_source[source].extend(float(r) for r in rewards[row:row + size])
            slots = self.memory.setdefault(prompt, [])
            slots.append(float(passed[row:row + size].mean()))
            del slots[:max(0, len(slots) - self.config.settled_memory)]
            observed.append(prompt)
        self._update_settled(observed)
        for source in self.sources:
            stats[f"curriculum/mean_abs_adv/{source}"] = window_mean_abs(self.windows[source])
            if by_source[source]:
                finite = [r for r in by_source[source] if not math.isnan(r)]
                stats[f"curriculum/reward/{source}"] = sum(finite) / max(1, len(finite))
        if self.config.skip_settled:
            stats["curriculum/settled"] = float(len(self.settled))
        return stats

    def _update_settled(self, prompts: list[int]) -> None:
        if not self.config.skip_settled or not prompts:
            return
        width = self.config.settled_memory
        rates = torch.full((len(prompts), width), float("nan"), dtype=torch.float64)
        for row, prompt in enumerate(prompts):
            slots = self.memory[prompt]
            rates[row, :len(slots)] = torch.tensor(slots, dtype=torch.float64)
        for prompt, settled in zip(prompts, skip_settled_prompts(rates).tolist()):
            (self.settled.add if settled else self.settled.discard)(prompt)

    # --- checkpoint --------------------------------------------------------------------------------
    def draw_state_dict(self) -> dict[str, Any]:
        """Where the draws stand (the position in each order, skips); JSON-ready."""
        return {"draws": self.draws, "order": self.order.state_dict(),
                "streams": {s: st.state_dict() for s, st in self.streams.items()},
                "skips": {str(i): n for i, n in self.skips.items()}}

    def state_dict(self, draw_state: dict[str, Any] | None = None) -> dict[str, Any]:
        """Everything the draws depend on, JSON-ready (row numbers as string keys). ``draw_state``:
        an earlier :meth:`draw_state_dict` to record instead of the live one (asynchronous training
        checkpoints a step with what it learned so far and the draws as of that step's prompts)."""
        return {"rows": len(self.rows), "sources": self.sources, **(draw_state or self.draw_state_dict()),
                "windows": self.windows, "counts": self.counts,
                "memory": {str(i): slots for i, slots in self.memory.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["rows"] != len(self.rows) or state["sources"] != self.sources:
            raise ValueError(f"the checkpoint's curriculum was built over {state['rows']} rows and sources "
                             f"{state['sources']}; the data now has {len(self.rows)} rows and sources {self.sources}: "
                             "its memory would point at other prompts. Start the stage afresh (remove its .work folder)")
        self.draws = int(state["draws"])
        self.order.load_state_dict(state["order"])
        for source, stream_state in state["streams"].items():
            self.streams[source].load_state_dict(stream_state)
        self.windows = {s: list(v) for s, v in state["windows"].items()}
        self.counts = {s: int(v) for s, v in state["counts"].items()}
        self.memory = {int(i): list(v) for i, v in state["memory"].items()}
        self.skips = {int(i): int(n) for i, n in state["skips"].items()}
        self.settled = set()
        self._update_settled(list(self.memory))
