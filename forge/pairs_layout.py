"""Preference pairs in TRL's layout, for forge publish.

A published config that holds preference pairs (records of kind pair) gets a companion config
`<name>-pairs` with one row per pair in TRL's conversational preference format, which
DPOTrainer, ORPOTrainer and other preference trainers read as they are:

    prompt    [{role: user, content}, {role: assistant, content}, ..., {role: user, content}]
    chosen    [{role: assistant, content: the record's output}]
    rejected  [{role: assistant, content: the record's rejected answer}]
    id, source                                          the forge record the pair came from

The prompt holds the earlier turns of a multi-turn record (history) as user/assistant messages,
then the last user turn (instruction, and input after a blank line): exactly the messages forge's
own chat template renders in training (forge.train.prompts.chat_messages), so the trainer's chat
template, not a forge text layout, decides the tokens. A source's system prompt (meta.system)
is not a message, as in forge's training. The records of a pair source that are not pairs (an
hh-rlhf rejected reply that answers other turns) are left out of the companion config.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
PAIR_SCHEMA = pa.schema(
    [
        pa.field("prompt", pa.list_(MESSAGE), nullable=False),
        pa.field("chosen", pa.list_(MESSAGE), nullable=False),
        pa.field("rejected", pa.list_(MESSAGE), nullable=False),
        pa.field("id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
    ]
)
SUFFIX = "-pairs"
_NEEDED = ["id", "source", "instruction", "input", "history", "output", "rejected"]


def count_pairs(files: list[Path], keep_ids: set[str] | None) -> int:
    """Pair records among the files (only the ids kept, when a mixture drew a subset)."""
    if not files:
        return 0
    table = pq.ParquetDataset(files).read(columns=["id", "kind"])
    mask = pc.equal(table.column("kind"), "pair")
    if keep_ids is not None:
        mask = pc.and_(mask, pc.is_in(table.column("id"), value_set=pa.array(sorted(keep_ids), pa.string())))
    return int(pc.sum(mask.cast(pa.int64())).as_py() or 0)


def to_pairs(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Unified records -> TRL preference rows; records that are not pairs are dropped."""
    from forge.train.prompts import chat_messages

    batch = batch.filter(pc.equal(batch.column("kind"), "pair"))
    rows = batch.select(_NEEDED).to_pylist()
    prompts, chosen, rejected = [], [], []
    for r in rows:
        messages = chat_messages(r)  # ... user turn, then {assistant: output}
        prompts.append(messages[:-1])
        chosen.append([messages[-1]])
        rejected.append([{"role": "assistant", "content": r["rejected"]}])
    return pa.RecordBatch.from_pydict(
        {
            "prompt": prompts,
            "chosen": chosen,
            "rejected": rejected,
            "id": [r["id"] for r in rows],
            "source": [r["source"] for r in rows],
        },
        schema=PAIR_SCHEMA,
    )


def card_section(example: str) -> list[str]:
    """The dataset card's lines on the `-pairs` configs; `example` names one of them."""
    return [
        "",
        "## Preference pairs",
        "",
        "The `-pairs` configs hold the preference pairs (records of kind `pair`) in TRL's conversational",
        "preference layout: `prompt` (the earlier turns and the last user turn, as `{role, content}`",
        "messages), `chosen` and `rejected` (one assistant message each), and the record's `id` and",
        "`source`. Preference trainers (TRL's DPOTrainer, ORPOTrainer) read them as they are:",
        "",
        "```python",
        f"pairs = datasets.load_dataset(REPO, {example!r}, split='train')",
        "trainer = trl.DPOTrainer(model=model, train_dataset=pairs, processing_class=tokenizer)",
        "```",
    ]
