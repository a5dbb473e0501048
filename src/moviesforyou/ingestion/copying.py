"""COPYing a release's parsed rows into its staging schema, with progress.

The parsers (:mod:`moviesforyou.ingestion.formats`) yield rows; these streams
feed them to ``COPY … FROM STDIN`` without holding a file in memory.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from collections.abc import Callable, Iterable
from typing import IO

import psycopg2
from psycopg2 import sql

from moviesforyou.foundation.errors import SourceError
from moviesforyou.ingestion.formats import LAYOUTS, RAW_TABLES
from moviesforyou.ingestion.parsing import Context, Row

log = logging.getLogger(__name__)


def dataset_suffix(dataset: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", dataset.lower())


def partition_name(table: str, dataset: str) -> str:
    return f"{table}__{dataset_suffix(dataset)}"


class _CopyStream(io.RawIOBase):
    """A file-like object COPY reads from, fed by an iterator of rows as CSV."""

    def __init__(self, rows: Iterable[Row], batch: int = 20_000) -> None:
        self._rows = iter(rows)
        self._batch = batch
        self._buffer = b""
        self._offset = 0
        self.count = 0
        self.error: Exception | None = None  # what the parser raised; psycopg2 hides it

    def readable(self) -> bool:
        return True

    def _fill(self) -> bool:
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        n = 0
        for row in self._rows:
            writer.writerow(["\\N" if v is None else v for v in row])
            n += 1
            if n >= self._batch:
                break
        self.count += n
        self._buffer = self._buffer[self._offset:] + text.getvalue().encode("utf-8")
        self._offset = 0
        return n > 0

    def read(self, size: int = -1) -> bytes:
        try:
            if self._offset >= len(self._buffer) and not self._fill():
                return b""
        except Exception as exc:
            self.error = exc
            raise
        end = len(self._buffer) if size < 0 else self._offset + size
        chunk = self._buffer[self._offset:end]
        self._offset += len(chunk)
        return chunk


class _Counting(io.RawIOBase):
    """Wraps a binary stream and reports bytes read."""

    def __init__(self, inner: IO[bytes], report: Callable[[int], None]) -> None:
        self._inner = inner
        self._report = report
        self.done = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._inner.read(len(buffer))
        buffer[: len(data)] = data
        self.done += len(data)
        self._report(self.done)
        return len(data)


def copy_to_staging(cur, files, dataset, layout, schema, load_id, loaded_at,
                     progress) -> dict[str, int]:
    """Every raw table, in ``schema``: the release's files copied in, the rest empty (so
    the audit sees the same tables whatever the layout)."""
    cur.execute(sql.SQL("create schema {}").format(sql.Identifier(schema)))
    for table in RAW_TABLES:
        create_staging_table(cur, table, schema, dataset, load_id, loaded_at)
    ctx = Context()
    counts: dict[str, int] = {}
    for spec in LAYOUTS[layout]:
        columns = [name for name, _ in RAW_TABLES[spec.table]]
        copy = sql.SQL("copy {}.{} ({}) from stdin with (format csv, null '\\N')").format(
            sql.Identifier(schema), sql.Identifier(spec.table),
            sql.SQL(", ").join(map(sql.Identifier, columns)))
        if spec.file and spec.optional and spec.file not in files.names():
            counts[spec.table] = 0  # the release has no such file: the feature is off
            log.info("%s has no %s: %s stays empty", files.origin, spec.file, spec.table)
            continue
        if spec.file:
            display, size = files.display(spec.file), files.size(spec.file)
            with files.open(spec.file) as raw_handle:
                def report(done: int, t=spec.table, d=display, s=size) -> None:
                    if progress:
                        progress(t, d, done, s)

                handle = io.BufferedReader(_Counting(raw_handle, report), 1 << 20)
                stream = _copy(cur, copy, spec.parse(handle, display, ctx))
        else:
            stream = _copy(cur, copy, spec.parse(io.BytesIO(), "(built in)", ctx))
        counts[spec.table] = stream.count
        log.debug("copied %d rows into %s.%s", stream.count, schema, spec.table)
    if counts.get("ratings", 0) == 0:
        raise SourceError("the release has no ratings", path=files.origin)
    return counts


def _copy(cur, statement: sql.Composable, rows: Iterable[Row]) -> _CopyStream:
    stream = _CopyStream(rows)
    try:
        cur.copy_expert(statement, stream, size=1 << 20)
    except psycopg2.Error:
        if stream.error is not None:  # the parser's error, with file and line, not COPY's
            raise stream.error from None
        raise
    return stream


def create_staging_table(cur, table, schema, dataset, load_id, loaded_at) -> None:
    """``schema.table`` shaped like ``raw.table``, ready to attach as its partition."""
    ident = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table))
    cur.execute(sql.SQL("create table {} (like raw.{} including defaults)")
                .format(ident, sql.Identifier(table)))
    cur.execute(sql.SQL(
        "alter table {} alter column dataset set default {}, "
        "alter column load_id set default {}, alter column loaded_at set default {}, "
        "add constraint {} check (dataset = {})"
    ).format(ident, sql.Literal(dataset), sql.Literal(load_id), sql.Literal(loaded_at),
             sql.Identifier(f"{partition_name(table, dataset)}_load{load_id}_dataset_check"),
             sql.Literal(dataset)))
