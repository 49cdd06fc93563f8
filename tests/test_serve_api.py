"""forge serve's OpenAI API, parameter by parameter (issue #32): what it honours is honoured
(n, max_completion_tokens, logprobs, echo, token-id and batched prompts, content parts,
stream_options), and what it does not is refused with an error naming the field, never
ignored. Clients are the official openai package and lm-evaluation-harness's API models,
against real `forge serve` processes: the tiny random model for the API's shapes, SmolLM2 for
lm-eval's scoring and generation (marked slow: it converts SmolLM2 first)."""

from __future__ import annotations

import csv
import http.client
import json
import urllib.parse

import pytest

from tests.conftest import SHARED, need
from tests.serving import forge_serve
from tests.serving import smollm2 as convert_smollm2

HELLO = [{"role": "user", "content": "Name three colours."}]
EVALS = SHARED.parent / "evals"


@pytest.fixture(scope="module")
def base(tiny_model):
    with forge_serve(tiny_model, env={"HF_HUB_OFFLINE": "1"}) as url:
        yield url


@pytest.fixture(scope="module")
def client(base):
    import openai

    return openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0)


@pytest.fixture(scope="module")
def tiny(tiny_model):
    """The tiny model in this process, for the computations the server's answers must equal."""
    from forge.train.infer import load

    return load(str(tiny_model))


def post(base: str, body: dict, path: str = "/v1/completions") -> tuple[int, dict | list]:
    """(status, JSON body), or for a stream (status, the list of its events' payloads, "[DONE]" last)."""
    url = urllib.parse.urlparse(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    raw = resp.read().decode()
    conn.close()
    if not body.get("stream") or resp.status != 200:
        return resp.status, json.loads(raw)
    events = [e.removeprefix("data: ") for e in raw.split("\n\n") if e.strip()]
    return resp.status, [e if e == "[DONE]" else json.loads(e) for e in events]


def joined(events: list, chat: bool = True) -> dict[int, str]:
    """A stream's text per choice index."""
    texts: dict[int, str] = {}
    for e in events[:-1]:
        for c in e["choices"]:
            piece = c["delta"].get("content", "") if chat else c["text"]
            texts[c["index"]] = texts.get(c["index"], "") + (piece or "")
    return texts


def test_n_max_completion_tokens_content_parts_and_the_usage_chunk(client, base):
    model = client.models.list().data[0].id
    assert client.models.retrieve(model).id == model

    # n greedy choices: one generation, n copies, each counted
    three = client.chat.completions.create(model=model, messages=HELLO, max_completion_tokens=4, n=3)
    assert [c.index for c in three.choices] == [0, 1, 2]
    assert len({c.message.content for c in three.choices}) == 1
    assert all(c.finish_reason == "length" for c in three.choices)  # the tiny model never stops early
    assert three.usage.completion_tokens == 3 * 4

    # n sampled choices differ, and a seed gives them again, streamed or not
    sampled = dict(model=model, messages=HELLO, max_tokens=6, n=2, temperature=1.0, seed=7)
    first = [c.message.content for c in client.chat.completions.create(**sampled).choices]
    again = [c.message.content for c in client.chat.completions.create(**sampled).choices]
    assert first == again and first[0] != first[1]
    chunks = list(client.chat.completions.create(**sampled, stream=True))
    streamed: dict[int, str] = {}
    for c in chunks:
        for choice in c.choices:
            streamed[choice.index] = streamed.get(choice.index, "") + (choice.delta.content or "")
    assert [streamed[0], streamed[1]] == first

    # text parts are the same content as the string they join to
    parts = [{"type": "text", "text": "Name three"}, {"type": "text", "text": "colours."}]
    as_parts = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": parts}], max_tokens=5
    )
    as_text = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Name three\ncolours."}], max_tokens=5
    )
    assert as_parts.choices[0].message.content == as_text.choices[0].message.content
    assert as_parts.usage.prompt_tokens == as_text.usage.prompt_tokens

    # a stream with include_usage: the role first, the usage chunk last (no choices)
    chunks = list(
        client.chat.completions.create(
            model=model, messages=HELLO, max_tokens=5, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    plain = client.chat.completions.create(model=model, messages=HELLO, max_tokens=5)
    assert chunks[-1].usage.model_dump() == plain.usage.model_dump()
    assert "".join(c.choices[0].delta.content or "" for c in chunks[:-1]) == plain.choices[0].message.content
    assert all(c.usage is None for c in chunks[:-1])
    # without include_usage no usage chunk comes
    status, events = post(base, {"messages": HELLO, "max_tokens": 3, "stream": True}, "/v1/chat/completions")
    assert status == 200 and all(e == "[DONE]" or e["choices"] for e in events)


def test_logprobs_on_chat_with_the_openai_client(client):
    model = client.models.list().data[0].id
    reply = client.chat.completions.create(
        model=model, messages=HELLO, max_tokens=6, logprobs=True, top_logprobs=3
    )
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens == 6
    for entry in content:
        assert len(entry.top_logprobs) == 3
        values = [t.logprob for t in entry.top_logprobs]
        assert values == sorted(values, reverse=True) and all(v <= 0 for v in values)
        # greedy: the chosen token is the most likely one
        assert (entry.token, entry.logprob) == (
            entry.top_logprobs[0].token,
            pytest.approx(values[0], abs=1e-5),
        )
        assert entry.bytes == entry.top_logprobs[0].bytes and entry.bytes
    # logprobs without alternatives; none when not asked
    bare = client.chat.completions.create(model=model, messages=HELLO, max_tokens=2, logprobs=True)
    assert [e.top_logprobs for e in bare.choices[0].logprobs.content] == [[], []]
    assert (
        client.chat.completions.create(model=model, messages=HELLO, max_tokens=2).choices[0].logprobs is None
    )


def test_an_unknown_model_is_a_404_and_an_unsupported_field_a_400_naming_it(client, base):
    import openai

    model = client.models.list().data[0].id
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=2)
    assert e.value.body["code"] == "model_not_found" and e.value.body["param"] == "model"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4o", prompt="hi", max_tokens=2)
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")

    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    refused = {
        "tools": {"tools": [tool]},
        "tool_choice": {"tool_choice": "required"},
        "response_format": {"response_format": {"type": "json_object"}},
        "presence_penalty": {"presence_penalty": 0.5},
        "frequency_penalty": {"frequency_penalty": -1.0},
        "logit_bias": {"logit_bias": {"5": 10}},
        "top_k": {"extra_body": {"top_k": 5}},  # a vLLM extra: unknown here
        "store": {"store": True},
        "stream_options": {"stream_options": {"include_usage": True}},  # without stream
    }
    for param, extra in refused.items():
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model=model, messages=HELLO, max_tokens=2, **extra)
        assert e.value.body["param"] == param, (param, e.value.body)
    for param, extra in {"best_of": {"best_of": 3}, "suffix": {"suffix": " end"}, "echo": {"n": 1}}.items():
        if param == "echo":  # echo is /v1/completions' own
            status, reply = post(base, {"messages": HELLO, "echo": True}, "/v1/chat/completions")
            assert (status, reply["error"]["param"]) == (400, "echo")
            continue
        with pytest.raises(openai.BadRequestError) as e:
            client.completions.create(model=model, prompt="hi", max_tokens=2, **extra)
        assert e.value.body["param"] == param
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}, image]}],
            max_tokens=2,
        )
    assert e.value.body["param"] == "messages[0].content[1].type"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=model, messages=HELLO, max_tokens=2, stream=True, logprobs=True)
    assert e.value.body["param"] == "logprobs"

    # metadata and the neutral value of a field change nothing: accepted, same reply
    plain = client.chat.completions.create(model=model, messages=HELLO, max_tokens=4)
    same = client.chat.completions.create(
        model=model, messages=HELLO, max_tokens=4, user="u1", seed=3, presence_penalty=0, frequency_penalty=0,
        logit_bias={}, response_format={"type": "text"}, metadata={"run": "x"}, n=1,
    )  # fmt: skip
    assert same.choices[0].message.content == plain.choices[0].message.content
    # a request without a model gets the served one (the chat page sends none)
    status, reply = post(base, {"messages": HELLO, "max_tokens": 4}, "/v1/chat/completions")
    assert status == 200 and reply["model"] == model
    assert reply["choices"][0]["message"]["content"] == plain.choices[0].message.content


def test_echo_logprobs_equal_the_models_own_forward_pass(base, tiny):
    """What lm-eval's local-completions asks (echo, logprobs, max_tokens 0 or 1, token ids,
    batches): each prompt token's log-probability equals log_softmax of the model's own forward
    pass, computed here."""
    import torch

    texts = ["The capital of France is Paris.", "黄河在山东入渤海。"]
    ids = [tiny.tokenizer(t)["input_ids"] for t in texts]

    def own(tokens: list[int]) -> torch.Tensor:
        with torch.no_grad():
            logits = tiny.model(input_ids=torch.tensor([tokens])).logits[0]
        return torch.log_softmax(logits.float(), dim=-1)

    for prompt in (texts[0], ids[0]):  # text, and the same prompt as token ids
        status, reply = post(base, {"prompt": prompt, "echo": True, "logprobs": 5, "max_tokens": 0})
        assert status == 200, reply
        (choice,) = reply["choices"]
        lp = choice["logprobs"]
        assert choice["text"] == texts[0] and choice["finish_reason"] == "length"
        assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
        want = own(ids[0])
        assert lp["token_logprobs"][1:] == pytest.approx(
            [float(want[i - 1, t]) for i, t in enumerate(ids[0]) if i], abs=1e-4
        )
        assert "".join(lp["tokens"]) == texts[0] and lp["text_offset"][1] == len(lp["tokens"][0])
        for i, top in enumerate(lp["top_logprobs"][1:], start=1):
            best = want[i - 1].topk(5)
            assert max(top.values()) == pytest.approx(float(best.values[0]), abs=1e-4)
            assert len(top) in (5, 6)  # the 5 most likely, and the prompt's own token if not among them
        assert reply["usage"] == {
            "prompt_tokens": len(ids[0]),
            "completion_tokens": 0,
            "total_tokens": len(ids[0]),
        }

    # a batch of token-id prompts, n=2, max_tokens 1 (lm-eval's form): one choice per prompt and
    # n, in order, each with its prompt's tokens and the greedy next one
    status, reply = post(base, {"prompt": ids, "echo": True, "logprobs": 1, "max_tokens": 1, "n": 2})
    assert status == 200 and [c["index"] for c in reply["choices"]] == [0, 1, 2, 3]
    for c in reply["choices"]:
        tokens, want = ids[c["index"] // 2], own(ids[c["index"] // 2])
        got = c["logprobs"]["token_logprobs"]
        assert len(got) == len(tokens) + 1 and c["text"].startswith(texts[c["index"] // 2])
        assert got[1:-1] == pytest.approx(
            [float(want[i - 1, t]) for i, t in enumerate(tokens) if i], abs=1e-4
        )
        assert got[-1] == pytest.approx(float(want[-1].max()), abs=1e-4)  # greedy: the most likely token
    # a list of strings is a batch too
    status, reply = post(base, {"prompt": texts, "max_tokens": 2})
    assert status == 200 and [c["index"] for c in reply["choices"]] == [0, 1]
    assert reply["usage"]["prompt_tokens"] == sum(map(len, ids))


def test_text_offset_gives_a_bos_no_text(tiny):
    """A tokenizer that puts a BOS before the prompt: the echoed block lists it, with offset 0,
    and the next token also starts at 0 in the choice's text, which holds no "<s>"."""
    from forge.train.infer import Scored
    from forge.train.serve_http import TokenText, legacy_logprobs

    tok = tiny.tokenizer
    ids = tok("Paris is big")["input_ids"]
    names = TokenText(tok)
    block = legacy_logprobs(names, tok.bos_token_id, [Scored(t, -1.0, []) for t in ids])
    assert block["tokens"][0] == "<s>" and "".join(block["tokens"][1:]) == "Paris is big"
    starts = [len(names(t)[0]) for t in ids]
    assert block["text_offset"] == [0, 0] + [sum(starts[: k + 1]) for k in range(len(ids) - 1)]


def test_stop_counts_only_the_tokens_up_to_the_stop(client, tiny):
    """completion_tokens counts what the model produced until the stop string appeared, not the
    tokens it went on to produce; the text is cut before the stop, streamed or not."""
    model = client.models.list().data[0].id
    full = client.chat.completions.create(model=model, messages=HELLO, max_tokens=40, logprobs=True)
    text = full.choices[0].message.content
    pieces = [bytes(e.bytes) for e in full.choices[0].logprobs.content]
    # a stop string from the middle of the reply, made of whole characters
    at = next(
        i for i in range(len(text) // 2, len(text)) if text[i : i + 3].isascii() and text[i : i + 3].strip()
    )
    stop = text[at : at + 3]
    first = text.find(stop)
    needed = next(k for k in range(1, 41) if stop in b"".join(pieces[:k]).decode("utf-8", "replace"))
    assert needed < 40
    stopped = client.chat.completions.create(model=model, messages=HELLO, max_tokens=40, stop=[stop])
    assert stopped.choices[0].message.content == text[:first]
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.usage.completion_tokens == needed
    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=HELLO,
            max_tokens=40,
            stop=stop,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text[:first]
    assert chunks[-1].usage.completion_tokens == needed
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


def test_a_reply_cut_at_max_tokens_never_ends_in_a_broken_character(base):
    """The tiny model's byte-level tokens often end mid-character: the incomplete tail is held
    back while streaming, and dropped when max_tokens cuts the reply there."""
    cut_inside = 0
    for n in range(1, 25):
        for chat in (True, False):
            path = "/v1/chat/completions" if chat else "/v1/completions"
            body = (
                {"messages": [{"role": "user", "content": "黄河在哪里入海？"}]}
                if chat
                else {"prompt": "黄河在"}
            )
            body["max_tokens"] = n
            status, reply = post(base, {**body, "logprobs": True} if chat else body, path)
            text = reply["choices"][0]["message"]["content"] if chat else reply["choices"][0]["text"]
            assert status == 200 and not text.endswith("\ufffd"), (n, chat, text)
            status, events = post(base, {**body, "stream": True}, path)
            assert joined(events, chat)[0] == text
            if chat:  # did the model's bytes end inside a character?
                raw = b"".join(bytes(e["bytes"]) for e in reply["choices"][0]["logprobs"]["content"])
                cut_inside += raw.decode("utf-8", "replace").endswith("\ufffd")
    assert cut_inside  # some did: their incomplete tails were dropped


def test_an_over_long_prompt_names_its_field(base):
    long_ids = [5] * 2040
    status, reply = post(base, {"prompt": long_ids, "max_tokens": 10})
    assert (
        status == 400
        and reply["error"]["param"] == "prompt"
        and "context length" in reply["error"]["message"]
    )
    status, reply = post(base, {"prompt": [[5, 6], long_ids], "max_tokens": 10})
    assert status == 400 and reply["error"]["param"] == "prompt[1]"
    status, reply = post(base, {"prompt": "word " * 3000, "max_tokens": 10})
    assert status == 400 and reply["error"]["param"] == "prompt"
    status, reply = post(
        base, {"messages": [{"role": "user", "content": "word " * 3000}]}, "/v1/chat/completions"
    )
    assert status == 400 and reply["error"]["param"] == "messages"
    status, reply = post(base, {"prompt": [5, 6, 10**6]})
    assert status == 400 and reply["error"]["param"] == "prompt" and "token id" in reply["error"]["message"]
    status, reply = post(base, {"prompt": "hi", "max_tokens": 0})
    assert status == 400 and reply["error"]["param"] == "max_tokens"
    status, reply = post(base, {"prompt": "hi", "max_tokens": 3, "max_completion_tokens": 4})
    assert status == 400 and reply["error"]["param"] == "max_completion_tokens"


# ---- lm-evaluation-harness's API models against forge serve on SmolLM2 -------------------------


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    return convert_smollm2(tmp_path_factory)


@pytest.fixture(scope="module")
def real(smollm2):
    """(base URL, the model loaded in this process) for SmolLM2."""
    from forge.train.infer import load

    # clients name the model as the server is told to (--served-model-name), not by its folder
    with forge_serve(
        smollm2, "--served-model-name", "smollm2-test", env={"HF_HUB_OFFLINE": "1"}, wait_s=300
    ) as url:
        yield url, load(str(smollm2))


@pytest.mark.slow
def test_lm_eval_local_completions_scores_like_forge_eval(real, smollm2, tmp_path):
    """lm-eval's `local-completions` model scores CMMLU options through /v1/completions (token-id
    prompts, batches of 4, echo + logprobs + max_tokens 1): every option's log-likelihood equals
    forge eval's in-process one within 1e-4, and so does each item's chosen option."""
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    from forge.train.eval_protocols import mc_context
    from forge.train.eval_requests import loglikelihoods
    from forge.train.evalsets import read

    base, loaded = real
    cmmlu = need(EVALS / "cmmlu")
    (tmp_path / "test").mkdir()
    with open(cmmlu / "test" / "computer_science.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))[:4]  # the header and three questions
    with open(tmp_path / "test" / "computer_science.csv", "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rows)
    items = read("cmmlu", tmp_path).items
    requests = [(mc_context(it, [], "zh"), f" {letter}") for it in items for letter in it.options]
    ours = loglikelihoods(loaded.model, loaded.tokenizer, requests)

    lm = LocalCompletionsAPI(base_url=base + "/v1/completions", model="smollm2-test", tokenizer_backend="huggingface",
                             tokenizer=str(smollm2), batch_size=4, max_retries=1)  # fmt: skip
    theirs = lm.loglikelihood(
        [Instance("loglikelihood", {}, request, i) for i, request in enumerate(requests)], disable_tqdm=True
    )
    assert [ll for ll, _ in theirs] == pytest.approx(ours, abs=1e-4)
    per_item = len(items[0].options)
    for k in range(len(items)):
        mine, lm_eval = ours[k * per_item : (k + 1) * per_item], theirs[k * per_item : (k + 1) * per_item]
        assert max(range(per_item), key=mine.__getitem__) == max(range(per_item), key=lambda j: lm_eval[j][0])


@pytest.mark.slow
def test_lm_eval_local_chat_completions_generates_what_forge_does(real):
    """lm-eval's `local-chat-completions` generate_until on three GSM8K questions (greedy, its
    stop sequences, its seed) gets the text forge's in-process greedy generate gets."""
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance
    from lm_eval.models.api_models import JsonChatStr
    from lm_eval.models.openai_completions import LocalChatCompletion

    from forge.train.infer import build_prompt, generate, record_from_messages

    base, loaded = real
    lines = need(EVALS / "gsm8k" / "test_head200.jsonl").read_text(encoding="utf-8").splitlines()[:3]
    chats = [[{"role": "user", "content": json.loads(line)["question"]}] for line in lines]
    until = ["Question:", "</s>", "<|im_end|>"]
    kwargs = {"until": until, "max_gen_toks": 32, "do_sample": False, "temperature": 0.0}
    lm = LocalChatCompletion(base_url=base + "/v1/chat/completions", model="smollm2-test", max_retries=1)
    theirs = lm.generate_until(
        [
            Instance("generate_until", {}, (JsonChatStr(json.dumps(c)), dict(kwargs)), i)
            for i, c in enumerate(chats)
        ],
        disable_tqdm=True,
    )
    for chat, text in zip(chats, theirs, strict=True):
        prompt = build_prompt(loaded, record_from_messages(chat))
        assert generate(loaded, [prompt], max_new_tokens=32, stop=until)[0].text == text
        assert len(text) > 20  # real words, not an empty reply
