"""Downloading a release zip: resume, retries with back-off, and a checksum check.

:func:`fetch_zip` makes sure a verified copy of a zip is on disk: against a
pinned SHA-256, or else the MD5 that GroupLens publishes beside every zip, and
without downloading again when the cached copy still matches.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from moviesforyou.foundation.errors import SourceError

log = logging.getLogger(__name__)

CHUNK = 1 << 20


def file_digest(path: Path, algorithm: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, algorithm).hexdigest()


Progress = Callable[[int, int | None], None]
"""Called with (bytes so far, total bytes or None)."""


@dataclass
class Downloader:
    """HTTP(S) download with resume, retries and a checksum.

    Why not a library's retry: ``urllib3.Retry`` (and ``requests`` on top of it)
    retries a request from the start, but a half-downloaded 1 GB zip should go on
    from where it stopped, which takes a ``Range`` header computed from the
    ``.part`` file before each attempt; that loop is what this class is, on the
    standard library alone.

    Args:
        retries: attempts before giving up.
        backoff: seconds before the second attempt; doubles each time.
        timeout: socket timeout in seconds.
        progress: called as bytes arrive.
    """

    retries: int = 5
    backoff: float = 1.0
    timeout: float = 60.0
    progress: Progress | None = None

    def fetch_text(self, url: str) -> str:
        last: Exception | None = None
        for attempt in range(1, self.retries + 1):
            try:
                with urllib.request.urlopen(url, timeout=self.timeout) as response:
                    return response.read().decode("utf-8", "replace")
            except urllib.error.HTTPError as exc:
                if exc.code < 500:
                    raise SourceError(f"HTTP {exc.code} {exc.reason}", path=url) from exc
                last = exc
            except (urllib.error.URLError, OSError) as exc:
                last = exc
            self._sleep(attempt)
        raise SourceError(f"unreachable after {self.retries} attempts: {_reason(last)}",
                          path=url)

    def download(self, url: str, target: Path) -> Path:
        """Download ``url`` to ``target``, resuming ``target.part`` if it exists."""
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(target.name + ".part")
        last: Exception | None = None
        for attempt in range(1, self.retries + 1):
            try:
                self._attempt(url, part)
                part.replace(target)
                return target
            except urllib.error.HTTPError as exc:
                if exc.code == 416 and part.exists():  # nothing left to send: .part is whole
                    part.replace(target)
                    return target
                if exc.code < 500:
                    raise SourceError(f"HTTP {exc.code} {exc.reason}", path=url) from exc
                last = exc
            except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
                last = exc
            log.warning("download of %s failed (attempt %d/%d): %s", url, attempt,
                        self.retries, _reason(last))
            self._sleep(attempt)
        raise SourceError(f"unreachable after {self.retries} attempts: {_reason(last)}",
                          path=url)

    def _attempt(self, url: str, part: Path) -> None:
        have = part.stat().st_size if part.exists() else 0
        request = urllib.request.Request(url, headers={"User-Agent": "moviesforyou"})
        if have:
            request.add_header("Range", f"bytes={have}-")
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            if have and response.status != 206:  # server ignored the range: start over
                have = 0
            length = response.headers.get("Content-Length")
            total = have + int(length) if length else None
            with open(part, "ab" if have else "wb") as out:
                done = have
                if self.progress:
                    self.progress(done, total)
                while block := response.read(CHUNK):
                    out.write(block)
                    done += len(block)
                    if self.progress:
                        self.progress(done, total)
            if total is not None and done < total:
                raise http.client.IncompleteRead(b"", total - done)

    def _sleep(self, attempt: int) -> None:
        if attempt < self.retries:
            time.sleep(self.backoff * 2 ** (attempt - 1))


def _reason(exc: Exception | None) -> str:
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return f"{type(exc).__name__}: {exc}" if exc else "unknown error"


def _parse_md5(text: str, url: str) -> str:
    match = re.search(r"\b([0-9a-fA-F]{32})\b", text)
    if not match:
        raise SourceError("no MD5 checksum found in the published checksum file", path=url)
    return match.group(1).lower()


def fetch_zip(
    url: str,
    downloads: Path,
    *,
    sha256: str | None = None,
    downloader: Downloader | None = None,
) -> Path:
    """Make sure a verified copy of the zip at ``url`` is in ``downloads``.

    The checksum is the pinned ``sha256`` when given, else GroupLens' published
    MD5 at ``url + '.md5'``. A cached zip that already matches is reused without
    downloading.

    Returns:
        The path of the verified zip.
    """
    downloader = downloader or Downloader()
    name = url.rstrip("/").rsplit("/", 1)[-1] or "release.zip"
    target = downloads / name
    if sha256:
        algorithm, expected = "sha256", sha256.lower()
    else:
        algorithm, expected = "md5", _parse_md5(downloader.fetch_text(url + ".md5"), url + ".md5")
    if target.exists() and file_digest(target, algorithm) == expected:
        log.info("%s is unchanged (%s %s): not downloading", name, algorithm, expected)
        return target
    downloader.download(url, target)
    actual = file_digest(target, algorithm)
    if actual != expected:
        bad = target.with_name(target.name + ".rejected")
        target.replace(bad)
        raise SourceError(
            f"checksum mismatch: expected {algorithm} {expected}, downloaded file has {actual} "
            f"(kept as {bad.name})",
            path=url,
        )
    return target
