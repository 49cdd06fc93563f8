"""Connectors: raw corpus files (local or from the Hub) -> batches of raw records.

A connector knows a file *format*, not a dataset. Each module exposes

    VERSION: str
    read(files: list[SourceFile], options: dict, reject: Reject) -> Iterator[RawBatch]

Records that cannot be parsed are handed to ``reject`` with the file, the line and the
reason; a connector never drops anything silently. Connectors import nothing from the
later stages (formatters, forge, train).
"""

from forge.connectors import csvfile, jsonfile, parquetfile, tsv
from forge.connectors.base import RawBatch, Reject, SourceFile

CONNECTORS = {
    "json": jsonfile,  # JSON array, JSON object holding a list, or JSONL (sniffed)
    "tsv": tsv,  # headerless TSV, no quoting (FLAN CoT)
    "csv": csvfile,  # CSV with header, declared encoding
    "parquet": parquetfile,  # Parquet (e.g. datasets published by forge)
}

__all__ = ["CONNECTORS", "RawBatch", "Reject", "SourceFile"]
