"""Multi-turn dialogues in each corpus's own shape -> one unified record per conversation.

The policy for every dialogue source: the last (user, assistant) exchange becomes
instruction/output and every earlier exchange goes, in order, into `history`, so one record
holds the whole conversation and nothing is lost. A system prompt goes into `meta`. A
trailing user turn with no reply is dropped from the record and counted in `meta`.

Options: style (below), key (the raw field holding the dialogue, when the style allows it).
  sharegpt         {conversations: [{from: human|user|gpt|assistant|system, value}]} (ShareGPT,
                   BELLE train_3.5M "conversations")
  firefly          {conversation: [{human, assistant}]} (Firefly multi-turn)
  ultrachat        {data: [user, assistant, user, ...]} (UltraChat)
  markers          one string with speaker markers; options `user_marker`, `assistant_marker`
                   (baize "[|Human|]"/"[|AI|]", OIG "<human>:"/"<bot>:", BELLE multiturn
                   "Human:"/"Assistant:" with the last reply in `output`)
  moss             {chat: {turn_N: {Human, Inner Thoughts, Commands, Tool Responses, MOSS}}}
                   (MOSS-003-sft; tool traces kept in meta)
  camel            {message_1: {role_type: USER|ASSISTANT, content}, message_2: ...} (CAMEL)
  transcript       "\\n\\nHuman: ... \\n\\nAssistant: ..." (hh-rlhf); option `rejected_key`: the
                   rejected transcript's last reply goes to meta.rejected (the preference pair
                   with the chosen output) and the whole transcript to meta.rejected_transcript

A speaker tag inside a turn ("Human:" at the start of a line that the transcript did not split
on, hh-rlhf has 40 such) is kept as written and flagged: meta.flags gets
"embedded_speaker_tag", so `forge filter` can drop or inspect those records.

A speaker tag in the middle of a line, after the end of a sentence ("...drag kings.  Human: Then
how do they come to be called drag kings?"), is a turn boundary the transcript lost: the turn
is split there, so the user's words never sit inside an assistant reply.
meta.flags gets "split_speaker_tag". "a Human: being" (no sentence end before it) is not split.

Preference pairs (transcript with `rejected_key`): when the rejected transcript's turns before
its last reply differ from the chosen one's, meta.rejected does not answer the same prompt;
meta.rejected_prompt_differs is then true (absent otherwise), so a preference user can drop the
pair. The record is a pair (the `rejected` column, kind pair) only when the prompts agree; a
record whose rejected prompt differs is an sft record (rejected "", the flag in meta).
"""

from __future__ import annotations

import json
import re

from forge.formatters.fields import FieldError, empty_answer

VERSION = "3"
STYLES = ("sharegpt", "firefly", "ultrachat", "markers", "moss", "camel", "transcript")
_USER = {"human", "user", "prompter"}
_ASSISTANT = {"gpt", "assistant", "bot", "chatgpt", "model"}
_MOSS_TAG = re.compile(r"^<\|[^|]+\|>:\s*|<e[a-z]{2}>\s*$")
_SPEAKER_TAG = re.compile(r"(?:^|\n)\s*(?:Human|Assistant|User|AI):", re.IGNORECASE)


def _str(value, where: str) -> str:
    if not isinstance(value, str):
        raise FieldError(f"{where} is {type(value).__name__}, expected string")
    return value


def turns_sharegpt(record: dict, key: str) -> tuple[list[tuple[str, str]], str | None]:
    conv = record.get(key)
    if not isinstance(conv, list):
        raise FieldError(
            f"field {key!r} is {type(conv).__name__ if conv is not None else 'missing'}, expected a list"
        )
    out, system = [], None
    for i, t in enumerate(conv):
        if not isinstance(t, dict):
            raise FieldError(f"field {key!r}[{i}] is {type(t).__name__}, expected an object")
        who = str(t.get("from", t.get("role", ""))).lower()
        text = _str(t.get("value", t.get("content")), f"field {key!r}[{i}].value")
        if who == "system":
            system = text
        elif who in _USER:
            out.append(("user", text))
        elif who in _ASSISTANT:
            out.append(("assistant", text))
        else:
            raise FieldError(f"field {key!r}[{i}].from: unknown speaker {who!r}")
    return out, system


def turns_firefly(record: dict, key: str):
    conv = record.get(key)
    if not isinstance(conv, list):
        raise FieldError(f"field {key!r} missing or not a list")
    out = []
    for i, t in enumerate(conv):
        out.append(("user", _str(t.get("human"), f"field {key!r}[{i}].human")))
        out.append(("assistant", _str(t.get("assistant"), f"field {key!r}[{i}].assistant")))
    return out, None


def turns_ultrachat(record: dict, key: str):
    data = record.get(key)
    if not isinstance(data, list):
        raise FieldError(f"field {key!r} missing or not a list")
    return [
        ("user" if i % 2 == 0 else "assistant", _str(x, f"field {key!r}[{i}]")) for i, x in enumerate(data)
    ], None


def turns_markers(record: dict, key: str, user_marker: str, assistant_marker: str, output_key: str | None):
    text = _str(record.get(key), f"field {key!r}")
    pattern = re.compile(f"({re.escape(user_marker)}|{re.escape(assistant_marker)})")
    parts = pattern.split(text)
    out = []
    for marker, body in zip(parts[1::2], parts[2::2], strict=True):
        body = body.strip()
        role = "user" if marker == user_marker else "assistant"
        if body or role == "assistant":
            out.append((role, body))
    if out and out[-1] == ("assistant", ""):
        out.pop()  # an open assistant marker waiting for the reply kept in output_key
    if output_key:
        out.append(("assistant", _str(record.get(output_key), f"field {output_key!r}")))
    return out, (parts[0].strip() or None)


def turns_moss(record: dict, key: str):
    chat = record.get(key)
    if not isinstance(chat, dict):
        raise FieldError(f"field {key!r} missing or not an object")
    out, tools = [], []
    for name in sorted(chat, key=lambda k: int(k.split("_")[-1])):
        turn = chat[name]
        out.append(("user", _MOSS_TAG.sub("", _str(turn.get("Human"), f"{key}.{name}.Human")).strip()))
        out.append(("assistant", _MOSS_TAG.sub("", _str(turn.get("MOSS"), f"{key}.{name}.MOSS")).strip()))
        trace = {
            k: turn[k]
            for k in ("Inner Thoughts", "Commands", "Tool Responses")
            if turn.get(k) and "None" not in turn[k][-12:]
        }
        if trace:
            tools.append({"turn": name, **trace})
    return out, (record.get("meta_instruction"), tools)


def turns_camel(record: dict, key: str):
    msgs = sorted((int(k.split("_")[1]), v) for k, v in record.items() if re.fullmatch(r"message_\d+", k))
    if not msgs:
        raise FieldError("no message_N fields")
    out = []
    for n, m in msgs:
        role = "user" if str(m.get("role_type", "")).upper() == "USER" else "assistant"
        out.append((role, _str(m.get("content"), f"field message_{n}.content")))
    return out, None


# a speaker tag after the end of a sentence on the same line: a turn boundary the text lost
_MIDLINE_TAG = re.compile(r"(?<=[.!?…\"'”’)\]])[ \t]+(Human|Assistant):[ \t]+")


def turns_transcript(record: dict, key: str):
    """hh-rlhf turns; the second value counts the turns split at a mid-line speaker tag."""
    text = _str(record.get(key), f"field {key!r}")
    parts = re.split(r"\n\n(Human|Assistant): ", "\n\n" + text.lstrip("\n"))
    out, split = [], 0
    for who, body in zip(parts[1::2], parts[2::2], strict=True):
        pieces = _MIDLINE_TAG.split(body)
        out.append(("user" if who == "Human" else "assistant", pieces[0].strip()))
        for tag, rest in zip(pieces[1::2], pieces[2::2], strict=True):
            out.append(("user" if tag == "Human" else "assistant", rest.strip()))
            split += 1
    return out, split


def _prompt(turns: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The turns before the last assistant reply: what that reply answers."""
    last = max((i for i, (role, _) in enumerate(turns) if role == "assistant"), default=len(turns))
    return turns[:last]


def _rejected(record: dict, key: str, chosen: list[tuple[str, str]]) -> dict:
    """The rejected reply (the last assistant turn of the rejected transcript), the transcript,
    and whether the turns it answers differ from the chosen transcript's."""
    transcript = record.get(key)
    if transcript is None:
        return {}
    turns, _ = turns_transcript(record, key)
    replies = [text for role, text in turns if role == "assistant"]
    out = {"rejected": replies[-1] if replies else "", "rejected_transcript": transcript}
    if _prompt(turns) != _prompt(chosen):
        out["rejected_prompt_differs"] = True
    return out


def to_record(turns: list[tuple[str, str]]) -> tuple[str, str, list[dict], int]:
    """Merge consecutive same-speaker turns, drop a trailing user turn, pair the rest."""
    merged: list[list] = []
    for role, text in turns:
        if merged and merged[-1][0] == role:
            merged[-1][1] += "\n" + text
        else:
            merged.append([role, text])
    while merged and merged[0][0] == "assistant":  # a greeting before the first user turn
        merged.pop(0)
    dangling = 0
    if merged and merged[-1][0] == "user":
        merged.pop()
        dangling = 1
    pairs = [(merged[i][1], merged[i + 1][1]) for i in range(0, len(merged) - 1, 2)]
    if not pairs:
        raise FieldError("no complete (user, assistant) exchange")
    if not pairs[-1][1].strip():
        raise FieldError("the last assistant turn is empty")
    if empty_answer(pairs[-1][1], frozenset()):
        raise FieldError(
            f"the last assistant turn is empty: only a header or punctuation ({pairs[-1][1].strip()[:40]!r})"
        )
    history = [{"user": u, "assistant": a} for u, a in pairs[:-1]]
    return pairs[-1][0], pairs[-1][1], history, dangling


def make(options: dict, source: str):
    style = options.get("style")
    if style not in STYLES:
        raise ValueError(f"dialogue style {style!r} is not one of {', '.join(STYLES)}")
    default_key = {
        "sharegpt": "conversations",
        "firefly": "conversation",
        "ultrachat": "data",
        "markers": "text",
        "moss": "chat",
        "camel": "",
        "transcript": "chosen",
    }[style]
    key = options.get("key", default_key)
    category = options.get("category", "dialogue")
    meta_keys = list(options.get("meta_keys", []))

    def turns_of(record):
        if style == "sharegpt":
            return turns_sharegpt(record, key)
        if style == "firefly":
            return turns_firefly(record, key)
        if style == "ultrachat":
            return turns_ultrachat(record, key)
        if style == "markers":
            return turns_markers(
                record,
                key,
                options.get("user_marker", "Human:"),
                options.get("assistant_marker", "Assistant:"),
                options.get("output_key"),
            )
        if style == "moss":
            return turns_moss(record, key)
        if style == "camel":
            return turns_camel(record, key)
        return turns_transcript(record, key)

    def format_batch(batch, reject) -> dict[str, list]:
        out = {
            k: []
            for k in ("instruction", "input", "output", "history", "category", "raw_row", "raw_line", "meta")
        }
        pairs = style == "transcript" and bool(options.get("rejected_key"))
        if pairs:
            out["rejected"] = []
        for record, row, line in zip(batch.as_records(), batch.rows, batch.lines, strict=True):
            try:
                turns, extra = turns_of(record)
                instruction, output, history, dangling = to_record(turns)
                meta = {k: record.get(k) for k in meta_keys}
                if style == "moss":
                    system, tools = extra
                    meta.update({"system": system, "tool_traces": tools} if tools else {"system": system})
                elif style != "transcript" and extra:
                    meta["system"] = extra
                if style == "transcript" and options.get("rejected_key"):
                    meta.update(_rejected(record, options["rejected_key"], turns))
                flags = []
                if style in ("transcript", "markers") and any(_SPEAKER_TAG.search(text) for _, text in turns):
                    flags.append("embedded_speaker_tag")
                if style == "transcript" and extra:
                    flags.append("split_speaker_tag")
                if flags:
                    meta["flags"] = flags
                if dangling:
                    meta["dropped_trailing_user_turn"] = True
            except FieldError as e:
                reject(
                    json.dumps(record, ensure_ascii=False, default=str)[:4000], batch.file, row, line, str(e)
                )
                continue
            out["instruction"].append(instruction)
            out["input"].append("")
            out["output"].append(output)
            out["history"].append(history)
            out["category"].append("tool" if style == "moss" and meta.get("tool_traces") else category)
            out["raw_row"].append(row)
            out["raw_line"].append(line)
            out["meta"].append(json.dumps(meta, ensure_ascii=False) if meta else None)
            if pairs:  # a pair only where both replies answer the same prompt
                same = not meta.get("rejected_prompt_differs")
                out["rejected"].append((meta.get("rejected") or "") if same else "")
        n = len(out["instruction"])
        out["raw_file"] = [batch.file] * n
        out["template"] = [None] * n
        out["variant"] = [""] * n
        return out

    return format_batch
