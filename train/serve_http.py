"""forge serve's HTTP edge: what a request must pass before it reaches the model, and the
responses that make sure the model lets go of a request whose client has left.

Checked before any work is done, cheapest first:
  - the body's size, before it is read (--max-body; 413);
  - JSON shape, options, `n` (one choice per request), and text that cannot be encoded as UTF-8
    (a lone surrogate such as "\\ud800", which the tokenizer cannot take), each a 400 naming
    the field;
  - the prompt's length in characters, before it is tokenized: tokenizing a 50 MB prompt takes
    gigabytes, and no prompt of more than CHARS_PER_TOKEN characters per token of the model's
    context can fit it anyway.

Imported by create_app only, since starlette is an optional dependency (forge-instruct[serve]).
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from functools import wraps
from typing import TypeVar

import anyio
from starlette.concurrency import iterate_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Send

from forge.train.infer import GREEDY_BELOW, Loaded, build_prompt, record_from_messages

MAX_BODY = 4 * 1024 * 1024  # bytes: far more than any prompt a context holds, as JSON
# A token is rarely more than a few characters; 16 per token of context leaves room for long
# ones (runs of spaces, long words) while refusing what cannot fit long before tokenizing.
CHARS_PER_TOKEN = 16

T = TypeVar("T")


class BadRequest(ValueError):
    """A request forge serve refuses, answered with `status` and an OpenAI-style error body."""

    status = 400

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class TooLarge(BadRequest):
    status = 413


def log_line(text: str) -> None:
    """One line on the server's stderr (forge's own words: not subject to logging's levels)."""
    print(f"forge serve: {' '.join(text.split())[:500]}", file=sys.stderr, flush=True)


def error(status: int, message: str, kind: str, param: str | None = None) -> Response:
    """An OpenAI-style error body. ASCII-escaped JSON, so echoing text that cannot be encoded
    as UTF-8 can never fail while answering."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": None}}
    return Response(json.dumps(body), status_code=status, media_type="application/json")


def parse_size(text: str) -> int:
    """'4MB', '512KB', '1GB' or a plain number of bytes -> bytes (K, M and G are powers of 1024)."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]?)i?b?\s*", text.lower())
    if found is None:
        raise ValueError(f"{text!r} is not a size (give one like 4MB, 512KB or 1000000)")
    return int(float(found[1]) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[found[2]])


async def read_json(request: Request, limit: int) -> dict:
    """The request's JSON object. A body over `limit` bytes is refused before it is read when its
    Content-Length says so, and as soon as the bytes read pass `limit` otherwise (chunked)."""
    declared = request.headers.get("content-length", "")
    too_large = f"is over this server's limit of {limit} bytes (forge serve --max-body)"
    if declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"the request body ({int(declared)} bytes) {too_large}")
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise TooLarge(f"the request body {too_large}")
    try:
        body = json.loads(bytes(data) or b"{}")
    except (ValueError, RecursionError):  # RecursionError: thousands of nested brackets
        raise BadRequest("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


def _number(body: dict, key: str, default, lo: float, hi: float, kind=float):
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not (lo <= value <= hi):
        raise BadRequest(f"{key} must be a number in [{lo}, {hi}], got {value!r}", key)
    if kind is int and int(value) != value:
        raise BadRequest(f"{key} must be an integer, got {value!r}", key)
    return kind(value)


def options(body: dict) -> dict:
    """The generation options of a request, checked."""
    stop = body.get("stop") or []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise BadRequest("stop must be a string or a list of strings", "stop")
    n = body.get("n")
    if n is not None and (isinstance(n, bool) or n != 1):
        raise BadRequest(
            f"n must be 1, got {n!r}: forge serve answers one choice per request "
            "(send several requests, with different seeds, for more)",
            "n",
        )
    temperature = _number(body, "temperature", 0.0, 0.0, 2.0)
    return {
        "max_new_tokens": _number(body, "max_tokens", 256, 1, 32768, int),
        # so small a temperature is greedy decoding (and sampling with it overflows)
        "temperature": 0.0 if temperature < GREEDY_BELOW else temperature,
        "top_p": _number(body, "top_p", 1.0, 0.0, 1.0),
        "seed": _number(body, "seed", 0, 0, 2**31 - 1, int),
        "stop": stop,
    }


def _text(value: object, field: str, what: str) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{field} must be {what}", field)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise BadRequest(
            f"{field} is not valid text: character {e.start} is a lone surrogate "
            f"(\\u{ord(value[e.start]):04x}), which cannot be encoded as UTF-8",
            field,
        ) from None
    return value


def prompt_ids(loaded: Loaded, body: dict, chat: bool) -> list[int]:
    """The request's prompt as tokens: `messages` rendered with the model's template (chat), or
    `prompt` as it is. Its length in characters is checked before it is tokenized."""
    limit = CHARS_PER_TOKEN * loaded.context_length

    def too_long(what: str, chars: int, field: str) -> BadRequest:
        return BadRequest(
            f"{what} {chars} characters, more than the {limit} this server tokenizes "
            f"({CHARS_PER_TOKEN} per token of the model's {loaded.context_length}-token context)",
            field,
        )

    if not chat:
        text = _text(body.get("prompt"), "prompt", "a non-empty string")
        if not text:
            raise BadRequest("prompt must be a non-empty string", "prompt")
        if len(text) > limit:
            raise too_long("prompt holds", len(text), "prompt")
        return loaded.tokenizer(text)["input_ids"]
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list", "messages")
    chars = 0
    for i, m in enumerate(messages):
        if not (isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")):
            raise BadRequest("each message needs a role: system, user or assistant", f"messages[{i}].role")
        field = f"messages[{i}].content"
        content = _text(m.get("content"), field, "a string")
        if len(content) > limit:
            raise too_long(f"{field} holds", len(content), field)
        chars += len(content) + CHARS_PER_TOKEN  # each message adds a token or more of template
        if chars > limit:
            raise too_long(f"the {len(messages)} messages hold", chars, "messages")
    try:
        return build_prompt(loaded, record_from_messages(messages))
    except ValueError as e:
        raise BadRequest(str(e), "messages") from None


async def while_connected(request: Request, cancel: threading.Event, work: Awaitable[T]) -> T:
    """Await `work`, a generation running in another thread. If the client disconnects first,
    set `cancel`, so the model lets go of the request at its next decode step."""

    async def watch() -> None:
        # the body has been read: what the server receives next is the disconnect
        while (await request.receive())["type"] != "http.disconnect":
            pass
        cancel.set()

    watcher = asyncio.ensure_future(watch())
    try:
        return await work
    finally:
        watcher.cancel()


class EventStream(StreamingResponse):
    """Server-sent events from `lines`, a generator whose pieces come from the model. However
    the response ends (finished, client gone, failed), `cancel` is set, so the model stops at
    its next step, and `lines` is closed, so its `finally` blocks run now, not whenever the
    garbage collector gets to it (an unclosed generator holding the model wedged the server)."""

    def __init__(self, lines: Iterator[str], cancel: threading.Event):
        super().__init__(iterate_in_threadpool(lines), media_type="text/event-stream")
        self.lines, self.cancel = lines, cancel

    async def listen_for_disconnect(self, receive: Receive) -> None:
        try:
            await super().listen_for_disconnect(receive)
        finally:
            self.cancel.set()  # the client left: stop the model now, not once a piece is sent

    async def stream_response(self, send: Send) -> None:
        try:
            await super().stream_response(send)
        finally:
            self.cancel.set()
            # shielded: a disconnect arrives as cancellation, and this cleanup must still run.
            # No thread is inside `lines` now: starlette waits for a running next() to return.
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()
                await anyio.to_thread.run_sync(self.lines.close)


def answered(endpoint: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """`endpoint`, with any unexpected error answered as a 500 with an OpenAI-style error body and
    one line on stderr (no traceback); the server goes on serving."""

    async def run(request: Request) -> Response:
        try:
            return await endpoint(request)
        except ClientDisconnect:  # the client left while sending its body: nobody to answer
            return Response(status_code=400)
        except Exception as e:  # noqa: BLE001 - the one place unexpected errors end
            log_line(f"{request.method} {request.url.path} failed: {type(e).__name__}: {e}")
            message = f"the server failed on this request ({type(e).__name__}: {e})"[:500]
            return error(500, message, "server_error")

    return wraps(endpoint)(run)
