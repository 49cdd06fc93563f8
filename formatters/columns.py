"""Column mapping: the formatter for every source whose records already hold an
instruction, an optional input and an output, under whatever key names.

Options (all plain YAML, so a new JSON-family source needs no Python):
  instruction: raw key (default "instruction")
  input:       raw key, or null for none (default "input")
  output:      raw key, or a list of alternatives (default ["output", "response"])
  category:    fixed category for every record (default: the catalog's)
  category_key: raw key whose value becomes the category (e.g. dolly "category")
  allow_empty_output: keep records whose output is empty (default false); an output that
               holds only a header or punctuation ("Answer:", "【答案】", "...") is no answer
               and is quarantined either way
  meta_keys:   raw keys copied into the record's meta JSON (provenance)
  history:     raw key holding earlier turns as [{user, assistant}] (forge's own schema)
  fill_from:   {raw key: other raw key}: when the first key's value is empty or one of
               `placeholders`, the record takes the other key's value instead, and
               meta.filled_from says so (Chinese-medical "ask" of "无" -> the "title")
  placeholders: values that stand for "nothing here" (compared after trimming)
"""

from __future__ import annotations

import json

from forge.formatters.fields import FieldError, empty_answer, first_key, text_field

VERSION = "3"


def make(options: dict, source: str):
    instruction_key = options.get("instruction", "instruction")
    input_key = options.get("input", "input")
    output_keys = options.get("output", ["output", "response"])
    if isinstance(output_keys, str):
        output_keys = [output_keys]
    category = options.get("category", "general")
    category_key = options.get("category_key")
    allow_empty = bool(options.get("allow_empty_output", False))
    meta_keys = list(options.get("meta_keys", []))
    history_key = options.get("history")
    fill_from = dict(options.get("fill_from") or {})
    placeholders = {str(p).strip() for p in options.get("placeholders", [])}

    def field(record: dict, key: str, filled: dict, **checks) -> str:
        value = record.get(key)
        if key in fill_from and (
            value is None or (isinstance(value, str) and value.strip() in placeholders | {""})
        ):
            other = text_field(record, fill_from[key], required=False)
            if other.strip():
                filled[key] = fill_from[key]
                return other
            if value is not None and value.strip():
                raise FieldError(
                    f"field {key!r} is a placeholder ({value.strip()!r}) and {fill_from[key]!r} is empty"
                )
        return text_field(record, key, **checks)

    def format_batch(batch, reject) -> dict[str, list]:
        out = {
            k: []
            for k in ("instruction", "input", "output", "category", "raw_row", "raw_line", "meta", "history")
        }
        for record, row, line in zip(batch.as_records(), batch.rows, batch.lines, strict=True):
            try:
                filled: dict = {}
                instruction = field(record, instruction_key, filled, required=True, allow_empty=False)
                inp = field(record, input_key, filled, required=False) if input_key else ""
                # prompt-only corpora (allow_empty_output) may have no output field at all
                output_key = first_key(record, output_keys)
                output = text_field(record, output_key, required=not allow_empty, allow_empty=allow_empty)
                if output.strip() and empty_answer(output, frozenset()):
                    raise FieldError(
                        f"field {output_key!r} is empty: only a header or punctuation ({output.strip()[:40]!r})"
                    )
                cat = text_field(record, category_key, required=False) if category_key else ""
                history = _history(record, history_key) if history_key else []
            except FieldError as e:
                reject(json.dumps(record, ensure_ascii=False, default=str), batch.file, row, line, str(e))
                continue
            out["instruction"].append(instruction)
            out["input"].append(inp)
            out["output"].append(output)
            out["category"].append(cat or category)
            out["history"].append(history)
            out["raw_row"].append(row)
            out["raw_line"].append(line)
            meta = {k: record.get(k) for k in meta_keys}
            if filled:
                meta["filled_from"] = filled
            out["meta"].append(json.dumps(meta, ensure_ascii=False) if meta else None)
        n = len(out["instruction"])
        if not history_key:
            out["history"] = None  # no earlier turns
        out["raw_file"] = [batch.file] * n
        out["template"] = [None] * n
        out["variant"] = [""] * n
        return out

    return format_batch


def _history(record: dict, key: str) -> list[dict]:
    turns = record.get(key) or []
    if not isinstance(turns, list):
        raise FieldError(f"field {key!r} is {type(turns).__name__}, expected a list of turns")
    out = []
    for i, t in enumerate(turns):
        if (
            not isinstance(t, dict)
            or not isinstance(t.get("user"), str)
            or not isinstance(t.get("assistant"), str)
        ):
            raise FieldError(f"field {key!r}[{i}] must be {{user: str, assistant: str}}")
        out.append({"user": t["user"], "assistant": t["assistant"]})
    return out
