"""One judge call through LiteLLM: bounded concurrency, and exponential backoff on transient failures.

Retries are ours (tenacity) rather than the provider SDK's, so every provider LiteLLM knows gets the same
policy: rate limits (429), timeouts, connection errors and 5xx are retried; anything else (a bad key, a bad
parameter) fails at once, because repeating it cannot help.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential, wait_random

from predictors.litellm_offline import litellm

_TRANSIENT = (
    litellm.Timeout,
    litellm.RateLimitError,
    litellm.ServiceUnavailableError,
    litellm.InternalServerError,
    litellm.BadGatewayError,
    litellm.APIConnectionError,
)


def is_transient(exc: BaseException) -> bool:
    """Whether the same call may succeed later: a timeout, a rate limit, a 5xx or a dropped connection."""
    status = getattr(exc, "status_code", None)
    return isinstance(exc, _TRANSIENT) or (isinstance(status, int) and (status in (408, 429) or status >= 500))


def total_tokens(response: Any) -> int:
    """Prompt plus completion tokens the provider reported (0 where it reported none)."""
    usage = getattr(response, "usage", None)
    return int(getattr(usage, "total_tokens", 0) or 0)


@dataclass
class CompletionClient:
    """Calls one LiteLLM model; `retries` extra attempts, waits from `backoff_s` doubling up to `max_backoff_s`.

    Each wait gets up to `backoff_s` of random jitter so parallel calls that hit a rate limit spread out.
    """

    litellm_model: str
    api_base: str | None = None
    api_key: str | None = None
    timeout_s: float = 60.0
    retries: int = 4
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    concurrency: int = 8

    def __post_init__(self) -> None:
        self._slots: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def complete(self, messages: list[dict], **openai_kwargs: Any) -> Any:
        """LiteLLM's ModelResponse; raises the last error once retries are spent or the error is not transient."""
        args: dict[str, Any] = {"timeout": self.timeout_s, **openai_kwargs}
        args.update(model=self.litellm_model, messages=messages, max_retries=0)
        if self.api_base:
            args["api_base"] = self.api_base
        if self.api_key:
            args["api_key"] = self.api_key
        retrying = AsyncRetrying(
            retry=retry_if_exception(is_transient),
            stop=stop_after_attempt(self.retries + 1),
            wait=wait_exponential(multiplier=self.backoff_s, max=self.max_backoff_s) + wait_random(0, self.backoff_s),
            reraise=True,
        )
        async with self._semaphore():
            async for attempt in retrying:
                with attempt:
                    return await litellm.acompletion(**args)

    def _semaphore(self) -> asyncio.Semaphore:
        """One semaphore per event loop: a scorer may be reused across `asyncio.run` calls."""
        loop = asyncio.get_running_loop()
        if self._slots is None or self._loop is not loop:
            self._slots, self._loop = asyncio.Semaphore(self.concurrency), loop
        return self._slots
