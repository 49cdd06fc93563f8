"""forge ablate: Alpaca-CoT's experiment in one command. The same base model and recipe are
tuned on each of several mixtures (or on one mixture with a parameter swept), every arm is
scored on the same eval suites, and a comparison is written: report.json and report.html
(a table mixture x suite, per-subject breakdowns behind a click, bar charts), with links to
each arm's run manifest and eval results.

  OUT/mixtures/NAME.yaml            sweep variants (found by the trainer through $FORGE_MIXTURES)
  OUT/arms/ARM/run/                 the arm's run folder: adapter, run_manifest.json, eval/SUITE.json
  OUT/arms/ARM/{train,eval-SUITE}.log
  OUT/report.json, OUT/report.html

Each arm trains and evaluates in its own `forge` process, with the same seed. An arm that
fails is shown as failed (with its error) and the others go on. A rerun skips the training
of arms whose run finished and the evals whose results exist.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

FORGE = [sys.executable, "-m", "forge.cli"]


class AblateError(ValueError):
    """A bad ablation request; the message is one line."""


@dataclass
class Arm:
    name: str  # a folder name
    mixture: str
    swept: str | None = None  # "components.0.weight = 0.5" for a sweep variant
    status: str = "pending"  # done | failed
    error: str | None = None
    results: dict = field(default_factory=dict)  # suite -> result JSON (without per-item records)


@dataclass
class EvalSpec:
    suite: str
    data: str
    shots: int | None = None  # None: forge eval's default, the protocol's own
    limit: int | None = None

    def args(self, max_new_tokens: int, judge: list[str]) -> list[str]:
        a = [
            "eval",
            self.suite,
            "--data",
            self.data,
            "--max-new-tokens",
            str(max_new_tokens),
        ]
        return (
            a
            + (["--shots", str(self.shots)] if self.shots is not None else [])
            + (["--limit", str(self.limit)] if self.limit else [])
            + (judge if self.suite == "belle" else [])
        )


def parse_eval(text: str, shots: int | None, limit: int | None) -> EvalSpec:
    """SUITE=PATH, e.g. cmmlu=../shared/evals/cmmlu."""
    from forge.train.evalsets import SUITES

    suite, sep, data = text.partition("=")
    if not sep or suite not in SUITES or not data:
        raise AblateError(f"--eval takes SUITE=PATH with SUITE one of {', '.join(SUITES)}, got {text!r}")
    if not Path(data).exists():
        raise AblateError(f"--eval {text}: {data} does not exist")
    return EvalSpec(suite, str(Path(data).resolve()), shots, limit)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-")


def _set_path(spec: dict, path: str, value) -> None:
    """Set `components.0.weight`-style paths inside a mixture spec."""
    node, keys = spec, path.split(".")
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node[k]
    last = keys[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def sweep_variants(text: str, out: Path, user_dir: Path | None = None) -> list[Arm]:
    """MIXTURE:PATH=V1|V2|... -> one mixture file per value under OUT/mixtures."""
    from forge.mixture import available, load_spec

    head, sep, values = text.partition("=")
    mixture, colon, path = head.partition(":")
    if not (sep and colon and mixture and path and values):
        raise AblateError(
            f"--sweep takes MIXTURE:PATH=V1|V2 (e.g. alpaca-cot:components.0.weight=0.5|1|2), got {text!r}"
        )
    known = available(user_dir)
    if mixture not in known:
        raise AblateError(f"--sweep {text}: unknown mixture {mixture!r}")
    arms = []
    (out / "mixtures").mkdir(parents=True, exist_ok=True)
    for raw in values.split("|"):
        value = yaml.safe_load(raw)
        spec = load_spec(known[mixture])
        try:
            _set_path(spec, path, value)
        except (KeyError, IndexError, ValueError, TypeError):
            raise AblateError(f"--sweep {text}: {mixture} has no {path!r}") from None
        name = _slug(f"{mixture}-{path.replace('components.', 'c')}-{raw}")
        spec["name"] = name
        spec["description"] = f"{mixture} with {path} = {value!r} (forge ablate sweep)"
        target = out / "mixtures" / f"{name}.yaml"
        target.write_text(yaml.safe_dump(spec, allow_unicode=True, sort_keys=False))
        load_spec(target)  # a value the mixture rules reject fails here, before any training
        arms.append(Arm(name, name, f"{path} = {raw}"))
    return arms


def _arm_done(run: Path) -> bool:
    path = run / "run_manifest.json"
    if not path.is_file() or not (run / "adapter").is_dir():
        return False
    try:
        return bool(json.loads(path.read_text()).get("finished_at"))
    except ValueError:
        return False


def _last_error(log: Path) -> str:
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    return (errors or lines or ["(no output)"])[-1][:400]


def run_ablation(
    arms: list[Arm],
    evals: list[EvalSpec],
    out: Path,
    *,
    recipe: str | None,
    train_flags: list[str],
    seed: int = 0,
    max_new_tokens: int = 128,
    judge: list[str] | None = None,
    env: dict | None = None,
    say=print,
) -> dict:
    env = {**os.environ, **(env or {})}
    env["FORGE_MIXTURES"] = os.pathsep.join(
        [str(out / "mixtures"), *[p for p in env.get("FORGE_MIXTURES", "").split(os.pathsep) if p]]
    )
    for arm in arms:
        folder = out / "arms" / arm.name
        run = folder / "run"
        folder.mkdir(parents=True, exist_ok=True)
        if _arm_done(run):
            say(f"[{arm.name}] trained already: skipped")
        else:
            say(f"[{arm.name}] training on mixture {arm.mixture}")
            cmd = [*FORGE, "train", *([recipe] if recipe else []), "--mixture", arm.mixture,
                   "--output-dir", str(run), "--overwrite", "--seed", str(seed), *train_flags]  # fmt: skip
            log = folder / "train.log"
            with open(log, "w") as fh:
                code = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env).returncode
            if code != 0 or not _arm_done(run):
                arm.status, arm.error = "failed", f"training: {_last_error(log)}"
                say(f"[{arm.name}] FAILED: {arm.error}")
                continue
        for spec in evals:
            result = run / "eval" / f"{spec.suite}.json"
            if not result.is_file():
                say(f"[{arm.name}] eval {spec.suite}")
                log = folder / f"eval-{spec.suite}.log"
                cmd = [
                    *FORGE,
                    *spec.args(max_new_tokens, judge or []),
                    "--run",
                    str(run),
                    "--seed",
                    str(seed),
                ]
                with open(log, "w") as fh:
                    code = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env).returncode
                if code != 0 or not result.is_file():
                    arm.status, arm.error = "failed", f"eval {spec.suite}: {_last_error(log)}"
                    say(f"[{arm.name}] FAILED: {arm.error}")
                    break
            else:
                say(f"[{arm.name}] eval {spec.suite} done already: skipped")
            arm.results[spec.suite] = {
                k: v for k, v in json.loads(result.read_text()).items() if k != "records"
            }
        else:
            arm.status = "done"
    report = {
        "seed": seed,
        "recipe": recipe,
        "train_flags": train_flags,
        "evals": [vars(e) for e in evals],
        "arms": [
            {"name": a.name, "mixture": a.mixture, "swept": a.swept, "status": a.status, "error": a.error,
             "run": f"arms/{a.name}/run", "results": a.results}
            for a in arms
        ],
    }  # fmt: skip
    from forge.store import write_atomic

    write_atomic(out / "report.json", json.dumps(report, ensure_ascii=False, indent=1).encode())
    write_atomic(out / "report.html", render_html(report).encode())
    return report


# ---- the HTML report --------------------------------------------------------------------------


def _chart(report: dict, suite: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = [a for a in report["arms"] if suite in a["results"] and a["results"][suite]["score"] is not None]
    if not arms:
        return ""
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(arms) + 1.5), 3.0))
    scores = [a["results"][suite]["score"] for a in arms]
    ax.bar(range(len(arms)), scores, color="#1f4e79")
    ax.set_xticks(range(len(arms)), [a["name"] for a in arms], rotation=20, ha="right", fontsize=8)
    ax.set_ylim(0, max(1.0, max(scores)))
    ax.set_title(f"{suite}: {arms[0]['results'][suite].get('metric', 'score')}", fontsize=10)
    for x, s in enumerate(scores):
        ax.text(x, s, f"{s:.3f}", ha="center", va="bottom", fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="{html.escape(suite)} by arm" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _breakdown(result: dict) -> str:
    parts = result.get("per_subject") or result.get("per_category")
    if not parts:
        return ""
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v.get('items', '')}</td>"
        f"<td>{v.get('accuracy', v.get('mean', 0)):.4f}</td></tr>"
        for k, v in parts.items()
    )
    what = "subjects" if result.get("per_subject") else "categories"
    return f"<details><summary>{len(parts)} {what}</summary><table><tr><th>part</th><th>items</th><th>score</th></tr>{rows}</table></details>"


def render_html(report: dict) -> str:
    suites = [e["suite"] for e in report["evals"]]
    head = "".join(f"<th>{html.escape(s)}</th>" for s in suites)
    body = []
    for a in report["arms"]:
        cells = []
        for s in suites:
            r = a["results"].get(s)
            if r is None:
                cells.append('<td class="failed">—</td>')
                continue
            score = r["score"]
            shown = "n/a" if score is None else f"{score:.4f}"
            cells.append(
                f'<td><a href="{a["run"]}/eval/{s}.json">{shown}</a> <small>({r["items"]} items)</small>{_breakdown(r)}</td>'
            )
        status = a["status"] if a["status"] != "failed" else f"failed: {html.escape(a['error'] or '')}"
        swept = f"<br><small>{html.escape(a['swept'])}</small>" if a["swept"] else ""
        link = f'<a href="{a["run"]}/run_manifest.json">run manifest</a>' if a["results"] else "—"
        body.append(
            f'<tr class="{a["status"]}"><td>{html.escape(a["name"])}{swept}</td><td>{html.escape(a["mixture"])}</td>'
            f"<td>{status}</td><td>{link}</td>{''.join(cells)}</tr>"
        )
    charts = "".join(f"<figure>{_chart(report, s)}</figure>" for s in suites)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>forge ablate</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 6px 10px; text-align: left; vertical-align: top; }}
th {{ background: #eef3f8; }}
tr.failed td {{ background: #fbeaea; }}
figure {{ display: inline-block; margin: 0 1em 1em 0; }}
small {{ color: #666; }}
</style></head><body>
<h1>forge ablate</h1>
<p>Same base model and recipe for every arm (seed {report["seed"]}, recipe {html.escape(str(report["recipe"]))}
{html.escape(" ".join(report["train_flags"]))}); scores link to each arm's eval JSON.</p>
<table id="comparison"><tr><th>arm</th><th>mixture</th><th>status</th><th>run</th>{head}</tr>
{"".join(body)}</table>
<div id="charts">{charts}</div>
</body></html>
"""
