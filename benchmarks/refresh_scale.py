"""A refresh night's training work at scale, without the DAG: what ``train_als`` does
on the six nights of seven that do not tune (``spark_jobs.refresh``).

A seeded synthetic release of N ratings (``moviesforyou synth``, shaped like
ml-25m) is written in the snapshot's Parquet layout (user, movie, star, epoch
seconds), with a champion of random factors the size a tuned model has
(explicit rank 50, implicit rank 64, biases for every user and movie); then
``--new`` ratings (20,000 by default, 20 per user, as ``nightly_run.py`` adds
them) arrive, and each step of a refresh is timed:
reading the snapshot, the plan (which ratings are new), the champion's forward
figures on them, re-solving the touched users, and writing the refreshed
factors (what the registered model holds). MLflow's logging and registration
(a few seconds at any size, see ``nightly_run.py``) are left out.

Usage::

    .venv/bin/python benchmarks/refresh_scale.py --ratings 1000000 25000000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

from spark_jobs.models import Biases, Factors, ModelParams, save_factors
from spark_jobs.refresh import Plan, forward_metrics, resolve_users
from spark_jobs.snapshot import Snapshot, load_snapshot

GIB = 1024 ** 3


def made_up(n: int, folder: Path, seed: int = 7) -> tuple[Snapshot, Factors, Factors]:
    """A snapshot of ``n`` synthetic ratings (``moviesforyou synth``, shaped like ml-25m)
    and a champion of random factors for its users and movies."""
    import pyarrow.csv as pacsv

    from moviesforyou.ingestion import synth

    synth.generate(folder / "release", synth.SynthSpec(n_ratings=n, seed=seed), layout="csv")
    frame = pacsv.read_csv(folder / "release" / "ratings.csv").to_pandas().rename(columns={
        "userId": "user_id", "movieId": "movie_id", "timestamp": "rated_at"}).astype(
        {"user_id": "int32", "movie_id": "int32", "rating": "float32", "rated_at": "int64"})
    path = folder / "ratings.parquet"
    frame.to_parquet(path, index=False)
    snapshot = Snapshot(path, "ml-25m", len(frame), int(frame["user_id"].nunique()),
                        int(frame["movie_id"].nunique()), str(int(frame["rated_at"].max())),
                        "0" * 64)
    rng = np.random.default_rng(seed)
    user_ids = np.sort(frame["user_id"].unique())
    movie_ids = np.sort(frame["movie_id"].unique())
    biases = Biases(3.5, pd.Series(rng.normal(0, .3, len(user_ids)), index=user_ids),
                    pd.Series(rng.normal(0, .3, len(movie_ids)), index=movie_ids))

    def factors(rank: int, implicit: bool) -> Factors:
        return Factors(ModelParams(rank=rank, reg_param=0.1, implicit=implicit, alpha=1.0),
                       user_ids, rng.normal(0, .1, (len(user_ids), rank)),
                       movie_ids, rng.normal(0, .1, (len(movie_ids), rank)),
                       None if implicit else biases, (0.5, 5.0))

    return snapshot, factors(50, False), factors(64, True)


def measure(n: int, new: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="mfy-refresh-bench-") as tmp:
        folder = Path(tmp)
        snapshot, explicit, implicit = made_up(n, folder)
        since = int(snapshot.max_rated_at)
        base = load_snapshot(snapshot)
        who = np.repeat(explicit.user_ids[: new // 20 + 1], 20)[:new]
        extra = pd.DataFrame({"user_id": who.astype("int32"),
                              "movie_id": explicit.item_ids[np.arange(new) % 40].astype("int32"),
                              "rating": np.float32(4.0), "rated_at": since + 60})
        pd.concat([base, extra]).drop_duplicates(["user_id", "movie_id"], keep="last") \
            .to_parquet(snapshot.path, index=False)
        del base
        process = psutil.Process()
        times: dict[str, float] = {}

        def timed(label, fn):
            start = time.perf_counter()
            out = fn()
            times[label] = time.perf_counter() - start
            return out

        ratings = timed("read snapshot", lambda: load_snapshot(snapshot))
        plan = timed("plan", lambda: Plan("1", since,
                                          ratings[ratings["rated_at"].to_numpy() > since]))
        touched = timed("touched histories",
                        lambda: ratings[ratings["user_id"].isin(plan.new["user_id"].unique())])
        timed("forward figures", lambda: forward_metrics(explicit, implicit, touched, plan,
                                                         k=10, threshold=4.0))
        refreshed = timed("re-solve users", lambda: resolve_users(explicit, implicit, touched))
        timed("write factors", lambda: save_factors(folder / "model", *refreshed))
        times["total"] = sum(times.values())
        times["rss_gib"] = process.memory_info().rss / GIB
        times["users"] = float(touched["user_id"].nunique())
        times["ratings"] = float(len(ratings))
        return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ratings", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--new", type=int, default=20_000)
    args = parser.parse_args()
    results = {f"{n / 1e6:g}M": measure(n, args.new) for n in args.ratings}
    steps = ["read snapshot", "plan", "forward figures", "touched histories", "re-solve users",
             "write factors", "total"]
    print(f"\nrefresh with {args.new:,} new ratings (seconds; rank 50 explicit, 64 implicit)")
    print("| step | " + " | ".join(results) + " |")
    print("|---|" + "---:|" * len(results))
    for step in steps:
        print(f"| {step} | " + " | ".join(f"{r[step]:.1f}" for r in results.values()) + " |")
    print("| ratings | " + " | ".join(f"{r['ratings']:,.0f}" for r in results.values()) + " |")
    print("| users re-solved | " + " | ".join(f"{r['users']:,.0f}" for r in results.values())
          + " |")
    print("| resident memory after, GiB | "
          + " | ".join(f"{r['rss_gib']:.2f}" for r in results.values()) + " |")


if __name__ == "__main__":
    main()
