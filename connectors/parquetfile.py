"""Parquet files (datasets published by forge or anyone else), read in record batches.

Options: columns (list of columns to read; default all). Parquet has no lines: raw_line is 0
and raw_row is the row index within the file.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import pyarrow.parquet as pq

from forge.connectors.base import BATCH_SIZE, RawBatch, Reject, SourceFile, open_binary

VERSION = "1"


def read(files: list[SourceFile], options: dict, reject: Reject) -> Iterator[RawBatch]:
    columns = options.get("columns")
    for f in files:
        row = 0
        # Parquet needs random access: an archive member is read into memory first
        target = f.path if f.member is None else io.BytesIO(open_binary(f).read())
        for batch in pq.ParquetFile(target).iter_batches(batch_size=BATCH_SIZE, columns=columns):
            out = RawBatch(f.name, records=batch.to_pylist())
            out.rows = list(range(row, row + batch.num_rows))
            out.lines = [0] * batch.num_rows
            row += batch.num_rows
            yield out
