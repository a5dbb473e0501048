"""Releases of the shapes a team tries first publish too: a young service whose every
viewer has ten ratings, and a small sample of ratings over a whole catalogue.

Seeded synthetic releases in the GroupLens layouts run the whole nightly DAG through
publish on a warehouse of their own (the thresholds follow the data: the evaluation
holdout, the top-movies list, the similar-films floor), down to the documented floor of
1,000 ratings from 20 users, in a CSV release without its optional tags and links. A
holdout that thin publishes the first model with the gate's warning.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from conftest import QUICK_TRAIN, fresh_database, query, temporary_environment
from moviesforyou.foundation import warehouse
from moviesforyou.ingestion import synth
from spark_jobs import registry

pytestmark = [pytest.mark.integration, pytest.mark.spark, pytest.mark.slow]


def every_user_with_ten(folder: Path, users: int = 600, movies: int = 900) -> Path:
    """An ml-1m-layout release whose every user has exactly ten ratings, each of ten
    popular-ish movies (Zipf), at increasing times."""
    release = folder / "ml-1m"
    synth.generate(release, synth.SynthSpec(n_ratings=users * 10, n_users=users,
                                            n_movies=movies, seed=21), layout="1m")
    rng = np.random.default_rng(21)
    weights = 1 / np.arange(1, movies + 1) ** 0.9
    lines = []
    for user in range(1, users + 1):
        chosen = rng.choice(np.arange(1, movies + 1), size=10, replace=False,
                            p=weights / weights.sum())
        start = 978_300_000 + user * 3_600
        lines += [f"{user}::{movie}::{rng.integers(1, 6)}::{start + i * 60}"
                  for i, movie in enumerate(chosen)]
    (release / "ratings.dat").write_text("\n".join(lines) + "\n", encoding="latin-1")
    return release


def a_sample_over_a_big_catalogue(folder: Path) -> Path:
    """A CSV release: 9,999 ratings of 75 users over a 60,000-film movies.csv."""
    release = folder / "ml-25m"
    synth.generate(release, synth.SynthSpec(n_ratings=9_999, n_users=75, n_movies=60_000,
                                            seed=22), layout="csv")
    return release


def the_least_that_publishes(folder: Path) -> Path:
    """A CSV release at the documented floor, 1,000 ratings from 20 users, without its
    optional tags.csv and links.csv."""
    release = folder / "ml-latest-small"
    synth.generate(release, synth.SynthSpec(n_ratings=1_000, n_users=20, n_movies=400,
                                            seed=23), layout="csv")
    for optional in ("tags.csv", "links.csv"):
        (release / optional).unlink()
    return release


SHAPES = {"ml-sparse": every_user_with_ten, "ml-bigcat": a_sample_over_a_big_catalogue,
          "ml-tiny": the_least_that_publishes}
#: The evaluation protocol each shape gets: ten ratings each leave five to hold out.
PROTOCOL = {"ml-sparse": "latest 5 per user", "ml-bigcat": "per user", "ml-tiny": "per user"}
#: Shapes whose holdout is too thin for the gate to judge: they publish with a warning.
THIN = {"ml-tiny"}


@pytest.fixture(scope="module")
def shapes(airflow_db, embedded_settings, spark):
    from airflow.dag_processing.dagbag import DagBag

    from conftest import ROOT

    folder = Path(tempfile.mkdtemp(prefix="mfy-shapes-"))
    folder.chmod(0o755)
    made = {}
    for name, make in SHAPES.items():
        (folder / name).mkdir()
        made[name] = make(folder / name)
    dag = DagBag(dag_folder=str(ROOT / "dags" / "movielens_nightly.py")).dags[
        "movielens_nightly"]
    for task in dag.tasks:
        task.retries = 0
    with fresh_database(embedded_settings) as settings:
        yield dataclasses.replace(settings, home=folder / "home"), dag, made
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_a_release_of_this_shape_runs_the_whole_dag_and_goes_live(shapes, shape):
    settings, dag, made = shapes
    env = {"MFY_HOME": str(settings.home), "AIRFLOW_CONN_MFY_WAREHOUSE": settings.warehouse_url,
           "AIRFLOW_VAR_MFY_DATASET": shape, "AIRFLOW_VAR_MFY_SOURCE": str(made[shape])}
    with temporary_environment(env):
        run = dag.test(run_conf={"train": QUICK_TRAIN})
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert run.state == "success", states
    connection = warehouse.connect(settings)
    try:
        assert query(connection, "select dataset from recs.publication") == [(shape,)]
        (users, recommended), = query(connection, """
            select (select count(distinct user_id) from raw.ratings where dataset = %s),
                   (select count(distinct user_id) from recs.user_recommendations)""",
                                      (shape,))
        assert recommended == users
        assert query(connection, "select count(*) > 0 from marts.mart_top_movies") == [(True,)]
        (split,), = query(connection, """
            select metrics from ops.pipeline_runs where run_id = %s""", (run.run_id,))
        assert split["model"], split  # the model was evaluated on a holdout
        (warnings, note), = query(connection, """
            select warnings, note from ops.pipeline_runs where run_id = %s""", (run.run_id,))
        (warning,), = query(connection, "select warning from ops.model_promotions "
                                        "where dataset = %s", (shape,))
        if shape == "ml-tiny":  # optional files absent: those features off, and said so
            (features, files), = query(connection, """
                select features, files from ops.source_loads
                where dataset = %s and status = 'loaded'""", (shape,))
            assert features == {"layout": "csv", "demographics": False, "half_stars": True,
                                "tags": False, "links": False}
            assert set(files) == {"ratings.csv", "movies.csv"}
            (counts,), = query(connection, "select row_counts from ops.pipeline_runs "
                                           "where run_id = %s", (run.run_id,))
            assert counts["features"] == features
            assert counts["raw"]["tags"] == counts["raw"]["links"] == 0
            assert query(connection, "select count(imdb_url) from marts.dim_movies "
                                     "where dataset = %s", (shape,)) == [(0,)]
        if shape in THIN:  # said in the run summary, its note and the gate's ledger
            assert len(warnings) == 1 and "too thin to judge" in warnings[0], warnings
            assert f"warning: {warnings[0]}" in note and warning == warnings[0]
        else:
            assert warnings == [] and warning is None, warnings
    finally:
        connection.close()
    # MLflow records which holdout the figures come from
    client = registry.configure(settings)
    champion = registry.current_champion(settings, client)
    split = client.get_run(champion.run_id).data.params["split"]
    assert PROTOCOL[shape] in split, split
