"""Tag vocabularies (Alpaca-CoT's legend, plus forge's per-record categories).

This module is the single source of truth for what a tag may be.
"""

from __future__ import annotations

# Dataset-level language tag, derived from record-level languages (see forge.lang).
DATASET_LANGS = {
    "EN": "English",
    "CN": "Chinese",
    "ML": "multilingual (no single language reaches the dominance threshold)",
}
TASKS = {
    "MT": "multi-task: many task types in one dataset",
    "TS": "task-specific: one task type",
}
GENS = {
    "HG": "human generated",
    "SI": "self-instruct (model generated from seed tasks)",
    "MIX": "mixed human and model generated",
    "COL": "collected from existing datasets and reformatted",
}
# Per-record category. The catalog gives a default per source; a formatter may refine it.
CATEGORIES = {
    "general": "open instruction following",
    "cot": "chain-of-thought reasoning (rationale before answer)",
    "cot_inversion": "recover the question from a rationale and answer",
    "math": "math word problems",
    "code": "programming",
    "dialogue": "multi-turn conversation",
    "extraction": "information extraction",
    "qa": "question answering",
    "exam": "exam questions",
    "roleplay": "role play",
    "tool": "tool / API use",
    "safety": "safety and harmlessness",
    "medical": "medical consultation",
    "finance": "finance",
    "translation": "translation",
}
# A dataset is EN (or CN) when at least this share of its records is English (Chinese).
DATASET_LANG_DOMINANCE = 0.95
