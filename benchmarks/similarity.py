"""How good are the "similar movies" lists? Item similarity measured on the real ml-100k.

Neighbours are computed from 80 % of the users (seeded split); the other 20 % are
held out. For every target movie with at least ``--min-target`` training ratings it
prints, averaged over the targets' top 10:

* **genre share**: the share of neighbours with a genre in common with the target;
* **held-out P(j | i)**: of the held-out users who rated the target, the share who
  also rated the neighbour (co-rating by people the model never saw);
* **lift**: that probability over the neighbour's own rate among held-out users
  (1 = no better than a popular film anyone would also have rated);
* **popularity**: the neighbours' median training rating count (the leak the issue
  complains about shows as a high figure);

and each method's top 5 for Star Wars (1977), side by side in one run. The methods
are the ones ``spark_jobs.score.similarity`` offers, on the factors of the implicit
model the product trains, plus a shrunk co-occurrence (PMI) reference computed from
the training users' ratings directly.

Usage::

    .venv/bin/python benchmarks/similarity.py
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from spark_jobs.models import ModelParams, fit_als
from spark_jobs.score import ScoreConfig, similarity_model

ROOT = Path(__file__).resolve().parents[1]
ML100K = ROOT.parent / "shared" / "data" / "ml-100k"
STAR_WARS = 50


def load() -> tuple[pd.DataFrame, pd.DataFrame]:
    ratings = pd.read_csv(ML100K / "u.data", sep="\t",
                          names=["user_id", "movie_id", "rating", "rated_at"])
    items = pd.read_csv(ML100K / "u.item", sep="|", encoding="latin-1", header=None)
    genres = pd.DataFrame(items.iloc[:, 5:].to_numpy(), index=items[0].to_numpy())
    genres = genres.iloc[:, 1:]  # column 0 is "unknown"
    titles = pd.Series(items[1].to_numpy(), index=items[0].to_numpy())
    return ratings, genres.assign(title=titles)


def pmi_neighbours(train: pd.DataFrame, item_ids: np.ndarray, targets: np.ndarray,
                   eligible: np.ndarray, k: int, shrink: float = 100.0) -> np.ndarray:
    """Top-k by shrunk PMI: log(n_ij N / (n_i n_j)) * n_ij / (n_ij + shrink)."""
    users = pd.Index(np.sort(train["user_id"].unique()))
    index = pd.Index(item_ids)
    x = np.zeros((len(users), len(item_ids)))
    x[users.get_indexer(train["user_id"]), index.get_indexer(train["movie_id"])] = 1
    co = x.T @ x
    n = np.diag(co).copy()
    with np.errstate(divide="ignore", invalid="ignore"):
        pmi = np.log(co * len(users) / np.outer(n, n)) * co / (co + shrink)
    rows = index.get_indexer(targets)
    scores = np.nan_to_num(pmi[rows], nan=-np.inf, neginf=-np.inf)
    scores[:, ~eligible] = -np.inf
    scores[np.arange(len(rows)), rows] = -np.inf
    return np.argsort(-scores, axis=1)[:, :k]


def measure(neighbours: np.ndarray, targets: np.ndarray, item_ids: np.ndarray,
            genres: np.ndarray, held: pd.DataFrame, counts: np.ndarray) -> dict:
    index = pd.Index(item_ids)
    users = pd.Index(np.sort(held["user_id"].unique()))
    x = np.zeros((len(users), len(item_ids)), dtype=bool)
    x[users.get_indexer(held["user_id"]), index.get_indexer(held["movie_id"])] = True
    rate = x.mean(axis=0)
    share, cond, lift, pop = [], [], [], []
    for target, near in zip(index.get_indexer(targets), neighbours, strict=True):
        share.append(np.mean((genres[near] & genres[target]).any(axis=1)))
        raters = x[:, target]
        if raters.sum() >= 5:
            p = x[raters][:, near].mean(axis=0)
            cond.append(p.mean())
            lift.append(np.mean(p / np.maximum(rate[near], 1 / len(users))))
        pop.append(np.median(counts[near]))
    return {"genre share": np.mean(share), "held-out P(j|i)": np.mean(cond),
            "lift": np.mean(lift), "median count": np.mean(pop)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--min-target", type=int, default=50)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--methods", nargs="+", default=[
        "cosine", "centred", "explicit", "mixed", "centred+genres", "explicit+genres",
        "mixed+genres"])
    options = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from spark_jobs.session import get_spark

    ratings, movies = load()
    rng = np.random.default_rng(42)
    all_users = ratings["user_id"].unique()
    held_users = rng.choice(all_users, size=len(all_users) // 5, replace=False)
    held = ratings[ratings["user_id"].isin(held_users)]
    train = ratings[~ratings["user_id"].isin(held_users)]

    home = Path(tempfile.mkdtemp(prefix="mfy-similarity-"))
    spark = get_spark(home)
    implicit = fit_als(spark, train, ModelParams(rank=64, reg_param=0.5, alpha=4.0,
                                               implicit=True, max_iter=15))
    explicit = fit_als(spark, train, ModelParams(rank=50, reg_param=0.15, max_iter=15))
    spark.stop()
    item_ids = implicit.item_ids
    counts = train.groupby("movie_id").size()
    count_of = counts.reindex(item_ids, fill_value=0).to_numpy()
    genre_matrix = movies.drop(columns="title").reindex(item_ids, fill_value=0) \
        .to_numpy().astype(bool)
    targets = item_ids[count_of >= options.min_target]
    cfg = ScoreConfig(similar_n=options.k)
    eligible = count_of >= cfg.min_ratings
    genre_lists = pd.Series(
        [list(np.flatnonzero(row)) for row in genre_matrix], index=item_ids)

    results = {}
    for method in options.methods:
        model = similarity_model(implicit, counts, genre_lists, explicit=explicit,
                                 method=method, cfg=cfg)
        best, _ = model(targets)
        results[method] = pd.Index(item_ids).get_indexer(best.ravel()).reshape(best.shape)
    results["shrunk PMI (reference)"] = pmi_neighbours(train, item_ids, targets, eligible,
                                                       options.k)

    print(f"\nml-100k, {len(targets)} target movies (>= {options.min_target} training "
          f"ratings), top {options.k}, {len(held_users)} held-out users\n")
    print(f"{'method':<26} | {'genre share':>11} | {'held-out P(j|i)':>15} | {'lift':>5} | "
          f"{'median count':>12} | Star Wars' top 5")
    titles = movies["title"]
    for method, neighbours in results.items():
        figures = measure(neighbours, targets, item_ids, genre_matrix, held, count_of)
        star = neighbours[list(targets).index(STAR_WARS)][:5]
        names = "; ".join(str(titles[item_ids[j]]).rsplit(" (", 1)[0] for j in star)
        print(f"{method:<26} | {figures['genre share']:>11.3f} | "
              f"{figures['held-out P(j|i)']:>15.3f} | {figures['lift']:>5.2f} | "
              f"{figures['median count']:>12.0f} | {names}")


if __name__ == "__main__":
    main()
