"""forge sources --check: does every catalog location still resolve to the files it names?

For a Hub source, the repo's file tree at the pinned revision is listed (HfApi.list_repo_tree,
with sizes); for a URL source, each URL gets a HEAD request. Problems, one line per source:
  - the revision or repo is gone, a URL answers an error
  - a catalog glob matches no file (an unmatched glob)
  - a file recorded when the location was verified (catalog.verified.json) is missing
  - a file's size differs from the recorded one (compared at the precision it was recorded
    with: the Hub's file pages show "286 MB", so that is what is kept and compared)

catalog.verified.json (beside catalog.yaml) is the record of what each location held when it
was verified by hand against its published file tree: the revision, the files and sizes, the
page it was read from and the date. It is also what the tests serve from a local Hub.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from forge.catalog import Source
from forge.locate import hub_offline, matches_hub_pattern


class Offline(Exception):
    """No network: nothing can be checked."""


@dataclass
class CheckResult:
    source: str
    location: str
    problems: list[str] = field(default_factory=list)
    files: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def load_verified(path: Path) -> dict:
    if not path.exists():
        return {}
    return json.loads(path.read_text(encoding="utf-8")).get("sources", {})


def hub_size_text(n: int) -> str:
    """A byte count the way the Hub's file pages show it (decimal units, 3 significant
    digits): 286128292 -> "286 MB", 2330 -> "2.33 kB", 77 -> "77 Bytes"."""
    if n < 1000:
        return f"{n} Bytes"
    units = ["kB", "MB", "GB", "TB"]
    value, unit = float(n), "Bytes"
    for u in units:
        value /= 1000.0
        unit = u
        if value < 1000:
            break
    digits = 3 - int(math.floor(math.log10(value))) - 1 if value > 0 else 2
    text = f"{value:.{max(digits, 0)}f}"
    return f"{text} {unit}"


_UNITS = {"Bytes": 1, "kB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}


def shown_size(text: str) -> tuple[float, float]:
    """A size as a Hub page shows it ("286 MB", "2.33 kB") -> (bytes, one unit of its last digit)."""
    number, unit = text.split()
    decimals = len(number.split(".")[1]) if "." in number else 0
    return float(number) * _UNITS[unit], _UNITS[unit] / 10**decimals


def size_matches(recorded: str | int, actual: int) -> bool:
    """Is `actual` (bytes) the size recorded? A shown size matches any byte count within one
    unit of its last digit, whether the page rounded or truncated."""
    if isinstance(recorded, int):
        return recorded == actual
    value, step = shown_size(recorded)
    return abs(actual - value) < step


def check_hub(src: Source, verified: dict | None) -> CheckResult:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    hub = src.hub
    result = CheckResult(src.name, f"hub:{hub.repo}@{hub.revision[:12]}")
    try:
        entries = HfApi().list_repo_tree(
            hub.repo, revision=hub.revision, repo_type=hub.repo_type, recursive=True
        )
        remote = {e.path: e.size for e in entries if getattr(e, "size", None) is not None}
    except RevisionNotFoundError:
        result.problems.append(f"revision {hub.revision} not found in {hub.repo}")
        return result
    except RepositoryNotFoundError:
        result.problems.append(f"repo {hub.repo} not found (or private)")
        return result
    except HfHubHTTPError as e:
        result.problems.append(f"listing failed: {str(e).splitlines()[0]}")
        return result
    except Exception as e:  # noqa: BLE001 - transport errors differ across huggingface_hub versions
        if _is_connection_error(e):
            raise Offline(str(e)) from e
        raise
    _compare(result, remote, src.hub.files or ["*"], verified)
    return result


def check_urls(src: Source, verified: dict | None, timeout: float = 30.0) -> CheckResult:
    urls = [src.url] if isinstance(src.url, str) else list(src.url)
    result = CheckResult(src.name, f"url:{len(urls)} file{'s' if len(urls) != 1 else ''}")
    remote: dict[str, int | None] = {}
    reached = False
    for url in urls:
        req = urllib.request.Request(url, method="HEAD")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                length = resp.headers.get("Content-Length")
                remote[url] = int(length) if length and length.isdigit() else None
                reached = True
        except urllib.error.HTTPError as e:
            reached = True
            result.problems.append(f"{url.rsplit('/', 1)[-1]}: HTTP {e.code}")
        except (urllib.error.URLError, OSError) as e:
            if not reached and url == urls[-1]:
                raise Offline(str(e)) from e
            result.problems.append(f"{url.rsplit('/', 1)[-1]}: {e}")
    result.files = len(remote)
    recorded = (verified or {}).get("files", {})
    for url, size in remote.items():
        want = recorded.get(url)
        if want is not None and size is not None and not size_matches(want, size):
            result.problems.append(
                f"{url.rsplit('/', 1)[-1]}: size changed ({want} verified, {size} bytes now)"
            )
    return result


def _compare(result: CheckResult, remote: dict[str, int], globs: list[str], verified: dict | None) -> None:
    selected = set()
    for pattern in globs:
        hit = [p for p in remote if matches_hub_pattern(p, pattern)]
        if not hit:
            result.problems.append(f"glob {pattern!r} matches no file")
        selected.update(hit)
    result.files = len(selected)
    for name, want in (verified or {}).get("files", {}).items():
        if name not in remote:
            result.problems.append(f"{name}: missing")
        elif want is not None and not size_matches(want, remote[name]):
            result.problems.append(
                f"{name}: size changed ({want} verified, {hub_size_text(remote[name])} now)"
            )


def _is_connection_error(e: BaseException) -> bool:
    seen = 0
    while e is not None and seen < 8:
        name = type(e).__name__
        if isinstance(e, ConnectionError | TimeoutError) or name in {
            "ConnectError",
            "ConnectTimeout",
            "ConnectionError",
            "NameResolutionError",
            "MaxRetryError",
            "OfflineModeIsEnabled",
        }:
            return True
        e = e.__cause__ or e.__context__
        seen += 1
    return False


def check_sources(sources: list[Source], verified_path: Path) -> list[CheckResult]:
    """Check each source's location; raises Offline when the network cannot be used."""
    if hub_offline():
        raise Offline("HF_HUB_OFFLINE is set")
    verified = load_verified(verified_path)
    out = []
    for src in sources:
        if src.hub:
            out.append(check_hub(src, verified.get(src.name)))
        elif src.url:
            out.append(check_urls(src, verified.get(src.name)))
        else:
            out.append(CheckResult(src.name, "local/sample", []))
    return out
