"""How long ``dbt build`` takes on synthetic releases, full and nightly.

For each size:

1. generate a synthetic release (CSV layout) and ingest it into a fresh
   embedded warehouse;
2. time a full ``dbt build`` (every model, unit test and data test);
3. add one day of new ratings through ``app.ratings`` (``--day-ratings``), as
   the API would, and time the nightly ``dbt build`` that follows;
4. time a nightly build with nothing new.

It prints, per step, the whole build's wall time and the seconds spent in
fct_ratings (incremental) and in the rest (dimensions and marts, rebuilt in full).

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

from moviesforyou import ingest, sources, synth, transform, warehouse
from moviesforyou.config import Settings


def timed_build(settings: Settings) -> tuple[float, float, float]:
    start = time.perf_counter()
    summary = transform.transform(settings, docs=False)
    wall = time.perf_counter() - start
    models = summary.model_seconds()
    fct = models.get("model.moviesforyou.fct_ratings", 0.0)
    return wall, fct, sum(models.values()) - fct


def add_day_of_ratings(settings: Settings, n: int, n_users: int, n_movies: int) -> None:
    conn = warehouse.connect(settings)
    with conn, conn.cursor() as cur:
        cur.execute(
            """insert into app.ratings (dataset, user_id, movie_id, rating, rated_at)
               select %s, 1 + (i * 7919) %% %s, 1 + (i * 104729) %% %s, 1 + i %% 5,
                      now() - (i %% 86400) * interval '1 second'
               from generate_series(1, %s) as i""",
            (settings.dataset, n_users, n_movies, n),
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
        settings = dataclasses.replace(Settings.from_env(env), dataset=f"synth-{n}")
        try:
            summary = synth.generate(work / "release", synth.SynthSpec(n_ratings=n),
                                     layout="csv")
            warehouse.ensure(settings)
            conn = warehouse.connect(settings)
            ingest.load_release(conn, sources.open_source(work / "release", work), settings.dataset)
            conn.close()
            shutil.rmtree(work / "release")

            full = timed_build(settings)
            add_day_of_ratings(settings, options.day_ratings, summary.n_users, summary.n_movies)
            nightly = timed_build(settings)
            idle = timed_build(settings)
            rows.append((n, full, nightly, idle))
        finally:
            warehouse.embedded(settings).stop()
            shutil.rmtree(work, ignore_errors=True)

    print(f"\n{'ratings':>12} | {'step':<28} | {'build s':>8} | {'fct_ratings s':>13} | "
          f"{'other models s':>14}")
    for n, full, nightly, idle in rows:
        for label, (wall, fct, other) in (
            ("full build", full),
            (f"nightly, +{options.day_ratings:,} ratings", nightly),
            ("nightly, nothing new", idle),
        ):
            print(f"{n:>12,} | {label:<28} | {wall:>8.1f} | {fct:>13.1f} | {other:>14.1f}")


if __name__ == "__main__":
    main()
