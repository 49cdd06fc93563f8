"""Per-text counts for language identification (forge.lang): how often each regex matches in
each text of an Arrow string array, and the distinct texts of a batch.

Every pattern is counted by polars' regex engine (all cores, one query for all patterns), except
where a shortcut gives the same number for less. A pattern that is one character class,
counted a character at a time or in runs (ASCII_CLASSES: letters, non-space characters, words
of letters), is counted from a pure-ASCII text's bytes in numpy; in any other text the bytes
give its ASCII matches and the regex is asked only about the rest (for \\p{L}: the non-ASCII
characters that are not letters, a few punctuation marks in Chinese text). The regex pays for
every match it finds: counting \\p{L} in 131k English prompts took 360 ms, the bytes take 25.
tests/test_tags.py checks each shortcut against its regex. (Whole words from a list,
"\\b(?:the|of)\\b", were tried the same way: numpy took longer than the regex, which finds
few matches.)
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# byte classes, as numpy expressions over a uint8 array (wrapping arithmetic); bytes of 128 and
# up (the bytes of every non-ASCII character) are in none of them
_CLASSES = {
    "letter": lambda b: ((b | 32) - 97) < 26,  # A-Z, a-z: \p{L} and \p{Latin} in ASCII
    "not space": lambda b: (b < 128) & ~(((b - 9) < 5) | (b == 32)),  # \s: \t \n \v \f \r, space
    "space or newline": lambda b: (b == 32) | (b == 10),
}
# pattern -> (class, run, other): run 0 counts the class's characters in ASCII, 1 and 2 its
# maximal runs of at least that many characters (the matches of a greedy class+ or class{2,}).
# other: how a text that is not pure ASCII is counted: "ascii" when the pattern matches ASCII
# only (the bytes count it exactly), a regex for the non-ASCII characters it does NOT match
# (its count = ASCII matches + non-ASCII characters - that regex's; few matches, so fast), or
# None: by the pattern's own regex.
ASCII_CLASSES = {
    r"\p{L}": ("letter", 0, r"[^\p{L}\x00-\x7F]"),
    r"[A-Za-z]": ("letter", 0, "ascii"),
    r"\S": ("not space", 0, r"[\s&&[^\x00-\x7F]]"),
    r"[ \n]": ("space or newline", 0, "ascii"),
    r"[A-Za-z]+": ("letter", 1, "ascii"),
    r"\p{L}{2,}": ("letter", 2, None),
    r"\p{Latin}{2,}": ("letter", 2, None),
}


def is_ascii(texts: pa.Array) -> np.ndarray:
    return pc.string_is_ascii(texts).to_numpy(zero_copy_only=False)


def as_text(texts: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One string array, its chunks combined and null read as "" (an all-null array too)."""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    if pa.types.is_null(texts.type):
        texts = texts.cast(pa.string())
    return pc.fill_null(texts, "")


def distinct(texts: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """The distinct texts (null read as ""), in first-seen order, and each text's index among
    them: a rule reads each distinct text once and its result is scattered back."""
    encoded = as_text(texts).dictionary_encode()
    return encoded.dictionary, encoded.indices.to_numpy(zero_copy_only=False)


def counts(texts: pa.Array, *patterns: str, ascii: np.ndarray | None = None) -> list[np.ndarray]:
    """Matches of each pattern per text (null counts 0). `ascii`: which texts are pure ASCII,
    when the caller knows already."""
    n = len(texts)
    out = [np.zeros(n, dtype=np.int64) for _ in patterns]
    if n == 0 or not patterns:
        return out
    texts = as_text(texts)
    shortcut = [i for i, p in enumerate(patterns) if p in ASCII_CLASSES]
    if not shortcut:
        return _regex_counts(texts, list(patterns))
    ascii = is_ascii(texts) if ascii is None else ascii
    view = _Bytes(texts)
    for i in shortcut:
        out[i] = view.count(*ASCII_CLASSES[patterns[i]][:2])
    regex = [i for i in range(len(patterns)) if i not in shortcut]
    rows = np.flatnonzero(ascii)
    if len(rows) and regex:  # ASCII texts: the other patterns by the regex
        part = texts if len(rows) == n else texts.take(pa.array(rows))
        for i, values in zip(regex, _regex_counts(part, [patterns[i] for i in regex]), strict=True):
            out[i][rows] = values
    rows = np.flatnonzero(~ascii)
    if len(rows):  # the others: what the bytes cannot tell, by the regex, in one query
        asked = {}  # pattern index -> (the regex asked, whether it is the pattern's complement)
        for i, pattern in enumerate(patterns):
            other = ASCII_CLASSES[pattern][2] if i in shortcut else None
            if other != "ascii":
                asked[i] = (pattern, False) if other is None else (other, True)
        part = texts if len(rows) == n else texts.take(pa.array(rows))
        found = _regex_counts(part, [r for r, _complement in asked.values()]) if asked else []
        chars = view.non_ascii_chars()[rows]
        for (i, (_regex, complement)), values in zip(asked.items(), found, strict=True):
            if complement:  # ASCII matches + the non-ASCII characters the complement did not match
                out[i][rows] += chars - values
            else:
                out[i][rows] = values
    return out


def count(texts: pa.Array, pattern: str) -> np.ndarray:
    return counts(texts, pattern)[0]


def _regex_counts(texts: pa.Array, patterns: list[str]) -> list[np.ndarray]:
    """All patterns in one polars query (one pass of its thread pool: a query per pattern costs a
    few ms each, whatever the batch); polars' regex engine runs on all cores, pyarrow's
    count_substring_regex on one."""
    import polars as pl

    frame = pl.DataFrame({"t": pl.Series(texts, dtype=pl.String)}).select(
        pl.col("t").str.count_matches(p).fill_null(0).alias(str(i)) for i, p in enumerate(patterns)
    )
    return [frame[str(i)].to_numpy().astype(np.int64) for i in range(len(patterns))]


class _Bytes:
    """The bytes of a batch of texts, one array, with each text's span; what the shortcuts
    need is worked out once per batch. A count is a text's ASCII matches only."""

    def __init__(self, texts: pa.Array):
        if not (pa.types.is_string(texts.type) or pa.types.is_large_string(texts.type)):
            texts = texts.cast(pa.large_string())
        width = np.int64 if pa.types.is_large_string(texts.type) else np.int32
        _validity, offsets, data = texts.buffers()
        offsets = np.frombuffer(offsets, dtype=width)[texts.offset : texts.offset + len(texts) + 1]
        begin = int(offsets[0])
        self.offsets = offsets.astype(np.int64) - begin
        size = int(self.offsets[-1])
        self.data = (
            np.frombuffer(data, dtype=np.uint8)[begin : begin + size] if size else np.zeros(0, np.uint8)
        )
        starts, ends = self.offsets[:-1], self.offsets[1:]
        self.nonempty = np.flatnonzero(ends > starts)
        self.starts, self.lasts = starts[self.nonempty], ends[self.nonempty] - 1
        longest = int((ends - starts).max())
        self.sum_type = np.uint16 if longest < 2**16 else np.int64  # no text's count overflows
        self._classes: dict[str, np.ndarray] = {}

    def _class(self, name: str) -> np.ndarray:
        if name not in self._classes:
            self._classes[name] = _CLASSES[name](self.data)
        return self._classes[name]

    def _begins(self, hit: np.ndarray) -> np.ndarray:
        """Where a run of hits begins: a hit after a miss, or at a text's first byte."""
        begins = np.empty_like(hit)
        if len(hit):
            begins[0] = hit[0]
            np.greater(hit[1:], hit[:-1], out=begins[1:])
            begins[self.starts] = hit[self.starts]
        return begins

    def _ends(self, hit: np.ndarray) -> np.ndarray:
        """Where a run of hits ends: a hit before a miss, or at a text's last byte."""
        ends = np.empty_like(hit)
        if len(hit):
            ends[-1] = hit[-1]
            np.greater(hit[:-1], hit[1:], out=ends[:-1])
            ends[self.lasts] = hit[self.lasts]
        return ends

    def _per_text(self, flags: np.ndarray) -> np.ndarray:
        """The set flags within each text."""
        out = np.zeros(len(self.offsets) - 1, dtype=np.int64)
        if len(self.nonempty):
            # reduceat sums from each start to the next one; the texts in between are empty
            out[self.nonempty] = np.add.reduceat(flags.view(np.uint8), self.starts, dtype=self.sum_type)
        return out

    def non_ascii_chars(self) -> np.ndarray:
        """Per text, its characters that are not ASCII: the lead bytes of UTF-8 sequences."""
        return self._per_text(self.data >= 0xC0)

    def count(self, name: str, run: int) -> np.ndarray:
        hit = self._class(name)
        if run:
            hit = self._begins(hit)
            if run == 2:  # ... that goes on to the next byte of the same text
                hit = hit & ~self._ends(self._class(name))
        return self._per_text(hit)
