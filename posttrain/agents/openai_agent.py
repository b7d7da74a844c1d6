"""Agent code written against the OpenAI API, trained on as episodes (the ``openai_agent`` environment).

The agent is a plain function ``agent(row, base_url) -> reward`` that talks to the policy through
any OpenAI client::

    from openai import OpenAI

    def solve(row, base_url):
        client = OpenAI(base_url=base_url, api_key="-")
        messages = [{"role": "user", "content": row["prompt"]}]
        reply = client.chat.completions.create(model="policy", messages=messages)
        messages += [{"role": "assistant", "content": reply.choices[0].message.content},
                     {"role": "user", "content": "Check your answer and give it again."}]
        reply = client.chat.completions.create(model="policy", messages=messages)
        return 1.0 if row["answer"] in reply.choices[0].message.content else 0.0

posttrain inverts the control without the agent noticing: each episode runs its agent in a thread
with its own ``base_url`` (``http://127.0.0.1:<port>/episodes/<id>/v1``, a bridge in the process
that plays the episodes). A chat-completions call there becomes the episode's next turn: the
episode runner samples every waiting episode's turn in one batch, token in / token out, and the
call returns the turn's text. So the ids trained on are the ids sampled; the agent's messages are
read only for what is new since its last call (a tool result, feedback), which is rendered by the
chat template as context (mask 0), exactly like an environment's messages. The agent's return
value (a number, None, or ``{"reward": x, "info": {count: value}}``) is the episode's environment
reward; the stage's reward channels score the last assistant turn, as for every environment.

The episode's calls must extend one another: each call's messages start with the previous call's
messages and the assistant's answer (compared by role and stripped text). A call that edits the
history cannot continue one token sequence: it is refused (HTTP 400 saying why) and counts as the
environment failing, so an agent that always does it stops the stage with that message.

The agent may take ``environment.step_timeout_s`` between two calls (and before its first); at
most ``environment.workers`` agents work between calls at the same time (raise it to the
episodes of a batch when agents do real work between calls, e.g. run tools).

Sampling is the stage's: ``temperature``, ``top_p``, ``max_tokens_per_turn``, the episode budget;
the request's own sampling fields are ignored (the trainer's log-probs must describe the
sampler). ``n`` > 1, ``stream`` and ``tools`` are refused with 400 naming the field: an episode is
one path, and tools reach the model through the recipe (``environment.tools``) or the agent's own
prompt. Agents are trusted user code running as threads in that process; model output they execute
must go through :mod:`posttrain.sandbox`, as the built-in python tool does.
"""
from __future__ import annotations

import functools
import inspect
import os
import queue
import threading
import time
import uuid
from typing import Any

from posttrain.agents.environment import Environment, StepResult
from posttrain.common.jsonhttp import JsonServer, RequestError, error_body
from posttrain.common.plugins import load_object
from posttrain.errors import ConfigError, ToolError
from posttrain.rl.rollout.openai_endpoint import chat_messages, models_list

OVER = "the episode is over (it finished, reached a limit or failed); no further turns are sampled for it"
MAX_ORPHANED_AGENTS = 128  # agent threads still alive after their episodes ended, before the stage stops
REFUSED_FIELDS = {"stream": "streaming is not served: an episode's turn is answered whole",
                  "tools": "declare tools in the recipe (environment.tools) or in the agent's own prompt",
                  "functions": "declare tools in the recipe (environment.tools) or in the agent's own prompt"}


class _Bridge:
    """The process's HTTP bridge: routes ``/episodes/<id>/v1/...`` to the live episode with that id
    (started on first use, and again in a forked child, whose copy has no serving thread)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._server: JsonServer | None = None
        self._pid = 0
        self._episodes: dict[str, OpenAIAgentEnvironment] = {}
        self._threads: list[tuple[threading.Thread, str]] = []  # (agent thread, its episode id)

    def register(self, episode_id: str, episode: OpenAIAgentEnvironment) -> str:
        with self._lock:
            if self._server is None or self._pid != os.getpid():
                self._server, self._pid = JsonServer(self._route, 0, name="posttrain-agent-bridge"), os.getpid()
            self._episodes[episode_id] = episode
            return f"{self._server.url}/episodes/{episode_id}/v1"

    def unregister(self, episode_id: str) -> None:
        with self._lock:
            self._episodes.pop(episode_id, None)

    def started(self, thread: threading.Thread, agent: str, episode_id: str) -> None:
        """Count agent threads; ToolError when too many outlive their episodes (an agent that hangs
        between calls keeps its thread as long as the process: Python cannot stop a thread)."""
        with self._lock:
            self._threads = [(t, e) for t, e in self._threads if t.ident is None or t.is_alive()]  # or not started yet
            orphaned = sum(e not in self._episodes for _, e in self._threads)
            if orphaned > MAX_ORPHANED_AGENTS:
                raise ToolError(f"environment openai_agent: {orphaned} threads of agent "
                                f"{agent} are still running after their episodes ended (more than "
                                f"{MAX_ORPHANED_AGENTS}); the agent hangs or loops after its episode is over. Give "
                                "its blocking calls timeouts, and let it return when a call fails")
            self._threads.append((thread, episode_id))

    def _route(self, method: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        parts = path.split("/")  # "", "episodes", id, "v1", ...
        if len(parts) < 5 or parts[1] != "episodes" or parts[3] != "v1":
            return 404, error_body(f"no route {method} {path}; episodes are served at /episodes/<id>/v1")
        with self._lock:
            episode = self._episodes.get(parts[2])
        if episode is None:
            return 404, error_body(f"episode {parts[2]}: {OVER} (or it never existed)")
        rest = "/".join(parts[4:])
        if (method, rest) == ("GET", "models"):
            return 200, models_list("policy")
        if (method, rest) == ("POST", "chat/completions"):
            return 200, episode.on_call(body)
        return 404, error_body(f"no route {method} {path}")


_BRIDGE = _Bridge()


@functools.lru_cache(maxsize=16)
def load_agent(ref: str):
    """The agent function ``ref`` names (``'module:function'`` / ``'./file.py:function'``), loaded
    once per process; ConfigError unless it takes ``(row, base_url)``."""
    fn, origin = load_object(ref, "environment openai_agent: agent", ConfigError)
    if not callable(fn):
        raise ConfigError(f"environment openai_agent: agent {origin} is a {type(fn).__name__}; expected a function "
                          "agent(row, base_url) -> reward")
    try:
        inspect.signature(fn).bind({}, "http://x")
    except TypeError:
        raise ConfigError(f"environment openai_agent: agent {origin} does not take (row, base_url); expected a "
                          "function agent(row, base_url) -> reward") from None
    except ValueError:  # no signature to read (a builtin): called as is
        pass
    return fn


def new_messages(history: list[dict[str, Any]], messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What ``messages`` adds to ``history`` (the last call's messages and the answer); ValueError
    naming the first message that differs when it does not extend it, or adds nothing."""
    for i, (old, new) in enumerate(zip(history, messages)):
        if old["role"] != new["role"] or old["content"].strip() != new["content"].strip():
            raise ValueError(f"the call's message {i} ({new['role']}: {new['content'][:60]!r}) differs from the "
                             f"episode so far ({old['role']}: {old['content'][:60]!r}); an episode's calls must "
                             "extend one another (previous messages, the assistant's answer, then new messages)")
    if len(messages) <= len(history):
        raise ValueError(f"the call sends {len(messages)} messages, the episode so far has {len(history)}; a call "
                         "must add messages after the assistant's answer")
    return [dict(m) for m in messages[len(history):]]


class OpenAIAgentEnvironment(Environment):
    """Runs an OpenAI-API agent function as an episode (option ``agent``: ``'./file.py:function'``).
    The agent may take ``environment.step_timeout_s`` between two calls (and before its first)."""

    def __init__(self, agent: str):
        super().__init__(agent=agent)
        self.agent_ref = agent
        self.agent = load_agent(agent)
        self.id = uuid.uuid4().hex
        self.base_url = ""
        self._events: queue.Queue = queue.Queue()  # ("call", messages, reply) | ("done", value) | ("error", exc) | ("closed",)
        self._reply: queue.Queue | None = None      # where the pending call's answer goes
        self._history: list[dict[str, Any]] = []
        self._closed = False
        self._lock = threading.Lock()               # _closed and _reply: close() may race a step the runner abandoned

    # -- the agent's side (its thread and the bridge's request threads) --------------------------

    def on_call(self, body: dict[str, Any]) -> dict[str, Any]:
        """A chat-completions request of this episode's agent: wait for the episode's next turn."""
        for name, why in REFUSED_FIELDS.items():
            if body.get(name):
                raise RequestError(f"{name}: {why}", name)
        if body.get("n", 1) != 1:
            raise RequestError("n: an episode is one path; ask for one choice (n=1)", "n")
        messages = chat_messages(body)
        reply: queue.Queue = queue.Queue(maxsize=1)
        with self._lock:  # a call racing close() is refused, never left waiting
            if self._closed:
                raise RequestError(OVER, status=404)
            self._events.put(("call", messages, reply))
        wait = max(600.0, 10 * self.step_timeout_s)  # the runner answers or closes well before
        try:
            kind, value = reply.get(timeout=wait)
        except queue.Empty:
            raise RequestError(f"no turn was sampled for this call within {wait:g} s (the episode runner stopped "
                               "asking)", status=504) from None
        if kind == "error":
            raise RequestError(value, None if value == OVER else "messages")
        return {"id": f"chatcmpl-{self.id[:12]}-{len(self._history)}", "object": "chat.completion",
                "created": int(time.time()), "model": "policy",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": value}, "finish_reason": "stop",
                             "logprobs": None}],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}

    def _play(self, row: dict[str, Any]) -> None:
        try:
            self._events.put(("done", self.agent(row, self.base_url)))
        except BaseException as exc:  # noqa: BLE001 - reported by the episode (counted), never kills the process
            self._events.put(("error", exc))

    # -- the episode runner's side ----------------------------------------------------------------

    def reset(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        self.base_url = _BRIDGE.register(self.id, self)
        thread = threading.Thread(target=self._play, args=(dict(row),), name=f"posttrain-agent-{self.id[:8]}",
                                  daemon=True)
        _BRIDGE.started(thread, self.agent_ref, self.id)
        thread.start()
        try:
            event = self._next_event()
        except TimeoutError as exc:
            event = ("error", exc)
        if event[0] == "call":
            with self._lock:
                if self._closed:  # closed while this (abandoned) reset waited: the call gets its answer here
                    event[2].put_nowait(("error", OVER))
                    raise RuntimeError("the episode was closed while its reset waited for the agent")
                self._history, self._reply = list(event[1]), event[2]
            return [dict(m) for m in event[1]]
        what = (f"raised {type(event[1]).__name__}: {event[1]}" if event[0] == "error"
                else "was closed" if event[0] == "closed" else f"returned {event[1]!r}")
        self.close()
        raise RuntimeError(f"agent {self.agent_ref} {what} before its first model call")  # the runner names the row

    def step(self, text: str) -> StepResult:
        self._answer(("text", text))
        self._history.append({"role": "assistant", "content": text})
        event = self._next_event()
        if event[0] == "error":
            raise event[1]
        if event[0] == "done":
            return agent_result(event[1], self.agent_ref)
        if event[0] == "closed":
            raise RuntimeError("the episode was closed while its step waited for the agent")
        _, messages, reply = event
        with self._lock:
            if self._closed:  # closed while this (abandoned) step waited: the call gets its answer here
                reply.put_nowait(("error", OVER))
                raise RuntimeError("the episode was closed while its step waited for the agent")
            self._reply = reply
        try:
            added = new_messages(self._history, messages)
        except ValueError as exc:
            self._answer(("error", str(exc)))
            raise
        self._history = list(messages)
        return StepResult(messages=added)

    def close(self) -> None:
        """The episode ended (finished, a limit, a failure): a call still waiting is refused, a step
        still waiting for the agent returns."""
        with self._lock:
            self._closed = True
        _BRIDGE.unregister(self.id)
        self._answer(("error", OVER))
        while True:  # calls made since the last turn
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                break
            if event[0] == "call":
                event[2].put_nowait(("error", OVER))
        self._events.put(("closed",))

    def _answer(self, answer: tuple[str, str]) -> None:
        with self._lock:
            reply, self._reply = self._reply, None
        if reply is not None:
            reply.put_nowait(answer)  # a fresh queue of one per call, answered once

    def _next_event(self) -> tuple:
        try:
            return self._events.get(timeout=self.step_timeout_s)
        except queue.Empty:
            raise TimeoutError(f"agent {self.agent_ref} neither called the model nor returned within "
                               f"{self.step_timeout_s:g} s (environment.step_timeout_s)") from None


def agent_result(value: Any, ref: str) -> StepResult:
    """The agent's return value as the episode's last step; TypeError saying what was expected."""
    if value is None or isinstance(value, (bool, int, float)):
        return StepResult(done=True, reward=float(value or 0.0))
    if isinstance(value, dict) and isinstance(value.get("reward", 0.0), (bool, int, float)) and set(value) <= {
            "reward", "info"}:
        info = value.get("info") or {}
        if isinstance(info, dict) and all(isinstance(v, (bool, int, float)) for v in info.values()):
            return StepResult(done=True, reward=float(value.get("reward", 0.0)),
                              info={str(k): float(v) for k, v in info.items()})
    raise TypeError(f"agent {ref} returned {str(value)[:80]!r}; expected a number, None or "
                    "{'reward': number, 'info': {name: number}}")
