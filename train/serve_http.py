"""forge serve's HTTP edge: what a request must pass before it reaches the model, what it
asks for (Ask), the shapes of what goes back, and the responses that make sure the model lets
go of a request whose client has left.

Checked before any work is done, cheapest first:
  - the body's size, before it is read (--max-body; 413);
  - JSON shape and every field: a field forge serve honours is checked, metadata that changes
    no output (user, metadata, ...) is accepted, a field at the one value that changes nothing
    (presence_penalty 0, tools [], response_format text, ...) is accepted, and anything else,
    unknown fields included, is a 400 naming it: nothing is ignored in silence;
  - text that cannot be encoded as UTF-8 (a lone surrogate such as "\\ud800", which the
    tokenizer cannot take) and content parts that are not text, each a 400 naming the field;
  - the prompt's length in characters, before it is tokenized: tokenizing a 50 MB prompt takes
    gigabytes, and no prompt of more than CHARS_PER_TOKEN characters per token of the model's
    context can fit it anyway; then its length in tokens plus max_tokens against the context;
  - last, the model it names: anything but the served model's id is a 404 (model_not_found);
    a request that names none gets the served model.

Imported by create_app only, since starlette is an optional dependency (forge-instruct[serve]).
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
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
    code: str | None = None

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class TooLarge(BadRequest):
    status = 413


def log_line(text: str) -> None:
    """One line on the server's stderr (forge's own words: not subject to logging's levels)."""
    print(f"forge serve: {' '.join(text.split())[:500]}", file=sys.stderr, flush=True)


def error(
    status: int, message: str, kind: str, param: str | None = None, code: str | None = None
) -> Response:
    """An OpenAI-style error body. ASCII-escaped JSON, so echoing text that cannot be encoded
    as UTF-8 can never fail while answering."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return Response(json.dumps(body), status_code=status, media_type="application/json")


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


# ---- what a request asks for ---------------------------------------------------------------

MAX_N = 16  # choices per prompt: n sampled rows decode together in one batch
MAX_LOGPROBS = 20  # alternatives per token (OpenAI's limit for top_logprobs)
MAX_TOKENS = 32768

# What forge serve does with each field of a request. A field it does not know is refused with
# a 400 naming it: a parameter ignored in silence is one its client believes it got.
HONOURED = {
    "model", "stream", "stream_options", "max_tokens", "max_completion_tokens", "temperature",
    "top_p", "n", "stop", "seed",
}  # fmt: skip
HONOURED_CHAT = {"messages", "logprobs", "top_logprobs"}
HONOURED_COMPLETIONS = {"prompt", "echo", "logprobs"}
# Accepted and not used: they describe the caller or the request and change no output.
METADATA = {
    "user",
    "metadata",
    "service_tier",
    "safety_identifier",
    "prompt_cache_key",
    "parallel_tool_calls",
}
# Accepted (as is null) at the one value that changes nothing; any other value is refused.
NEUTRAL: dict[str, tuple[object, str]] = {
    "presence_penalty": (0, "presence penalties are not implemented"),
    "frequency_penalty": (0, "frequency penalties are not implemented"),
    "logit_bias": ({}, "logit_bias is not implemented"),
    "tools": ([], "forge serve does no tool calling"),
    "functions": ([], "forge serve does no function calling"),
    "tool_choice": ("none", "forge serve does no tool calling"),
    "function_call": ("none", "forge serve does no function calling"),
    "response_format": ({"type": "text"}, "forge serve answers in plain text only"),
    "modalities": (["text"], "forge serve answers in text only"),
    "store": (False, "forge serve stores no completions"),
    "best_of": (1, "best_of is not implemented (n samples are returned as they are)"),
    "suffix": ("", "the model only continues a prompt (no suffix to fill up to)"),
    "echo": (False, "echo is a /v1/completions parameter"),  # chat only: completions honours it
}
NO_OP = {"tool_choice": ("none", "auto"), "function_call": ("none", "auto")}  # "auto" without tools is "none"


class NotFound(BadRequest):
    status = 404
    code = "model_not_found"


def check_fields(body: dict, chat: bool) -> None:
    known = HONOURED | (HONOURED_CHAT if chat else HONOURED_COMPLETIONS)
    for key, value in body.items():
        if key in known or key in METADATA:
            continue
        if key in NEUTRAL:
            neutral, why = NEUTRAL[key]
            if value is None or value == neutral or value in NO_OP.get(key, ()):
                continue
            raise BadRequest(f"{key}={json.dumps(value)[:80]} is refused: {why}", key)
        raise BadRequest(
            f"{key} is not a parameter forge serve knows: it refuses what it would otherwise ignore "
            f"({'/v1/chat/completions' if chat else '/v1/completions'} takes "
            f"{', '.join(sorted(known - {'model'}))})",
            key,
        )


def _number(body: dict, key: str, default, lo: float, hi: float, kind=float):
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not (lo <= value <= hi):
        raise BadRequest(f"{key} must be a number in [{lo}, {hi}], got {value!r}", key)
    if kind is int and int(value) != value:
        raise BadRequest(f"{key} must be an integer, got {value!r}", key)
    return kind(value)


def _flag(body: dict, key: str) -> bool:
    value = body.get(key)
    if value is not None and not isinstance(value, bool):
        raise BadRequest(f"{key} must be true or false, got {json.dumps(value)[:40]}", key)
    return bool(value)


@dataclass
class Ask:
    """A checked request: its prompts as tokens and everything that shapes the choices."""

    chat: bool
    prompts: list[list[int]]
    texts: list[str]  # each prompt as text, for echo ("" unless echo)
    n: int
    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    stop: list[str]
    stream: bool = False
    include_usage: bool = False
    echo: bool = False
    logprobs: int | None = None  # alternatives per token; None: no logprobs
    model: str | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def generation(self) -> dict:
        """Options for forge.train.infer's generate/stream_tokens (stop strings are cut by the server)."""
        return {"max_new_tokens": self.max_tokens, "temperature": self.temperature, "top_p": self.top_p,
                "seed": self.seed}  # fmt: skip


def parse(loaded: Loaded, body: dict, chat: bool) -> Ask:
    """Check a request, cheapest first, and say what it asks for. The model it names is checked
    last (a 404), after every other check, so that a malformed request is told what is wrong
    with it whichever model it names."""
    check_fields(body, chat)
    stop = body.get("stop") or []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise BadRequest("stop must be a string or a list of strings", "stop")
    for i, s in enumerate(stop):
        _text(s, "stop" if len(stop) == 1 else f"stop[{i}]", "a string")
    temperature = _number(body, "temperature", 0.0, 0.0, 2.0)
    stream, echo = _flag(body, "stream"), (False if chat else _flag(body, "echo"))
    ask = Ask(
        chat=chat,
        prompts=[],
        texts=[],
        n=_number(body, "n", 1, 1, MAX_N, int),
        max_tokens=_max_tokens(body, echo),
        # so small a temperature is greedy decoding (and sampling with it overflows)
        temperature=0.0 if temperature < GREEDY_BELOW else temperature,
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0),
        seed=_number(body, "seed", 0, 0, 2**31 - 1, int),
        stop=[s for s in stop if s],
        stream=stream,
        echo=echo,
    )
    options = body.get("stream_options")
    if options is not None:
        if not stream:
            raise BadRequest("stream_options is only for a stream (stream: true)", "stream_options")
        if not isinstance(options, dict):
            raise BadRequest("stream_options must be an object", "stream_options")
        for key in options:
            if key not in ("include_usage", "include_obfuscation"):
                raise BadRequest(f"stream_options.{key} is not known to forge serve", f"stream_options.{key}")
            _flag(
                options, key
            )  # include_obfuscation pads chunks against network side channels: not needed here
        ask.include_usage = bool(options.get("include_usage"))
    if chat:
        if _flag(body, "logprobs"):
            ask.logprobs = _number(body, "top_logprobs", 0, 0, MAX_LOGPROBS, int)
        elif body.get("top_logprobs") is not None:
            raise BadRequest("top_logprobs needs logprobs: true", "top_logprobs")
    elif body.get("logprobs") is not None:
        ask.logprobs = _number(body, "logprobs", 0, 0, MAX_LOGPROBS, int)
    if ask.logprobs is not None and stream:
        raise BadRequest("logprobs are not sent in a stream: ask for them with stream: false", "logprobs")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequest("model must be a string", "model")
    ask.model = model
    if chat:
        ask.prompts, fields = [chat_prompt(loaded, body)], ["messages"]
        ask.texts = [""]
    else:
        ask.prompts, ask.texts, fields = completion_prompts(loaded, body.get("prompt"), echo)
    limit = loaded.context_length
    for prompt, field in zip(ask.prompts, fields, strict=True):
        if len(prompt) + ask.max_tokens > limit:
            raise BadRequest(
                f"the prompt ({len(prompt)} tokens) plus max_tokens ({ask.max_tokens}) exceed "
                f"the model's context length of {limit} tokens",
                field,
            )
    if model is not None and model != loaded.name:
        raise NotFound(
            f"the model {model!r} does not exist here: this server serves {loaded.name!r} (GET /v1/models)",
            "model",
        )
    return ask


def _max_tokens(body: dict, echo: bool) -> int:
    """max_completion_tokens, or its older name max_tokens (the same number if both are sent).
    0 only with echo: the prompt is scored and nothing generated."""
    given = {k: body[k] for k in ("max_completion_tokens", "max_tokens") if body.get(k) is not None}
    if len(set(map(repr, given.values()))) > 1:
        raise BadRequest(
            "max_tokens and max_completion_tokens differ: send one of them", "max_completion_tokens"
        )
    key = next(iter(given), "max_tokens")
    value = _number(body, key, 256, 0, MAX_TOKENS, int)
    if value == 0 and not echo:
        raise BadRequest(f"{key} must be at least 1 (0 only with echo: true, to score the prompt)", key)
    return value


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


def _too_long(loaded: Loaded, what: str, chars: int, field: str) -> BadRequest:
    return BadRequest(
        f"{what} {chars} characters, more than the {CHARS_PER_TOKEN * loaded.context_length} this server "
        f"tokenizes ({CHARS_PER_TOKEN} per token of the model's {loaded.context_length}-token context)",
        field,
    )


def _is_ids(value: object) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(t, int) and not isinstance(t, bool) for t in value)
    )


def completion_prompts(
    loaded: Loaded, value: object, echo: bool
) -> tuple[list[list[int]], list[str], list[str]]:
    """/v1/completions' prompt: a string, a list of strings, a list of token ids, or a list of
    lists of token ids (a batch: one choice, or n, per prompt) -> (token lists, texts for echo,
    the field each came from). A text's length in characters is checked before it is tokenized."""
    if isinstance(value, str) or _is_ids(value):
        items, fields = [value], ["prompt"]
    elif (
        isinstance(value, list)
        and value
        and (all(isinstance(x, str) for x in value) or all(map(_is_ids, value)))
    ):
        items, fields = value, [f"prompt[{i}]" for i in range(len(value))]
    else:
        raise BadRequest(
            "prompt must be a non-empty string, a list of strings, a list of token ids, or a list of "
            "lists of token ids",
            "prompt",
        )
    limit = CHARS_PER_TOKEN * loaded.context_length
    vocab = vocabulary_size(loaded)
    prompts, texts = [], []
    for item, field in zip(items, fields, strict=True):
        if isinstance(item, str):
            text = _text(item, field, "a non-empty string")
            if not text:
                raise BadRequest(f"{field} must be a non-empty string", field)
            if len(text) > limit:
                raise _too_long(loaded, f"{field} holds", len(text), field)
            prompts.append(loaded.tokenizer(text)["input_ids"])
            texts.append(text if echo else "")
            continue
        bad = next((i for i, t in enumerate(item) if not 0 <= t < vocab), None)
        if bad is not None:
            raise BadRequest(
                f"{field}[{bad}] = {item[bad]} is not a token id of this model (0 to {vocab - 1})", field
            )
        prompts.append(list(item))
        texts.append(loaded.tokenizer.decode(item) if echo else "")
    return prompts, texts, fields


def vocabulary_size(loaded: Loaded) -> int:
    try:
        return int(loaded.model.get_input_embeddings().num_embeddings)
    except (AttributeError, TypeError):
        return int(getattr(loaded.model.config, "vocab_size", 0) or len(loaded.tokenizer))


def chat_prompt(loaded: Loaded, body: dict) -> list[int]:
    """`messages` rendered with the model's template, as tokens. Content is a string or a list of
    text parts (joined with newlines); its length in characters is checked before tokenizing."""
    limit = CHARS_PER_TOKEN * loaded.context_length
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list", "messages")
    chars, plain = 0, []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise BadRequest(f"messages[{i}] must be an object with a role and content", f"messages[{i}]")
        role = "system" if m.get("role") == "developer" else m.get("role")
        if role not in ("system", "user", "assistant"):
            raise BadRequest(
                f"messages[{i}].role must be system, developer, user or assistant, got "
                f"{json.dumps(m.get('role'))[:40]} (forge serve does no tool calling)",
                f"messages[{i}].role",
            )
        for key, value in m.items():
            if key not in ("role", "content") and value not in (None, [], ""):
                raise BadRequest(
                    f"messages[{i}].{key} is not supported by forge serve", f"messages[{i}].{key}"
                )
        field = f"messages[{i}].content"
        content = _content(m.get("content"), field)
        if len(content) > limit:
            raise _too_long(loaded, f"{field} holds", len(content), field)
        chars += len(content) + CHARS_PER_TOKEN  # each message adds a token or more of template
        if chars > limit:
            raise _too_long(loaded, f"the {len(messages)} messages hold", chars, "messages")
        plain.append({"role": role, "content": content})
    try:
        return build_prompt(loaded, record_from_messages(plain))
    except ValueError as e:
        raise BadRequest(str(e), "messages") from None


def _content(value: object, field: str) -> str:
    if not isinstance(value, list):
        return _text(value, field, "a string or a list of text parts")
    texts = []
    for j, part in enumerate(value):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text":
            raise BadRequest(
                f"{field}[{j}] is a {json.dumps(kind)[:40]} part: forge serve takes text parts only "
                '({"type": "text", "text": ...})',
                f"{field}[{j}].type",
            )
        texts.append(_text(part.get("text"), f"{field}[{j}].text", "a string"))
    return "\n".join(texts)


# ---- what goes back: tokens as text and bytes, log-probabilities ------------------------------


def _byte_decoder() -> dict[str, int]:
    """Byte-level BPE's printable stand-ins for bytes (GPT-2's bytes_to_unicode), reversed."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes, extra = list(kept), 0
    for b in range(256):
        if b not in kept:
            kept.append(b)
            codes.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(kept, codes, strict=True)}


class TokenText:
    """A token as a logprobs block shows it: its bytes, and its text (`bytes:\\xe4\\xbd` when the
    bytes are part of a character, as OpenAI writes them)."""

    def __init__(self, tokenizer):
        self.tokenizer, self.cache = tokenizer, {}
        decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
        self.byte_level = type(decoder).__name__ == "ByteLevel" or "ByteLevel" in repr(decoder)[:200]
        self.bytes_of = _byte_decoder()
        # a special token (the BOS a tokenizer puts before a prompt) is listed, but writes no text
        self.special = set(getattr(tokenizer, "all_special_ids", []))

    def __call__(self, token: int) -> tuple[str, bytes]:
        found = self.cache.get(token)
        if found is None:
            raw = self._bytes(token)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = "bytes:" + "".join(f"\\x{b:02x}" for b in raw)
            found = self.cache[token] = (text, raw)
        return found

    def _bytes(self, token: int) -> bytes:
        piece = self.tokenizer.convert_ids_to_tokens(token) or ""
        if self.byte_level and piece and all(c in self.bytes_of for c in piece):
            return bytes(self.bytes_of[c] for c in piece)
        hexed = re.fullmatch(r"<0x([0-9A-Fa-f]{2})>", piece)  # sentencepiece's byte fallback
        if hexed:
            return bytes([int(hexed[1], 16)])
        if "\u2581" in piece:  # sentencepiece writes a leading space as ▁, which decode drops
            return piece.replace("\u2581", " ").encode("utf-8")
        return self.tokenizer.decode([token]).encode("utf-8")


def _logprob(value: float) -> float:
    return max(value, -9999.0)  # -inf is not JSON; OpenAI writes -9999.0 for "never"


def legacy_logprobs(names: TokenText, first: int | None, scored: list) -> dict:
    """/v1/completions' logprobs: tokens, token_logprobs, top_logprobs (the asked-for number of
    most likely tokens, plus the chosen one, as OpenAI's legacy format has it) and text_offset
    (where each token's text starts in the choice's text: a special token such as the BOS
    before a prompt adds none). `first`: the echoed prompt's first token, which nothing
    predicts (null log-probability)."""
    tokens, logprobs, tops, offsets, seen = [], [], [], [], b""
    if first is not None:
        text, raw = names(first)
        tokens.append(text)
        logprobs.append(None)
        tops.append(None)
        offsets.append(0)
        seen = b"" if first in names.special else raw
    for s in scored:
        text, raw = names(s.token)
        offsets.append(len(seen.decode("utf-8", "ignore")))
        seen += b"" if s.token in names.special else raw
        tokens.append(text)
        logprobs.append(_logprob(s.logprob))
        top: dict[str, float] = {}
        for t, lp in s.top:
            top.setdefault(names(t)[0], _logprob(lp))
        top.setdefault(text, _logprob(s.logprob))
        tops.append(top)
    return {"tokens": tokens, "token_logprobs": logprobs, "top_logprobs": tops, "text_offset": offsets}


def chat_logprobs(names: TokenText, scored: list) -> dict:
    """/v1/chat/completions' logprobs: {"content": [{token, logprob, bytes, top_logprobs}]}."""

    def entry(token: int, logprob: float) -> dict:
        text, raw = names(token)
        return {"token": text, "logprob": _logprob(logprob), "bytes": list(raw)}

    return {
        "content": [
            {**entry(s.token, s.logprob), "top_logprobs": [entry(t, lp) for t, lp in s.top]} for s in scored
        ]
    }


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
