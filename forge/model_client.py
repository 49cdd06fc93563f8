"""The client for OpenAI-compatible chat endpoints (forge serve, vLLM, a hosted API): the
endpoint's settings, the reply cache, rate limits and retries.

Separate from forge.stages because it is not only the stages' client: forge eval's judge asks
its endpoint through the same ModelClient and the same reply cache. Every request is keyed by
sha256(model, template id, prompt, sampling parameters) and its reply is committed to SQLite
the moment it arrives, so a rerun pays only for what it has not asked yet.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sqlite3
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import requests

from forge.errors import BuildError


class EndpointError(Exception):
    """A request that failed for good (after retries, or a 4xx that retrying cannot fix)."""


@dataclass
class Endpoint:
    url: str  # the API base, e.g. http://127.0.0.1:8000/v1
    model: str
    key_env: str | None = None  # the API key is read from this environment variable, never logged
    temperature: float = 0.0
    max_tokens: int = 512
    concurrency: int = 8
    rps: float = 0.0  # requests per second, 0 = unlimited
    tpm: int = 0  # tokens per minute (prompt + reply, as the endpoint reports them), 0 = unlimited
    max_retries: int = 5
    timeout: float = 120.0
    backoff: float = 0.5  # first retry waits this long, doubling each time (capped at 30 s)

    @classmethod
    def from_spec(cls, spec: dict, **overrides) -> Endpoint:
        known = {**spec, **{k: v for k, v in overrides.items() if v is not None}}
        unknown = set(known) - set(cls.__dataclass_fields__)
        if unknown:
            raise BuildError(f"endpoint: unknown field {sorted(unknown)[0]!r}")
        if not known.get("url") or not known.get("model"):
            raise BuildError("endpoint: needs a url (--endpoint) and a model (--model)")
        return cls(**known)

    def sampling(self) -> dict:
        return {"temperature": self.temperature, "max_tokens": self.max_tokens}


# ---- the response cache ---------------------------------------------------------------------


class ResponseCache:
    """Replies by request key, in SQLite (WAL), committed one by one as they arrive."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, reply TEXT, tokens INTEGER)"
        )
        self._lock = threading.Lock()

    def get(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT reply FROM replies WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def get_many(self, keys: list[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        with self._lock:
            for i in range(0, len(keys), 500):  # SQLite's bound-parameter limit
                part = keys[i : i + 500]
                marks = ",".join("?" * len(part))
                found.update(self._db.execute(f"SELECT key, reply FROM replies WHERE key IN ({marks})", part))
        return found

    def put(self, key: str, reply: str, tokens: int) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO replies VALUES (?, ?, ?)", (key, reply, tokens))

    def close(self) -> None:
        self._db.close()


def reply_cache(home: Path) -> ResponseCache:
    """The one reply cache of a data home, shared by the stages and forge eval's judge."""
    return ResponseCache(home / "cache" / "model_replies.sqlite")


def request_key(model: str, template_id: str, prompt: str, sampling: dict) -> str:
    blob = json.dumps([model, template_id, prompt, sampling], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


# ---- the client: rate limits, retries ---------------------------------------------------------


class RateLimiter:
    """Requests/s as evenly spaced start times; tokens/min as a sliding one-minute window."""

    def __init__(self, rps: float, tpm: int):
        self.interval = 1.0 / rps if rps > 0 else 0.0
        self.tpm = tpm
        self._next = 0.0
        self._spent: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()

    def wait(self) -> None:
        while True:
            with self._lock:
                now = time.monotonic()
                while self._spent and now - self._spent[0][0] > 60.0:
                    self._spent.popleft()
                over = self.tpm and sum(t for _, t in self._spent) >= self.tpm
                delay = (self._spent[0][0] + 60.0 - now) if over else max(0.0, self._next - now)
                if delay <= 0:
                    self._next = max(now, self._next) + self.interval
                    return
            time.sleep(min(delay, 1.0))

    def spend(self, tokens: int) -> None:
        if self.tpm:
            with self._lock:
                self._spent.append((time.monotonic(), tokens))


@dataclass
class Stats:
    requests: int = 0  # sent over the network (retries included)
    cached: int = 0
    retries: int = 0
    failed: int = 0


class ModelClient:
    def __init__(self, endpoint: Endpoint, cache: ResponseCache):
        self.endpoint = endpoint
        self.cache = cache
        self.limiter = RateLimiter(endpoint.rps, endpoint.tpm)
        self.stats = Stats()
        self._local = threading.local()
        self._stats_lock = threading.Lock()
        key = os.environ.get(endpoint.key_env, "") if endpoint.key_env else ""
        self._headers = {"Content-Type": "application/json"}
        if key:
            self._headers["Authorization"] = f"Bearer {key}"

    def _session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session

    def _count(self, name: str, n: int = 1) -> None:
        with self._stats_lock:
            setattr(self.stats, name, getattr(self.stats, name) + n)

    def cached(self, prompts: list[str], template_id: str) -> dict[str, str]:
        """The replies the cache already holds for these prompts, in one lookup: a rerun
        answers from here without a trip through the thread pool."""
        ep = self.endpoint
        keys = {request_key(ep.model, template_id, p, ep.sampling()): p for p in prompts}
        hits = {keys[k]: reply for k, reply in self.cache.get_many(list(keys)).items()}
        self._count("cached", sum(1 for p in prompts if p in hits))
        return hits

    def complete(self, prompt: str, template_id: str) -> str:
        ep = self.endpoint
        key = request_key(ep.model, template_id, prompt, ep.sampling())
        hit = self.cache.get(key)
        if hit is not None:
            self._count("cached")
            return hit
        body = {"model": ep.model, "messages": [{"role": "user", "content": prompt}], **ep.sampling()}
        url = ep.url.rstrip("/") + "/chat/completions"
        last = ""
        for attempt in range(ep.max_retries + 1):
            if attempt:
                self._count("retries")
            self.limiter.wait()
            self._count("requests")
            wait = min(ep.backoff * 2**attempt, 30.0) * (0.5 + random.random())
            try:
                resp = self._session().post(url, json=body, headers=self._headers, timeout=ep.timeout)
            except requests.RequestException as e:
                last = f"cannot reach {url} ({type(e).__name__})"
                time.sleep(wait)
                continue
            if resp.status_code == 429 or resp.status_code >= 500:
                last = f"HTTP {resp.status_code} from {url}"
                retry_after = resp.headers.get("Retry-After", "")
                if retry_after.replace(".", "", 1).isdigit():
                    wait = min(float(retry_after), 60.0)
                time.sleep(wait)
                continue
            if resp.status_code != 200:
                self._count("failed")
                raise EndpointError(f"HTTP {resp.status_code} from {url}: {_error_text(resp)}")
            try:
                data = resp.json()
                reply = data["choices"][0]["message"]["content"]
                usage = data.get("usage") or {}
                tokens = int(usage.get("total_tokens") or 0)
            except (ValueError, KeyError, IndexError, TypeError) as e:
                self._count("failed")
                raise EndpointError(
                    f"{url}: not an OpenAI chat completion reply ({type(e).__name__})"
                ) from None
            if not isinstance(reply, str):
                self._count("failed")
                raise EndpointError(f"{url}: the reply's content is not text")
            self.limiter.spend(tokens or (len(prompt) + len(reply)) // 4)
            self.cache.put(key, reply, tokens)
            return reply
        self._count("failed")
        raise EndpointError(f"{last}, after {ep.max_retries} retries")


def _error_text(resp) -> str:
    try:
        return str(resp.json()["error"]["message"])[:200]
    except (ValueError, KeyError, TypeError):
        return resp.text[:200]
