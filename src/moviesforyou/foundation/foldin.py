"""Folding a viewer into the published model: the ALS user step, in NumPy.

ALS alternates two least-squares steps, users given the movies' factors and
movies given the users'. Spark ends each iteration with the user step, so with
the published movie factors held fixed, one small solve per viewer (rank x rank)
gives the factors the nightly run would give them for the same ratings. The API
does this for a viewer who has rated films since the publish: their list changes
on the next request, without Spark, while the nightly run stays the authority
(it also moves the movie factors).

The solves follow Spark's ALS exactly (``ALS.computeFactors``), including its
ALS-WR regularisation, scaled by the viewer's number of ratings:

* **implicit** (the lists): confidence ``c = 1 + alpha * r`` and preference 1
  for every rated movie, every other movie preference 0 with confidence 1:
  ``(YᵀY + Σ alpha r_i y_i y_iᵀ + reg n I) x = Σ (1 + alpha r_i) y_i``.
* **explicit** (predicted ratings), on the residuals of the bias baseline:
  ``b_u = Σ (r - mu - b_i) / (n + reg_user)`` as :class:`spark_jobs.models.Biases`
  fits it, then ``(Σ y_i y_iᵀ + reg n I) x = Σ (r - mu - b_u - b_i) y_i``.

The other model families (:mod:`spark_jobs.families`) publish the same shape and
fold in as follows. BPMF's ratings use the explicit step above, with the
regularisation calibrated to reproduce its users' own predictions (the
publication's ``explicit_reg_param``): close to, not equal to, what the nightly
run would give. EASE's lists are linear in a viewer's ratings, so their vector
is exact and needs no solve: ``x = Σ r_i w_i y_i``, with ``w_i`` each movie's
``fold_weight`` (:func:`ease_user`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: The user-bias shrinkage of the bias baseline (``spark_jobs.models.Biases``).
BIAS_REG_USER = 15.0


def implicit_user(item_factors: np.ndarray, gram: np.ndarray, ratings: np.ndarray,
                  reg: float, alpha: float) -> np.ndarray:
    """One viewer's implicit factors.

    Args:
        item_factors: the factors of the movies the viewer rated, one row each.
        gram: ``YᵀY`` over every movie of the model (:func:`gram`).
        ratings: the viewer's ratings of those movies, in the same order.
    """
    c1 = alpha * np.abs(ratings)
    positive = ratings > 0
    a = gram + (item_factors * c1[:, None]).T @ item_factors
    a[np.diag_indices_from(a)] += reg * positive.sum()
    b = ((1.0 + c1) * positive) @ item_factors
    return np.linalg.solve(a, b)


def ease_user(item_factors: np.ndarray, weights: np.ndarray,
              ratings: np.ndarray) -> np.ndarray:
    """One viewer's EASE vector: their ratings times each movie's fold weight, summed
    over the movies' vectors (``spark_jobs.families.fit_ease``)."""
    return (weights * ratings) @ item_factors


def list_user(family: str, item_factors: np.ndarray, ratings: np.ndarray, *,
              gram: np.ndarray | None, reg: float, alpha: float,
              weights: np.ndarray | None) -> np.ndarray:
    """One viewer's list vector for the list model's family (``als`` or ``ease``)."""
    if family == "ease":
        return ease_user(item_factors, weights, ratings)
    return implicit_user(item_factors, gram, ratings, reg, alpha)


def explicit_user(item_factors: np.ndarray, residuals: np.ndarray, reg: float) -> np.ndarray:
    """One viewer's explicit factors from their residuals after the biases."""
    a = item_factors.T @ item_factors
    a[np.diag_indices_from(a)] += reg * len(residuals)
    return np.linalg.solve(a, residuals @ item_factors)


def gram(item_factors: np.ndarray) -> np.ndarray:
    """``YᵀY``: every movie's contribution at confidence 1, shared by all viewers."""
    return item_factors.T @ item_factors


@dataclass
class Viewer:
    """A viewer folded in: their factors and what they predict for every movie."""

    scores: np.ndarray  # implicit ranking score per movie (the model's order)
    predicted: np.ndarray  # predicted star rating per movie
    factors: np.ndarray | None  # their implicit factors (None: no rated movie has any)


@dataclass
class Model:
    """The published movie side of both ALS models, ready for fold-ins.

    Rows are movies in ``movie_ids`` order; a movie without factors in one of
    the models has a row of NaN there and is never recommended by it.
    """

    movie_ids: np.ndarray
    movie_bias: np.ndarray
    explicit: np.ndarray
    implicit: np.ndarray
    global_mean: float
    scale: tuple[float, float]
    explicit_reg: float
    implicit_reg: float
    alpha: float
    bias_reg_user: float = BIAS_REG_USER
    #: the list model's family, and its per-movie fold weights (``ease``)
    list_family: str = "als"
    fold_weights: np.ndarray | None = None

    def __post_init__(self) -> None:
        self._ranked = ~np.isnan(self.implicit).any(axis=1)
        self._rated = ~np.isnan(self.explicit).any(axis=1)
        self._gram = gram(self.implicit[self._ranked])
        # zeros for the movies without implicit factors: every score is one product,
        # without copying the ranked rows out first (30 MB a call at ml-25m's size)
        self._implicit_filled = np.where(self._ranked[:, None], self.implicit, 0.0)
        self._order = np.argsort(self.movie_ids, kind="stable")
        self._sorted = self.movie_ids[self._order]

    @classmethod
    def from_rows(cls, movies, live) -> Model | None:
        """The model from the published tables: ``movies``, rows of ``recs.movie_factors``
        (``movie_id, bias, explicit_factors, implicit_factors, fold_weight``), and
        ``live``, the publication's ``global_mean, rating_min, rating_max,
        explicit_reg, implicit_reg, alpha, bias_reg_user, list_family``. None when the
        publish lacks any of them (older publishes did not record the regularisation;
        publishes before families are ALS)."""
        if not movies or any(live[k] is None for k in ("explicit_reg", "implicit_reg",
                                                         "alpha")):
            return None
        rank = {c: max((len(r[c]) for r in movies if r[c] is not None), default=0)
                for c in ("explicit_factors", "implicit_factors")}
        if not rank["implicit_factors"]:
            return None

        def matrix(column: str) -> np.ndarray:
            out = np.full((len(movies), rank[column]), np.nan)
            for i, row in enumerate(movies):
                if row[column] is not None:
                    out[i] = row[column]
            return out

        return cls(movie_ids=np.array([r["movie_id"] for r in movies]),
                   movie_bias=np.array([r["bias"] for r in movies], dtype=np.float64),
                   explicit=matrix("explicit_factors"), implicit=matrix("implicit_factors"),
                   global_mean=live["global_mean"],
                   scale=(live["rating_min"], live["rating_max"]),
                   explicit_reg=live["explicit_reg"], implicit_reg=live["implicit_reg"],
                   alpha=live["alpha"], bias_reg_user=live["bias_reg_user"] or BIAS_REG_USER,
                   list_family=live.get("list_family") or "als",
                   fold_weights=np.array([r.get("fold_weight") or 0.0 for r in movies],
                                         dtype=np.float64)
                   if live.get("list_family") == "ease" else None)

    def top(self, viewer: Viewer, seen, k: int, skip: np.ndarray | None = None) -> np.ndarray:
        """Row positions of the viewer's top ``k`` movies, best first, without the
        ``seen`` movie ids and the rows where ``skip`` is true."""
        return self.best(viewer.scores, seen, k, skip)

    def best(self, scores: np.ndarray, seen, k: int,
             skip: np.ndarray | None = None) -> np.ndarray:
        """Row positions of the ``k`` best ``scores`` (one per row), best first and ties
        in row (movie id) order, without the ``seen`` movie ids, the rows where ``skip``
        is true and those scored -inf. Only the candidates at or above the k-th best
        score are sorted."""
        scores = scores.copy()
        rows = self.rows(seen)
        scores[rows[rows >= 0]] = -np.inf
        if skip is not None:
            scores[skip] = -np.inf
        k = min(max(k, 0), len(scores))
        if k == 0:
            return np.zeros(0, dtype=np.int64)
        cut = np.partition(scores, len(scores) - k)[len(scores) - k]
        candidates = np.flatnonzero(scores >= cut)
        top = candidates[np.argsort(-scores[candidates], kind="stable")][:k]
        return top[np.isfinite(scores[top])]

    def scores_of(self, implicit_factors) -> np.ndarray:
        """Every movie's list score for a viewer with these implicit factors (-inf for
        the movies without factors, which no list holds)."""
        scores = self._implicit_filled @ np.asarray(implicit_factors, dtype=np.float64)
        scores[~self._ranked] = -np.inf
        return scores

    def rows(self, movie_ids) -> np.ndarray:
        """Row positions of ``movie_ids`` (-1 for movies the model does not have)."""
        ids = np.asarray(movie_ids, dtype=np.int64).reshape(-1)
        if not len(self._sorted):
            return np.full(len(ids), -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(self._sorted, ids), len(self._sorted) - 1)
        return np.where(self._sorted[at] == ids, self._order[at], -1)

    def fold_in(self, movie_ids, ratings) -> Viewer:
        """Fold in a viewer from all their ratings (movie ids and stars)."""
        rows, ratings = self.rows(movie_ids), np.asarray(ratings, dtype=np.float64)
        known = rows >= 0
        rows, ratings = rows[known], ratings[known]
        scores = np.full(len(self.movie_ids), -np.inf)
        ranked = self._ranked[rows]
        x = None
        if ranked.any():
            picked = rows[ranked]
            x = list_user(self.list_family, self.implicit[picked], ratings[ranked],
                          gram=self._gram, reg=self.implicit_reg, alpha=self.alpha,
                          weights=None if self.fold_weights is None
                          else self.fold_weights[picked])
            scores = self.scores_of(x)
        base = self.global_mean + self.movie_bias
        factors, rated = x, self._rated[rows]
        bias = 0.0
        if len(rows):
            bias = float((ratings - base[rows]).sum() / (len(rows) + self.bias_reg_user))
        explicit = None
        if rated.any():
            residuals = ratings[rated] - base[rows[rated]] - bias
            explicit = explicit_user(self.explicit[rows[rated]], residuals, self.explicit_reg)
        return Viewer(scores=scores, predicted=self.predict(bias, explicit), factors=factors)

    def predict(self, user_bias: float, explicit_factors, rows=None) -> np.ndarray:
        """Predicted star ratings of every movie (or of the model ``rows``) for a viewer
        with this bias and these explicit factors (None: the bias baseline), as
        ``recs.predict_rating``."""
        rows = np.arange(len(self.movie_ids)) if rows is None else np.asarray(rows, dtype=int)
        predicted = self.global_mean + self.movie_bias[rows] + user_bias
        if explicit_factors is not None:
            rated = self._rated[rows]
            predicted[rated] += self.explicit[rows[rated]] @ np.asarray(explicit_factors)
        return np.clip(predicted, *self.scale)
