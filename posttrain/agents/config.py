"""The ``environment:`` block of an RL stage: multi-turn episodes instead of single completions.

>>> EnvironmentConfig(name="tools", tools=["calculator"], max_turns=4).max_turns
4
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from posttrain.common.config import StrictModel, rebase_file_ref


class EnvironmentConfig(StrictModel):
    """Play each prompt as an episode: the model's turns alternate with the environment's
    messages (tool results, feedback) until it is done; the reward channels score the final turn."""

    name: str = Field(description="The environment: a built-in (tools: plain tool calling until the model answers without a call; feedback: a verifier judges each answer and a wrong one gets another attempt; trl: a class written for TRL's environment_factory, options: {factory: './file.py:Class'}; openai_agent: agent code written against the OpenAI API, options: {agent: './file.py:function'}, a function agent(row, base_url) -> reward), 'module:Class' or './file.py:Class' (see posttrain.agents.environment).")
    tools: list[str] = Field(default_factory=list, description="Tools the model may call: built-ins (calculator, python), 'module:function' or './file.py:function'. Typed functions with a docstring; their schemas are rendered by the chat template.")
    options: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the environment class (one instance per episode).")
    max_turns: int = Field(4, ge=1, description="Assistant turns per episode at most.")
    max_tokens_per_turn: int | None = Field(None, ge=1, description="New tokens per assistant turn at most (default: the stage's max_tokens); a turn that hits it ends the episode as truncated.")
    max_episode_tokens: int = Field(256, ge=1, description="Tokens after the first prompt at most, the model's and the environment's together (the context an episode may fill); an episode that runs out ends as truncated.")
    parser: str = Field("hermes", description="How tool calls are read from assistant turns: hermes (<tool_call>{\"name\": ..., \"arguments\": {...}}</tool_call>, Qwen2.5/Hermes style).")
    tool_timeout_s: float = Field(10.0, gt=0, description="Seconds a tool call may take; past it the model is told the tool did not answer, and the call counts as a failure.")
    step_timeout_s: float = Field(60.0, gt=0, description="Seconds an environment's reset or step (tool calls included) may take; past it the episode ends and counts as an environment error.")
    max_failure_rate: float = Field(0.5, ge=0, le=1, description="Stop the stage when more than this share of a tool's calls (or of the environment's resets, or of its steps) fail (raise, hang, return neither text nor JSON); judged once 8 are known. The model's own mistakes (malformed calls, bad arguments) are answered and counted, never stop the stage.")
    workers: int = Field(4, ge=1, description="Threads running environment steps and tool calls concurrently.")
    tool_cost: Literal["none", "otc"] = Field("none", description="RL stages: otc multiplies each episode's reward by OTC-GRPO's tool reward (arXiv 2504.14870; posttrain.rl.algos.tool_cost): among the group's correct episodes (reward > 0), the fewest tool calls earn the full reward, more calls less.")
    tool_cost_c: float = Field(1.0, gt=0, description="OTC's smoothing constant c: where no call was needed, m calls earn cos(m*pi/(2m+c)) (c=1: 1 call 0.5).")

    def turn_tokens(self, max_tokens: int) -> int:
        """The per-turn budget: max_tokens_per_turn, or the stage's max_tokens."""
        return self.max_tokens_per_turn or max_tokens

    def rebase_paths(self, base_dir: Path) -> None:
        """`./file.py:attr` tools, environments and string options (a `trl` factory) are read
        relative to the recipe's folder."""
        self.name = rebase_file_ref(self.name, base_dir)
        self.tools = [rebase_file_ref(t, base_dir) for t in self.tools]
        self.options = {k: rebase_file_ref(v, base_dir) if isinstance(v, str) else v for k, v in self.options.items()}
