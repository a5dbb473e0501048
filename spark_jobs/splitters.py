"""Splitters: the held-out data every model and baseline is scored on.

* :func:`official_folds`: ml-100k's own u1-u5 (rating error) and ua (ranking).
* :func:`random_split`: a seeded random fraction of all ratings (rating error).
* :func:`chronological_holdout`: each user's latest ratings (ranking), as a
  recommender meets them: trained on the past, asked about the future.

The same snapshot and :class:`~spark_jobs.config.TrainConfig` always give the
same :class:`Splits`, whose :meth:`~Splits.identity` lets the gate recognise a
champion scored on the very same holdout.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from spark_jobs.config import TrainConfig, TrainingError
from spark_jobs.models import ITEM, RATING, TIME, USER
from spark_jobs.snapshot import Snapshot


@dataclass
class Splits:
    """Rating splits (one or the five official folds) and one ranking split."""

    rating: list[tuple[pd.DataFrame, pd.DataFrame]]
    ranking: tuple[pd.DataFrame, pd.DataFrame]
    description: str

    def identity(self, snapshot: Snapshot) -> str:
        return hashlib.sha256(f"{snapshot.sha256}|{self.description}".encode()).hexdigest()[:16]



def read_fold(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path, sep="\t", names=[USER, ITEM, RATING, TIME])
    return frame.astype({USER: "int32", ITEM: "int32", RATING: "float32"})


def merge_fold(frame: pd.DataFrame, merges: dict[int, int]) -> pd.DataFrame:
    """A fold's ratings under the films' kept ids (``merges``: merged id -> kept id), a
    viewer's ratings of one film under two ids reduced to the later, as the marts do."""
    if not merges or not frame[ITEM].isin(list(merges)).any():
        return frame
    frame = frame.assign(**{ITEM: frame[ITEM].map(merges).fillna(frame[ITEM]).astype("int32")})
    return (frame.sort_values([USER, ITEM, TIME], kind="stable")
            .drop_duplicates([USER, ITEM], keep="last").sort_index())


def official_folds(folder: Path, ratings: pd.DataFrame,
                   merges: dict[int, int] | None = None) -> Splits:
    """The official folds u1-u5 (rating error) and ua (ranking), under the films' kept ids
    when the release merged duplicate entries (``merges``): both sides of a fold go
    through the same ids, and a film a viewer has in the test part leaves the base."""
    names = [*(f"u{i}" for i in range(1, 6)), "ua"]
    missing = [f"{n}.{part}" for n in names for part in ("base", "test")
               if not (folder / f"{n}.{part}").exists()]
    if missing:
        raise TrainingError(f"{folder}: missing fold file(s) {', '.join(missing)}")
    known = set(zip(ratings[USER], ratings[ITEM], strict=True))
    folds = {}
    for name in names:
        base, test = read_fold(folder / f"{name}.base"), read_fold(folder / f"{name}.test")
        if merges:
            base, test = merge_fold(base, merges), merge_fold(test, merges)
            tested = pd.MultiIndex.from_frame(test[[USER, ITEM]])
            base = base[~pd.MultiIndex.from_frame(base[[USER, ITEM]]).isin(tested)]
        outside = [p for p in zip(test[USER], test[ITEM], strict=True) if p not in known]
        if outside:
            raise TrainingError(f"{folder / (name + '.test')}: {len(outside)} ratings are not in "
                                f"the snapshot (e.g. user {outside[0][0]}, movie {outside[0][1]})"
                                ": these folds belong to another release")
        folds[name] = (base, test)
    merged = f"; {len(merges)} duplicate entries merged" if merges else ""
    return Splits([folds[f"u{i}"] for i in range(1, 6)], folds["ua"],
                  f"official folds u1-u5, ua ({folder.name}){merged}")


def chronological_holdout(ratings: pd.DataFrame,
                          per_user: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each user's latest ``per_user`` ratings form the test (users with twice as many)."""
    ordered = ratings.sort_values([USER, TIME, ITEM], kind="stable")
    rank_from_end = ordered.groupby(USER).cumcount(ascending=False)
    counts = ordered.groupby(USER)[ITEM].transform("size")
    test_mask = (rank_from_end < per_user) & (counts >= 2 * per_user)
    return ordered[~test_mask], ordered[test_mask]


#: The per-user holdout shrinks until at least this many users (every user of a smaller
#: release) keep one: fewer would make the ranking figures one viewer's taste.
MIN_HOLDOUT_USERS = 20
#: Without such users, the holdout is this share of the latest ratings instead.
GLOBAL_HOLDOUT = 0.1


def holdout_size(ratings: pd.DataFrame, wanted: int) -> int | None:
    """The per-user holdout to use: ``wanted`` latest ratings of every user with twice as
    many, or half as many, and so on down to one, until :data:`MIN_HOLDOUT_USERS` users
    have the history for it; None when even one each is too few (short histories)."""
    counts = ratings.groupby(USER).size()
    needed = min(MIN_HOLDOUT_USERS, len(counts))
    n = wanted
    while n >= 1:
        if needed and (counts >= 2 * n).sum() >= needed:
            return n
        n //= 2
    return None


def global_time_split(ratings: pd.DataFrame,
                      fraction: float = GLOBAL_HOLDOUT) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The latest ``fraction`` of all ratings form the test, for users with an earlier
    rating in the training part (histories too short for a per-user holdout)."""
    ordered = ratings.sort_values([TIME, USER, ITEM], kind="stable")
    cut = int(round(len(ordered) * (1 - fraction)))
    train, test = ordered.iloc[:cut], ordered.iloc[cut:]
    return train, test[test[USER].isin(train[USER].unique())]


def ranking_holdout(ratings: pd.DataFrame, wanted: int) -> tuple[pd.DataFrame, pd.DataFrame,
                                                                 str]:
    """(train, test, protocol): the latest ``n`` per user with ``n`` scaled to the
    histories (:func:`holdout_size`), or a global time split when they are too short."""
    n = holdout_size(ratings, wanted)
    if n is not None:
        train, test = chronological_holdout(ratings, n)
        return train, test, f"latest {n} per user"
    train, test = global_time_split(ratings)
    return train, test, (f"latest {GLOBAL_HOLDOUT:.0%} of ratings by time (histories too "
                         f"short for a per-user holdout)")


def random_split(ratings: pd.DataFrame, fraction: float, seed: int):
    rng = np.random.default_rng(seed)
    test_mask = rng.random(len(ratings)) < fraction
    return ratings[~test_mask], ratings[test_mask]


def user_sample(ratings: pd.DataFrame, max_ratings: int | None, seed: int) -> pd.DataFrame:
    """The whole histories of a seeded sample of users, about ``max_ratings`` ratings in
    all; every rating when there are no more than that.

    Tuning and held-out evaluation use it at scale: each grid point and each held-out
    fit then runs on the sample, and only the published models fit on everything.
    Whole histories keep each user's count (ALS-WR scales regularization by it) and
    the per-user holdouts intact.
    """
    if not max_ratings or len(ratings) <= max_ratings:
        return ratings
    users = np.sort(ratings[USER].unique())
    chosen = users[np.random.default_rng(seed).random(len(users)) < max_ratings / len(ratings)]
    return ratings[ratings[USER].isin(chosen)]


def make_splits(ratings: pd.DataFrame, config: TrainConfig,
                merges: dict[int, int] | None = None) -> Splits:
    """The evaluation splits; ``merges`` maps the official folds' released ids."""
    if config.folds_dir:
        return official_folds(Path(config.folds_dir), ratings, merges)
    sampled = user_sample(ratings, config.eval_max_ratings, config.seed)
    sample = (f"; users sampled to {len(sampled):,} of {len(ratings):,} ratings"
              if len(sampled) < len(ratings) else "")
    ratings = sampled
    train, test, protocol = ranking_holdout(ratings, config.holdout_per_user)
    if test.empty:
        raise TrainingError(
            f"{len(ratings):,} ratings of {ratings[USER].nunique():,} users leave nothing "
            "to hold out: too little data to evaluate a model")
    return Splits([random_split(ratings, config.test_fraction, config.seed)], (train, test),
                  f"random {config.test_fraction:g} seed {config.seed}; {protocol}{sample}")
