"""A local OpenAI-compatible upstream for tests and benchmarks.

It answers every chat completion with a deterministic echo, reports usage, streams
server-sent events, and fails on request: tests set ``StubState.failures[model]`` (every call fails)
or ``StubState.fail_first[model] = (n, failure)`` (the next n calls fail, then it answers); ``401`` echoes
the caller's key in its error, ``not-sse`` answers a stream request with plain text, ``no-usage`` streams
without a usage chunk. Answers stop at the request's ``max_tokens`` (one token per word).
Judge tests script the answers: ``StubState.replies[model]`` is a list of texts (one per call, in order,
then the echo again) or a function of the request's messages; ``StubState.logprobs[model]`` is a
token -> probability dict (or a function of the messages giving one) returned as the first token's
``top_logprobs`` in OpenAI's format, the likeliest token being the answer. ``StubState.token_confidence[model]``
(a function of the answer text giving a probability) gives every token of the answer that probability in
``logprobs`` when the request asks for them. A non-streamed request's ``n`` is honoured (n answers, usage summed).
Run standalone (``python -m tests.stub_upstream --port 9000``) for the benchmarks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

Failure = Literal["500", "503", "429", "400", "401", "context", "timeout", "midstream", "not-sse", "no-usage"]
_STATUS_ERRORS = {
    "500": (500, "server_error", "the upstream had an internal error"),
    "503": (503, "server_error", "the upstream is overloaded"),
    "429": (429, "rate_limit_exceeded", "Rate limit reached for requests"),
    "400": (400, "invalid_value", "Invalid value for 'temperature'"),
    "context": (
        400,
        "context_length_exceeded",
        "This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens.",
    ),
}


@dataclass
class Hit:
    model: str
    stream: bool
    authorization: str | None
    body: dict


Replies = list[str] | Callable[[list[dict]], str]
Logprobs = dict[str, float] | Callable[[list[dict]], dict[str, float]]


@dataclass
class StubState:
    """What the stub will do and what it saw; tests mutate and read it directly."""

    failures: dict[str, Failure] = field(default_factory=dict)
    fail_first: dict[str, tuple[int, Failure]] = field(default_factory=dict)
    replies: dict[str, Replies] = field(default_factory=dict)
    logprobs: dict[str, Logprobs] = field(default_factory=dict)
    token_confidence: dict[str, Callable[[str], float]] = field(default_factory=dict)
    hang_s: float = 5.0
    delay_s: float = 0.0  # added to every answer, to keep a run in flight
    answer_words: int = 0  # when set, unscripted answers are this many distinct words (long answers)
    reasoning_tokens: dict[str, int] = field(default_factory=dict)  # hidden reasoning billed per call, by model
    hits: deque[Hit] = field(default_factory=lambda: deque(maxlen=10_000))

    def reset(self) -> None:
        for planned in (self.failures, self.fail_first, self.replies, self.logprobs, self.reasoning_tokens, self.token_confidence):
            planned.clear()
        self.hits.clear()
        self.delay_s = 0.0

    def failure_for(self, model: str) -> Failure | None:
        """The planned failure of this call: a standing one, else one of the first n calls' failures."""
        if model in self.failures:
            return self.failures[model]
        remaining, failure = self.fail_first.get(model, (0, None))
        if remaining <= 0:
            return None
        self.fail_first[model] = (remaining - 1, failure)
        return failure

    def reply_for(self, model: str, messages: list[dict]) -> tuple[str, dict | None]:
        """The answer text and, when scripted, its first token's logprobs in OpenAI's format."""
        if model in self.logprobs:
            planned = self.logprobs[model]
            probabilities = planned(messages) if callable(planned) else planned
            return max(probabilities, key=probabilities.get), _logprobs_body(probabilities)
        planned = self.replies.get(model)
        if callable(planned):
            return planned(messages), None
        if planned:
            return planned.pop(0), None
        if self.answer_words:
            return " ".join(f"word{i}" for i in range(self.answer_words)), None
        return answer_for(model, messages), None

    def models_hit(self) -> list[str]:
        return [hit.model for hit in self.hits]


def answer_for(model: str, messages: list[dict]) -> str:
    """The deterministic answer: the model's name and the last user turn, echoed."""
    last = next((m.get("content") for m in reversed(messages) if m.get("role") == "user"), "")
    text = last if isinstance(last, str) else " ".join(p.get("text", "") for p in last or [])
    return f"{model} says: {text[:60]}"


def _logprobs_body(probabilities: dict[str, float]) -> dict:
    ranked = sorted(probabilities.items(), key=lambda item: -item[1])
    top = [{"token": token, "logprob": math.log(p), "bytes": list(token.encode())} for token, p in ranked]
    return {"content": [{**top[0], "top_logprobs": top}]}


def _token_logprobs(answer: str, probability: float) -> dict:
    """Every word of ``answer`` as a token of this probability, with one alternative taking the rest."""
    rest = max(1.0 - probability, 1e-6)
    return {
        "content": [
            {"token": word, "logprob": math.log(probability),
             "top_logprobs": [{"token": word, "logprob": math.log(probability)}, {"token": "~", "logprob": math.log(rest)}]}
            for word in answer.split(" ")
        ]
    }


def usage_for(messages: list[dict], answer: str) -> dict:
    prompt = sum(len(json.dumps(m.get("content"))) for m in messages) // 4 + 1
    completion = len(answer.split())
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _chunk(model: str, delta: dict, finish: str | None = None, usage: dict | None = None) -> str:
    choices = [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}]
    body = {"id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": 1, "model": model, "choices": choices}
    if usage:
        body["usage"] = usage
    return f"data: {json.dumps(body)}\n\n"


def _events(model: str, answer: str, usage: dict | None, fail_midstream: bool) -> Iterator[str]:
    words = answer.split(" ")
    yield _chunk(model, {"role": "assistant", "content": ""})
    for i, word in enumerate(words):
        if fail_midstream and i == 1:
            raise RuntimeError("stub upstream dropped the stream")
        yield _chunk(model, {"content": word if i == 0 else " " + word})
    yield _chunk(model, {}, finish="stop")
    if usage:
        yield _chunk(model, {}, usage=usage)
    yield "data: [DONE]\n\n"


def create_stub_app(state: StubState) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        model, messages, stream = body["model"], body["messages"], bool(body.get("stream"))
        state.hits.append(Hit(model, stream, request.headers.get("authorization"), body))
        if state.delay_s:
            await asyncio.sleep(state.delay_s)
        failure = state.failure_for(model)
        if failure == "timeout":
            await asyncio.sleep(state.hang_s)
        if failure in _STATUS_ERRORS:
            status, code, message = _STATUS_ERRORS[failure]
            error = {"message": message, "type": "invalid_request_error", "param": None, "code": code}
            return JSONResponse({"error": error}, status_code=status)
        if failure == "401":  # like a provider that echoes the key it was given
            message = f"Incorrect API key provided: {request.headers.get('authorization')}"
            return JSONResponse({"error": {"message": message, "type": "invalid_request_error"}}, status_code=401)
        answers = [_answer(state, model, messages, body) for _ in range(1 if stream else int(body.get("n") or 1))]
        answer, logprobs = answers[0]
        usage = usage_for(messages, answer)
        usage["completion_tokens"] = sum(len(text.split()) for text, _ in answers)
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if model in state.reasoning_tokens:  # OpenAI's convention: reasoning is part of completion_tokens
            reasoning = state.reasoning_tokens[model]
            usage["completion_tokens"] += reasoning
            usage["total_tokens"] += reasoning
            usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
        if stream and failure == "not-sse":
            return Response("this is not a server-sent event stream", media_type="text/plain")
        if stream:
            include_usage = bool((body.get("stream_options") or {}).get("include_usage")) and failure != "no-usage"
            events = _events(model, answer, usage if include_usage else None, failure == "midstream")
            return StreamingResponse(events, media_type="text/event-stream")
        return {
            "id": "chatcmpl-stub",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {"index": i, "message": {"role": "assistant", "content": text}, "logprobs": lp, "finish_reason": "stop"}
                for i, (text, lp) in enumerate(answers)
            ],
            "usage": usage,
        }

    return app


def _answer(state: StubState, model: str, messages: list[dict], body: dict) -> tuple[str, dict | None]:
    """One answer, cut at the request's output cap (the stub's tokens are words), with its logprobs."""
    answer, logprobs = state.reply_for(model, messages)
    cap = body.get("max_completion_tokens") or body.get("max_tokens")
    if cap:
        answer = " ".join(answer.split(" ")[:cap])
    if body.get("logprobs") and model in state.token_confidence:
        logprobs = _token_logprobs(answer, state.token_confidence[model](answer))
    return answer, logprobs


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serve_in_thread(app, port: int | None = None) -> Iterator[str]:
    """Run an ASGI app with uvicorn on 127.0.0.1 in a daemon thread; yields its base URL."""
    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"uvicorn did not start on 127.0.0.1:{port}")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description="Deterministic OpenAI-compatible stub upstream on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--answer-words", type=int, default=0, help="answer with this many words (default: an echo)")
    args = parser.parse_args()
    state = StubState(answer_words=args.answer_words)
    uvicorn.run(create_stub_app(state), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
