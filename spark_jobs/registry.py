"""The MLflow model registry: registration, the champion gate, history and rollback.

Tracking store
    ``MLFLOW_TRACKING_URI`` when set (an MLflow server); otherwise a local,
    database-backed store so that the registry works:
    ``sqlite:///$MFY_HOME/mlflow/mlflow.db`` with artifacts in
    ``$MFY_HOME/mlflow/artifacts``.
Registered model
    ``moviesforyou-als`` (``MFY_MODEL_NAME``). Every run adds a version with the
    alias ``challenger``. Consumers load ``models:/moviesforyou-als@champion``.
The gate
    The challenger becomes ``champion`` only when, on the same holdout, its
    implicit model's NDCG@k is higher than the champion's and its explicit
    model's RMSE is no worse than the champion's plus a tolerance. A nightly
    retrain with the champion's own configuration on newer data is promoted
    (it would score the same, being the same configuration). "Same
    holdout": when the champion was evaluated on the same snapshot and split,
    its recorded figures are used; otherwise the champion's configuration is
    re-fit on the challenger's training part and scored on its test part, so
    neither model has seen the test ratings. Every decision is tagged on the
    version and appended to ``ops.model_promotions``.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from moviesforyou.foundation import warehouse
from moviesforyou.foundation.config import EXPORTED_TRACKING_URIS, Settings
from moviesforyou.foundation.errors import MoviesForYouError
from spark_jobs.models import ITEM, USER, Factors, ModelParams, save_factors

log = logging.getLogger(__name__)

EXPERIMENT = "moviesforyou-als"


class RegistryError(MoviesForYouError):
    pass


def model_name(settings: Settings) -> str:
    """The registered model (``MFY_MODEL_NAME``)."""
    return settings.training.model_name


def package_copy(out: Path) -> Path:
    """This package's files copied under ``out`` (the model's ``code_paths``): read
    through importlib.resources, so it also works when imported from a shipped zip."""
    from importlib import resources

    def copy(node, target: Path) -> None:
        target.mkdir(parents=True, exist_ok=True)
        for child in node.iterdir():
            if child.is_dir():
                if child.name != "__pycache__":
                    copy(child, target / child.name)
            else:
                (target / child.name).write_bytes(child.read_bytes())

    copy(resources.files("spark_jobs"), out / "spark_jobs")
    return out / "spark_jobs"


def tracking_uri(settings: Settings) -> str:
    """``MLFLOW_TRACKING_URI`` as the user set it, else the local store under ``home``."""
    return (settings.training.mlflow_tracking_uri
            or f"sqlite:///{settings.home / 'mlflow' / 'mlflow.db'}")


def configure(settings: Settings):
    """Point MLflow at the tracking store and the experiment. Returns an MlflowClient."""
    import mlflow

    uri = tracking_uri(settings)
    if uri.startswith("sqlite:///"):
        (settings.home / "mlflow" / "artifacts").mkdir(parents=True, exist_ok=True)
    if uri != settings.training.mlflow_tracking_uri:
        # mlflow copies it into MLFLOW_TRACKING_URI: there it is ours, not the user's choice
        EXPORTED_TRACKING_URIS.add(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = mlflow.MlflowClient()
    if client.get_experiment_by_name(EXPERIMENT) is None:
        location = None
        if uri.startswith("sqlite:///"):
            location = (settings.home / "mlflow" / "artifacts").as_uri()
        client.create_experiment(EXPERIMENT, artifact_location=location,
                                 tags={"mlflow.note.content": (
                                     "ALS models of MoviesForYou. Parent runs train and gate; "
                                     "baseline runs share their split.")})
    mlflow.set_experiment(EXPERIMENT)
    return client


def log_and_register(settings: Settings, explicit: Factors, implicit: Factors, folder: Path,
                     ratings: pd.DataFrame) -> str:
    """Log both models as one pyfunc in the active run and register a new version.

    Returns:
        The new version number, which now carries the alias ``challenger``.
    """
    import mlflow
    from mlflow.models import infer_signature

    from spark_jobs.models import MoviesForYouALS

    save_factors(folder, explicit, implicit)
    example = ratings[[USER, ITEM]].head(5).reset_index(drop=True).astype("int64")
    output = pd.DataFrame({"predicted_rating": explicit.predict(example[USER], example[ITEM]),
                           "ranking_score": 0.0})
    with tempfile.TemporaryDirectory(prefix="mfy-code-") as code:
        info = mlflow.pyfunc.log_model(
            name="model", python_model=MoviesForYouALS(), artifacts={"factors": str(folder)},
            signature=infer_signature(example, output), input_example=example,
            registered_model_name=model_name(settings),
            code_paths=[str(package_copy(Path(code)))],
            pip_requirements=["mlflow", "numpy", "pandas", "pyarrow"],
        )
    version = str(info.registered_model_version)
    client = mlflow.MlflowClient()
    client.set_registered_model_alias(model_name(settings), "challenger", version)
    client.set_model_version_tag(model_name(settings), version, "mfy.explicit_params",
                                 json.dumps(asdict(explicit.params)))
    client.set_model_version_tag(model_name(settings), version, "mfy.implicit_params",
                                 json.dumps(asdict(implicit.params)))
    # which family predicts ratings and which ranks lists (spark_jobs.models.FAMILIES)
    families_tag = f"ratings {explicit.params.family}, lists {implicit.params.family}"
    client.set_model_version_tag(model_name(settings), version, "mfy.families", families_tag)
    return version


@dataclass
class Decision:
    promoted: bool
    reason: str
    champion_before: str | None
    challenger_metrics: dict[str, float]
    champion_metrics: dict[str, float] | None


def champion_params(settings: Settings) -> tuple[ModelParams, ModelParams] | None:
    """The champion's (explicit, implicit) configuration, or None without a champion
    of ``settings.dataset`` (a champion of another release is tuned away from)."""
    client = configure(settings)
    champion = current_champion(settings, client)
    if (champion is None or "mfy.explicit_params" not in champion.tags
            or dataset_of(client, champion) != settings.dataset):
        return None
    return (ModelParams(**json.loads(champion.tags["mfy.explicit_params"])),
            ModelParams(**json.loads(champion.tags["mfy.implicit_params"])))


def version_for_snapshot(settings: Settings, client, digest: str) -> str | None:
    """The newest version trained on the snapshot ``digest`` (its run's ``mfy.snapshot`` tag)."""
    versions = client.search_model_versions(f"name = '{model_name(settings)}'",
                                            order_by=["version_number DESC"], max_results=50)
    for version in versions:
        run = client.get_run(version.run_id)
        if run.data.tags.get("mfy.snapshot") == digest:
            return str(version.version)
    return None


def current_champion(settings: Settings, client):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(model_name(settings), "champion")
    except MlflowException:
        return None


def dataset_of(client, version) -> str | None:
    """The release a model version was trained on (its tag, else its run's)."""
    if version.tags.get("mfy.dataset"):
        return version.tags["mfy.dataset"]
    return client.get_run(version.run_id).data.tags.get("mfy.dataset")


def gate(settings: Settings, *, version: str, challenger_metrics: dict[str, float],
         challenger: tuple[ModelParams, ModelParams], split_id: str,
         evaluate: Callable[[ModelParams, ModelParams], dict[str, float]], k: int,
         rmse_tolerance: float, snapshot, run_id: str) -> Decision:
    """Decide whether ``version`` replaces the champion, record why, and move the alias."""
    import mlflow

    client = mlflow.MlflowClient()
    name, ndcg = model_name(settings), f"ndcg_at_{k}"
    champion = current_champion(settings, client)
    for key, value in challenger_metrics.items():
        client.set_model_version_tag(name, version, f"mfy.metric.{key}", f"{value:.6f}")
    client.set_model_version_tag(name, version, "mfy.split_id", split_id)

    client.set_model_version_tag(name, version, "mfy.dataset", snapshot.dataset)
    champion_metrics = None
    champion_dataset = dataset_of(client, champion) if champion is not None else None
    same_config = champion is not None and champion.tags.get("mfy.explicit_params") and (
        ModelParams(**json.loads(champion.tags["mfy.explicit_params"])),
        ModelParams(**json.loads(champion.tags["mfy.implicit_params"]))) == tuple(challenger)
    if champion is None:
        promoted, reason = True, "no champion yet"
    elif champion_dataset != snapshot.dataset:
        # another release's users and movies: nothing to compare, nothing it could serve
        promoted = True
        reason = (f"champion v{champion.version} was trained on {champion_dataset}, not "
                  f"{snapshot.dataset}: the first model of this release replaces it")
    elif same_config and champion.tags.get("mfy.split_id") != split_id:
        # the nightly retrain: the champion's configuration on newer data. Scored on
        # this split it would be the same model, so "better" cannot be measured; the
        # fresher fit wins.
        promoted = True
        reason = (f"same configuration as champion v{champion.version}, trained on newer "
                  f"data (snapshot {snapshot.digest})")
    else:
        if champion.tags.get("mfy.split_id") == split_id:
            champion_metrics = {k_[len("mfy.metric."):]: float(v)
                                for k_, v in champion.tags.items() if k_.startswith("mfy.metric.")}
            how = "its recorded figures on the same split"
        else:
            params = (ModelParams(**json.loads(champion.tags["mfy.explicit_params"])),
                      ModelParams(**json.loads(champion.tags["mfy.implicit_params"])))
            champion_metrics = evaluate(*params)
            how = "its configuration re-fit on this split"
        better_ranking = challenger_metrics[ndcg] > champion_metrics[ndcg]
        rmse_ok = challenger_metrics["rmse"] <= champion_metrics["rmse"] + rmse_tolerance
        promoted = better_ranking and rmse_ok
        figures = (f"NDCG@{k} {challenger_metrics[ndcg]:.4f} vs {champion_metrics[ndcg]:.4f}, "
                   f"RMSE {challenger_metrics['rmse']:.4f} vs {champion_metrics['rmse']:.4f} "
                   f"(tolerance {rmse_tolerance:g}); champion v{champion.version} by {how}")
        if promoted:
            reason = f"challenger better: {figures}"
        elif not better_ranking:
            reason = f"challenger ranks no better: {figures}"
        else:
            reason = f"challenger RMSE too high: {figures}"

    return _decide(settings, client, version, champion, promoted, reason,
                   challenger_metrics, champion_metrics, snapshot, run_id)


def gate_refresh(settings: Settings, *, version: str, refresh_of: str,
                 challenger_metrics: dict[str, float], snapshot, run_id: str) -> Decision:
    """The gate for a refresh (:mod:`spark_jobs.refresh`): the champion's own movie side
    with the new ratings' users re-solved is promoted while that version is still the
    champion; a champion that changed meanwhile (a rollback, a better model) stays."""
    import mlflow

    client = mlflow.MlflowClient()
    name = model_name(settings)
    client.set_model_version_tag(name, version, "mfy.dataset", snapshot.dataset)
    champion = current_champion(settings, client)
    promoted = champion is not None and str(champion.version) == str(refresh_of)
    forward = ", ".join(f"{key} {value:.4f}" for key, value in challenger_metrics.items()
                        if key.startswith("forward_") and key != "forward_ratings")
    if promoted:
        reason = (f"refresh of champion v{refresh_of}: its movie factors with the users of "
                  f"{challenger_metrics.get('forward_ratings', 0):.0f} new rating(s) re-solved"
                  + (f"; v{refresh_of} on those ratings before: {forward}" if forward else ""))
    else:
        current = f"v{champion.version}" if champion is not None else "none"
        reason = f"refresh of v{refresh_of}, but the champion is now {current}"
    return _decide(settings, client, version, champion, promoted, reason,
                   challenger_metrics, None, snapshot, run_id)


def _decide(settings: Settings, client, version: str, champion, promoted: bool, reason: str,
            challenger_metrics: dict[str, float], champion_metrics: dict[str, float] | None,
            snapshot, run_id: str) -> Decision:
    """Tag the version with the decision, move the alias, record it in ops.model_promotions."""
    name = model_name(settings)
    client.set_model_version_tag(name, version, "mfy.gate", "promoted" if promoted else "rejected")
    client.set_model_version_tag(name, version, "mfy.gate_reason", reason)
    if promoted:
        client.set_registered_model_alias(name, "champion", version)
    before = str(champion.version) if champion else None
    _record(settings, challenger=version, before=before,
            after=version if promoted else before, promoted=promoted, action="gate",
            reason=reason, dataset=snapshot.dataset, snapshot_digest=snapshot.digest,
            metrics={"challenger": challenger_metrics, "champion": champion_metrics},
            run_id=run_id)
    log.info("gate: version %s %s (%s)", version, "promoted" if promoted else "rejected", reason)
    return Decision(promoted, reason, before, challenger_metrics, champion_metrics)


def _record(settings: Settings, *, challenger, before, after, promoted, action, reason,
            dataset=None, snapshot_digest=None, metrics=None, run_id=None) -> None:
    conn = warehouse.connect(settings)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                """insert into ops.model_promotions (model_name, challenger_version,
                       champion_version_before, champion_version_after, promoted, action, reason,
                       dataset, snapshot_digest, metrics, mlflow_run_id)
                   values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
                (model_name(settings), challenger, before, after, promoted, action, reason, dataset,
                 snapshot_digest, json.dumps(metrics or {}), run_id),
            )
    finally:
        conn.close()


def history(settings: Settings, limit: int = 50) -> list[tuple]:
    """Champion decisions, newest first, from ops.model_promotions."""
    conn = warehouse.connect(settings)
    try:
        with conn.cursor() as cur:
            cur.execute(
                """select promotion_id, decided_at, action, challenger_version,
                          champion_version_before, champion_version_after, promoted, reason
                   from ops.model_promotions where model_name = %s
                   order by promotion_id desc limit %s""", (model_name(settings), limit))
            return cur.fetchall()
    finally:
        conn.close()


def families(settings: Settings, versions) -> dict[str, str]:
    """Each version's model families (its ``mfy.families`` tag: "ratings bpmf, lists
    ease"); versions registered before families were recorded are ALS."""
    client = configure(settings)
    out = {}
    for version in {str(v) for v in versions if v}:
        try:
            tags = client.get_model_version(model_name(settings), version).tags
        except Exception:  # deleted from the registry since: the history still names it
            continue
        out[version] = tags.get("mfy.families", "ratings als, lists als")
    return out


def rollback(settings: Settings, version: str, reason: str = "manual rollback") -> str | None:
    """Point ``champion`` at an earlier version. Returns the version it replaced."""
    configure(settings)
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    try:
        target = client.get_model_version(model_name(settings), str(version))
    except MlflowException as exc:
        raise RegistryError(f"{model_name(settings)} has no version {version}") from exc
    current = current_champion(settings, client)
    version = str(target.version)
    client.set_registered_model_alias(model_name(settings), "champion", version)
    client.set_model_version_tag(model_name(settings), version, "mfy.gate", "rolled back to")
    before = str(current.version) if current else None
    _record(settings, challenger=None, before=before, after=version, promoted=True,
            action="rollback", reason=reason)
    return before


def export_champion(settings: Settings, out: Path | None = None) -> Path:
    """Download the champion's factors for the publishing step.

    Writes ``<out>/<version>/`` (the factor Parquet files and ``model.json``) and
    ``<out>/champion.json`` naming the version. Returns the version's folder.
    """
    configure(settings)
    import mlflow

    client = mlflow.MlflowClient()
    champion = current_champion(settings, client)
    if champion is None:
        raise RegistryError(f"{model_name(settings)} has no champion yet: run `moviesforyou train`")
    version = str(champion.version)
    trained_on = dataset_of(client, champion)
    if trained_on != settings.dataset:
        raise RegistryError(f"champion v{version} of {model_name(settings)} was trained on "
                            f"{trained_on}, not {settings.dataset}: train a model of "
                            f"{settings.dataset} first "
                            "(`moviesforyou train`), or publish with MFY_DATASET={trained_on}")
    out = out or settings.home / "models"
    target = out / version
    if not (target / "model.json").exists():
        target.mkdir(parents=True, exist_ok=True)
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{model_name(settings)}/{version}", dst_path=str(target))
        factors = next(Path(local).rglob("model.json")).parent
        for item in factors.iterdir():
            item.replace(target / item.name)
    # a refresh names the version it refreshed and since when: a publish of it
    # re-scores only the users who rated since (publish.prepare)
    refresh = {key: champion.tags[f"mfy.{key}"] for key in ("refresh_of", "refreshed_since")
               if f"mfy.{key}" in champion.tags}
    (out / "champion.json").write_text(json.dumps(
        {"model_name": model_name(settings), "version": version, "run_id": champion.run_id,
         "path": str(target), **refresh}, indent=2))
    return target
