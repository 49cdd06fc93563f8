"""Record-level language identification: `lang` is the prompt's language, `lang_output` the
answer's.

lang: a record is judged on its question (instruction + input); only when that holds fewer
than MIN_LETTERS letters is the whole record (question + output) read. Outputs are often code,
lists of names or translations, which say little about the language the user speaks. Template
formatters (cot, tasks) hand over the raw question instead (the `lang_text` column), so a
record's tag follows its content, not the template's wording: FLAN's English questions in
Chinese prompt wording (cot_zh) are en.

lang_output (detect_output): the language most of the answer is in, read the same way but
without the lead rule below; template formatters hand over the raw answer (`lang_output_text`:
GAOKAO's analysis and answer, FLAN's rationale and answer). An answer with too little text to
read (an option letter, a number, code, a formula) takes the prompt's language; an empty
answer (prompt-only corpora) is "und". So `lang == en and lang_output == zh` is "English
prompts with Chinese answers" and `lang_output == zh` is "Chinese answers".

Default detector ("fast"):
 1. Script fast path, vectorized (forge.lang_counts: polars regex counts, ASCII from the
    bytes; each distinct text of a batch read once): count letters per script. Scripts
    that name one language settle the record at once: Han without kana -> zh, kana -> ja,
    Hangul -> ko, Thai -> th, Greek -> el, Hebrew -> he, Georgian -> ka, Armenian -> hy.
 2. Everything else (Latin, Cyrillic, Arabic, Devanagari ... where one script serves
    many languages) goes to pycld2, a compiled n-gram detector (~100k texts/s).

Mixed-language rule (the prompt's own words decide):
 - Lead: when a prompt opens with an instruction (the text before its first line break or
   colon, at least LEAD_MIN_UNITS words, Han characters counting one each) followed by more
   text, the instruction decides the script. "将以下文字从英文翻译成中文：<English>" is zh
   however long the English, "Translate into English:\n<Chinese>" is en. A Latin lead that
   frames no sentence is a label, not an instruction ("Python Pandas:\n如何删除重复的行？" is zh).
 - Otherwise a non-Latin script settles the record when it holds >= 10% of the letters and
   either outweighs the Latin words (each Han or kana character counts as one word) or the
   Latin words frame no sentence (FRAME_WORDS: function words of English and the commonest
   European languages; code keywords left out). Latin words in Chinese records are mostly
   code, identifiers and names, so "写一个Python函数 ... def f(x)" and "谁是Harrison Kinsley？"
   are zh; a short span inside an English sentence does not flip it: "What does 你好 mean?"
   and "Let α and β be the roots" are en.
 - Names do not decide between Latin-script languages: when the n-gram detector says a
   language other than English, the text is read again without its capitalised words inside
   sentences, and an English second reading is taken ("Would Recep Tayyip Erdoğan be
   unfamiliar with börek?" is en, not tr).
The dataset tag follows from the record tags (forge.lang.dataset_lang): EN or CN when >= 95%
of records are en or zh, ML otherwise.

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

import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from forge.lang_counts import as_text, distinct, is_ascii
from forge.lang_counts import count as _count
from forge.lang_counts import counts as _counts
from forge.vocab import DATASET_LANG_DOMINANCE

MIXED_SCRIPT_SHARE = 0.10
MIN_LETTERS = 12
CLD2_MIN_PERCENT = 30  # a runner-up language must hold this share of the text to be taken
DETECTORS = ("fast", "langdetect")
VERSION = "4"  # part of the build hash: a changed rule rebuilds
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
_MARKUP_SIGN = r"[`$\\]|://|www\."  # what every _MARKUP match holds
MARKUP_WINDOW = 4096
ANSWER_WINDOW = 1024

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
_SETTLING_ANY = "[" + "".join(p.strip("[]") for p in _SETTLING_SCRIPTS.values()) + "]"
PREFIX = 256
EN_FUNCTION_SHARE = 0.08
_EN_FUNCTION_RE = r"\b(?:the|of|and|to|is|that|with|for|are|was)\b"
_KANA = r"[\p{Hiragana}\p{Katakana}]"
_LETTER = r"\p{L}"
_LETTERS = re.compile(r"[^\W\d_]")
_LATIN_WORD = r"\p{Latin}{2,}"  # single letters are option labels and variables ("A.", "x")
_NON_CJK_WORD = r"[^\P{L}\p{Han}\p{Hiragana}\p{Katakana}]+"
_OTHER_SCRIPTS = (
    r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}\p{Thai}\p{Greek}\p{Hebrew}\p{Georgian}\p{Armenian}]+"
)
_LEAD = r"^[^\n:：]*"
LEAD_MIN_UNITS = 3
# Latin-script words that make a sentence (English, and the commonest of French, Spanish,
# German, Dutch, Italian): a Latin span holding one is a sentence, not a name or identifier.
# Words that are also code keywords (in, is, if, for, and, or, not, as, from, with) are left out.
FRAME_WORDS = frozenset(
    "the of to an what does do did how why which who whom are was were this that these those "
    "you your mean means into would could should can has have be my me we they it its there "
    "about than le la les des du est une un et el los las es que qué der die das und ist ein "
    "eine het een il di che".split()
)

_CLD2_FIX = {"zh-Hant": "zh", "iw": "he", "in": "id", "jw": "jv", "tl": "fil", "un": "und"}


def markup_free(texts: pa.Array, window: int = MARKUP_WINDOW) -> pa.Array:
    """The texts with code, URLs and LaTeX blanked out (they name no language), read up to
    `window` characters."""
    import polars as pl

    texts = as_text(texts)
    if len(texts) and pc.max(pc.binary_length(texts)).as_py() > window:  # bytes >= characters
        texts = pl.Series(texts).str.slice(0, window).to_arrow()
    # only a text holding one of these can hold markup: the rest are left as they are
    marked = pl.Series(texts).str.contains(_MARKUP_SIGN).to_arrow()
    if pc.any(marked).as_py():
        blank = pl.col("t")
        for pattern in _MARKUP:
            blank = blank.str.replace_all(pattern, " ")
        part = pl.DataFrame({"t": pl.Series(texts.filter(marked))}).select(blank)
        texts = pc.replace_with_mask(texts, marked, part["t"].to_arrow().cast(texts.type))
    return texts


def detect_fast(
    texts: pa.Array, catalog_lang: str = "ML", whole: pa.Array | None = None, answer: bool = False
) -> tuple[list[str], np.ndarray]:
    """Language code and confidence for every text (see module doc for the rule).

    catalog_lang is the source's dataset-level tag (EN/CN/ML): what a text too short to read
    falls back to. whole, when given, is read instead of a text with too few letters (the
    question "Thanks" is judged together with its answer). answer: the texts are answers, read
    by their majority (no lead rule), and the n-gram detector is only asked about prose (code,
    formulas and lone identifiers are left unread: "def f(x):" is not Slovak).

    A text's tag depends on nothing but what is read of it, so each distinct text in the batch
    is read once (templates, repeated questions, short answers) and its tag scattered back.
    """
    # an answer is read from its opening: its markup is looked for in a shorter window
    texts, letters = _readable(texts, ANSWER_WINDOW if answer else MARKUP_WINDOW)
    if whole is not None and (letters < MIN_LETTERS).any():
        short = np.flatnonzero(letters < MIN_LETTERS)
        whole_short, letters[short] = _readable(whole.take(pa.array(short)), MARKUP_WINDOW)
        texts = _scatter(texts, short, whole_short)
    texts, inverse = distinct(texts)
    one = np.empty(len(texts), dtype=np.int64)
    one[inverse] = np.arange(len(inverse))  # a row holding each distinct text
    codes, scores = _detect_read(texts, letters[one], catalog_lang, answer)
    return codes[inverse].tolist(), scores[inverse]


def _readable(texts: pa.Array, window: int) -> tuple[pa.Array, np.ndarray]:
    """What is read of each text (markup_free, then the first PREFIX characters: enough for any
    detector, and it bounds the cost) and its letters, worked out once per distinct text."""
    texts, inverse = distinct(texts)
    read = pc.utf8_slice_codeunits(markup_free(texts, window), 0, PREFIX)
    letters = _count(read, _LETTER)
    take = pa.array(inverse)
    return read.take(take), letters[inverse]


def _scatter(texts: pa.Array, at: np.ndarray, values: pa.Array) -> pa.Array:
    """texts with texts[at[i]] replaced by values[i] (at ascending)."""
    mask = np.zeros(len(texts), dtype=bool)
    mask[at] = True
    return pc.replace_with_mask(texts, pa.array(mask), values.cast(texts.type))


def _detect_read(
    texts: pa.Array, letters: np.ndarray, catalog_lang: str, answer: bool
) -> tuple[np.ndarray, np.ndarray]:
    """detect_fast on what is read of each text (_readable) and its letters."""
    n = len(texts)
    codes = np.full(n, "", dtype=object)
    scores = np.zeros(n, dtype=np.float32)
    # pure-ASCII texts hold no single-language script: they skip the script passes entirely
    ascii = is_ascii(texts)
    non_ascii = np.flatnonzero(~ascii & (letters > 0))
    if len(non_ascii):
        sub = texts.take(pa.array(non_ascii))
        sub_codes, sub_scores, mixed = _settle_scripts(sub, letters[non_ascii])
        if not answer and mixed.any():
            # a prompt in two scripts: its opening instruction, if any, decides between them
            at = np.flatnonzero(mixed)
            lead_codes, lead_scores, decisive = _settle_by_lead(sub.take(pa.array(at)))
            sub_codes[at[decisive]] = lead_codes[decisive]
            sub_scores[at[decisive]] = lead_scores[decisive]
        codes[non_ascii] = sub_codes
        scores[non_ascii] = sub_scores

    # the Latin-script reading: the texts no script settled, without any minority span of
    # another script ("你好" in "What does 你好 mean?"), which would only confuse the detectors
    todo = np.flatnonzero(codes == "")
    if len(todo):
        import polars as pl

        latin = texts.take(pa.array(todo))
        latin_letters, latin_ascii = letters[todo], ascii[todo]
        mixed = np.flatnonzero(~latin_ascii)
        if len(mixed):
            cleaned = pl.Series(latin.take(pa.array(mixed))).str.replace_all(_OTHER_SCRIPTS, " ").to_arrow()
            latin = _scatter(latin, mixed, cleaned)
            latin_letters[mixed] = _count(cleaned, _LETTER)
            latin_ascii[mixed] = is_ascii(cleaned)
        readable = latin_letters >= MIN_LETTERS
        english = np.flatnonzero(readable & latin_ascii)
        if len(english):
            is_en, share = _english_function_words(latin.take(pa.array(english)))
            codes[todo[english[is_en]]] = "en"
            scores[todo[english[is_en]]] = np.minimum(1.0, 0.5 + share[is_en] * 2)
        rest = np.flatnonzero(readable & (codes[todo] == ""))
        if answer and len(rest):
            rest = rest[_prose(latin.take(pa.array(rest)), latin_letters[rest])]
        if len(rest):
            for i, text in zip(todo[rest], latin.take(pa.array(rest)).to_pylist(), strict=True):
                code, score = _cld2_names_aside(text)
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
    return codes, scores


# a line of code: a keyword that opens a statement, a call or assignment, a brace or a comment
_CODE_LINE = (
    r"(?m)^\s*(?:(?:def|class|import|from|return|for|while|if|elif|else|try|except|with|function|"
    r"const|let|var|public|private|static|void|int|print|console\.log|#include)\b|[{}]|//|#|"
    r"[\w.\[\]]+\s*(?:[-+*/%]?=|<-)\s*\S|[\w.]+\(.*\)\s*;?\s*$)"
)
PROSE_LETTER_SHARE = 0.75  # letters among the non-space characters of a prose answer
PROSE_MIN_WORDS = 3


def _prose(texts: pa.Array, letters: np.ndarray) -> np.ndarray:
    """Which answers read as prose: at least PROSE_MIN_WORDS words, letters >= 75% of the
    non-space characters, fewer than half of the non-blank lines code, fewer than half of the
    words capitalised (names). letters: each text's letters, counted already."""
    visible, words, capitalised, lines, code = _counts(
        texts, r"\S", r"\p{L}{2,}", r"\p{Lu}\p{L}+", r"(?m)^\s*\S", _CODE_LINE
    )
    return (
        (words >= PROSE_MIN_WORDS)
        & (letters >= PROSE_LETTER_SHARE * visible)
        & (2 * code < lines)
        & (2 * capitalised < words)  # a list of names ("1. Joe Beef\n2. L'Express") is not prose
    )


def _frame_words(texts: pa.Array) -> np.ndarray:
    """Per text, how many of its Latin-script words are sentence-frame words (FRAME_WORDS)."""
    import polars as pl

    words = pl.Series(texts).str.to_lowercase().str.extract_all(r"\p{Latin}+")
    return (
        words.list.eval(pl.element().is_in(list(FRAME_WORDS)).cast(pl.Int64))
        .list.sum()
        .fill_null(0)
        .to_numpy()
    )


def _settle_scripts(
    sub: pa.Array, letters: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The language a settling script gives each text, or "" for none (Latin and the other
    shared scripts are read later), its score, and which texts mix a settling script with
    Latin words. A script settles when it holds >= MIXED_SCRIPT_SHARE of the letters and either
    outweighs the Latin words (a Han or kana character counts as one word, other scripts count
    their words of two letters or more) or the Latin words frame no sentence (names,
    identifiers, code: "谁是Harrison Kinsley？", "写一个Python函数"). So a short span inside an
    English sentence does not flip it: "What does 你好 mean?" is not zh."""
    if letters is None:
        letters, latin_words, han, kana, other = _counts(
            sub, _LETTER, _LATIN_WORD, _HAN, _KANA, _SETTLING_ANY
        )
    else:
        latin_words, han, kana, other = _counts(sub, _LATIN_WORD, _HAN, _KANA, _SETTLING_ANY)
    safe = np.maximum(letters, 1)
    framed = np.zeros(len(sub), dtype=bool)  # read only where a script does not outweigh Latin

    def settles(units: np.ndarray, hits: np.ndarray, todo: np.ndarray) -> np.ndarray:
        share = todo & (hits >= MIXED_SCRIPT_SHARE * safe) & (units > 0)
        unsure = np.flatnonzero(share & (units <= latin_words))
        if len(unsure):
            framed[unsure] = _frame_words(sub.take(pa.array(unsure))) > 0
        return share & ((units > latin_words) | ~framed)

    codes = np.full(len(sub), "", dtype=object)
    scores = np.zeros(len(sub), dtype=np.float32)
    cjk = han + kana
    is_cjk = settles(cjk, cjk, np.ones(len(sub), dtype=bool))
    is_ja = is_cjk & (kana >= 0.2 * np.maximum(cjk, 1))
    codes[is_ja] = "ja"
    codes[is_cjk & ~is_ja] = "zh"
    scores[is_cjk] = (cjk / safe)[is_cjk]
    # the other settling scripts were counted together; each is counted where it occurs
    for code, pattern in _SETTLING_SCRIPTS.items():
        todo = (codes == "") & (other > 0)
        if not todo.any():
            break
        hits = np.zeros(len(sub), dtype=np.int64)
        words = np.zeros(len(sub), dtype=np.int64)
        at = np.flatnonzero(todo)
        part = sub.take(pa.array(at))
        # words of two letters or more: a lone Greek letter is a math symbol ("2 * π * r")
        hits[at], words[at] = _counts(part, pattern, pattern + "{2,}")
        settle = settles(words, hits, todo)
        codes[settle] = code
        scores[settle] = (hits / safe)[settle]
    mixed = (latin_words > 0) & ((cjk + other) > 0)
    return codes, scores, mixed


def _settle_by_lead(sub: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The script decision of each prompt's lead (its text before the first line break or
    colon), and whether the lead decides: it must be followed by more text, hold at least
    LEAD_MIN_UNITS words (Han/kana characters count one each), and read as an instruction:
    in a settling script, or Latin words that frame a sentence. "将以下文字从英文翻译成中文：
    <English>" is zh and "Translate into English:\n<Chinese>" is not; a Latin label over a
    Chinese question ("Python Pandas:\n如何删除重复的行？") does not decide."""
    import polars as pl

    series = pl.Series(sub)
    lead = series.str.extract(_LEAD, 0).fill_null("")
    has_rest = (series.str.len_chars() - lead.str.len_chars()).to_numpy() > 1
    lead_arr = lead.to_arrow()
    units = sum(_counts(lead_arr, _HAN, _KANA, _NON_CJK_WORD))
    codes, scores, _mixed = _settle_scripts(lead_arr)
    framed = _frame_words(lead_arr) > 0
    decisive = has_rest & (units >= LEAD_MIN_UNITS) & ((codes != "") | framed)
    return codes, scores, decisive


# words that are English and no other common Latin-script language's ("do", "a", "was", "die"
# are Portuguese, Spanish, German too): the second reading must hold one to count as English
_ENGLISH_ONLY = frozenset(
    "the of to what does did how why which who whom are were this that these those you your "
    "would could should can has have be been my we they it its there about than into mean".split()
)
_NAME = re.compile(r"(?<=[\w,;:)\]\"'’”]) +[A-Z][\w'’-]*")  # a capitalised word inside a sentence


def _cld2_names_aside(text: str) -> tuple[str, float]:
    """cld2's reading, checked again without the names when it is not English: a name does not
    make an English sentence Turkish ("Would Recep Tayyip Erdoğan be unfamiliar with börek?"
    reads tr as written, en without the names). Only an English second reading is taken, and
    only when what is left holds a word that is English alone ("would", "did")."""
    code, score = _cld2(text)
    if code in ("en", "und"):
        return code, score
    aside = _NAME.sub(" ", text)
    english_word = any(w in _ENGLISH_ONLY for w in re.findall(r"[a-z]+", aside.lower()))
    if aside != text and english_word and len(_LETTERS.findall(aside)) >= MIN_LETTERS:
        code2, score2 = _cld2(aside)
        if code2 == "en":
            return code2, score2
    return code, score


def _english_function_words(texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Pure-ASCII texts where English function words are frequent are English.

    A text is settled as en when "the" occurs and the function words (_EN_FUNCTION_RE) make
    up >= 8% of its words or occur >= 4 times (numbers and option lists dilute the share in
    math records); other Latin-script languages that share a word or two ("is" in Dutch,
    "to" in Polish, "was" in German) do not reach that together with "the". Everything else goes to
    cld2. Words are the spaces and line breaks plus one.
    """
    low = pc.ascii_lower(texts)  # the texts are ASCII
    the, hits, gaps = _counts(low, r"\bthe\b", _EN_FUNCTION_RE, r"[ \n]", ascii=np.ones(len(low), dtype=bool))
    words = gaps + 1
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


# English function words, for the quick reading of an ASCII answer to an English prompt; words
# that other Latin-script languages use too are left out ("is" Dutch, "was" German, "for"
# Danish, "to" Czech, "on" French)
_EN_ANSWER_RE = (
    r"(?i-u)\b(?:the|of|and|that|with|are|what|does|did|how|why|which|who|this|these|those|you|"
    r"your|would|could|should|has|have|been|they|its|there|about|than|into|not|were|will|can)\b"
)
EN_ANSWER_MIN_HITS = 2


def _english_answers(answers: pa.Array, prompt_langs: np.ndarray) -> np.ndarray:
    """ASCII answers to English prompts that hold English function words (at least 2, and
    >= 10% of their words) are English without asking the n-gram detector: an answer in
    another Latin-script language ("Jeg er en student", "Het is een mooie dag") holds at most
    one of them and is read in full."""
    quick = np.zeros(len(answers), dtype=bool)
    candidates = np.flatnonzero((prompt_langs == "en") & is_ascii(answers))
    if len(candidates):
        texts, inverse = distinct(answers.take(pa.array(candidates)))  # each read once
        texts = pc.utf8_slice_codeunits(texts, 0, PREFIX)
        hits, words = _counts(texts, _EN_ANSWER_RE, r"[A-Za-z]+", ascii=np.ones(len(texts), dtype=bool))
        quick[candidates] = ((hits >= EN_ANSWER_MIN_HITS) & (hits * 10 >= words))[inverse]
    return quick


def detect_output(answers: pa.Array, prompt_langs: list[str], detector: str = "fast") -> pa.Array:
    """lang_output: the language most of each answer is in (no lead rule: all of an answer is
    what a model learns to write). An answer with too little text to read (an option letter, a
    number, bare code) takes its prompt's language; an empty answer (prompt-only corpora) is
    "und"."""
    answers = pc.fill_null(answers, "")
    prompts = np.asarray(prompt_langs, dtype=object)
    codes = np.full(len(answers), "und", dtype=object)
    if detector == "fast":
        quick = _english_answers(answers, prompts)
        codes[quick] = "en"
        rest = np.flatnonzero(~quick)
        if len(rest):
            codes[rest] = detect_fast(answers.take(pa.array(rest)), "ML", answer=True)[0]
    else:
        codes[:] = detect(answers, detector)[0]
    empty = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(answers)), 0).to_numpy(zero_copy_only=False)
    codes = np.where(codes == "und", prompts, codes)
    codes[empty] = "und"
    return pa.array(codes.tolist(), pa.string())


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
    """Why a dataset's `zh` tags do not match its content, or None. A zh record's own words
    should be mostly Chinese: its lead (the text before the first line break or colon) when that
    is a Chinese instruction over more text ("将以下文字从英文翻译成中文：<English>" is Chinese by
    the prompt rule), else its whole question. When more than 5% of the zh records have mostly
    Latin own words (English with a Chinese phrase, or English inside a Chinese template), the
    tag no longer tells a user what they get.
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
    lead = pl.col("q").str.extract(_LEAD, 0).fill_null("")
    counts = (
        zh.select(
            pl.col("q").str.count_matches(r"[A-Za-z]+").alias("latin"),
            pl.col("q").str.count_matches(_HAN).alias("han"),
            lead.str.count_matches(r"[A-Za-z]+").alias("lead_latin"),
            lead.str.count_matches(_HAN).alias("lead_han"),
            (pl.col("q").str.len_chars() - lead.str.len_chars() > 1).alias("rest"),
        )
        .with_columns(
            (
                pl.col("rest")
                & (pl.col("lead_han") >= LEAD_MIN_UNITS)
                & (pl.col("lead_han") > pl.col("lead_latin"))
            ).alias("by_lead")
        )
        .select(
            pl.when("by_lead").then("lead_latin").otherwise("latin").alias("latin"),
            pl.when("by_lead").then("lead_han").otherwise("han").alias("han"),
        )
        .collect()
    )
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
