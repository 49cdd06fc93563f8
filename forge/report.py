"""forge report NAME: one self-contained HTML page describing a mixture.

Plots are matplotlib PNGs embedded as data URIs, so the page is a single file that opens
anywhere (no server, no network). Sections: component shares (target vs realised), tag
composition (target vs realised), length histograms (characters, and tokens when a
tokenizer is given), and sample records from each component.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

from forge.mixture import TAG_KEYS, Mixture, MixtureStream, stream_tag_counts

SAMPLES_PER_COMPONENT = 2


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _bars(title: str, target: dict, realised: dict) -> str:
    import matplotlib.pyplot as plt

    keys = sorted(set(target) | set(realised), key=lambda k: -realised.get(k, 0))
    x = np.arange(len(keys))
    fig, ax = plt.subplots(figsize=(max(4.5, 0.9 * len(keys) + 2), 3.2))
    ax.bar(x - 0.2, [target.get(k, 0) for k in keys], 0.4, label="target", color="#9bb7d4")
    ax.bar(x + 0.2, [realised.get(k, 0) for k in keys], 0.4, label="realised", color="#1f4e79")
    ax.set_xticks(
        x,
        [str(k) for k in keys],
        rotation=20 if len(keys) > 4 else 0,
        ha="right" if len(keys) > 4 else "center",
    )
    ax.set_ylabel("examples")
    ax.set_title(title)
    ax.legend(frameon=False, loc="best")
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)


def _hist(title: str, series: dict[str, list[int]], xlabel: str) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    upper = max((np.percentile(v, 99) for v in series.values() if len(v)), default=1)
    bins = np.linspace(0, max(upper, 1), 40)
    for name, values in series.items():
        ax.hist(np.clip(values, 0, bins[-1]), bins=bins, alpha=0.6, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("examples")
    ax.set_title(title)
    ax.legend(frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)


def build_report(mix: Mixture, home: Path | None, out: Path, tokenizer_path: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    realised, target = stream_tag_counts(mix)
    prompt_chars, output_chars, prompt_tokens, output_tokens = [], [], [], []
    samples: dict[str, list[dict]] = {leaf.label: [] for leaf in mix.leaves}
    comp_real = dict.fromkeys(samples, 0)
    tokenizer = None
    if tokenizer_path:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    for table in MixtureStream(mix, home, columns=["id", "instruction", "input", "output", "source", "lang"]):
        prompts = [
            a + ("\n" + b if b else "")
            for a, b in zip(table["instruction"].to_pylist(), table["input"].to_pylist(), strict=True)
        ]
        outputs = table["output"].to_pylist()
        prompt_chars.extend(len(p) for p in prompts)
        output_chars.extend(len(o) for o in outputs)
        if tokenizer is not None:
            prompt_tokens.extend(len(x) for x in tokenizer(prompts, add_special_tokens=False)["input_ids"])
            output_tokens.extend(len(x) for x in tokenizer(outputs, add_special_tokens=False)["input_ids"])
        for row in table.select(["_component", "id", "instruction", "input", "output", "lang"]).to_pylist():
            comp_real[row["_component"]] += 1
            bucket = samples[row["_component"]]
            if len(bucket) < SAMPLES_PER_COMPONENT:
                bucket.append(row)

    comp_target = {leaf.label: leaf.count for leaf in mix.leaves}
    figures = [("Components", _bars("examples per component", comp_target, comp_real))]
    for key in ("lang", "task", "gen", "category"):
        figures.append(
            (
                f"By {key}",
                _bars(f"examples by {key}", {k: round(v) for k, v in target[key].items()}, realised[key]),
            )
        )
    figures.append(
        (
            "Lengths (characters)",
            _hist(
                "prompt and response length", {"prompt": prompt_chars, "response": output_chars}, "characters"
            ),
        )
    )
    if tokenizer is not None:
        figures.append(
            (
                "Lengths (tokens)",
                _hist(
                    f"token length ({Path(tokenizer_path).name})",
                    {"prompt": prompt_tokens, "response": output_tokens},
                    "tokens",
                ),
            )
        )

    rows = "".join(
        f"<tr><td>{html.escape(leaf.label)}</td><td>{leaf.size:,}</td><td>{leaf.count:,}</td>"
        f"<td>{leaf.count / max(mix.total, 1):.1%}</td><td>{comp_real[leaf.label]:,}</td></tr>"
        for leaf in mix.leaves
    )
    sample_html = ""
    for label, recs in samples.items():
        sample_html += f"<h3>{html.escape(label)}</h3>"
        for r in recs:
            prompt = r["instruction"] + ("\n\n" + r["input"] if r["input"] else "")
            sample_html += (
                f"<div class='sample'><div class='meta'>{html.escape(r['id'][:12])} · {html.escape(r['lang'])}</div>"
                f"<pre class='p'>{html.escape(prompt[:1200])}</pre><pre class='o'>{html.escape(r['output'][:1200])}</pre></div>"
            )
    figs_html = "".join(
        f"<figure><figcaption>{html.escape(t)}</figcaption><img src='{src}' alt='{html.escape(t)}'></figure>"
        for t, src in figures
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>forge mixture {html.escape(mix.name)}</title>
<style>
body{{font-family:system-ui,-apple-system,"Segoe UI","Noto Sans CJK SC","PingFang SC","Microsoft YaHei",sans-serif;margin:2rem auto;max-width:1100px;color:#1b1b1b;padding:0 1rem}}
h1{{margin-bottom:.2rem}} .sub{{color:#555;margin-top:0}}
table{{border-collapse:collapse;margin:1rem 0}} td,th{{border-bottom:1px solid #ddd;padding:.3rem .8rem;text-align:right}}
td:first-child,th:first-child{{text-align:left}}
.grid{{display:grid;grid-template-columns:repeat(auto-fill,minmax(480px,1fr));gap:1rem}}
figure{{margin:0;border:1px solid #e3e3e3;border-radius:6px;padding:.5rem}} figure img{{max-width:100%}}
figcaption{{font-weight:600;margin-bottom:.3rem}}
.sample{{border-left:3px solid #1f4e79;margin:.6rem 0;padding-left:.6rem}} .meta{{color:#666;font-size:.85rem}}
pre{{font-family:ui-monospace,Menlo,Consolas,"Noto Sans Mono CJK SC",monospace;white-space:pre-wrap;margin:.2rem 0;font-size:.85rem}} pre.o{{color:#234}}
</style></head><body>
<h1>Mixture <code>{html.escape(mix.name)}</code></h1>
<p class="sub">{html.escape(str(mix.spec.get("description", "")))} — strategy {html.escape(str(mix.spec.get("strategy", "rates")))},
seed {mix.seed}, {mix.total:,} examples, fingerprint <code>{mix.fingerprint()[:16]}</code></p>
<table><tr><th>component</th><th>records</th><th>target draws</th><th>share</th><th>realised</th></tr>{rows}</table>
<div class="grid">{figs_html}</div>
<h2>Samples</h2>{sample_html}
</body></html>"""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return out


__all__ = ["build_report", "TAG_KEYS"]
