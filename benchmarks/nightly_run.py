"""The whole nightly DAG at growing scale: each task's wall time and peak memory.

For each size (``--ratings``, e.g. 1000000 5000000 25000000) a seeded synthetic
release in the CSV layout of ml-25m (half stars, no demographics, sparse movie
ids) is written by ``moviesforyou synth``, shaped like ml-25m (:func:`ml25m_shape`:
at 25,000,095 ratings its 162,541 users and 59,047 movies); then, in a fresh throw-away
``MFY_HOME`` (its own embedded warehouse, MLflow store and Airflow home), one
after the other, each through ``moviesforyou run`` (``airflow dags test``):

1. **first run**: ingest, dbt build, tuning, gate, scoring of every user, publish;
2. **nightly run**: ``--new`` app ratings (20,000) arrive through
   ``app.submit_rating`` as the API stores them; the marts are updated and the
   champion refreshed (no tuning and no weekly full dbt rebuild, as on six nights of
   seven: the users with new ratings re-solved against its movie factors,
   ``spark_jobs.refresh``);
3. **unchanged re-run**: nothing new, so training and publishing are skipped;
4. **full re-fit** (side by side with 2; ``--no-full-refit`` skips it): the same
   night forced again with ``MFY_REFIT=full``, the champion's configuration re-fit
   in Spark.

Per run it prints each task's wall time (Airflow's task instances) and the peak
resident memory of the run's process tree while the task ran (sampled every
0.25 s: the Airflow process, Spark's JVM, dbt; the embedded PostgreSQL is a
separate server and not counted). At the end one table puts the sizes side by
side with the issue's 25M targets.

Usage::

    .venv/bin/python benchmarks/nightly_run.py --ratings 1000000 5000000 [--keep]
    .venv/bin/python benchmarks/nightly_run.py --source ../shared/data/ml-100k --dataset ml-100k
    .venv/bin/python benchmarks/nightly_run.py --source REL --resume KEPT_HOME  # runs 2 and 3
    .venv/bin/python benchmarks/nightly_run.py --ratings 25000000 --week  # a 25M week
    .venv/bin/python benchmarks/nightly_run.py --source REL --resume HOME --week rebuild
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from moviesforyou.foundation import embedded, warehouse
from moviesforyou.foundation.config import Settings
from moviesforyou.orchestration import airflow_local

ROOT = Path(__file__).resolve().parents[1]
GIB = 1024 ** 3

#: The issue's targets at 25M ratings: (what, seconds or GiB).
TARGETS = {"first run": 45 * 60, "nightly run": 10 * 60, "unchanged re-run": 60,
           "build_marts (nightly)": 60, "score + validate + publish": 5 * 60, "peak RSS": 12}


class TreeMemory:
    """Samples the resident memory of a process and all its children in a thread."""

    def __init__(self, pid: int, every: float = 0.25):
        self.samples: list[tuple[float, int]] = []
        self._root, self._every, self._stop = psutil.Process(pid), every, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            try:
                for process in [self._root, *self._root.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):  # it may just have ended
                        total += process.memory_info().rss
            except psutil.Error:
                return
            self.samples.append((time.time(), total))
            self._stop.wait(self._every)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def peak(self, start: float, end: float) -> int:
        inside = [rss for t, rss in self.samples if start - self._every <= t <= end + self._every]
        return max(inside, default=0)


class RunFailed(Exception):
    """A run of ``moviesforyou run`` ended non-zero (its output's tail is the message)."""


@dataclasses.dataclass
class RunFigures:
    label: str
    seconds: float
    state: str
    tasks: dict[str, tuple[float, int]]  #: task -> (seconds, peak RSS bytes)
    peak: int


def task_times(airflow_db: Path) -> dict[str, tuple[float, float]]:
    """Start and end (epoch seconds) of each task of the newest DAG run."""
    def epoch(text: str | None) -> float | None:
        if not text:
            return None
        value = datetime.datetime.fromisoformat(text)
        return value.replace(tzinfo=value.tzinfo or datetime.UTC).timestamp()

    with sqlite3.connect(airflow_db) as db:
        (run_id,), = db.execute("select run_id from dag_run order by id desc limit 1")
        rows = db.execute("select task_id, start_date, end_date from task_instance "
                          "where run_id = ?", (run_id,)).fetchall()
    return {task: (epoch(start), epoch(end)) for task, start, end in rows if start and end}


def run(env: dict, home: Path, label: str, *args: str) -> RunFigures:
    started = time.time()
    process = subprocess.Popen([sys.executable, "-m", "moviesforyou", "run", *args], env=env,
                               cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    memory = TreeMemory(process.pid)
    output = process.communicate()[0]
    memory.stop()
    seconds = time.time() - started
    if process.returncode:
        raise RunFailed(f"{label} failed after {seconds:.0f} s:\n{output[-3000:]}")
    settings = Settings.from_env(env)
    summary = airflow_local.last_run_summary(settings)
    tasks = {task: (end - start, memory.peak(start, end))
             for task, (start, end) in task_times(home / "airflow" / "airflow.db").items()}
    figures = RunFigures(label, seconds, summary["state"], tasks,
                         max((rss for _, rss in memory.samples), default=0))
    print(f"\n{label}: {seconds:.0f} s wall, {summary['state']} (trained {summary['trained']}, "
          f"published {summary['published']}); peak RSS {figures.peak / GIB:.2f} GiB")
    print(f"  {'task':18} {'seconds':>9} {'peak RSS':>10}")
    for task, (took, rss) in sorted(tasks.items(), key=lambda kv: -kv[1][0]):
        if took >= 0.5:
            print(f"  {task:18} {took:9.1f} {rss / GIB:8.2f} GiB")
    if summary["trained"]:
        phases = train_phases(home / "mlflow" / "mlflow.db")
        print("  train_als in MLflow: " + ", ".join(f"{k} {v:.0f} s" for k, v in phases.items()))
    return figures


def train_phases(mlflow_db: Path) -> dict[str, float]:
    """The newest training run's ``*_seconds`` metrics (tune, evaluate, fit, register)."""
    with sqlite3.connect(mlflow_db) as db:
        rows = db.execute(
            "select key, value from latest_metrics where key like '%\\_seconds' escape '\\' "
            "and run_uuid = (select r.run_uuid from runs r join latest_metrics m "
            "on m.run_uuid = r.run_uuid and m.key = 'train_seconds' "
            "order by r.start_time desc limit 1)").fetchall()
    return dict(sorted(rows, key=lambda kv: kv[0] == "train_seconds"))


ML25M = (25_000_095, 162_541, 59_047)  #: ml-25m's ratings, users, movies


def ml25m_shape(n_ratings: int) -> tuple[int, int]:
    """Users and movies of an ml-25m-shaped release of ``n_ratings``: users in
    proportion (154 ratings a user), movies growing like n^0.4 as synth's default
    does, anchored at ml-25m (59,047 movies at 25M, 16,300 at 1M)."""
    ratings, users, movies = ML25M
    return (max(10, round(users * n_ratings / ratings)),
            max(50, round(movies * (n_ratings / ratings) ** 0.4)))


def add_app_ratings(settings: Settings, count: int) -> int:
    """``count`` new ratings by existing users of movies they have not rated, stored the
    way the API stores them."""
    conn = warehouse.connect(settings)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("""
                select count(app.submit_rating(%(dataset)s, user_id, movie_id, 4))
                from (select u.user_id, m.movie_id
                      from (select user_id from marts.dim_users
                            order by user_id limit %(users)s) u
                      cross join (select movie_id from marts.dim_movies
                                  order by movie_id limit 400) m
                      where not exists (select 1 from marts.fct_ratings f
                                        where f.user_id = u.user_id and f.movie_id = m.movie_id)
                          and not exists (select 1 from app.ratings a  -- an earlier night's
                                          where a.user_id = u.user_id
                                              and a.movie_id = m.movie_id)
                      order by u.user_id, m.movie_id
                      limit %(count)s) pairs""",
                        {"dataset": settings.dataset, "users": count // 20 + 1, "count": count})
            return cur.fetchone()[0]
    finally:
        conn.close()


#: The nights of ``--week``: (label, extra environment, new app ratings before it).
WEEK = {
    "ordinary": ("ordinary night", {}, True),
    "rebuild": ("weekly full dbt rebuild night", {"MFY_DBT_REBUILD_DAY": "always"}, True),
    "tuning": ("tuning night", {"MFY_TUNE_DAY": "always"}, True),
    "unchanged": ("unchanged night", {}, False),
}


def week(source: Path, dataset: str, new: int, home: Path | None,
         nights: list[str], driver_memory: str | None = None) -> dict[str, RunFigures]:
    """A week at one size, each kind of night once: the first run (unless ``home`` is a
    kept home whose first run is done), then ``nights`` in order, every weekday setting
    pinned (``MFY_TUNE_DAY``, ``MFY_DBT_REBUILD_DAY``) so that only the night's own
    task differs; the nights that take app ratings get ``new`` of them first."""
    first = home is None
    home = home or Path(tempfile.mkdtemp(prefix="mfy-bench-week-"))
    home.chmod(0o755)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MFY_", "AIRFLOW", "MLFLOW_TRACKING_URI"))}
    env.update({"MFY_HOME": str(home), "MFY_SOURCE": str(source), "MFY_DATASET": dataset,
                "MFY_WAREHOUSE_PORT": str(embedded.free_port(56432)),
                "MFY_TUNE_DAY": "never", "MFY_DBT_REBUILD_DAY": "never",
                **({"MFY_SPARK_DRIVER_MEMORY": driver_memory} if driver_memory else {})})
    settings = Settings.from_env(env)
    figures: dict[str, RunFigures] = {}
    try:
        if first:
            figures["first"] = run(env, home, "first run")
        else:  # a kept home's warehouse, for the app ratings
            warehouse.ensure(settings)
        for night in nights:
            label, changes, rated = WEEK[night]
            if rated:
                label += f" (+{add_app_ratings(settings, new):,} app ratings)"
            figures[night] = run({**env, **changes}, home, label)
    except RunFailed as failed:
        print(f"\n{failed}")
    finally:
        warehouse.embedded(settings).stop()
        print(f"\nkept {home}")
    return figures


def week_table(figures: dict[str, RunFigures]) -> None:
    """One markdown table per night: each task's seconds and peak RSS, and the night's."""
    for night, f in figures.items():
        target = 25 * 60 if night == "tuning" else 45 * 60 if night == "first" else 10 * 60
        verdict = "met" if f.seconds <= target else "missed"
        print(f"\n**{f.label}**: {f.seconds:.0f} s wall ({verdict}: target {target} s), "
              f"peak RSS {f.peak / GIB:.1f} GiB\n")
        print("| task | seconds | peak RSS GiB |\n|---|---:|---:|")
        for task, (took, rss) in sorted(f.tasks.items(), key=lambda kv: -kv[1][0]):
            if took >= 0.5:
                print(f"| {task} | {took:.0f} | {rss / GIB:.1f} |")


def benchmark(source: Path, dataset: str, new: int, keep: bool,
              driver_memory: str | None = None, resume: Path | None = None,
              full_refit: bool = True, finish_first: bool = False) -> list[RunFigures | str | None]:
    """The three runs in a fresh home; with ``resume``, the nightly and unchanged runs
    in a kept home whose first run is done (its figures are then None), or, with
    ``finish_first``, whose first run failed part-way: it is run again with ``--force``
    (the tasks that had finished find nothing new to do; their figures are this run's)."""
    home = resume or Path(tempfile.mkdtemp(prefix="mfy-bench-nightly-"))
    keep = keep or resume is not None
    home.chmod(0o755)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MFY_", "AIRFLOW", "MLFLOW_TRACKING_URI"))}
    env.update({"MFY_HOME": str(home), "MFY_SOURCE": str(source), "MFY_DATASET": dataset,
                "MFY_WAREHOUSE_PORT": str(embedded.free_port(56432)), "MFY_TUNE_DAY": "sun",
                **({"MFY_SPARK_DRIVER_MEMORY": driver_memory} if driver_memory else {})})
    settings = Settings.from_env(env)
    figures: list[RunFigures | str | None] = []
    try:
        if resume is None or finish_first:
            figures.append(run(env, home, "first run" + (", finished (--force)" if resume else ""),
                               *(["--force"] if resume else [])))
        else:
            figures.append(None)
        added = add_app_ratings(settings, new)
        # an ordinary night: no tuning and no weekly full dbt rebuild, whatever weekday the
        # benchmark runs on (on MFY_DBT_REBUILD_DAY, Sundays by default, every
        # incremental model is rebuilt from all the ratings)
        quiet = {**env, "MFY_TUNE_DAY": "never", "MFY_DBT_REBUILD_DAY": "never"}
        figures.append(run(quiet, home, f"nightly run (+{added:,} app ratings)"))
        figures.append(run(quiet, home, "unchanged re-run"))
        figures.append(run({**quiet, "MFY_REFIT": "full"}, home,
                           "full re-fit (forced, MFY_REFIT=full)", "--force")
                       if full_refit else "skipped")
        return figures
    except RunFailed as failed:  # keep the sizes and runs measured so far
        print(f"\n{failed}")
        return figures
    finally:
        warehouse.embedded(settings).stop()
        if keep:
            print(f"\nkept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)


def side_by_side(results: dict[str, list[RunFigures | str | None]]) -> None:
    """One markdown table: runs and their heaviest parts, one column per size."""
    def cell(runs: list[RunFigures | str | None], index: int, tasks: tuple[str, ...] = ()) -> str:
        if index >= len(runs):
            return "failed" if index == len(runs) else "not run"
        figures = runs[index]
        if figures is None:
            return "earlier run"
        if isinstance(figures, str):
            return figures
        if not tasks:
            return f"{figures.seconds:.0f} s, {figures.peak / GIB:.1f} GiB"
        took = sum(figures.tasks.get(t, (0, 0))[0] for t in tasks)
        rss = max((figures.tasks.get(t, (0, 0))[1] for t in tasks), default=0)
        return f"{took:.0f} s, {rss / GIB:.1f} GiB"

    rows = [
        ("first run (wall, peak RSS)", 0, ()), ("nightly run", 1, ()),
        ("unchanged re-run", 2, ()),
        ("first: ingest (extract_source)", 0, ("extract_source",)),
        ("first: build_marts", 0, ("build_marts",)),
        ("first: train_als (tuning)", 0, ("train_als",)),
        ("first: score + validate + publish", 0, ("score_recs", "validate_recs",
                                                  "publish_recs")),
        ("nightly: build_marts", 1, ("build_marts",)),
        ("nightly: train_als (refresh)", 1, ("train_als",)),
        ("nightly: score + validate + publish", 1, ("score_recs", "validate_recs",
                                                    "publish_recs")),
        ("forced full re-fit night", 3, ()),
        ("full re-fit: train_als", 3, ("train_als",)),
    ]
    sizes = list(results)
    print("\n| run / task | " + " | ".join(sizes) + " |")
    print("|---|" + "---|" * len(sizes))
    for label, index, tasks in rows:
        print(f"| {label} | " + " | ".join(cell(results[s], index, tasks) for s in sizes) + " |")
    print("\n25M targets: " + "; ".join(
        f"{k} ≤ {v} GiB" if k == "peak RSS" else f"{k} ≤ {v} s" for k, v in TARGETS.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ratings", type=int, nargs="*", default=[1_000_000],
                        help="synthetic CSV releases of these sizes (default: 1,000,000)")
    parser.add_argument("--source", help="instead: a release folder or zip to run on")
    parser.add_argument("--dataset", default="ml-25m",
                        help="the release's layout name (default: ml-25m)")
    parser.add_argument("--new", type=int, default=20_000, help="app ratings before the nightly")
    parser.add_argument("--keep", action="store_true", help="keep the temporary homes")
    parser.add_argument("--no-full-refit", action="store_true",
                        help="skip run 4, the forced full re-fit (about 30 min at 25M)")
    parser.add_argument("--driver-memory", help="MFY_SPARK_DRIVER_MEMORY (default: the product's)")
    parser.add_argument("--resume", type=Path, metavar="HOME",
                        help="with --source: a home kept (--keep) or left by an interrupted "
                             "run whose first run is done; run the nightly and unchanged runs")
    parser.add_argument("--finish-first", action="store_true",
                        help="with --resume: the kept home's first run failed part-way; run it "
                             "again (--force) before the nightly and unchanged runs")
    parser.add_argument("--week", nargs="*", choices=list(WEEK), metavar="NIGHT",
                        help="a week at the first --ratings size (or --source): the first run "
                             "(unless --resume), then these nights in order (default: "
                             + ", ".join(WEEK) + "); one table per night")
    args = parser.parse_args()

    if args.week is not None:
        source = Path(args.source) if args.source else None
        if source is None:
            n = args.ratings[0]
            source = Path(tempfile.mkdtemp(prefix=f"mfy-synth-{n}-")) / "release"
            started = time.time()
            users, movies = ml25m_shape(n)
            subprocess.run([sys.executable, "-m", "moviesforyou", "synth", "-n", str(n),
                            "--users", str(users), "--movies", str(movies),
                            "--layout", "csv", str(source)], check=True,
                           stdout=subprocess.DEVNULL)
            print(f"synthetic release of {n:,} ratings written to {source} in "
                  f"{time.time() - started:.0f} s (kept for --resume)", flush=True)
        week_table(week(source, args.dataset, args.new, args.resume,
                        args.week or list(WEEK), args.driver_memory))
        return
    results: dict[str, list[RunFigures | str | None]] = {}
    if args.source:
        results[Path(args.source).name] = benchmark(Path(args.source), args.dataset, args.new,
                                                    args.keep, args.driver_memory, args.resume,
                                                    not args.no_full_refit, args.finish_first)
    else:
        for n in args.ratings:
            folder = Path(tempfile.mkdtemp(prefix=f"mfy-synth-{n}-"))
            started = time.time()
            users, movies = ml25m_shape(n)
            subprocess.run([sys.executable, "-m", "moviesforyou", "synth", "-n", str(n),
                            "--users", str(users), "--movies", str(movies),
                            "--layout", "csv", str(folder / "release")], check=True,
                           stdout=subprocess.DEVNULL)
            print(f"\n=== {n:,} ratings (synthetic CSV release written in "
                  f"{time.time() - started:.0f} s)")
            try:
                results[f"{n / 1e6:g}M"] = benchmark(folder / "release", args.dataset,
                                                     args.new, args.keep, args.driver_memory,
                                                     full_refit=not args.no_full_refit)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
    side_by_side(results)


if __name__ == "__main__":
    main()
