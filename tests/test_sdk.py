"""The SDK through the real LiteLLM call path against the stub upstream on 127.0.0.1."""

from __future__ import annotations

import asyncio
import functools
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from serving_fixtures import UPSTREAM_KEY
from stub_upstream import answer_for

from router.errors import (
    BudgetExceededError,
    InvalidRequestError,
    ModelNotFoundError,
    PromptTooLargeError,
    UpstreamError,
)
from router.decider import routing_text
from router.sdk import AsyncRoutedStream, RoutedCompletion, RoutedStream
from router.store import key_counter, model_counter

MESSAGES = [{"role": "user", "content": "What is the derivative of x**3 + 2*x? Show the steps."}]


def ranked_models(router, messages=MESSAGES, **knobs) -> list[str]:
    return [c.model for c in router.route(messages, **knobs).ranked()]


def test_importing_the_package_stays_light() -> None:
    code = "import sys, router; assert not {'litellm', 'torch', 'router.sdk'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)
    from router import Router
    from router.sdk import Router as SdkRouter

    assert Router is SdkRouter


def test_route_decides_without_calling_any_model(make_router, stub) -> None:
    router = make_router()
    decision = router.route(MESSAGES)
    assert {c.model for c in decision.candidates} == set(router.entries)
    best = max(decision.candidates, key=lambda c: c.score)
    assert decision.model == best.model and decision.lambda_ == 100.0
    assert all(c.score == pytest.approx(c.expected_reward - 100.0 * c.predicted_cost_usd) for c in decision.candidates)
    assert stub.state.hits == type(stub.state.hits)()


def test_cached_route_matches_the_engine_and_skips_the_encoder(make_router, monkeypatch) -> None:
    router = make_router()
    text = MESSAGES[0]["content"]
    direct = router.engine.route([text])[0]
    first = router.route(MESSAGES)
    monkeypatch.setattr(router.engine.encoder, "encode", lambda texts: pytest.fail("the cache was not used"))
    monkeypatch.setattr(router.engine.pool, "predict", lambda *a: pytest.fail("the cache was not used"))
    second = router.route(MESSAGES)
    assert first.model == second.model == direct.model
    for a, b in zip(direct.candidates, second.candidates, strict=True):
        assert (a.model, a.expected_reward, a.predicted_cost_usd) == pytest.approx(
            (b.model, b.expected_reward, b.predicted_cost_usd)
        )


def test_cached_embedding_is_reused_when_predictions_are_not(make_router, monkeypatch) -> None:
    router = make_router()
    router.route(MESSAGES)
    predictions = [k for k in router.store._cache if k.startswith("pred:")]
    for key in predictions:
        del router.store._cache[key]
    monkeypatch.setattr(router.engine.encoder, "encode", lambda texts: pytest.fail("the embedding was not reused"))
    assert router.route(MESSAGES).model


def test_lambda_models_and_max_cost_steer_the_choice(make_router) -> None:
    router = make_router()
    candidates = router.route(MESSAGES).candidates
    best_reward = max(candidates, key=lambda c: c.expected_reward)
    cheapest = min(candidates, key=lambda c: c.predicted_cost_usd)
    assert router.route(MESSAGES, lambda_=0.0).model == best_reward.model
    assert router.route(MESSAGES, lambda_=1e9).model == cheapest.model
    only = [c.model for c in candidates if c.model != best_reward.model][0]
    assert router.route(MESSAGES, lambda_=0.0, models=[only]).model == only
    cap = sorted(c.predicted_cost_usd for c in candidates)[1]
    capped = router.route(MESSAGES, lambda_=0.0, max_cost=cap)
    assert capped.candidates and next(c for c in capped.candidates if c.model == capped.model).predicted_cost_usd <= cap


@pytest.mark.parametrize(
    ("kwargs", "error", "param"),
    [
        ({"models": ["no-such-model"]}, ModelNotFoundError, "models"),
        ({"lambda_": -1.0}, InvalidRequestError, "lambda"),
        ({"lambda_": float("nan")}, InvalidRequestError, "lambda"),
        ({"max_cost": 0.0}, InvalidRequestError, "max_cost"),
    ],
)
def test_bad_knobs_are_invalid_requests(make_router, kwargs, error, param) -> None:
    with pytest.raises(error) as caught:
        make_router().route(MESSAGES, **kwargs)
    assert caught.value.param == param and isinstance(caught.value, ValueError)


def test_empty_and_oversized_conversations_are_refused(make_router) -> None:
    router = make_router(serving={"max_prompt_chars": 100})
    with pytest.raises(InvalidRequestError):
        router.route([])
    with pytest.raises(PromptTooLargeError):
        router.route([{"role": "user", "content": "x" * 101}])


def test_routing_text_keeps_the_last_user_turn_and_a_bounded_context() -> None:
    messages = [
        {"role": "system", "content": "S" * 50},
        {"role": "user", "content": "old question " * 20},
        {"role": "assistant", "content": [{"type": "text", "text": "an answer"}]},
        {"role": "user", "content": "the new question"},
    ]
    text = routing_text(messages, context_chars=40)
    assert text.endswith("the new question")
    assert "assistant: an answer" in text and "S" not in text
    assert len(text) <= 40 + len("\n\n") * 2 + len("the new question")
    assert routing_text(messages, context_chars=0) == "the new question"


def test_complete_calls_the_chosen_model_and_records_realized_cost(make_router, stub) -> None:
    router = make_router()
    decision = router.route(MESSAGES)
    result = router.complete(MESSAGES, temperature=0.2, spend_key="team-a")
    assert isinstance(result, RoutedCompletion)
    record = result.record
    assert record.chosen == record.model == decision.model and record.routed
    assert result.response.choices[0].message.content == answer_for(decision.model, MESSAGES)
    hit = stub.state.hits[-1]
    assert (hit.model, hit.authorization, hit.body["temperature"]) == (decision.model, f"Bearer {UPSTREAM_KEY}", 0.2)
    usage = result.response.usage
    input_price, output_price = router.engine.usd_per_token[router.engine.models.index(decision.model)]
    assert record.realized_cost_usd == pytest.approx(
        usage.prompt_tokens * input_price + usage.completion_tokens * output_price
    )
    assert [c.model for c in record.candidates] == [c.model for c in decision.ranked()]
    assert router.store.spend(model_counter(decision.model)) == pytest.approx(record.realized_cost_usd)
    assert router.store.spend(key_counter("team-a")) == pytest.approx(record.realized_cost_usd)
    logged = router.store.decisions(1)[0]
    assert logged["request_id"] == record.request_id and logged["realized_cost_usd"] == record.realized_cost_usd


def test_acomplete_matches_complete(make_router, stub) -> None:
    router = make_router()
    result = asyncio.run(router.acomplete(MESSAGES))
    assert result.record.model == router.route(MESSAGES).model
    assert result.response.choices[0].message.content == answer_for(result.record.model, MESSAGES)
    assert result.record.realized_cost_usd > 0


def test_named_model_bypasses_routing(make_router, stub) -> None:
    router = make_router()
    result = router.complete(MESSAGES, model="gpt-4o-2024-08-06")
    assert not result.record.routed and result.record.candidates == []
    assert stub.state.models_hit() == ["gpt-4o-2024-08-06"]
    with pytest.raises(ModelNotFoundError):
        router.complete(MESSAGES, model="gpt-5")


def test_stream_yields_chunks_then_the_record_has_the_cost(make_router, stub) -> None:
    router = make_router()
    stream = router.complete(MESSAGES, stream=True)
    assert isinstance(stream, RoutedStream) and stream.record.realized_cost_usd is None
    chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert text == answer_for(stream.record.model, MESSAGES)
    assert all(chunk.choices for chunk in chunks), "the usage chunk the caller did not ask for is dropped"
    assert stream.record.realized_cost_usd > 0 and stream.record.completion_tokens == len(text.split())
    assert stub.state.hits[-1].stream


def test_a_stream_closed_unread_is_settled_once(make_router, stub) -> None:
    router = make_router()
    with router.complete(MESSAGES, stream=True, spend_key="sync") as stream:
        pass  # never read
    assert stream.record.prompt_tokens > 0 and stream.record.realized_cost_usd > 0
    stream.close()  # a second close changes nothing
    with pytest.raises(RuntimeError, match="read once"):
        list(stream)

    async def unread_async():
        async with await router.acomplete(MESSAGES, stream=True, spend_key="async") as stream:
            pass
        await stream.aclose()
        return stream

    stream_async = asyncio.run(unread_async())
    assert stream_async.record.realized_cost_usd == pytest.approx(stream.record.realized_cost_usd)
    assert len(router.store.decisions(10)) == 2
    assert router.store.spend(key_counter("sync")) == pytest.approx(stream.record.realized_cost_usd)


def test_async_stream_keeps_usage_when_asked(make_router, stub) -> None:
    router = make_router()

    async def consume():
        stream = await router.acomplete(MESSAGES, stream=True, stream_options={"include_usage": True})
        assert isinstance(stream, AsyncRoutedStream)
        return stream, [chunk async for chunk in stream]

    stream, chunks = asyncio.run(consume())
    assert chunks[-1].usage.completion_tokens == stream.record.completion_tokens
    assert router.store.decisions(1)[0]["request_id"] == stream.record.request_id


def test_an_async_stream_cancelled_while_it_settles_is_still_settled(make_router, stub) -> None:
    """A disconnect can cancel a finished stream's last await, its settle queued for a worker thread: it still runs."""
    router = make_router()

    async def cancel_during_the_settle():
        stream = await router.acomplete(MESSAGES, stream=True)
        release = threading.Event()
        executor = _HeldWorker(watched=stream._end, hold=release)
        asyncio.get_running_loop().set_default_executor(executor)
        reading = asyncio.create_task(asyncio.wait_for(_drain(stream), 30))
        await _cancel_once_queued(reading, executor, release)
        return stream

    stream = asyncio.run(cancel_during_the_settle())
    assert stream.record.realized_cost_usd is not None and stream.record.realized_cost_usd > 0
    assert router.store.decisions(1)[0]["request_id"] == stream.record.request_id


def test_a_stream_cancelled_before_it_reaches_its_caller_is_closed_and_settled(make_router, stub) -> None:
    router = make_router()
    budget = {"spend_key": "gone", "budget_usd": 1.0}

    async def cancel_before_the_stream_is_returned():
        release = threading.Event()
        executor = _HeldWorker(watched=router.dispatcher._step, hold=release)  # the hop that hands the stream over
        asyncio.get_running_loop().set_default_executor(executor)
        calling = asyncio.create_task(router.acomplete(MESSAGES, stream=True, **budget))
        await _cancel_once_queued(calling, executor, release)
        await _until(lambda: router.store.decisions(1))  # the stream is settled by a cleanup after the cancellation

    asyncio.run(cancel_before_the_stream_is_returned())
    logged = router.store.decisions(1)
    assert logged and logged[0]["spend_key"] == "gone" and logged[0]["prompt_tokens"] > 0, "charged for what it read"
    assert router.store.spend(key_counter("gone")) == pytest.approx(logged[0]["realized_cost_usd"], abs=1e-9)
    assert logged[0]["realized_cost_usd"] > 0


def test_a_call_cancelled_before_its_attempt_is_sent_is_not_charged(make_router, stub) -> None:
    router = make_router()
    budget = {"spend_key": "early", "budget_usd": 1.0}

    async def cancel_before_sending():
        release = threading.Event()
        executor = _HeldWorker(watched=router.dispatcher._start, hold=release)  # the decision and first reservation
        asyncio.get_running_loop().set_default_executor(executor)
        calling = asyncio.create_task(router.acomplete(MESSAGES, **budget))
        await _cancel_once_queued(calling, executor, release)
        await _until(lambda: not router.dispatcher._abandoning)  # the cleanup has run

    asyncio.run(cancel_before_sending())
    assert not stub.state.hits and not router.store.decisions(1)
    assert router.store.spend(key_counter("early")) == 0, "the reservation of an attempt never sent is released"


class _HeldWorker(ThreadPoolExecutor):
    """A one-thread executor that, when the watched function is submitted, queues it behind a wait on ``hold``."""

    def __init__(self, watched, hold: threading.Event) -> None:
        super().__init__(max_workers=1)
        self.watched, self.hold, self.watched_submitted = watched, hold, threading.Event()

    def submit(self, fn, /, *args, **kwargs):
        called = fn.args[0] if isinstance(fn, functools.partial) else fn  # to_thread submits partial(context.run, f)
        if called == self.watched:
            super().submit(self.hold.wait)
            self.watched_submitted.set()
        return super().submit(fn, *args, **kwargs)


async def _cancel_once_queued(task: asyncio.Task, executor: _HeldWorker, release: threading.Event) -> None:
    """Cancel ``task`` while the watched function waits in the executor's queue, then let the queue run."""
    await _until(executor.watched_submitted.is_set)
    task.cancel()
    await asyncio.wait([task])  # the cancellation has reached the task's await before the worker frees up
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.get_running_loop().run_in_executor(None, lambda: None)  # whatever was queued before this has run


@pytest.mark.parametrize("stream", [False, True])
def test_a_cancelled_acomplete_is_charged_for_its_input_not_its_reservation(make_router, stub, stream) -> None:
    """A caller's timeout around ``acomplete`` cancels the upstream call: the attempt is logged and charged for the
    input the upstream received, and the rest of its worst-case reservation goes back to the key's budget."""
    router = make_router(serving={"timeout_s": 10})
    for model in router.entries:
        stub.state.failures[model] = "timeout"
    stub.state.hang_s = 3.0
    budget = {"spend_key": "impatient", "budget_usd": 1.0}

    async def give_up() -> float:
        calling = asyncio.create_task(router.acomplete(MESSAGES, stream=stream, **budget))
        await _until(lambda: stub.state.hits)
        reserved = router.store.spend(key_counter("impatient"))
        calling.cancel()
        with pytest.raises(asyncio.CancelledError):
            await calling
        await _until(lambda: router.store.decisions(1))  # settled by a cleanup after the cancellation
        return reserved

    reserved = asyncio.run(give_up())
    (logged,) = router.store.decisions(10)
    assert logged["attempts"][-1]["error_type"] == "CancelledError" and logged["completion_tokens"] == 0
    charged = router.store.spend(key_counter("impatient"))
    assert charged == pytest.approx(logged["realized_cost_usd"], abs=1e-12) and 0 < charged < reserved / 100
    assert len(stub.state.hits) == 1, "no fallback attempt is started for a caller that has gone"


async def _until(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.01)


async def _drain(stream: AsyncRoutedStream) -> list:
    return [chunk async for chunk in stream]


@pytest.mark.parametrize("failure", ["500", "503", "429", "context", "timeout"])
def test_failed_choice_falls_back_to_the_next_by_score(make_router, stub, failure) -> None:
    router = make_router(serving={"timeout_s": 0.5})
    ranked = ranked_models(router)
    stub.state.failures[ranked[0]] = failure
    stub.state.hang_s = 3.0
    result = router.complete(MESSAGES)
    attempts = result.record.attempts
    assert [a.model for a in attempts] == ranked[:2] and result.record.model == ranked[1]
    assert attempts[0].error_type and attempts[1].error_type is None
    assert result.response.choices[0].message.content == answer_for(ranked[1], MESSAGES)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_stream_failing_before_its_first_chunk_falls_back(make_router, stub, mode) -> None:
    router = make_router()
    ranked = ranked_models(router)
    stub.state.failures[ranked[0]] = "503"

    async def consume_async():
        stream = await router.acomplete(MESSAGES, stream=True)
        return stream, [chunk async for chunk in stream]

    if mode == "sync":
        stream = router.complete(MESSAGES, stream=True)
        chunks = list(stream)
    else:
        stream, chunks = asyncio.run(consume_async())
    assert [a.model for a in stream.record.attempts] == ranked[:2]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == answer_for(ranked[1], MESSAGES)


def test_attempts_stop_at_the_configured_number(make_router, stub) -> None:
    router = make_router(serving={"fallback_attempts": 2})
    for model in router.entries:
        stub.state.failures[model] = "500"
    records = []
    router.subscribe(records.append)
    with pytest.raises(UpstreamError) as caught:
        router.complete(MESSAGES)
    assert caught.value.status == 502
    assert [a.model for a in caught.value.record.attempts] == ranked_models(router)[:2]
    assert len(stub.state.hits) == 2 and records == [caught.value.record]
    assert caught.value.body().error.attempts == caught.value.record.attempts


def test_upstream_rejection_of_the_request_does_not_fall_back(make_router, stub) -> None:
    router = make_router()
    stub.state.failures[router.route(MESSAGES).model] = "400"
    with pytest.raises(UpstreamError) as caught:
        router.complete(MESSAGES)
    assert caught.value.status == 400 and len(caught.value.record.attempts) == 1


def test_mid_stream_failure_is_reported_not_retried(make_router, stub) -> None:
    router = make_router()
    stub.state.failures[router.route(MESSAGES).model] = "midstream"
    stream = router.complete(MESSAGES, stream=True)
    with pytest.raises(UpstreamError, match="mid-stream"):
        list(stream)
    assert len(stub.state.hits) == 1 and "mid-stream" in stream.record.attempts[-1].error


def test_budget_refuses_once_spent_and_refunds_failed_calls(make_router, stub) -> None:
    router = make_router()
    for model in router.entries:
        stub.state.failures[model] = "500"
    with pytest.raises(UpstreamError):
        router.complete(MESSAGES, spend_key="team-b", budget_usd=1.0)
    assert router.store.spend(key_counter("team-b")) == 0.0, "a failed call's reservation is refunded"
    stub.state.reset()
    result = router.complete(MESSAGES, spend_key="team-b", budget_usd=1.0)
    assert router.store.spend(key_counter("team-b")) == pytest.approx(result.record.realized_cost_usd)
    router.store.add_spend({key_counter("team-b"): 1.0})
    with pytest.raises(BudgetExceededError):
        router.complete(MESSAGES, spend_key="team-b", budget_usd=1.0)
    assert len(stub.state.hits) == 1, "the refused call never reached an upstream"
