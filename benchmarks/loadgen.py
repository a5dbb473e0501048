"""A small closed-loop load generator, run as its own process by api_load.py.

``http`` mode keeps ``--connections`` HTTP/1.1 keep-alive connections busy on
``GET /api/users/<random user>/recommendations?k=10``; ``sql`` mode does the
same lookup (``recs.recommend``) straight on Postgres with as many asyncpg
connections. Both stop at ``--requests`` or ``--seconds``, whichever comes
first, and print one JSON line: requests, errors, empty answers, throughput
and latency percentiles (ms).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def user_picker(args, rng: random.Random):
    """Draws user ids: uniform over 1..USERS, or with ``--zipf S`` the way viewers come
    back (the r-th most active of a fixed shuffle of the ids asks with weight 1/r^S)."""
    if not args.zipf:
        return lambda: rng.randint(1, args.users)
    order = list(range(1, args.users + 1))
    random.Random(args.seed).shuffle(order)  # the same most active viewers in every worker
    cumulative, total = [], 0.0
    for r in range(1, args.users + 1):
        total += r ** -args.zipf
        cumulative.append(total)
    return lambda: rng.choices(order, cum_weights=cumulative)[0]


async def http_worker(args, state, rng: random.Random) -> None:
    reader, writer = await asyncio.open_connection(args.host, args.port)
    pick = user_picker(args, rng)
    try:
        while state["sent"] < args.requests and time.perf_counter() < state["deadline"]:
            state["sent"] += 1
            user = pick()
            writer.write(f"GET /api/users/{user}/recommendations?{args.query} HTTP/1.1\r\n"
                         f"Host: {args.host}\r\n\r\n".encode())
            started = time.perf_counter()
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            length = next(int(line.split(":", 1)[1]) for line in lines
                          if line.lower().startswith("content-length:"))
            body = await reader.readexactly(length)
            state["latencies"].append(time.perf_counter() - started)
            if status != 200:
                state["errors"] += 1
            elif body.count(b'"movie_id"') != args.k:
                state["empty"] += 1
    finally:
        writer.close()


async def sql_worker(args, state, rng: random.Random, pool) -> None:
    pick = user_picker(args, rng)
    async with pool.acquire() as conn:
        while state["sent"] < args.requests and time.perf_counter() < state["deadline"]:
            state["sent"] += 1
            user = pick()
            started = time.perf_counter()
            try:
                rows = await conn.fetch(
                    "select rank, movie_id, title, release_year, genres, score, "
                    "predicted_rating, source, model_version, publish_id "
                    "from recs.recommend($1, $2, $3::text[])", user, args.k, args.exclude)
            except Exception:
                state["errors"] += 1
                continue
            state["latencies"].append(time.perf_counter() - started)
            if len(rows) != args.k:
                state["empty"] += 1


async def main_async(args) -> dict:
    state = {"sent": 0, "errors": 0, "empty": 0, "latencies": [],
             "deadline": time.perf_counter() + args.seconds}
    # SIGTERM ends the run early but still prints the figures (api_load.py's publish phase)
    import signal

    asyncio.get_running_loop().add_signal_handler(
        signal.SIGTERM, lambda: state.update(deadline=0.0))
    pool = None
    if args.mode == "sql":
        import asyncpg

        pool = await asyncpg.create_pool(args.dsn, min_size=args.connections,
                                         max_size=args.connections)
    started = time.perf_counter()
    workers = []
    for i in range(args.connections):
        rng = random.Random(args.seed + i)
        workers.append(http_worker(args, state, rng) if pool is None
                       else sql_worker(args, state, rng, pool))
    await asyncio.gather(*workers)
    elapsed = time.perf_counter() - started
    if pool is not None:
        await pool.close()
    latencies = sorted(state["latencies"])
    return {"mode": args.mode, "connections": args.connections, "requests": len(latencies),
            "errors": state["errors"], "empty": state["empty"], "seconds": round(elapsed, 2),
            "throughput": round(len(latencies) / elapsed, 1),
            "p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
            "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
            "mean_ms": round(statistics.fmean(latencies) * 1000, 2) if latencies else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=["http", "sql"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--dsn", help="libpq URL (sql mode)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--users", type=int, default=943, help="user ids drawn from 1..USERS")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--zipf", type=float, default=0.0,
                        help="draw users with Zipf weights of this exponent (0: uniform)")
    parser.add_argument("--k", type=int, default=10, help="recommendations per lookup")
    parser.add_argument("--exclude", default="", help="genres to exclude, comma-separated: "
                        "long lists make the lookup score extra movies live")
    args = parser.parse_args()
    args.query = f"k={args.k}" + (f"&exclude_genres={args.exclude}" if args.exclude else "")
    args.exclude = [g for g in args.exclude.split(",") if g]
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    print(json.dumps(asyncio.run(main_async(args))))


if __name__ == "__main__":
    main()
