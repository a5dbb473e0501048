"""Rating and ranking metrics, the same for every model and baseline.

Inputs are plain Python/NumPy structures so that ALS, the baselines and any
reference library are judged by exactly the same code:

* rating metrics take arrays of predictions and actual ratings;
* ranking metrics take ``recommended`` (user -> ranked list of items, already
  seen items removed) and ``relevant`` (user -> set of test items rated at or
  above the relevance threshold). Users without a relevant item are skipped,
  as in microsoft/recommenders.

Beyond accuracy: catalogue coverage (share of the catalogue that appears in any
top-k list), novelty (mean self-information ``-log2 p(item)`` of recommended
items, ``p`` = share of users who rated the item in training), and popularity
bias (mean training popularity of recommended items divided by that of the
items users actually liked in the test set; 1 means as popular as real taste).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

Recs = Mapping[int, Sequence[int]]
Relevant = Mapping[int, set]


def rmse(predicted, actual) -> float:
    predicted, actual = np.asarray(predicted, float), np.asarray(actual, float)
    if predicted.size == 0 or predicted.shape != actual.shape:
        raise ValueError("rmse needs two non-empty arrays of the same length")
    return float(np.sqrt(np.mean((predicted - actual) ** 2)))


def mae(predicted, actual) -> float:
    predicted, actual = np.asarray(predicted, float), np.asarray(actual, float)
    if predicted.size == 0 or predicted.shape != actual.shape:
        raise ValueError("mae needs two non-empty arrays of the same length")
    return float(np.mean(np.abs(predicted - actual)))


def _users(recommended: Recs, relevant: Relevant) -> list[int]:
    users = [u for u, items in relevant.items() if items]
    if not users:
        raise ValueError("no user has a relevant item in the test set")
    return users


def precision_at_k(recommended: Recs, relevant: Relevant, k: int) -> float:
    users = _users(recommended, relevant)
    return float(np.mean([
        len(set(list(recommended.get(u, ()))[:k]) & relevant[u]) / k for u in users]))


def recall_at_k(recommended: Recs, relevant: Relevant, k: int) -> float:
    users = _users(recommended, relevant)
    return float(np.mean([
        len(set(list(recommended.get(u, ()))[:k]) & relevant[u]) / len(relevant[u])
        for u in users]))


def ndcg_at_k(recommended: Recs, relevant: Relevant, k: int) -> float:
    """Binary-relevance NDCG: DCG = sum 1/log2(rank + 1) over relevant hits."""
    users = _users(recommended, relevant)
    scores = []
    for u in users:
        hits = [1.0 if item in relevant[u] else 0.0 for item in list(recommended.get(u, ()))[:k]]
        dcg = sum(h / math.log2(i + 2) for i, h in enumerate(hits))
        ideal = sum(1 / math.log2(i + 2) for i in range(min(k, len(relevant[u]))))
        scores.append(dcg / ideal)
    return float(np.mean(scores))


def map_at_k(recommended: Recs, relevant: Relevant, k: int) -> float:
    """Mean average precision: AP@k = sum(precision@i at each hit i) / min(k, |relevant|)."""
    users = _users(recommended, relevant)
    scores = []
    for u in users:
        hits, total = 0, 0.0
        for i, item in enumerate(list(recommended.get(u, ()))[:k]):
            if item in relevant[u]:
                hits += 1
                total += hits / (i + 1)
        scores.append(total / min(k, len(relevant[u])))
    return float(np.mean(scores))


def coverage(recommended: Recs, catalogue_size: int, k: int) -> float:
    shown = {item for items in recommended.values() for item in list(items)[:k]}
    return len(shown) / catalogue_size


def novelty(recommended: Recs, item_users: Mapping[int, int], n_users: int, k: int) -> float:
    """Mean -log2(share of training users who rated the item) over all recommendations."""
    values = [
        -math.log2(max(item_users.get(item, 0), 1) / n_users)
        for items in recommended.values() for item in list(items)[:k]
    ]
    return float(np.mean(values)) if values else 0.0


def popularity_bias(recommended: Recs, relevant: Relevant, item_users: Mapping[int, int],
                    k: int) -> float:
    """Mean popularity of recommended items / mean popularity of the items users liked."""
    shown = [item_users.get(i, 0) for items in recommended.values() for i in list(items)[:k]]
    liked = [item_users.get(i, 0) for items in relevant.values() for i in items]
    if not shown or not liked or np.mean(liked) == 0:
        return float("nan")
    return float(np.mean(shown) / np.mean(liked))


def ranking_report(recommended: Recs, relevant: Relevant, *, k: int, catalogue_size: int,
                   item_users: Mapping[int, int], n_users: int) -> dict[str, float]:
    """Every ranking metric at once, named as logged to MLflow."""
    return {
        f"precision_at_{k}": precision_at_k(recommended, relevant, k),
        f"recall_at_{k}": recall_at_k(recommended, relevant, k),
        f"ndcg_at_{k}": ndcg_at_k(recommended, relevant, k),
        f"map_at_{k}": map_at_k(recommended, relevant, k),
        f"coverage_at_{k}": coverage(recommended, catalogue_size, k),
        f"novelty_at_{k}": novelty(recommended, item_users, n_users, k),
        f"popularity_bias_at_{k}": popularity_bias(recommended, relevant, item_users, k),
    }
