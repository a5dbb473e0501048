"""Metrics checked by hand on tiny inputs."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from spark_jobs import metrics
from spark_jobs.models import Biases, Factors, ModelParams, factor_scorer, top_k

# user 1 liked a, c; user 2 liked b; user 3 liked nothing in the test (skipped)
RECS = {1: ["a", "b", "c"], 2: ["c", "d", "b"], 3: ["a"]}
RELEVANT = {1: {"a", "c"}, 2: {"b"}, 3: set()}


def test_rating_errors():
    assert metrics.rmse([3, 4, 5], [3, 2, 4]) == pytest.approx(math.sqrt((0 + 4 + 1) / 3))
    assert metrics.mae([3, 4, 5], [3, 2, 4]) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        metrics.rmse([], [])


def test_precision_and_recall_at_k():
    # user 1: hits a (1), c (3) -> p@2 = 1/2, r@2 = 1/2; user 2: hit b at 3 -> p@2 = 0, r@2 = 0
    assert metrics.precision_at_k(RECS, RELEVANT, 2) == pytest.approx((0.5 + 0.0) / 2)
    assert metrics.recall_at_k(RECS, RELEVANT, 2) == pytest.approx((0.5 + 0.0) / 2)
    assert metrics.recall_at_k(RECS, RELEVANT, 3) == pytest.approx((1.0 + 1.0) / 2)


def test_ndcg_at_k():
    # user 1: DCG = 1/log2(2) + 1/log2(4) = 1.5, IDCG = 1 + 1/log2(3)
    # user 2: DCG = 1/log2(4) = 0.5, IDCG = 1
    u1 = 1.5 / (1 + 1 / math.log2(3))
    assert metrics.ndcg_at_k(RECS, RELEVANT, 3) == pytest.approx((u1 + 0.5) / 2)


def test_map_at_k():
    # user 1: hits at 1 and 3 -> (1/1 + 2/3) / min(3, 2); user 2: hit at 3 -> (1/3) / 1
    assert metrics.map_at_k(RECS, RELEVANT, 3) == pytest.approx(((1 + 2 / 3) / 2 + 1 / 3) / 2)


def test_coverage_novelty_popularity():
    assert metrics.coverage(RECS, catalogue_size=8, k=2) == pytest.approx(4 / 8)  # a b c d
    item_users = {"a": 4, "b": 2, "c": 1, "d": 1}
    # k=1: a, c, a over 4 users -> -log2(4/4), -log2(1/4), -log2(4/4)
    assert metrics.novelty(RECS, item_users, n_users=4, k=1) == pytest.approx(2 / 3)
    # shown a, c, a -> mean 3; liked a, c, b -> mean 7/3
    assert metrics.popularity_bias(RECS, RELEVANT, item_users, k=1) == pytest.approx(3 / (7 / 3))


def test_no_relevant_item_at_all_is_an_error():
    with pytest.raises(ValueError, match="no user has a relevant item"):
        metrics.ndcg_at_k(RECS, {1: set()}, 3)


def test_top_k_excludes_seen_and_unscorable_items():
    items = np.array([10, 20, 30, 40])
    scores = lambda users: np.array([[4.0, 3.0, 2.0, -np.inf]] * len(users))  # noqa: E731

    recs = top_k(scores, np.array([1, 2]), items, {1: np.array([10])}, k=3)

    assert recs == {1: [20, 30], 2: [10, 20, 30]}


def test_top_k_matches_a_sort_of_every_row_across_batches():
    """The vectorised masking and partial sort against a full sort, user by user: batches
    that do not divide the users, seen items outside the catalogue, users who saw
    nothing, unscorable items and more candidates asked for than some users have."""
    rng = np.random.default_rng(3)
    items = rng.choice(np.arange(1000, 5000), size=300, replace=False)
    users = np.arange(1, 58)
    table = rng.normal(size=(len(users) + 1, len(items)))  # no ties
    table[:, 7] = -np.inf
    seen = {int(u): rng.choice(np.r_[items, [1, 2, 3]], size=rng.integers(0, 296),
                               replace=False) for u in users if u % 5}

    recs = top_k(lambda batch: table[batch], users, items, seen, k=10, batch=16)

    for user in users:
        left = [(-table[user, j], items[j]) for j in range(len(items))
                if items[j] not in set(seen.get(int(user), ())) and np.isfinite(table[user, j])]
        assert recs[int(user)] == [int(item) for _, item in sorted(left)[:10]], user


def test_the_nightly_scorer_matches_a_sort_of_every_user():
    """spark_jobs.score's mapInPandas function against a full sort, user by user: users
    the model knows (their implicit scores) and does not know (popularity), catalogue
    movies without factors, seen movies outside the catalogue, batches that do not
    divide the users, and users who saw nearly everything."""
    from spark_jobs.score import ScoreConfig, user_scorer

    rng = np.random.default_rng(5)
    movies = np.sort(rng.choice(np.arange(1, 900), size=120, replace=False))
    known_users = np.arange(1, 41)
    implicit = Factors(ModelParams(rank=4, implicit=True), known_users,
                       rng.normal(size=(40, 4)), movies[:-3], rng.normal(size=(117, 4)))
    explicit = Factors(ModelParams(rank=2), known_users, rng.normal(size=(40, 2)),
                       movies, rng.normal(size=(120, 2)))
    popularity = pd.Series(rng.permutation(120) + 1.0, index=movies)  # no ties
    users = np.r_[known_users, [500, 501]]  # two the model does not know
    seen = [rng.choice(np.r_[movies, [5000]], size=rng.integers(0, 60), replace=False)
            for _ in users]
    seen[3] = movies[:-2]  # what is left has no factors: an empty list
    frame = pd.DataFrame({"user_id": users, "seen": seen})

    out = pd.concat(user_scorer(implicit, explicit, popularity,
                                ScoreConfig(n=7, batch=9))(iter([frame])))

    for row, user in enumerate(users):
        given = out[out["user_id"] == user].sort_values("rank")
        if user in known_users:
            mine = implicit.user_factors[user - 1]
            scores = {m: float(implicit.item_factors[j] @ mine)
                      for j, m in enumerate(implicit.item_ids)}
            source = "als"
        else:
            scores, source = popularity.to_dict(), "popular"
        left = sorted((-v, m) for m, v in scores.items() if m not in set(seen[row]))
        assert given["movie_id"].tolist() == [m for _, m in left[:7]], user
        assert given["rank"].tolist() == list(range(1, len(given) + 1))
        assert given["score"].to_numpy() == pytest.approx([-v for v, _ in left[:7]])
        assert set(given["source"]) <= {source}
        assert given["predicted_rating"].to_numpy() == pytest.approx(
            explicit.predict(np.full(len(given), user), given["movie_id"].to_numpy()))


def test_factor_scorer_follows_the_catalogue_order():
    factors = Factors(ModelParams(rank=1), np.array([1]), np.array([[1.0]]),
                      np.array([7, 8]), np.array([[2.0], [5.0]]))

    scores = factor_scorer(factors, np.array([8, 9, 7]))(np.array([1, 99]))

    assert scores.tolist() == [[5.0, -np.inf, 2.0], [0.0, -np.inf, 0.0]]


def test_biases_by_hand():
    ratings = pd.DataFrame({"user_id": [1, 1, 2], "movie_id": [1, 2, 1],
                            "rating": [5.0, 3.0, 4.0]})
    b = Biases.fit(ratings, reg_user=0.0, reg_item=0.0, iterations=50)
    # no regularisation: the fit reproduces every training rating
    assert b.predict([1, 1, 2], [1, 2, 1]) == pytest.approx([5.0, 3.0, 4.0], abs=1e-3)
    assert b.mu == pytest.approx(4.0)


def _histories(per_user: list[int]) -> pd.DataFrame:
    rows = [(user, movie, 4.0, 1_000 * user + movie)
            for user, count in enumerate(per_user, start=1) for movie in range(count)]
    return pd.DataFrame(rows, columns=["user_id", "movie_id", "rating", "rated_at"])


@pytest.mark.parametrize(("per_user", "expected"), [
    ([40] * 30, "latest 10 per user"),     # long histories: the configured ten
    ([10] * 300, "latest 5 per user"),     # every user with ten ratings (a young service)
    ([3] * 50, "latest 1 per user"),
    ([40] * 5 + [2] * 100, "latest 1 per user"),  # few long histories do not count alone
])
def test_the_ranking_holdout_follows_the_histories(per_user, expected):
    from spark_jobs.splitters import ranking_holdout

    ratings = _histories(per_user)
    train, test, protocol = ranking_holdout(ratings, 10)
    assert protocol == expected
    n = int(expected.split()[1])
    held = test.groupby("user_id").size()
    assert (held == n).all() and len(held) >= min(20, len(per_user))
    # each user's held-out ratings are their latest
    latest = train.groupby("user_id")["rated_at"].max()
    assert (test.groupby("user_id")["rated_at"].min() > latest[held.index]).all()


def test_histories_too_short_for_a_per_user_holdout_split_by_time():
    from spark_jobs.splitters import ranking_holdout

    ratings = _histories([1] * 200)  # one rating each: nobody can keep one back
    ratings["user_id"] = ratings.index % 190 + 1  # ten users with two, too few
    train, test, protocol = ranking_holdout(ratings, 10)
    assert protocol.startswith("latest 10% of ratings by time")
    assert test["rated_at"].min() >= train["rated_at"].max()
    assert set(test["user_id"]) <= set(train["user_id"])
    assert 0 < len(test) <= 20
