"""Folding viewers in against the published movie factors (moviesforyou.foundation.foldin)."""

from __future__ import annotations

import numpy as np
import psycopg2.extras
import pytest

from conftest import query
from moviesforyou.foundation import foldin, warehouse
from serving import db

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_folding_in_a_known_user_gives_back_their_nightly_list(published):
    """With the movie factors fixed, the ALS user step on a user's own training
    ratings gives the factors Spark's last iteration gave them: the same top 10 and the
    same predicted ratings, up to Spark's single precision."""
    connection = warehouse.connect(published)
    try:
        with connection.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(db.FOLD_IN_SETTINGS)
            live = cur.fetchone()
            cur.execute(db.FOLD_IN_MOVIES.replace("$1", "%s"), ("champion",))
            model = foldin.Model.from_rows(cur.fetchall(), live)
        assert model is not None
        users = [u for (u,) in query(connection, """
            select user_id from recs.user_factors where implicit_factors is not null
            order by hashtext(user_id::text) limit 200""")]
        overlaps, factor_gaps, rating_gaps = [], [], []
        for user in users:
            history = query(connection, """
                select movie_id, rating::float8 from marts.fct_ratings
                where user_id = %s and dataset = %s""", (user, published.dataset))
            nightly = query(connection, """
                select movie_id, predicted_rating from recs.user_recommendations
                where user_id = %s and source = 'als' order by rank limit 10""", (user,))
            (stored,), = query(connection, "select implicit_factors from recs.user_factors "
                                           "where user_id = %s", (user,))
            rated = [m for m, _ in history]
            viewer = model.fold_in(rated, [r for _, r in history])
            top = {int(model.movie_ids[i]) for i in model.top(viewer, rated, 10)}
            overlaps.append(len(top & {m for m, _ in nightly}) / len(nightly))
            factor_gaps.append(np.abs(viewer.factors - np.array(stored)).max()
                               / np.abs(np.array(stored)).max())
            rows = model.rows([m for m, _ in nightly])
            rating_gaps.extend(np.abs(viewer.predicted[rows] - [p for _, p in nightly]))
    finally:
        connection.close()
    print(f"fold-in vs nightly on {len(users)} users: top-10 overlap "
          f"{np.mean(overlaps):.3f} (min {min(overlaps):.1f}), largest relative factor gap "
          f"{max(factor_gaps):.2e}, largest predicted-rating gap {max(rating_gaps):.3f}")
    assert np.mean(overlaps) >= 0.95 and max(factor_gaps) < 0.05
    assert max(rating_gaps) < 0.05


def test_the_user_step_solves_the_implicit_normal_equations():
    """The solve against a brute-force minimum of the implicit objective (Hu, Koren and
    Volinsky, with Spark's ALS-WR scaling of the regularisation by the rating count)."""
    rng = np.random.default_rng(7)
    items = rng.normal(size=(40, 5))
    rated = np.array([3, 7, 11, 20])
    stars = np.array([5.0, 4.0, 1.0, 3.5])
    reg, alpha = 0.3, 2.0
    x = foldin.implicit_user(items[rated], foldin.gram(items), stars, reg, alpha)

    def loss(v):
        preference = np.zeros(40)
        preference[rated] = 1.0
        confidence = np.ones(40)
        confidence[rated] += alpha * stars
        return (confidence * (preference - items @ v) ** 2).sum() + reg * len(rated) * v @ v

    gradient = np.array([(loss(x + e) - loss(x - e)) / 2e-6 for e in np.eye(5) * 1e-6])
    assert np.abs(gradient).max() < 1e-4
    assert all(loss(x) < loss(x + rng.normal(scale=0.01, size=5)) for _ in range(20))


def test_best_keeps_a_full_sort_s_order_with_ties_and_unscorable_rows():
    """Model.best sorts only the candidates at or above the k-th score: the same rows, in
    the same order (ties by movie id), as a stable sort of every row."""
    rng = np.random.default_rng(11)
    movies = np.arange(10, 410)
    model = foldin.Model(movie_ids=movies, movie_bias=np.zeros(400),
                         explicit=np.zeros((400, 2)), implicit=rng.normal(size=(400, 3)),
                         global_mean=3.5, scale=(0.5, 5.0), explicit_reg=0.1,
                         implicit_reg=0.1, alpha=1.0)
    scores = rng.integers(0, 30, size=400).astype(float)  # many ties
    scores[rng.choice(400, 50, replace=False)] = -np.inf
    seen = rng.choice(np.r_[movies, [5, 6]], 40, replace=False)
    skip = rng.random(400) < 0.2
    for k in (0, 1, 7, 100, 400, 1000):
        masked = scores.copy()
        masked[np.isin(movies, seen) | skip] = -np.inf
        full = np.argsort(-masked, kind="stable")[:k]
        assert model.best(scores, seen, k, skip).tolist() == \
            full[np.isfinite(masked[full])].tolist(), k
