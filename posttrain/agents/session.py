"""From an ``environment:`` block to a live :class:`~posttrain.agents.episodes.EpisodeRunner`, and
the preflight checks that find a broken block before anything trains."""
from __future__ import annotations

import contextlib

from posttrain.agents.config import EnvironmentConfig
from posttrain.agents.environment import Toolbox, load_environment
from posttrain.agents.episodes import EpisodeLimits, EpisodeRunner
from posttrain.agents.toolcalls import make_parser
from posttrain.agents.tools import ToolRunner, load_tools
from posttrain.errors import ConfigError, PosttrainError


def environment_factory(config: EnvironmentConfig, key: str = "environment"):
    """(class, a zero-argument function making one instance per episode); ConfigError when the
    class does not load or does not take ``options``."""
    cls = load_environment(config.name, key=f"{key}.name")
    try:
        cls(**config.options)
    except TypeError as exc:
        raise ConfigError(f"{key}.options: environment {config.name!r} does not take {sorted(config.options)}: "
                          f"{exc}") from None
    except PosttrainError as exc:
        raise ConfigError(f"{key}.options: environment {config.name!r}: {exc}") from None
    return cls, lambda: cls(**config.options)


def environment_problems(config: EnvironmentConfig | None, key: str, columns: list[str] | None,
                         source: str) -> list[str]:
    """What preflight reports: an environment, tool or parser that does not load, options the
    environment refuses, data columns it reads that the data (``columns``; None = not checked) lacks."""
    if config is None:
        return []
    problems = []
    try:
        _, make = environment_factory(config, key)
        env = make()  # columns may depend on the options (an instance's, not the class's)
        if callable(getattr(env, "close", None)):
            with contextlib.suppress(Exception):  # a close that assumes reset ran: nothing to release here
                env.close()
        missing = [c for c in getattr(env, "columns", ()) if columns is not None and c not in columns]
        if missing:
            problems.append(f"{key}.name: environment {config.name!r} reads columns {missing}, which {source} lacks "
                            f"(it has {', '.join(columns)})")
    except ConfigError as exc:
        problems.append(str(exc))
    for check in (lambda: load_tools(config.tools, key=f"{key}.tools"), lambda: make_parser(config.parser, f"{key}.parser")):
        try:
            check()
        except ConfigError as exc:
            problems.append(str(exc))
    return problems


def build_episode_runner(config: EnvironmentConfig, tokenizer, max_tokens: int, key: str = "environment") -> EpisodeRunner:
    """The runner a stage plays its episodes with (its tool runner included; ``close()`` both)."""
    _, make_env = environment_factory(config, key)
    tools = load_tools(config.tools, key=f"{key}.tools")
    # built even without recipe tools: an environment may bind its own (episode_tools); threads start on first use
    runner = ToolRunner(tools, config.tool_timeout_s, config.workers, config.max_failure_rate)
    toolbox = Toolbox(tools, runner, make_parser(config.parser, f"{key}.parser"))
    limits = EpisodeLimits(max_turns=config.max_turns, max_tokens_per_turn=config.turn_tokens(max_tokens),
                           max_episode_tokens=config.max_episode_tokens, step_timeout_s=config.step_timeout_s)
    return EpisodeRunner(make_env, config.name, tokenizer, limits, toolbox, workers=config.workers,
                         max_env_error_rate=config.max_failure_rate)


def tools_prompt_tokens(tokenizer, config: EnvironmentConfig | None) -> int:
    """Tokens the chat template adds to a prompt to list the tools (0 without tools)."""
    if config is None or not config.tools:
        return 0
    schemas = [t.schema for t in load_tools(config.tools, key="environment.tools")]
    probe = [{"role": "user", "content": "x"}]
    with_tools = tokenizer.apply_chat_template(probe, tools=schemas, tokenize=False, add_generation_prompt=True)
    plain = tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
    return max(0, len(tokenizer(with_tools)["input_ids"]) - len(tokenizer(plain)["input_ids"]))
