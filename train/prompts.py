"""Prompt rendering: a unified record -> text segments, each marked trainable or not.

Templates (forge's own wording, in the Alpaca layout of "###" sections):
  alpaca   preamble + ### Instruction / ### Input / ### Response sections; the input
           section is left out when a record has no input
  chat     the tokenizer's own chat template (apply_chat_template), for families that ship one

Multi-turn records (history) render every earlier turn before the last one. With
mask_history=False (default) every assistant turn is trained on; with True only the last.
With train_on_inputs=True the prompt tokens are trained on as well.
"""

from __future__ import annotations

PREAMBLE_WITH_INPUT = (
    "The following is a task for an assistant, with extra input that gives context. "
    "Reply with a response that completes the task.\n\n"
)
PREAMBLE_NO_INPUT = (
    "The following is a task for an assistant. Reply with a response that completes the task.\n\n"
)


def alpaca_segments(record: dict, *, mask_history: bool = False) -> list[tuple[str, bool]]:
    """[(text, is_response)], in order. The caller decides what is trained on."""
    segments: list[tuple[str, bool]] = []
    history = record.get("history") or []
    has_input = bool(record.get("input"))
    preamble = PREAMBLE_WITH_INPUT if has_input else PREAMBLE_NO_INPUT
    first = True
    for turn in history:
        head = preamble if first else ""
        segments.append((f"{head}### Instruction:\n{turn['user']}\n\n### Response:\n", False))
        segments.append((turn["assistant"], not mask_history))
        segments.append(("\n\n", False))
        first = False
    head = preamble if first else ""
    prompt = f"{head}### Instruction:\n{record['instruction']}\n\n"
    if has_input:
        prompt += f"### Input:\n{record['input']}\n\n"
    prompt += "### Response:\n"
    segments.append((prompt, False))
    segments.append((record["output"], True))
    return segments


def chat_messages(record: dict) -> list[dict]:
    messages = []
    for turn in record.get("history") or []:
        messages.append({"role": "user", "content": turn["user"]})
        messages.append({"role": "assistant", "content": turn["assistant"]})
    user = record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")
    messages.append({"role": "user", "content": user})
    messages.append({"role": "assistant", "content": record["output"]})
    return messages


def chat_segments(record: dict, tokenizer, *, mask_history: bool = False) -> list[tuple[str, bool]]:
    """Segments from the tokenizer's own chat template. For each assistant turn the prompt
    (everything up to and including the template's assistant header) is not trained on and
    the reply (with the template's end-of-turn text) is."""
    messages = chat_messages(record)
    segments: list[tuple[str, bool]] = []
    done = ""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not (prompt.startswith(done) and full.startswith(prompt)):
            raise ValueError("the chat template does not render conversations incrementally")
        segments.append((prompt[len(done) :], False))
        segments.append((full[len(prompt) :], i == last or not mask_history))
        done = full
    return segments
