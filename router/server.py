"""The OpenAI-compatible proxy: ``POST /v1/chat/completions`` routed through the SDK's ``Router``.

``model`` picks the behaviour: ``erp`` routes with the registry's lambda, ``erp:lambda=0.5,max_cost=0.002``
sets the knobs per request, a registry model's name bypasses routing. The body is a pydantic model (the
allow-list of OpenAI parameters; anything else is a 400 naming it), authentication is a dependency, the
body size is capped while it is read, and every error is an OpenAI-style body with the right status.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncGenerator, AsyncIterable

import anyio
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException

from router.errors import InvalidRequestError, RoutingError
from router.failover import FailoverStore
from router.registry import ARM_SEPARATOR, RegistryError, ServingSettings
from router.schemas import ChatCompletionRequest, ErrorBody, ErrorResponse, Health, ModelCard, ModelList, RoutingRecord
from router.sdk import AsyncRoutedStream, RoutedCompletion, Router, shorten
from router.telemetry import CONTENT_TYPE, Metrics

log = logging.getLogger(__name__)
ROUTER_MODEL = "erp"
_KNOBS = {"lambda": "lambda_", "max_cost": "max_cost"}
_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in [
        (400, "invalid request: malformed body, unknown parameter, bad erp: knobs"),
        (401, "missing or wrong API key"),
        (404, "unknown model"),
        (413, "body or conversation too large"),
        (429, "the API key's budget cannot cover the request"),
        (502, "every upstream attempt failed"),
        (503, "budget store unreachable and the outage allowance spent"),
    ]
}


@dataclass(frozen=True)
class ClientKey:
    """An accepted API key's configured name (None for the unnamed keys of ``api_keys_env``) and budget."""

    name: str | None
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
    """Accepted API keys from the registry and from ``settings.api_keys_env``; empty means no auth.

    Keys from the environment variable have no name: their spend is not counted per key, and no label,
    log line or metric is ever derived from the secret itself.
    """
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
        keys.setdefault(secret, ClientKey(None))
    return keys


def parse_target(model: str) -> Target:
    """``erp``, ``erp:lambda=X,max_cost=Y`` (bad knobs are 400), or a name the router resolves (or answers 404)."""
    if model == ROUTER_MODEL:
        return Target()
    if not model.startswith(ROUTER_MODEL + ":"):
        return Target(model=model)
    knobs: dict[str, float] = {}
    for part in model[len(ROUTER_MODEL) + 1 :].split(","):
        name, sep, value = (piece.strip() for piece in part.partition("="))
        if not sep or name not in _KNOBS or _KNOBS[name] in knobs:
            raise InvalidRequestError(
                f"bad router parameter {shorten(part)!r} in model {shorten(model)!r}; expected erp:lambda=X "
                "and/or max_cost=Y, each once, comma-separated",
                param="model",
            )
        try:
            knobs[_KNOBS[name]] = float(value)
        except ValueError:
            raise InvalidRequestError(
                f"{name} must be a number, got {shorten(value)!r} in model {shorten(model)!r}", param="model"
            ) from None
    return Target(**knobs)


def routing_headers(record: RoutingRecord) -> dict[str, str]:
    headers = {
        "x-erp-request-id": record.request_id,
        "x-erp-model": record.model or record.chosen,
        "x-erp-attempts": str(len(record.attempts)),
    }
    arm = (record.model or record.chosen).partition(ARM_SEPARATOR)[2]
    if arm:
        headers["x-erp-arm"] = arm
    candidate = record.candidate(record.model or record.chosen)
    if record.routed and candidate is not None:
        headers["x-erp-expected-reward"] = f"{candidate.expected_reward:.6g}"
        headers["x-erp-predicted-cost-usd"] = f"{candidate.predicted_cost_usd:.6g}"
        headers["x-erp-lambda"] = f"{record.lambda_:g}"
        headers["x-erp-decision-ms"] = f"{record.decision_ms:.3f}"
    return headers


def validation_error(errors: list[dict]) -> InvalidRequestError:
    """The first pydantic error as OpenAI words it: an unknown parameter is named, a bad value explained."""
    error = errors[0]
    loc = [str(part) for part in error.get("loc", ()) if part != "body"]
    param = ".".join(loc) or None
    if error.get("type") == "extra_forbidden":
        return InvalidRequestError(f"Unrecognized request argument supplied: {shorten(param or '')}", param=param)
    if error.get("type") == "json_invalid":
        return InvalidRequestError(f"the request body is not valid JSON: {error.get('ctx', {}).get('error', '')}")
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    return InvalidRequestError(f"{param or 'body'}: {shorten(message, 300)}", param=param)


@dataclass(frozen=True)
class Proxy:
    """What the app's routes share: the router, the metrics and the accepted client keys."""

    router: Router
    metrics: Metrics
    keys: dict[str, ClientKey]


def _proxy(request: Request) -> Proxy:
    return request.app.state.proxy


async def authenticate(request: Request) -> ClientKey | None:
    """The caller's key (None when auth is off); 401 when it is missing or wrong."""
    keys = _proxy(request).keys
    if not keys:
        return None
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("You didn't provide an API key; send it as 'Authorization: Bearer KEY'.")
    for secret, client in keys.items():
        if hmac.compare_digest(secret.encode(), token.strip().encode()):
            return client
    raise AuthError("Incorrect API key provided.")


routes = APIRouter()


@routes.post("/v1/chat/completions", responses=_ERRORS)
async def chat_completions(
    chat: ChatCompletionRequest, request: Request, client: ClientKey | None = Depends(authenticate)
) -> Response:
    """An OpenAI chat completion, routed (``erp``, ``erp:lambda=X,max_cost=Y``) or sent to a named model or arm."""
    router = _proxy(request).router
    target = parse_target(chat.model)
    result = await router.acomplete(
        [message.model_dump(exclude_none=True) for message in chat.messages],
        model=target.model,
        lambda_=target.lambda_,
        max_cost=target.max_cost,
        stream=chat.stream,
        spend_key=client.name if client else None,
        budget_usd=client.budget_usd if client else None,
        **chat.forwarded(),
    )
    headers = routing_headers(result.record)
    if isinstance(result, RoutedCompletion):
        return Response(result.response.model_dump_json(), media_type="application/json", headers=headers)
    events = _server_sent_events(result)
    # A client that disconnects cancels the response while the generators sit at a yield, or before the first
    # event is sent; the background task (which Starlette runs after a disconnect under ASGI 2.3, as uvicorn
    # speaks) closes them, and settles a routed stream that was never started, so its spend is settled at once.
    return StreamingResponse(
        events, media_type="text/event-stream", headers=headers, background=BackgroundTask(_close, events, result)
    )


async def _close(events: AsyncGenerator[str, None], stream: AsyncRoutedStream) -> None:
    try:
        await events.aclose()
    finally:
        await stream.aclose()


@routes.get("/v1/models", responses=_ERRORS)
async def list_models(request: Request, _: ClientKey | None = Depends(authenticate)) -> ModelList:
    router = _proxy(request).router
    owners = {name.partition(ARM_SEPARATOR)[0]: e.litellm_model.split("/")[0] for name, e in router.entries.items()}
    cards = [ModelCard(id=ROUTER_MODEL, owned_by="erp-router")]
    cards += [ModelCard(id=name, owned_by=owners[name.partition(ARM_SEPARATOR)[0]]) for name in router.names]
    return ModelList(data=cards)


@routes.get("/healthz")
async def healthz(request: Request) -> Health:
    proxy = _proxy(request)
    store = await asyncio.to_thread(proxy.router.store.health)
    proxy.metrics.store_degraded.set(store.redis == "down")
    status = "degraded" if store.redis == "down" else "ok"
    return Health(status=status, live=True, ready=True, models=len(proxy.router.entries), store=store)


@routes.get("/metrics", include_in_schema=False)
async def prometheus_metrics(request: Request) -> Response:
    proxy = _proxy(request)
    if isinstance(proxy.router.store, FailoverStore):
        proxy.metrics.store_degraded.set(proxy.router.store.degraded)
    return Response(proxy.metrics.exposition(), media_type=CONTENT_TYPE)


@routes.get("/openapi.json", include_in_schema=False)
async def openapi_schema(request: Request, _: ClientKey | None = Depends(authenticate)) -> JSONResponse:
    return JSONResponse(request.app.openapi())


def _error_handlers(app: FastAPI, metrics: Metrics) -> None:
    """Every error as an OpenAI-style body with its status, counted in the metrics; never a traceback."""

    def error_response(error: RoutingError | ErrorResponse, status: int, headers: dict | None = None) -> JSONResponse:
        body = error.body() if isinstance(error, RoutingError) else error
        metrics.http_errors.labels(str(status), body.error.code or body.error.type).inc()
        return JSONResponse(body.model_dump(mode="json"), status_code=status, headers=headers)

    @app.exception_handler(RoutingError)
    async def on_routing_error(_: Request, exc: RoutingError) -> JSONResponse:
        headers = {"www-authenticate": "Bearer"} if isinstance(exc, AuthError) else None
        if exc.status >= 500:
            log.warning("request failed: %s", exc)
        return error_response(exc, exc.status, headers)

    @app.exception_handler(HTTPException)
    async def on_http_error(_: Request, exc: HTTPException) -> JSONResponse:
        code = {413: "request_too_large", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        message = str(exc.detail)
        if exc.status_code == 400:
            message = "the request body is not valid JSON, or nests too deeply to parse"
        body = ErrorResponse(error=ErrorBody(message=message, type="invalid_request_error", code=code))
        return error_response(body, exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        error = validation_error(list(exc.errors()))
        return error_response(error, error.status)

    @app.exception_handler(Exception)
    async def on_unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error while serving a request")
        body = ErrorResponse(error=ErrorBody(message="internal error of the router", type="server_error"))
        return error_response(body, 500)


def create_app(router: Router, metrics: Metrics | None = None) -> FastAPI:
    """The proxy app over a router; its metrics observe every request the router finishes (a record hook)."""
    metrics = metrics or Metrics()
    router.subscribe(metrics.observe)
    app = FastAPI(
        title="erp-router",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        max_body_size=8 * router.settings.max_prompt_chars + 2**20,
    )
    app.state.proxy = Proxy(router, metrics, client_keys(router.settings))
    _error_handlers(app, metrics)
    app.include_router(routes)
    return app


async def _server_sent_events(stream: AsyncIterable[Any]) -> AsyncGenerator[str, None]:
    """OpenAI chunk events, then [DONE]; a mid-stream failure ends with an error event instead.

    Closing this generator closes the routed stream too, so its spend is settled however the response ends.
    """
    chunks = aiter(stream)
    try:
        async for chunk in chunks:
            yield f"data: {chunk.model_dump_json(exclude_none=True)}\n\n"
    except RoutingError as exc:
        yield f"data: {exc.body().model_dump_json(exclude_none=True)}\n\n"
        return
    finally:
        # Shielded: closed from a cancelled scope, where every await is cancelled at once, the routed stream's
        # close (which settles its record and spend) must still run.
        with anyio.CancelScope(shield=True):
            await chunks.aclose()
    yield "data: [DONE]\n\n"


def serve(registry: str | Path, host: str = "127.0.0.1", port: int = 8000) -> None:
    """``erp serve``: load the registry's pool and run the proxy with uvicorn (state in Redis if $REDIS_URL)."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    router = Router.from_registry(registry)
    app = create_app(router)
    log.info("erp proxy: %d models, store %s", len(router.entries), router.store.health().backend)
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)
