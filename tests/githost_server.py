"""A local stand-in for GitHub's REST API and raw host (no internet here).

It speaks the shapes smart sync uses — commits/{ref}, git/trees/{sha} (with
``recursive=1``, and ``truncated`` when told to), raw file bytes, the commit
tarball — with real git object SHA-1s, ETag/304 and rate-limit headers. Faults
on demand: corrupted or cut-off files, a spent rate limit, a hostile tree; and
a throttle (latency per request, bandwidth) for the benchmark.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import tarfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

Files = dict[str, tuple[str, bytes]]  # path -> (mode, bytes); mode 100644/100755/120000


def _blob(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _tree_object(entries: list[tuple[str, str, str]]) -> tuple[str, bytes]:
    """(sha, raw) of a git tree from (mode, name, sha) entries."""
    body = b"".join(
        f"{mode.lstrip('0') if mode.startswith('04') else mode} {name}".encode()
        + b"\0"
        + bytes.fromhex(sha)
        for mode, name, sha in sorted(
            entries, key=lambda e: e[1] + ("/" if e[0] == "040000" else "")
        )
    )
    raw = b"tree %d\0" % len(body) + body
    return hashlib.sha1(raw).hexdigest(), raw


@dataclass
class Commit:
    sha: str
    files: Files
    trees: dict[str, list[dict[str, Any]]]  # tree sha -> its direct entries
    root: str


@dataclass
class FakeGitHub:
    repo: str = "acme/hyper"
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    requests: Counter[str] = field(default_factory=Counter)
    authorization: str = ""  # the last request's Authorization header
    corrupt: set[str] = field(default_factory=set)  # raw paths served with wrong bytes
    cut: dict[str, int] = field(default_factory=dict)  # raw path -> times to cut it mid-file
    rate_limited: bool = False
    truncate: bool = False  # recursive trees say truncated (and list only the top)
    hostile: list[dict[str, Any]] | None = None  # extra entries appended to every tree
    latency: float = 0.0  # seconds per request
    bandwidth: float = 0.0  # bytes per second; 0: unlimited

    def commit(self, files: Files, branch: str = "main") -> str:
        trees: dict[str, list[dict[str, Any]]] = {}

        def build(prefix: str) -> str:
            entries: dict[str, tuple[str, str, str, int]] = {}
            for path, (mode, data) in files.items():
                if not path.startswith(prefix):
                    continue
                rest = path[len(prefix) :]
                name, sep, _ = rest.partition("/")
                if sep and name not in entries:
                    entries[name] = ("040000", "tree", build(prefix + name + "/"), 0)
                elif not sep:
                    entries[name] = (mode, "blob", _blob(data), len(data))
            sha, _ = _tree_object([(m, n, s) for n, (m, _, s, _) in entries.items()])
            trees[sha] = [
                {"path": n, "mode": m, "type": t, "sha": s, **({"size": z} if t == "blob" else {})}
                for n, (m, t, s, z) in sorted(entries.items())
            ]
            return sha

        root = build("")
        parent = self.branches.get(branch, "")
        sha = hashlib.sha1(f"commit {root} {parent} {time.time_ns()}".encode()).hexdigest()
        self.commits[sha] = Commit(sha, dict(files), trees, root)
        self.branches[branch] = sha
        return sha

    # -- the app ----------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/repos/{owner}/{name}/commits/{ref}", self._commit)
        app.router.add_get("/repos/{owner}/{name}/git/trees/{sha}", self._tree)
        app.router.add_get("/repos/{owner}/{name}/tarball/{sha}", self._tarball)
        app.router.add_get("/raw/{owner}/{name}/{sha}/{path:.+}", self._raw)
        return app

    def _headers(self) -> dict[str, str]:
        reset = str(int(time.time()) + 1800)
        remaining = "0" if self.rate_limited else "4999"
        return {
            "X-RateLimit-Limit": "5000",
            "X-RateLimit-Remaining": remaining,
            "X-RateLimit-Reset": reset,
        }

    async def _gate(self, request: web.Request, kind: str) -> web.Response | None:
        self.requests[kind] += 1
        self.authorization = request.headers.get("Authorization", "")
        if self.latency:
            await asyncio.sleep(self.latency)
        if f"{request.match_info['owner']}/{request.match_info['name']}" != self.repo:
            return web.json_response({"message": "Not Found"}, status=404)
        if self.rate_limited:
            body = {"message": "API rate limit exceeded"}
            return web.json_response(body, status=403, headers=self._headers())
        return None

    async def _json(self, request: web.Request, value: Any) -> web.StreamResponse:
        body = json.dumps(value).encode()
        etag = '"' + hashlib.sha1(body).hexdigest() + '"'
        headers = {**self._headers(), "ETag": etag}
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers=headers)
        return await self._send(request, body, "application/json", headers)

    async def _send(
        self, request: web.Request, body: bytes, kind: str, headers: dict[str, str]
    ) -> web.StreamResponse:
        if not self.bandwidth:
            return web.Response(body=body, content_type=kind, headers=headers)
        reply = web.StreamResponse(headers=headers)
        reply.content_type = kind
        reply.content_length = len(body)
        await reply.prepare(request)
        step = 64 * 1024
        for start in range(0, len(body), step):
            await reply.write(body[start : start + step])
            await asyncio.sleep(min(step, len(body) - start) / self.bandwidth)
        await reply.write_eof()
        return reply

    async def _commit(self, request: web.Request) -> web.StreamResponse:
        if (refused := await self._gate(request, "commit")) is not None:
            return refused
        ref = request.match_info["ref"]
        sha = self.branches.get(ref, ref)
        if sha not in self.commits:
            return web.json_response({"message": "No commit found"}, status=404)
        return await self._json(
            request, {"sha": sha, "commit": {"tree": {"sha": self.commits[sha].root}}}
        )

    def _find_tree(self, sha: str) -> tuple[Commit, str] | None:
        for commit in self.commits.values():
            if sha == commit.sha:
                return commit, commit.root
            if sha in commit.trees:
                return commit, sha
        return None

    async def _tree(self, request: web.Request) -> web.StreamResponse:
        if (refused := await self._gate(request, "tree")) is not None:
            return refused
        found = self._find_tree(request.match_info["sha"])
        if found is None:
            return web.json_response({"message": "Not Found"}, status=404)
        commit, tree_sha = found
        direct = commit.trees[tree_sha]
        if request.query.get("recursive") and not self.truncate:
            entries = self._flatten(commit, tree_sha, "")
            truncated = False
        else:
            entries = [dict(e) for e in direct]
            truncated = bool(request.query.get("recursive"))
        if self.hostile is not None:
            entries = entries + self.hostile
        return await self._json(request, {"sha": tree_sha, "tree": entries, "truncated": truncated})

    def _flatten(self, commit: Commit, tree_sha: str, prefix: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for entry in commit.trees[tree_sha]:
            out.append({**entry, "path": prefix + entry["path"]})
            if entry["type"] == "tree":
                out += self._flatten(commit, entry["sha"], prefix + entry["path"] + "/")
        return out

    async def _raw(self, request: web.Request) -> web.StreamResponse:
        if (refused := await self._gate(request, "raw")) is not None:
            return refused
        commit = self.commits.get(request.match_info["sha"])
        path = request.match_info["path"]
        if commit is None or path not in commit.files:
            return web.Response(status=404, text="404: Not Found")
        data = commit.files[path][1]
        if path in self.corrupt:
            data = data + b"tampered"
        if self.cut.get(path):
            self.cut[path] -= 1
            reply = web.StreamResponse(headers={"Content-Length": str(len(data) + 100)})
            await reply.prepare(request)
            await reply.write(data[: len(data) // 2])
            assert request.transport is not None
            request.transport.close()  # the connection dies mid-file
            return reply
        return await self._send(request, data, "application/octet-stream", {})

    async def _tarball(self, request: web.Request) -> web.StreamResponse:
        if (refused := await self._gate(request, "tarball")) is not None:
            return refused
        commit = self.commits.get(request.match_info["sha"])
        if commit is None:
            return web.Response(status=404)
        top = f"{self.repo.replace('/', '-')}-{commit.sha[:7]}"
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            for path, (mode, data) in sorted(commit.files.items()):
                info = tarfile.TarInfo(f"{top}/{path}")
                if mode == "120000":
                    info.type = tarfile.SYMTYPE
                    info.linkname = data.decode()
                else:
                    info.size = len(data)
                    info.mode = 0o755 if mode == "100755" else 0o644
                tar.addfile(info, None if mode == "120000" else io.BytesIO(data))
        return await self._send(request, buffer.getvalue(), "application/x-gzip", {})


async def serve(github: FakeGitHub) -> tuple[web.AppRunner, str]:
    """Start it on 127.0.0.1 (a free port); the base URL."""
    runner = web.AppRunner(github.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


class ThreadedServer:
    """The server on its own event loop in a thread, for tests that run processes."""

    def __init__(self, github: FakeGitHub) -> None:
        self.github = github
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.url = ""

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self._runner, self.url = self.loop.run_until_complete(serve(self.github))
        self._ready.set()
        self.loop.run_forever()

    def __enter__(self) -> ThreadedServer:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()
