"""Top-k ranking at the 25M shape: ``spark_jobs.models.top_k`` (held-out evaluation)
or, with ``--nightly``, the nightly scorer ``spark_jobs.score.user_scorer`` (top 50),
over 59,047 movies.

The nightly's evaluate phase ranks every held-out user's unseen movies four times
(the chosen implicit model, explicit ALS, biases and most popular) with
:func:`spark_jobs.models.top_k`; at 25M that phase was about 12 minutes of
single-threaded Python. This times one ``top_k`` call on random rank-50 factors,
with each user's training movies (a heavy-tailed count, median about 60) masked.

``--nightly`` times the function each Spark task of ``score_recs`` runs on its
users (rank 64, lists of 50, batches of 512, as the product), without Spark.

To compare two versions side by side in one run, give each checkout's root::

    .venv/bin/python benchmarks/top_k.py --users 20000 --against /path/to/other/checkout

Each version runs in its own process (``PYTHONPATH`` set to its checkout), in turn,
``--repeat`` times; the table gives each one's best and median seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one_run(users: int, movies: int, rank: int, k: int, seed: int,
            nightly: bool = False) -> float:
    import numpy as np

    from spark_jobs.models import Factors, ModelParams, factor_scorer, top_k

    rng = np.random.default_rng(seed)
    user_ids = np.arange(1, users + 1)
    item_ids = np.sort(rng.choice(np.arange(1, 3 * movies), size=movies, replace=False))
    factors = Factors(ModelParams(rank=rank), user_ids, rng.normal(size=(users, rank)),
                      item_ids, rng.normal(size=(movies, rank)))
    # popular movies are seen more: Zipf-ish picks, 20 to 2,000 a user
    counts = np.clip(rng.lognormal(4.1, 1.0, size=users).astype(int), 20, 2000)
    weights = 1.0 / np.arange(1, movies + 1) ** 0.8
    weights /= weights.sum()
    seen = {int(u): np.unique(rng.choice(item_ids, size=c, p=weights))
            for u, c in zip(user_ids, counts, strict=True)}
    if nightly:
        import pandas as pd

        from spark_jobs.score import ScoreConfig, user_scorer

        frame = pd.DataFrame({"user_id": user_ids, "seen": list(seen.values())})
        popularity = pd.Series(rng.integers(1, 10_000, size=movies).astype(float),
                               index=item_ids)
        scorer = user_scorer(factors, factors, popularity, ScoreConfig(n=k))
        started = time.perf_counter()
        for _ in scorer(iter([frame])):
            pass
        return time.perf_counter() - started
    started = time.perf_counter()
    top_k(factor_scorer(factors, item_ids), user_ids, item_ids, seen, k)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--movies", type=int, default=59_047)
    parser.add_argument("--rank", type=int, help="[default: 50; --nightly: 64]")
    parser.add_argument("--k", type=int, help="[default: 10; --nightly: 50]")
    parser.add_argument("--nightly", action="store_true",
                        help="time the nightly scorer (spark_jobs.score) instead")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--against", type=Path, action="append", default=[],
                        help="another checkout to time in the same run (repeatable)")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.rank = args.rank or (64 if args.nightly else 50)
    args.k = args.k or (50 if args.nightly else 10)
    if args.one:
        print(json.dumps(one_run(args.users, args.movies, args.rank, args.k, seed=7,
                                 nightly=args.nightly)))
        return

    checkouts = [ROOT, *[path.resolve() for path in args.against]]
    times: dict[Path, list[float]] = {c: [] for c in checkouts}
    for _ in range(args.repeat):
        for checkout in checkouts:  # in turn, so that the machine's noise hits every one
            env = {**os.environ, "PYTHONPATH": f"{checkout}:{checkout / 'src'}"}
            done = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "--one", "--users",
                 str(args.users), "--movies", str(args.movies), "--rank", str(args.rank),
                 "--k", str(args.k), *(["--nightly"] if args.nightly else [])],
                env=env, capture_output=True, text=True, check=True)
            times[checkout].append(json.loads(done.stdout.strip().splitlines()[-1]))
    what = "nightly scorer" if args.nightly else "top_k"
    print(f"{what}: {args.users:,} users x {args.movies:,} movies, rank {args.rank}, "
          f"k={args.k}, {args.repeat} runs each, in turn\n")
    print("| checkout | best s | median s | users/s (best) |")
    print("|---|---|---|---|")
    for checkout, seconds in times.items():
        print(f"| {checkout} | {min(seconds):.1f} | {statistics.median(seconds):.1f} | "
              f"{args.users / min(seconds):,.0f} |")


if __name__ == "__main__":
    main()
