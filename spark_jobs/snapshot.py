"""Export the training snapshot: ``marts.fct_ratings`` of one release, as Parquet.

Input: the warehouse (``marts.fct_ratings``, built by dbt).
Output: ``<dir>/ratings.parquet`` and ``<dir>/snapshot.json`` with its identity.

Why Parquet and not JDBC: the export is one COPY from Postgres, needs no JDBC
driver on the Spark side, and gives the run a file that can be hashed, kept and
re-read. The same file trains on ``local[*]`` or, copied to shared storage, on a
cluster; the warehouse is never hit by Spark executors.

The identity is the row count, the newest ``rated_at`` and a SHA-256 of the
rows in a fixed order, so two exports of the same data have the same digest.

Kept snapshots live under ``$MFY_HOME/snapshots/<digest>/`` (the newest three),
so a training run's MLflow dataset input, and a later gate, can read the very
rows it was trained on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from moviesforyou.foundation import warehouse
from moviesforyou.foundation.config import Settings
from moviesforyou.foundation.errors import MoviesForYouError
from spark_jobs.models import ITEM, RATING, TIME, USER

COLUMNS = ("user_id", "movie_id", "rating", "rated_at")


class SnapshotError(MoviesForYouError):
    """The warehouse has no usable training data, or the snapshot cannot be written."""


@dataclass(frozen=True)
class Snapshot:
    path: Path
    dataset: str
    rows: int
    users: int
    movies: int
    max_rated_at: str
    sha256: str

    @property
    def digest(self) -> str:
        return self.sha256[:16]


class _HashingWriter:
    """A file COPY writes into, hashing the bytes on the way to disk."""

    def __init__(self, raw) -> None:
        self.raw, self.digest, self.size = raw, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.raw.write(data)


def export_snapshot(settings: Settings, out_dir: Path) -> Snapshot:
    """COPY the release's ratings out of the warehouse into Parquet.

    Raises:
        SnapshotError: fct_ratings is missing or has no rating for the release.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    statement = (
        "copy (select user_id, movie_id, rating::float8, "
        "extract(epoch from rated_at)::bigint from marts.fct_ratings where dataset = {} "
        "order by user_id, movie_id, rated_at) to stdout with (format csv)"
    )
    csv_path = out_dir / "ratings.csv"
    conn = warehouse.connect(settings)
    try:
        with conn.cursor() as cur:
            cur.execute("select to_regclass('marts.fct_ratings') is not null")
            if not cur.fetchone()[0]:
                raise SnapshotError("marts.fct_ratings does not exist: run `moviesforyou "
                                    "transform` first")
            literal = cur.mogrify("%s", (settings.dataset,)).decode()
            with open(csv_path, "wb") as raw:
                sink = _HashingWriter(raw)
                cur.copy_expert(statement.format(literal), sink)
            merges = _merges(cur, settings.dataset)
    finally:
        conn.close()
    if sink.size == 0:
        csv_path.unlink()
        raise SnapshotError(f"marts.fct_ratings has no ratings for dataset {settings.dataset!r}")
    table = pacsv.read_csv(
        csv_path,
        read_options=pacsv.ReadOptions(column_names=list(COLUMNS)),
        convert_options=pacsv.ConvertOptions(column_types={
            "user_id": pa.int32(), "movie_id": pa.int32(), "rating": pa.float32(),
            "rated_at": pa.int64()}),
    )
    csv_path.unlink()
    path = out_dir / "ratings.parquet"
    pq.write_table(table, path)
    (out_dir / MERGES).write_text(json.dumps(merges))
    snapshot = Snapshot(
        path=path, dataset=settings.dataset, rows=table.num_rows,
        users=pc.count_distinct(table.column("user_id")).as_py(),
        movies=pc.count_distinct(table.column("movie_id")).as_py(),
        max_rated_at=str(pc.max(table.column("rated_at")).as_py()),
        sha256=sink.digest.hexdigest(),
    )
    (out_dir / "snapshot.json").write_text(json.dumps({**asdict(snapshot), "path": str(path)},
                                                      indent=2))
    return snapshot


#: Beside a snapshot's ratings: the release's duplicate catalogue entries, merged id ->
#: the film's kept id (dbt's int_movie_merges), for folds written with the released ids.
MERGES = "merges.json"


def _merges(cur, dataset: str) -> dict[str, int]:
    cur.execute("select to_regclass('intermediate.int_movie_merges') is not null")
    if not cur.fetchone()[0]:
        return {}
    cur.execute("select movie_id, canonical_movie_id from intermediate.int_movie_merges "
                "where dataset = %s and movie_id <> canonical_movie_id order by 1", (dataset,))
    return {str(merged): kept for merged, kept in cur.fetchall()}


def snapshot_merges(snapshot: Snapshot) -> dict[int, int]:
    """The merged ids of the snapshot's release (empty for a snapshot without the file)."""
    path = Path(snapshot.path).parent / MERGES
    if not path.exists():
        return {}
    return {int(merged): int(kept) for merged, kept in json.loads(path.read_text()).items()}


# --------------------------------------------------------------------------- keeping


def export_and_keep_snapshot(settings: Settings, work: Path | None = None) -> Snapshot:
    """Export ``fct_ratings`` and keep it under ``$MFY_HOME/snapshots/<digest>``.

    Raises:
        SnapshotError: also when the snapshot cannot be written (a full disk, a
            read-only folder), naming the file.
    """
    made = work is None
    try:
        work = work or Path(tempfile.mkdtemp(prefix="mfy-snapshot-", dir=settings.home))
        return keep_snapshot(export_snapshot(settings, work / "snapshot"),
                             settings.home / "snapshots")
    except OSError as exc:
        where = exc.filename2 or exc.filename or settings.home
        raise SnapshotError(f"cannot write the ratings snapshot: {exc.strerror or exc} "
                            f"({where}); free space or fix the permissions under "
                            f"{settings.home} (MFY_HOME)") from exc
    finally:
        if made and work is not None:
            shutil.rmtree(work, ignore_errors=True)


def read_kept_snapshot(path: Path) -> Snapshot:
    """A kept snapshot from its ``snapshot.json`` (or the folder holding it)."""
    path = Path(path)
    meta = json.loads((path / "snapshot.json" if path.is_dir() else path).read_text())
    return Snapshot(**{**meta, "path": Path(meta["path"])})


def keep_snapshot(snapshot: Snapshot, folder: Path, keep: int = 3) -> Snapshot:
    """Move a snapshot to ``folder/<digest>/`` (the run's dataset input points there).

    The same data keeps one copy; only the ``keep`` most recent snapshots stay.
    """
    target = folder / snapshot.digest
    if not target.exists():
        folder.mkdir(parents=True, exist_ok=True)
        shutil.move(str(snapshot.path.parent), target)
    else:
        os.utime(target)
    for old in sorted(folder.iterdir(), key=lambda p: p.stat().st_mtime)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    kept = dataclasses.replace(snapshot, path=target / snapshot.path.name)
    (target / "snapshot.json").write_text(
        json.dumps({**dataclasses.asdict(kept), "path": str(kept.path)}, indent=2))
    return kept


def load_snapshot(snapshot: Snapshot) -> pd.DataFrame:
    """The snapshot's ratings, checked: the columns are there and every rating is usable."""
    ratings = pd.read_parquet(snapshot.path)
    missing = {USER, ITEM, RATING, TIME} - set(ratings.columns)
    if missing:
        raise SnapshotError(f"{snapshot.path}: missing column(s) {sorted(missing)}")
    if ratings.empty:
        raise SnapshotError(f"{snapshot.path}: no ratings")
    bad = ratings[~np.isfinite(ratings[RATING]) | (ratings[RATING] <= 0)]
    if len(bad):
        raise SnapshotError(f"{snapshot.path}: {len(bad)} ratings are not positive finite numbers")
    return ratings
