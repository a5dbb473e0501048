"""How long the nightly DAG takes on ml-100k, end to end through Airflow, and where.

In a fresh, throw-away ``MFY_HOME`` (its own embedded warehouse, MLflow store
and Airflow home), one after the other:

1. **first run**: nothing exists yet, so it ingests, builds, tunes the ALS grids,
   gates, scores and publishes (``moviesforyou run``, i.e. ``airflow dags test``);
2. **nightly run**: 200 new ratings arrive through ``app.ratings`` (as the API
   stores them); the run rebuilds the marts and re-fits the champion's
   configuration (no tuning, as on six nights of seven);
3. **unchanged re-run**: nothing new, so training and publishing are skipped.

For each it prints the wall time of the command and each task's seconds and
share, from ``ops.pipeline_runs``. Goals on the 2-core machine: a nightly run
under 3 minutes, an unchanged re-run under 30 seconds.

Usage::

    uv run python benchmarks/nightly_run.py [--source ../shared/data/ml-100k] [--keep]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from moviesforyou import embedded, orchestration, warehouse
from moviesforyou.config import Settings

ROOT = Path(__file__).resolve().parents[1]


def run(env: dict, label: str, conf: str | None = None) -> float:
    command = [sys.executable, "-m", "moviesforyou", "run"] + (["--conf", conf] if conf else [])
    started = time.time()
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    seconds = time.time() - started
    if done.returncode:
        sys.exit(f"{label} failed:\n{done.stderr[-3000:]}")
    return seconds


def report(settings: Settings, label: str, seconds: float) -> None:
    summary = orchestration.last_run_summary(settings)
    tasks = summary["tasks"]
    total = sum((t["seconds"] or 0) for t in tasks.values())
    print(f"\n{label}: {seconds:.0f} s wall ({summary['state']}; trained {summary['trained']}, "
          f"published {summary['published']}); tasks {total:.0f} s")
    for name, info in sorted(tasks.items(), key=lambda kv: -(kv[1]["seconds"] or 0)):
        if info["seconds"]:
            print(f"  {name:16} {info['state']:8} {info['seconds']:7.1f} s "
                  f"{100 * info['seconds'] / max(total, 1e-9):5.1f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", default=str(ROOT.parent / "shared" / "data" / "ml-100k"))
    parser.add_argument("--keep", action="store_true", help="keep the temporary MFY_HOME")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="mfy-bench-nightly-"))
    home.chmod(0o755)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MFY_", "AIRFLOW", "MLFLOW_TRACKING_URI"))}
    env.update({"MFY_HOME": str(home), "MFY_SOURCE": args.source,
                "MFY_WAREHOUSE_PORT": str(embedded.free_port(56432)),
                "MFY_TUNE_DAY": "sun"})
    settings = Settings.from_env(env)
    try:
        report(settings, "first run (tunes)", run(env, "first run"))

        conn = warehouse.connect(settings)
        with conn, conn.cursor() as cur:  # 200 ratings by users 1-20, as the API stores them
            cur.execute("""
                select app.submit_rating('ml-100k', u, m, 4)
                from generate_series(1, 20) as u, generate_series(1, 400) as m
                where not exists (select 1 from marts.fct_ratings f
                                  where f.user_id = u and f.movie_id = m)
                order by u, m limit 200""")
        conn.close()
        env_nightly = {**env, "MFY_TUNE_DAY": "never"}
        report(settings, "nightly run (+200 app ratings, champion's configuration)",
               run(env_nightly, "nightly run"))
        report(settings, "unchanged re-run", run(env_nightly, "unchanged re-run"))
    finally:
        warehouse.embedded(dataclasses.replace(settings)).stop()
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)
        else:
            print(f"\nkept {home}")


if __name__ == "__main__":
    main()
