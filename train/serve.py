"""forge serve: an OpenAI-compatible HTTP API and a chat page over one loaded model.

  GET  /                      the chat page (static/chat.html: plain HTML and JavaScript, no CDN)
  GET  /health                {"status": "ok", "model": NAME}
  GET  /v1/models             the one model
  POST /v1/chat/completions   messages -> a reply (stream: true -> server-sent events)
  POST /v1/completions        a raw text prompt -> a continuation (no template)

The model runs one forward pass at a time (a lock). Greedy non-streaming requests are
decoded together (Batcher, continuous batching): each joins the running batch at the next
token step and leaves when its reply is done, so a client that sends 8 requests at once, as
forge's model-powered stages do, gets them for far less than 8 times the cost. Greedy streams
are decoded in the same batch. Sampled requests (temperature > 0) run alone, so a seed
reproduces the same text whatever else the server is doing. The event loop stays free while
a generation runs in a worker thread. A client that disconnects mid-stream cancels its
generation. Bad requests get a 400 with an OpenAI-style error body, a wrong or missing key a 401.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

from train.infer import Decoder, Generation, Loaded, build_prompt, generate, record_from_messages, stream

STATIC = Path(__file__).resolve().parent / "static"


class BadRequest(ValueError):
    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


def _error(status: int, message: str, kind: str, param: str | None = None):
    from starlette.responses import JSONResponse

    body = {"error": {"message": message, "type": kind, "param": param, "code": None}}
    return JSONResponse(body, status_code=status)


def _number(body: dict, key: str, default, lo: float, hi: float, kind=float):
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not (lo <= value <= hi):
        raise BadRequest(f"{key} must be a number in [{lo}, {hi}], got {value!r}", key)
    if kind is int and int(value) != value:
        raise BadRequest(f"{key} must be an integer, got {value!r}", key)
    return kind(value)


def _options(body: dict) -> dict:
    stop = body.get("stop") or []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise BadRequest("stop must be a string or a list of strings", "stop")
    return {
        "max_new_tokens": _number(body, "max_tokens", 256, 1, 32768, int),
        "temperature": _number(body, "temperature", 0.0, 0.0, 2.0),
        "top_p": _number(body, "top_p", 1.0, 0.0, 1.0),
        "seed": _number(body, "seed", 0, 0, 2**31 - 1, int),
        "stop": stop,
    }


class Batcher:
    """Answers greedy requests together. One worker thread owns the model's batch: with a plain
    KV cache (most models) it runs continuous batching (train.infer.Decoder): a request joins at
    the next step, with no timer, and leaves as soon as its reply is done, so a short reply never
    waits for a long one. Otherwise (a cache that cannot be merged row by row: older transformers,
    Bloom's ALiBi, remote-code models, prompt-learning adapters) it runs one generate call per
    group of waiting requests with the same options. Greedy decoding does not
    depend on the batch a prompt lands in, apart from float rounding next to padded positions."""

    def __init__(
        self,
        loaded: Loaded,
        lock: threading.Lock,
        max_batch: int = 16,
        wait: float = 0.02,
        continuous: bool = True,
    ):
        self.loaded, self.lock, self.max_batch = loaded, lock, max_batch
        self.wait, self.expect = wait, 1
        self.decoder = Decoder(loaded) if continuous and Decoder.supported(loaded) else None
        self.waiting: queue.Queue = queue.Queue()
        # for /health: requests answered, decode steps run, the most requests decoded together
        self.requests = self.steps = self.largest = 0
        threading.Thread(target=self._work, name="forge-batcher", daemon=True).start()

    def submit(
        self, prompt: list[int], options: dict, emit=None, cancel: threading.Event | None = None
    ) -> Future:
        done: Future = Future()
        self.waiting.put((prompt, options, done, emit, cancel))
        return done

    def pieces(self, prompt: list[int], options: dict, cancel: threading.Event) -> Iterator[str]:
        """A greedy reply as text pieces while the batch decodes it (continuous batching only),
        cut by the same streamer the sampled path uses; setting `cancel` ends it at the next step."""
        import torch
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(self.loaded.tokenizer, skip_special_tokens=True)
        stops = self.loaded.stop_ids

        def emit(token: int) -> None:
            if token not in stops:
                streamer.put(torch.tensor([token]))

        done = self.submit(prompt, {**options, "stop": []}, emit=emit, cancel=cancel)
        done.add_done_callback(lambda _: streamer.end())
        yield from streamer
        if done.exception() is not None:
            raise done.exception()

    def _work(self) -> None:
        while True:
            if self.decoder is None:
                self._static_round()
            else:
                self._continuous_round()

    def _continuous_round(self) -> None:
        decoder = self.decoder
        arrivals = [] if decoder.active else [self.waiting.get()]  # idle: sleep until work comes
        while decoder.active + len(arrivals) < self.max_batch:
            try:
                arrivals.append(self.waiting.get_nowait())
            except queue.Empty:
                break
        try:
            for prompt, options, done, emit, cancel in arrivals:
                if done.set_running_or_notify_cancel():  # a request whose client left is dropped
                    with self.lock:
                        added = decoder.add(
                            done, prompt, options["max_new_tokens"], options["stop"], emit, cancel
                        )
                        self._answer(added)
            if decoder.active:
                with self.lock:
                    self.largest = max(self.largest, decoder.active)
                    self.steps += 1
                    self._answer(decoder.step())
        except BaseException as e:  # noqa: BLE001 - handed to every request in the batch
            for done in decoder.clear():
                done.set_exception(e)
            for _, _, done, _, _ in arrivals:
                if not done.done():  # not reached yet, or taken in before the failure
                    done.set_exception(e)

    def _answer(self, finished: list[tuple]) -> None:
        for done, result in finished:
            self.requests += 1
            done.set_result(result)

    def _static_round(self) -> None:
        batch = [self.waiting.get()]
        # Clients that just got their answers send their next requests a moment apart. So when
        # the last batch had n requests, wait (at most `wait` seconds) for n again; a client
        # sending one request at a time has n == 1 and never waits.
        deadline = time.monotonic() + self.wait
        while len(batch) < self.max_batch:
            left = deadline - time.monotonic() if len(batch) < self.expect else 0.0
            try:
                batch.append(self.waiting.get(timeout=left) if left > 0 else self.waiting.get_nowait())
            except queue.Empty:
                break
        self.expect = len(batch)
        groups: dict[tuple, list] = {}
        for item in batch:  # one generate call per set of options, whatever options exist
            key = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in sorted(item[1].items()))
            groups.setdefault(key, []).append(item[:3])  # streams never come here (no emit)
        for items in groups.values():
            self._run([i for i in items if i[2].set_running_or_notify_cancel()])

    def _run(self, items: list) -> None:
        if not items:
            return
        items.sort(key=lambda i: len(i[0]))  # similar lengths side by side: less padding
        try:
            with self.lock:
                results: list[Generation] = generate(self.loaded, [i[0] for i in items], **items[0][1])
            self.steps += max(len(r.tokens) for r in results)  # generate runs until its longest reply ends
            self.largest = max(self.largest, len(items))
        except BaseException as e:  # noqa: BLE001 - handed to every waiting request
            for _, _, done in items:
                done.set_exception(e)
            return
        self._answer([(done, result) for (_, _, done), result in zip(items, results, strict=True)])


def create_app(loaded: Loaded, api_key: str | None = None, max_batch: int = 16):
    from starlette.applications import Starlette
    from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
    from starlette.responses import FileResponse, JSONResponse, StreamingResponse
    from starlette.routing import Route

    lock = threading.Lock()  # one generate call at a time: streams and batches queue here
    batcher = Batcher(loaded, lock, max_batch)

    def authorized(request) -> bool:
        return not api_key or request.headers.get("authorization", "") == f"Bearer {api_key}"

    async def body_of(request) -> dict:
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            raise BadRequest("the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        return body

    def check_context(prompt: list[int], options: dict) -> None:
        limit = loaded.context_length
        if len(prompt) + options["max_new_tokens"] > limit:
            raise BadRequest(
                f"the prompt ({len(prompt)} tokens) plus max_tokens ({options['max_new_tokens']}) exceed "
                f"the model's context length of {limit} tokens",
                "messages",
            )

    def run_one(prompt: list[int], options: dict):
        with lock:
            return generate(loaded, [prompt], **options)[0]

    def streamed(prompt: list[int], options: dict, chunk, cancel: threading.Event):
        """SSE lines for one generation; runs in a worker thread. A greedy stream is decoded in
        the running batch; a sampled one runs alone, holding the lock."""
        stop = [s for s in options.pop("stop") if s]
        hold = max((len(s) for s in stop), default=1) - 1  # a stop string may span two pieces
        text, sent, produced = "", 0, 0
        in_batch = options["temperature"] == 0 and batcher.decoder is not None and max_batch > 1
        source = (
            batcher.pieces(prompt, options, cancel)
            if in_batch
            else stream(loaded, prompt, cancel=cancel, **options)
        )
        with contextlib.nullcontext() if in_batch else lock:
            for piece in source:
                text += piece
                produced += 1
                cuts = [text.find(s) for s in stop if s in text]
                if cuts:
                    if min(cuts) > sent:
                        yield f"data: {json.dumps(chunk(text[sent : min(cuts)], None))}\n\n"
                    cancel.set()
                    yield f"data: {json.dumps(chunk('', 'stop'))}\n\n"
                    yield "data: [DONE]\n\n"
                    return
                if len(text) - hold > sent:
                    yield f"data: {json.dumps(chunk(text[sent : len(text) - hold], None))}\n\n"
                    sent = len(text) - hold
            if len(text) > sent:
                yield f"data: {json.dumps(chunk(text[sent:], None))}\n\n"
            yield f"data: {json.dumps(chunk('', 'stop'))}\n\n"
            yield "data: [DONE]\n\n"

    async def completions(request, chat: bool):
        if not authorized(request):
            return _error(
                401, "invalid or missing API key (Authorization: Bearer KEY)", "authentication_error"
            )
        try:
            body = await body_of(request)
            options = _options(body)
            if chat:
                messages = body.get("messages")
                if not isinstance(messages, list) or not messages:
                    raise BadRequest("messages must be a non-empty list", "messages")
                for m in messages:
                    if not (isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")):
                        raise BadRequest("each message needs a role: system, user or assistant", "messages")
                    if not isinstance(m.get("content"), str):
                        raise BadRequest("each message needs a string content", "messages")
                try:
                    prompt = build_prompt(loaded, record_from_messages(messages))
                except ValueError as e:
                    raise BadRequest(str(e), "messages") from None
            else:
                text = body.get("prompt")
                if not isinstance(text, str) or not text:
                    raise BadRequest("prompt must be a non-empty string", "prompt")
                prompt = loaded.tokenizer(text)["input_ids"]
            check_context(prompt, options)
        except BadRequest as e:
            return _error(400, str(e), "invalid_request_error", e.param)
        created, rid = int(time.time()), f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        kind = "chat.completion" if chat else "text_completion"
        if body.get("stream"):

            def chunk(piece: str, finish: str | None) -> dict:
                if chat:
                    choice = {
                        "index": 0,
                        "delta": {"content": piece} if piece else {},
                        "finish_reason": finish,
                    }
                else:
                    choice = {"index": 0, "text": piece, "finish_reason": finish}
                return {"id": rid, "object": f"{kind}.chunk" if chat else kind, "created": created,
                        "model": loaded.name, "choices": [choice]}  # fmt: skip

            cancel = threading.Event()

            async def events():
                try:
                    async for line in iterate_in_threadpool(streamed(prompt, dict(options), chunk, cancel)):
                        yield line
                finally:
                    cancel.set()  # the client went away (or we are done): stop the model

            return StreamingResponse(events(), media_type="text/event-stream")
        if options["temperature"] > 0 or max_batch <= 1:
            result = await run_in_threadpool(run_one, prompt, options)
        else:
            result = await asyncio.wrap_future(batcher.submit(prompt, options))
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": result.text}}
        else:
            choice = {"index": 0, "text": result.text}
        choice["finish_reason"] = result.finish_reason
        usage = {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": len(result.tokens),
            "total_tokens": result.prompt_tokens + len(result.tokens),
        }
        return JSONResponse(
            {
                "id": rid,
                "object": kind,
                "created": created,
                "model": loaded.name,
                "choices": [choice],
                "usage": usage,
            }
        )

    async def chat_completions(request):
        return await completions(request, chat=True)

    async def text_completions(request):
        return await completions(request, chat=False)

    async def models(request):
        if not authorized(request):
            return _error(
                401, "invalid or missing API key (Authorization: Bearer KEY)", "authentication_error"
            )
        return JSONResponse(
            {
                "object": "list",
                "data": [{"id": loaded.name, "object": "model", "created": 0, "owned_by": "forge"}],
            }
        )

    async def health(request):
        return JSONResponse(
            {"status": "ok", "model": loaded.name, "batching": "continuous" if batcher.decoder else "static",
             "batched_requests": batcher.requests, "decode_steps": batcher.steps, "largest_batch": batcher.largest}
        )  # fmt: skip

    async def page(request):
        return FileResponse(STATIC / "chat.html", media_type="text/html")

    return Starlette(
        routes=[
            Route("/", page),
            Route("/health", health),
            Route("/v1/models", models),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/completions", text_completions, methods=["POST"]),
        ]
    )
