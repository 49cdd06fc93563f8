"""Record-level language identification.

Default detector ("fast"):
 1. Script fast path, vectorized in Arrow (RE2 unicode classes): count letters per
    script over instruction+input+output. Scripts that name one language settle the
    record at once: Han without kana -> zh, kana -> ja, Hangul -> ko, Thai -> th,
    Greek -> el, Hebrew -> he, Georgian -> ka, Armenian -> hy.
 2. Everything else (Latin, Cyrillic, Arabic, Devanagari ... where one script serves
    many languages) goes to pycld2, a compiled n-gram detector (~100k texts/s).

Mixed-language rule: a record is tagged by its *non-Latin* script as soon as that script
holds >= 10% of its letters. Latin letters in CJK records are overwhelmingly code,
identifiers, units and names, while the reverse (CJK inside an English record) is rare
and meaningful. So "写一个Python函数 ... def f(x): return x" is zh, not en. The dataset
tag follows from the record tags (forge.lang.dataset_lang): EN or CN when >= 95% of
records are en or zh, ML otherwise.

Records with no letters at all (digits, punctuation, empty) get "und" with score 0.

The "langdetect" detector is kept selectable because the design card names it; it is
seeded so that repeated runs agree. It is ~200x slower.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from forge.vocab import DATASET_LANG_DOMINANCE

MIXED_SCRIPT_SHARE = 0.10
DETECTORS = ("fast", "langdetect")

# script regex -> language it settles (None: script shared by many languages)
_SETTLING_SCRIPTS = {
    "ko": r"\p{Hangul}",
    "th": r"\p{Thai}",
    "el": r"\p{Greek}",
    "he": r"\p{Hebrew}",
    "ka": r"\p{Georgian}",
    "hy": r"\p{Armenian}",
}
_HAN = r"\p{Han}"
PREFIX = 256
EN_FUNCTION_SHARE = 0.08
_EN_FUNCTION_RE = r"\b(?:the|of|and|to|is|that|with|for|are|was)\b"
_KANA = r"[\p{Hiragana}\p{Katakana}]"
_LETTER = r"\p{L}"

_CLD2_FIX = {"zh-Hant": "zh", "iw": "he", "in": "id", "jw": "jv", "tl": "fil", "un": "und"}


def _count(texts: pa.Array, pattern: str) -> np.ndarray:
    import polars as pl

    # polars' regex engine runs on all cores; pyarrow's count_substring_regex is single-threaded
    return pl.Series(texts).str.count_matches(pattern).fill_null(0).to_numpy().astype(np.int64)


def detect_fast(texts: pa.Array) -> tuple[list[str], np.ndarray]:
    """Language code and confidence for every text (see module doc for the rule)."""
    # the first PREFIX characters decide: enough for any detector, and it bounds the cost
    texts = pc.utf8_slice_codeunits(pc.fill_null(texts, ""), 0, PREFIX)
    n = len(texts)
    codes = np.full(n, "", dtype=object)
    scores = np.zeros(n, dtype=np.float32)
    # pure-ASCII texts hold no single-language script: they skip the script passes entirely
    non_ascii = np.flatnonzero(~pc.string_is_ascii(texts).to_numpy(zero_copy_only=False))
    if len(non_ascii):
        sub = texts.take(pa.array(non_ascii))
        letters = _count(sub, _LETTER)
        safe = np.maximum(letters, 1)
        sub_codes = np.full(len(non_ascii), "", dtype=object)
        sub_scores = np.zeros(len(non_ascii), dtype=np.float32)
        sub_codes[letters == 0] = "und"
        han, kana = _count(sub, _HAN), _count(sub, _KANA)
        cjk = han + kana
        is_cjk = (letters > 0) & (cjk >= MIXED_SCRIPT_SHARE * safe)
        is_ja = is_cjk & (kana >= 0.2 * np.maximum(cjk, 1))
        sub_codes[is_ja] = "ja"
        sub_codes[is_cjk & ~is_ja] = "zh"
        sub_scores[is_cjk] = (cjk / safe)[is_cjk]
        for code, pattern in _SETTLING_SCRIPTS.items():
            todo = sub_codes == ""
            if not todo.any():
                break
            hits = _count(sub, pattern)
            settle = todo & (hits >= MIXED_SCRIPT_SHARE * safe) & (hits > 0)
            sub_codes[settle] = code
            sub_scores[settle] = (hits / safe)[settle]
        codes[non_ascii] = sub_codes
        scores[non_ascii] = sub_scores

    ascii_idx = np.flatnonzero(codes == "")
    if len(ascii_idx):
        is_en, share = _english_function_words(texts.take(pa.array(ascii_idx)))
        codes[ascii_idx[is_en]] = "en"
        scores[ascii_idx[is_en]] = np.minimum(1.0, 0.5 + share[is_en] * 2)

    rest = np.flatnonzero(codes == "")
    if len(rest):
        rest_texts = texts.take(pa.array(rest)).to_pylist()
        for i, text in zip(rest, rest_texts, strict=True):
            code, score = _cld2(text)
            codes[i] = code
            scores[i] = score
    return codes.tolist(), scores


def _english_function_words(texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Pure-ASCII texts where English function words are frequent are English.

    A text is settled as en when "the" occurs and the function words (_EN_FUNCTION_RE) make
    up >= 8% of its words or occur >= 4 times (numbers and option lists dilute the share in
    math records); other Latin-script languages that share a word or two ("is" in Dutch,
    "to" in Polish, "was" in German) do not reach that together with "the". Everything else goes to
    cld2. Counted with polars' regex engine (multi-threaded), one pass per pattern.
    """
    import polars as pl

    low = pl.Series(texts).str.to_lowercase()
    the = low.str.count_matches(r"\bthe\b").to_numpy().astype(np.int64)
    hits = low.str.count_matches(_EN_FUNCTION_RE).to_numpy().astype(np.int64)
    words = (
        low.str.count_matches(" ", literal=True) + low.str.count_matches("\n", literal=True)
    ).to_numpy() + 1
    share = hits / np.maximum(words, 1)
    return (the > 0) & ((share >= EN_FUNCTION_SHARE) | (hits >= 4)) & (words >= 4), share


def _np(arr) -> np.ndarray:
    return arr.to_numpy(zero_copy_only=False).astype(np.int64)


def _cld2(text: str) -> tuple[str, float]:
    import pycld2

    try:
        _reliable, _nbytes, details = pycld2.detect(text, bestEffort=True)
    except pycld2.error:
        # cld2 rejects some control characters; strip them and retry once
        cleaned = "".join(ch for ch in text if ch.isprintable() or ch in "\n\t")
        try:
            _reliable, _nbytes, details = pycld2.detect(cleaned, bestEffort=True)
        except pycld2.error:
            return "und", 0.0
    name, code, percent, _score = details[0]
    code = _CLD2_FIX.get(code, code).split("-")[0]
    return code, (percent / 100.0 if code != "und" else 0.0)


def detect_langdetect(texts: pa.Array) -> tuple[list[str], np.ndarray]:
    from langdetect import DetectorFactory, detect_langs
    from langdetect.lang_detect_exception import LangDetectException

    DetectorFactory.seed = 0
    codes, scores = [], []
    for text in pc.fill_null(texts, "").to_pylist():
        try:
            best = detect_langs(text)[0]
            codes.append(best.lang.split("-")[0])
            scores.append(best.prob)
        except LangDetectException:
            codes.append("und")
            scores.append(0.0)
    return codes, np.asarray(scores, dtype=np.float32)


def detect(texts: pa.Array, detector: str = "fast") -> tuple[list[str], np.ndarray]:
    if detector == "fast":
        return detect_fast(texts)
    if detector == "langdetect":
        return detect_langdetect(texts)
    raise ValueError(f"unknown language detector {detector!r}; choose one of {', '.join(DETECTORS)}")


def record_text(table: pa.Table) -> pa.Array:
    """The text a record's language is judged on: instruction + input + output."""
    cols = [pc.fill_null(table.column(c), "") for c in ("instruction", "input", "output")]
    return pc.binary_join_element_wise(*cols, "\n").combine_chunks()


def dataset_lang(lang_counts: dict[str, int]) -> str:
    total = sum(lang_counts.values())
    if total == 0:
        return "ML"
    if lang_counts.get("en", 0) / total >= DATASET_LANG_DOMINANCE:
        return "EN"
    if lang_counts.get("zh", 0) / total >= DATASET_LANG_DOMINANCE:
        return "CN"
    return "ML"
