"""Folding viewers in against the published movie factors (moviesforyou.foldin)."""

from __future__ import annotations

import numpy as np
import psycopg2.extras
import pytest

from conftest import query
from moviesforyou import foldin, warehouse
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
            cur.execute(db.FOLD_IN_MOVIES)
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
