"""The Starlette app: routes, API keys, body limits, and errors as OpenAI's error objects.

Routes: GET /v1/models (and /v1/models/{id}), POST /v1/completions, POST /v1/chat/completions,
POST /v1/embeddings, GET /health (no key needed: for load balancers; served from the bridge's
snapshot), GET /metrics. Before a body is read every request shows a Host this gateway answers
to and, for a POST, JSON (`guard`), then its key. A caller with no valid key (every caller, with
no keys configured) sees no host names: /health is the status alone, /metrics and /v1/models
leave out what is per host. Every refusal is an `ApiError` answered as `{"error": {...}}` and
logged in one line (INFO); an unexpected exception is logged with its traceback and answered 500
with the same shape, and the server goes on.
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
from bitinglip.gateway import bodies, catalog, guard, metrics, runs
from bitinglip.gateway.auth import Keys
from bitinglip.gateway.bodies import ApiRequest
from bitinglip.gateway.bridge import Bridge
from bitinglip.gateway.errors import ApiError, bad_request, error_body
from bitinglip.gateway.widths import Widths

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20  # far beyond any prompt a context window takes
DRAIN_LIMIT_BYTES = 64 << 20  # read (and drop) this much of a too-large body, so the 400 arrives
Handler = Callable[[Request], Awaitable[Response]]
Parser = Callable[[dict[str, Any], frozenset[str]], ApiRequest]


class Gateway:
    """The HTTP front of one bridge."""

    def __init__(
        self, bridge: Bridge, keys: Keys, config: GatewayConfig, bind: str = "127.0.0.1"
    ) -> None:
        self.bridge = bridge
        self.keys = keys
        self.config = config
        self.bind = bind
        self.models = frozenset(bridge.profile.models)
        self.widths = Widths()
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
        status, body = self.bridge.health if self._keyed(request) else self.bridge.health_brief
        return Response(body, status_code=status, media_type="application/json")

    async def metrics(self, request: Request) -> Response:
        requests, active = dict(self.requests), self.bridge.active
        per_host = self._keyed(request)
        text = await self.bridge.call(
            lambda plane: metrics.render(plane, self.config.priority, requests, active, per_host)
        )
        return Response(text, media_type=metrics.CONTENT_TYPE)

    async def list_models(self, request: Request) -> Response:
        listed = await self._models(request)
        return JSONResponse({"object": "list", "data": listed})

    async def get_model(self, request: Request) -> Response:
        name = request.path_params["model"]
        listed = await self._models(request)
        for model in listed:
            if model["id"] == name:
                return JSONResponse(model)
        raise ApiError(
            404, f"the model {name!r} does not exist", param="model", code="model_not_found"
        )

    def _infer(self, parse: Parser) -> Handler:
        async def handle(request: Request) -> Response:
            req = parse(bodies.parse_json(await read_body(request)), self.models)
            return await runs.answer(self.bridge, self.config, self.widths, request, req)

        return handle

    async def _models(self, request: Request) -> list[dict[str, Any]]:
        per_host = self._keyed(request)
        return await self.bridge.call(lambda plane: catalog.list_models(plane, per_host))

    def _keyed(self, request: Request) -> bool:
        """Whether the caller showed a valid API key (never, with no keys configured)."""
        return self.keys.enabled and self.keys.allows(request.headers.get("authorization"))

    # -- around every endpoint -------------------------------------------------------------

    def _refusal(self, request: Request, key: bool) -> ApiError | None:
        """Why the request is refused before its body is read (Host, key, Content-Type)."""
        try:
            guard.check_host(request.headers.get("host"), self.bind, self.keys.enabled)
            if key and not self.keys.allows(request.headers.get("authorization")):
                raise ApiError(
                    401,
                    "a valid API key is required: send `Authorization: Bearer KEY`",
                    code="invalid_api_key",
                )
            guard.check_json(request.method, request.headers.get("content-type"))
        except ApiError as exc:
            return exc
        return None

    def _endpoint(self, name: str, handler: Handler, key: bool = True) -> Handler:
        async def endpoint(request: Request) -> Response:
            try:
                refusal = self._refusal(request, key)
                if refusal is not None:
                    await drain(request)
                    raise refusal
                response = await handler(request)
            except ApiError as exc:
                log.info(
                    "%s %s: %d %s", request.method, request.url.path, exc.status, exc.message[:300]
                )
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
