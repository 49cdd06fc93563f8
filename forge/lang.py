"""Record-level language identification.

A record is judged on its question (instruction + input); only when that holds fewer than
MIN_LETTERS letters is the whole record (question + output) read. Outputs are often code, lists
of names or translations, which say little about the language the user speaks. Template
formatters (cot, tasks) hand over the raw question instead (the `lang_text` column), so a
record's tag follows its content, not the template's wording: FLAN's English questions in
Chinese prompt wording (cot_zh) are en.

Default detector ("fast"):
 1. Script fast path, vectorized in Arrow (RE2 unicode classes): count letters per
    script. Scripts that name one language settle the
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

Before any counting, markup that carries no language is removed (markup_free): fenced and
inline code, URLs, LaTeX math ($...$, $$...$$, \\(...\\), \\[...\\]) and leftover LaTeX
commands. A GAOKAO math question is mostly LaTeX; its Chinese words decide, not "\\frac".

Too little text to tell: a record with fewer than MIN_LETTERS letters left (and no settling
script) is not guessed ("Heh." is not Khasi). It takes the source's language from the catalog
(EN -> en, CN -> zh) when the letters are in that language's script, else "und". The n-gram
detector's answer is also only taken when it names a language in COMMON_LANGS; anything else
falls back the same way. Fallback tags carry lang_score 0, so `lang_score > 0` selects records
whose language was read from their content.

"und" therefore means: no letters at all (digits, punctuation, empty), or too few / too
unusual letters to tell in a multilingual source. Its score is 0.

The "langdetect" detector is kept selectable because the design card names it; it is
seeded so that repeated runs agree. It is ~200x slower.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from forge.vocab import DATASET_LANG_DOMINANCE

MIXED_SCRIPT_SHARE = 0.10
MIN_LETTERS = 12
CLD2_MIN_PERCENT = 30  # a runner-up language must hold this share of the text to be taken
DETECTORS = ("fast", "langdetect")
VERSION = "3"  # part of the build hash: a changed rule rebuilds
# Languages the n-gram detector may answer with: the xP3 languages plus the major languages of
# the other catalog corpora. cld2 knows ~160, and on short or odd text it reaches for rare ones.
COMMON_LANGS = frozenset(
    "en zh ja ko fr de es it pt nl ru uk pl cs sk sl hr sr bg ro hu el tr ar fa he ur hi bn "
    "mr ta te kn ml gu pa ne or as vi th id ms fil sw yo ig zu xh rw ny st sn wo tn lg ak tw "
    "ln ki rn fon bm eu ca gl da sv no nb fi et lv lt is ga cy sq mk af".split()
)
# catalog lang -> (record language, the script regex its letters must be in)
CATALOG_FALLBACK = {"EN": ("en", r"[A-Za-z]"), "CN": ("zh", r"\p{Han}")}
_MARKUP = [
    r"(?s)```.*?```",  # fenced code
    r"`[^`\n]{1,200}`",  # inline code
    r"(?:https?|ftp)://\S+|www\.\S+",  # URLs
    r"(?s)\$\$.{0,2000}?\$\$|\\\[.{0,2000}?\\\]|\\\(.{0,2000}?\\\)",  # display / inline math
    r"\$[^$]{0,400}?[\\^_{}=][^$]{0,400}?\$",  # $...$ holding math ("$45 ... $75" is money, kept)
    r"\\[A-Za-z]+",  # leftover LaTeX commands
]
MARKUP_WINDOW = 4096

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


def markup_free(texts: pa.Array) -> pa.Array:
    """The texts with code, URLs and LaTeX blanked out (they name no language)."""
    import polars as pl

    series = pl.Series(texts).fill_null("").str.slice(0, MARKUP_WINDOW)
    for pattern in _MARKUP:
        series = series.str.replace_all(pattern, " ")
    return series.to_arrow()


def detect_fast(
    texts: pa.Array, catalog_lang: str = "ML", whole: pa.Array | None = None
) -> tuple[list[str], np.ndarray]:
    """Language code and confidence for every text (see module doc for the rule).

    catalog_lang is the source's dataset-level tag (EN/CN/ML): what a text too short to read
    falls back to. whole, when given, is read instead of a text with too few letters (the
    question "Thanks" is judged together with its answer).
    """
    # the first PREFIX characters decide: enough for any detector, and it bounds the cost
    texts = pc.utf8_slice_codeunits(markup_free(texts), 0, PREFIX)
    letters = _count(texts, _LETTER)
    if whole is not None and (letters < MIN_LETTERS).any():
        short = np.flatnonzero(letters < MIN_LETTERS)
        whole_short = pc.utf8_slice_codeunits(markup_free(whole.take(pa.array(short))), 0, PREFIX)
        merged = texts.to_pylist()
        for i, text in zip(short, whole_short.to_pylist(), strict=True):
            merged[i] = text
        texts = pa.array(merged, pa.string())
        letters = _count(texts, _LETTER)
    n = len(texts)
    codes = np.full(n, "", dtype=object)
    scores = np.zeros(n, dtype=np.float32)
    # pure-ASCII texts hold no single-language script: they skip the script passes entirely
    is_ascii = pc.string_is_ascii(texts).to_numpy(zero_copy_only=False)
    non_ascii = np.flatnonzero(~is_ascii & (letters > 0))
    if len(non_ascii):
        sub = texts.take(pa.array(non_ascii))
        sub_letters = letters[non_ascii]
        safe = np.maximum(sub_letters, 1)
        sub_codes = np.full(len(non_ascii), "", dtype=object)
        sub_scores = np.zeros(len(non_ascii), dtype=np.float32)
        han, kana = _count(sub, _HAN), _count(sub, _KANA)
        cjk = han + kana
        is_cjk = cjk >= MIXED_SCRIPT_SHARE * safe
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

    unread = (codes == "") & (letters >= MIN_LETTERS)
    ascii_idx = np.flatnonzero(unread & is_ascii)
    if len(ascii_idx):
        is_en, share = _english_function_words(texts.take(pa.array(ascii_idx)))
        codes[ascii_idx[is_en]] = "en"
        scores[ascii_idx[is_en]] = np.minimum(1.0, 0.5 + share[is_en] * 2)

    rest = np.flatnonzero((codes == "") & (letters >= MIN_LETTERS))
    if len(rest):
        rest_texts = texts.take(pa.array(rest)).to_pylist()
        for i, text in zip(rest, rest_texts, strict=True):
            code, score = _cld2(text)
            if code != "und":
                codes[i] = code
                scores[i] = score

    unsettled = np.flatnonzero(codes == "")
    if len(unsettled):
        codes[unsettled] = "und"
        if catalog_lang in CATALOG_FALLBACK:
            code, script = CATALOG_FALLBACK[catalog_lang]
            in_script = _count(texts.take(pa.array(unsettled)), script)
            fits = (letters[unsettled] > 0) & (2 * in_script >= letters[unsettled])
            codes[unsettled[fits]] = code
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


def _cld2(text: str) -> tuple[str, float]:
    """cld2's best language among COMMON_LANGS ("und" when none): cld2 reports up to three
    with their share of the text, and on plain English it sometimes ranks Scots first."""
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
    for _name, code, percent, _score in details:
        code = _CLD2_FIX.get(code, code).split("-")[0]
        if code in COMMON_LANGS and percent >= CLD2_MIN_PERCENT:
            return code, percent / 100.0
    return "und", 0.0


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


def detect(
    texts: pa.Array, detector: str = "fast", catalog_lang: str = "ML", whole: pa.Array | None = None
) -> tuple[list[str], np.ndarray]:
    if detector == "fast":
        return detect_fast(texts, catalog_lang, whole)
    if detector == "langdetect":
        return detect_langdetect(texts if whole is None else whole)
    raise ValueError(f"unknown language detector {detector!r}; choose one of {', '.join(DETECTORS)}")


def question_text(table: pa.Table) -> pa.Array:
    """What a record's language is judged on first: its instruction and input. The output is
    often code, a list of names or a translation, which says little about the user's language."""
    cols = [pc.fill_null(table.column(c), "") for c in ("instruction", "input")]
    return pc.binary_join_element_wise(*cols, "\n").combine_chunks()


def record_text(table: pa.Table) -> pa.Array:
    """instruction + input + output: read when the question alone is too short."""
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


ZH_LATIN_MAX_SHARE = 0.05  # more zh records than this with mostly-Latin questions fails a build
ZH_CHECK_MIN_RECORDS = 20  # below this a share is noise (a demo sample), so nothing is checked


def zh_content_problem(frame) -> str | None:
    """Why a dataset's `zh` tags do not match its content, or None. A record is tagged zh from
    its question once 10% of its letters are Han, so the tag can still sit on a question that
    is mostly Latin (English with a Chinese phrase, or English inside a Chinese template). When
    more than 5% of the zh records look like that, the tag no longer tells a user what they get.
    `frame` is a polars DataFrame (or LazyFrame) with lang, instruction and input columns."""
    import polars as pl

    zh = (
        frame.lazy()
        .filter(pl.col("lang") == "zh")
        .select(
            pl.concat_str(
                [pl.col("instruction").fill_null(""), pl.col("input").fill_null("")], separator="\n"
            )
            .str.slice(0, MARKUP_WINDOW)
            .alias("q")
        )
    )
    for pattern in _MARKUP:
        zh = zh.with_columns(pl.col("q").str.replace_all(pattern, " "))
    # Latin is counted in words and Han in characters: one Han character carries about as much
    # as one English word, so "编写一个nodejs脚本" is Chinese and "Please explain a tuple 请解释" is not
    counts = zh.select(
        pl.col("q").str.count_matches(r"[A-Za-z]+").alias("latin"),
        pl.col("q").str.count_matches(_HAN).alias("han"),
    ).collect()
    total = counts.height
    if total < ZH_CHECK_MIN_RECORDS:
        return None
    latin = counts.filter(pl.col("latin") > pl.col("han")).height
    if latin / total > ZH_LATIN_MAX_SHARE:
        return (
            f"{latin} of {total} zh records ({latin / total:.1%}) have a mostly-Latin question "
            f"(more than {ZH_LATIN_MAX_SHARE:.0%}); the zh tag would not match their content"
        )
    return None
