"""The tag query language, used by forge filter/stats, mixture components and forge.select.

    lang in [zh, en] and category == cot and not gen == SI
    source == alpaca or (lang == en and output_chars > 200)
    lang == en and lang_output == zh          (English prompts with Chinese answers)

Grammar (whitespace-insensitive, keywords lower case):
    expr    := term ("or" term)*
    term    := factor ("and" factor)*
    factor  := "not" factor | "(" expr ")" | compare
    compare := FIELD OP value | FIELD ["not"] "in" "[" value ("," value)* "]"
    OP      := == != < <= > >=
    value   := bare word (letters, digits, _ . -) | 'quoted' | "quoted" | number

FIELD is a tag column (FIELDS: lang is the prompt's language, lang_output the answer's), a
derived length (instruction_chars, input_chars, output_chars, turns) or judge_score (meta.judge.score, written by `forge judge`; null when
a record was not judged, and a null never satisfies a comparison). The parser is a small recursive-descent one: no eval, no Python
expressions, unknown fields and stray tokens are errors that point at the position.
Queries compile to a polars expression, so they run as a pushed-down Parquet scan.
"""

from __future__ import annotations

import re

import polars as pl

from forge.errors import QueryError

STRING_FIELDS = ("lang", "lang_output", "task", "gen", "category", "source", "template", "id", "raw_file")
NUMBER_FIELDS = ("lang_score", "raw_row")
DERIVED = ("instruction_chars", "input_chars", "output_chars", "turns", "judge_score")
FIELDS = STRING_FIELDS + NUMBER_FIELDS + DERIVED
_TOKEN = re.compile(
    r"\s*(?:(?P<op>==|!=|<=|>=|<|>)|(?P<punct>[()\[\],])|(?P<str>'[^']*'|\"[^\"]*\")"
    r"|(?P<num>-?\d+(?:\.\d+)?(?![\w.-]))|(?P<word>[A-Za-z_][\w.\-]*))"
)


def _tokens(text: str) -> list[tuple[str, str, int]]:
    out, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise QueryError(f"cannot read query at position {pos}: {text[pos : pos + 20]!r}")
        kind = m.lastgroup
        value = m.group(kind)
        out.append((kind, value, m.start(kind)))
        pos = m.end()
    return out


def _column(name: str) -> pl.Expr:
    if name == "turns":
        return pl.col("history").list.len() + 1
    if name == "judge_score":
        return pl.col("meta").str.json_path_match("$.judge.score").cast(pl.Float64, strict=False)
    if name.endswith("_chars"):
        return pl.col(name.removesuffix("_chars")).str.len_chars()
    return pl.col(name)


MAX_DEPTH = 64  # nested parentheses / not
MAX_TOKENS = 4096


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.toks = _tokens(text)
        if len(self.toks) > MAX_TOKENS:
            raise QueryError(f"query has {len(self.toks):,} tokens; at most {MAX_TOKENS:,} are allowed")
        self.i = 0
        self.depth = 0

    def peek(self, value: str | None = None):
        if self.i >= len(self.toks):
            return None
        tok = self.toks[self.i]
        return tok if value is None or tok[1] == value else None

    def expect(self, value: str):
        tok = self.peek()
        if tok is None or tok[1] != value:
            where = f"position {tok[2]}" if tok else "end of query"
            raise QueryError(f"expected {value!r} at {where} in {self.text!r}")
        self.i += 1
        return tok

    def parse(self) -> pl.Expr:
        if not self.toks:
            raise QueryError("empty query")
        expr = self.expr()
        if self.i < len(self.toks):
            tok = self.toks[self.i]
            raise QueryError(f"unexpected {tok[1]!r} at position {tok[2]} in {self.text!r}")
        return expr

    def expr(self) -> pl.Expr:
        e = self.term()
        while self.peek("or"):
            self.i += 1
            e = e | self.term()
        return e

    def term(self) -> pl.Expr:
        e = self.factor()
        while self.peek("and"):
            self.i += 1
            e = e & self.factor()
        return e

    def factor(self) -> pl.Expr:
        if self.peek("not") or self.peek("("):
            self.depth += 1
            if self.depth > MAX_DEPTH:
                pos = self.toks[self.i][2]
                raise QueryError(f"query nested deeper than {MAX_DEPTH} levels at position {pos}")
            try:
                if self.peek("not"):
                    self.i += 1
                    return ~self.factor()
                self.i += 1
                e = self.expr()
                self.expect(")")
                return e
            finally:
                self.depth -= 1
        return self.compare()

    def value(self, numeric: bool):
        tok = self.peek()
        if tok is None:
            raise QueryError(f"expected a value at end of query {self.text!r}")
        kind, raw, pos = tok
        self.i += 1
        if kind == "str":
            raw = raw[1:-1]
        elif kind not in ("word", "num"):
            raise QueryError(f"expected a value at position {pos}, found {raw!r} in {self.text!r}")
        if numeric:
            try:
                return float(raw)
            except ValueError:
                raise QueryError(f"expected a number at position {pos}, found {raw!r}") from None
        return raw

    def compare(self) -> pl.Expr:
        tok = self.peek()
        if tok is None or tok[0] != "word":
            where = f"position {tok[2]}" if tok else "end of query"
            raise QueryError(f"expected a field name at {where} in {self.text!r}")
        name, pos = tok[1], tok[2]
        if name not in FIELDS:
            import difflib

            close = difflib.get_close_matches(name, FIELDS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise QueryError(f"unknown field {name!r} at position {pos}{hint}; fields: {', '.join(FIELDS)}")
        self.i += 1
        numeric = name in NUMBER_FIELDS or name in DERIVED
        col = _column(name)
        negate = False
        if self.peek("not"):
            self.i += 1
            negate = True
            if not self.peek("in"):
                raise QueryError(f"expected 'in' after 'not' at position {pos} in {self.text!r}")
        if self.peek("in"):
            self.i += 1
            self.expect("[")
            values = [self.value(numeric)]
            while self.peek(","):
                self.i += 1
                values.append(self.value(numeric))
            self.expect("]")
            e = col.is_in(values)
            return ~e if negate else e
        op = self.peek()
        if op is None or op[0] != "op":
            where = f"position {op[2]}" if op else "end of query"
            raise QueryError(f"expected an operator (== != < <= > >= in) at {where} in {self.text!r}")
        self.i += 1
        v = self.value(numeric)
        return {
            "==": col == v,
            "!=": col != v,
            "<": col < v,
            "<=": col <= v,
            ">": col > v,
            ">=": col >= v,
        }[op[1]]


def parse(text: str) -> pl.Expr:
    """Compile a query string to a polars expression (raises QueryError with a position)."""
    return _Parser(text).parse()
