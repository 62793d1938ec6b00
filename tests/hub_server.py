"""A Hub-compatible HTTP server on 127.0.0.1 for the tests: just the routes ``huggingface_hub`` uses to push and pull.

It keeps repos in memory (branch -> commit -> {path: bytes}) and answers like huggingface.co does for what
``HfApi.whoami / create_repo / create_branch / create_commit / model_info`` and ``hf_hub_download`` (so
``from_pretrained``) send. The pre-upload route answers ``"uploadMode": "regular"`` for every file, so the client sends
the contents inline (base64) in the NDJSON commit and never needs LFS or Xet storage. Routes (as in huggingface_hub
2.4, ``hf_api.py``, ``_commit_api.py`` and ``file_download.py``):

    GET  /api/whoami-v2                             who owns the token (401 when it is not the server's)
    POST /api/repos/create                          {"name", "organization", "visibility"} -> {"url"}; 409 if it exists
    POST /api/validate-yaml                         {"content"} -> {"errors": [], "warnings": []}
    POST /api/models/{repo}/preupload/{revision}    {"files": [{"path", "size", "sample"}]} -> upload modes
    POST /api/models/{repo}/commit/{revision}       NDJSON: header line, then one "file" line per file
    POST /api/models/{repo}/branch/{branch}         a branch from main's head; 409 if it exists
    GET  /api/models/{repo}[/revision/{revision}]   model info: id, sha, private, siblings, cardData
    GET  /api/models/{repo}/tree/{revision}[/{path}]  files and folders under path (the tokenizer lists them)
    GET  /api/agent-harnesses                       an empty registry (huggingface_hub's user-agent detection)
    HEAD/GET /{repo}/resolve/{revision}/{path}      the file, with ETag (git blob sha1), X-Repo-Commit, Content-Length

Failures the tests ask for: ``reject_tokens`` (whoami answers 401), ``token_role = "read"``, and ``drop_commits``
(the next N commit requests have their connection closed after half the body is read, with no response).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import yaml

_REPO = r"(?P<repo>[\w.-]+/[\w.-]+)"
_API_ROUTES = [
    ("GET", re.compile(r"/api/whoami-v2"), "whoami"),
    ("POST", re.compile(r"/api/repos/create"), "create_repo"),
    ("POST", re.compile(r"/api/validate-yaml"), "validate_yaml"),
    ("POST", re.compile(rf"/api/models/{_REPO}/preupload/(?P<rev>[^/]+)"), "preupload"),
    ("POST", re.compile(rf"/api/models/{_REPO}/commit/(?P<rev>[^/]+)"), "commit"),
    ("POST", re.compile(rf"/api/models/{_REPO}/branch/(?P<rev>[^/]+)"), "create_branch"),
    ("GET", re.compile(rf"/api/models/{_REPO}(?:/revision/(?P<rev>[^/]+))?"), "model_info"),
    ("GET", re.compile(rf"/api/models/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?"), "tree"),
    ("GET", re.compile(r"/api/agent-harnesses"), "agent_harnesses"),
]
_RESOLVE = re.compile(rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)")


def git_blob_sha1(data: bytes) -> str:
    """The id git gives a file's contents; the Hub's ETag for files stored without LFS."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    private: bool
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # commit sha -> files at that commit
    branches: dict[str, str] = field(default_factory=dict)  # branch -> commit sha
    messages: list[str] = field(default_factory=list)

    def resolve(self, revision: str) -> str | None:
        if revision in self.branches:
            return self.branches[revision]
        return next((sha for sha in self.commits if sha.startswith(revision) and len(revision) >= 7), None)


class HubServer:
    """Start with ``HubServer(token).start()``; ``url`` is the endpoint, ``stop()`` shuts it down."""

    def __init__(self, token: str, user: str = "tester"):
        self.token, self.user = token, user
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, in order
        self.unknown: list[tuple[str, str]] = []  # requests no route answered (a client feature the server lacks)
        self.reject_tokens = False
        self.token_role = "write"  # what whoami says the token may do ("read" tokens cannot push)
        self.drop_commits = 0
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    # ---- what the tests look at ----

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        repo = self.repos[repo_id]
        return dict(repo.commits[repo.resolve(revision)])

    def calls(self, name: str) -> int:
        """How many requests reached the route ``name`` (whoami, create_repo, preupload, commit, ...)."""
        return sum(1 for _, route in self.requests if route == name)

    # ---- state changes (under the lock: the server is threaded) ----

    def _new_commit(self, repo: Repo, parent: str | None, files: dict[str, bytes], message: str) -> str:
        sha = hashlib.sha1(f"{parent}:{len(repo.commits)}:{message}".encode()).hexdigest()
        repo.commits[sha] = files
        repo.messages.append(message)
        return sha

    def create_repo(self, repo_id: str, private: bool) -> bool:
        with self._lock:
            if repo_id in self.repos:
                return False
            repo = self.repos[repo_id] = Repo(private=private)
            repo.branches["main"] = self._new_commit(repo, None, {".gitattributes": b""}, "initial commit")
            return True

    def commit(self, repo_id: str, branch: str, files: dict[str, bytes], message: str) -> str:
        with self._lock:
            repo = self.repos[repo_id]
            parent = repo.branches[branch]
            repo.branches[branch] = self._new_commit(repo, parent, {**repo.commits[parent], **files}, message)
            return repo.branches[branch]


def _make_handler(hub: HubServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 30

        def log_message(self, format, *args):  # keep pytest output clean
            pass

        # ---- plumbing ----

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False) -> None:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _json(self, status: int, payload, headers: dict | None = None) -> None:
            self._send(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})})

        def _error(self, status: int, message: str, code: str | None = None, head: bool = False) -> None:
            headers = {"Content-Type": "application/json", "X-Error-Message": message}
            if code:
                headers["X-Error-Code"] = code
            self._send(status, json.dumps({"error": message}).encode(), headers, head=head)

        def _authorized(self) -> bool:
            return self.headers.get("Authorization") == f"Bearer {hub.token}" and not hub.reject_tokens

        def _repo(self, repo_id: str, head: bool = False) -> Repo | None:
            repo = hub.repos.get(repo_id)
            if repo is None or (repo.private and not self._authorized()):
                self._error(404, "Repository not found", "RepoNotFound", head=head)
                return None
            return repo

        def _dispatch(self, method: str) -> None:
            path = urlsplit(self.path).path
            for verb, pattern, name in _API_ROUTES:
                match = pattern.fullmatch(path)
                if verb == method and match:
                    hub.requests.append((method, name))
                    return getattr(self, f"_{name}")(**{k: unquote(v) for k, v in match.groupdict().items() if v})
            match = _RESOLVE.fullmatch(path)
            if match and method in ("GET", "HEAD"):
                hub.requests.append((method, "resolve"))
                return self._resolve(head=method == "HEAD", **{k: unquote(v) for k, v in match.groupdict().items()})
            hub.requests.append((method, path))
            hub.unknown.append((method, path))
            self._body() if method == "POST" else None
            self._error(404, f"no route for {method} {path}", head=method == "HEAD")

        def do_GET(self):
            self._dispatch("GET")

        def do_HEAD(self):
            self._dispatch("HEAD")

        def do_POST(self):
            self._dispatch("POST")

        # ---- routes ----

        def _whoami(self):
            if not self._authorized():
                return self._error(401, "Invalid credentials in Authorization header")
            role = {"displayName": "tests", "role": hub.token_role}
            self._json(200, {"type": "user", "name": hub.user, "auth": {"type": "access_token", "accessToken": role}})

        def _create_repo(self):
            payload = json.loads(self._body())
            if not self._authorized():
                return self._error(401, "Invalid credentials in Authorization header")
            repo_id = f"{payload.get('organization') or hub.user}/{payload['name']}"
            url = f"{hub.url}/{repo_id}"
            if not hub.create_repo(repo_id, private=payload.get("visibility") == "private"):
                return self._json(409, {"error": "You already created this model repo", "url": url})
            self._json(200, {"url": url, "name": repo_id, "id": repo_id})

        def _validate_yaml(self):
            content = json.loads(self._body())["content"]
            match = re.match(r"^---\n(.*?)\n---\n", content, re.S)
            try:
                meta = yaml.safe_load(match.group(1)) if match else {}
            except yaml.YAMLError as err:
                return self._json(400, {"errors": [{"message": str(err)}], "warnings": []})
            if not isinstance(meta, dict):
                return self._json(400, {"errors": [{"message": "metadata is not a mapping"}], "warnings": []})
            self._json(200, {"errors": [], "warnings": []})

        def _writable_repo(self, repo_id: str, rev: str) -> Repo | None:
            if not self._authorized():
                self._error(401, "Invalid credentials in Authorization header")
                return None
            repo = self._repo(repo_id)
            if repo is not None and rev not in repo.branches:
                self._error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
                return None
            return repo

        def _preupload(self, repo, rev):
            payload = json.loads(self._body())
            if (target := self._writable_repo(repo, rev)) is None:
                return
            current = target.commits[target.branches[rev]]
            files = [
                {
                    "path": f["path"],
                    "uploadMode": "regular",  # inline base64 in the commit: no LFS / Xet storage needed
                    "shouldIgnore": False,
                    "oid": git_blob_sha1(current[f["path"]]) if f["path"] in current else None,
                }
                for f in payload["files"]
            ]
            self._json(200, {"files": files, "commitOid": target.branches[rev]})

        def _commit(self, repo, rev):
            if hub.drop_commits > 0:
                hub.drop_commits -= 1
                # the line goes dead mid-upload: read half the body, then close without answering
                self.rfile.read(int(self.headers.get("Content-Length") or 0) // 2)
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
            if self._writable_repo(repo, rev) is None:
                return
            header = next(item["value"] for item in lines if item["key"] == "header")
            files = {}
            for item in lines:
                if item["key"] == "file":
                    files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                elif item["key"] != "header":  # lfsFile, deletedFile...: not needed by these tests
                    return self._error(400, f"unsupported commit operation {item['key']!r}")
            sha = hub.commit(repo, rev, files, header["summary"])
            self._json(200, {"commitUrl": f"{hub.url}/{repo}/commit/{sha}", "commitOid": sha, "pullRequestUrl": None})

        def _create_branch(self, repo, rev):
            self._body()
            if not self._authorized():
                return self._error(401, "Invalid credentials in Authorization header")
            if (target := self._repo(repo)) is None:
                return
            with hub._lock:
                if rev in target.branches:
                    return self._error(409, "Reference already exists")
                target.branches[rev] = target.branches["main"]
            self._json(200, {})

        def _model_info(self, repo, rev="main"):
            if (target := self._repo(repo)) is None:
                return
            sha = target.resolve(rev)
            if sha is None:
                return self._error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
            files = target.commits[sha]
            info = {"id": repo, "sha": sha, "private": target.private, "siblings": [{"rfilename": p} for p in files]}
            readme = files.get("README.md", b"").decode()
            if match := re.match(r"^---\n(.*?)\n---\n", readme, re.S):
                info["cardData"] = yaml.safe_load(match.group(1))
            self._json(200, info)

        def _tree(self, repo, rev, path=""):
            if (target := self._repo(repo)) is None:
                return
            sha = target.resolve(rev)
            if sha is None:
                return self._error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
            prefix = f"{path.strip('/')}/" if path else ""
            entries = {}
            for name, data in target.commits[sha].items():
                if not name.startswith(prefix):
                    continue
                head, *rest = name[len(prefix) :].split("/", 1)
                if rest:
                    entries[prefix + head] = {"type": "directory", "oid": "0" * 40, "size": 0, "path": prefix + head}
                else:
                    entries[name] = {"type": "file", "oid": git_blob_sha1(data), "size": len(data), "path": name}
            if prefix and not entries:
                return self._error(404, f"{path} does not exist on {rev}", "EntryNotFound")
            self._json(200, sorted(entries.values(), key=lambda e: e["path"]))

        def _agent_harnesses(self):
            self._json(200, {"standardEnvVars": [], "harnesses": {}})

        def _resolve(self, repo, rev, path, head):
            if (target := self._repo(repo, head=head)) is None:
                return
            sha = target.resolve(rev)
            if sha is None:
                return self._error(404, f"Invalid rev id: {rev}", "RevisionNotFound", head=head)
            if path not in target.commits[sha]:
                return self._error(404, "Entry not found", "EntryNotFound", head=head)
            data = target.commits[sha][path]
            headers = {
                "Content-Type": "application/octet-stream",
                "ETag": f'"{git_blob_sha1(data)}"',
                "X-Repo-Commit": sha,
                "Accept-Ranges": "bytes",
            }
            self._send(200, data, headers, head=head)

    return Handler
