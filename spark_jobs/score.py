"""Score the champion: top-N lists per user and similar movies per movie, in Spark.

Inputs
    ``factors``: the champion's folder from ``registry.export_champion`` (both
    ALS models' factors and the bias baseline); ``ratings``: the snapshot
    Parquet of ``marts.fct_ratings`` (what every user has already seen).
Outputs (Parquet folders under ``out``)
    ``user_recommendations/``: ``user_id, rank, movie_id, score,
    predicted_rating, source``. Every user of the snapshot gets ``n`` rows
    (fewer only if they have seen nearly the whole catalogue). Users the model
    has factors for are ranked by the implicit model (``source='als'``); users
    it does not know (they arrived after the champion was trained) get the most
    popular movies they have not seen (``source='popular'``).
    ``similar_movies/``: ``movie_id, rank, similar_movie_id, similarity``: the
    ``similar_n`` nearest movies among those with at least ``min_ratings``
    ratings, by :func:`similarity_model` (by default the mean cosine of both
    models' item factors, popularity's common direction removed, plus a content
    term, genre overlap and, where the release has tags, tag similarity, that
    counts most for movies with few ratings).

How: Spark distributes users (and movies) over tasks with ``mapInPandas``; each
task scores a batch against the broadcast item matrix in NumPy and keeps the
top N with ``argpartition``. Nothing is a cross join, so the work is
``users x movies x rank`` flops with no shuffle of candidate pairs, and memory
per task is one batch's score matrix.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from moviesforyou.foundation.config import similarity_parts
from spark_jobs.models import ITEM, USER, Factors, load_factors, positions

log = logging.getLogger(__name__)

RECS_SCHEMA = ("user_id int, rank int, movie_id int, score double, predicted_rating double, "
               "source string")
SIMILAR_SCHEMA = "movie_id int, rank int, similar_movie_id int, similarity double"


@dataclass(frozen=True)
class ScoreConfig:
    n: int = 50  #: list length per user (``MFY_RECS_N``)
    similar_n: int = 20  #: neighbours per movie (``MFY_SIMILAR_N``)
    min_ratings: int = 10  #: a neighbour needs this many ratings (``MFY_SIMILAR_MIN_RATINGS``)
    batch: int = 512  #: users scored per NumPy matrix product
    similarity: str = "mixed+genres+tags"  #: see :func:`similarity_model` (``MFY_SIMILARITY``)
    genre_weight: float = 0.1  #: weight of the genre overlap in ``+genres`` similarities
    tag_weight: float = 0.1  #: weight of the tag similarity in ``+tags`` similarities
    genre_shrink: float = 20.0  #: ratings at which a movie's extra content weight halves


@dataclass(frozen=True)
class ScoreResult:
    user_recommendations: Path
    similar_movies: Path | None  #: None: not scored (the movie factors did not change)
    users: int
    seconds: float


def _top(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Column indices and values of each row's ``k`` best finite scores, best first.

    ``scores`` is overwritten (negated in place rather than copied: at 25M one
    batch's matrix is 512 x 59,047 doubles)."""
    k = min(k, scores.shape[1])
    np.negative(scores, out=scores)
    best = np.argpartition(scores, k - 1, axis=1)[:, :k]
    values = np.take_along_axis(scores, best, axis=1)
    order = np.argsort(values, axis=1, kind="stable")
    return np.take_along_axis(best, order, axis=1), -np.take_along_axis(values, order, axis=1)


def _mask_seen(scores: np.ndarray, seen, catalogue: pd.Index) -> None:
    """Set each row's already-seen movies to -inf, in one write for the whole batch."""
    seen = [np.asarray(s) for s in seen]
    lengths = np.fromiter((len(s) for s in seen), dtype=np.int64, count=len(seen))
    if not lengths.any():
        return
    cols = positions(catalogue, np.concatenate(seen))
    rows = np.repeat(np.arange(len(seen)), lengths)
    scores[rows[cols >= 0], cols[cols >= 0]] = -np.inf


def user_scorer(implicit: Factors, explicit: Factors, popularity: pd.Series, cfg: ScoreConfig):
    """The ``mapInPandas`` function: frames of (user_id, seen) -> ranked rows."""
    catalogue = np.asarray(popularity.index)  # every movie of the snapshot
    cols = positions(implicit.item_index, catalogue)
    items = np.zeros((len(catalogue), implicit.item_factors.shape[1]))
    items[cols >= 0] = implicit.item_factors[cols[cols >= 0]]
    unknown_item = cols < 0
    pop = popularity.to_numpy(dtype=np.float64)
    user_rows = implicit.user_index

    def score(frames):
        for frame in frames:
            for start in range(0, len(frame), cfg.batch):
                chunk = frame.iloc[start:start + cfg.batch]
                users = chunk[USER].to_numpy()
                rows = positions(user_rows, users)
                known = rows >= 0
                if known.all():  # the usual batch: the product is the score matrix
                    scores = implicit.user_factors[rows] @ items.T
                else:
                    scores = np.empty((len(users), len(catalogue)))
                    scores[~known] = pop
                    scores[known] = implicit.user_factors[rows[known]] @ items.T
                scores[np.ix_(known, unknown_item)] = -np.inf
                _mask_seen(scores, chunk["seen"], popularity.index)
                best, values = _top(scores, cfg.n)
                finite = np.isfinite(values)
                user_col = np.repeat(users, best.shape[1])[finite.ravel()]
                movie_col = catalogue[best][finite]
                rank = (np.cumsum(finite, axis=1))[finite]
                out = pd.DataFrame({
                    USER: user_col.astype("int32"), "rank": rank.astype("int32"),
                    ITEM: movie_col.astype("int32"), "score": values[finite],
                    "predicted_rating": explicit.predict(user_col, movie_col),
                    "source": np.where(np.repeat(known, best.shape[1])[finite.ravel()],
                                       "als", "popular"),
                })
                yield out

    return score


def _genre_matrix(item_ids: np.ndarray, genres: pd.Series | None) -> np.ndarray | None:
    """Items x genres, 1 where the movie has the genre (``genres``: movie_id -> list)."""
    if genres is None or genres.empty:
        return None
    lists = genres.reindex(item_ids)
    names = sorted({g for values in lists.dropna() for g in values})
    column = {g: c for c, g in enumerate(names)}
    matrix = np.zeros((len(item_ids), len(names)), dtype=np.float32)
    for row, values in enumerate(lists):
        if isinstance(values, (list, tuple, np.ndarray)):
            matrix[row, [column[g] for g in values]] = 1.0
    return matrix


def _tag_matrix(item_ids: np.ndarray, tags: pd.Series | None):
    """Items x tags, sparse (CSR, float32): each movie's TF-IDF tag vector, unit length
    (``tags``: movie_id -> {tag: how many users gave it}). Term weight
    ``log(1 + users)``, inverse document frequency ``log(tagged movies / movies with
    the tag)``, so a tag on every film counts for nothing. None without tags."""
    from scipy import sparse

    if tags is None or tags.empty:
        return None
    lists = tags.reindex(item_ids)
    names = sorted({t for values in lists.dropna() for t in values})
    if not names:
        return None
    column = {t: c for c, t in enumerate(names)}
    rows, cols, values = [], [], []
    for row, given in enumerate(lists):
        if isinstance(given, dict):
            for tag, users in given.items():
                rows.append(row)
                cols.append(column[tag])
                values.append(np.log1p(users))
    matrix = sparse.csr_matrix((np.asarray(values, dtype=np.float32), (rows, cols)),
                               shape=(len(item_ids), len(names)))
    tagged = np.diff(matrix.indptr) > 0
    frequency = np.bincount(matrix.indices, minlength=len(names))
    matrix = matrix @ sparse.diags(np.log(tagged.sum() / frequency).astype(np.float32))
    norms = np.sqrt(matrix.multiply(matrix).sum(axis=1)).A1
    scale = np.divide(1, norms, out=np.zeros_like(norms), where=norms > 0)
    return sparse.csr_matrix(sparse.diags(scale.astype(np.float32)) @ matrix)


def _unit_rows(factors: Factors, item_ids: np.ndarray, centre: np.ndarray | None = None):
    """``factors``' item vectors for ``item_ids`` (zeros where it has none), scaled to
    unit length; with ``centre`` (a mask), minus the masked rows' mean direction first."""
    rows = positions(factors.item_index, item_ids)
    vectors = np.zeros((len(item_ids), factors.item_factors.shape[1]))
    vectors[rows >= 0] = factors.item_factors[rows[rows >= 0]]
    for step in range(2 if centre is not None else 1):
        lengths = np.linalg.norm(vectors, axis=1)
        vectors = vectors / np.where(lengths > 0, lengths, 1.0)[:, None]
        if step == 0 and centre is not None and centre.any():
            vectors = np.where(lengths[:, None] > 0, vectors - vectors[centre].mean(axis=0), 0)
    return vectors


def neighbour_floor(counts: pd.Series, configured: int, rank: int = 100) -> int:
    """The ratings a neighbour needs: ``configured``, or fewer on a small release (the
    count of its ``rank``-th most rated movie; 1 when fewer are rated), as the top-movies
    mart does. A big release keeps the configured floor exactly."""
    ranked = np.sort(counts.to_numpy())[::-1]
    at_rank = int(ranked[rank - 1]) if len(ranked) >= rank else 1
    return max(1, min(configured, at_rank))


def similarity_model(implicit: Factors, counts: pd.Series, genres: pd.Series | None = None,
                     *, explicit: Factors | None = None, tags: pd.Series | None = None,
                     method: str | None = None, cfg: ScoreConfig | None = None):
    """A function from movie ids to their ``similar_n`` nearest eligible movies (ids and
    similarities, best first, -inf where fewer are eligible).

    Methods (``benchmarks/similarity.py`` measures them on ml-100k):
      ``cosine``: cosine of the implicit model's item factors. Popular films share a
      common direction in those factors, so they crowd every list.
      ``centred``: the same after removing that direction (the eligible movies' mean
      unit vector is subtracted before the cosine).
      ``explicit``: cosine of the explicit model's factors, which are fitted on what
      the user and movie biases leave, so popularity is already taken out.
      ``mixed``: the mean of the ``centred`` and ``explicit`` similarities.
    Content terms, added with ``+`` (``mixed+genres+tags``), need their data:
      ``+genres``: the genre overlap (Jaccard; ``genres``: movie_id -> list), with
      weight ``genre_weight``;
      ``+tags``: the cosine of the two movies' TF-IDF tag vectors (``tags``:
      movie_id -> {tag: users}; 0 where either has none), with weight ``tag_weight``.
    Each weight is scaled by ``1 + genre_shrink / (genre_shrink + n)``, so content
    counts more for movies with few ratings, whose factors say little yet, and the
    sum is divided by ``1 +`` the weights, so that similarities stay within [-1, 1]
    (one divisor per movie: its order is unchanged). A term without data (a release
    without tags) is left out.

    Memory: the unit vectors of all movies (movies x both ranks, float64), the genre
    matrix (movies x genres) and the sparse tag matrix (one float per tag given) and,
    per call, a few ``len(movies) x eligible movies`` matrices; keep calls to a few
    hundred movies. Only eligible movies are scored as neighbours (at ml-25m sizes
    about a third of the catalogue has ``min_ratings``).
    """
    cfg = cfg or ScoreConfig()
    base, content = similarity_parts(method or cfg.similarity)
    if base in ("explicit", "mixed") and explicit is None:
        raise ValueError(f"similarity {method!r} needs the explicit model's factors")
    ids = implicit.item_ids
    n = counts.reindex(ids, fill_value=0).to_numpy()
    has = np.linalg.norm(implicit.item_factors, axis=1) > 0
    eligible = (n >= neighbour_floor(counts, cfg.min_ratings)) & has
    parts = []
    if base in ("cosine", "centred", "mixed"):
        parts.append(_unit_rows(implicit, ids, eligible if base != "cosine" else None))
    if base in ("explicit", "mixed"):
        parts.append(_unit_rows(explicit, ids))
    # a mean of cosines is one cosine of the stacked vectors, each part scaled
    unit = np.hstack(parts) / np.sqrt(len(parts))
    matrix = _genre_matrix(ids, genres) if "genres" in content else None
    tagged = _tag_matrix(ids, tags) if "tags" in content else None
    if matrix is not None:
        sizes = matrix.sum(axis=1)
    more = 1 + cfg.genre_shrink / (cfg.genre_shrink + n)  # for movies with few ratings
    absent = np.zeros_like(more)  # a term without its data weighs nothing
    weights = (cfg.genre_weight * more if matrix is not None else absent,
               cfg.tag_weight * more if tagged is not None else absent)

    # only eligible movies can be neighbours: score those columns, not all
    columns = np.flatnonzero(eligible)
    unit_columns = unit[columns]
    if matrix is not None:
        matrix_columns, sizes_columns = matrix[columns], sizes[columns]
    tagged_columns = tagged[columns] if tagged is not None else None

    def nearest(movies: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = positions(implicit.item_index, movies)
        sims = unit[rows] @ unit_columns.T
        if matrix is not None:  # in place: at 59k movies each matrix is 120-240 MB
            shared = matrix[rows] @ matrix_columns.T
            union = sizes[rows][:, None] + sizes_columns[None, :] - shared
            np.divide(shared, union, out=shared, where=union > 0)
            del union
            shared *= weights[0][rows][:, None].astype(np.float32)
            sims += shared
            del shared
        if tagged is not None:
            cosine = (tagged[rows] @ tagged_columns.T).toarray()
            cosine *= weights[1][rows][:, None].astype(np.float32)
            sims += cosine
            del cosine
        sims /= 1 + weights[0][rows][:, None] + weights[1][rows][:, None]
        sims[rows[:, None] == columns[None, :]] = -np.inf  # not itself
        if not len(columns):
            return np.zeros((len(rows), 0), dtype=ids.dtype), np.zeros((len(rows), 0))
        best, values = _top(sims, cfg.similar_n)
        return ids[columns[best]], values

    return nearest


def similar_scorer(implicit: Factors, counts: pd.Series, cfg: ScoreConfig, *,
                   explicit: Factors | None = None, genres: pd.Series | None = None,
                   tags: pd.Series | None = None):
    """The ``mapInPandas`` function: frames of movie_id -> its nearest movies."""
    nearest = similarity_model(implicit, counts, genres, explicit=explicit, tags=tags, cfg=cfg)

    def score(frames):
        for frame in frames:
            for start in range(0, len(frame), cfg.batch):
                movies = frame[ITEM].to_numpy()[start:start + cfg.batch]
                best, values = nearest(movies)
                finite = np.isfinite(values)
                yield pd.DataFrame({
                    ITEM: np.repeat(movies, best.shape[1])[finite.ravel()].astype("int32"),
                    "rank": np.cumsum(finite, axis=1)[finite].astype("int32"),
                    "similar_movie_id": best[finite].astype("int32"),
                    "similarity": values[finite],
                })

    return score


def score(spark, factors: Path, ratings: Path, out: Path,
          cfg: ScoreConfig | None = None, *, rated_after: int | None = None,
          genres: pd.Series | None = None, tags: pd.Series | None = None,
          similar: bool = True) -> ScoreResult:
    """Write both scored tables as Parquet under ``out``.

    Args:
        rated_after: score only the users with a rating after this time (epoch
            seconds), and no similar movies: a refresh (``spark_jobs.refresh``)
            changed only those users' factors, so every other list, and every
            movie's neighbours, stay what the live publish has.
        genres: each movie's genres (movie_id -> list), for similarities with
            ``+genres``; without them those use the factors alone.
        tags: each movie's tags (movie_id -> {tag: users}), for ``+tags``.
        similar: score the similar movies too (not for an experiment's challenger,
            whose arm has the champion's neighbours).
    """
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    cfg = cfg or ScoreConfig()
    started = time.time()
    explicit, implicit = load_factors(factors)
    seen = spark.read.parquet(str(ratings)).select(USER, ITEM, "rated_at")
    counts = seen.groupBy(ITEM).count().toPandas().set_index(ITEM)["count"].sort_index()
    if rated_after is not None:  # their whole histories, and nobody else's
        touched = seen.where(F.col("rated_at") > rated_after).select(USER).distinct()
        seen = seen.join(touched, USER, "left_semi")
    # kept: counting them and scoring them would otherwise group the ratings twice
    users = seen.groupBy(USER).agg(F.collect_list(ITEM).alias("seen")).persist(
        StorageLevel.MEMORY_AND_DISK)
    n_users = users.count()
    parallelism = spark.sparkContext.defaultParallelism
    recs = users.repartition(parallelism, USER).mapInPandas(
        user_scorer(implicit, explicit, counts, cfg), RECS_SCHEMA)
    recs_path = out / "user_recommendations"
    recs.write.mode("overwrite").parquet(str(recs_path))
    users.unpersist()
    if rated_after is not None or not similar:
        seconds = time.time() - started
        log.info("scored %d users (rated since %s) in %.1f s", n_users, rated_after, seconds)
        return ScoreResult(recs_path, None, n_users, seconds)

    movies = spark.createDataFrame(pd.DataFrame({ITEM: implicit.item_ids.astype("int32")}))
    similar = movies.repartition(parallelism).mapInPandas(
        similar_scorer(implicit, counts, cfg, explicit=explicit, genres=genres, tags=tags),
        SIMILAR_SCHEMA)
    similar_path = out / "similar_movies"
    similar.write.mode("overwrite").parquet(str(similar_path))
    seconds = time.time() - started
    log.info("scored %d users and %d movies in %.1f s", n_users, len(implicit.item_ids), seconds)
    return ScoreResult(recs_path, similar_path, n_users, seconds)
