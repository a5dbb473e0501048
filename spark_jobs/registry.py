"""The MLflow model registry: registration, tags, the champion alias, export and rollback.

Tracking store
    ``MLFLOW_TRACKING_URI`` when set (an MLflow server); otherwise a local,
    database-backed store so that the registry works:
    ``sqlite:///$MFY_HOME/mlflow/mlflow.db`` with artifacts in
    ``$MFY_HOME/mlflow/artifacts``.
Registered model
    ``moviesforyou-als`` (``MFY_MODEL_NAME``). Every run adds a version with the
    alias ``challenger``. Consumers load ``models:/moviesforyou-als@champion``.

This module only talks to MLflow. Whether a challenger becomes champion is
:mod:`spark_jobs.gate`'s decision; the ledger of decisions
(``ops.model_promotions``) is written by the orchestration.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import tempfile
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from moviesforyou.foundation.config import Settings
from moviesforyou.foundation.errors import MoviesForYouError
from spark_jobs.models import ITEM, USER, Factors, ModelParams, save_factors

log = logging.getLogger(__name__)

EXPERIMENT = "moviesforyou-als"
_MLFLOW_URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


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
    # MLflow copies the URIs into MLFLOW_TRACKING_URI and MLFLOW_REGISTRY_URI for child
    # processes; this process's environment stays as the user set it (a child gets the
    # store from Settings.to_env() and tracking_uri(), explicitly)
    saved = {name: os.environ.get(name) for name in _MLFLOW_URI_VARIABLES}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
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


def start_run(settings: Settings, **kwargs):
    """``mlflow.start_run`` for a training or refresh run: first the runs that a dead
    process left ``RUNNING`` are closed (:func:`close_dead_runs`), then the new run is
    tagged with its host and process, so that the next run can tell if it died."""
    import mlflow

    close_dead_runs(settings)
    tags = {**kwargs.pop("tags", {}), "mfy.host": socket.gethostname(),
            "mfy.pid": str(os.getpid())}
    return mlflow.start_run(tags=tags, **kwargs)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def close_dead_runs(settings: Settings) -> list[str]:
    """Mark ``FAILED``, with the reason, the runs left ``RUNNING`` by a process of this
    host that no longer exists (killed, or its machine restarted), and their nested
    runs. Runs of other hosts (a cluster's driver) are theirs to close. Returns the
    closed run ids."""
    client = configure(settings)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    running = client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'",
                                 max_results=500)
    host, dead = socket.gethostname(), {}
    for run in running:
        tags = run.data.tags
        if tags.get("mfy.host") == host and tags.get("mfy.pid", "").isdigit() \
                and not _alive(int(tags["mfy.pid"])):
            dead[run.info.run_id] = (f"its process (pid {tags['mfy.pid']} on {host}) ended "
                                     "while the run was RUNNING: killed or crashed")
    for run in running:  # nested runs of a dead run (tuning, baselines)
        parent = run.data.tags.get("mlflow.parentRunId")
        if parent in dead and run.info.run_id not in dead:
            dead[run.info.run_id] = f"its parent run {parent} died"
    for run_id, reason in dead.items():
        with contextlib.suppress(Exception):  # closed meanwhile by another run
            client.set_tag(run_id, "mfy.failure", f"{reason}; closed by pid {os.getpid()}")
            client.set_terminated(run_id, status="FAILED")
            log.warning("MLflow run %s marked FAILED: %s", run_id, reason)
    return list(dead)


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


def tag_figures(settings: Settings, version: str, metrics: dict[str, float] | None, *,
                split_id: str | None = None, dataset: str) -> None:
    """The figures and holdout a version is gated on, as its tags (a later gate on the
    same split compares with them)."""
    import mlflow

    client, name = mlflow.MlflowClient(), model_name(settings)
    for key, value in (metrics or {}).items():
        client.set_model_version_tag(name, version, f"mfy.metric.{key}", f"{value:.6f}")
    if split_id is not None:
        client.set_model_version_tag(name, version, "mfy.split_id", split_id)
    client.set_model_version_tag(name, version, "mfy.dataset", dataset)


def record_decision(settings: Settings, version: str, promoted: bool, reason: str, *,
                    run_id: str | None) -> None:
    """Tag the version with the gate's decision and, when promoted, move ``champion``."""
    import mlflow

    client, name = mlflow.MlflowClient(), model_name(settings)
    client.set_model_version_tag(name, version, "mfy.gate", "promoted" if promoted else "rejected")
    client.set_model_version_tag(name, version, "mfy.gate_reason", reason)
    if promoted:
        client.set_registered_model_alias(name, "champion", version)
    if run_id:
        client.set_tag(run_id, "mfy.promoted", str(promoted))


def log_online_measures(settings: Settings, by_version: dict[str, list[tuple]]) -> int:
    """Each model version's online measures (``marts.mart_online_measures``), as metrics
    of the run that trained it, one point per day (step: the day's ordinal) and as the
    version's ``mfy.online.*`` tags (its latest day). ``by_version``: version ->
    [(day, {measure: value})]. Returns the points logged; versions the registry does
    not hold (another tracking store) are skipped."""
    import datetime as dt

    from mlflow.entities import Metric
    from mlflow.exceptions import MlflowException

    client, name, logged = configure(settings), model_name(settings), 0
    for version, days in by_version.items():
        try:
            run_id = client.get_model_version(name, str(version)).run_id
        except MlflowException:
            log.info("online measures: %s v%s is not in this registry", name, version)
            continue
        points = [Metric(f"online_{key}", float(value), step=day.toordinal(),
                         timestamp=int(dt.datetime.combine(day, dt.time(), dt.UTC)
                                       .timestamp() * 1000))
                  for day, figures in days for key, value in figures.items()
                  if value is not None]
        if points and run_id:
            client.log_batch(run_id, metrics=points)
            logged += len(points)
        for key, value in (days[-1][1] if days else {}).items():
            if value is not None:
                client.set_model_version_tag(name, str(version), f"mfy.online.{key}",
                                             f"{value:.6f}")
    return logged


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


def rollback(settings: Settings, version: str, reason: str = "manual rollback",
             gate_tag: str = "rolled back to") -> str | None:
    """Point ``champion`` at another version (an earlier one, or an experiment's winner:
    ``gate_tag`` says which). Returns the version it replaced (the orchestration
    records the move in the promotion ledger)."""
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
    client.set_model_version_tag(model_name(settings), version, "mfy.gate", gate_tag)
    return str(current.version) if current else None


def _download(settings: Settings, version: str, out: Path) -> Path:
    """A version's factor folder, ``<out>/<version>/`` (downloaded once)."""
    import mlflow

    target = out / version
    if not (target / "model.json").exists():
        target.mkdir(parents=True, exist_ok=True)
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{model_name(settings)}/{version}", dst_path=str(target))
        factors = next(Path(local).rglob("model.json")).parent
        for item in factors.iterdir():
            item.replace(target / item.name)
    return target


def current_challenger(settings: Settings) -> str | None:
    """The version with the alias ``challenger`` if it was trained on
    ``settings.dataset``, else None."""
    from mlflow.exceptions import MlflowException

    client = configure(settings)
    try:
        version = client.get_model_version_by_alias(model_name(settings), "challenger")
    except MlflowException:
        return None
    return str(version.version) if dataset_of(client, version) == settings.dataset else None


def export_version(settings: Settings, version: str, out: Path | None = None) -> tuple[Path, dict]:
    """A version's factors for an experiment's challenger arm: its folder and what the
    publish records of it (``model_name``, ``version``, ``run_id``)."""
    client = configure(settings)
    found = client.get_model_version(model_name(settings), str(version))
    folder = _download(settings, str(found.version), out or settings.home / "models")
    return folder, {"model_name": model_name(settings), "version": str(found.version),
                    "run_id": found.run_id}


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
    target = _download(settings, version, out)
    # a refresh names the version it refreshed and since when: a publish of it
    # re-scores only the users who rated since (publish.prepare)
    refresh = {key: champion.tags[f"mfy.{key}"] for key in ("refresh_of", "refreshed_since")
               if f"mfy.{key}" in champion.tags}
    (out / "champion.json").write_text(json.dumps(
        {"model_name": model_name(settings), "version": version, "run_id": champion.run_id,
         "path": str(target), **refresh}, indent=2))
    return target
