"""The served model over HTTP, bounded: MLflow's own scoring app behind a guard.

``glomx serve`` (``make serve``) builds :func:`build_app`: the app ``mlflow models serve`` runs
(:func:`mlflow.pyfunc.scoring_server.init`), so the routes (``/invocations``, ``/ping``,
``/health``, ``/version``) and the request and reply formats are MLflow's. MLflow bounds none of
a request's size and echoes a malformed body in its error, so the guard in front of it adds:

- a body over ``GLOMX_SERVE_MAX_BODY_MB`` (default 64 MB: a batch of 32 of the challenge's
  largest patches, 1.4 MB each, in base64) is answered 413 and never held in memory;
- at most ``GLOMX_SERVE_MAX_CONCURRENT`` requests (default 1) are read and predicted at a time;
  the others wait with their body unread, so memory does not grow with the number of clients
  (a request past MLflow's timeout gets 504, and its prediction still holds its place);
- a JSON body that does not parse is answered 400 with the parser's reason, never the body;
- a column other than ``image`` is answered 400 naming it (MLflow would drop it unread);
- every error reply is one short JSON object ``{"error_code", "message"}``: MLflow's echo of
  the request and any stack trace are cut away.

After the last request in flight, freed memory goes back to the system (glibc ``malloc_trim``),
so the worker returns near its idle size. Pixels per image and request are bounded by the model
itself (:class:`glomx.tracking.pyfunc.GlomxModel`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import json
import re
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PyFuncModel, scoring_server

from glomx.errors import GlomxError
from glomx.tracking import connect
from glomx.tracking.pyfunc import (
    INPUT_REFUSAL,
    MAX_IMAGE_PIXELS,
    MAX_REQUEST_PIXELS,
    env_limit,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_BODY_MB = ("GLOMX_SERVE_MAX_BODY_MB", 64)  # (environment variable, default); whole MB
MAX_CONCURRENT = ("GLOMX_SERVE_MAX_CONCURRENT", 1)
ACCEPTED = "image"  # the one input column of a served glomx model
MESSAGE_CHARS = 500  # longest error message sent back
DRAIN_FACTOR = 4  # a body over the limit is read and dropped up to this many times the limit
NAMED_COLUMNS = 5  # undeclared columns named in a refusal; the rest are counted
# MLflow's prefix to a prediction error: "Failed to predict data '<the request>'. \nError: "
_ECHO = re.compile(r"^Failed to predict data .*\nError: ", re.DOTALL)  # to its last "Error: "


class ServeError(GlomxError, ValueError):
    """A limit set wrongly, or a model that cannot be served."""


class _Refused(Exception):
    """A request answered before it reaches MLflow: ``reply`` is ``(status, JSON body)``."""

    def __init__(self, reply: tuple[int, bytes]) -> None:
        super().__init__(reply[0])
        self.reply = reply


@dataclass(frozen=True)
class Limits:
    """What one server accepts, read once from the environment at start."""

    max_body: int  # bytes
    max_concurrent: int
    timeout_s: float  # to receive a body (MLflow's MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT)

    @classmethod
    def from_env(cls) -> Limits:
        """The limits the environment sets, each checked (the model's pixel limits too), so
        a bad value stops the server before the model loads."""
        try:
            for setting in (MAX_IMAGE_PIXELS, MAX_REQUEST_PIXELS):
                env_limit(setting)
            megabytes = env_limit(MAX_BODY_MB, "megabytes")
            concurrent = env_limit(MAX_CONCURRENT, "requests")
        except ValueError as err:
            raise ServeError(str(err)) from None
        timeout = float(scoring_server.MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT.get())
        return cls(megabytes * 1_000_000, concurrent, timeout)


class ColumnCheckedModel:
    """The pyfunc model as MLflow's scoring app sees it, refusing undeclared columns before
    MLflow's schema enforcement drops them unread, and running at most ``max_concurrent``
    predictions at once. That bound holds in the worker threads themselves: a request MLflow
    answers 504 on its timeout leaves its prediction running, and the next one waits for it."""

    def __init__(self, model: PyFuncModel, max_concurrent: int) -> None:
        self.model = model
        self.metadata = model.metadata
        self.running = threading.BoundedSemaphore(max_concurrent)

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
        columns = list(data) if isinstance(data, pd.DataFrame | dict) else []  # their names
        if extra := [str(c) for c in columns if c != ACCEPTED]:
            named = ", ".join(repr(c) for c in extra[:NAMED_COLUMNS])
            more = f" and {len(extra) - NAMED_COLUMNS} more" if len(extra) > NAMED_COLUMNS else ""
            raise MlflowException(
                f"column {named}{more} not accepted: {INPUT_REFUSAL}",
                error_code=INVALID_PARAMETER_VALUE,
            )
        with self.running:
            return self.model.predict(data, params=params)


def _release_memory() -> Callable[[], None]:
    """glibc's ``malloc_trim(0)``: hand freed heap pages back to the system; else a no-op."""
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    trim = getattr(libc, "malloc_trim", None)

    def release() -> None:
        if trim is not None:
            trim(0)

    return release


def error_reply(status: int, code: str, message: str) -> tuple[int, bytes]:
    """``(status, short JSON body)`` of an error reply."""
    if len(message) > MESSAGE_CHARS:
        message = message[: MESSAGE_CHARS - 1] + "…"
    return status, json.dumps({"error_code": code, "message": message}).encode()


def shortened(status: int, body: bytes) -> tuple[int, bytes]:
    """MLflow's error reply as :func:`error_reply`: its message without the echo of the
    request, no stack trace; a reply that is not MLflow's JSON keeps only its start."""
    try:
        answer = json.loads(body)
        code, message = str(answer["error_code"]), str(answer["message"])
    except (ValueError, TypeError, KeyError):
        code, message = (
            "BAD_REQUEST" if status < 500 else "INTERNAL_ERROR",
            body[:1000].decode("utf-8", "replace"),
        )
    return error_reply(status, code, _ECHO.sub("", message).strip())


def check_json(body: bytes) -> str | None:
    """Why ``body`` is not a JSON object, or None when it is."""
    try:
        parsed = json.loads(body)
    except UnicodeDecodeError as err:
        return f"the body is not UTF-8 text ({err.reason} at byte {err.start})"
    except json.JSONDecodeError as err:
        return f"the body is not valid JSON ({err.msg} at line {err.lineno} column {err.colno})"
    if not isinstance(parsed, dict):
        kind = type(parsed).__name__
        return f'the body must be a JSON object such as {{"dataframe_split": ...}}, not a {kind}'
    return None


async def _send_reply(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware bounding ``POST /invocations`` (see the module's docstring)."""

    def __init__(self, app: App, limits: Limits) -> None:
        self.app = app
        self.limits = limits
        self.slots = asyncio.Semaphore(limits.max_concurrent)
        self.in_flight = 0
        self.release_memory = _release_memory()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/invocations" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.limits.max_body:
            # a client waiting for `100 Continue` (curl above 1 MB) is answered without it
            if headers.get(b"expect", b"").lower() != b"100-continue":
                with contextlib.suppress(_Refused):
                    await self._body(receive)  # read and dropped
            return await _send_reply(send, *self._too_large())
        self.in_flight += 1
        try:
            async with self.slots:
                await self._invoke(scope, receive, send, headers)
        finally:
            self.in_flight -= 1
            if not self.in_flight:
                self.release_memory()

    def _too_large(self) -> tuple[int, bytes]:
        megabytes = self.limits.max_body // 1_000_000
        return error_reply(
            413,
            "REQUEST_LIMIT_EXCEEDED",
            f"the request body is over this server's limit of {megabytes} MB "
            f"({MAX_BODY_MB[0]}); send fewer images per request",
        )

    async def _body(self, receive: Receive) -> bytes:
        """The whole body, else :class:`_Refused`: over the limit (413), slower than the
        timeout (408) or the client gone. A body over the limit is still read to its end and
        dropped (up to :data:`DRAIN_FACTOR` times the limit), so that a client still sending
        reads the 413 instead of a broken connection."""
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.limits.timeout_s):
                while size <= DRAIN_FACTOR * self.limits.max_body:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise _Refused(error_reply(400, "BAD_REQUEST", "the client left"))
                    size += len(chunk := message.get("body", b""))
                    if size <= self.limits.max_body:
                        chunks.append(chunk)
                    else:
                        chunks.clear()
                    if not message.get("more_body"):
                        break
        except TimeoutError:
            reason = f"the request body took over {self.limits.timeout_s:g} s to arrive"
            raise _Refused(error_reply(408, "REQUEST_TIMEOUT", reason)) from None
        if size > self.limits.max_body:
            raise _Refused(self._too_large())
        return b"".join(chunks)

    async def _invoke(self, scope: Scope, receive: Receive, send: Send, headers: dict) -> None:
        try:
            body = await self._body(receive)
        except _Refused as refused:
            return await _send_reply(send, *refused.reply)
        content_type = headers.get(b"content-type", b"").split(b";")[0].strip()
        problem = content_type == b"application/json" and await asyncio.to_thread(check_json, body)
        if problem:
            return await _send_reply(send, *error_reply(400, "MALFORMED_REQUEST", problem))
        pending = [{"type": "http.request", "body": body, "more_body": False}]
        del body

        async def replay() -> Message:
            return pending.pop() if pending else await receive()

        await self.app(scope, replay, _ShortErrors(send))


class _ShortErrors:
    """An ASGI ``send`` that passes replies below 400 through and replaces an error reply's
    body with :func:`shortened`."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self.status = 0
        self.chunks: list[bytes] = []

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            if self.status < 400:
                await self.send(message)
        elif self.status < 400:
            await self.send(message)
        else:
            self.chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                await _send_reply(self.send, *shortened(self.status, b"".join(self.chunks)))


def build_app(model_uri: str) -> Guard:
    """MLflow's scoring app for the glomx model at ``model_uri`` (``models:/glomx@champion``,
    ``models:/glomx@lab-<name>``, a version or a ``runs:/`` URI) behind its :class:`Guard`."""
    limits = Limits.from_env()
    uri = connect()
    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except MlflowException as err:
        raise ServeError(
            f"cannot load {model_uri} from {uri}: {err.message}; `glomx champion` shows the "
            "champion, MLFLOW_TRACKING_URI chooses the store"
        ) from None
    checked = ColumnCheckedModel(model, limits.max_concurrent)
    # init uses only the model's metadata and predict, which the wrapper has
    return Guard(scoring_server.init(checked), limits)  # type: ignore[arg-type]
