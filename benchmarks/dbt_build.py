"""How long ``dbt build`` takes on synthetic releases, full and nightly.

For each size:

1. generate a synthetic release (CSV layout) and ingest it into a fresh
   embedded warehouse;
2. time a full ``dbt build`` (every model, unit test and data test);
3. add one day of new ratings through ``app.ratings`` (``--day-ratings``), as
   the API would, and time the nightly ``dbt build`` that follows;
4. time a nightly build with nothing new.

It prints, per step, the whole build's wall time, the seconds spent in
fct_ratings, in the incremental aggregates (``int_*`` tables), in the other
models and in the data tests (summed over dbt's threads), and the slowest nodes.

Usage::

    uv run python benchmarks/dbt_build.py --ratings 1000000 25000000
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from moviesforyou.foundation import embedded, warehouse
from moviesforyou.foundation.config import Settings
from moviesforyou.ingestion import ingest, sources, synth
from moviesforyou.transformation import transform


def timed_build(settings: Settings) -> dict:
    start = time.perf_counter()
    summary = transform.transform(settings, docs=False)
    wall = time.perf_counter() - start
    nodes = {r["unique_id"]: r["seconds"] for r in summary.build.results}
    models = summary.model_seconds()
    fct = models.get("model.moviesforyou.fct_ratings", 0.0)
    aggregates = sum(v for k, v in models.items() if k.startswith("model.moviesforyou.int_"))
    tests = sum(v for k, v in nodes.items() if k.startswith(("test.", "unit_test.")))
    slowest = sorted(nodes.items(), key=lambda kv: -kv[1])[:3]
    return {"wall": wall, "fct": fct, "aggregates": aggregates,
            "other": sum(models.values()) - fct - aggregates, "tests": tests,
            "slowest": ", ".join(f"{k.split('.')[2]} {v:.1f}" for k, v in slowest)}


def add_day_of_ratings(settings: Settings, n: int) -> None:
    """``n`` app ratings of the last day, spread over all users and movies (a
    pessimistic night for the incremental aggregates: ~``n`` touched users)."""
    conn = warehouse.connect(settings)
    with conn, conn.cursor() as cur:
        cur.execute(
            """with users as (select user_id, row_number() over (order by user_id) - 1 as k
                              from marts.dim_users),
                    movies as (select movie_id, row_number() over (order by movie_id) - 1 as k
                               from marts.dim_movies)
               insert into app.ratings (dataset, user_id, movie_id, rating, rated_at)
               select %s, users.user_id, movies.movie_id, 1 + i %% 5,
                      now() - (i %% 86400) * interval '1 second'
               from generate_series(1, %s) as i
               join users on users.k = (i * 7919) %% (select count(*) from users)
               join movies on movies.k = (i * 104729) %% (select count(*) from movies)""",
            (settings.dataset, n),
        )
    conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ratings", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--day-ratings", type=int, default=20_000,
                        help="new ratings in one day, as app ratings")
    options = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    rows = []
    for n in sorted(options.ratings):
        work = Path(tempfile.mkdtemp(prefix="mfy-dbt-bench-"))
        work.chmod(0o755)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MFY_")}
        env["MFY_HOME"] = str(work / "home")
        env["MFY_WAREHOUSE_PORT"] = str(embedded.free_port(56532))
        settings = dataclasses.replace(Settings.from_env(env), dataset=f"synth-{n}")
        try:
            synth.generate(work / "release", synth.SynthSpec(n_ratings=n),
                                     layout="csv")
            warehouse.ensure(settings)
            conn = warehouse.connect(settings)
            ingest.load_release(conn, sources.open_source(work / "release", work), settings.dataset)
            conn.close()
            shutil.rmtree(work / "release")

            full = timed_build(settings)
            add_day_of_ratings(settings, options.day_ratings)
            nightly = timed_build(settings)
            idle = timed_build(settings)
            rows.append((n, full, nightly, idle))
        finally:
            warehouse.embedded(settings).stop()
            shutil.rmtree(work, ignore_errors=True)

    print(f"\n{'ratings':>12} | {'step':<28} | {'build s':>8} | {'fct s':>6} | "
          f"{'int_* s':>7} | {'marts s':>7} | {'tests s':>7} | slowest nodes (s)")
    for n, full, nightly, idle in rows:
        for label, timing in (
            ("full build", full),
            (f"nightly, +{options.day_ratings:,} ratings", nightly),
            ("nightly, nothing new", idle),
        ):
            print(f"{n:>12,} | {label:<28} | {timing['wall']:>8.1f} | {timing['fct']:>6.1f} | "
                  f"{timing['aggregates']:>7.1f} | {timing['other']:>7.1f} | "
                  f"{timing['tests']:>7.1f} | {timing['slowest']}")


if __name__ == "__main__":
    main()
