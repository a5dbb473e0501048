"""The NumPy model families (spark_jobs.families) and a champion of theirs, published.

EASE as a factor model must be EASE exactly; BPMF must predict the real ml-100k
better than the biases it starts from; and a champion with a BPMF rating model and
an EASE list model must publish, answer ``recs.predict_rating`` and
``recs.recommend`` in SQL, and fold a newcomer in as the nightly run would.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import psycopg2.extras
import pytest

from conftest import QUICK_MODELS, modelled_warehouse, query
from moviesforyou.foundation import foldin, warehouse
from serving import db
from spark_jobs import families, metrics, registry
from spark_jobs.models import ITEM, RATING, USER, Biases, ModelParams, factor_scorer

EASE = ModelParams(family="ease", reg_param=200.0, rank=0, implicit=True)
BPMF = ModelParams(family="bpmf", rank=5, max_iter=30)


def random_ratings(seed: int = 3, users: int = 60, movies: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rated = rng.random((users, movies)) < 0.3
    u, m = np.nonzero(rated)
    return pd.DataFrame({USER: u + 1, ITEM: m + 101,
                         RATING: rng.integers(1, 11, size=len(u)) / 2.0})


def test_ease_as_factors_is_ease_exactly():
    """Scores of unrated movies from the eigen-form factors equal X B with
    B = I - P diag(1/diag P), P = (XᵀX + lambda I)⁻¹, the diagonal set to 0 (Steck 2019)."""
    ratings = random_ratings()
    model = families.fit_ease(ratings, EASE)
    x = np.zeros((60, 40))
    x[ratings[USER] - 1, ratings[ITEM] - 101] = ratings[RATING]
    p = np.linalg.inv(x.T @ x + EASE.reg_param * np.eye(40))
    b = -p / np.diag(p)
    np.fill_diagonal(b, 0.0)
    expected = x @ b
    got = model.user_factors @ model.item_factors.T
    unrated = x == 0
    assert np.allclose(got[unrated], expected[unrated], atol=1e-10)
    # a viewer's vector is their ratings times the fold weights over the movie vectors
    for user in (0, 17, 42):
        rows = np.nonzero(x[user])[0]
        vector = foldin.ease_user(model.item_factors[rows], model.fold_weights[rows],
                                  x[user, rows])
        assert np.allclose(vector, model.user_factors[user], atol=1e-10)


def test_the_randomized_decomposition_finds_the_leading_directions():
    """Above rank + oversampling, XᵀX's leading eigenpairs come from a randomized SVD:
    on ratings with a clear spectrum they match the exact ones."""
    from scipy import sparse

    rng = np.random.default_rng(5)
    dense = rng.normal(size=(400, 8)) @ rng.normal(size=(8, 300)) * 3 \
        + rng.normal(size=(400, 300)) * 0.1
    x = sparse.csr_matrix(dense)
    values, vectors = families._eigen(x, 8)
    exact = np.linalg.eigvalsh(dense.T @ dense)[::-1][:8]
    assert np.allclose(values, exact, rtol=1e-6)
    assert np.allclose(np.abs(vectors.T @ vectors), np.eye(8), atol=1e-8)


def test_the_coverage_floor_never_loses_the_lead_over_most_popular():
    from spark_jobs.tuning import pick_list_model

    wide = ModelParams(rank=50, implicit=True)  # covers the floor
    narrow = ModelParams(family="ease", reg_param=3200.0, rank=0, implicit=True)
    results = [(wide, 0.30), (narrow, 0.33)]
    assert pick_list_model(results, {wide}, popular=0.13) == wide  # the floor holds
    assert pick_list_model(results, {wide}, popular=0.31) == narrow  # wide lost to popular
    assert pick_list_model(results, set(), popular=0.13) == narrow  # none covers enough


def test_the_bpmf_cap_counts_all_ratings_not_the_evaluation_sample():
    """At 25M the evaluation sample's 1.6M training ratings once let BPMF in under its
    2M cap, and its final fit on all 25M ran for hours: the cap counts what the chosen
    model will be fitted on. (No evaluator: choosing must not fit anything here.)"""
    from spark_jobs.config import TrainConfig
    from spark_jobs.tuning import choose_rating_model

    config = TrainConfig(bpmf_max_ratings=2_000_000)
    tuned = ModelParams(rank=20, reg_param=0.1, max_iter=10)
    assert config.grid(implicit=False, family="bpmf")  # BPMF is in the default grid
    assert choose_rating_model(None, config, tuned, None, n_ratings=25_000_095) == (tuned, [])


def test_ease_refuses_more_than_its_size():
    with pytest.raises(ValueError, match="more than 10 of both"):
        families.fit_ease(random_ratings(), EASE, max_size=10)


def test_the_mean_of_the_samples_is_kept_exactly_at_full_rank():
    rng = np.random.default_rng(0)
    left, right = rng.normal(size=(30, 12)), rng.normal(size=(20, 12))
    a, b = families._mean_product(left, right, 12)
    assert np.allclose(a @ b.T, left @ right.T)
    a, b = families._mean_product(left, right, 4)  # truncated: the best rank-4 fit
    s = np.linalg.svd(left @ right.T, compute_uv=False)
    assert np.isclose(np.linalg.norm(left @ right.T - a @ b.T), np.sqrt((s[4:] ** 2).sum()))


def test_bpmf_beats_its_biases_on_the_real_ml100k(ml100k):
    """On u1 (80,000 ratings), a short chain at rank 10 already predicts u1.test better
    than the bias baseline, and the fold-in regularisation reproduces the model's
    predictions for its own users closely."""
    names = [USER, ITEM, RATING, "rated_at"]
    train = pd.read_csv(ml100k / "u1.base", sep="\t", names=names)
    test = pd.read_csv(ml100k / "u1.test", sep="\t", names=names)
    model = families.fit_bpmf(train, ModelParams(family="bpmf", rank=10, max_iter=60),
                              scale=(1.0, 5.0))
    bpmf = metrics.rmse(model.predict(test[USER], test[ITEM]), test[RATING])
    biases = metrics.rmse(np.clip(Biases.fit(train).predict(test[USER], test[ITEM]), 1, 5),
                          test[RATING])
    print(f"u1: BPMF rank 10, 60 sweeps {bpmf:.4f}; biases {biases:.4f}; fold-in reg "
          f"{model.fold_in_reg}")
    assert bpmf < biases - 0.03
    assert model.fold_in_reg in families.FOLD_IN_REGS
    # user 1 folded in from their own ratings, against the model's own prediction
    history = train[train[USER] == 1]
    rows = model.item_index.get_indexer(history[ITEM])
    base = model.biases.mu + model.biases.item.to_numpy()[
        model.biases.item.index.get_indexer(history[ITEM])]
    bias = (history[RATING] - base).sum() / (len(history) + foldin.BIAS_REG_USER)
    x = foldin.explicit_user(model.item_factors[rows], history[RATING].to_numpy() - base - bias,
                             model.fold_in_regularisation)
    own = model.user_factors[model.user_index.get_loc(1)]
    gap = np.abs((bias + model.item_factors @ x) - (model.biases.user[1]
                                                  + model.item_factors @ own))
    assert np.median(gap) < 0.15


@pytest.fixture(scope="module")
def families_published(embedded_settings, ml100k, spark, tmp_path_factory):
    """The real ml-100k with a champion of the NumPy families (BPMF ratings, EASE lists),
    trained on a seeded split and published."""
    from moviesforyou.orchestration import recs_publish
    from spark_jobs.config import TrainConfig
    from spark_jobs.train import train

    home = tmp_path_factory.mktemp("families-home")
    with modelled_warehouse(embedded_settings, ml100k, home) as settings:
        config = TrainConfig(**{**QUICK_MODELS, "explicit": BPMF, "implicit": EASE})
        result = train(settings, config, spark=spark)
        recs_publish.publish(settings, spark=spark)
        yield settings, result


def test_a_champion_of_the_numpy_families_publishes_and_serves(families_published):
    settings, result = families_published
    assert result.promoted and result.explicit.family == "bpmf"
    assert result.implicit.family == "ease"
    client = registry.configure(settings)
    version = client.get_model_version(registry.model_name(settings), result.version)
    assert version.tags["mfy.families"] == "ratings bpmf, lists ease"
    assert registry.families(settings, [result.version]) == {
        result.version: "ratings bpmf, lists ease"}

    connection = warehouse.connect(settings)
    try:
        (rating_family, list_family, reg), = query(connection, """
            select rating_family, list_family, explicit_reg_param from recs.publication""")
        assert (rating_family, list_family) == ("bpmf", "ease")
        assert reg in families.FOLD_IN_REGS
        # the SQL prediction is the model's: biases plus the compressed mean of the samples
        from spark_jobs.models import load_factors

        explicit, implicit = load_factors(registry.export_champion(settings))
        pairs = [(1, 50), (13, 181), (405, 1)]
        for user, movie in pairs:
            (sql_value,), = query(connection, "select recs.predict_rating(%s, %s)", (user, movie))
            assert sql_value == pytest.approx(float(explicit.predict([user], [movie])[0]),
                                              abs=1e-9)
        # the stored list is EASE's top 50 of the movies user 1 has not rated
        stored = [m for (m,) in query(connection, """
            select movie_id from recs.user_recommendations where user_id = 1 order by rank""")]
        seen = {m for (m,) in query(connection, "select movie_id from marts.fct_ratings "
                                                "where user_id = 1")}
        scores = factor_scorer(implicit, implicit.item_ids)(np.array([1]))[0]
        scores[np.isin(implicit.item_ids, list(seen))] = -np.inf
        assert stored[:10] == [int(m) for m in implicit.item_ids[np.argsort(-scores)[:10]]]
        # recs.recommend tops a list up from the EASE factors when genres are excluded
        rows = query(connection, "select movie_id, genres from recs.recommend(1, 60, "
                                 "array['Drama', 'Comedy'])")
        assert len(rows) == 60 and not any({"Drama", "Comedy"} & set(g) for _, g in rows)

        # a viewer folded in gets EASE's list for their ratings, no solve
        with connection.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(db.FOLD_IN_SETTINGS)
            live = cur.fetchone()
            cur.execute(db.FOLD_IN_MOVIES.replace("$1", "%s"), ("champion",))
            model = foldin.Model.from_rows(cur.fetchall(), live)
        assert model.list_family == "ease"
        history = query(connection, "select movie_id, rating::float8 from marts.fct_ratings "
                                    "where user_id = 1")
        viewer = model.fold_in([m for m, _ in history], [r for _, r in history])
        top = [int(model.movie_ids[i]) for i in model.top(viewer, [m for m, _ in history], 10)]
        assert top == stored[:10]
        (stored_vector,), = query(connection, "select implicit_factors from recs.user_factors "
                                              "where user_id = 1")
        assert np.allclose(viewer.factors, stored_vector, rtol=1e-9, atol=1e-12)
    finally:
        connection.close()


def test_a_refresh_of_a_numpy_family_champion_folds_the_new_ratings_in(families_published):
    """A refresh re-solves the touched users as the API would: EASE's linear fold-in
    and BPMF's calibrated explicit step, the movie side unchanged."""
    from spark_jobs.models import load_factors
    from spark_jobs.refresh import resolve_users

    settings, _ = families_published
    explicit, implicit = load_factors(registry.export_champion(settings))
    history = pd.DataFrame({USER: [1, 1, 1], ITEM: [50, 181, 1], RATING: [5.0, 4.0, 1.0]})
    new_explicit, new_implicit = resolve_users(explicit, implicit, history)
    rows = implicit.item_index.get_indexer(history[ITEM])
    expected = foldin.ease_user(implicit.item_factors[rows], implicit.fold_weights[rows],
                                history[RATING].to_numpy())
    assert np.allclose(new_implicit.user_factors[new_implicit.user_index.get_loc(1)], expected)
    assert np.array_equal(new_implicit.item_factors, implicit.item_factors)
    untouched = new_explicit.user_index.get_loc(2)
    assert np.array_equal(new_explicit.user_factors[untouched],
                          explicit.user_factors[explicit.user_index.get_loc(2)])
    assert dataclasses.replace(new_explicit.params) == explicit.params
