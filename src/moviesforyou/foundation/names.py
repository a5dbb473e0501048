"""Names the DAGs, the CLI, the run summary and the tests share, written once.

Plain strings only, so a DAG file imports this at parse time for free.
"""

from __future__ import annotations

NIGHTLY_DAG = "movielens_nightly"
FRESHNESS_DAG = "recs_freshness"

#: The nightly DAG's tasks, in the order they run.
NIGHTLY_TASKS = (
    EXTRACT_SOURCE := "extract_source",
    VALIDATE_RAW := "validate_raw",
    CHECK_CHANGES := "check_changes",
    BUILD_MARTS := "build_marts",
    VALIDATE_MARTS := "validate_marts",
    EXPORT_SNAPSHOT := "export_snapshot",
    TRAIN_ALS := "train_als",
    GATE_MODEL := "gate_model",
    SCORE_RECS := "score_recs",
    VALIDATE_RECS := "validate_recs",
    PUBLISH_RECS := "publish_recs",
    WRITE_SUMMARY := "write_summary",
)

#: Airflow assets (``Asset(**RAW_ASSET)``). The nightly DAG updates them; RECS
#: triggers the freshness DAG.
RAW_ASSET = {"name": "warehouse_raw", "uri": "mfy://warehouse/raw", "group": "warehouse"}
MARTS_ASSET = {"name": "warehouse_marts", "uri": "mfy://warehouse/marts", "group": "warehouse"}
MODEL_ASSET = {"name": "model_moviesforyou_als", "uri": "mfy://mlflow/models/moviesforyou-als",
               "group": "model"}
RECS_ASSET = {"name": "warehouse_recs", "uri": "mfy://warehouse/recs", "group": "warehouse"}
