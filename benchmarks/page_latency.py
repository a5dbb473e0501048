"""Server time of each web page's data request, as the ``Server-Timing`` header reports it.

Needs a published model in the warehouse (``make run`` first). Starts the API
(one worker, as the read-only role), then asks, one request at a time, for the
data of each page the viewer opens:

- the home page: ``/api/home?k=6``;
- a user's page: ``/api/users/<id>/page`` (sections, the ranked list and the
  ratings in one request), for random users of the release;
- the same page of a newcomer who rated films since the publish (their list is
  folded in live against the model; the first request solves, later ones hit
  the per-viewer cache, so both are shown);
- the search page: ``/api/movies/search`` with a misspelt title, and with a
  genre, a year range and a viewer's predicted ratings as the order;
- a film's similar movies: ``/api/movies/<id>/similar``.

For each it prints p50, p95 and the maximum of the server time (from the
request to the response headers, in the API process) and of the round trip on
loopback, side by side. The goal on ml-100k is p95 <= 50 ms server time.

Usage::

    uv run python benchmarks/page_latency.py [--requests 200]
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from api_load import start_api  # noqa: E402
from loadgen import percentile  # noqa: E402

from moviesforyou.foundation import embedded, warehouse  # noqa: E402
from moviesforyou.foundation.config import Settings  # noqa: E402


def ask(conn: http.client.HTTPConnection, method: str, path: str, body=None,
        token: str | None = None) -> tuple[int, dict, float, float]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    start = time.perf_counter()
    conn.request(method, path, body=None if body is None else json.dumps(body),
                 headers=headers)
    response = conn.getresponse()
    data = response.read()
    wall = (time.perf_counter() - start) * 1000
    timing = response.getheader("Server-Timing", "")
    server = float(timing.partition("dur=")[2] or "nan")
    return response.status, json.loads(data or b"null"), server, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="per page")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    settings = Settings.from_env()
    connection = warehouse.connect(settings)
    with connection.cursor() as cur:
        cur.execute("select distinct user_id from recs.user_recommendations")
        users = [u for (u,) in cur.fetchall()]
        cur.execute("select movie_id from recs.movie_catalogue where rating_count >= 20")
        movies = [m for (m,) in cur.fetchall()]
        cur.execute("select segment from recs.popular_movies where list_type = 'genre' "
                    "group by segment")
        genres = [g for (g,) in cur.fetchall()]
    connection.close()
    if not users:
        raise SystemExit("nothing is published: run `moviesforyou run` first")

    port = embedded.free_port(18300)
    api = start_api(settings, port, workers=1)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        # a newcomer who rated three films after the publish: their page is folded in
        _, newcomer, _, _ = ask(conn, "POST", "/api/users?k=10", {"preferred_genres": genres[:2]})
        picks = rng.sample(movies, 3)
        ask(conn, "POST", f"/api/users/{newcomer['user_id']}/ratings",
            {"ratings": [{"movie_id": m, "rating": 5} for m in picks]}, newcomer["token"])
        pages = {
            "home": lambda: ("/api/home?k=6", None),
            "user page (release user)": lambda: (
                f"/api/users/{rng.choice(users)}/page?k=6&n=20", None),
            "user page (newcomer, folded in)": lambda: (
                f"/api/users/{newcomer['user_id']}/page?k=6&n=20", newcomer["token"]),
            "search: misspelt title": lambda: (
                "/api/movies/search?q=shawshenk&limit=20", None),
            "search: genre, years, predicted": lambda: (
                f"/api/movies/search?genres={rng.choice(genres)}&year_from=1980"
                f"&year_to=1999&sort=predicted&limit=20&user_id={rng.choice(users)}", None),
            "similar movies": lambda: (f"/api/movies/{rng.choice(movies)}/similar?k=10", None),
        }
        for make in pages.values():  # warm-up: connections, prepared statements
            for _ in range(5):
                ask(conn, "GET", *make())
        rows = []
        for name, make in pages.items():
            server, wall = [], []
            for _ in range(args.requests):
                path, token = make()
                status, body, spent, round_trip = ask(conn, "GET", path, token=token)
                if status != 200:
                    raise SystemExit(f"{path}: {status} {body}")
                server.append(spent)
                wall.append(round_trip)
            rows.append((name, server, wall))
    finally:
        conn.close()
        api.terminate()
        api.wait(10)

    print(f"\n{settings.dataset}: {args.requests} requests per page, one at a time, "
          f"1 API worker\n")
    print(f"{'page data request':34} {'server p50':>10} {'p95':>7} {'max':>7} "
          f"{'round trip p50':>14} {'p95':>7}   p95 <= 50 ms")
    for name, server, wall in rows:
        server, wall = sorted(server), sorted(wall)
        p95 = percentile(server, 0.95)
        print(f"{name:34} {percentile(server, 0.5):>10.1f} {p95:>7.1f} {server[-1]:>7.1f} "
              f"{percentile(wall, 0.5):>14.1f} {percentile(wall, 0.95):>7.1f}   "
              f"{'met' if p95 <= 50 else f'missed by {p95 - 50:.1f} ms'}")


if __name__ == "__main__":
    main()
