"""Load on the recommendation lookup: the API without and with its answer cache, beside
the same lookup straight on Postgres, in one run.

Needs a published model in the warehouse (``make run`` first, or a kept
``nightly_run.py --keep`` home through ``MFY_HOME``). In one run:

1. starts the API three times (``uvicorn serving.app:app``, ``--workers`` processes
   each, as the read-only role) on 127.0.0.1: with the answer cache off
   (``MFY_API_CACHE_SIZE=0``, the issue's target: every request reaches Postgres),
   with it on, and with it off and no exposure log (``MFY_API_EXPOSURE_BUFFER=0``:
   what logging every list served costs);
2. loads each with ``--connections`` keep-alive connections asking for
   ``/api/users/<random user>/recommendations?k=10`` (users drawn from the
   publish's own), bounded by ``--seconds``: with Debian's ``wrk`` when it is
   installed (C, two threads: the load generator takes the least CPU from the two
   cores the API and Postgres share), and with ``loadgen.py http`` (Python, which
   also checks every answer has 10 films) for comparison;
3. runs ``loadgen.py sql``: the same lookup (``recs.recommend``) on Postgres with as
   many connections, no HTTP; then 40 recommendations without five genres, where
   most stored lists run short and are topped up live;
4. loads the cache-off API again while ``moviesforyou publish`` runs, and reads how
   long the swap held its locks from ``ops.publish_log``.

It prints throughput and p50/p99 latency for each, side by side, and each row's
throughput against Postgres's. The goal on the 2-core machine: without the cache, 70%
of Postgres's own throughput for the same lookup, with p99 under 20 ms, at 32
connections. ``--against CHECKOUT`` also loads an earlier commit's cache-off API (a
git worktree), right after this one's: what a change bought, in one run.
``--rounds N`` takes the cache-off loads and Postgres's N times, one after the other
in turn, and gives each row's median and range: one run of each on a noisy machine
can differ by a fifth.

Usage::

    .venv/bin/python benchmarks/api_load.py [--workers 1] [--connections 32] [--seconds 20]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from moviesforyou.foundation import embedded, warehouse
from moviesforyou.foundation.config import Settings

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

#: wrk's script: a random user of 1..USERS per request, the latency percentiles and
#: the non-200 answers printed as one JSON line at the end.
WRK_SCRIPT = """
local users = tonumber(os.getenv("WRK_USERS"))
local thread_errors = {}
function setup(thread) table.insert(thread_errors, thread) end
function init(args) errors = 0; math.randomseed(os.time() + math.random(1, 100000)) end
function request()
  return wrk.format("GET", "/api/users/" .. math.random(1, users) .. "/recommendations?k=10")
end
function response(status, headers, body) if status ~= 200 then errors = errors + 1 end end
function done(summary, latency, requests)
  local failed = 0
  for _, thread in ipairs(thread_errors) do failed = failed + thread:get("errors") end
  io.write(string.format(
    '{"requests": %d, "seconds": %.2f, "p50_ms": %.2f, "p99_ms": %.2f, "errors": %d}\\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000,
    latency:percentile(99) / 1000, failed + summary.errors.status + summary.errors.connect
    + summary.errors.read + summary.errors.timeout))
end
"""


def start_api(settings: Settings, port: int, workers: int, cache: bool,
              exposures: bool = True, root: Path = ROOT) -> subprocess.Popen:
    """The API on ``port``; ``root``: another checkout's (``--against``), its code first
    on the path."""
    env = {"MFY_API_POOL_MAX": "8", **os.environ,  # 8 per worker unless told otherwise
           "MFY_API_DATABASE_URL": warehouse.reader_url(settings),
           "MFY_DATASET": settings.dataset}
    if root != ROOT:
        env["PYTHONPATH"] = f"{root / 'src'}{os.pathsep}{root}"
    if not cache:
        env["MFY_API_CACHE_SIZE"] = "0"
    if not exposures:
        env["MFY_API_EXPOSURE_BUFFER"] = "0"
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "serving.app:app", "--host", "127.0.0.1",
         "--port", str(port), "--workers", str(workers), "--log-level", "warning",
         "--no-access-log"], cwd=root, env=env)
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
    """One run of loadgen.py (Python: ``http`` or ``sql``)."""
    command = [sys.executable, str(HERE / "loadgen.py"), mode, "--port", str(port),
               "--connections", str(args.connections), "--requests", str(args.requests),
               "--seconds", str(args.seconds), "--dsn", dsn, "--users", str(args.users),
               *extra]
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def wrk(args, port: int, seconds: float | None = None) -> dict | None:
    """One run of wrk (None when it is not installed: ``apt-get install wrk``)."""
    if shutil.which("wrk") is None:
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT)
    try:
        out = subprocess.run(
            ["wrk", "-t2", f"-c{args.connections}", f"-d{int(seconds or args.seconds)}s",
             "-s", script.name, f"http://127.0.0.1:{port}"],
            capture_output=True, text=True, check=True,
            env={**os.environ, "WRK_USERS": str(args.users)})
    finally:
        os.unlink(script.name)
    figures = json.loads(next(line for line in out.stdout.splitlines()
                              if line.startswith("{")))
    figures["throughput"] = round(figures["requests"] / figures["seconds"], 1)
    figures["empty"] = ""
    return figures


def median(runs: list[dict]) -> dict:
    """The runs of one load as one row: the median of each figure, the sums of the
    counts, and the range of the throughput when there are several."""
    row = {key: round(statistics.median(r[key] for r in runs), 2)
           for key in ("throughput", "p50_ms", "p99_ms")}
    row.update({key: sum(r.get(key) or 0 for r in runs)
                for key in ("requests", "errors", "empty")})
    if len(runs) > 1:
        row["range"] = f"{min(r['throughput'] for r in runs):,.0f}-" \
                       f"{max(r['throughput'] for r in runs):,.0f}"
    return row


def cache_figures(port: int) -> list[dict]:
    """The answer caches' counters, asked until every worker has answered once."""
    seen: dict[int, dict] = {}
    for _ in range(50):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/metrics", timeout=5) as r:
            figures = json.load(r)
        seen[figures["pid"]] = figures["cache"]
    return list(seen.values())


def hit_rate(before: list[dict], after: list[dict]) -> float | None:
    hits = sum(a["hits"] for a in after) - sum(b["hits"] for b in before)
    asked = hits + sum(a["misses"] for a in after) - sum(b["misses"] for b in before)
    return round(hits / asked, 3) if asked else None


def exposures_logged(settings: Settings) -> int:
    with contextlib.closing(warehouse.connect(settings)) as conn, conn.cursor() as cur:
        cur.execute("select count(*) from app.exposures")
        return cur.fetchone()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--requests", type=int, default=10_000_000)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--no-publish", action="store_true", help="skip the publish phase")
    parser.add_argument("--against", type=Path, metavar="CHECKOUT", action="append",
                        default=[],
                        help="also load the cache-off API of another checkout (e.g. a git "
                             "worktree of an earlier commit), right after this one's; "
                             "may be given more than once")
    parser.add_argument("--rounds", type=int, default=1,
                        help="take the cache-off loads and Postgres's this many times, in "
                             "turn; each row gives the median run and the range")
    parser.add_argument("--zipf", type=float, default=1.0,
                        help="exponent of the cache-on run's Zipf draw of users")
    args = parser.parse_args()

    settings = Settings.from_env()
    dsn = warehouse.reader_url(settings)
    conn = warehouse.connect(settings)
    with conn.cursor() as cur:
        cur.execute("select max(user_id), count(*) from recs.user_factors")
        args.users, users = cur.fetchone()
        cur.execute("select count(*) from recs.user_recommendations")
        (rows_published,), = cur.fetchall()
    conn.close()
    print(f"publish: {users:,} users, {rows_published:,} recommendation rows; "
          f"{args.connections} connections, {args.workers} API worker(s), "
          f"{os.cpu_count()} cores", flush=True)
    # cache off, on, and off without the exposure log (what logging every list costs)
    keys = (False, *args.against, True, "no log")
    apis = {key: (embedded.free_port(18100 + 10 * n), key) for n, key in enumerate(keys)}
    processes = {key: start_api(settings, port, args.workers, cache=key is True,
                                exposures=key != "no log",
                                root=key.resolve() if isinstance(key, Path) else ROOT)
                 for key, (port, _) in apis.items()}
    rows = []
    logged = exposures_logged(settings)
    off = [key for key in apis if key is not True]
    samples: dict = {key: [] for key in [*off, "postgres"]}
    tool = "wrk" if shutil.which("wrk") else "loadgen.py"
    try:
        warm = argparse.Namespace(**{**vars(args), "seconds": 3, "requests": 5000})
        for port, _ in apis.values():
            load("http", warm, port, dsn)  # connections, prepared statements
        for _ in range(args.rounds):  # in turn, so that the machine's moods fall on all
            for key in off:
                samples[key].append(wrk(args, apis[key][0])
                                    or load("http", args, apis[key][0], dsn))
            samples["postgres"].append(load("sql", args, apis[False][0], dsn))
        for key in off:
            name = ("API, cache off, no exposure log" if key == "no log"
                    else f"API ({key.name}), cache off" if isinstance(key, Path)
                    else "API, cache off")
            rows.append((f"{name}, {tool}", median(samples[key])))
        port = apis[True][0]
        hits = cache_figures(port)
        rows.append(("API, cache on, loadgen.py", load("http", args, port, dsn)))
        rows[-1][1]["hit_rate"] = hit_rate(hits, hits := cache_figures(port))
        # and viewers as they come back: a few often, most rarely
        rows.append((f"API, cache on, Zipf {args.zipf} users", load(
            "http", args, port, dsn, "--zipf", str(args.zipf))))
        rows[-1][1]["hit_rate"] = hit_rate(hits, cache_figures(port))
        logged = exposures_logged(settings) - logged
        rows.append(("Postgres (recs.recommend), loadgen.py", median(samples["postgres"])))
        # the stored top 50 minus five genres is short of 40: the rest is scored live,
        # by the API in NumPy, or by recs.recommend in SQL
        short = ("--k", "40", "--exclude", "Drama,Comedy,Action,Thriller,Romance")
        load("http", warm, apis[False][0], dsn, *short)  # the fold-in model, loaded once
        rows.append(("API, cache off, k=40, 5 genres out", load(
            "http", args, apis[False][0], dsn, *short)))
        rows.append(("Postgres, k=40, 5 genres out", load("sql", args, port, dsn, *short)))
        if not args.no_publish:
            port = apis[False][0]
            loader = subprocess.Popen(
                [sys.executable, str(HERE / "loadgen.py"), "http", "--port", str(port),
                 "--connections", str(args.connections), "--requests", "10000000",
                 "--seconds", "3600", "--users", str(args.users)],
                stdout=subprocess.PIPE, text=True)
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
                rows.append((f"API, cache off, during publish {pid}", during))
    finally:
        for process in processes.values():
            process.terminate()
            process.wait(10)

    postgres = next(r for name, r in rows if name.startswith("Postgres (recs.recommend)"))
    print(f"\n{'':44} {'requests':>9} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} "
          f"{'short':>6} {'cache hits':>10} {'vs Postgres':>11} {'req/s range':>13}")
    for name, r in rows:
        ratio = ("" if ", 5 genres out" in name
                 else f"{r['throughput'] / postgres['throughput']:.0%}")
        print(f"{name:44} {r['requests']:>9} {r['throughput']:>8} {r['p50_ms']:>7} "
              f"{r['p99_ms']:>7} {r['errors']:>6} {r['empty']:>6} {r.get('hit_rate', ''):>10} "
              f"{ratio:>11} {r.get('range', ''):>13}")
    # the target: uncached lookups at 70% of Postgres's own, p99 under 20 ms
    target = next(r for name, r in rows if name.startswith("API, cache off, "))
    ratio = target["throughput"] / postgres["throughput"]
    print(f"\ntarget (cache off): {target['throughput']:,.0f} req/s, "
          f"{ratio:.0%} of Postgres's {postgres['throughput']:,.0f} (target 70%: "
          f"{'met' if ratio >= 0.7 else 'missed'}), p99 {target['p99_ms']} ms (target 20: "
          f"{'met' if target['p99_ms'] < 20 else 'missed'})")
    print(f"exposures logged during the run: {logged:,}")
    if not args.no_publish:
        print(f"swap of publish {pid}: locks held {lock_ms:.1f} ms, waited "
              f"{timings.get('swap_wait', 0) * 1000:.1f} ms for readers")


if __name__ == "__main__":
    main()
