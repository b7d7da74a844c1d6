"""An OpenAI-compatible chat-completions endpoint inside a rollout worker (``rollout.openai_endpoint``).

Agent code written against the OpenAI API (``openai.OpenAI(base_url=worker_url, api_key="-")``)
talks to the policy the worker serves: ``POST /v1/chat/completions`` renders the messages with the
model's chat template, samples with the worker's engine and answers in the OpenAI format. Beyond
the format, every response carries the token ids (``prompt_token_ids``; per choice ``token_ids``)
and the sampler's log-probs (``logprobs.content``), and the worker records each request: prompt
ids, completion ids, log-probs, finish reason, the weight version that sampled it, and the
request's ``metadata`` (OpenAI's field; e.g. ``{"episode": "17"}`` to group the calls of one
episode). The trainer drains the records with ``RolloutService.records()``: the material of a
training episode, token for token as the policy produced it (no re-tokenization of the text).

``GET /v1/models`` lists the served model. Errors answer 400 with OpenAI's error object naming the
field. The server binds 127.0.0.1 only (agent code runs on the worker's machine); engine calls are
serialized with the worker's own requests by the worker's lock.
"""
from __future__ import annotations

import time
import uuid
from typing import Any

from posttrain.common.jsonhttp import JsonServer, RequestError, error_body


def sampling_from_request(body: dict[str, Any]):
    """The SamplingConfig an OpenAI chat-completions body asks for (RequestError naming the field)."""
    from pydantic import ValidationError

    from posttrain.rl.rollout.types import SamplingConfig

    stop = body.get("stop") or []
    values = {"n": body.get("n", 1), "temperature": body.get("temperature", 1.0), "top_p": body.get("top_p", 1.0),
              "max_tokens": body.get("max_completion_tokens", body.get("max_tokens", 256)),
              "stop": [stop] if isinstance(stop, str) else stop, "seed": body.get("seed")}
    try:
        return SamplingConfig(**values)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else None
        raise RequestError(f"{field}: {error['msg']}", field) from None


def chat_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The request's ``messages`` (RequestError unless a non-empty list of {role, content: str})."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages):
        raise RequestError("messages: expected a non-empty list of {role, content} objects with string content",
                           "messages")
    return messages


def models_list(model_name: str) -> dict[str, Any]:
    """``GET /v1/models``'s answer."""
    return {"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "posttrain"}]}


class Endpoint:
    """The HTTP server of one worker; ``generate(prompt_ids, sampling)`` samples under the worker's lock."""

    def __init__(self, worker, port: int = 0, model_name: str = "policy"):
        self.worker = worker
        self.model_name = model_name
        self.records: list[dict] = []
        self.server = JsonServer(self._route, port, name="posttrain-openai")
        self.url = f"{self.server.url}/v1"

    def _route(self, method: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if (method, path) == ("GET", "/v1/models"):
            return 200, models_list(self.model_name)
        if (method, path) == ("POST", "/v1/chat/completions"):
            return 200, self.complete(body)
        return 404, error_body(f"no route {method} {path}")

    def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """One chat completion (the OpenAI response, plus token ids), recorded."""
        from posttrain.rl.rollout.types import render_prompts

        messages = chat_messages(body)
        sampling = sampling_from_request(body)
        try:
            prompt_ids = render_prompts(self.worker.tokenizer, [messages])[0]
        except ValueError as exc:  # the chat template refuses these messages
            raise RequestError(f"messages: {exc}", "messages") from None
        request_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        with self.worker.lock:  # sampled and recorded as one: a drain (under the same lock) sees both or neither
            try:
                batch, version = self.worker.engine.generate_ids([prompt_ids], sampling), self.worker.version
            except ValueError as exc:  # e.g. a prompt longer than the engine's context: the request's fault
                raise RequestError(f"messages: {exc}", "messages") from None
            self.records.append({"id": request_id, "weight_version": version, "messages": messages,
                                 "metadata": body.get("metadata") or {}, "prompt_ids": prompt_ids,
                                 "completion_ids": list(batch.completion_ids),
                                 "logprobs": list(batch.sampler_logprobs), "finish_reasons": list(batch.finish_reasons)})
        choices = []
        for index, (ids, logprobs, text, reason) in enumerate(zip(batch.completion_ids, batch.sampler_logprobs,
                                                                  batch.completions, batch.finish_reasons)):
            choices.append({"index": index, "message": {"role": "assistant", "content": text}, "finish_reason": reason,
                            "token_ids": ids, "logprobs": {"content": [
                                {"token": self.worker.tokenizer.decode([t]), "logprob": lp, "token_id": t}
                                for t, lp in zip(ids, logprobs)]}})
        generated = sum(map(len, batch.completion_ids))
        return {"id": request_id, "object": "chat.completion", "created": int(time.time()), "model": self.model_name,
                "choices": choices, "prompt_token_ids": prompt_ids, "weight_version": version,
                "usage": {"prompt_tokens": len(prompt_ids), "completion_tokens": generated,
                          "total_tokens": len(prompt_ids) + generated}}

    def drain(self) -> list[dict]:
        """The requests recorded since the last drain (the caller holds the worker's lock)."""
        records, self.records = self.records, []
        return records

    def close(self) -> None:
        self.server.close()
