"""The Starlette app: routes, API keys, body limits, and errors as OpenAI's error objects.

Routes: GET /v1/models (and /v1/models/{id}), POST /v1/completions, POST /v1/chat/completions,
POST /v1/embeddings, GET /health (no key needed: for load balancers; served from the bridge's
snapshot), GET /metrics. Every refusal is an `ApiError` answered as `{"error": {...}}`; an
unexpected exception is logged and answered 500 with the same shape, and the server goes on.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bitinglip.config_sections import GatewayConfig
from bitinglip.gateway import bodies, catalog, metrics, runs
from bitinglip.gateway.auth import Keys
from bitinglip.gateway.bodies import ApiRequest
from bitinglip.gateway.bridge import Bridge
from bitinglip.gateway.errors import ApiError, bad_request, error_body

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20  # far beyond any prompt a context window takes
DRAIN_LIMIT_BYTES = 64 << 20  # read (and drop) this much of a too-large body, so the 400 arrives
Handler = Callable[[Request], Awaitable[Response]]
Parser = Callable[[dict[str, Any], frozenset[str]], ApiRequest]


class Gateway:
    """The HTTP front of one bridge."""

    def __init__(self, bridge: Bridge, keys: Keys, config: GatewayConfig) -> None:
        self.bridge = bridge
        self.keys = keys
        self.config = config
        self.models = frozenset(bridge.profile.models)
        self.requests: collections.Counter[tuple[str, int]] = collections.Counter()

    def app(self) -> Starlette:
        routes = [
            Route("/health", self._endpoint("health", self.health, key=False), methods=["GET"]),
            Route("/metrics", self._endpoint("metrics", self.metrics), methods=["GET"]),
            Route("/v1/models", self._endpoint("models", self.list_models), methods=["GET"]),
            Route(
                "/v1/models/{model:path}",
                self._endpoint("models", self.get_model),
                methods=["GET"],
            ),
            Route(
                "/v1/completions",
                self._endpoint("completions", self._infer(bodies.completion)),
                methods=["POST"],
            ),
            Route(
                "/v1/chat/completions",
                self._endpoint("chat", self._infer(bodies.chat)),
                methods=["POST"],
            ),
            Route(
                "/v1/embeddings",
                self._endpoint("embeddings", self._infer(bodies.embeddings)),
                methods=["POST"],
            ),
        ]
        return Starlette(routes=routes, exception_handlers={HTTPException: _http_error})

    # -- endpoints -------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        status, body = self.bridge.health
        return Response(body, status_code=status, media_type="application/json")

    async def metrics(self, request: Request) -> Response:
        requests, active = dict(self.requests), self.bridge.active
        text = await self.bridge.call(
            lambda plane: metrics.render(plane, self.config.priority, requests, active)
        )
        return Response(text, media_type=metrics.CONTENT_TYPE)

    async def list_models(self, request: Request) -> Response:
        listed = await self.bridge.call(catalog.list_models)
        return JSONResponse({"object": "list", "data": listed})

    async def get_model(self, request: Request) -> Response:
        name = request.path_params["model"]
        listed = await self.bridge.call(catalog.list_models)
        for model in listed:
            if model["id"] == name:
                return JSONResponse(model)
        raise ApiError(
            404, f"the model {name!r} does not exist", param="model", code="model_not_found"
        )

    def _infer(self, parse: Parser) -> Handler:
        async def handle(request: Request) -> Response:
            req = parse(bodies.parse_json(await read_body(request)), self.models)
            return await runs.answer(self.bridge, self.config, request, req)

        return handle

    # -- around every endpoint -------------------------------------------------------------

    def _endpoint(self, name: str, handler: Handler, key: bool = True) -> Handler:
        async def endpoint(request: Request) -> Response:
            try:
                if key and not self.keys.allows(request.headers.get("authorization")):
                    await drain(request)
                    raise ApiError(
                        401,
                        "a valid API key is required: send `Authorization: Bearer KEY`",
                        code="invalid_api_key",
                    )
                response = await handler(request)
            except ApiError as exc:
                response = error_response(exc)
            except Exception:  # the request's boundary: log it, answer 500
                log.exception("%s %s failed", request.method, request.url.path)
                response = JSONResponse(
                    error_body("the gateway failed on this request; see its log", "server_error"),
                    status_code=500,
                )
            self.requests[(name, response.status_code)] += 1
            return response

        return endpoint


def error_response(exc: ApiError) -> Response:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def read_body(request: Request) -> bytes:
    """The body, at most MAX_BODY_BYTES; a larger one is read on (up to a limit) and refused."""
    parts: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= MAX_BODY_BYTES:
            parts.append(chunk)
        elif size > DRAIN_LIMIT_BYTES:
            break
    if size > MAX_BODY_BYTES:
        raise bad_request(
            f"the request body is over {MAX_BODY_BYTES // (1 << 20)} MiB; send less",
            code="request_too_large",
        )
    return b"".join(parts)


async def drain(request: Request) -> None:
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > DRAIN_LIMIT_BYTES:
            return


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 and 405, as OpenAI error objects."""
    assert isinstance(exc, HTTPException)
    message = f"{request.method} {request.url.path}: {exc.detail}"
    return JSONResponse(
        error_body(message, "invalid_request_error", code=str(exc.status_code)),
        status_code=exc.status_code,
        headers=exc.headers,
    )
