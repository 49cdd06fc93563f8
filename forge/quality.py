"""Quality filters: named, composable steps. Each step looks at a table of records and
returns (keep mask, reason); the caller writes every dropped record out with its reason,
so input = kept + dropped, always (datatrove style).

Steps and their specs (CLI: --quality NAME[=VALUE], repeatable):
  min_output_chars=N    output shorter than N characters (after stripping); default 1
  max_chars=N           instruction + input + output longer than N characters
  min_chars=N           instruction + input + output shorter than N characters
  no_echo               output equal to the instruction (case/space-insensitive), or an
                        output that only repeats the instruction and input
  ngram_repeat=R        more than R of the output's word 3-grams are repeats (degenerate loops)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import numpy as np
import polars as pl

Step = Callable[[pl.DataFrame], tuple[np.ndarray, str]]


def _norm(col: str) -> pl.Expr:
    return pl.col(col).str.to_lowercase().str.replace_all(r"\s+", " ").str.strip_chars()


def min_output_chars(n: int = 1) -> Step:
    def step(df: pl.DataFrame):
        keep = df.select(pl.col("output").str.strip_chars().str.len_chars() >= n).to_series().to_numpy()
        return keep, f"min_output_chars: output shorter than {n} characters"

    return step


def _total_chars(df: pl.DataFrame) -> np.ndarray:
    return (
        df.select(sum(pl.col(c).str.len_chars() for c in ("instruction", "input", "output")))
        .to_series()
        .to_numpy()
    )


def max_chars(n: int) -> Step:
    def step(df: pl.DataFrame):
        return _total_chars(df) <= n, f"max_chars: longer than {n} characters"

    return step


def min_chars(n: int) -> Step:
    def step(df: pl.DataFrame):
        return _total_chars(df) >= n, f"min_chars: shorter than {n} characters"

    return step


def no_echo() -> Step:
    def step(df: pl.DataFrame):
        out = (
            df.select(
                (_norm("output") == _norm("instruction"))
                | (
                    _norm("output")
                    == pl.concat_str([_norm("instruction"), _norm("input")], separator=" ").str.strip_chars()
                )
            )
            .to_series()
            .to_numpy()
        )
        return ~out, "no_echo: output repeats the instruction"

    return step


def ngram_repeat(max_ratio: float = 0.3, n: int = 3) -> Step:
    def step(df: pl.DataFrame):
        keep = np.ones(df.height, dtype=bool)
        for i, text in enumerate(df["output"].to_list()):
            words = text.split()
            grams = [tuple(words[j : j + n]) for j in range(len(words) - n + 1)]
            if len(grams) >= 4:
                repeated = sum(c - 1 for c in Counter(grams).values() if c > 1)
                keep[i] = repeated / len(grams) <= max_ratio
        return keep, f"ngram_repeat: more than {max_ratio:.0%} repeated word {n}-grams in the output"

    return step


STEPS = {
    "min_output_chars": (min_output_chars, int),
    "max_chars": (max_chars, int),
    "min_chars": (min_chars, int),
    "no_echo": (no_echo, None),
    "ngram_repeat": (ngram_repeat, float),
}


def parse_step(spec: str) -> Step:
    name, _, value = spec.partition("=")
    if name not in STEPS:
        import difflib

        close = difflib.get_close_matches(name, STEPS, n=1)
        raise ValueError(
            f"unknown quality step {name!r}"
            + (f" (did you mean {close[0]!r}?)" if close else "")
            + f"; steps: {', '.join(STEPS)}"
        )
    factory, cast = STEPS[name]
    if cast is None:
        if value:
            raise ValueError(f"quality step {name!r} takes no value")
        return factory()
    try:
        return factory(cast(value)) if value else factory()
    except ValueError:
        raise ValueError(f"quality step {name!r}: cannot read {value!r} as {cast.__name__}") from None


def apply(df: pl.DataFrame, steps: list[Step]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Run steps in order; a record is dropped by the first step that rejects it."""
    reasons = np.full(df.height, None, dtype=object)
    alive = np.ones(df.height, dtype=bool)
    for step in steps:
        idx = np.flatnonzero(alive)
        if not len(idx):
            break
        keep, reason = step(df[idx])
        dropped = idx[~keep]
        reasons[dropped] = reason
        alive[dropped] = False
    kept = df.filter(pl.Series(alive))
    dropped = df.filter(pl.Series(~alive)).with_columns(
        pl.Series("reason", reasons[~alive].tolist(), dtype=pl.String)
    )
    return kept, dropped
