"""CSV with a header row, in a declared encoding (Chinese-medical is GB18030).

Options: encoding (default utf-8), delimiter (default ",").
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator

from forge.connectors.base import BATCH_SIZE, RawBatch, Reject, SourceFile, open_text, show_raw

VERSION = "1"
_UNDECODABLE = re.compile("[\udc80-\udcff]")


def read(files: list[SourceFile], options: dict, reject: Reject) -> Iterator[RawBatch]:
    encoding = options.get("encoding", "utf-8")
    delimiter = options.get("delimiter", ",")
    for f in files:
        batch = RawBatch(f.name)
        with open_text(f, encoding) as fh:
            reader = csv.reader(fh, delimiter=delimiter)
            header = next(reader, None)
            if header is None:
                continue
            header = [h.strip() for h in header]
            row = 0
            line_start = reader.line_num + 1
            for values in reader:
                raw = delimiter.join(values)
                if _UNDECODABLE.search(raw):
                    reject(show_raw(raw), f.name, row, line_start, f"undecodable bytes ({encoding})")
                elif len(values) != len(header):
                    reject(
                        raw,
                        f.name,
                        row,
                        line_start,
                        f"expected {len(header)} fields ({', '.join(header)}), found {len(values)}",
                    )
                else:
                    batch.add(dict(zip(header, values, strict=True)), row, line_start)
                row += 1
                line_start = reader.line_num + 1
                if len(batch) >= BATCH_SIZE:
                    yield batch
                    batch = RawBatch(f.name)
        if len(batch):
            yield batch
