"""The dispatcher: call the chosen model through LiteLLM, fall back to the next on failures another may fix.

The attempt loop is written once, as a generator that yields each attempt's LiteLLM arguments and is sent
back its outcome; ``run`` and ``arun`` are the thin sync and async shells that make the calls. Each attempt
reserves its worst-case cost first (the ledger) and carries only the caller's allow-listed parameters plus
the registry's connection settings (model string, base URL, key, the serving timeout). A timeout, rate
limit, 5xx, connection error, context-window error or a stream that ends before saying anything moves to
the next model by score; an error no other model can fix (400, 401) stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

from predictors.litellm_offline import litellm
from predictors.scorers.completion import is_transient
from router.best_of import SelectionError, Selectors, as_chunks, merge_responses
from router.errors import BudgetExceededError, BudgetUnavailableError, RoutingError, UpstreamError
from router.ledger import Budget, Ledger, Reservation, Usage, counted_usage, reported_usage
from router.registry import ModelEntry
from router.schemas import Attempt, ChatParameters, RoutingRecord

Outcome = tuple[Any, Exception | None]
log = logging.getLogger(__name__)


class EmptyStreamError(Exception):
    """The upstream's stream ended without a role, content or tool call (e.g. its body was not SSE at all)."""


def is_fallback_error(exc: Exception) -> bool:
    """Whether another model may succeed: timeouts, rate limits, 5xx, connection errors, context too long."""
    return is_transient(exc) or isinstance(exc, (litellm.ContextWindowExceededError, EmptyStreamError))


@dataclass
class Call:
    """One request: its record, the models to try in order, what it sends, and what it is charged to."""

    record: RoutingRecord
    entries: list[ModelEntry]
    messages: list[dict]
    params: ChatParameters
    stream: bool = False
    budget: Budget | None = None
    reservation: Reservation = field(default_factory=Reservation)
    rejected: bool = False


@dataclass(frozen=True)
class UpstreamRequest:
    """One attempt's upstream calls (several for a best-of-N candidate sampled call by call) and whether the
    caller reads the answer as a stream."""

    calls: list[dict]
    stream: bool


@dataclass
class RoutedCompletion:
    """LiteLLM's response and how it was routed."""

    response: litellm.ModelResponse
    record: RoutingRecord


class Dispatcher:
    def __init__(self, ledger: Ledger, timeout_s: float, selectors: Selectors) -> None:
        self.ledger = ledger
        self.timeout_s = timeout_s
        self.selectors = selectors
        self._abandoning: set[asyncio.Future] = set()  # cleanups of cancelled runs, kept until they finish

    def run(self, call: Call) -> RoutedCompletion | RoutedStream:
        """Serve ``call`` through ``litellm.completion``."""
        steps = self._attempts(call)
        done, value = _advance(steps, None)
        while not done:
            try:
                outcome: Outcome = (self._call(value), None)
            except Exception as exc:
                outcome = (None, exc)
            done, value = self._step(call, steps, outcome, asynchronous=False)
        return value

    async def arun(self, plan: Callable[[], Call]) -> RoutedCompletion | AsyncRoutedStream:
        """Plan the call and serve it through ``litellm.acompletion``.

        Planning (the decision) and the ledger's store work run in worker threads, one hop before the first
        attempt and one after each: the decision with the first reservation, the last outcome with the settling.
        A cancelled caller (a timeout around ``acomplete``) cancels the upstream call in flight but not a hop:
        the hop runs to its end, then the run settles what it still holds (see ``_abandon``).
        """
        start = hop = _in_thread(self._start, plan)
        sent = False  # whether the upstream has the current attempt's request
        try:
            call, steps, (done, value) = await asyncio.shield(hop)
            while not done:
                sent = True
                try:
                    outcome: Outcome = (await self._acall(value), None)
                except Exception as exc:
                    outcome = (None, exc)
                sent = False
                hop = _in_thread(self._step, call, steps, outcome, True)
                done, value = await asyncio.shield(hop)
            return value
        except asyncio.CancelledError:
            cleanup = asyncio.ensure_future(self._abandon(start, hop, sent))
            self._abandoning.add(cleanup)
            cleanup.add_done_callback(self._abandoning.discard)
            raise

    async def _abandon(self, start: asyncio.Future, last: asyncio.Future, sent: bool) -> None:
        """After a cancelled ``arun``: wait for its last hop, then settle what the run still holds: the attempt in
        flight (charged for its input if the upstream had it, else released; see ``_attempts``), or a stream that
        never reached the caller."""
        try:
            _, steps, step = await asyncio.shield(start)
            if last is not start:
                step = await asyncio.shield(last)
        except asyncio.CancelledError:
            log.warning("a cancelled call's cleanup was itself cancelled (the event loop is closing)")
            raise
        except Exception:
            return  # the hop raised, and the attempt loop settles whatever it held before it raises
        done, value = step
        try:
            if not done:
                await asyncio.to_thread(steps.close if sent else functools.partial(_withdraw, steps))
            elif isinstance(value, AsyncRoutedStream):
                await value.aclose()
        except Exception:
            log.exception("settling a cancelled call failed")

    def _start(self, plan: Callable[[], Call]) -> tuple[Call, Generator, tuple[bool, Any]]:
        call = plan()
        steps = self._attempts(call)
        return call, steps, _advance(steps, None)

    def _step(self, call: Call, steps: Generator, outcome: Outcome, asynchronous: bool) -> tuple[bool, Any]:
        """The next attempt's arguments, or the finished result (a completion settled, or a stream to read)."""
        done, value = _advance(steps, outcome)
        return (True, self._finish(call, value, asynchronous)) if done else (False, value)

    def _attempts(self, call: Call) -> Generator[UpstreamRequest, Outcome, Any]:
        """Yield each attempt's upstream calls, receive its outcome; return the first success's response (for a
        best-of-N candidate, reduced to the selector's pick)."""
        for entry in call.entries:
            started = time.perf_counter()
            messages, params = entry_request(entry, call.messages, call.params)
            try:
                reservation = self.ledger.reserve(entry.name, call.budget, messages, params)
            except (BudgetExceededError, BudgetUnavailableError) as exc:
                self._record_failure(call, entry, exc, started)
                continue
            try:
                response, error = yield self._request(entry, messages, params, call.stream, reservation)
            except GeneratorExit:  # the caller was cancelled while the upstream had this attempt: it had the input
                self._record_failure(call, entry, asyncio.CancelledError("the caller cancelled the call"), started)
                call.record.model = entry.name
                input_tokens = counted_usage(messages, "").prompt_tokens * self.ledger.input_copies[entry.name]
                self.ledger.settle(call.record, reservation, Usage(input_tokens, 0))
                raise
            except _Withdrawn:  # the caller was cancelled before this attempt was sent
                self.ledger.release(reservation)
                raise
            if error is None and entry.best_of:
                response = self._select(call, entry, messages, response, reservation, started)
            if error is None:
                call.reservation = reservation
                call.record.model = entry.name
                call.record.attempts.append(Attempt(model=entry.name, latency_ms=_ms_since(started)))
                return response
            self.ledger.release(reservation)
            self._record_failure(call, entry, error, started)
            if not is_fallback_error(error):
                call.rejected = getattr(error, "status_code", None) in (400, 422)
                break
        self.ledger.settle(call.record, call.reservation, None)
        raise _exhausted(call)

    def _request(
        self, entry: ModelEntry, messages: list[dict], params: ChatParameters, stream: bool, reservation: Reservation
    ) -> UpstreamRequest:
        """The allow-listed parameters, then the registry's connection settings, which always win; a best-of-N
        candidate's samples are not streamed (the answer streams once chosen)."""
        args = self._arguments(entry, messages, params, stream, reservation)
        if entry.best_of:
            return UpstreamRequest(self.selectors.request_arguments(entry, args), stream=False)
        return UpstreamRequest([args], stream)

    def _select(
        self, call: Call, entry: ModelEntry, messages: list[dict], response: Any, reservation: Reservation, started: float
    ) -> Any:
        """The best-scored sample; samples that cannot be scored are charged, and the request fails (502)."""
        try:
            response, call.record.best_of = self.selectors.pick(entry, messages, response)
        except SelectionError as exc:
            call.record.model = entry.name
            self._record_failure(call, entry, exc, started)
            self.ledger.settle(call.record, reservation, reported_usage(getattr(response, "usage", None)))
            raise UpstreamError(str(exc), call.record, status=502) from exc
        return response

    def _arguments(
        self, entry: ModelEntry, messages: list[dict], params: ChatParameters, stream: bool, reservation: Reservation
    ) -> dict:
        args = params.forwarded()
        if reservation.max_output_tokens is not None:
            cap_name = "max_completion_tokens" if params.max_completion_tokens else "max_tokens"
            args[cap_name] = reservation.max_output_tokens
        if stream:
            args["stream_options"] = {**args.get("stream_options", {}), "include_usage": True}
        args.update(
            model=entry.litellm_model,
            messages=messages,
            stream=stream,
            timeout=self.timeout_s,
            max_retries=0,
            api_base=entry.api_base,
            api_key=entry.api_key,
        )
        return {name: value for name, value in args.items() if value is not None}

    @staticmethod
    def _call(request: UpstreamRequest) -> Any:
        if len(request.calls) > 1:
            with ThreadPoolExecutor(len(request.calls)) as pool:
                outcomes = list(pool.map(_outcome_of(litellm.completion), request.calls))
            return _merged(outcomes)
        response = litellm.completion(**request.calls[0])
        return _prefetch(response) if request.stream else response

    @staticmethod
    async def _acall(request: UpstreamRequest) -> Any:
        if len(request.calls) > 1:
            outcomes = await asyncio.gather(*(litellm.acompletion(**args) for args in request.calls), return_exceptions=True)
            return _merged(list(outcomes))
        response = await litellm.acompletion(**request.calls[0])
        return await _aprefetch(response) if request.stream else response

    def _record_failure(self, call: Call, entry: ModelEntry, exc: Exception, started: float) -> None:
        status = getattr(exc, "status_code", None)
        if isinstance(exc, RoutingError):
            status = exc.status
        call.record.attempts.append(
            Attempt(
                model=entry.name,
                latency_ms=_ms_since(started),
                error_type=type(exc).__name__,
                status_code=status if isinstance(status, int) else None,
                error=redact(str(exc), call.entries)[:500],
            )
        )

    def _finish(self, call: Call, response: Any, asynchronous: bool) -> RoutedCompletion | RoutedStream:
        if not call.stream:
            self.ledger.settle(call.record, call.reservation, reported_usage(getattr(response, "usage", None)))
            return RoutedCompletion(response, call.record)
        prefetched, rest = response if isinstance(response, tuple) else (as_chunks(response), _nothing(asynchronous))
        stream_type = AsyncRoutedStream if asynchronous else RoutedStream
        return stream_type(call, prefetched, rest, self.ledger)


def entry_request(entry: ModelEntry, messages: list[dict], params: ChatParameters) -> tuple[list[dict], ChatParameters]:
    """The conversation and parameters one candidate is called with: its system prompt first, its parameters
    over the caller's (a model's or arm's configuration is what routing chose), but the caller's output cap kept
    where it is lower."""
    if entry.system_prompt:
        messages = [{"role": "system", "content": entry.system_prompt}, *messages]
    if not entry.params:
        return messages, params
    merged = {**params.forwarded(), **entry.params}
    for cap in ("max_tokens", "max_completion_tokens"):
        if cap in entry.params and getattr(params, cap):
            merged[cap] = min(entry.params[cap], getattr(params, cap))
    return messages, ChatParameters.model_validate(merged)


class _Withdrawn(Exception):
    """Thrown into the attempt loop of a cancelled call whose current attempt was reserved but not sent."""


def _withdraw(steps: Generator) -> None:
    with contextlib.suppress(_Withdrawn):
        steps.throw(_Withdrawn())


def _in_thread(function: Callable[..., Any], *args: Any) -> asyncio.Future:
    """``function(*args)`` in a worker thread, as a task that a cancelled awaiter of its shield does not stop."""
    return asyncio.ensure_future(asyncio.to_thread(function, *args))


def _outcome_of(function: Callable[..., Any]) -> Callable[[dict], Any]:
    """``function(**args)``, returning an exception instead of raising it (like ``gather(return_exceptions=True)``)."""

    def call(args: dict) -> Any:
        try:
            return function(**args)
        except Exception as exc:
            return exc

    return call


def _nothing(asynchronous: bool) -> Iterator | AsyncIterator:
    """An empty rest of a stream whose chunks were all made up front."""

    async def empty() -> AsyncIterator:
        return
        yield

    return empty() if asynchronous else iter(())


def _merged(outcomes: list[Any]) -> Any:
    """The successful calls' responses as one; the first error only when every call failed (what did answer is
    used and charged, never dropped)."""
    responses = [outcome for outcome in outcomes if not isinstance(outcome, BaseException)]
    if not responses:
        raise outcomes[0]
    return merge_responses(responses)


def redact(text: str, entries: list[ModelEntry]) -> str:
    """``text`` with every upstream key of these entries replaced, so no key reaches a caller or the log."""
    for entry in entries:
        secret = entry.api_key
        if secret:
            text = text.replace(secret, "[redacted]")
    return text


def _advance(steps: Generator, outcome: Outcome | None) -> tuple[bool, Any]:
    """One step of the attempt loop: (False, next arguments) or (True, the successful response)."""
    try:
        return False, (next(steps) if outcome is None else steps.send(outcome))
    except StopIteration as finished:
        return True, finished.value


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def _says_something(chunk: Any) -> bool:
    """Whether a chunk came from a real answer: a role, content or a tool call. A finish reason alone does not
    count: LiteLLM makes one up when the upstream's body was not an event stream at all."""
    return any(
        choice.delta.role
        or choice.delta.content
        or choice.delta.tool_calls
        or getattr(choice.delta, "function_call", None)
        for choice in getattr(chunk, "choices", None) or []
    )


def _prefetch(response: Iterator) -> tuple[list, Iterator]:
    """The chunks up to the first from a real answer; a stream without one is an EmptyStreamError."""
    prefetched = []
    for chunk in response:
        prefetched.append(chunk)
        if _says_something(chunk):
            return prefetched, response
    raise EmptyStreamError("the upstream's stream ended without a role, content or tool call")


async def _aprefetch(response: AsyncIterator) -> tuple[list, AsyncIterator]:
    prefetched = []
    async for chunk in response:
        prefetched.append(chunk)
        if _says_something(chunk):
            return prefetched, response
    raise EmptyStreamError("the upstream's stream ended without a role, content or tool call")


def _exhausted(call: Call) -> RoutingError:
    """429/503 when only the budget refused; else 502 with every attempt (400 when the upstream rejected the
    request's parameters)."""
    errors = {attempt.error_type for attempt in call.record.attempts}
    if errors <= {"BudgetExceededError", "BudgetUnavailableError"} and call.record.attempts:
        kind = BudgetUnavailableError if "BudgetUnavailableError" in errors else BudgetExceededError
        return kind(call.record.attempts[0].error or "budget exhausted")
    summary = "; ".join(f"{a.model}: {a.error_type} ({a.status_code})" for a in call.record.attempts)
    message = f"{len(call.record.attempts)} attempt(s) failed: {summary}"
    return UpstreamError(message, call.record, status=400 if call.rejected else 502)


class RoutedStream:
    """The answering model's chunks; ``record`` gets usage and realized cost when the stream ends, however it ends.

    A stream the caller stops reading, or that breaks mid-way, is charged for what was generated: the
    upstream's usage when it came, else tokens counted from the text streamed so far.
    """

    def __init__(self, call: Call, prefetched: list, rest: Any, ledger: Ledger) -> None:
        self.call, self.record, self._prefetched, self._rest, self._ledger = call, call.record, prefetched, rest, ledger
        self._keep_usage = bool(call.params.stream_options and call.params.stream_options.include_usage)
        self._usage: Usage | None = None
        self._text: list[str] = []
        self._claimed = False

    def _claim(self) -> None:
        """One reader, once: a second iteration, or a close after reading, would settle the stream twice."""
        if self._claimed:
            raise RuntimeError("a routed stream is read once")
        self._claimed = True

    def _see(self, chunk: Any) -> bool:
        """Note the chunk's usage and text; whether to pass it on (not the usage chunk the caller did not ask for)."""
        self._usage = reported_usage(getattr(chunk, "usage", None)) or self._usage
        for choice in getattr(chunk, "choices", None) or []:
            self._text.append(choice.delta.content or "")
            for tool_call in choice.delta.tool_calls or []:
                function = getattr(tool_call, "function", None)
                self._text.append(getattr(function, "arguments", None) or "")
        return self._keep_usage or not _usage_only(chunk)

    def _end(self, error: Exception | None) -> None:
        if error is not None and self.record.attempts:
            self.record.attempts[-1].error_type = type(error).__name__
            self.record.attempts[-1].error = f"ended mid-stream: {redact(str(error), self.call.entries)[:450]}"
        usage = self._usage or counted_usage(self.call.messages, "".join(self._text))
        self._ledger.settle(self.record, self.call.reservation, usage)

    def __iter__(self) -> Iterator[Any]:
        self._claim()
        error: Exception | None = None
        try:
            for chunk in self._prefetched:
                if self._see(chunk):
                    yield chunk
            for chunk in self._rest:
                if self._see(chunk):
                    yield chunk
        except Exception as exc:
            error = exc
            raise _midstream_error(self.record, exc) from exc
        finally:
            self._end(error)

    def close(self) -> None:
        """Close a stream that will not be read and settle it for what it generated (its first chunks); nothing if
        it is being read, or was closed, already (a loop that stops early settles it when its iterator closes)."""
        if self._take_unread():
            close = getattr(self._rest, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):  # the upstream connection is dropped either way
                    close()
            self._end(None)

    def __enter__(self) -> "RoutedStream":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _take_unread(self) -> bool:
        """Claim a stream nobody has read, counting its prefetched chunks as generated; False if already claimed."""
        if self._claimed:
            return False
        self._claim()
        for chunk in self._prefetched:
            self._see(chunk)
        return True


class AsyncRoutedStream(RoutedStream):
    async def __aiter__(self) -> AsyncIterator[Any]:
        self._claim()
        error: Exception | None = None
        completed = False
        try:
            for chunk in self._prefetched:
                if self._see(chunk):
                    yield chunk
            async for chunk in self._rest:
                if self._see(chunk):
                    yield chunk
            completed = True
        except Exception as exc:
            error = exc
            raise _midstream_error(self.record, exc) from exc
        finally:
            # The store is written from a worker thread. A cancelled stream does not wait for it, and a cancellation
            # arriving while a finished stream waits must not cancel it: unshielded, a settle still queued for a
            # worker was dropped, leaving the stream unrecorded and its reservation unsettled.
            settled = asyncio.get_running_loop().run_in_executor(None, self._end, error)
            if completed:
                await asyncio.shield(settled)

    async def aclose(self) -> None:
        """``close`` for the async stream: what a cancelled caller's cleanup and a proxy response whose client left
        before the first event call, and what ``async with`` calls."""
        if not self._take_unread():
            return
        settled = asyncio.get_running_loop().run_in_executor(None, self._end, None)  # claimed: settled whatever comes
        close = getattr(self._rest, "aclose", None)
        if close is not None:
            with contextlib.suppress(Exception):  # the upstream connection is dropped either way
                await close()
        await asyncio.shield(settled)

    async def __aenter__(self) -> "AsyncRoutedStream":
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()


def _usage_only(chunk: Any) -> bool:
    """The trailing chunk that only carries usage (requested by the router, not by the caller)."""
    if getattr(chunk, "usage", None) is None:
        return False
    return all(
        choice.finish_reason is None and not (choice.delta.content or choice.delta.role or choice.delta.tool_calls)
        for choice in chunk.choices
    )


def _midstream_error(record: RoutingRecord, exc: Exception) -> UpstreamError:
    return UpstreamError(f"{record.model} failed mid-stream: {type(exc).__name__}: {str(exc)[:300]}", record)
