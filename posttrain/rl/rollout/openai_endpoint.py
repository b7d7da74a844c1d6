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

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class RequestError(ValueError):
    """A request the endpoint refuses (HTTP 400), naming the field."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


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


class Endpoint:
    """The HTTP server of one worker; ``generate(prompt_ids, sampling)`` samples under the worker's lock."""

    def __init__(self, worker, port: int = 0, model_name: str = "policy"):
        self.worker = worker
        self.model_name = model_name
        self.records: list[dict] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path.rstrip("/") == "/v1/models":
                    self._reply(200, {"object": "list", "data": [{"id": endpoint.model_name, "object": "model",
                                                                  "owned_by": "posttrain"}]})
                else:
                    self._reply(404, _error(f"no route {self.path}", None))

            def do_POST(self):
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._reply(404, _error(f"no route {self.path}", None))
                    return
                try:
                    length = int(self.headers.get("Content-Length", 0))
                    body = json.loads(self.rfile.read(length) or b"{}")
                    if not isinstance(body, dict):
                        raise RequestError(f"the body must be a JSON object, not {type(body).__name__}")
                    self._reply(200, endpoint.complete(body))
                except (json.JSONDecodeError, ValueError) as exc:  # RequestError, a bad length, a prompt it cannot render
                    self._reply(400, _error(f"{exc}", getattr(exc, "param", None)))
                except Exception as exc:  # noqa: BLE001 - the client gets an answer, the worker lives on
                    self._reply(500, {"error": {"message": f"{type(exc).__name__}: {exc}", "type": "server_error",
                                                "param": None, "code": None}})

            def _reply(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):  # quiet: one line per request would flood the stage log
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, name="posttrain-openai", daemon=True)
        self._thread.start()

    def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """One chat completion (the OpenAI response, plus token ids), recorded."""
        from posttrain.rl.rollout.types import render_prompts

        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages):
            raise RequestError("messages: expected a non-empty list of {role, content} objects with string content",
                               "messages")
        sampling = sampling_from_request(body)
        prompt_ids = render_prompts(self.worker.tokenizer, [messages])[0]
        request_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        with self.worker.lock:  # sampled and recorded as one: a drain (under the same lock) sees both or neither
            batch, version = self.worker.engine.generate_ids([prompt_ids], sampling), self.worker.version
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
        self.server.shutdown()
        self.server.server_close()


def _error(message: str, param: str | None) -> dict:
    return {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": None}}
