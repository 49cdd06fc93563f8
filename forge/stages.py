"""Model-powered stages: translate, rewrite or judge a built source's records through any
OpenAI-compatible endpoint (forge serve, vLLM, a hosted API), into a new source.

A derived source is a catalog entry with `derive:` instead of a location:

    cot_zh_mt:
      description: FLAN CoT machine-translated into Chinese
      derive: {from: flan_cot, stage: translate, to: zh, fields: [instruction, output]}
      endpoint: {url: "http://127.0.0.1:8000/v1", model: smollm2, key_env: FORGE_ENDPOINT_KEY}
      lang: CN
      task: MT
      gen: SI
      category: cot

`forge build cot_zh_mt` (or `forge translate flan_cot --to zh --out cot_zh_mt ...`, which
writes that entry) reads the input's committed version as a stream, sends one request per
record field, and writes the replies as a new immutable version exactly like a build.

Every request is keyed by sha256(model, template id, rendered prompt, sampling parameters) and
its reply is stored in a SQLite cache under the data home the moment it arrives, so a rerun,
or a run after a crash, pays only for what it has not asked yet. Requests run in a bounded
thread pool with optional requests/s and tokens/min limits; 429, 5xx and connection errors are
retried with exponential backoff (honouring Retry-After); that client, its cache and its limits
are forge.model_client, which forge eval's judge shares. A reply that fails validation (a
translation that lost a number, a judge reply without a score) quarantines its record with the
reason; nothing is dropped silently. Output records keep the input record's id, the stage, the
model and the template id in meta.stage, and the build hash covers all of them.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import pyarrow.parquet as pq

from forge import lang as langid
from forge import normalize
from forge.build import BuildResult, check_zh_content, up_to_date, write_json_atomic
from forge.build_part import Quarantine, ShardWriter, assemble
from forge.built import open_built
from forge.catalog import Source
from forge.errors import BuildError
from forge.model_client import Endpoint, EndpointError, ModelClient, Stats, reply_cache
from forge.paths import data_home, source_store
from forge.schema import SCHEMA_VERSION

VERSION = "1"
STAGES = ("translate", "rewrite", "judge")
CHUNK = 64  # records whose requests are in flight together; bounds memory, not throughput
LANG_NAMES = {
    "zh": "Simplified Chinese",
    "en": "English",
    "ja": "Japanese",
    "ko": "Korean",
    "fr": "French",
    "de": "German",
    "es": "Spanish",
    "ru": "Russian",
}

# Default prompts, written for this project. Users replace them with `template: FILE`.
TRANSLATE_TEMPLATE = """\
Translate the following text into {{ target }}. Reply with the translation only.
Keep every number, every code block, every option letter such as (A), and any line starting
with #### exactly as written.

{{ text }}"""
JUDGE_TEMPLATE = """\
Rate how helpful and correct the response is for the instruction, from 1 (useless) to 10
(excellent). Reply in the form "Score: N" followed by one sentence of reason.

Instruction: {{ instruction }}{% if input %}
Input: {{ input }}{% endif %}
Response: {{ output }}"""


# ---- validation -----------------------------------------------------------------------------

_CODE = re.compile(r"```.*?```", re.S)
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:[.,]\d+)*(?![\w])")
_ANSWER = re.compile(r"^####\s*(.+?)\s*$", re.M)
_OPTION = re.compile(r"\(([A-H])\)")


def kept_intact(source: str, translated: str) -> str | None:
    """Why a translation is not acceptable, or None. Code blocks must come back byte for
    byte, and every number, option letter and #### answer of the source must still be there."""
    for block in _CODE.findall(source):
        if block not in translated:
            return "a code block changed"
    plain_src, plain_out = _CODE.sub(" ", source), _CODE.sub(" ", translated)
    for answer in _ANSWER.findall(plain_src):
        if f"#### {answer}" not in plain_out and f"####{answer}" not in plain_out:
            return f"the #### answer {answer!r} was lost"
    have = Counter(_NUMBER.findall(plain_out))
    for number, n in Counter(_NUMBER.findall(plain_src)).items():
        if have[number] < n:
            return f"the number {number} was lost"
    have_opts = set(_OPTION.findall(plain_out))
    for letter in sorted(set(_OPTION.findall(plain_src))):
        if letter not in have_opts:
            return f"the option ({letter}) was lost"
    if not translated.strip():
        return "the reply is empty"
    return None


_SCORE = re.compile(r"(?i)score\s*[:：=]?\s*(\d+(?:\.\d+)?)")
_FIRST_NUMBER = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)")


def parse_score(reply: str, lo: float = 1, hi: float = 10) -> float | None:
    """The score in a judge reply ("Score: 7", or a reply that starts with the number); None
    when there is none or it is outside [lo, hi]. An unparsable reply is counted, never guessed."""
    m = _SCORE.search(reply) or _FIRST_NUMBER.match(reply.strip())
    if not m:
        return None
    value = float(m.group(1))
    return value if lo <= value <= hi else None


# ---- the stage ------------------------------------------------------------------------------


@dataclass
class Plan:
    """What one stage run does, decided before anything is sent."""

    stage: str
    source_from: str
    fields: list[str]
    template: str
    template_id: str
    options: dict = field(default_factory=dict)


def load_template(path: str | None, default: str, base: Path) -> str:
    if not path:
        return default
    p = Path(path) if Path(path).is_absolute() else base / path
    try:
        return p.read_text(encoding="utf-8")
    except OSError as e:
        raise BuildError(f"template {p}: cannot read ({e.strerror})") from None


def plan_stage(src: Source) -> Plan:
    d = dict(src.derive)
    stage = d.pop("stage", None)
    origin = d.pop("from", None)
    if stage not in STAGES:
        raise BuildError(f"{src.name}: derive.stage must be one of {', '.join(STAGES)}, found {stage!r}")
    if not origin:
        raise BuildError(f"{src.name}: derive.from names the source to read")
    default = {"translate": TRANSLATE_TEMPLATE, "judge": JUDGE_TEMPLATE}.get(stage)
    if stage == "rewrite" and not d.get("template"):
        raise BuildError(f"{src.name}: a rewrite needs derive.template (a Jinja prompt over the record)")
    text = load_template(d.pop("template", None), default or "", src.base_dir)
    try:
        jinja2.Environment(undefined=jinja2.StrictUndefined).parse(text)
    except jinja2.TemplateSyntaxError as e:
        raise BuildError(f"{src.name}: template line {e.lineno}: {e.message}") from None
    if stage == "translate":
        fields = d.pop("fields", ["instruction", "input", "output", "history"])
        if d.get("to") not in LANG_NAMES:
            raise BuildError(
                f"{src.name}: derive.to must be one of {', '.join(LANG_NAMES)}, found {d.get('to')!r}"
            )
    elif stage == "rewrite":
        fields = [d.pop("field", "output")]
    else:
        fields = []
    allowed = (
        ("instruction", "input", "output", "history")
        if stage == "translate"
        else ("instruction", "input", "output")
    )
    bad = [f for f in fields if f not in allowed]
    if bad:
        raise BuildError(f"{src.name}: unknown field {bad[0]!r} ({', '.join(allowed)})")
    tid = hashlib.sha256(text.encode()).hexdigest()[:12]
    return Plan(stage, origin, list(fields), text, f"{stage}-{tid}", d)


def _input_chunks(built, limit: int | None) -> Iterator[list[dict]]:
    """The input's records, CHUNK at a time, stopping after `limit` of them."""
    left = limit
    for path in built.files():
        for batch in pq.ParquetFile(path).iter_batches(batch_size=CHUNK):
            rows = batch.to_pylist() if left is None else batch.slice(0, left).to_pylist()
            if rows:
                yield rows
            if left is not None:
                left -= len(rows)
                if left <= 0:
                    return


def prepare(src: Source, home: Path) -> tuple[Plan, object]:
    """The stage's plan and its input's committed version, or a one-line BuildError that says
    what is wrong (an unknown stage, an unreadable template, an input that is not built)."""
    plan = plan_stage(src)
    built = open_built(plan.source_from, home)
    if built is None:
        raise BuildError(
            f"{src.name}: its input {plan.source_from!r} is not built; run forge build {plan.source_from}"
        )
    return plan, built


def stage_hash(src: Source, plan: Plan, endpoint: Endpoint, input_manifest: dict, limit: int | None) -> str:
    parts = {
        "schema": SCHEMA_VERSION,
        "stage": [VERSION, plan.stage, plan.fields, plan.options, plan.template],
        "model": [endpoint.model, endpoint.sampling()],
        "input": [plan.source_from, input_manifest["build_hash"], limit],
        "tags": [src.lang, src.task, src.gen, src.category, langid.VERSION],
        "normalization": normalize.NORMALIZATION,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def run_stage(
    src: Source,
    *,
    endpoint: Endpoint,
    home: Path | None = None,
    max_quarantine: float = 0.05,
    limit: int | None = None,
    force: bool = False,
    detector: str = "fast",
    progress: Callable[[int], None] | None = None,
    keep: int | None = None,
) -> tuple[BuildResult, Stats]:
    """Run a derived source's stage over its input's committed version and commit the result."""
    home = Path(home or data_home())
    t0 = time.perf_counter()
    plan, built = prepare(src, home)
    bhash = stage_hash(src, plan, endpoint, built.manifest, limit)
    store = source_store(src.name, home)
    cache = reply_cache(home)
    client = ModelClient(endpoint, cache)
    try:
        with store.lock():
            if not force and (done := up_to_date(store, src.name, bhash, t0)):
                return done, client.stats
            vid, tmp = store.new_tmp()
            try:
                result = _run(src, plan, built, client, tmp, detector, max_quarantine, limit, progress)
                manifest = {
                    "source": src.name,
                    "version": vid,
                    "schema_version": SCHEMA_VERSION,
                    "build_hash": bhash,
                    **result,
                    "origin": {
                        "derived_from": plan.source_from,
                        "from_version": built.version,
                        "stage": plan.stage,
                        "options": plan.options,
                        "fields": plan.fields,
                        "template_id": plan.template_id,
                        "model": endpoint.model,
                        "sampling": endpoint.sampling(),
                        "limit": limit,
                    },
                    "stage_stats": vars(client.stats),
                    "tags": {
                        "lang": langid.dataset_lang(result["tag_counts"]["lang"]),
                        "task": src.task,
                        "gen": src.gen,
                    },
                    "license": src.license,
                    "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                }
                write_json_atomic(tmp / "manifest.json", manifest)
                version = store.commit(vid, tmp, keep)
            except BaseException:
                import shutil

                shutil.rmtree(tmp, ignore_errors=True)
                raise
    finally:
        cache.close()
    q = version.path / "quarantine.jsonl"
    return (
        BuildResult(
            src.name,
            "built",
            result["rows"],
            result["quarantined"],
            result["input_records"],
            result["shards"],
            bhash,
            time.perf_counter() - t0,
            version.path,
            q if result["quarantined"] else None,
            result["tag_counts"],
            version=vid,
        ),  # fmt: skip
        client.stats,
    )


def _one_ahead(items: Iterator) -> Iterator:
    """Yield each item once the one after it has been produced (started)."""
    pending = deque()
    for item in items:
        pending.append(item)
        if len(pending) > 1:
            yield pending.popleft()
    yield from pending


def _answered(reply: str) -> Future:
    done: Future = Future()
    done.set_result((reply, None))
    return done


def _run(
    src, plan: Plan, built, client: ModelClient, tmp: Path, detector, max_quarantine, limit, progress
) -> dict:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False)
    template = env.from_string(plan.template)
    quarantine = Quarantine(src.name, tmp / "quarantine.jsonl")
    reject = quarantine.stage("model")
    writer = ShardWriter(tmp, 250_000)
    counts = {k: Counter() for k in ("lang", "task", "gen", "category")}
    rows = seen = 0
    first_reason = ""
    target = LANG_NAMES.get(plan.options.get("to", ""), "")

    def prompts_for(rec: dict) -> list[tuple[str, str]]:
        if plan.stage == "translate":
            # a dialogue's earlier turns are text of the record too: "history.I.user" etc.
            texts = [(f, rec[f]) for f in plan.fields if f != "history"]
            if "history" in plan.fields:
                texts += [
                    (f"history.{i}.{role}", turn[role])
                    for i, turn in enumerate(rec["history"] or [])
                    for role in ("user", "assistant")
                ]
            return [
                (f, template.render(text=text, target=target, field=f.split(".")[0], record=rec))
                for f, text in texts
                if text
            ]
        return [("reply", template.render(**rec, record=rec))]

    def ask(prompt: str) -> tuple[str | None, str | None]:
        try:
            return client.complete(prompt, plan.template_id), None
        except EndpointError as e:
            return None, f"endpoint: {e}"

    try:
        with ThreadPoolExecutor(max(1, client.endpoint.concurrency)) as pool:

            def submitted(chunk: list[dict]) -> tuple[list[dict], list]:
                asks = [prompts_for(r) for r in chunk]
                hits = client.cached([p for fields in asks for _, p in fields], plan.template_id)
                futures = [
                    [(f, _answered(hits[p]) if p in hits else pool.submit(ask, p)) for f, p in fields]
                    for fields in asks
                ]
                return chunk, futures

            # the next chunk's requests go out before this chunk is written, so the endpoint
            # never sees the pool drain at a chunk boundary; two chunks bound the memory
            for chunk, futures in _one_ahead(map(submitted, _input_chunks(built, limit))):
                out = {k: [] for k in ("instruction", "input", "output", "history", "category", "raw_file",
                                        "raw_row", "raw_line", "template", "meta", "variant")}  # fmt: skip
                for rec, fs in zip(chunk, futures, strict=True):
                    seen += 1
                    replies = {f: fut.result() for f, fut in fs}
                    row, reason = _apply(plan, rec, replies)
                    if reason:
                        first_reason = first_reason or reason
                        raw = json.dumps(
                            {k: rec[k] for k in ("id", "instruction", "input", "output")}, ensure_ascii=False
                        )
                        reject(raw, rec["raw_file"], rec["raw_row"], rec["raw_line"], reason)
                        continue
                    meta = json.loads(rec["meta"]) if rec.get("meta") else {}
                    meta.update(row.pop("meta_extra", {}))
                    meta["stage"] = {
                        "name": plan.stage,
                        "input_source": plan.source_from,
                        "input_id": rec["id"],
                        "model": client.endpoint.model,
                        "template": plan.template_id,
                        **({"to": plan.options["to"]} if plan.stage == "translate" else {}),
                    }
                    for k in ("instruction", "input", "output"):
                        out[k].append(row.get(k, rec[k]))
                    out["history"].append(row.get("history", rec["history"]))
                    out["category"].append(rec["category"])
                    out["raw_file"].append(rec["raw_file"])
                    out["raw_row"].append(rec["raw_row"])
                    out["raw_line"].append(rec["raw_line"])
                    out["template"].append(rec["template"])
                    out["meta"].append(json.dumps(meta, ensure_ascii=False))
                    out["variant"].append(rec["id"])
                if out["instruction"]:
                    # ids: (this source, the raw provenance, the input record's id as variant)
                    table = assemble(out, src, detector)
                    writer.submit(table)
                    rows += table.num_rows
                    for key in counts:
                        counts[key].update(table.column(key).to_pylist())
                if progress:
                    progress(len(chunk))
        shards = writer.close()
    finally:
        quarantine.close()
    if seen and quarantine.count / seen > max_quarantine:
        raise BuildError(
            f"{src.name}: {quarantine.count} of {seen} records quarantined ({quarantine.count / seen:.1%} > "
            f"--max-quarantine {max_quarantine:.1%}). Reasons: {dict(quarantine.reasons.most_common(5))}; "
            f"the first: {first_reason}. "
            f"Replies so far are cached; the previous version is unchanged"
        )
    # a stage asked for Chinese must produce Chinese; other stages keep their input's tags
    check_zh_content(src.name, tmp, shards, {"lang": counts["lang"]}, fail=plan.options.get("to") == "zh")
    return {
        "rows": rows,
        "input_records": seen,
        "quarantined": quarantine.count,
        "quarantine_reasons": dict(quarantine.reasons),
        "shards": shards,
        "tag_counts": {k: dict(sorted(v.items())) for k, v in counts.items()},
    }


def _apply(plan: Plan, rec: dict, replies: dict) -> tuple[dict, str | None]:
    """The output fields for one record from its replies, or the reason it is quarantined."""
    for f, (_reply, error) in replies.items():
        if error:
            return {}, error if f == "reply" else error.replace("endpoint:", f"endpoint ({f}):", 1)
    if plan.stage == "translate":
        row: dict = {}
        history = [dict(turn) for turn in rec["history"] or []]
        for f, (reply, _) in replies.items():
            reply = reply.strip()
            if f.startswith("history."):
                _, i, role = f.split(".")
                original, put = history[int(i)][role], history[int(i)]
            else:
                original, put = rec[f], row
            why = kept_intact(original, reply)
            if why:
                return {}, f"translation check ({f}): {why}"
            put[f.rsplit(".", 1)[-1]] = reply
        if history:
            row["history"] = history
        return row, None
    reply = replies["reply"][0].strip()
    if plan.stage == "rewrite":
        if not reply:
            return {}, "rewrite: the reply is empty"
        return {plan.fields[0]: reply}, None
    score = parse_score(reply)
    if score is None:
        return {}, f"judge: no score in the reply {reply[:80]!r}"
    return {"meta_extra": {"judge": {"score": score, "reason": reply[:500]}}}, None
