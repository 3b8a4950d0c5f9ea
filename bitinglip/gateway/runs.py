"""One inference request as one task: queue it, wait for it or stream it, answer in OpenAI's
shapes, and cancel it when the client goes away.

The task is submitted with the gateway's priority, above batch jobs, by the bridge's thread
(which refuses with 429 when `max_queued` interactive tasks already wait). Until the first
output (streaming) or the end (not streaming) the request watches for the client hanging up;
once streaming, Starlette's StreamingResponse does, and cancels the generator. Either way the
task is canceled. A failure before any output is answered with a status and an error object; a
failure after the stream started is one `data: {"error": ...}` event.

What a task's error says (host paths, stderr tails, host names) is for the operator: the client
gets a generic message with the task's id to give them (`bitinglip tasks show ID` has the rest),
and a known cause the request itself can fix (a prompt longer than the context) in plain words.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from bitinglip.config_sections import GatewayConfig
from bitinglip.control import ControlPlane, Task, TaskSpec, TaskState
from bitinglip.errors import BitinglipError, InputError
from bitinglip.gateway import catalog, shapes
from bitinglip.gateway.bodies import ApiRequest
from bitinglip.gateway.bridge import Bridge, Event, Watch
from bitinglip.gateway.errors import ApiError
from bitinglip.gateway.widths import Widths

log = logging.getLogger(__name__)
RETRY_AFTER_S = 1
# error kinds of a failed task that are the fleet's fault, not the request's
_FLEET_ERRORS = frozenset({"missing_capability", "invalid_gguf", "unsupported"})
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# what a failed task's error may say that the client can act on: (found in the error, said)
_CLIENT_CAUSES = (
    ("exceed context window", "the prompt is longer than the model's context window"),
)


class ClientGone(Exception):
    """The client closed the connection before its answer."""


async def answer(
    bridge: Bridge, config: GatewayConfig, widths: Widths, request: Request, req: ApiRequest
) -> Response:
    queue: asyncio.Queue[Event] = asyncio.Queue()
    watch = Watch(asyncio.get_running_loop(), queue, want_output=req.stream)
    name, target = await bridge.call(lambda plane: catalog.resolve(plane, req.model, req.kind))
    if target is not None:  # on no host yet: pulled where it fits, then the task waits for it
        if not config.auto_pull:
            raise catalog.not_pulled(name)
        await catalog.pull(bridge, name, target)
    spec = TaskSpec(kind=req.kind, model=name, payload=req.payload, priority=config.priority)

    def submit(plane: ControlPlane) -> int:
        if req.endpoint == "embeddings":
            widths.check(plane, name, req.inputs)
        return _submit(bridge, config, plane, spec, watch)

    task_id = await bridge.call(submit)
    gone = asyncio.ensure_future(_disconnect(request))
    streaming = False
    try:
        event = await _next(queue, gone)
        while event.final is None and not (req.stream and event.chunks):
            event = await _next(queue, gone)
        if event.final is not None and event.final.state != TaskState.SUCCEEDED:
            raise _failure(event.final)
        created = int(time.time())
        headers = {"X-Bitinglip-Task": str(task_id)}
        if not req.stream:
            assert event.final is not None
            result = _result(event.final)
            if req.endpoint == "embeddings":
                vectors = result.get("embeddings") or [None]
                if isinstance(vectors[0], list):
                    widths.learn(name, len(vectors[0]))
                return JSONResponse(shapes.embeddings_body(req, result), headers=headers)
            body = shapes.completion_body(req, task_id, created, result)
            return JSONResponse(body, headers=headers)
        shape = shapes.StreamShape(req, task_id, created)
        streaming = True
        events = _sse(bridge, task_id, queue, shape, event)
        return StreamingResponse(
            events, media_type="text/event-stream", headers=headers | _SSE_HEADERS
        )
    except ClientGone:
        bridge.forget(task_id, cancel=True)
        return Response(status_code=499)
    except BaseException:
        if not streaming:
            bridge.forget(task_id, cancel=True)
        raise
    finally:
        gone.cancel()


def _submit(
    bridge: Bridge, config: GatewayConfig, plane: ControlPlane, spec: TaskSpec, watch: Watch
) -> int:
    """In the bridge's thread: refuse when the interactive queue is full, else queue and watch."""
    queued = plane.queued_ahead(config.priority, cap=config.max_queued)
    if queued >= config.max_queued:
        raise ApiError(
            429,
            f"{queued} interactive tasks are queued (gateway.max_queued is {config.max_queued});"
            " retry shortly",
            code="queue_full",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    try:
        task_id = plane.submit(spec)
    except InputError as exc:
        raise ApiError(400, str(exc)) from None
    except BitinglipError as exc:
        log.warning("a %s request could not be queued: %s", spec.kind, exc)
        raise ApiError(
            503, "the fleet cannot take this request now; the gateway's log says why"
        ) from None
    bridge.watch(plane, task_id, watch)
    return task_id


async def _sse(
    bridge: Bridge,
    task_id: int,
    queue: asyncio.Queue[Event],
    shape: shapes.StreamShape,
    first: Event,
) -> AsyncIterator[bytes]:
    """The stream's events; closing it early (the client left) cancels the task."""
    ended = False
    sent = skip = 0  # characters the client has, and those to drop from a rerun's output
    try:
        yield shape.start()
        event: Event | None = first
        while event is not None:
            if event.rerun:
                skip = sent
            for chunk in event.chunks:
                if skip:
                    chunk, skip = chunk[skip:], max(skip - len(chunk), 0)
                if chunk:
                    sent += len(chunk)
                    yield shape.text(chunk)
            if event.final is not None:
                ended = True
                if event.final.state == TaskState.SUCCEEDED:
                    yield shape.end(_result(event.final))
                else:
                    yield shapes.error_event(_failure(event.final).body())
                return
            event = await queue.get()
    finally:
        if not ended:
            bridge.forget(task_id, cancel=True)


async def _next(queue: asyncio.Queue[Event], gone: asyncio.Future[None]) -> Event:
    if not queue.empty():
        return queue.get_nowait()
    getter: asyncio.Future[Any] = asyncio.ensure_future(queue.get())
    await asyncio.wait((getter, gone), return_when=asyncio.FIRST_COMPLETED)
    if getter.done():
        event: Event = getter.result()
        return event
    getter.cancel()
    raise ClientGone


async def _disconnect(request: Request) -> None:
    """Returns when the client hangs up (the body is read already: nothing else can come)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _result(task: Task) -> dict[str, Any]:
    return task.result if isinstance(task.result, dict) else {"text": task.result}


def _failure(task: Task) -> ApiError:
    """The task's end as the client may see it (never its error text: that is the operator's)."""
    see = f"task {task.id}; the operator can see why with: bitinglip tasks show {task.id}"
    kind = task.error_kind
    if task.state == TaskState.FAILED and kind not in (*_FLEET_ERRORS, "unplaceable"):
        cause = next((said for found, said in _CLIENT_CAUSES if found in (task.error or "")), "")
        why = f": {cause}" if cause else ""
        return ApiError(400, f"the task failed{why} ({see})", code=kind or "task_failed")
    if task.state == TaskState.CANCELED:
        return ApiError(503, f"the task was canceled ({see})", code="task_canceled")
    if kind == "unplaceable":  # asked `immediate`: the model fits on no host now
        return ApiError(503, f"the model fits on no host now ({see})", code=kind)
    return ApiError(502, f"the task {task.state} ({see})", code=kind or "task_dead")
