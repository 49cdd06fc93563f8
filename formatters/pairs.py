"""Preference pairs under any column names: a prompt, a chosen and a rejected answer -> one pair
record (output = chosen, `rejected` = rejected, kind pair). A JSON-family (or Parquet, CSV) file
of pairs joins the catalog with YAML alone:

    my_pairs:
      connector: json
      connector_options: {format: jsonl}
      formatter: pairs
      options: {prompt: question, chosen: response_j, rejected: response_k}
      local: data/my_pairs.jsonl
      ...

Options (checked when the catalog loads: an unknown key or a wrong type is a one-line error):
  prompt:    raw key of the prompt (default "prompt"): a string, or TRL's conversational form, a
             list of {role, content} messages (system, then user/assistant turns ending with a
             user turn): the last user turn is the instruction, earlier exchanges the history,
             a system message goes to meta.system
  chosen:    raw key of the preferred answer (default "chosen"): a string, or a list holding one
             {role: assistant, content} message (TRL's conversational form)
  rejected:  raw key of the rejected answer (default "rejected"), same forms as chosen
  input:     raw key of extra input appended to the prompt, or null (default null)
  category:  fixed category for every record (default: the catalog's)
  meta_keys: raw keys copied into the record's meta JSON (scores, ids, provenance)

A record with a missing, non-text or empty prompt/chosen/rejected field, or whose two answers
are the same text, is quarantined with the reason naming the field. forge publish writes pairs
in TRL's conversational layout (docs/publish.md), which this formatter reads back unchanged.
"""

from __future__ import annotations

import json

from forge.formatters.dialogue import to_record
from forge.formatters.fields import FieldError, empty_answer, text_field

VERSION = "1"
# option -> (allowed types, default); None in the types: the option may be null
OPTIONS: dict[str, tuple[tuple, object]] = {
    "prompt": ((str,), "prompt"),
    "chosen": ((str,), "chosen"),
    "rejected": ((str,), "rejected"),
    "input": ((str, type(None)), None),
    "category": ((str,), "general"),
    "meta_keys": ((list,), []),
}


def check_options(options: dict) -> tuple[str, str] | None:
    """(option, problem) for the first bad option, or None. The catalog calls this on load, so a
    typo ("promt") fails before a build reads a single record."""
    import difflib

    for key, value in options.items():
        if key not in OPTIONS:
            close = difflib.get_close_matches(str(key), list(OPTIONS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            return str(key), f"unknown option{hint}; pairs takes {', '.join(OPTIONS)}"
        types, _ = OPTIONS[key]
        if not isinstance(value, types) or (
            key == "meta_keys" and not all(isinstance(k, str) for k in value)
        ):
            want = "a list of raw key names" if key == "meta_keys" else "a raw key name (a string)"
            return str(key), f"expected {want}, found {value!r}"
        if key in ("prompt", "chosen", "rejected") and not value.strip():
            return str(key), "expected a raw key name, found an empty string"
    return None


def _answer(record: dict, key: str) -> str:
    """An answer field: a string, or [{role: assistant, content}] (TRL's conversational form)."""
    value = record.get(key)
    if isinstance(value, list):
        if len(value) != 1 or not isinstance(value[0], dict) or value[0].get("role") != "assistant":
            raise FieldError(f"field {key!r} must be a string or one {{role: assistant, content}} message")
        value = value[0].get("content")
        record = {key: value}
    text = text_field(record, key, required=True, allow_empty=False)
    if empty_answer(text, frozenset()):
        raise FieldError(f"field {key!r} is empty: only a header or punctuation ({text.strip()[:40]!r})")
    return text


def _prompt(record: dict, key: str, input_key: str | None) -> tuple[str, str, list[dict], str | None]:
    """(instruction, input, history, system) from a string prompt or a list of messages."""
    value = record.get(key)
    if not isinstance(value, list):
        instruction = text_field(record, key, required=True, allow_empty=False)
        inp = text_field(record, input_key, required=False) if input_key else ""
        return instruction, inp, [], None
    turns, system = [], None
    for i, m in enumerate(value):
        role = m.get("role") if isinstance(m, dict) else None
        content = m.get("content") if isinstance(m, dict) else None
        if role not in ("system", "user", "assistant") or not isinstance(content, str):
            raise FieldError(f"field {key!r}[{i}] must be {{role: system|user|assistant, content: str}}")
        if role == "system":
            system = content
        else:
            turns.append((role, content))
    if not turns or turns[-1][0] != "user" or not turns[-1][1].strip():
        raise FieldError(f"field {key!r} must end with a non-empty user message")
    # the placeholder reply makes the turns a complete dialogue; to_record pairs the earlier ones
    instruction, _, history, _ = to_record([*turns, ("assistant", "reply")])
    return instruction, "", history, system


def make(options: dict, source: str):
    problem = check_options(options)
    if problem:
        raise ValueError(f"pairs option {problem[0]!r}: {problem[1]}")
    opt = {k: options.get(k, default) for k, (_, default) in OPTIONS.items()}
    prompt_key, chosen_key, rejected_key = opt["prompt"], opt["chosen"], opt["rejected"]

    def format_batch(batch, reject) -> dict[str, list]:
        keys = ("instruction", "input", "output", "rejected", "history", "raw_row", "raw_line", "meta")
        out: dict[str, list] = {k: [] for k in keys}
        for record, row, line in zip(batch.as_records(), batch.rows, batch.lines, strict=True):
            try:
                instruction, inp, history, system = _prompt(record, prompt_key, opt["input"])
                chosen, rejected = _answer(record, chosen_key), _answer(record, rejected_key)
                if chosen.strip() == rejected.strip():
                    raise FieldError(f"fields {chosen_key!r} and {rejected_key!r} hold the same answer")
            except FieldError as e:
                raw = json.dumps(record, ensure_ascii=False, default=str)[:4000]
                reject(raw, batch.file, row, line, str(e))
                continue
            meta = {k: record.get(k) for k in opt["meta_keys"]}
            if system:
                meta["system"] = system
            for key, value in (
                ("instruction", instruction),
                ("input", inp),
                ("output", chosen),
                ("rejected", rejected),
                ("history", history),
                ("raw_row", row),
                ("raw_line", line),
                ("meta", json.dumps(meta, ensure_ascii=False, default=str) if meta else None),
            ):
                out[key].append(value)
        n = len(out["instruction"])
        out["category"] = [opt["category"]] * n
        out["raw_file"] = [batch.file] * n
        out["template"] = [None] * n
        out["variant"] = [""] * n
        return out

    return format_batch
