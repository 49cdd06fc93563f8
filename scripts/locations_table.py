"""Regenerate the locations table in docs/sources.md from catalog.yaml and catalog.verified.json.

    .venv/bin/python scripts/locations_table.py          # rewrite docs/sources.md in place
    .venv/bin/python scripts/locations_table.py --check  # exit 1 when docs/sources.md is stale

The verification record is the one place that says what was checked; this table is only a view
of it, so it is generated rather than edited by hand.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from forge.catalog import Source, load_catalog, pinned_revision  # noqa: E402

START, END = "<!-- locations-table:start -->", "<!-- locations-table:end -->"
SHA = re.compile(r"^[0-9a-f]{40}$")


def state(src: Source, record: dict | None) -> str:
    pin = pinned_revision(src)
    pinned = bool(pin and SHA.match(pin))
    if record is None:
        return "pinned (commit in URL)" if pinned else "**not verified** (follows a branch)"
    kind = record.get("kind")
    if kind == "unverified":
        return f"**not verified**: {record['note']}"
    if kind == "hub" and record.get("partial_listing") and not record.get("selected"):
        return "pinned; the folder verified by its commit history, its file names not listed"
    if kind == "url" and record.get("listed") is False:
        return "pinned (commit in URL); the file is named by the repo's own script and README, not listed"
    if kind == "url":
        return "verified, pinned (commit in URL)"
    return "verified, pinned"


def location(src: Source) -> str:
    if src.hub:
        return f"hub `{src.hub.repo}`"
    if src.url:
        n = 1 if isinstance(src.url, str) else len(src.url)
        return f"url ({n} file{'s' if n != 1 else ''})"
    return "local sample"


def table() -> str:
    catalog = load_catalog(REPO / "catalog.yaml")
    verified = json.loads((REPO / "catalog.verified.json").read_text(encoding="utf-8"))["sources"]
    lines = ["| source | location | revision | state |", "|---|---|---|---|"]
    for name in sorted(catalog.names()):
        src = catalog.get(name)
        if not (src.hub or src.url):
            continue
        pin = pinned_revision(src) or "-"
        shown = pin[:12] if SHA.match(pin) else pin
        lines.append(f"| {name} | {location(src)} | `{shown}` | {state(src, verified.get(name))} |")
    return "\n".join(lines)


def render(readme: str) -> str:
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table()}\n{END}{tail}"


def main(argv: list[str]) -> int:
    path = REPO / "docs" / "sources.md"
    current = path.read_text(encoding="utf-8")
    wanted = render(current)
    if "--check" in argv:
        if wanted != current:
            print("docs/sources.md locations table is stale: run scripts/locations_table.py", file=sys.stderr)
            return 1
        return 0
    path.write_text(wanted, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
