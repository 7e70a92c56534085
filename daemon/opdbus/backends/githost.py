"""The Git host's REST API (GitHub's shapes; GitHub Enterprise or a test server by URL).

What smart sync needs: a ref resolved to a commit SHA, the commit's tree
(recursive, or walked subtree by subtree when the API says ``truncated``), one
file's bytes, and the commit's tarball. Every request:

- carries the token when there is one;
- is conditional (If-None-Match) where an answer can be reused: an unchanged
  ref or tree costs a 304, which GitHub does not count against the rate limit;
- is retried with backoff on network errors and 5xx, then fails cleanly;
- turns a rate-limit refusal (403/429) into an error naming when it resets.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from opdbus.errors import BackendFailed, BackendUnavailable, NotAuthorized, NotFound

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger(__name__)

BACKOFF_FIRST = 0.2


@dataclass(frozen=True)
class TreeEntry:
    path: str
    mode: str  # 100644, 100755 (executable), 120000 (symlink), 040000 (tree), 160000
    type: str  # blob, tree, commit (a submodule)
    sha: str
    size: int


class RateLimited(BackendUnavailable):
    pass


class GitHost:
    def __init__(
        self,
        api_url: str,
        raw_url: str,
        *,
        token: str | None,
        timeout: float,
        retries: int,
        etags: dict[str, tuple[str, Any]] | None = None,
        on_retry: Callable[[str], None] | None = None,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.raw_url = raw_url
        self._token = token
        self._timeout_seconds = timeout
        self._retries = retries
        # Where a retry is told (the job's log): whoever waits sees why it is slow.
        self._on_retry = on_retry
        # url -> (etag, decoded body): what a 304 means.
        self.etags: dict[str, tuple[str, Any]] = etags if etags is not None else {}
        self.used: set[str] = set()  # the URLs this run asked for (worth keeping)
        self.requests = 0  # every request sent, 304s included
        self.not_modified = 0
        self.bytes = 0  # body bytes received
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> GitHost:
        headers = {"User-Agent": "op-dbus", "X-GitHub-Api-Version": "2022-11-28"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        # Here, and in a thread (an import reads files): a daemon that never
        # syncs never loads aiohttp (10 MiB).
        aiohttp = await asyncio.to_thread(importlib.import_module, "aiohttp")
        timeout = aiohttp.ClientTimeout(total=self._timeout_seconds)
        self._session = aiohttp.ClientSession(headers=headers, timeout=timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    # -- the API -----------------------------------------------------------------

    async def resolve(self, repo: str, ref: str) -> str:
        """A branch, tag or SHA -> the commit SHA."""
        url = f"{self.api_url}/repos/{repo}/commits/{quote(ref, safe='')}"
        body = await self._json(url, f"resolving {ref} in {repo}")
        sha = body.get("sha") if isinstance(body, dict) else None
        if not isinstance(sha, str) or len(sha) != 40:
            raise BackendFailed(f"resolving {ref} in {repo}: the reply has no commit SHA")
        return sha

    async def tree(self, repo: str, sha: str) -> list[TreeEntry]:
        """Every entry of the commit's tree; walks subtrees when the API truncates."""
        url = f"{self.api_url}/repos/{repo}/git/trees/{sha}?recursive=1"
        body = await self._json(url, f"reading the tree of {sha[:12]}")
        if not body.get("truncated"):
            return [_entry(item, "") for item in body.get("tree", [])]
        log.info("tree of %s is truncated: walking it subtree by subtree", sha[:12])
        return await self._walk(repo, sha, "")

    async def _walk(self, repo: str, tree_sha: str, prefix: str) -> list[TreeEntry]:
        url = f"{self.api_url}/repos/{repo}/git/trees/{tree_sha}"
        body = await self._json(url, f"reading tree {prefix or '/'}")
        if body.get("truncated"):
            raise BackendFailed(f"tree {prefix or '/'} is too large even without recursion")
        entries: list[TreeEntry] = []
        for item in body.get("tree", []):
            entry = _entry(item, prefix)
            entries.append(entry)
            if entry.type == "tree":
                entries += await self._walk(repo, entry.sha, entry.path + "/")
        return entries

    async def raw(self, repo: str, sha: str, path: str) -> bytes:
        url = self.raw_url.format(repo=repo, sha=sha, path=quote(path))
        status, _, body = await self._get(url, f"downloading {path}", accept="*/*")
        if status != 200:
            raise BackendFailed(f"downloading {path}: HTTP {status}")
        return body

    async def tarball(self, repo: str, sha: str) -> bytes:
        url = f"{self.api_url}/repos/{repo}/tarball/{sha}"
        status, _, body = await self._get(
            url, f"downloading the tarball of {sha[:12]}", accept="*/*"
        )
        if status != 200:
            raise BackendFailed(f"downloading the tarball of {sha[:12]}: HTTP {status}")
        return body

    # -- requests ------------------------------------------------------------------

    async def _json(self, url: str, what: str) -> Any:
        self.used.add(url)
        cached = self.etags.get(url)
        status, etag, body = await self._get(
            url, what, accept="application/vnd.github+json", etag=cached[0] if cached else None
        )
        if status == 304 and cached is not None:
            self.not_modified += 1
            return cached[1]
        if status != 200:
            raise BackendFailed(f"{what}: HTTP {status}")
        try:
            value = json.loads(body)
        except ValueError:
            raise BackendFailed(f"{what}: the reply is not JSON") from None
        if etag:
            self.etags[url] = (etag, value)
        return value

    async def _get(
        self, url: str, what: str, *, accept: str, etag: str | None = None
    ) -> tuple[int, str, bytes]:
        assert self._session is not None, "use GitHost as an async context manager"
        headers = {"Accept": accept}
        if etag:
            headers["If-None-Match"] = etag
        delay = BACKOFF_FIRST
        for attempt in range(self._retries + 1):
            self.requests += 1
            try:
                async with self._session.get(url, headers=headers) as reply:
                    body = await reply.read()
                    self.bytes += len(body)
                    if reply.status in (403, 429):
                        _raise_refusal(reply, body, what)
                    if reply.status == 401:
                        raise NotAuthorized(f"{what}: the Git host refused the token (HTTP 401)")
                    if reply.status == 404:
                        raise NotFound(f"{what}: not found on the Git host (HTTP 404)")
                    if reply.status < 500:
                        return reply.status, reply.headers.get("ETag", ""), body
                    problem = f"HTTP {reply.status}"
            except (_client_error(), TimeoutError) as e:
                problem = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            if attempt < self._retries:
                note = f"{what}: {problem}; retry {attempt + 1} of {self._retries} in {delay:.1f} s"
                log.info("%s", note)
                if self._on_retry is not None:
                    self._on_retry(note)
                await asyncio.sleep(delay)
                delay *= 2
        raise BackendUnavailable(f"{what}: {problem} (after {self._retries + 1} attempts)")


def _client_error() -> type[Exception]:
    import aiohttp  # loaded by __aenter__ already: no file is read here

    error: type[Exception] = aiohttp.ClientError
    return error


def _raise_refusal(reply: aiohttp.ClientResponse, body: bytes, what: str) -> None:
    remaining = reply.headers.get("X-RateLimit-Remaining")
    if reply.status == 429 or remaining == "0":
        reset = reply.headers.get("X-RateLimit-Reset", "")
        retry_after = reply.headers.get("Retry-After", "")
        if reset.isdigit():
            at = time.strftime("%H:%M:%S UTC", time.gmtime(int(reset)))
            wait = max(int(reset) - int(time.time()), 0)
            when = f"it resets at {at} (in {wait // 60} min {wait % 60} s)"
        elif retry_after.isdigit():
            when = f"retry after {retry_after} s"
        else:
            when = "the host did not say when it resets"
        raise RateLimited(
            f"{what}: the Git host's rate limit is used up; {when}. A token "
            "($GITHUB_TOKEN or sync.token_file) raises the limit"
        )
    raise NotAuthorized(
        f"{what}: refused by the Git host (HTTP 403): {body[:200].decode(errors='replace')}"
    )


def _entry(item: dict[str, Any], prefix: str) -> TreeEntry:
    try:
        return TreeEntry(
            path=prefix + str(item["path"]),
            mode=str(item["mode"]),
            type=str(item["type"]),
            sha=str(item["sha"]),
            size=int(item.get("size") or 0),
        )
    except (KeyError, TypeError, ValueError):
        raise BackendFailed(f"a tree entry is malformed: {str(item)[:200]}") from None


def read_token(token_file: Path | None, environ: dict[str, str]) -> str | None:
    """$GITHUB_TOKEN, else the token file (which must not be readable by others). Blocking."""
    if environ.get("GITHUB_TOKEN"):
        return environ["GITHUB_TOKEN"].strip()
    if token_file is None or not token_file.exists():
        return None
    if token_file.stat().st_mode & 0o077:
        raise BackendFailed(f"{token_file} is readable by others: chmod 600 it")
    return token_file.read_text().strip() or None
