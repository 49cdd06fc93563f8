"""Bad input, hostile names and options: every case ends in a quarantine entry or one clear
line, never a traceback, a lost file or a runaway process."""

import gzip
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import current

from forge.build import build_source
from forge.catalog import load_catalog
from forge.errors import CatalogError
from tests.inprocess import forge_main

FORGE = [sys.executable, "-m", "forge.cli"]


def cli(args, home, cwd=None, env=None, fresh=False):
    """`forge ARGS`, in this process (tests/inprocess.py) unless `fresh`: a new interpreter, for
    what only one shows (stderr while torch and the Hub client load, settings read at import)."""
    e = {"FORGE_HOME": str(home), "COLUMNS": "200", **(env or {})}
    if not fresh:
        return forge_main(args, env=e, cwd=cwd)
    e = {**os.environ, **e}
    return subprocess.run(FORGE + args, cwd=cwd, env=e, capture_output=True, text=True, timeout=300)


def one_line_error(r, *fragments: str) -> None:
    """The CLI failed with exactly one line on stderr, no traceback, naming every fragment."""
    assert r.returncode != 0, r.stdout
    lines = [x for x in r.stderr.strip().splitlines() if x.strip()]
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr and lines[0].startswith("error:"), r.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])


# ---- the bad-input corpus -------------------------------------------------------------------

TEMPLATE_DIR = "tmpl"
USER_CATALOG = """
sources:
  jl:
    description: JSON-family input, format sniffed
    connector: json
    formatter: columns
    local: x.jsonl
    lang: EN
    task: MT
    gen: SI
  arr:
    description: a JSON array
    connector: json
    connector_options: {{format: array}}
    formatter: columns
    local: x.json
    lang: EN
    task: MT
    gen: SI
  tsvs:
    description: FLAN-style headerless TSV through one zero-shot template
    connector: tsv
    formatter: cot
    options: {{lang: en, modes: [zero_shot], seed: 0}}
    local: x.tsv
    lang: EN
    task: MT
    gen: HG
    category: cot
  csvs:
    description: CSV with a header
    connector: csv
    formatter: columns
    options: {{instruction: q, input: null, output: a}}
    local: x.csv
    lang: EN
    task: MT
    gen: HG
  tmpl:
    description: a user template that raises on some records
    connector: tsv
    formatter: cot
    options: {{lang: en, modes: [zero_shot], seed: 0, templates_dir: {tdir}}}
    local: x.tsv
    lang: EN
    task: MT
    gen: HG
    category: cot
"""


def g(i: int) -> bytes:
    return json.dumps({"instruction": f"question {i}", "input": "", "output": f"answer {i}"}).encode() + b"\n"


DEEP = b"[" * 100_000 + b"]" * 100_000
GOOD_TSV = b"What is 2+2?\t4\tTwo and two make four.\n"

# (kind, source, file name, raw bytes, rows, quarantined, reason fragment of the first entry)
CASES = [
    (
        "invalid JSON line",
        "jl",
        "x.jsonl",
        g(0) + b'{"instruction": "broken", "output": \n' + g(1),
        2,
        1,
        "invalid JSON",
    ),
    (
        "output of the wrong type",
        "jl",
        "x.jsonl",
        g(0) + b'{"instruction": "a", "output": 5}\n',
        1,
        1,
        "is int",
    ),
    ("missing output", "jl", "x.jsonl", g(0) + b'{"instruction": "a"}\n', 1, 1, "missing field 'output'"),
    ("null output", "jl", "x.jsonl", g(0) + b'{"instruction": "a", "output": null}\n', 1, 1, "missing field"),
    ("object output", "jl", "x.jsonl", g(0) + b'{"instruction": "a", "output": {}}\n', 1, 1, "is dict"),
    ("list output", "jl", "x.jsonl", g(0) + b'{"instruction": "a", "output": [1]}\n', 1, 1, "is list"),
    ("NaN output", "jl", "x.jsonl", g(0) + b'{"instruction": "a", "output": NaN}\n', 1, 1, "is NaN"),
    (
        "Infinity output",
        "jl",
        "x.jsonl",
        g(0) + b'{"instruction": "a", "output": Infinity}\n',
        1,
        1,
        "is float",
    ),
    ("blank output", "jl", "x.jsonl", g(0) + b'{"instruction": "a", "output": "  "}\n', 1, 1, "is empty"),
    (
        "empty instruction",
        "jl",
        "x.jsonl",
        g(0) + b'{"instruction": "", "output": "b"}\n',
        1,
        1,
        "'instruction' is empty",
    ),
    (
        "undecodable bytes in a value",
        "jl",
        "x.jsonl",
        g(0) + b'{"instruction": "a\xff", "output": "b"}\n',
        1,
        1,
        "undecodable bytes",
    ),
    (
        "undecodable bytes in a key",
        "jl",
        "x.jsonl",
        g(0) + b'{"instr\xfe": "a", "output": "b"}\n',
        1,
        1,
        "undecodable bytes",
    ),
    ("a line that is an array", "jl", "x.jsonl", g(0) + b'["a", "b"]\n', 1, 1, "found list"),
    ("a line that is a number", "jl", "x.jsonl", g(0) + b"5\n", 1, 1, "found int"),
    ("a line that is a string", "jl", "x.jsonl", g(0) + b'"hello"\n', 1, 1, "found str"),
    (
        "100k-deep nesting",
        "jl",
        "x.jsonl",
        g(0) + b'{"x": ' + DEEP + b"}\n" + g(1),
        2,
        1,
        "nested too deeply",
    ),
    (
        "lone surrogate in the output",
        "jl",
        "x.jsonl",
        g(0) + b'{"instruction": "a", "output": "\\ud800"}\n' + g(1),
        2,
        1,
        "surrogates not allowed",
    ),
    (
        "lone surrogate in the instruction",
        "jl",
        "x.jsonl",
        b'{"instruction": "\\udfff", "output": "b"}\n' + g(1),
        1,
        1,
        "surrogates not allowed",
    ),
    (
        "raw control character in a string",
        "jl",
        "x.jsonl",
        g(0) + b'{"instruction": "a\tb", "output": "c\x01"}\n',
        1,
        1,
        "invalid JSON",
    ),
    (
        "truncated last line",
        "jl",
        "x.jsonl",
        g(0) + g(1) + b'{"instruction": "t", "outp',
        2,
        1,
        "invalid JSON",
    ),
    (
        "duplicate keys (last wins, kept)",
        "jl",
        "x.jsonl",
        g(0) + b'{"instruction": "a", "output": "b", "output": "c"}\n',
        2,
        0,
        None,
    ),
    (
        "NUL inside a string (kept)",
        "jl",
        "x.jsonl",
        g(0) + b'{"instruction": "a\\u0000b", "output": "c"}\n',
        2,
        0,
        None,
    ),
    (
        "CRLF line ends (kept)",
        "jl",
        "x.jsonl",
        g(0).replace(b"\n", b"\r\n") + g(1).replace(b"\n", b"\r\n"),
        2,
        0,
        None,
    ),
    ("blank lines between records", "jl", "x.jsonl", g(0) + b"\n   \n\t\n" + g(1), 2, 0, None),
    ("UTF-8 byte-order mark", "jl", "x.jsonl", b"\xef\xbb\xbf" + g(0) + g(1), 2, 0, None),
    (
        "UTF-16 LE with BOM",
        "jl",
        "x.jsonl",
        "\ufeff".encode("utf-16-le") + (g(0) + g(1)).decode().encode("utf-16-le"),
        2,
        0,
        None,
    ),
    (
        "UTF-16 BE with BOM",
        "jl",
        "x.jsonl",
        "\ufeff".encode("utf-16-be") + (g(0) + g(1)).decode().encode("utf-16-be"),
        2,
        0,
        None,
    ),
    ("empty file", "jl", "x.jsonl", b"", 0, 0, None),
    ("whitespace-only file", "jl", "x.jsonl", b"  \n\n \t \n", 0, 0, None),
    (
        "truncated JSON array",
        "arr",
        "x.json",
        b'[\n {"instruction": "a", "output": "b"},\n {"instruction": "c", "outp',
        1,
        1,
        "invalid JSON at line 3",
    ),
    (
        "array element that is not an object",
        "arr",
        "x.json",
        b'[{"instruction": "a", "output": "b"}, "stray"]',
        1,
        1,
        "found str",
    ),
    (
        "100k-deep element inside an array",
        "arr",
        "x.json",
        b'[{"instruction": "a", "output": "b"}, {"x": ' + DEEP + b'}, {"instruction": "c", "output": "d"}]',
        2,
        1,
        "nested too deeply",
    ),
    (
        "a document where an array is declared",
        "arr",
        "x.json",
        b'{"instruction": "a", "output": "b"}',
        0,
        1,
        "expected a JSON array",
    ),
    ("empty array file", "arr", "x.json", b"", 0, 0, None),
    (
        "TSV line with two fields",
        "tsvs",
        "x.tsv",
        GOOD_TSV + b"only two\tfields\n" + GOOD_TSV,
        2,
        1,
        "expected 3 tab-separated fields",
    ),
    (
        "TSV line with undecodable bytes",
        "tsvs",
        "x.tsv",
        GOOD_TSV + b"bad \xff\t1\tr\n",
        1,
        1,
        "undecodable bytes",
    ),
    ("TSV with CRLF line ends (kept)", "tsvs", "x.tsv", GOOD_TSV.replace(b"\n", b"\r\n") * 2, 2, 0, None),
    (
        "CSV row with a missing field",
        "csvs",
        "x.csv",
        b"q,a\nwhat,that\nonly one\nwho,them\n",
        2,
        1,
        "expected 2 fields",
    ),
    (
        "CSV row with undecodable bytes",
        "csvs",
        "x.csv",
        b"q,a\nwhat,that\nbad \xff,x\n",
        1,
        1,
        "undecodable bytes",
    ),
    (
        "a template that raises on one record",
        "tmpl",
        "x.tsv",
        GOOD_TSV + b"Say yes\tyes\tIt is yes.\n" + GOOD_TSV,
        2,
        1,
        "ZeroDivisionError",
    ),
]


@pytest.fixture
def user_catalog(tmp_path):
    tdir = tmp_path / TEMPLATE_DIR / "en"
    tdir.mkdir(parents=True)
    # full Jinja (not the column fast path): 100 // (len - 3) divides by zero on 3-letter answers
    (tdir / "generic.yaml").write_text(
        textwrap.dedent("""
        set: generic
        lang: en
        zero_shot:
          - id: en.user.zs01
            instruction: "{{ question }} ({{ 100 // (answer | length - 3) }} points)"
            output: "{{ chain_of_thought }} {{ answer }}"
        """)
    )
    path = tmp_path / "catalog.yaml"
    path.write_text(USER_CATALOG.format(tdir=tmp_path / TEMPLATE_DIR))
    return path


def test_the_bad_input_corpus_has_enough_kinds():
    assert len(CASES) >= 30
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_quarantined_record_by_record(case, user_catalog, tmp_path):
    kind, source, name, raw, rows, quarantined, reason = case
    (tmp_path / name).write_bytes(raw)
    cat = load_catalog(user_catalog)
    home = tmp_path / "home"
    r = build_source(cat.get(source), home=home, max_quarantine=1.0)
    assert (r.rows, r.quarantined) == (rows, quarantined), kind
    assert r.rows + r.quarantined == r.input_records
    if quarantined:
        entries = [json.loads(x) for x in (r.out_dir / "quarantine.jsonl").read_text().splitlines()]
        assert len(entries) == quarantined
        assert reason in entries[0]["reason"], entries[0]
        assert entries[0]["file"] == name and entries[0]["line"] >= 0
    else:
        assert r.quarantine_file is None


def test_bom_keeps_the_first_record_content(home, catalog, tmp_path):
    raw = tmp_path / "bom.jsonl"
    raw.write_bytes(b"\xef\xbb\xbf" + g(0) + g(1))
    r = build_source(catalog.get("belle_0.5m"), home=home, from_path=raw)
    import polars as pl

    df = pl.read_parquet(r.out_dir / r.shards[0]["file"])
    assert df["instruction"].to_list() == ["question 0", "question 1"]


def test_truncated_gzip_fails_in_one_line_naming_the_file(tmp_path):
    raw = tmp_path / "belle.jsonl.gz"
    data = gzip.compress(b"".join(g(i) for i in range(5000)))
    raw.write_bytes(data[: len(data) // 2])
    r = cli(["build", "belle_0.5m", "--from", str(raw)], tmp_path / "home")
    one_line_error(r, str(raw), "truncated or corrupt compressed file")
    assert not (tmp_path / "home" / "sources" / "belle_0.5m" / "CURRENT").exists()


# ---- names --------------------------------------------------------------------------------


def test_a_source_named_dotdot_cannot_touch_the_data_home(tmp_path):
    home = tmp_path / "home"
    (home / "quarantine" / "old").mkdir(parents=True)
    (home / "my-notes.txt").write_text("mine")
    for bad in ("..", "../../x", ".hidden", "a/b"):
        cat = tmp_path / "catalog.yaml"
        cat.write_text(
            f"sources:\n  {json.dumps(bad)}:\n    description: x\n    connector: json\n    formatter: columns\n"
            f"    local: x.jsonl\n    lang: EN\n    task: MT\n    gen: SI\n"
        )
        with pytest.raises(CatalogError, match=r"invalid source name"):
            load_catalog(cat)
        r = cli(["build", bad, "--catalog", str(cat)], home)
        one_line_error(r, "invalid source name", str(cat))
    assert (home / "my-notes.txt").read_text() == "mine" and (home / "quarantine" / "old").is_dir()


def test_store_paths_never_leave_their_root(tmp_path):
    from forge.store import Store, StoreError, inside

    for bad in ("..", "../x", "/etc", "", ".tmp"):
        with pytest.raises(StoreError):
            Store(tmp_path, bad)
    with pytest.raises(StoreError, match="outside"):
        inside(tmp_path, "a", "..", "..", "b")
    assert inside(tmp_path, "a", "b") == (tmp_path / "a" / "b").resolve()


def test_a_mixture_file_with_a_bad_name_is_refused(built_samples, tmp_path, monkeypatch):
    from forge.errors import ForgeError
    from forge.mixture import resolve

    (tmp_path / "mixtures").mkdir()
    (tmp_path / "mixtures" / ".sneaky.yaml").write_text(
        "strategy: concat\ncomponents:\n  - {source: alpaca}\n"
    )
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ForgeError, match=r"invalid mixture name '.sneaky'"):
        resolve(".sneaky", load_catalog(), home=built_samples)


# ---- --out ---------------------------------------------------------------------------------


@pytest.mark.parametrize("verb", ["filter", "dedup", "publish"])
def test_out_never_replaces_a_folder_forge_did_not_write(verb, built_samples, tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    args = {
        "filter": ["filter", "lang == en", "--out", str(out)],
        "dedup": ["dedup", "alpaca", "belle_0.5m", "--out", str(out), "--exact-only"],
        "publish": ["publish", "alpaca", "--repo", "me/x", "--dry-run", "--out", str(out)],
    }[verb]
    r = cli(args, built_samples)
    one_line_error(r, str(out), "was not written by forge")
    assert (out / "thesis.tex").read_text() == "years of work" and len(list(out.iterdir())) == 1
    r = cli(args + ["--overwrite"], built_samples)  # --overwrite does not change that
    one_line_error(r, "was not written by forge")
    assert (out / "thesis.tex").read_text() == "years of work"

    fresh = tmp_path / f"new-{verb}"
    args = [a if a != str(out) else str(fresh) for a in args]
    r = cli(args, built_samples)
    assert r.returncode == 0, r.stderr
    assert (fresh / ".forge-output").is_file()
    if verb == "dedup":  # the summary names its reasons as words, not as a Python dict
        m = json.loads((fresh / "manifest.json").read_text())
        said = ", ".join(f"{k} {v:,}" for k, v in m["dropped_reasons"].items())
        assert f"dropped {m['dropped']:,}" + (f" ({said})" if said else "") + "\n" in r.stdout, r.stdout
        assert "{" not in r.stdout
    one_line_error(cli(args, built_samples), "pass --overwrite")  # forge's own: replaced on request
    again = cli(args + ["--overwrite"], built_samples)
    assert again.returncode == 0, again.stderr
    assert not list(tmp_path.glob(f".new-{verb}.*"))  # no temporary or old folders left beside it


# ---- integrity -------------------------------------------------------------------------------


def test_a_flipped_byte_is_found_and_rebuilt(tmp_path):
    home = tmp_path / "home"
    assert cli(["build", "alpaca", "--sample"], home).returncode == 0
    shard = next(current(home, "sources", "alpaca").glob("*.parquet"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))  # same size, one bit different

    v = cli(["verify"], home)
    assert v.returncode == 1
    assert f"damaged source alpaca: v000001/{shard.name} (content differs from the manifest)" in v.stderr
    again = cli(["build", "alpaca", "--sample"], home)
    assert again.returncode == 0 and "up to date" not in again.stdout
    assert (home / "sources" / "alpaca" / "CURRENT").read_text().strip() == "v000002"
    ok = cli(["verify"], home)
    assert ok.returncode == 0 and "1 verified, all intact" in ok.stdout
    # a damaged version pointer is reported too, and the next build replaces it
    (home / "sources" / "alpaca" / "CURRENT").write_text("garbage")
    bad = cli(["verify", "alpaca"], home)
    assert bad.returncode == 1 and "damaged version pointer 'garbage'" in bad.stderr
    assert cli(["build", "alpaca", "--sample"], home).returncode == 0
    assert cli(["verify", "alpaca"], home).returncode == 0


# ---- resource bombs ---------------------------------------------------------------------------


def test_yaml_billion_laughs_is_refused_at_once(tmp_path):
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    cat = tmp_path / "catalog.yaml"
    cat.write_text("\n".join(lines) + "\nsources: {}\n")
    t0 = time.perf_counter()
    with pytest.raises(CatalogError, match=r"catalog.yaml: line 2: YAML aliases \(\*name\) are not allowed"):
        load_catalog(cat)
    assert time.perf_counter() - t0 < 2


@pytest.mark.parametrize(
    "body, fragment",
    [
        ("{{ 'x' * 4000000000 }}", "repetition would build 4,000,000,000"),
        (
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
            "range() calls",
        ),
        ("{{ question | center(4000000000) }}", "larger than the 1,048,576"),
        ("{{ '%4000000000d' % 1 }}", "format width"),
        ("{{ 9 ** 99999999 }}", "exponent"),
    ],
)
def test_template_bombs_fail_at_load_with_file_and_id(body, fragment, tmp_path):
    from forge.formatters.cot import TemplateSet
    from forge.formatters.templates import TemplateFileError

    path = tmp_path / "bomb.yaml"
    path.write_text(
        "set: bomb\nlang: en\nzero_shot:\n  - id: en.bomb.zs01\n"
        f"    instruction: {json.dumps(body)}\n    output: '{{{{ answer }}}}'\n"
    )
    t0 = time.perf_counter()
    with pytest.raises(TemplateFileError) as e:
        TemplateSet(path)
    assert str(path) in str(e.value) and "'en.bomb.zs01'" in str(e.value) and fragment in str(e.value)
    assert time.perf_counter() - t0 < 5


# ---- one-line errors --------------------------------------------------------------------------


def mixture(tmp_path, body: str) -> Path:
    (tmp_path / "mixtures").mkdir(exist_ok=True)
    (tmp_path / "mixtures" / "m.yaml").write_text(body)
    return tmp_path


@pytest.mark.parametrize(
    "body, fragment",
    [
        ("components:\n  - {source: alpaca, weight: .nan}\n", "components[0].weight: expected a finite"),
        ("components:\n  - {source: alpaca, weight: .inf}\n", "components[0].weight: expected a finite"),
        ("strategy: proportional\ntemperature: .nan\ncomponents:\n  - {source: alpaca}\n", "temperature"),
        (
            "size: 100000000000\ncomponents:\n  - {source: alpaca}\n",
            "size: expected a positive integer up to",
        ),
        (
            "strategy: rates\ncomponents:\n  - {source: alpaca, weight: 1}\n  - {source: belle_0.5m, weight: 1.0e-12}\n",
            "more than 1,000,000,000",
        ),
    ],
)
def test_bad_mixture_numbers_are_one_line(body, fragment, built_samples, tmp_path):
    t0 = time.perf_counter()
    r = cli(["mix", "m", "--dry-run"], built_samples, cwd=mixture(tmp_path, body))
    one_line_error(r, "m.yaml", fragment)
    assert time.perf_counter() - t0 < 30


def test_deeply_nested_query_is_one_line(built_samples):
    q = "(" * 1000 + "lang == en" + ")" * 1000
    one_line_error(cli(["stats", "--where", q], built_samples), "nested deeper than 64 levels")
    q = " or ".join(["lang == en"] * 3000)
    one_line_error(cli(["stats", "--where", q], built_samples), "at most 4,096 are allowed")


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--model", "/nonexistent/model"], "--model /nonexistent/model: no such folder"),
        (["--model", "{empty}"], "not a model folder (no config.json)"),
        (["--max-steps", "0"], "--max-steps must be a positive integer, got 0"),
        (["--learning-rate", "nan"], "--learning-rate must be a finite number"),
        (["--peft-config", "{bad json"], "--peft-config: not valid JSON"),
        (["--peft-config", '{"r": 8}'], "--peft-config: peft_type None is not one of"),
        (["--peft-config", '{"peft_type": "LORA", "bogus": 1}'], "--peft-config (LORA)"),
        (["--resume-from", "{empty}"], "not a forge checkpoint (no data_state.json)"),
        (["--quantization", "3"], "--quantization takes 4 or 8"),
    ],
)
def test_bad_train_options_are_one_line(extra, fragment, built_samples, tiny_model, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    args = ["train", "--mixture", "alpaca-belle-cot", "--model", str(tiny_model), "--no-packing"]
    if "--model" in extra:
        args = args[:3] + args[5:]
    args += [x.replace("{empty}", str(empty)) for x in extra]
    r = cli(["build", "cot_zh", "--sample"], built_samples)
    assert r.returncode == 0
    # peft validates --peft-config: a new interpreter shows what loading it prints on stderr
    one_line_error(cli(args, built_samples, fresh="--peft-config" in extra), fragment)


@pytest.mark.parametrize("value", ["nan", "-1", "1.5"])
def test_max_quarantine_is_validated(value, tmp_path):
    r = cli(["build", "alpaca", "--sample", "--max-quarantine", value], tmp_path / "home")
    one_line_error(r, "--max-quarantine must be a fraction between 0 and 1")


def test_publish_to_a_refused_connection_retries_then_says_so(built_samples, tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_HUB_OFFLINE": "0", "HF_TOKEN": "hf_secret_token"}
    t0 = time.perf_counter()
    r = cli(["publish", "alpaca", "--repo", "me/x"], built_samples, env=env, fresh=True)  # Hub settings
    one_line_error(r, "create me/x failed after 5 tries: cannot reach the Hub")
    assert time.perf_counter() - t0 > 5  # backed off between tries (0.5+1+2+4 s)
    assert "hf_secret_token" not in r.stderr


def test_debug_shows_the_traceback(tmp_path):
    r = cli(["--debug", "build", "alpaca", "--sample", "--max-quarantine", "nan"], tmp_path / "h", fresh=True)
    assert r.returncode == 1 and "error:" in r.stderr
    r = cli(["--debug", "stats", "--where", "(" * 100 + "x"], tmp_path / "h", fresh=True)
    assert "Traceback" in r.stderr


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["build", "alpaca", "--bogus"], "No such option: --bogus (see "),
        (["mix", "alpaca-belle-cot", "--seed", "x"], "Invalid value for '--seed'"),
        (["train", "--max-steps", "x"], "Invalid value for '--max-steps'"),
        (["templates", "--render", "nope"], "unknown template id 'nope'"),
        (["build", "alpaca", "--from", "/nonexistent/path"], "alpaca: no files at /nonexistent/path"),
    ],
)
def test_wrong_flags_and_paths_are_one_line(args, fragment, tmp_path):
    r = cli(args, tmp_path / "home")
    one_line_error(r, fragment)
    assert r.stdout.strip() == ""  # no empty summary table after a failure either
