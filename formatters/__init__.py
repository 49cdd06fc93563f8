"""Formatters: raw records -> unified records.

A formatter module exposes

    VERSION: str
    make(options: dict, source: str) -> FormatFn
    FormatFn(batch: RawBatch, reject: Reject) -> dict[str, list | pyarrow.Array]

The returned dict holds forge.schema.FORMATTED_COLUMNS plus ``variant`` (what makes two
records from the same raw row distinct: a template id, a mode). Template formatters may add
``lang_text`` and ``lang_output_text``: the raw content the prompt's and the answer's language
are read from, so a template's own wording does not decide them. Anything that cannot be
formatted goes to ``reject`` with the field that failed. Formatters do not import forge.
A formatter may expose ``check_options(options) -> (option, problem) | None``: the catalog
calls it on load, so a bad option is a one-line error before any build.
"""

from forge.formatters import columns, cot, dialogue, pairs, tasks

FORMATTERS = {
    "columns": columns,  # plain column mapping, configured in YAML (alpaca, BELLE, GPTeacher, ...)
    "cot": cot,  # FLAN CoT TSV rows through Jinja templates
    "dialogue": dialogue,  # multi-turn conversations in each corpus's own shape
    "pairs": pairs,  # preference pairs under any column names, configured in YAML
    "tasks": tasks,  # sources that need their own logic (SNI, GAOKAO, DuIE, HC3, WebGPT)
}

__all__ = ["FORMATTERS"]
