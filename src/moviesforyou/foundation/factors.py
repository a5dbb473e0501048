"""The models' file format: factors, biases and hyperparameters, as every stage reads them.

Training (``spark_jobs``) writes a model's factors with :func:`save_factors`; the
publish (:mod:`moviesforyou.publishing`) and the API's fold-in (``serving``) read
them back with :func:`load_factors`. The frames' column names are :data:`USER`,
:data:`ITEM`, :data:`RATING` and :data:`TIME`. NumPy and pandas only: no Spark.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from moviesforyou.foundation.foldin import BIAS_REG_USER

USER, ITEM, RATING, TIME = "user_id", "movie_id", "rating", "rated_at"


# --------------------------------------------------------------------------- lookups


def positions(index: pd.Index, ids) -> np.ndarray:
    """Row of each id in ``index``, -1 where the id is unknown (vectorised)."""
    return index.get_indexer(np.asarray(ids))


def lookup(values: pd.Series, ids, default: float) -> np.ndarray:
    """``values[id]`` for every id, ``default`` where the id is unknown."""
    rows = positions(values.index, ids)
    out = np.full(len(rows), default, dtype=np.float64)
    out[rows >= 0] = values.to_numpy()[rows[rows >= 0]]
    return out


# --------------------------------------------------------------------------- biases


@dataclass
class Biases:
    """mu + b_u + b_i, fit by alternating regularised means."""

    mu: float
    user: pd.Series  # user_id -> b_u
    item: pd.Series  # movie_id -> b_i

    @classmethod
    def fit(cls, ratings: pd.DataFrame, *, reg_user: float = BIAS_REG_USER, reg_item: float = 10.0,
            iterations: int = 10) -> Biases:
        mu = float(ratings[RATING].mean())
        bu = pd.Series(0.0, index=pd.Index(ratings[USER].unique()))
        bi = pd.Series(0.0, index=pd.Index(ratings[ITEM].unique()))
        users, items, r = ratings[USER].to_numpy(), ratings[ITEM].to_numpy(), ratings[RATING]
        for _ in range(iterations):
            residual = r.to_numpy() - mu - bu.reindex(users).to_numpy()
            grouped = pd.DataFrame({ITEM: items, "x": residual}).groupby(ITEM)["x"]
            bi = grouped.sum() / (grouped.count() + reg_item)
            residual = r.to_numpy() - mu - bi.reindex(items).to_numpy()
            grouped = pd.DataFrame({USER: users, "x": residual}).groupby(USER)["x"]
            bu = grouped.sum() / (grouped.count() + reg_user)
        return cls(mu, bu, bi)

    def predict(self, users, items) -> np.ndarray:
        return self.mu + lookup(self.user, users, 0.0) + lookup(self.item, items, 0.0)


#: The model families. ``als`` (Spark ALS) is the platform's core; the others are
#: fitted in NumPy (:mod:`spark_jobs.families`) and compete with it in the gate:
#: ``bpmf`` for predicted ratings, ``ease`` for lists.
FAMILIES = {"als": "Spark ALS", "bpmf": "Bayesian matrix factorisation (Gibbs sampling)",
            "ease": "EASE, a closed-form item-item model"}


@dataclass(frozen=True)
class ModelParams:
    """Hyperparameters of one model, as logged to MLflow.

    ``family`` says which model (:data:`FAMILIES`); the other fields mean, per family:

    * ``als``: ALS' rank, ``regParam`` (ALS-WR: scaled by each user's or movie's
      number of ratings), ``maxIter``, ``implicitPrefs`` and ``alpha``;
    * ``bpmf`` (ratings): ``rank`` latent factors and ``max_iter`` Gibbs sweeps
      (``reg_param`` is unused: its fold-in regularisation is calibrated, see
      :attr:`Factors.fold_in_reg`);
    * ``ease`` (lists): ``reg_param`` EASE's lambda and ``rank`` the most
      eigen-directions kept (0: all).
    """

    rank: int = 20
    reg_param: float = 0.1
    max_iter: int = 15
    implicit: bool = False
    alpha: float = 1.0
    family: str = "als"

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"model family must be one of {', '.join(FAMILIES)}, "
                             f"not {self.family!r}")

    def label(self) -> str:
        if self.family == "bpmf":
            return f"bpmf rank={self.rank} sweeps={self.max_iter}"
        if self.family == "ease":
            return f"ease lambda={self.reg_param:g}" + (f" rank={self.rank}" if self.rank else "")
        kind = f"implicit a={self.alpha:g}" if self.implicit else "explicit"
        return f"{kind} rank={self.rank} reg={self.reg_param:g} iter={self.max_iter}"


@dataclass
class Factors:
    """Factors of a fitted ALS model, plus the bias baseline under an explicit one."""

    params: ModelParams
    user_ids: np.ndarray
    user_factors: np.ndarray
    item_ids: np.ndarray
    item_factors: np.ndarray
    biases: Biases | None = None
    scale: tuple[float, float] = (0.5, 5.0)
    #: per movie, for the ``ease`` family: a viewer's factors are
    #: ``sum(rating * fold_weight * movie factors)`` over the movies they rated
    fold_weights: np.ndarray | None = None
    #: the explicit fold-in's regularisation when it is not ``params.reg_param``
    #: (``bpmf``: calibrated on the fitted model)
    fold_in_reg: float | None = None

    @property
    def fold_in_regularisation(self) -> float:
        """The ALS-WR regularisation a viewer is folded in with
        (:mod:`moviesforyou.foundation.foldin`)."""
        return self.params.reg_param if self.fold_in_reg is None else self.fold_in_reg

    @functools.cached_property
    def user_index(self) -> pd.Index:
        return pd.Index(self.user_ids)

    @functools.cached_property
    def item_index(self) -> pd.Index:
        return pd.Index(self.item_ids)

    def dots(self, users, items) -> tuple[np.ndarray, np.ndarray]:
        """p_u . q_i per pair, and which pairs the model has factors for."""
        ui, ii = positions(self.user_index, users), positions(self.item_index, items)
        known = (ui >= 0) & (ii >= 0)
        dots = np.zeros(len(ui))
        dots[known] = np.einsum("ij,ij->i", self.user_factors[ui[known]],
                                self.item_factors[ii[known]])
        return dots, known

    def predict(self, users, items) -> np.ndarray:
        """Predicted ratings; unseen users or movies fall back to the biases."""
        users, items = np.asarray(users), np.asarray(items)
        dots, _ = self.dots(users, items)
        base = self.biases.predict(users, items) if self.biases else np.zeros(len(users))
        return np.clip(base + dots, *self.scale)


# --------------------------------------------------------------------------- files


def save_factors(folder: Path, explicit: Factors, implicit: Factors) -> None:
    """Write both models' factors and biases as files (the model's artifacts)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, f in (("explicit", explicit), ("implicit", implicit)):
        pd.DataFrame({USER: f.user_ids, "features": list(f.user_factors)}).to_parquet(
            folder / f"{name}_user_factors.parquet", index=False)
        movies = pd.DataFrame({ITEM: f.item_ids, "features": list(f.item_factors)})
        if f.fold_weights is not None:
            movies["fold_weight"] = f.fold_weights
        movies.to_parquet(folder / f"{name}_movie_factors.parquet", index=False)
    meta = {
        "explicit_params": asdict(explicit.params), "implicit_params": asdict(implicit.params),
        "scale": list(explicit.scale), "explicit_fold_in_reg": explicit.fold_in_reg,
        "biases": {"mu": explicit.biases.mu,
                   "user": {str(k): v for k, v in explicit.biases.user.items()},
                   "item": {str(k): v for k, v in explicit.biases.item.items()}},
    }
    (folder / "model.json").write_text(json.dumps(meta))


def load_factors(folder: Path) -> tuple[Factors, Factors]:
    meta = json.loads((Path(folder) / "model.json").read_text())
    b = meta["biases"]
    biases = Biases(b["mu"], pd.Series({int(k): v for k, v in b["user"].items()}),
                    pd.Series({int(k): v for k, v in b["item"].items()}))
    loaded = []
    for name in ("explicit", "implicit"):
        users = pd.read_parquet(Path(folder) / f"{name}_user_factors.parquet")
        items = pd.read_parquet(Path(folder) / f"{name}_movie_factors.parquet")
        loaded.append(Factors(
            params=ModelParams(**meta[f"{name}_params"]),
            user_ids=users[USER].to_numpy(), user_factors=np.vstack(users["features"]),
            item_ids=items[ITEM].to_numpy(), item_factors=np.vstack(items["features"]),
            biases=biases if name == "explicit" else None, scale=tuple(meta["scale"]),
            fold_weights=(items["fold_weight"].to_numpy() if "fold_weight" in items else None),
            fold_in_reg=meta.get("explicit_fold_in_reg") if name == "explicit" else None,
        ))
    return loaded[0], loaded[1]
