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
    ``similar_n`` nearest movies by cosine similarity of the implicit model's
    item factors, among movies with at least ``min_ratings`` ratings.

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


@dataclass(frozen=True)
class ScoreResult:
    user_recommendations: Path
    similar_movies: Path | None  #: None: not scored (the movie factors did not change)
    users: int
    seconds: float


def _top(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Column indices and values of each row's ``k`` best finite scores, best first."""
    k = min(k, scores.shape[1])
    best = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    values = np.take_along_axis(scores, best, axis=1)
    order = np.argsort(-values, axis=1, kind="stable")
    return np.take_along_axis(best, order, axis=1), np.take_along_axis(values, order, axis=1)


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
                scores = np.tile(pop, (len(users), 1))
                if known.any():
                    scores[known] = implicit.user_factors[rows[known]] @ items.T
                    scores[np.ix_(known, unknown_item)] = -np.inf
                for i, seen in enumerate(chunk["seen"]):
                    seen_cols = positions(popularity.index, seen)
                    scores[i, seen_cols[seen_cols >= 0]] = -np.inf
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


def similar_scorer(implicit: Factors, counts: pd.Series, cfg: ScoreConfig):
    """The ``mapInPandas`` function: frames of movie_id -> its nearest movies."""
    norms = np.linalg.norm(implicit.item_factors, axis=1)
    unit = implicit.item_factors / np.where(norms > 0, norms, 1.0)[:, None]
    eligible = (counts.reindex(implicit.item_ids, fill_value=0).to_numpy() >= cfg.min_ratings)
    eligible &= norms > 0

    def score(frames):
        for frame in frames:
            for start in range(0, len(frame), cfg.batch):
                movies = frame[ITEM].to_numpy()[start:start + cfg.batch]
                rows = positions(implicit.item_index, movies)
                sims = unit[rows] @ unit.T
                sims[:, ~eligible] = -np.inf
                sims[np.arange(len(rows)), rows] = -np.inf  # not itself
                best, values = _top(sims, cfg.similar_n)
                finite = np.isfinite(values)
                yield pd.DataFrame({
                    ITEM: np.repeat(movies, best.shape[1])[finite.ravel()].astype("int32"),
                    "rank": np.cumsum(finite, axis=1)[finite].astype("int32"),
                    "similar_movie_id": implicit.item_ids[best][finite].astype("int32"),
                    "similarity": values[finite],
                })

    return score


def score(spark, factors: Path, ratings: Path, out: Path,
          cfg: ScoreConfig | None = None, *, rated_after: int | None = None) -> ScoreResult:
    """Write both scored tables as Parquet under ``out``.

    Args:
        rated_after: score only the users with a rating after this time (epoch
            seconds), and no similar movies: a refresh (``spark_jobs.refresh``)
            changed only those users' factors, so every other list, and every
            movie's neighbours, stay what the live publish has.
    """
    from pyspark.sql import functions as F

    cfg = cfg or ScoreConfig()
    started = time.time()
    explicit, implicit = load_factors(factors)
    seen = spark.read.parquet(str(ratings)).select(USER, ITEM, "rated_at")
    counts = seen.groupBy(ITEM).count().toPandas().set_index(ITEM)["count"].sort_index()
    if rated_after is not None:  # their whole histories, and nobody else's
        touched = seen.where(F.col("rated_at") > rated_after).select(USER).distinct()
        seen = seen.join(touched, USER, "left_semi")
    users = seen.groupBy(USER).agg(F.collect_list(ITEM).alias("seen"))
    n_users = users.count()
    parallelism = spark.sparkContext.defaultParallelism
    recs = users.repartition(parallelism, USER).mapInPandas(
        user_scorer(implicit, explicit, counts, cfg), RECS_SCHEMA)
    recs_path = out / "user_recommendations"
    recs.write.mode("overwrite").parquet(str(recs_path))
    if rated_after is not None:
        seconds = time.time() - started
        log.info("scored the %d users who rated since %d in %.1f s", n_users, rated_after,
                 seconds)
        return ScoreResult(recs_path, None, n_users, seconds)

    movies = spark.createDataFrame(pd.DataFrame({ITEM: implicit.item_ids.astype("int32")}))
    similar = movies.repartition(parallelism).mapInPandas(
        similar_scorer(implicit, counts, cfg), SIMILAR_SCHEMA)
    similar_path = out / "similar_movies"
    similar.write.mode("overwrite").parquet(str(similar_path))
    seconds = time.time() - started
    log.info("scored %d users and %d movies in %.1f s", n_users, len(implicit.item_ids), seconds)
    return ScoreResult(recs_path, similar_path, n_users, seconds)
