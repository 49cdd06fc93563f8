"""forge serve: an OpenAI-compatible HTTP API and a chat page over one loaded model.

  GET  /                      the chat page (static/chat.html: plain HTML and JavaScript, no CDN)
  GET  /health                {"status": "ok", "model": NAME, ...}; 503 when a generation is stuck
  GET  /v1/models             the one model
  POST /v1/chat/completions   messages -> a reply (stream: true -> server-sent events)
  POST /v1/completions        a raw text prompt -> a continuation (no template)

The model runs one forward pass at a time (ModelLock). Greedy non-streaming requests are
decoded together (Batcher, continuous batching): each joins the running batch at the next
token step and leaves when its reply is done, so a client that sends 8 requests at once, as
forge's model-powered stages do, gets them for far less than 8 times the cost. Greedy streams
are decoded in the same batch. Sampled requests (temperature > 0) run alone, so a seed
reproduces the same text whatever else the server is doing. The event loop stays free while
a generation runs in a worker thread.

No client can wedge the server:
  - the lock is held only while the model runs, never while a reply waits for its reader, and
    every generation (sampled or greedy, streamed or not) asks after each decode step whether
    its client is still there: one that leaves frees the model within a step;
  - /health answers 503 when a generation has held the model for `stall_after` seconds
    without a step, so a supervisor can restart what is stuck;
  - bodies and prompts are bounded before they are read or tokenized (forge.train.serve_http);
  - bad requests get a 400 (413 for a body over --max-body) with an OpenAI-style error body,
    a wrong or missing key a 401, and anything unexpected a 500 with one line on stderr: the
    server goes on serving.
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path

from forge.train.infer import Decoder, Generation, Loaded, generate, stream

STATIC = Path(__file__).resolve().parent / "static"
STALL_AFTER = 120.0  # seconds without a decode step before /health calls a generation stuck


class Left(Exception):
    """The client left while its request waited for the model."""


class ModelLock:
    """Lets one generation at a time run the model, and knows what /health asks about the one
    that does: a holder calls `step()` after each decode step, so a holder that has gone quiet
    (a bug, a hung kernel) shows as `idle_for()` growing."""

    def __init__(self, lock: threading.Lock | None = None):
        self._lock = lock or threading.Lock()
        self._progress: float | None = None  # when the holder last made progress; None: free

    @contextmanager
    def hold(self, cancel: threading.Event | None = None) -> Iterator[None]:
        """Hold the model. Waiting for it ends in `Left` once `cancel` is set, so a request whose
        client has gone never takes the model."""
        while not self._lock.acquire(timeout=0.05):
            if cancel is not None and cancel.is_set():
                raise Left
        self._progress = time.monotonic()
        try:
            yield
        finally:
            self._progress = None
            self._lock.release()

    def step(self, cancel: threading.Event | None = None) -> bool:
        """Record a decode step of the holder; True when `cancel` is set (end the generation now)."""
        self._progress = time.monotonic()
        return cancel is not None and cancel.is_set()

    @property
    def busy(self) -> bool:
        return self._progress is not None

    def idle_for(self) -> float:
        """Seconds since the holder's last step; 0.0 while the model is free."""
        since = self._progress
        return 0.0 if since is None else time.monotonic() - since


class Batcher:
    """Answers greedy requests together. One worker thread owns the model's batch: with a plain
    KV cache (most models) it runs continuous batching (forge.train.infer.Decoder): a request joins at
    the next step, with no timer, and leaves as soon as its reply is done, so a short reply never
    waits for a long one. Otherwise (a cache that cannot be merged row by row: older transformers,
    Bloom's ALiBi, remote-code models, prompt-learning adapters) it runs one generate call per
    group of waiting requests with the same options. Greedy decoding does not
    depend on the batch a prompt lands in, apart from float rounding next to padded positions."""

    def __init__(
        self,
        loaded: Loaded,
        lock: ModelLock | threading.Lock,
        max_batch: int = 16,
        wait: float = 0.02,
        continuous: bool = True,
    ):
        # a plain lock is wrapped, so progress is recorded (for /health) either way
        self.lock = lock if isinstance(lock, ModelLock) else ModelLock(lock)
        self.loaded, self.max_batch = loaded, max_batch
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
                    with self.lock.hold():  # one prefill: a step
                        added = decoder.add(
                            done, prompt, options["max_new_tokens"], options["stop"], emit, cancel
                        )
                        self._answer(added)
            if decoder.active:
                with self.lock.hold():  # one decode step
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
        groups: dict[tuple, tuple[dict, list]] = {}
        for prompt, options, done, _, cancel in batch:  # streams never come here (no emit)
            # one generate call per set of options, whatever options exist
            key = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in sorted(options.items()))
            groups.setdefault(key, (options, []))[1].append((prompt, done, cancel))
        for options, items in groups.values():
            self._run([i for i in items if i[1].set_running_or_notify_cancel()], options)

    def _run(self, items: list, options: dict) -> None:
        if not items:
            return
        items.sort(key=lambda i: len(i[0]))  # similar lengths side by side: less padding
        cancels = [cancel for _, _, cancel in items]

        def should_stop() -> bool:
            self.lock.step()
            return all(c is not None and c.is_set() for c in cancels)  # every client has left

        try:
            with self.lock.hold():
                prompts = [prompt for prompt, _, _ in items]
                results: list[Generation] = generate(self.loaded, prompts, should_stop=should_stop, **options)
            self.steps += max(len(r.tokens) for r in results)  # generate runs until its longest reply ends
            self.largest = max(self.largest, len(items))
        except BaseException as e:  # noqa: BLE001 - handed to every waiting request
            for _, done, _ in items:
                done.set_exception(e)
            return
        self._answer([(done, result) for (_, done, _), result in zip(items, results, strict=True)])


def create_app(
    loaded: Loaded,
    api_key: str | None = None,
    max_batch: int = 16,
    max_body: int | None = None,
    stall_after: float = STALL_AFTER,
):
    """The Starlette app. `max_body`: the largest request body in bytes (default
    forge.train.serve_http.MAX_BODY); `stall_after`: seconds a generation may hold the model without a
    decode step before /health answers 503."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import FileResponse, JSONResponse
    from starlette.routing import Route

    from forge.train import serve_http as edge

    max_body = edge.MAX_BODY if max_body is None else max_body
    lock = ModelLock()  # one forward pass at a time: streams and batches queue here
    batcher = Batcher(loaded, lock, max_batch)

    def authorized(request) -> bool:
        return not api_key or request.headers.get("authorization", "") == f"Bearer {api_key}"

    def refused():
        return edge.error(
            401, "invalid or missing API key (Authorization: Bearer KEY)", "authentication_error"
        )

    def check_context(prompt: list[int], options: dict, field: str) -> None:
        limit = loaded.context_length
        if len(prompt) + options["max_new_tokens"] > limit:
            raise edge.BadRequest(
                f"the prompt ({len(prompt)} tokens) plus max_tokens ({options['max_new_tokens']}) exceed "
                f"the model's context length of {limit} tokens",
                field,
            )

    def run_one(prompt: list[int], options: dict, cancel: threading.Event) -> Generation:
        with lock.hold(cancel):
            return generate(loaded, [prompt], should_stop=lambda: lock.step(cancel), **options)[0]

    def streamed(prompt: list[int], options: dict, chunk: Callable, cancel: threading.Event) -> Iterator[str]:
        """SSE lines for one generation, read by worker threads; EventStream closes it however the
        response ends. A greedy stream is decoded in the running batch; a sampled one runs alone,
        holding the lock only while its model thread runs."""
        stop = [s for s in options.pop("stop") if s]
        overlap = max((len(s) for s in stop), default=1) - 1  # a stop string may span two pieces
        text, sent = "", 0
        if options["temperature"] == 0 and batcher.decoder is not None and max_batch > 1:
            source = batcher.pieces(prompt, options, cancel)
        else:
            source = stream(
                loaded, prompt, cancel=cancel, hold=lock.hold(cancel), should_stop=lock.step, **options
            )
        try:
            for piece in source:
                text += piece
                cuts = [text.find(s) for s in stop if s in text]
                if cuts:
                    cancel.set()  # the reply is complete: the model can stop now
                    if min(cuts) > sent:
                        yield f"data: {json.dumps(chunk(text[sent : min(cuts)], None))}\n\n"
                    yield f"data: {json.dumps(chunk('', 'stop'))}\n\n"
                    yield "data: [DONE]\n\n"
                    return
                if len(text) - overlap > sent:
                    yield f"data: {json.dumps(chunk(text[sent : len(text) - overlap], None))}\n\n"
                    sent = len(text) - overlap
            if len(text) > sent:
                yield f"data: {json.dumps(chunk(text[sent:], None))}\n\n"
            yield f"data: {json.dumps(chunk('', 'stop'))}\n\n"
            yield "data: [DONE]\n\n"
        except Left:
            return  # the client left before the model was free: nobody to answer
        except Exception as e:  # noqa: BLE001 - the 200 is sent: the error goes into the stream
            edge.log_line(f"a stream failed: {type(e).__name__}: {e}")
            message = f"generation failed ({type(e).__name__}: {e})"[:500]
            failure = {"message": message, "type": "server_error", "param": None, "code": None}
            yield f"data: {json.dumps({'error': failure})}\n\n"
        finally:
            cancel.set()  # ends the row in the batch, or the sampled model thread, at its next step
            source.close()

    async def completions(request, chat: bool):
        if not authorized(request):
            return refused()
        try:
            body = await edge.read_json(request, max_body)
            options = edge.options(body)
            prompt = edge.prompt_ids(loaded, body, chat)
            check_context(prompt, options, "messages" if chat else "prompt")
        except edge.BadRequest as e:
            return edge.error(e.status, str(e), "invalid_request_error", e.param)
        created, rid = int(time.time()), f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        kind = "chat.completion" if chat else "text_completion"
        cancel = threading.Event()  # set when the client leaves: the model drops the request
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

            return edge.EventStream(streamed(prompt, dict(options), chunk, cancel), cancel)
        if options["temperature"] > 0 or max_batch <= 1:
            work = run_in_threadpool(run_one, prompt, options, cancel)
        else:
            work = asyncio.wrap_future(batcher.submit(prompt, options, cancel=cancel))
        try:
            result = await edge.while_connected(request, cancel, work)
        except Left:  # the client left while waiting: nobody reads this
            return edge.error(400, "the client disconnected", "invalid_request_error")
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
            return refused()
        return JSONResponse(
            {
                "object": "list",
                "data": [{"id": loaded.name, "object": "model", "created": 0, "owned_by": "forge"}],
            }
        )

    async def health(request):
        state = {"model": loaded.name, "batching": "continuous" if batcher.decoder else "static",
                 "batched_requests": batcher.requests, "decode_steps": batcher.steps,
                 "largest_batch": batcher.largest, "generating": lock.busy}  # fmt: skip
        quiet = lock.idle_for()
        if quiet > stall_after:
            reason = (
                f"a generation has held the model for {quiet:.0f} s without a decode step "
                f"(the limit is {stall_after:g} s: forge serve --stall-after)"
            )
            return JSONResponse({"status": "unhealthy", "reason": reason, **state}, status_code=503)
        return JSONResponse({"status": "ok", **state})

    async def page(request):
        return FileResponse(STATIC / "chat.html", media_type="text/html")

    return Starlette(
        routes=[
            Route("/", edge.answered(page)),
            Route("/health", edge.answered(health)),
            Route("/v1/models", edge.answered(models)),
            Route("/v1/chat/completions", edge.answered(chat_completions), methods=["POST"]),
            Route("/v1/completions", edge.answered(text_completions), methods=["POST"]),
        ]
    )
