"""Downloading a release from a real HTTP server on 127.0.0.1.

The server speaks HTTP Range like GroupLens' does, publishes ``<zip>.md5``
beside the zip, and can be told to cut the first response short so that the
client has to resume.
"""

from __future__ import annotations

import hashlib
import socket
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import query
from moviesforyou.foundation.errors import SourceError
from moviesforyou.ingestion import ingest, sources

pytestmark = pytest.mark.integration


class ReleaseServer:
    """Serves files from a dict; records requests; optionally drops the first response."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.requests: list[tuple[str, str | None]] = []
        self.cut_first_after: int | None = None
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                name = self.path.lstrip("/")
                server.requests.append((name, self.headers.get("Range")))
                if name not in server.files:
                    self.send_error(404)
                    return
                body = server.files[name]
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                cut = server.cut_first_after
                if cut is not None and name.endswith(".zip"):
                    server.cut_first_after = None
                    self.wfile.write(body[start:start + cut])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body[start:])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def ml100k_zip(ml100k, tmp_path_factory) -> bytes:
    archive = tmp_path_factory.mktemp("zip") / "ml-100k.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        for name in ("u.data", "u.item", "u.user", "u.genre", "u.occupation", "README"):
            z.write(ml100k / name, f"ml-100k/{name}")
    return archive.read_bytes()


@pytest.fixture
def server(ml100k_zip):
    md5 = hashlib.md5(ml100k_zip).hexdigest()
    srv = ReleaseServer({"ml-100k.zip": ml100k_zip,
                         "ml-100k.zip.md5": f"MD5 (ml-100k.zip) = {md5}\n".encode()})
    yield srv
    srv.close()


def test_resumed_download_then_ingest(conn, server, tmp_path, ml100k_zip):
    server.cut_first_after = 300_000
    seen: list[tuple[int, int | None]] = []
    downloader = sources.Downloader(backoff=0.01, progress=lambda d, t: seen.append((d, t)))

    files = sources.open_source(f"{server.url}/ml-100k.zip", tmp_path, downloader=downloader)
    result = ingest.load_release(conn, files, "ml-100k")

    zips = [r for r in server.requests if r[0] == "ml-100k.zip"]
    assert zips == [("ml-100k.zip", None), ("ml-100k.zip", "bytes=300000-")]
    assert (tmp_path / "ml-100k.zip").read_bytes() == ml100k_zip
    assert seen[-1] == (len(ml100k_zip), len(ml100k_zip))  # progress reached the end
    assert result.row_counts["ratings"] == 100_000
    assert query(conn, "select source, archive_sha256 from ops.source_loads") == [
        (f"{server.url}/ml-100k.zip", hashlib.sha256(ml100k_zip).hexdigest())]


def test_unchanged_zip_is_not_downloaded_again(server, tmp_path):
    url = f"{server.url}/ml-100k.zip"
    sources.fetch_zip(url, tmp_path, downloader=sources.Downloader(backoff=0.01))
    sources.fetch_zip(url, tmp_path, downloader=sources.Downloader(backoff=0.01))

    assert [name for name, _ in server.requests] == [
        "ml-100k.zip.md5", "ml-100k.zip", "ml-100k.zip.md5"]


def test_published_checksum_mismatch(server, tmp_path):
    server.files["ml-100k.zip.md5"] = b"0123456789abcdef0123456789abcdef  ml-100k.zip\n"

    with pytest.raises(SourceError) as caught:
        sources.fetch_zip(f"{server.url}/ml-100k.zip", tmp_path,
                          downloader=sources.Downloader(backoff=0.01))

    assert caught.value.path == f"{server.url}/ml-100k.zip"
    assert "checksum mismatch: expected md5 0123456789abcdef0123456789abcdef" in str(caught.value)
    assert not (tmp_path / "ml-100k.zip").exists()  # never used by a later run
    assert (tmp_path / "ml-100k.zip.rejected").exists()


def test_pinned_sha256_skips_the_md5(server, tmp_path, ml100k_zip):
    pinned = hashlib.sha256(ml100k_zip).hexdigest()

    path = sources.fetch_zip(f"{server.url}/ml-100k.zip", tmp_path, sha256=pinned,
                             downloader=sources.Downloader(backoff=0.01))

    assert path.read_bytes() == ml100k_zip
    assert [name for name, _ in server.requests] == ["ml-100k.zip"]


def test_missing_release_is_a_clear_http_error(server, tmp_path):
    with pytest.raises(SourceError, match=r"ml-2m.zip.md5: HTTP 404"):
        sources.fetch_zip(f"{server.url}/ml-2m.zip", tmp_path,
                          downloader=sources.Downloader(backoff=0.01))


def test_unreachable_url(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/ml-100k.zip"

    with pytest.raises(SourceError) as caught:
        sources.fetch_zip(url, tmp_path, downloader=sources.Downloader(retries=3, backoff=0.01))

    assert caught.value.path == f"{url}.md5"
    assert "unreachable after 3 attempts" in str(caught.value)
    assert "Connection refused" in str(caught.value)
