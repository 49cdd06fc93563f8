"""A small HTTP server on 127.0.0.1 that speaks the parts of the Hugging Face Hub API that
huggingface_hub's HfApi and download functions call: repo info, file resolve (HEAD/GET),
repo create, preupload and commit. Repos are folders under `root`; commits received are
recorded so tests can assert what was uploaded. Tests only; bounded and local.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote, urlparse

LFS_MIN_BYTES = 100_000  # the tests' stand-in for a repo's .gitattributes LFS rules


class HubState:
    def __init__(self, root: Path):
        self.root = root
        self.commits: list[dict] = []  # every commit call: repo, headers, operations
        self.created: list[dict] = []
        self.requests: list[tuple[str, str, dict]] = []  # (method, path, headers)
        self.fail_next: dict[str, list[int]] = {}  # path regex -> status codes to answer first

        # (repo_type, repo_id) -> {sha: {path: size}}: a repo's published trees at the commits
        # they were recorded at (catalog.verified.json), listed but not downloadable
        self.trees: dict[tuple[str, str], dict[str, dict]] = {}
        self.answered: dict[tuple[str, str, str], Path] = {}  # (type, repo, sha) -> folder

    def repo_dir(self, repo_type: str, repo_id: str, revision: str = "main") -> Path:
        """The folder serving a repo; `REPO@REVISION` (the revision %-quoted, so
        refs/convert/parquet is refs%2Fconvert%2Fparquet) holds another revision's files."""
        if (repo_type, repo_id, revision) in self.answered:  # a commit sha this server gave out
            return self.answered[(repo_type, repo_id, revision)]
        other = self.root / f"{repo_type}s" / f"{repo_id}@{quote(revision, safe='')}"
        return other if other.is_dir() else self.root / f"{repo_type}s" / repo_id


SIZE_CATEGORIES = {
    "n<1K",
    "1K<n<10K",
    "10K<n<100K",
    "100K<n<1M",
    "1M<n<10M",
    "10M<n<100M",
    "100M<n<1B",
    "1B<n<10B",
}


def validate_card_metadata(content: str, repo_type: str = "dataset") -> list[str]:
    """The checks the Hub applies to a dataset card's YAML header (the subset forge uses)."""
    import yaml

    if not content.startswith("---"):
        return ["README.md has no YAML metadata header"]
    try:
        meta = yaml.safe_load(content.split("---", 2)[1])
    except yaml.YAMLError as e:
        return [f"YAML header does not parse: {e}"]
    if not isinstance(meta, dict):
        return ["YAML header must be a mapping"]
    errors = []
    names = set()
    for i, cfg in enumerate(meta.get("configs", []) or []):
        if not isinstance(cfg, dict) or not isinstance(cfg.get("config_name"), str):
            errors.append(f"configs[{i}]: config_name is required")
            continue
        if cfg["config_name"] in names:
            errors.append(f"configs[{i}]: duplicate config_name {cfg['config_name']!r}")
        names.add(cfg["config_name"])
        files = cfg.get("data_files")
        if not isinstance(files, list) or not files:
            errors.append(f"configs[{i}]: data_files must be a non-empty list")
            continue
        for j, df in enumerate(files):
            if not isinstance(df, dict) or "split" not in df or not isinstance(df.get("path"), str | list):
                errors.append(f"configs[{i}].data_files[{j}]: needs split and path")
    for key in ("language", "task_categories", "size_categories", "tags"):
        value = meta.get(key)
        if value is not None and not (isinstance(value, list) and all(isinstance(x, str) for x in value)):
            errors.append(f"{key}: must be a list of strings")
    lic = meta.get("license")
    if lic is not None and not isinstance(lic, str | list):
        errors.append("license: must be a string or a list of strings")
    for size in meta.get("size_categories") or []:
        if size not in SIZE_CATEGORIES:
            errors.append(f"size_categories: unknown value {size!r}")
    return errors


def _sha(repo: Path) -> str:
    h = hashlib.sha1()
    for p in sorted(repo.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(repo)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def make_handler(state: HubState):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep test output clean
            pass

        def _send(
            self, status: int, body: bytes = b"", headers: dict | None = None, content_type="application/json"
        ):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, obj) -> None:
            self._send(status, json.dumps(obj).encode())

        def _base(self) -> str:
            return f"http://{self.headers.get('Host')}"

        def _read_body(self) -> bytes:
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n else b""

        def _injected_failure(self) -> bool:
            for pattern, codes in state.fail_next.items():
                if codes and re.search(pattern, self.path):
                    code = codes.pop(0)
                    self._json(code, {"error": "injected failure"})
                    return True
            return False

        def _record(self) -> None:
            state.requests.append((self.command, self.path, dict(self.headers)))

        def do_HEAD(self):
            self._record()
            self._resolve()

        def do_GET(self):
            self._record()
            if self._injected_failure():
                return
            path = urlparse(self.path).path
            m = re.match(r"^/api/(datasets|models|spaces)/(.+?)/revision/([^/]+)$", path)
            if m:
                return self._info(m.group(1)[:-1], m.group(2), unquote(m.group(3)))
            m = re.match(r"^/api/(datasets|models|spaces)/(.+?)/tree/([^/]+)(?:/(.*))?$", path)
            if m:
                return self._tree(m.group(1)[:-1], m.group(2), unquote(m.group(4) or ""), unquote(m.group(3)))
            m = re.match(r"^/api/(datasets|models|spaces)/([^/]+/[^/]+)$", path)
            if m:
                return self._info(m.group(1)[:-1], m.group(2), "main")
            return self._resolve()

        def _info(self, repo_type: str, repo_id: str, revision: str):
            trees = state.trees.get((repo_type, repo_id))
            if trees is not None:
                sha = list(trees)[-1] if revision == "main" else revision  # main: the last recorded
                if sha not in trees:
                    return self._send(
                        404, b'{"error": "Invalid rev id"}', {"X-Error-Code": "RevisionNotFound"}
                    )
                siblings = [{"rfilename": f} for f in sorted(trees[sha])]
                return self._json(200, {"id": repo_id, "sha": sha, "private": False, "siblings": siblings})
            repo = state.repo_dir(repo_type, repo_id, revision)
            if not repo.is_dir():
                return self._send(404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"})
            files = sorted(str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file())
            sha = revision if re.fullmatch(r"[0-9a-f]{40}", revision) else _sha(repo)
            state.answered[(repo_type, repo_id, sha)] = repo  # downloads then ask for this sha
            self._json(
                200,
                {
                    "id": repo_id,
                    # a pinned commit is answered as itself, like the Hub does
                    "sha": sha,
                    "private": False,
                    "siblings": [{"rfilename": f} for f in files],
                },
            )

        def _tree(self, repo_type: str, repo_id: str, prefix: str, revision: str = "main"):
            trees = state.trees.get((repo_type, repo_id))
            if trees is not None:
                if revision not in trees:
                    return self._send(
                        404, b'{"error": "Invalid rev id"}', {"X-Error-Code": "RevisionNotFound"}
                    )
                entries = [
                    {"type": "file", "path": f, "size": size_in_bytes(size), "oid": "0" * 40}
                    for f, size in sorted(trees[revision].items())
                    if f.startswith(prefix)
                ]
                return self._json(200, entries)
            repo = state.repo_dir(repo_type, repo_id, revision)
            base = repo / prefix
            if not base.is_dir():
                return self._send(404, b'{"error": "not found"}', {"X-Error-Code": "EntryNotFound"})
            entries = []
            for p in sorted(base.rglob("*")):
                rel = str(p.relative_to(repo))
                if p.is_dir():
                    entries.append({"type": "directory", "path": rel, "oid": "0" * 40})
                else:
                    data = p.read_bytes()
                    entry = {
                        "type": "file",
                        "path": rel,
                        "size": len(data),
                        "oid": hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest(),
                    }
                    if len(data) >= LFS_MIN_BYTES:  # large files go through LFS, as on the Hub
                        sha = hashlib.sha256(data).hexdigest()
                        entry["lfs"] = {"oid": sha, "size": len(data), "pointerSize": 134}
                    entries.append(entry)
            self._json(200, entries)

        def _resolve(self):
            path = urlparse(self.path).path
            m = re.match(r"^/(?:(datasets|spaces)/)?(.+?)/resolve/([^/]+)/(.+)$", path)
            if not m:
                return self._send(404, b'{"error": "not found"}')
            repo_type = (m.group(1) or "models")[:-1]
            repo = state.repo_dir(repo_type, m.group(2), unquote(m.group(3)))
            file = repo / unquote(m.group(4))
            if not file.is_file():
                return self._send(404, b'{"error": "Entry not found"}', {"X-Error-Code": "EntryNotFound"})
            data = file.read_bytes()
            etag = hashlib.sha1(data).hexdigest()
            self._send(
                200, data, {"X-Repo-Commit": _sha(repo), "ETag": f'"{etag}"'}, "application/octet-stream"
            )

        def do_POST(self):
            self._record()
            body = self._read_body()
            if self._injected_failure():
                return
            path = urlparse(self.path).path
            if path == "/api/validate-yaml":
                req = json.loads(body or b"{}")
                errors = validate_card_metadata(req.get("content", ""), req.get("repoType", "model"))
                if errors:
                    return self._json(400, {"errors": [{"message": e} for e in errors], "warnings": []})
                return self._json(200, {"errors": [], "warnings": []})
            if path == "/api/repos/create":
                req = json.loads(body or b"{}")
                repo_type = req.get("type") or "model"
                repo_id = (
                    f"{req.get('organization') or 'me'}/{req['name']}"
                    if "/" not in req["name"]
                    else req["name"]
                )
                state.created.append(req)
                state.repo_dir(repo_type, repo_id).mkdir(parents=True, exist_ok=True)
                prefix = "" if repo_type == "model" else f"{repo_type}s/"
                return self._json(200, {"url": f"{self._base()}/{prefix}{repo_id}", "name": repo_id})
            m = re.match(r"^/api/(datasets|models|spaces)/(.+?)/preupload/([^/]+)$", path)
            if m:
                req = json.loads(body or b"{}")
                # every file goes as a regular (base64) file: no LFS, no xet
                return self._json(
                    200,
                    {
                        "files": [
                            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                            for f in req.get("files", [])
                        ],
                        "commitOid": None,
                    },
                )
            m = re.match(r"^/api/(datasets|models|spaces)/(.+?)/commit/([^/]+)$", path)
            if m:
                return self._commit(m.group(1)[:-1], m.group(2), unquote(m.group(3)), body)
            self._send(404, b'{"error": "not found"}')

        def _commit(self, repo_type: str, repo_id: str, revision: str, body: bytes):
            repo = state.repo_dir(repo_type, repo_id)
            if not repo.is_dir():
                return self._send(404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"})
            lines = [json.loads(x) for x in body.decode().splitlines() if x.strip()]
            header = next((x["value"] for x in lines if x.get("key") == "header"), {})
            ops = []
            for item in lines:
                if item.get("key") == "file":
                    v = item["value"]
                    target = repo / v["path"]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(base64.b64decode(v["content"]))
                    ops.append(("add", v["path"]))
                elif item.get("key") == "deletedFile":
                    (repo / item["value"]["path"]).unlink(missing_ok=True)
                    ops.append(("delete", item["value"]["path"]))
            state.commits.append(
                {
                    "repo": repo_id,
                    "type": repo_type,
                    "revision": revision,
                    "header": header,
                    "operations": ops,
                    "create_pr": "create_pr=1" in self.path,
                    "authorization": self.headers.get("Authorization"),
                }
            )
            oid = _sha(repo)
            base = f"{self._base()}/{'' if repo_type == 'model' else repo_type + 's/'}{repo_id}"
            pr = f"{base}/discussions/1" if "create_pr=1" in self.path else None
            self._json(200, {"commitUrl": f"{base}/commit/{oid}", "commitOid": oid, "pullRequestUrl": pr})

    return Handler


class LocalHub:
    """Context manager: start the server on a free loopback port; .endpoint is its URL."""

    def __init__(self, root: Path):
        self.state = HubState(root)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(self.state))
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> LocalHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def size_in_bytes(size: int | str | None) -> int:
    """A recorded size ("286 MB" as the Hub's page shows it, or bytes; None: not recorded)."""
    if size is None:
        return 1
    if isinstance(size, int):
        return size
    from forge.check import shown_size

    return int(shown_size(size)[0])


def encode(s: str) -> str:
    return base64.b64encode(s.encode()).decode()
