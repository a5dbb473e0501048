"""Training on a real sample: real Spark, a real MLflow store, the real warehouse."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import shutil
from importlib import metadata

import mlflow
import pandas as pd
import pytest

from conftest import modelled_warehouse, query
from moviesforyou.foundation import warehouse
from moviesforyou.orchestration import ledger, training
from spark_jobs import registry
from spark_jobs.config import TrainConfig, TrainingError
from spark_jobs.models import ModelParams
from spark_jobs.snapshot import SnapshotError, load_snapshot
from spark_jobs.splitters import official_folds
from spark_jobs.train import train

pytestmark = [pytest.mark.integration, pytest.mark.spark, pytest.mark.slow]

SMALL = dict(explicit_grid={"rank": [5, 10], "reg_param": [0.1], "max_iter": [5]},
             implicit_grid={"rank": [10], "reg_param": [0.1], "alpha": [1.0, 4.0],
                            "max_iter": [5]},
             bpmf_grid={}, ease_grid={})
# worse: an overfitting explicit model (big rank, no regularisation) and a rank-1 ranker
WORSE = (ModelParams(rank=30, reg_param=0.001, max_iter=5),
         ModelParams(rank=1, reg_param=5.0, max_iter=1, implicit=True))
BETTER = (ModelParams(rank=5, reg_param=1.0, max_iter=5),
          ModelParams(rank=20, reg_param=0.1, max_iter=8, implicit=True, alpha=4.0))


@pytest.fixture(scope="module")
def sample_warehouse(embedded_settings, ml100k, tmp_path_factory):
    """The real ml-100k restricted to its first 300 users, ingested and modelled."""
    folder = tmp_path_factory.mktemp("ml-100k-sample")
    for name in ("u.item", "u.user", "u.genre", "u.occupation"):
        shutil.copy(ml100k / name, folder / name)
    lines = (ml100k / "u.data").read_text().splitlines()
    (folder / "u.data").write_text(
        "\n".join(x for x in lines if int(x.split("\t")[0]) <= 300) + "\n")
    with modelled_warehouse(embedded_settings, folder, tmp_path_factory.mktemp("home")) as s:
        yield s


def test_pyspark_install_is_whole():
    """No other package (pyspark-client) has replaced pyspark's Python files."""
    from spark_jobs.session import check_pyspark_install

    check_pyspark_install()
    assert "pyspark-client" not in {d.metadata["Name"] for d in metadata.distributions()}


def test_an_overwritten_pyspark_file_is_named(tmp_path):
    from spark_jobs.session import BrokenPySparkInstall, check_pyspark_install

    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text("VERSION = '4.3.0'\n")
    info = tmp_path / "pkg-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: pkg\nVersion: 1.0\n")
    digest = base64.urlsafe_b64encode(hashlib.sha256(b"VERSION = '4.3.0'\n").digest())
    (info / "RECORD").write_text(f"pkg/mod.py,sha256={digest.rstrip(b'=').decode()},18\n")
    dist = metadata.PathDistribution(info)
    check_pyspark_install(dist)  # intact

    (tmp_path / "pkg" / "mod.py").write_text("VERSION = '4.2.0'\n")
    with pytest.raises(BrokenPySparkInstall, match=r"pkg 1.0: 1 of its Python files .*pkg/mod.py"):
        check_pyspark_install(dist)


def config(pair=None, **kwargs) -> TrainConfig:
    explicit, implicit = pair or (None, None)
    return TrainConfig(explicit=explicit, implicit=implicit, holdout_per_user=5, **SMALL,
                       **kwargs)


def test_tuned_run_is_fully_tracked(sample_warehouse, spark, tmp_path):
    settings = dataclasses.replace(sample_warehouse, home=tmp_path)

    # tuning on a user sample of about 12,000 of the ~30,000 training ratings, as at scale
    result = train(settings, config(tune_max_ratings=12_000), spark=spark)

    client = mlflow.MlflowClient()
    run = client.get_run(result.run_id)
    # snapshot identity as a dataset input and as parameters
    assert run.inputs.dataset_inputs[0].dataset.digest == result.snapshot.digest
    assert run.data.params["snapshot_rows"] == str(result.snapshot.rows)
    assert run.data.tags["mfy.dataset"] == "ml-100k"
    assert run.data.tags["mfy.git_commit"]
    # every metric the issue names, on every run
    for name in ("rmse", "mae", "precision_at_10", "recall_at_10", "ndcg_at_10", "map_at_10",
                 "coverage_at_10", "novelty_at_10", "popularity_bias_at_10"):
        assert name in run.data.metrics, name
    # each phase's time, the parts of train_seconds
    phases = [run.data.metrics[f"{p}_seconds"] for p in ("tune", "evaluate", "fit", "register")]
    assert all(s > 0 for s in phases), phases
    assert sum(phases) <= run.data.metrics["train_seconds"]
    # the tuning grid as nested runs: 2 explicit points, 2 implicit points
    children = client.search_runs(
        [run.info.experiment_id], f"tags.mlflow.parentRunId = '{result.run_id}'")
    assert len(children) == 4
    tuned_on = [int(child.data.params["tuned_on_ratings"]) for child in children]
    assert all(6_000 < n < 18_000 for n in tuned_on), tuned_on
    assert run.data.params["tune_max_ratings"] == "12000"
    # baselines: their own runs in the same experiment, linked to this one
    baselines = client.search_runs(
        [run.info.experiment_id], f"tags.`mfy.parent_run_id` = '{result.run_id}'")
    assert {r.data.params["baseline"] for r in baselines} == {
        "global mean", "user and item biases", "most popular"}
    popular = next(r for r in baselines if r.data.params["baseline"] == "most popular")
    assert result.metrics["ndcg_at_10"] > popular.data.metrics["ndcg_at_10"]
    # plots
    artifacts = {a.path for a in client.list_artifacts(result.run_id, "plots")}
    assert artifacts == {"plots/tuning.png", "plots/predicted_vs_actual.png",
                         "plots/model_vs_baselines.png"}
    # the registered model predicts through pyfunc, without Spark
    model = mlflow.pyfunc.load_model(f"models:/{registry.model_name(settings)}@champion")
    out = model.predict(pd.DataFrame({"user_id": [1, 1, 99999], "movie_id": [1, 50, 1]}))
    assert list(out.columns) == ["predicted_rating", "ranking_score"]
    assert out["predicted_rating"].between(1, 5).all()
    assert out["ranking_score"].iloc[2] == 0.0  # unknown user


def test_gate_history_and_rollback(sample_warehouse, spark, tmp_path):
    settings = dataclasses.replace(sample_warehouse, home=tmp_path)
    conn = warehouse.connect(settings)
    (since,) = query(conn, "select coalesce(max(promotion_id), 0) from ops.model_promotions")[0]
    conn.close()

    first = training.train_and_gate(settings, config(WORSE), spark=spark)
    better = training.train_and_gate(settings, config(BETTER), spark=spark)
    worse = training.train_and_gate(settings, config(WORSE), spark=spark)

    assert (first.promoted, first.reason) == (True, "no champion yet")
    assert better.promoted, better.reason
    assert not worse.promoted
    assert worse.reason.startswith("challenger ranks no better")
    client = mlflow.MlflowClient()
    name = registry.model_name(settings)
    assert str(client.get_model_version_by_alias(name, "champion").version) == better.version
    assert str(client.get_model_version_by_alias(name, "challenger").version) == worse.version
    tags = client.get_model_version(name, worse.version).tags
    assert tags["mfy.gate"] == "rejected"
    assert float(tags["mfy.metric.ndcg_at_10"]) == pytest.approx(worse.metrics["ndcg_at_10"],
                                                                 abs=1e-6)

    replaced = training.rollback(settings, first.version, reason="test rollback")

    assert replaced == better.version
    assert str(client.get_model_version_by_alias(name, "champion").version) == first.version
    conn = warehouse.connect(settings)
    rows = query(conn, "select action, challenger_version, champion_version_before, "
                       "champion_version_after, promoted from ops.model_promotions "
                       "where promotion_id > %s order by promotion_id", (since,))
    metrics = query(conn, "select metrics from ops.model_promotions where promotion_id > %s "
                          "and challenger_version = %s", (since, worse.version))[0][0]
    conn.close()
    assert rows == [
        ("gate", first.version, None, first.version, True),
        ("gate", better.version, first.version, better.version, True),
        ("gate", worse.version, better.version, better.version, False),
        ("rollback", None, better.version, first.version, True),
    ]
    assert metrics["champion"]["ndcg_at_10"] > metrics["challenger"]["ndcg_at_10"]
    assert [h[2] for h in ledger.history(settings, limit=4)] == [
        "rollback", "gate", "gate", "gate"]

    exported = registry.export_champion(settings)

    assert json.loads((tmp_path / "models" / "champion.json").read_text())["version"] == \
        first.version
    assert {p.name for p in exported.iterdir()} >= {
        "model.json", "implicit_user_factors.parquet", "implicit_movie_factors.parquet",
        "explicit_user_factors.parquet", "explicit_movie_factors.parquet"}
    with pytest.raises(registry.RegistryError, match="no version 99"):
        training.rollback(settings, "99")


def test_no_ratings_means_a_clear_error_and_nothing_registered(sample_warehouse, spark,
                                                                tmp_path):
    settings = dataclasses.replace(sample_warehouse, home=tmp_path, dataset="ml-1m")

    with pytest.raises(SnapshotError, match="no ratings for dataset 'ml-1m'"):
        train(settings, config(WORSE), spark=spark)

    registry.configure(settings)
    assert mlflow.MlflowClient().search_registered_models() == []


def test_corrupt_snapshot_and_foreign_folds_are_refused(tmp_path, ml100k):
    from spark_jobs.snapshot import Snapshot

    bad = tmp_path / "ratings.parquet"
    pd.DataFrame({"user_id": [1], "movie_id": [1]}).to_parquet(bad)
    snapshot = Snapshot(bad, "x", 1, 1, 1, "0", "0" * 64)
    with pytest.raises(SnapshotError, match=r"missing column\(s\) \['rated_at', 'rating'\]"):
        load_snapshot(snapshot)

    other = pd.DataFrame({"user_id": [1], "movie_id": [2], "rating": [3.0], "rated_at": [0]})
    with pytest.raises(TrainingError, match="u1.test: .* ratings are not in the snapshot"):
        official_folds(ml100k, other)
    with pytest.raises(TrainingError, match="missing fold file"):
        official_folds(tmp_path, other)


def test_snapshots_are_kept_by_digest_and_pruned(tmp_path):
    import os
    import time

    from spark_jobs.snapshot import Snapshot, keep_snapshot

    kept, base = [], time.time() - 100
    for i, digest in enumerate(["a", "b", "a", "c", "d"]):
        scratch = tmp_path / f"scratch{i}"
        scratch.mkdir()
        (scratch / "ratings.parquet").write_bytes(b"x")
        snapshot = Snapshot(scratch / "ratings.parquet", "ml-100k", 1, 1, 1, "0",
                            digest * 16 + "0" * 48)
        kept.append(keep_snapshot(snapshot, tmp_path / "snapshots", keep=3))
        os.utime(tmp_path / "snapshots" / snapshot.digest, (base + i, base + i))

    assert sorted(p.name for p in (tmp_path / "snapshots").iterdir()) == [
        "a" * 16, "c" * 16, "d" * 16]
    assert kept[-1].path == tmp_path / "snapshots" / ("d" * 16) / "ratings.parquet"
    assert kept[-1].path.exists()


def test_each_home_has_its_own_tracking_store(tmp_path, monkeypatch):
    from moviesforyou.foundation.config import Settings

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MFY_HOME", str(tmp_path / "a"))
    registry.configure(Settings.from_env())
    # configure() leaves the environment as it was (MLflow's own copy of the URI is
    # taken back): a second home read from the environment gets its own store
    assert "MLFLOW_TRACKING_URI" not in os.environ
    monkeypatch.setenv("MFY_HOME", str(tmp_path / "b"))
    second = Settings.from_env()
    assert registry.tracking_uri(second) == f"sqlite:///{tmp_path / 'b' / 'mlflow' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert registry.tracking_uri(Settings.from_env()) == "http://mlflow.example:5000"


def test_tuning_sample_keeps_whole_user_histories(ml100k):
    from spark_jobs.splitters import user_sample

    ratings = pd.read_csv(ml100k / "u.data", sep="\t", names=["user_id", "movie_id", "rating",
                                                              "rated_at"])
    assert user_sample(ratings, None, 42) is ratings
    assert user_sample(ratings, len(ratings), 42) is ratings
    sample = user_sample(ratings, 20_000, 42)
    assert 12_000 < len(sample) < 28_000
    counts = ratings.groupby("user_id").size()
    kept = sample.groupby("user_id").size()
    assert kept.equals(counts[kept.index])  # every chosen user with all their ratings
    assert sample.equals(user_sample(ratings, 20_000, 42))  # seeded


def test_held_out_splits_use_a_user_sample_above_eval_max_ratings(ml100k):
    from spark_jobs.config import TrainConfig
    from spark_jobs.splitters import make_splits

    ratings = pd.read_csv(ml100k / "u.data", sep="\t", names=["user_id", "movie_id", "rating",
                                                              "rated_at"])
    whole = make_splits(ratings, TrainConfig())
    sampled = make_splits(ratings, TrainConfig(eval_max_ratings=30_000))
    assert sum(len(part) for part in whole.ranking) == len(ratings)
    held = pd.concat(sampled.ranking)
    assert 20_000 < len(held) < 40_000
    # whole histories of the sampled users, in the rating split as in the ranking split
    counts = ratings.groupby("user_id").size()
    assert held.groupby("user_id").size().equals(counts[held["user_id"].unique()].sort_index())
    assert set(pd.concat(sampled.rating[0])["user_id"]) == set(held["user_id"])
    assert "users sampled to" in sampled.description
    assert "users sampled" not in whole.description  # and so a distinct split identity


def _snapshot_with(settings, base, extra: pd.DataFrame, tmp_path):
    """A kept snapshot of ``base``'s ratings plus ``extra`` rows."""
    from spark_jobs.snapshot import Snapshot, keep_snapshot

    ratings = pd.concat([load_snapshot(base), extra], ignore_index=True).astype(
        {"user_id": "int32", "movie_id": "int32", "rating": "float32", "rated_at": "int64"})
    folder = tmp_path / f"snapshot-{len(ratings)}"
    folder.mkdir()
    ratings.to_parquet(folder / "ratings.parquet", index=False)
    digest = hashlib.sha256((folder / "ratings.parquet").read_bytes()).hexdigest()
    snapshot = Snapshot(folder / "ratings.parquet", base.dataset, len(ratings),
                        int(ratings["user_id"].nunique()), int(ratings["movie_id"].nunique()),
                        str(int(ratings["rated_at"].max())), digest)
    return keep_snapshot(snapshot, settings.home / "snapshots")


def test_a_refresh_resolves_only_the_users_with_new_ratings(sample_warehouse, spark, tmp_path):
    """A night without tuning refreshes the champion: its movie side kept, the users with
    new ratings re-solved (the ALS user step); the gate promotes it while its champion is
    still the champion. Re-solving an untouched user gives back Spark's own factors."""
    from spark_jobs import refresh
    from spark_jobs.gate import gate_challenger
    from spark_jobs.models import load_factors

    settings = dataclasses.replace(sample_warehouse, home=tmp_path / "home")
    champion = train(settings, config(BETTER), spark=spark)
    assert champion.promoted
    since = int(champion.snapshot.max_rated_at)
    rated = load_snapshot(champion.snapshot)
    unrated = sorted(set(rated["movie_id"]) - set(rated.loc[rated["user_id"] == 1, "movie_id"]))
    extra = pd.DataFrame({"user_id": [1, 1, 1, 99_999, 99_999],
                          "movie_id": [*unrated[:3], 1, 50],
                          "rating": [5.0, 5.0, 4.0, 5.0, 3.0], "rated_at": since + 60})
    snapshot = _snapshot_with(settings, champion.snapshot, extra, tmp_path)

    out = training.train_als(settings, {"path": str(snapshot.path.parent)}, {"tune": False})

    assert out["refresh_of"] == champion.version and not out["tuned"]
    assert out["metrics"]["forward_ratings"] == 5
    assert 0 < out["metrics"]["forward_rmse"] < 2
    before = load_factors(registry.export_champion(settings, tmp_path / "v1"))
    decision = gate_challenger(settings, out["version"])
    assert decision.promoted and decision.reason.startswith(
        f"refresh of champion v{champion.version}: its movie factors with the users of 5 new")
    after = load_factors(registry.export_champion(settings, tmp_path / "v2"))
    for old, new in zip(before, after, strict=True):
        assert (old.item_factors == new.item_factors).all()  # the movie side is kept
        row = {u: i for i, u in enumerate(new.user_ids)}
        untouched = [u for u in old.user_ids if u != 1]
        assert (new.user_factors[[row[u] for u in untouched]]
                == old.user_factors[[old.user_index.get_loc(u) for u in untouched]]).all()
        assert not (new.user_factors[row[1]] == old.user_factors[old.user_index.get_loc(1)]
                    ).all()
        assert 99_999 in row  # a new user has factors
    # the solve is Spark's user step: an untouched user re-solved keeps their factors
    user2 = rated[rated["user_id"] == 2]
    resolved = refresh.resolve_users(*before, user2)
    for old, new in zip(before, resolved, strict=True):
        at = old.user_index.get_loc(2)
        assert new.user_factors[at] == pytest.approx(old.user_factors[at], rel=2e-3, abs=2e-4)
    assert after[0].biases.user[99_999] != 0 and \
        after[0].biases.user[2] == pytest.approx(before[0].biases.user[2], abs=1e-9)

    # a refresh of a version that is no longer the champion is not promoted
    new_for_3 = sorted(set(rated["movie_id"]) - set(rated.loc[rated["user_id"] == 3,
                                                                "movie_id"]))[:2]
    again = _snapshot_with(settings, snapshot, pd.DataFrame(
        {"user_id": 3, "movie_id": new_for_3, "rating": 4.0, "rated_at": since + 120}), tmp_path)
    stale = training.train_als(settings, {"path": str(again.path.parent)}, {"tune": False})
    assert stale["refresh_of"] == out["version"]
    registry.rollback(settings, champion.version)
    rejected = gate_challenger(settings, stale["version"])
    assert not rejected.promoted
    assert rejected.reason == (f"refresh of v{out['version']}, but the champion is now "
                               f"v{champion.version}")

    # when a refresh will not do, the night says why and re-fits
    ratings = load_snapshot(snapshot)
    assert "MFY_REFRESH_MAX_NEW = 0.0001" in refresh.plan(settings, ratings, max_new=0.0001)
    changed = ratings[ratings["user_id"] != 5]
    assert "the release changed under it" in refresh.plan(settings, changed, max_new=0.05)


def test_a_killed_trainings_run_is_closed_as_failed_by_the_next(tmp_path):
    """A training process killed with SIGKILL inside its MLflow run (and a nested tuning
    run) leaves them RUNNING; the next training or refresh run closes both as FAILED,
    with the reason, before it starts its own (registry.start_run)."""
    import signal
    import subprocess
    import sys

    from moviesforyou.foundation.config import Settings

    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MFY_", "MLFLOW_"))} | {"MFY_HOME": str(tmp_path)}
    script = (
        "import time, mlflow\n"
        "from moviesforyou.foundation.config import Settings\n"
        "from spark_jobs import registry\n"
        "settings = Settings.from_env()\n"
        "with registry.start_run(settings, run_name='a training that gets killed') as run:\n"
        "    with mlflow.start_run(run_name='tune', nested=True) as child:\n"
        "        print(run.info.run_id, child.info.run_id, flush=True)\n"
        "        time.sleep(600)\n")
    training = subprocess.Popen([sys.executable, "-c", script], env=env, text=True,
                                stdout=subprocess.PIPE)
    parent_id, child_id = training.stdout.readline().split()
    training.send_signal(signal.SIGKILL)
    training.wait(30)
    settings = Settings(home=tmp_path)
    client = registry.configure(settings)
    assert client.get_run(parent_id).info.status == "RUNNING"

    with registry.start_run(settings, run_name="the next training") as next_run:
        pass

    for run_id in (parent_id, child_id):
        run = client.get_run(run_id)
        assert run.info.status == "FAILED", run_id
    assert "ended while the run was RUNNING" in client.get_run(parent_id).data.tags["mfy.failure"]
    assert client.get_run(child_id).data.tags["mfy.failure"].startswith(
        f"its parent run {parent_id} died")
    assert client.get_run(next_run.info.run_id).info.status == "FINISHED"
    assert registry.close_dead_runs(settings) == []  # a live or finished run is left alone
