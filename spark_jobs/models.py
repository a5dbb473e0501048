"""The models: Spark ALS (explicit and implicit), the baselines, and the registered pyfunc.

Two ALS models come out of every run, because one objective cannot do both jobs:

* **explicit ALS** predicts star ratings (``recs.predict_rating``). It is fit on
  the residuals of a user+item bias baseline, ``r - (mu + b_u + b_i)``, and
  predicts ``mu + b_u + b_i + p_u . q_i`` clipped to the rating scale. The
  biases carry what ALS' regularisation would otherwise shrink away.
* **implicit ALS** (``implicitPrefs=True``) ranks movies for top-N lists: a
  rating is evidence of interest with confidence ``1 + alpha * r``. Explicit
  ALS ranks worse than most-popular on top-N lists; implicit ALS does not.

Cold start is explicit: Spark's ``coldStartStrategy='drop'`` while tuning (a
NaN would poison RMSE), and at prediction time an unseen user or movie falls
back to the bias baseline, and then to the global mean.

Scoring and top-k run from the factors in NumPy, in user batches, so the same
code ranks for ALS, the baselines and reference libraries.
"""

from __future__ import annotations

import contextlib
import shutil
import uuid
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pandas as pd

from moviesforyou.foundation.factors import (  # noqa: F401 (the models' own names, kept here)
    FAMILIES,
    ITEM,
    RATING,
    TIME,
    USER,
    Biases,
    Factors,
    ModelParams,
    load_factors,
    lookup,
    positions,
    save_factors,
)
from spark_jobs import families

# --------------------------------------------------------------------------- ALS


def als_estimator(params: ModelParams, *, seed: int = 42, rating_col: str = RATING,
                  blocks: int | None = None):
    from pyspark.ml.recommendation import ALS

    als = ALS(
        userCol=USER, itemCol=ITEM, ratingCol=rating_col, rank=params.rank,
        regParam=params.reg_param, maxIter=params.max_iter, implicitPrefs=params.implicit,
        alpha=params.alpha, nonnegative=False, coldStartStrategy="drop", seed=seed,
        checkpointInterval=5,
    )
    if blocks:
        als = als.setNumUserBlocks(blocks).setNumItemBlocks(blocks)
    return als


@contextlib.contextmanager
def spark_ratings(spark, frame: pd.DataFrame):
    """A Spark DataFrame of ``frame``'s user, movie and rating columns, read by the
    executors from a Parquet file beside Spark's checkpoints (removed afterwards).

    ``createDataFrame`` would ship the rows inside the tasks through the driver
    (about 20 MB a task at 1M ratings, half a gigabyte at 25M); the executors read a
    file themselves. The checkpoint folder is the one path every executor already
    shares; when it is not a local or mounted path (say ``hdfs://``), the rows go
    through ``createDataFrame`` after all.
    """
    typed = frame[[USER, ITEM, RATING]].astype({USER: "int32", ITEM: "int32",
                                                RATING: "float32"})
    where = urlparse(spark.sparkContext.getCheckpointDir() or "")
    if not where.path or where.scheme not in ("", "file"):
        yield spark.createDataFrame(typed)
        return
    folder = Path(where.path).parent / "frames" / uuid.uuid4().hex
    folder.mkdir(parents=True)
    try:
        typed.to_parquet(folder / "part-0.parquet", index=False)
        yield spark.read.parquet(str(folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def fit_als(spark, ratings: pd.DataFrame, params: ModelParams, *, seed: int = 42,
            scale: tuple[float, float] = (0.5, 5.0), blocks: int | None = None,
            on_residuals: bool = True) -> Factors:
    """Fit one ALS model in Spark and bring its factors back to the driver.

    Args:
        on_residuals: fit an explicit model on the residuals of the bias
            baseline (the default); False fits plain ratings, as Spark does as-is.
    """
    frame = ratings[[USER, ITEM, RATING]].copy()
    biases = None
    if not params.implicit and on_residuals:
        biases = Biases.fit(ratings)
        frame[RATING] = frame[RATING] - biases.predict(frame[USER], frame[ITEM])
    with spark_ratings(spark, frame) as df:
        model = als_estimator(params, seed=seed, blocks=blocks).fit(df)
        users = model.userFactors.toPandas()
        items = model.itemFactors.toPandas()
    return Factors(
        params=params,
        user_ids=users["id"].to_numpy(), user_factors=np.vstack(users["features"]),
        item_ids=items["id"].to_numpy(), item_factors=np.vstack(items["features"]),
        biases=biases, scale=scale,
    )


def fit_model(spark, ratings: pd.DataFrame, params: ModelParams, *, seed: int = 42,
              scale: tuple[float, float] = (0.5, 5.0), blocks: int | None = None) -> Factors:
    """Fit a model of any family: Spark ALS, or a NumPy family (no Spark needed)."""
    if params.family == "als":
        return fit_als(spark, ratings, params, seed=seed, scale=scale, blocks=blocks)
    if params.family == "bpmf":
        return families.fit_bpmf(ratings, params, seed=seed, scale=scale)
    return families.fit_ease(ratings, params, scale=scale)


# --------------------------------------------------------------------------- top-k


def seen_items(train: pd.DataFrame) -> dict[int, np.ndarray]:
    return {int(u): g.to_numpy() for u, g in train.groupby(USER)[ITEM]}


def top_k(scores_for: callable, users: np.ndarray, item_ids: np.ndarray,
          seen: dict[int, np.ndarray], k: int, batch: int = 1024) -> dict[int, list[int]]:
    """Top-k items per user from a batch scoring function, already-seen items removed.

    Vectorised per batch: the seen items of the whole batch are masked with one
    fancy-indexing write, and only the ``k`` best of each row are sorted. Memory:
    one ``batch x len(item_ids)`` float64 score matrix at a time (1024 x 59,047: 484 MB).

    Args:
        scores_for: maps an array of user ids to a (len(users), len(item_ids)) score matrix.
        users: users to rank for.
        item_ids: the candidate catalogue, in the score matrix's column order.
        seen: user -> items rated in training (excluded).
        k: list length.
    """
    catalogue = pd.Index(item_ids)
    item_ids = np.asarray(item_ids)
    nothing = np.empty(0, dtype=item_ids.dtype)
    kk = min(k, len(item_ids))
    out: dict[int, list[int]] = {}
    if kk == 0:
        return {int(user): [] for user in users}
    for start in range(0, len(users), batch):
        chunk = users[start:start + batch]
        # a writable array of our own: a scorer may hand back a view or a broadcast
        scores = np.require(scores_for(chunk), dtype=np.float64, requirements=["C", "W", "O"])
        rated = [seen.get(int(user), nothing) for user in chunk]
        lengths = np.fromiter((len(r) for r in rated), dtype=np.int64, count=len(chunk))
        if lengths.any():
            cols = positions(catalogue, np.concatenate(rated))
            rows = np.repeat(np.arange(len(chunk)), lengths)
            known = cols >= 0
            scores[rows[known], cols[known]] = -np.inf
        best = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
        best_scores = np.take_along_axis(scores, best, axis=1)
        order = np.argsort(-best_scores, axis=1, kind="stable")
        best = np.take_along_axis(best, order, axis=1)
        finite = np.isfinite(np.take_along_axis(best_scores, order, axis=1))
        ids = item_ids[best]
        for row, user in enumerate(chunk):
            out[int(user)] = ids[row][finite[row]].tolist()
    return out


def factor_scorer(factors: Factors, item_ids: np.ndarray):
    """Scores of the catalogue ``item_ids`` for a batch of users, from ALS factors.

    Items the model has no factors for score -inf (never recommended); users it
    does not know score 0 plus the item bias, if any.
    """
    columns = positions(factors.item_index, item_ids)
    has_factors = columns >= 0
    item_matrix = factors.item_factors[columns[has_factors]]
    offset = np.full(len(item_ids), -np.inf)
    offset[has_factors] = 0.0
    if factors.biases is not None:
        offset[has_factors] += lookup(factors.biases.item, item_ids[has_factors], 0.0)

    def scores(users: np.ndarray) -> np.ndarray:
        rows = positions(factors.user_index, users)
        out = np.zeros((len(users), len(item_ids)))
        known = rows >= 0
        out[np.ix_(known, has_factors)] = factors.user_factors[rows[known]] @ item_matrix.T
        return out + offset

    return scores


def popularity_scorer(train: pd.DataFrame, item_ids: np.ndarray):
    counts = train.groupby(ITEM).size().reindex(item_ids, fill_value=0).to_numpy(float)
    return lambda users: np.tile(counts, (len(users), 1))


def bias_scorer(biases: Biases, item_ids: np.ndarray):
    item_bias = lookup(biases.item, item_ids, -np.inf)
    return lambda users: np.tile(item_bias, (len(users), 1))


# --------------------------------------------------------------------------- registered model


try:  # the pyfunc wrapper needs mlflow; the rest of this module does not
    import mlflow.pyfunc

    class MoviesForYouALS(mlflow.pyfunc.PythonModel):
        """The registered model: both ALS factor sets, no Spark needed to serve.

        Input: a frame with ``user_id`` and ``movie_id``. Output: ``predicted_rating``
        (explicit model, bias fallback) and ``ranking_score`` (implicit model; 0
        for unknown ids).
        """

        def load_context(self, context) -> None:
            self.explicit, self.implicit = load_factors(Path(context.artifacts["factors"]))

        def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
            users, items = model_input[USER].to_numpy(), model_input[ITEM].to_numpy()
            ranking, _ = self.implicit.dots(users, items)  # 0 for unknown ids
            return pd.DataFrame({"predicted_rating": self.explicit.predict(users, items),
                                 "ranking_score": ranking})
except ImportError:  # pragma: no cover
    pass
