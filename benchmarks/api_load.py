"""Load on the recommendation lookup: the API beside the same lookup straight on Postgres.

Needs a published model in the warehouse (``make run`` first). In one run:

1. starts the API (``uvicorn serving.app:app``, ``--workers`` processes, as
   the read-only role) on 127.0.0.1;
2. runs ``benchmarks/loadgen.py http`` as a separate process: ``--connections``
   keep-alive connections asking for ``/api/users/<id>/recommendations?k=10``,
   bounded by ``--requests`` and ``--seconds``;
3. runs ``loadgen.py sql``: the same lookup (``recs.recommend``) on Postgres
   with as many connections, no HTTP; then 40 recommendations without five
   genres, where most users' stored lists run short and are topped up live;
4. runs the HTTP load again while ``moviesforyou publish`` runs, and reads how
   long the swap held its locks from ``ops.publish_log``.

It prints throughput and p50/p99 latency for each, side by side. The goal on
the 2-core machine is 2,000 requests/s with p99 under 20 ms at 32 connections.

Usage::

    uv run python benchmarks/api_load.py [--workers 2] [--connections 32] [--seconds 20]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from moviesforyou import embedded, warehouse
from moviesforyou.config import Settings

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def start_api(settings: Settings, port: int, workers: int) -> subprocess.Popen:
    env = {"MFY_API_POOL_MAX": "8", **os.environ,  # 8 per worker unless told otherwise
           "MFY_API_DATABASE_URL": warehouse.reader_url(settings),
           "MFY_DATASET": settings.dataset}
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "serving.app:app", "--host", "127.0.0.1",
         "--port", str(port), "--workers", str(workers), "--log-level", "warning",
         "--no-access-log"], cwd=ROOT, env=env)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2)
            return process
        except OSError:
            time.sleep(0.3)
    process.kill()
    raise SystemExit("the API did not start")


def load(mode: str, args, port: int, dsn: str, *extra: str) -> dict:
    command = [sys.executable, str(HERE / "loadgen.py"), mode, "--port", str(port),
               "--connections", str(args.connections), "--requests", str(args.requests),
               "--seconds", str(args.seconds), "--dsn", dsn, *extra]
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--no-publish", action="store_true", help="skip the publish phase")
    args = parser.parse_args()

    settings = Settings.from_env()
    dsn = warehouse.reader_url(settings)
    port = embedded.free_port(18100)
    api = start_api(settings, port, args.workers)
    rows = []
    try:
        load("http", argparse.Namespace(**{**vars(args), "seconds": 3, "requests": 5000}),
             port, dsn)  # warm-up: connections, prepared statements
        rows.append(("API (HTTP)", load("http", args, port, dsn)))
        rows.append(("Postgres (recs.recommend)", load("sql", args, port, dsn)))
        # the stored top 50 minus five genres is short of 40: the rest is scored live
        rows.append(("Postgres, k=40, 5 genres out", load(
            "sql", args, port, dsn, "--k", "40",
            "--exclude", "Drama,Comedy,Action,Thriller,Romance")))
        if not args.no_publish:
            loader = subprocess.Popen(
                [sys.executable, str(HERE / "loadgen.py"), "http", "--port", str(port),
                 "--connections", str(args.connections), "--requests", "10000000",
                 "--seconds", "600"], stdout=subprocess.PIPE, text=True)
            time.sleep(2)
            subprocess.run([sys.executable, "-m", "moviesforyou", "publish"], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            loader.terminate()
            out, _ = loader.communicate(timeout=60)
            during = json.loads(out.strip().splitlines()[-1]) if out.strip() else None
            conn = warehouse.connect(settings)
            with conn.cursor() as cur:
                cur.execute("select publish_id, swap_lock_ms, timings from ops.publish_log "
                            "where status = 'live'")
                pid, lock_ms, timings = cur.fetchone()
            conn.close()
            if during:
                rows.append((f"API during publish {pid}", during))
    finally:
        api.terminate()
        api.wait(10)

    print(f"\n{args.connections} connections, {args.workers} API worker(s), "
          f"{os.cpu_count()} cores\n")
    print(f"{'':32} {'requests':>9} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} "
          f"{'empty':>6}")
    for name, r in rows:
        print(f"{name:32} {r['requests']:>9} {r['throughput']:>8} {r['p50_ms']:>7} "
              f"{r['p99_ms']:>7} {r['errors']:>6} {r['empty']:>6}")
    if not args.no_publish:
        print(f"\nswap of publish {pid}: locks held {lock_ms:.1f} ms, waited "
              f"{timings.get('swap_wait', 0) * 1000:.1f} ms for readers")


if __name__ == "__main__":
    main()
