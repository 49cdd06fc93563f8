"""forge serve: an OpenAI-compatible HTTP API and a chat page over one loaded model.

  GET  /                      the chat page (static/chat.html: plain HTML and JavaScript, no CDN)
  GET  /health                {"status": "ok", "model": NAME, ...}; 503 when a generation is stuck
  GET  /v1/models             the one model; /v1/models/NAME that model (404 for another name)
  POST /v1/chat/completions   messages -> n replies (stream: true -> server-sent events),
                              logprobs/top_logprobs on request
  POST /v1/completions        a raw prompt (text or token ids, one or a batch) -> n
                              continuations each (no template); echo + logprobs score the
                              prompt itself (max_tokens 0 or 1: lm-eval's local-completions)

Every choice is assembled from the model's tokens by one Reply: text is decoded as tokens come,
an incomplete UTF-8 character is held back (and dropped at the end), stop strings are cut as
soon as they appear (the row then leaves the batch), and usage counts the tokens produced up to
the stop. Streamed and not, a request gets the same text.

The model runs one forward pass at a time (ModelLock). Greedy requests are decoded together
(Batcher, continuous batching): each prompt joins the running batch at the next token step and
leaves when its reply is done, so a client that sends 8 requests at once, as forge's
model-powered stages do, gets them for far less than 8 times the cost; greedy streams share
that batch, and n greedy choices are one row (they are the same text). Sampled requests
(temperature > 0) run alone, n rows of one seeded generation per prompt, so a seed reproduces
the same choices whatever else the server is doing. Log-probabilities are the model's raw
ones (no temperature), from one forward pass over prompt and reply. The event loop stays free
while a generation runs in a worker thread.

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

import json
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path

from forge.train import threads
from forge.train.infer import Decoder, Generation, Loaded, generate, stream_tokens, token_logprobs

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

    def submit(self, prompt: list[int], options: dict, emit=None, cancel=None) -> Future:
        """A Future for the prompt's Generation. `emit(token)` is called with every token the
        model produces for it, the stop token that ends it included, before the Future is done:
        as each is decoded (continuous batching) or all at once after generate (static).
        `cancel` (anything with is_set()) ends it at the next step once set."""
        done: Future = Future()
        self.waiting.put((prompt, options, done, emit, cancel))
        return done

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
        for prompt, options, done, emit, cancel in batch:
            # one generate call per set of options, whatever options exist
            key = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in sorted(options.items()))
            groups.setdefault(key, (options, []))[1].append((prompt, done, cancel, emit))
        for options, items in groups.values():
            self._run([i for i in items if i[1].set_running_or_notify_cancel()], options)

    def _run(self, items: list, options: dict) -> None:
        if not items:
            return
        items.sort(key=lambda i: len(i[0]))  # similar lengths side by side: less padding
        cancels = [cancel for _, _, cancel, _ in items]

        def should_stop() -> bool:
            self.lock.step()
            return all(c is not None and c.is_set() for c in cancels)  # every client has left

        try:
            with self.lock.hold():
                prompts = [prompt for prompt, _, _, _ in items]
                results: list[Generation] = generate(self.loaded, prompts, should_stop=should_stop, **options)
            self.steps += max(len(r.tokens) for r in results)  # generate runs until its longest reply ends
            self.largest = max(self.largest, len(items))
        except BaseException as e:  # noqa: BLE001 - handed to every waiting request
            for _, done, _, _ in items:
                done.set_exception(e)
            return
        for (_, _, _, emit), result in zip(items, results, strict=True):
            if emit is not None:  # what a continuous batch would have emitted step by step
                for token in result.tokens + ([] if result.stop_token is None else [result.stop_token]):
                    emit(token)
        self._answer([(done, result) for (_, done, _, _), result in zip(items, results, strict=True)])


class Until:
    """Quacks like a threading.Event for the model's loops (they only ask is_set()): set once
    the request's client has left, or `done()` says its choices need no more tokens."""

    def __init__(self, cancel: threading.Event, done: Callable[[], bool]):
        self.cancel, self.done = cancel, done

    def is_set(self) -> bool:
        return self.cancel.is_set() or self.done()


class Reply:
    """One choice: the tokens the model produces for it, and the text they make.

    Text is decoded as tokens come (from a few tokens back, so a tokenizer that joins tokens
    into characters or words decodes each piece as it would the whole) and is final only once
    it cannot change: an incomplete UTF-8 character at the end is held back, and dropped if the
    reply ends there (a reply cut at max_tokens never ends in U+FFFD), and `take()` holds back
    the last characters that could begin a stop string. The reply finishes at a stop token, at
    a stop string (its text cut before it) or at max_tokens. `tokens` is every token produced
    up to then, the one that ended it included: usage counts them, logprobs score them."""

    def __init__(self, tokenizer, stop_ids: set[int], stop: list[str], max_tokens: int):
        self.tokenizer, self.stop_ids, self.stop, self.max_tokens = tokenizer, stop_ids, stop, max_tokens
        self.tokens: list[int] = []
        self.text = ""
        self.finish: str | None = None  # stop | length, once finished
        self._ids: list[int] = []  # the tokens that make text (a stop token makes none)
        self._prefix = self._read = 0  # decode ids[prefix:] against ids[prefix:read], already text
        self._sent = self._searched = 0
        self._hold = max((len(s) for s in stop), default=1) - 1  # a stop string may span pieces

    def add(self, token: int) -> None:
        if self.finish is not None:
            return  # a batch row padded after its end, or a token the model made before it heard
        self.tokens.append(token)
        if token in self.stop_ids:
            self._end("stop")
            return
        self._ids.append(token)
        self._decode()
        if not self._cut() and len(self.tokens) >= self.max_tokens:
            self._end("length")

    def close(self) -> None:
        """The model is done with this choice (or never started: max_tokens 0)."""
        if self.finish is None:
            self._end("length" if len(self.tokens) >= self.max_tokens else "stop")

    def take(self) -> str:
        """The text that is final and not yet taken."""
        end = len(self.text) if self.finish else max(self._sent, len(self.text) - self._hold)
        piece, self._sent = self.text[self._sent : end], end
        return piece

    def _decode(self, final: bool = False) -> None:
        decode = self.tokenizer.decode
        before = decode(self._ids[self._prefix : self._read], skip_special_tokens=True)
        now = decode(self._ids[self._prefix :], skip_special_tokens=True)
        if len(now) > len(before) and (final or not now.endswith("\ufffd")):
            new = now[len(before) :]
            self.text += new.rstrip("\ufffd") if final else new
            self._prefix, self._read = self._read, len(self._ids)

    def _cut(self) -> bool:
        if not self.stop:
            return False
        start = max(0, self._searched - self._hold)
        hits = [at for s in self.stop if (at := self.text.find(s, start)) >= 0]
        self._searched = len(self.text)
        if not hits:
            return False
        self.text, self.finish = self.text[: min(hits)], "stop"
        return True

    def _end(self, reason: str) -> None:
        self._decode(final=True)  # an incomplete character at the end is dropped
        self.finish = "stop" if self._cut() else reason


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
    import torch  # loaded by now (forge.train.infer): only asked how many threads it has
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import FileResponse, JSONResponse
    from starlette.routing import Route

    from forge.train import serve_http as edge

    max_body = edge.MAX_BODY if max_body is None else max_body
    lock = ModelLock()  # one forward pass at a time: streams and batches queue here
    batcher = Batcher(loaded, lock, max_batch)
    names = edge.TokenText(loaded.tokenizer)

    def authorized(request) -> bool:
        return not api_key or request.headers.get("authorization", "") == f"Bearer {api_key}"

    def refused():
        return edge.error(
            401, "invalid or missing API key (Authorization: Bearer KEY)", "authentication_error"
        )

    # ---- tokens for every choice ---------------------------------------------------------------

    def produce(
        ask: edge.Ask, replies: list[Reply], cancel: threading.Event, scores: dict
    ) -> Iterator[range]:
        """Feed each choice the tokens the model makes for it; yield the choices that changed.
        Greedy choices of one prompt are one generation (n copies); sampled ones are n rows of
        one seeded generation per prompt."""
        groups = [replies[p * ask.n : (p + 1) * ask.n] for p in range(len(ask.prompts))]
        if ask.max_tokens == 0:
            return
        if ask.greedy and ask.max_tokens == 1 and not ask.stream and (ask.echo or ask.logprobs is not None):
            yield from scored_first(ask, groups, cancel, scores)  # lm-eval's scoring requests
        elif ask.greedy and max_batch > 1 and (batcher.decoder is not None or not ask.stream):
            yield from batched(ask, groups, cancel)
        else:
            yield from alone(ask, groups, cancel)

    def batched(ask: edge.Ask, groups: list[list[Reply]], cancel: threading.Event) -> Iterator[range]:
        """Greedy: each prompt joins the running batch; a prompt's row ends at the step after its
        choices are complete (stop string) or its client has left."""
        events: queue.Queue = queue.Queue()
        over, futures = threading.Event(), []
        options = {**ask.generation(), "seed": 0, "stop": []}  # greedy: any seed batches with any other
        for p, (prompt, group) in enumerate(zip(ask.prompts, groups, strict=True)):
            until = Until(cancel, lambda g=group: over.is_set() or g[0].finish is not None)
            done = batcher.submit(prompt, options, emit=lambda t, p=p: events.put((p, t)), cancel=until)
            done.add_done_callback(lambda f, p=p: events.put((p, f)))
            futures.append(done)
        try:
            left = len(futures)
            while left:
                p, item = events.get()
                if isinstance(item, Future):
                    left -= 1
                    if not item.cancelled() and item.exception() is not None:
                        raise item.exception()
                    continue
                for reply in groups[p]:
                    reply.add(item)
                yield range(p * ask.n, (p + 1) * ask.n)
        finally:
            over.set()  # a reader that left early: every row ends at its next step
            for done in futures:
                done.cancel()  # one the batch has not taken in yet never runs

    def alone(ask: edge.Ask, groups: list[list[Reply]], cancel: threading.Event) -> Iterator[range]:
        """Sampled (or greedy without a running batch): one generation per prompt, holding the
        model only while it runs, n rows of it at once; it ends once every choice is complete."""
        rows = 1 if ask.greedy else ask.n
        for p, (prompt, group) in enumerate(zip(ask.prompts, groups, strict=True)):
            steps = stream_tokens(
                loaded, prompt, rows=rows, **ask.generation(), cancel=threading.Event(), hold=lock.hold(cancel),
                should_stop=lambda g=group: lock.step(cancel) or all(r.finish for r in g),
            )  # fmt: skip
            try:
                for step in steps:
                    for j, reply in enumerate(group):
                        reply.add(step[j % rows])
                    yield range(p * ask.n, (p + 1) * ask.n)
            finally:
                steps.close()

    def scored_first(ask: edge.Ask, groups: list[list[Reply]], cancel: threading.Event, scores: dict):
        """One greedy token after scoring the prompt, from one forward pass: what lm-eval's
        loglikelihood requests ask (echo, logprobs, max_tokens 1)."""
        for p, (prompt, group) in enumerate(zip(ask.prompts, groups, strict=True)):
            start = 1 if ask.echo and ask.logprobs is not None else len(prompt)
            with lock.hold(cancel):
                scores[p] = token_logprobs(loaded, prompt, start, ask.logprobs or 0, then=True)
                lock.step()
            for reply in group:
                reply.add(scores[p][-1].token)
            yield range(p * ask.n, (p + 1) * ask.n)

    def logprob_blocks(ask: edge.Ask, replies: list[Reply], cancel: threading.Event, scores: dict) -> list:
        """Each choice's logprobs block (None unless asked): its tokens, the echoed prompt's too,
        scored in one forward pass over prompt and reply."""
        if ask.logprobs is None:
            return [None] * len(replies)
        blocks = []
        done = {(p, (s[-1].token,)): s for p, s in scores.items()}  # scored_first's prompts and tokens
        for i, reply in enumerate(replies):
            p = i // ask.n
            prompt, key = ask.prompts[p], (p, tuple(reply.tokens))
            if key not in done:  # greedy choices of one prompt share their tokens: scored once
                with lock.hold(cancel):
                    done[key] = token_logprobs(
                        loaded, prompt + reply.tokens, 1 if ask.echo else len(prompt), ask.logprobs
                    )
                    lock.step()
            scored = done[key]
            if ask.chat:
                blocks.append(edge.chat_logprobs(names, scored))
            else:
                blocks.append(edge.legacy_logprobs(names, prompt[0] if ask.echo else None, scored))
        return blocks

    def usage(ask: edge.Ask, replies: list[Reply]) -> dict:
        prompt = sum(map(len, ask.prompts))
        completion = sum(len(r.tokens) for r in replies)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def collect(ask: edge.Ask, replies: list[Reply], cancel: threading.Event) -> list:
        scores: dict = {}
        for _ in produce(ask, replies, cancel, scores):
            pass
        for reply in replies:
            reply.close()
        return logprob_blocks(ask, replies, cancel, scores)

    def events(ask: edge.Ask, replies: list[Reply], head: dict, cancel: threading.Event) -> Iterator[str]:
        """SSE lines, read by worker threads; EventStream closes this however the response ends.
        A choice's first chunk carries the role (chat) or the echoed prompt (completions), and
        is sent with its first text, so a generation that fails at once is one error event."""
        started, ended = [False] * len(replies), [False] * len(replies)

        def event(choice: dict | None, **extra) -> str:
            payload = {**head, "choices": [choice] if choice else [], **extra}
            if ask.include_usage and "usage" not in extra:
                payload["usage"] = None
            return f"data: {json.dumps(payload)}\n\n"

        def piece(i: int, text: str, finish: str | None = None) -> dict:
            if ask.chat:
                return {
                    "index": i,
                    "delta": {"content": text} if text else {},
                    "logprobs": None,
                    "finish_reason": finish,
                }
            return {"index": i, "text": text, "logprobs": None, "finish_reason": finish}

        def flush(i: int) -> Iterator[str]:
            reply = replies[i]
            text = reply.take()
            if not started[i] and (text or reply.finish):
                started[i] = True
                if ask.chat:
                    yield event({"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                 "finish_reason": None})  # fmt: skip
                elif ask.echo:
                    text = ask.texts[i // ask.n] + text
            if text:
                yield event(piece(i, text))
            if reply.finish and not ended[i]:
                ended[i] = True
                yield event(piece(i, "", reply.finish))

        source = produce(ask, replies, cancel, {})
        try:
            for changed in source:
                for i in changed:
                    yield from flush(i)
            for i, reply in enumerate(replies):
                reply.close()
                yield from flush(i)
            if ask.include_usage:
                yield event(None, usage=usage(ask, replies))
            yield "data: [DONE]\n\n"
        except Left:
            return  # the client left before the model was free: nobody to answer
        except Exception as e:  # noqa: BLE001 - the 200 is sent: the error goes into the stream
            edge.log_line(f"a stream failed: {type(e).__name__}: {e}")
            message = f"generation failed ({type(e).__name__}: {e})"[:500]
            failure = {"message": message, "type": "server_error", "param": None, "code": None}
            yield f"data: {json.dumps({'error': failure})}\n\n"
        finally:
            cancel.set()  # ends the rows in the batch, or the sampled model thread, at their next step
            source.close()

    async def completions(request, chat: bool):
        if not authorized(request):
            return refused()
        try:
            body = await edge.read_json(request, max_body)
            ask = edge.parse(loaded, body, chat)
        except edge.BadRequest as e:
            return edge.error(e.status, str(e), "invalid_request_error", e.param, e.code)
        created, rid = int(time.time()), f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        kind = "chat.completion" if chat else "text_completion"
        cancel = threading.Event()  # set when the client leaves: the model drops the request
        replies = [
            Reply(loaded.tokenizer, loaded.stop_ids, ask.stop, ask.max_tokens)
            for _ in ask.prompts
            for _ in range(ask.n)
        ]
        head = {
            "id": rid,
            "object": f"{kind}.chunk" if chat else kind,
            "created": created,
            "model": loaded.name,
        }
        if ask.stream:
            return edge.EventStream(events(ask, replies, head, cancel), cancel)
        try:
            blocks = await edge.while_connected(
                request, cancel, run_in_threadpool(collect, ask, replies, cancel)
            )
        except Left:  # the client left while waiting: nobody reads this
            return edge.error(400, "the client disconnected", "invalid_request_error")
        choices = []
        for i, (reply, block) in enumerate(zip(replies, blocks, strict=True)):
            if chat:
                choice = {"index": i, "message": {"role": "assistant", "content": reply.text}}
            else:
                choice = {"index": i, "text": ask.texts[i // ask.n] + reply.text if ask.echo else reply.text}
            choices.append({**choice, "logprobs": block, "finish_reason": reply.finish})
        return JSONResponse({**head, "object": kind, "choices": choices, "usage": usage(ask, replies)})

    async def chat_completions(request):
        return await completions(request, chat=True)

    async def text_completions(request):
        return await completions(request, chat=False)

    def card() -> dict:
        return {"id": loaded.name, "object": "model", "created": 0, "owned_by": "forge"}

    async def models(request):
        if not authorized(request):
            return refused()
        return JSONResponse({"object": "list", "data": [card()]})

    async def model(request):
        if not authorized(request):
            return refused()
        wanted = request.path_params["name"]
        if wanted != loaded.name:
            message = f"the model {wanted!r} does not exist here: this server serves {loaded.name!r}"
            return edge.error(404, message, "invalid_request_error", "model", "model_not_found")
        return JSONResponse(card())

    async def health(request):
        state = {"model": loaded.name, "batching": "continuous" if batcher.decoder else "static",
                 "batched_requests": batcher.requests, "decode_steps": batcher.steps,
                 "largest_batch": batcher.largest, "generating": lock.busy,
                 "torch_threads": torch.get_num_threads(), "prefill_threads": threads.prefill_count(),
                 "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}  # fmt: skip
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
            Route("/v1/models/{name:path}", edge.answered(model)),
            Route("/v1/chat/completions", edge.answered(chat_completions), methods=["POST"]),
            Route("/v1/completions", edge.answered(text_completions), methods=["POST"]),
        ]
    )
