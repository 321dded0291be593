"""The OpenAI-compatible proxy: ``POST /v1/chat/completions`` routed through the SDK's ``Router``.

``model`` picks the behaviour: ``erp`` routes with the registry's lambda, ``erp:lambda=0.5,max_cost=0.002``
sets the knobs per request, a registry model's name bypasses routing. Every error is an OpenAI-style body
with the right status; no request crashes the server.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from router.errors import InvalidRequestError, ModelNotFoundError, PromptTooLargeError, RoutingError
from router.registry import RegistryError, ServingSettings
from router.schemas import ChatCompletionRequest, ErrorBody, ErrorResponse, Health, ModelCard, ModelList, RoutingRecord
from router.sdk import RoutedCompletion, Router
from router.store import FailoverStore
from router.telemetry import CONTENT_TYPE, Metrics

log = logging.getLogger(__name__)
ROUTER_MODEL = "erp"
_KNOBS = {"lambda": "lambda_", "max_cost": "max_cost"}


@dataclass(frozen=True)
class ClientKey:
    name: str
    budget_usd: float | None = None


@dataclass(frozen=True)
class Target:
    """What a request's ``model`` asks for: a named model, or routing with optional knobs."""

    model: str | None = None
    lambda_: float | None = None
    max_cost: float | None = None


class AuthError(RoutingError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


def client_keys(settings: ServingSettings, environ: dict[str, str] | None = None) -> dict[str, ClientKey]:
    """Accepted API keys from the registry and from ``settings.api_keys_env``; empty means no auth."""
    environ = os.environ if environ is None else environ
    keys: dict[str, ClientKey] = {}
    for i, entry in enumerate(settings.api_keys):
        secret = entry.key if entry.key is not None else environ.get(entry.key_env or "")
        if not secret:
            raise RegistryError(
                f"key 'serving.api_keys[{i}].key_env': environment variable {entry.key_env} is not set; "
                "fix: export it or remove the entry"
            )
        keys[secret] = ClientKey(entry.name, entry.budget_usd)
    for secret in filter(None, (k.strip() for k in environ.get(settings.api_keys_env or "", "").split(","))):
        keys.setdefault(secret, ClientKey(f"env-{hashlib.sha256(secret.encode()).hexdigest()[:8]}"))
    return keys


def parse_target(model: str, registry_models: dict[str, Any]) -> Target:
    """``erp``, ``erp:lambda=X,max_cost=Y`` or a registry model's name; anything else is 400 or 404."""
    if model in registry_models:
        return Target(model=model)
    if model == ROUTER_MODEL:
        return Target()
    if not model.startswith(ROUTER_MODEL + ":"):
        raise ModelNotFoundError(
            f"the model {model!r} does not exist; use 'erp', 'erp:lambda=X,max_cost=Y' or one of: "
            f"{', '.join(registry_models)}",
            param="model",
        )
    knobs: dict[str, float] = {}
    for part in model[len(ROUTER_MODEL) + 1 :].split(","):
        name, sep, value = (piece.strip() for piece in part.partition("="))
        if not sep or name not in _KNOBS or _KNOBS[name] in knobs:
            raise InvalidRequestError(
                f"bad router parameter {part!r} in model {model!r}; expected erp:lambda=X and/or max_cost=Y, "
                "each once, comma-separated",
                param="model",
            )
        try:
            knobs[_KNOBS[name]] = float(value)
        except ValueError:
            raise InvalidRequestError(
                f"{name} must be a number, got {value!r} in model {model!r}", param="model"
            ) from None
    return Target(**knobs)


def routing_headers(record: RoutingRecord) -> dict[str, str]:
    headers = {
        "x-erp-request-id": record.request_id,
        "x-erp-model": record.model or record.chosen,
        "x-erp-attempts": str(len(record.attempts)),
    }
    candidate = record.candidate(record.model or record.chosen)
    if record.routed and candidate is not None:
        headers["x-erp-expected-reward"] = f"{candidate.expected_reward:.6g}"
        headers["x-erp-predicted-cost-usd"] = f"{candidate.predicted_cost_usd:.6g}"
        headers["x-erp-lambda"] = f"{record.lambda_:g}"
        headers["x-erp-decision-ms"] = f"{record.decision_ms:.3f}"
    return headers


def create_app(router: Router, metrics: Metrics | None = None) -> FastAPI:
    """The proxy app over a router; its metrics observe every request the router finishes."""
    metrics = metrics or Metrics()
    previous_hook = router.on_record

    def observe(record: RoutingRecord) -> None:
        metrics.observe(record)
        if previous_hook is not None:
            previous_hook(record)

    router.on_record = observe
    keys = client_keys(router.settings)
    max_body_bytes = 8 * router.settings.max_prompt_chars + 2**20
    app = FastAPI(title="erp-router", docs_url=None, redoc_url=None)

    def error_response(error: RoutingError | ErrorResponse, status: int, headers: dict | None = None) -> JSONResponse:
        body = error.body() if isinstance(error, RoutingError) else error
        metrics.http_errors.labels(str(status), body.error.code or body.error.type).inc()
        return JSONResponse(body.model_dump(mode="json"), status_code=status, headers=headers)

    def authenticate(request: Request) -> ClientKey | None:
        if not keys:
            return None
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("You didn't provide an API key; send it as 'Authorization: Bearer KEY'.")
        for secret, client in keys.items():
            if hmac.compare_digest(secret.encode(), token.strip().encode()):
                return client
        raise AuthError("Incorrect API key provided.")

    @app.exception_handler(RoutingError)
    async def on_routing_error(_: Request, exc: RoutingError) -> JSONResponse:
        headers = {"www-authenticate": "Bearer"} if isinstance(exc, AuthError) else None
        if exc.status >= 500:
            log.warning("request failed: %s", exc)
        return error_response(exc, exc.status, headers)

    @app.exception_handler(HTTPException)
    async def on_http_error(_: Request, exc: HTTPException) -> JSONResponse:
        body = ErrorResponse(error=ErrorBody(message=str(exc.detail), type="invalid_request_error", code=None))
        return error_response(body, exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(InvalidRequestError(str(exc.errors()[:3])), 400)

    @app.exception_handler(Exception)
    async def on_unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error while serving a request")
        body = ErrorResponse(error=ErrorBody(message="internal error of the router", type="server_error"))
        return error_response(body, 500)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        client = authenticate(request)
        chat = await _read_request(request, max_body_bytes)
        target = parse_target(chat.model, router.entries)
        result = await router.acomplete(
            [message.model_dump(exclude_none=True) for message in chat.messages],
            model=target.model,
            lambda_=target.lambda_,
            max_cost=target.max_cost,
            stream=chat.stream,
            spend_key=client.name if client else None,
            budget_usd=client.budget_usd if client else None,
            **chat.passthrough(),
        )
        headers = routing_headers(result.record)
        if isinstance(result, RoutedCompletion):
            return Response(result.response.model_dump_json(), media_type="application/json", headers=headers)
        return StreamingResponse(_server_sent_events(result), media_type="text/event-stream", headers=headers)

    @app.get("/v1/models")
    async def list_models(request: Request) -> ModelList:
        authenticate(request)
        cards = [ModelCard(id=ROUTER_MODEL, owned_by="erp-router")]
        cards += [ModelCard(id=name, owned_by=e.litellm_model.split("/")[0]) for name, e in router.entries.items()]
        return ModelList(data=cards)

    @app.get("/healthz")
    async def healthz() -> Health:
        store = await asyncio.to_thread(router.store.health)
        metrics.store_degraded.set(store.redis == "down")
        status = "degraded" if store.redis == "down" else "ok"
        return Health(status=status, live=True, ready=True, models=len(router.entries), store=store)

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        if isinstance(router.store, FailoverStore):
            metrics.store_degraded.set(router.store.degraded)
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)

    return app


async def _read_request(request: Request, max_body_bytes: int) -> ChatCompletionRequest:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_body_bytes:
        raise PromptTooLargeError(f"the request body has {declared} bytes; at most {max_body_bytes} are accepted")
    raw = await request.body()
    if len(raw) > max_body_bytes:
        raise PromptTooLargeError(f"the request body has {len(raw)} bytes; at most {max_body_bytes} are accepted")
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"the request body is not valid JSON: {exc}") from None
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        error = exc.errors()[0]
        param = ".".join(str(part) for part in error["loc"]) or None
        raise InvalidRequestError(f"{param or 'body'}: {error['msg']}", param=param) from None


async def _server_sent_events(stream: AsyncIterator[Any]) -> AsyncIterator[str]:
    """OpenAI chunk events, then [DONE]; a mid-stream failure ends with an error event instead."""
    try:
        async for chunk in stream:
            yield f"data: {chunk.model_dump_json(exclude_none=True)}\n\n"
    except RoutingError as exc:
        yield f"data: {exc.body().model_dump_json(exclude_none=True)}\n\n"
        return
    yield "data: [DONE]\n\n"


def serve(registry: str | Path, host: str = "127.0.0.1", port: int = 8000) -> None:
    """``erp serve``: load the registry's pool and run the proxy with uvicorn (state in Redis if $REDIS_URL)."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    router = Router.from_registry(registry)
    app = create_app(router)
    log.info("erp proxy: %d models, store %s", len(router.entries), router.store.health().backend)
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)
