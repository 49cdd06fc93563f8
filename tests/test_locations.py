"""Catalog locations (issue #19): pinned revisions, archive members, a non-main revision, and
`forge sources --check`, all through huggingface_hub against a local server on 127.0.0.1 that
serves repos laid out like the real ones (and the verified trees of catalog.verified.json)."""

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
import threading
import zipfile
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from conftest import current

from forge.catalog import load_catalog, pinned_revision
from forge.check import hub_size_text, size_matches
from forge.locate import matches_hub_pattern
from tests.conftest import REPO
from tests.hub_server import LocalHub

FIXTURES = REPO / "tests" / "data" / "fixtures"
VERIFIED = json.loads((REPO / "catalog.verified.json").read_text())["sources"]
CAMEL_SHA = "a493cd1636808cbe3cf2389dec79471a1db9e6bc"
WEBGPT_SHA = "8193c7bffcb63ae55b88bd85647be4b77ca8cab2"


def forge(args, env, cwd):
    exe = Path(sys.executable).parent / "forge"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def hub_env(hub, tmp_path):
    return {
        **os.environ,
        "HF_ENDPOINT": hub.endpoint,
        "HF_HUB_OFFLINE": "0",
        "FORGE_HOME": str(tmp_path / "home"),
        "HF_HOME": str(tmp_path / "hf"),
        "COLUMNS": "200",
    }


def manifest(tmp_path, name):
    return json.loads((current(tmp_path / "home", "sources", name) / "manifest.json").read_text())


def camel_repo(root: Path, folder: str = "camel-ai/ai_society", conversations: int = 2) -> Path:
    """The ai_society repo's layout: chats inside a zip and a tar.gz, the instruction-format
    JSON beside them, a README."""
    repo = root / "datasets" / folder
    repo.mkdir(parents=True)
    chat = json.loads((FIXTURES / "camel_001.json").read_text())
    with zipfile.ZipFile(repo / "ai_society_chat.zip", "w") as zf:
        for i in range(conversations):
            zf.writestr(f"ai_society/{i + 1:03d}_001.json", json.dumps({**chat, "id": i}))
        zf.writestr("ai_society/notes.txt", "not a conversation")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        data = json.dumps(chat).encode()
        info = tarfile.TarInfo("ai_society/001_001.json")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    (repo / "ai_society_chat.tar.gz").write_bytes(buf.getvalue())
    (repo / "ai_society_instructions.json").write_text(
        json.dumps([{"instruction": "x", "input": "", "output": "y"}])
    )
    (repo / "README.md").write_text("---\nlicense: cc-by-nc-4.0\n---\n")
    return repo


def test_camel_builds_from_zip_members_of_the_pinned_revision(tmp_path):
    root = tmp_path / "hub"
    camel_repo(root)
    with LocalHub(root) as hub:
        env = hub_env(hub, tmp_path)
        r = forge(["build", "camel"], env, tmp_path)
        assert r.returncode == 0, r.stderr
        gets = [p for m, p, _ in hub.state.requests if m == "GET" and "/resolve/" in p]
        # only the zip travels, from the pinned commit; the tar.gz and the instructions file stay
        assert [g.split("/resolve/")[1] for g in gets] == [f"{CAMEL_SHA}/ai_society_chat.zip"]
    m = manifest(tmp_path, "camel")
    assert m["rows"] == 2 and m["quarantined"] == 0
    assert m["origin"]["revision"] == CAMEL_SHA and m["origin"]["members"] == ["*.json"]
    assert [r["name"] for r in m["raw"]] == ["ai_society_chat.zip"]  # the archive is hashed once
    import polars as pl

    df = pl.read_parquet(
        [str(current(tmp_path / "home", "sources", "camel") / s["file"]) for s in m["shards"]]
    )
    assert sorted(df["raw_file"].unique()) == [
        "ai_society_chat.zip!/ai_society/001_001.json",
        "ai_society_chat.zip!/ai_society/002_001.json",
    ]


MOSS_SHA = "42e216d3e3fb331c18d5fa6e7cb4f1c53eef24a4"
GPT4ALL_SHA = "7a994dd1fa4f60a54f3dcd826d6f2388ca5f5993"
SHARED_MOSS = REPO.parent / "shared" / "corpora" / "moss" / "conversations"


def test_moss_builds_from_jsonl_lines_inside_the_no_tools_zip(tmp_path):
    """fnlp/moss-003-sft-data publishes zips; the no-tools one holds a JSONL file with one
    conversation per line. Real conversations (../shared) are packed the same way."""
    convs = [json.loads(p.read_text()) for p in sorted(SHARED_MOSS.rglob("*.json"))[:3]]
    assert len(convs) == 3
    repo = tmp_path / "hub" / "datasets" / "fnlp" / "moss-003-sft-data"
    repo.mkdir(parents=True)
    with zipfile.ZipFile(repo / "moss-003-sft-no-tools.jsonl.zip", "w") as zf:
        zf.writestr(
            "moss-003-sft-no-tools.jsonl", "".join(json.dumps(c, ensure_ascii=False) + "\n" for c in convs)
        )
    with zipfile.ZipFile(repo / "moss-003-sft-with-tools-no-text2image.zip", "w") as zf:
        zf.writestr("moss-003-sft-with-tools-no-text2image.jsonl", json.dumps(convs[0]) + "\n")
    (repo / "README.md").write_text("---\nlicense: cc-by-4.0\n---\n")
    with LocalHub(tmp_path / "hub") as hub:
        r = forge(["build", "moss_003_sft"], hub_env(hub, tmp_path), tmp_path)
        assert r.returncode == 0, r.stderr
        gets = [p.split("/resolve/")[1] for m, p, _ in hub.state.requests if m == "GET" and "/resolve/" in p]
    assert gets == [f"{MOSS_SHA}/moss-003-sft-no-tools.jsonl.zip"]
    m = manifest(tmp_path, "moss_003_sft")
    assert (m["rows"], m["quarantined"]) == (3, 0) and m["origin"]["revision"] == MOSS_SHA


def test_gpt4all_builds_from_the_parquet_files_under_data(tmp_path):
    rows = [json.loads(x) for x in (FIXTURES / "gpt4all.jsonl").read_text().splitlines() if x.strip()]
    data = tmp_path / "hub" / "datasets" / "nomic-ai" / "gpt4all_prompt_generations" / "data"
    data.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows[:1]), data / "train-00000-of-00002-de0ae301d048d960.parquet")
    pq.write_table(pa.Table.from_pylist(rows[1:]), data / "train-00001-of-00002-014071b0381dd5ae.parquet")
    with LocalHub(tmp_path / "hub") as hub:
        r = forge(["build", "gpt4all"], hub_env(hub, tmp_path), tmp_path)
        assert r.returncode == 0, r.stderr
    m = manifest(tmp_path, "gpt4all")
    assert (m["rows"], m["quarantined"]) == (len(rows), 0) and m["origin"]["revision"] == GPT4ALL_SHA
    assert [x["name"] for x in m["raw"]] == [
        "data/train-00000-of-00002-de0ae301d048d960.parquet",
        "data/train-00001-of-00002-014071b0381dd5ae.parquet",
    ]


def test_revision_override_is_used_and_recorded(tmp_path):
    root = tmp_path / "hub"
    camel_repo(root)
    camel_repo(root, "camel-ai/ai_society@v2", conversations=3)
    with LocalHub(root) as hub:
        env = hub_env(hub, tmp_path)
        r = forge(["build", "camel", "--revision", "v2"], env, tmp_path)
        assert r.returncode == 0, r.stderr
    m = manifest(tmp_path, "camel")
    assert m["rows"] == 3 and m["origin"]["revision"] == "v2"
    r = forge(["build", "camel", "--revision", "v2", "--from", str(tmp_path)], env, tmp_path)
    assert r.returncode == 1 and "--revision applies to a Hub download only" in r.stderr


def test_tar_gz_members_stream_in_archive_order(tmp_path):
    from forge.connectors.archive import list_members, open_member

    path = tmp_path / "a.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        for name, body in (("d/b.json", b"2"), ("d/a.json", b"1"), ("d/skip.txt", b"x"), ("d/c.json", b"3")):
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tf.addfile(info, io.BytesIO(body))
    found = list_members(path, ["*.json"])
    assert found == [("d/b.json", 1), ("d/a.json", 1), ("d/c.json", 1)]  # archive order, not sorted
    assert [open_member(path, m).read() for m, _ in found] == [b"2", b"1", b"3"]
    assert open_member(path, "d/a.json").read() == b"1"  # behind the cursor: a new pass


def test_webgpt_builds_from_the_parquet_conversion_branch(tmp_path):
    root = tmp_path / "hub"
    main = root / "datasets" / "openai" / "webgpt_comparisons"
    main.mkdir(parents=True)
    (main / "webgpt_comparisons.py").write_text("# a loading script, no data\n")
    (main / "README.md").write_text("---\nlicense: mit\n---\n")
    converted = root / "datasets" / f"openai/webgpt_comparisons@{WEBGPT_SHA}" / "default" / "train"
    converted.mkdir(parents=True)
    rows = [json.loads(x) for x in (FIXTURES / "webgpt.jsonl").read_text().splitlines() if x.strip()]
    pq.write_table(pa.Table.from_pylist(rows), converted / "0000.parquet")
    with LocalHub(root) as hub:
        r = forge(["build", "webgpt", "--max-quarantine", "1"], hub_env(hub, tmp_path), tmp_path)
        assert r.returncode == 0, r.stderr
    m = manifest(tmp_path, "webgpt")
    ties = sum(1 for x in rows if x["score_0"] == x["score_1"])
    assert m["rows"] == len(rows) - ties and m["quarantined"] == ties
    assert m["origin"]["revision"] == WEBGPT_SHA and m["raw"][0]["name"] == "default/train/0000.parquet"


HUB_RECORDS = {n: r for n, r in VERIFIED.items() if r["kind"] == "hub"}
# a record whose selected files could not be listed (flan_muffin's train/ folder) cannot be served
CHECKABLE = {n: r for n, r in HUB_RECORDS.items() if r["selected"]}


def test_every_hub_source_is_pinned_and_its_globs_select_the_verified_files():
    catalog = load_catalog(REPO / "catalog.yaml")
    for name, record in HUB_RECORDS.items():
        src = catalog.get(name)
        assert src.hub.repo == record["repo"] and src.hub.revision == record["revision"], name
        selected = sorted(f for f in record["files"] if any(matches_hub_pattern(f, g) for g in src.hub.files))
        assert selected == sorted(record["selected"]), (name, selected)


def test_shown_sizes_compare_at_their_precision():
    assert (
        hub_size_text(286128292) == "286 MB"
        and hub_size_text(2330) == "2.33 kB"
        and hub_size_text(77) == "77 Bytes"
    )
    assert size_matches("286 MB", 286128292) and size_matches("1.94 GB", 1_943_000_000)
    assert not size_matches("286 MB", 290_000_000) and size_matches(457667956, 457667956)


def test_every_verified_url_source_is_pinned_to_the_commit_it_was_verified_at():
    catalog = load_catalog(REPO / "catalog.yaml")
    urls = {n: r for n, r in VERIFIED.items() if r["kind"] == "url"}
    assert len(urls) >= 10
    for name, record in urls.items():
        src = catalog.get(name)
        listed = [src.url] if isinstance(src.url, str) else list(src.url)
        assert sorted(record["files"]) == sorted(listed), name
        assert pinned_revision(src) == record["revision"] and len(record["revision"]) == 40, name
        assert all(f"/{record['revision']}/" in u for u in listed), name


def test_every_remote_source_has_a_verification_record_or_a_commit_in_its_url():
    catalog = load_catalog(REPO / "catalog.yaml")
    for name in catalog.names():
        src = catalog.get(name)
        if not (src.hub or src.url) or name in VERIFIED:
            continue
        # alpaca, flan_cot and cot_zh were pinned to the snapshot commits of ../shared/corpora
        assert len(pinned_revision(src) or "") == 40, f"{name} has neither a record nor a pin"


def test_readme_locations_table_is_generated_from_the_records():
    r = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "locations_table.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr


def serve_trees(hub: LocalHub) -> None:
    for record in CHECKABLE.values():
        # one repo may hold several sources, each verified at its own commit (QingyiSi/Alpaca-CoT)
        commits = hub.state.trees.setdefault(("dataset", record["repo"]), {})
        commits.setdefault(record["revision"], {}).update(record["files"])


def test_check_passes_on_every_verified_tree(tmp_path):
    with LocalHub(tmp_path / "hub") as hub:
        serve_trees(hub)
        r = forge(["sources", "--check", *CHECKABLE], hub_env(hub, tmp_path), tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == len(CHECKABLE) and all(line.startswith("ok ") for line in lines)
    assert any(
        line.startswith(f"ok camel hub:camel-ai/ai_society@{CAMEL_SHA[:12]}: 1 file") for line in lines
    )


def test_check_reports_a_broken_entry_one_line_each(tmp_path):
    (tmp_path / "catalog.yaml").write_text(
        textwrap.dedent(f"""
        sources:
          camel:
            description: camel with a glob that matches nothing (the old entry)
            connector: json
            formatter: dialogue
            options: {{style: camel}}
            hub: {{repo: camel-ai/ai_society, files: ["**/*.jsonl"], revision: {CAMEL_SHA}}}
            lang: EN
            task: MT
            gen: SI
          webgpt:
            description: webgpt pinned to a revision that does not exist
            connector: parquet
            formatter: tasks
            options: {{task: webgpt}}
            hub: {{repo: openai/webgpt_comparisons, files: ["*.jsonl"], revision: "{"0" * 40}"}}
            lang: EN
            task: TS
            gen: MIX
    """)
    )
    with LocalHub(tmp_path / "hub") as hub:
        serve_trees(hub)
        # a file recorded as verified has since disappeared from the published tree
        files = dict(VERIFIED["belle_1m"]["files"])
        del files["README.md"]
        hub.state.trees[("dataset", "BelleGroup/train_1M_CN")] = {VERIFIED["belle_1m"]["revision"]: files}
        env = hub_env(hub, tmp_path)
        r = forge(["sources", "--check", "camel", "webgpt", "belle_1m", "belle_2m"], env, tmp_path)
    assert r.returncode == 1
    lines = r.stdout.strip().splitlines()
    assert (
        lines[0] == f"FAIL camel hub:camel-ai/ai_society@{CAMEL_SHA[:12]}: glob '**/*.jsonl' matches no file"
    )
    assert lines[1].startswith("FAIL webgpt hub:openai/webgpt_comparisons@000000000000: revision")
    assert lines[2].startswith("FAIL belle_1m") and lines[2].endswith("README.md: missing")
    assert lines[3].startswith("ok belle_2m")


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_check_urls_with_head_requests(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "data.json").write_text("[]")
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    (tmp_path / "catalog.yaml").write_text(
        textwrap.dedent(f"""
        sources:
          web_ok:
            description: a file that is there
            connector: json
            formatter: columns
            url: {base}/data.json
            lang: EN
            task: MT
            gen: HG
          web_gone:
            description: one file there, one gone
            connector: json
            formatter: columns
            url: [{base}/data.json, {base}/gone.json]
            lang: EN
            task: MT
            gen: HG
    """)
    )
    try:
        env = {**os.environ, "HF_HUB_OFFLINE": "0", "COLUMNS": "200"}
        r = forge(["sources", "--check", "web_ok", "web_gone"], env, tmp_path)
    finally:
        server.shutdown()
        server.server_close()
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stdout.splitlines() == [
        "ok web_ok url:1 file: 1 file(s)",
        "FAIL web_gone url:2 files: gone.json: HTTP 404",
    ]


def test_check_offline_exits_2(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = forge(["sources", "--check", "camel"], env, tmp_path)
    assert r.returncode == 2 and "cannot check locations while offline" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_sources_shows_the_pinned_revision(tmp_path):
    env = {**os.environ, "COLUMNS": "250", "FORGE_HOME": str(tmp_path / "home")}
    r = forge(["sources", "--json"], env, tmp_path)
    rows = {x["source"]: x for x in json.loads(r.stdout)["sources"]}
    assert rows["camel"]["revision"] == CAMEL_SHA
    assert rows["alpaca"]["revision"] == "761dc5bfbdeeffa89b8bff5d038781a4055f796a"
    shutil.rmtree(tmp_path / "home", ignore_errors=True)


def test_sources_moved_to_verified_copies_build_from_repos_laid_out_like_them(tmp_path):
    """gpteacher_general and baize now come from the Hub copies that could be verified: Alpaca-CoT's
    GPTeacher/Instruct/ (GPTeacher's records with `response` renamed `output`) and taskydata's
    copy of baize-chatbot's data/ (its own file names and format)."""
    from tests.conftest import shared

    records = json.loads(shared("gpteacher/codegen-instruct.json").read_text())[:40]
    formatted = [
        {"instruction": r["instruction"], "input": r["input"], "output": r["response"]} for r in records
    ]
    instruct = tmp_path / "hub" / "datasets" / "QingyiSi" / "Alpaca-CoT" / "GPTeacher" / "Instruct"
    instruct.mkdir(parents=True)
    (instruct / "formatted_gpt4-instruct-similarity-0.9-dataset.json").write_text(
        json.dumps(formatted, indent=4)
    )
    (instruct / "formatted_gpt4-instruct-similarity-0.8-dataset.json").write_text(json.dumps(formatted[:3]))
    baize = tmp_path / "hub" / "datasets" / "taskydata" / "baize_chatbot"
    baize.mkdir(parents=True)
    shutil.copy(FIXTURES / "baize.json", baize / "quora_chat_data.json")
    (baize / "medical_chat_data.json").write_text("[]")
    with LocalHub(tmp_path / "hub") as hub:
        env = hub_env(hub, tmp_path)
        for name in ("gpteacher_general", "baize"):
            r = forge(["build", name], env, tmp_path)
            assert r.returncode == 0, r.stderr
    m = manifest(tmp_path, "gpteacher_general")
    assert (m["rows"], m["quarantined"]) == (40, 0)
    assert m["origin"]["revision"] == VERIFIED["gpteacher_general"]["revision"]
    assert [x["name"] for x in m["raw"]] == VERIFIED["gpteacher_general"]["selected"]
    m = manifest(tmp_path, "baize")
    assert (m["rows"], m["origin"]["revision"]) == (1, VERIFIED["baize"]["revision"])
    assert [x["name"] for x in m["raw"]] == ["quora_chat_data.json"]
