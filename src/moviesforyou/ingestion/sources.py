"""MovieLens releases: where they come from and how to get their files.

A *source* is one MovieLens release. By default it is downloaded from its
GroupLens URL (the real nightly pull); it can also be a local zip or folder, or
any other URL serving the same zip.

Downloading
    streams to ``<name>.zip.part`` with a progress bar, resumes a partial file
    with an HTTP ``Range`` request, retries with exponential back-off, and then
    checks the SHA-256 given by ``--sha256``/``MFY_SOURCE_SHA256`` or, when none
    is pinned, the MD5 that GroupLens publishes beside every zip
    (``<url>.md5``). A zip whose checksum still matches the published one is
    not downloaded again.
Opening
    a zip is tested member by member (CRC) before anything is read; a folder is
    checked against its ``SHA256SUMS`` file when it has one.
"""

from __future__ import annotations

import hashlib
import logging
import re
import zipfile
from pathlib import Path
from typing import IO

from moviesforyou.foundation.errors import SourceError
from moviesforyou.foundation.releases import (  # noqa: F401 (sources' own names)
    FEATURES,
    GROUPLENS,
    RELEASES,
    REQUIRED_FILES,
    Features,
    Release,
)
from moviesforyou.ingestion.download import Downloader, Progress, fetch_zip, file_digest

log = logging.getLogger(__name__)

CHUNK = 1 << 20


_DATASET_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,40}$")


def release_for(dataset: str, layout: str | None = None) -> Release:
    """The release called ``dataset``; names outside the registry need a layout."""
    if dataset in RELEASES:
        return RELEASES[dataset]
    if not _DATASET_NAME.match(dataset):
        raise SourceError(
            f"invalid dataset name {dataset!r}: use lowercase letters, digits, '-' and '_'"
        )
    if layout is None:
        known = ", ".join(RELEASES)
        raise SourceError(
            f"unknown release {dataset!r} (known: {known}); a local source of another "
            "name needs its layout, which is detected from its files"
        )
    return Release(dataset, layout)


def detect_layout(names: set[str]) -> str | None:
    """Guess the layout from the file names in a zip or folder."""
    for layout, files in REQUIRED_FILES.items():
        if files[0] in names:
            return layout
    return None


# --------------------------------------------------------------------------- local files


class ReleaseFiles:
    """Read access to the files of one release, in a zip or a folder.

    Attributes:
        origin: the zip, folder or URL it came from, for error messages and the ledger.
        archive_sha256: SHA-256 of the zip, when the release is a zip.
    """

    origin: str
    archive_sha256: str | None = None

    def names(self) -> set[str]:
        raise NotImplementedError

    def open(self, name: str) -> IO[bytes]:
        raise NotImplementedError

    def size(self, name: str) -> int:
        raise NotImplementedError

    def display(self, name: str) -> str:
        """How a file is named in messages: ``ml-100k.zip:ml-100k/u.data``."""
        raise NotImplementedError

    def sha256(self, name: str) -> str:
        with self.open(name) as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()

    def close(self) -> None:  # noqa: B027 (optional hook)
        pass

    def require(self, layout: str) -> None:
        missing = [f for f in REQUIRED_FILES[layout] if f not in self.names()]
        if missing:
            raise SourceError(
                f"missing file(s) {', '.join(missing)} (a {layout}-layout release needs "
                f"{', '.join(REQUIRED_FILES[layout])})",
                path=self.origin,
            )


class ZipReleaseFiles(ReleaseFiles):
    """A release zip. Members may sit in a top folder (``ml-100k/u.data``) or at the root."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.origin = str(self.path)
        if not self.path.is_file():
            raise SourceError("no such file", path=self.origin)
        self.archive_sha256 = file_digest(self.path, "sha256")
        try:
            self._zip = zipfile.ZipFile(self.path)
            bad = self._zip.testzip()
        except (zipfile.BadZipFile, EOFError, OSError) as exc:
            raise SourceError(
                f"not a readable zip archive (truncated or corrupt): {exc}", path=self.origin
            ) from exc
        if bad is not None:
            raise SourceError(f"corrupt zip member {bad} (CRC mismatch)", path=self.origin)
        self._members: dict[str, zipfile.ZipInfo] = {}
        for info in self._zip.infolist():
            if not info.is_dir():
                self._members.setdefault(Path(info.filename).name, info)

    def names(self) -> set[str]:
        return set(self._members)

    def open(self, name: str) -> IO[bytes]:
        return self._zip.open(self._members[name])

    def size(self, name: str) -> int:
        return self._members[name].file_size

    def display(self, name: str) -> str:
        return f"{self.path.name}:{self._members[name].filename}"

    def close(self) -> None:
        self._zip.close()


class FolderReleaseFiles(ReleaseFiles):
    """An extracted release folder, checked against its ``SHA256SUMS`` when present."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.origin = str(self.path)
        if not self.path.is_dir():
            raise SourceError("no such folder", path=self.origin)
        self._sums: dict[str, str] = {}
        sums = self.path / "SHA256SUMS"
        if sums.is_file():
            for number, line in enumerate(sums.read_text().splitlines(), start=1):
                if line.strip():
                    parts = line.split()
                    if len(parts) != 2:
                        raise SourceError("expected '<sha256>  <file>'", path=str(sums),
                                          line=number)
                    self._sums[parts[1].lstrip("*")] = parts[0].lower()

    def names(self) -> set[str]:
        return {p.name for p in self.path.iterdir() if p.is_file()}

    def open(self, name: str) -> IO[bytes]:
        return open(self.path / name, "rb")

    def size(self, name: str) -> int:
        return (self.path / name).stat().st_size

    def display(self, name: str) -> str:
        return str(self.path / name)

    def sha256(self, name: str) -> str:
        actual = super().sha256(name)
        expected = self._sums.get(name)
        if expected and expected != actual:
            raise SourceError(
                f"checksum mismatch: SHA256SUMS says {expected}, the file has {actual}",
                path=self.display(name),
            )
        return actual


def open_source(
    source: str | Path,
    downloads: Path,
    *,
    sha256: str | None = None,
    downloader: Downloader | None = None,
) -> ReleaseFiles:
    """Open a URL, zip or folder as the files of one release."""
    text = str(source)
    if re.match(r"^https?://", text):
        files: ReleaseFiles = ZipReleaseFiles(
            fetch_zip(text, downloads, sha256=sha256, downloader=downloader)
        )
        files.origin = text
        return files
    path = Path(text).expanduser()
    if path.is_dir():
        if sha256:
            raise SourceError("a pinned SHA-256 applies to a zip, not a folder", path=text)
        return FolderReleaseFiles(path)
    if sha256 and path.is_file() and file_digest(path, "sha256") != sha256.lower():
        raise SourceError(f"checksum mismatch: expected sha256 {sha256.lower()}", path=text)
    return ZipReleaseFiles(path)


def open_release(settings, dataset: str, source: str | None = None, sha256: str | None = None,
                 *, on_bytes: Progress | None = None) -> ReleaseFiles:
    """Open ``dataset`` from ``source`` (URL, zip or folder), by default GroupLens' URL.

    A download is conditional: a cached zip whose checksum still matches is reused.
    The caller closes the returned files.
    """
    release_url = release_for(dataset).url if source is None else None
    downloader = Downloader(retries=settings.download_retries, progress=on_bytes)
    try:
        return open_source(source or release_url, settings.downloads_dir, sha256=sha256,
                           downloader=downloader)
    except SourceError as exc:
        if source is None and "unreachable" in exc.message:
            exc.message += ("; without internet access, point MFY_SOURCE (or --source) at "
                            "a local copy of the release, a zip or a folder")
        raise
