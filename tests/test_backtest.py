"""``moviesforyou backtest``: the cut, the judging, and a two-night replay through the
nightly DAG and the API."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import math
import subprocess
import sys

import pytest

from conftest import QUICK_TRAIN, ROOT, call, query
from moviesforyou.foundation import warehouse
from moviesforyou.orchestration import backtest

DAY = 86_400


def test_judging_counts_hits_and_the_ndcg_of_liked_films():
    lists = {1: [10, 11, 12], 2: [20, 21], 3: [30]}
    ratings = [(1, 11, 5.0, 0), (1, 99, 4.0, 0),  # a liked hit at rank 2, a liked miss
               (2, 21, 2.0, 0),  # a hit, not liked
               (3, 31, 3.0, 0)]  # a miss
    hit_rate, ndcg = backtest.judge(lists, ratings)
    assert hit_rate == pytest.approx(2 / 3)
    # only viewer 1 liked films: 1/log2(3) found, against two ideal places
    assert ndcg == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    assert backtest.judge({}, []) == (None, None)


def test_the_cut_keeps_what_came_before_and_holds_the_days_back(tmp_path):
    release = tmp_path / "ml-100k"
    release.mkdir()
    start = 893_000_000 - 893_000_000 % DAY  # a midnight (UTC)
    lines = [f"{u}\t{m}\t{r}\t{t}\n" for u, m, r, t in [
        (1, 1, 5, start - 5), (2, 1, 4, start + 10), (1, 2, 3, start + DAY + 1),
        (3, 3, 2, start + 2 * DAY + 7)]]
    (release / "u.data").write_text("".join(lines), encoding="latin-1")
    (release / "u.item").write_text("1|Toy Story (1995)|...\n", encoding="latin-1")
    (release / "SHA256SUMS").write_text("00  u.data\n00  u.item\n")
    folder, layout = backtest.release_folder(release, tmp_path)
    assert (folder, layout) == (release, "100k")
    ratings = backtest.read_ratings(folder, layout)
    days = backtest.replay_days(ratings, 2, None)  # the last two days
    first = dt.datetime.fromtimestamp(start + DAY, dt.UTC).date()
    assert [(d, [r[:3] for r in rs]) for d, rs in days] == [
        (first, [(1, 2, 3.0)]), (first + dt.timedelta(days=1), [(3, 3, 2.0)])]
    cut = backtest.cut_release(folder, layout, backtest.midnight(first), tmp_path / "cut")
    assert (cut / "u.data").read_text() == "".join(lines[:2])
    assert (cut / "u.item").exists()
    sums = dict(reversed(line.split()) for line in (cut / "SHA256SUMS").read_text().splitlines())
    assert sums == {f: hashlib.sha256((cut / f).read_bytes()).hexdigest()
                    for f in ("u.data", "u.item")}
    with pytest.raises(backtest.BacktestError, match="unknown arm"):
        backtest.backtest("ml-100k", release, 2, arms=("sometimes",))


@pytest.mark.integration
def test_a_viewer_the_api_does_not_know_yet_gets_the_cold_start_list(api_server, published,
                                                                      wh):
    since = query(wh, "select now()")[0][0]
    unknown = 2_000_000  # a CSV release's viewer whose first rating is in the replay
    lists = backtest.lists_for(api_server, published, [1, unknown])
    status, answer = call(api_server, "/api/users/1/recommendations?k=10")
    assert status == 200 and lists[1] == [m["movie_id"] for m in answer["recommendations"]]
    assert call(api_server, f"/api/users/{unknown}/recommendations?k=10")[0] == 404
    cold = [m for (m,) in query(wh, "select movie_id from recs.recommend(%s, 10) order by rank",
                                (unknown,))]
    assert len(cold) == 10 and lists[unknown] == cold
    logged = query(wh, """select source, channel, movie_ids from app.exposures
                          where user_id = %s and shown_at >= %s""", (unknown, since))
    assert logged == [("cold", "sql", cold)]


@pytest.fixture(scope="module")
def year_of_ratings(tmp_path_factory):
    """A synthetic release in the 100K layout whose 20,000 ratings fall in one year (about
    55 a day): the suite's replay costs three DAG runs, and the real ml-100k replays in
    docs/operations/online-measures.md."""
    from moviesforyou.ingestion import synth

    folder = tmp_path_factory.mktemp("backtest") / "ml-100k"
    synth.generate(folder, synth.SynthSpec(n_ratings=20_000, n_users=300, n_movies=600, seed=8,
                                           first_year=2018, last_year=2018), layout="100k")
    return folder


@pytest.mark.integration
@pytest.mark.slow
def test_two_nights_replayed_through_the_dag_and_the_api(year_of_ratings, tmp_path):
    """The release cut before two of its days: the first publish, then each day its
    viewers' lists through the API, judged, their ratings in, and a refresh night."""
    ratings = list(backtest.read_ratings(year_of_ratings, "100k"))
    times = sorted(r[3] for r in ratings)
    start = dt.datetime.fromtimestamp(times[len(times) * 4 // 5], dt.UTC).date()
    days = backtest.replay_days(ratings, 2, start)
    assert all(rs for _, rs in days)  # both days have viewers
    extra = {"MFY_TRAIN_CONF": json.dumps(QUICK_TRAIN), "MFY_TUNE_DAY": "nev",
             "MFY_DBT_REBUILD_DAY": "nev"}
    nights = backtest.backtest("ml-100k", year_of_ratings, 2, start=start, arms=("refresh",),
                               work=tmp_path, extra=extra)
    assert [(n.arm, n.night, n.day) for n in nights] == [
        ("refresh", 1, days[0][0]), ("refresh", 2, days[1][0])]
    for night, (_, rated) in zip(nights, days, strict=True):
        assert night.viewers == len({r[0] for r in rated})
        assert 0 <= night.hit_rate_10 <= 1 and 0 < night.coverage <= 1
        assert night.family and night.model_version
    # the refresh night after day 1 published a newer model for day 2
    assert int(nights[1].model_version) > int(nights[0].model_version)

    # the arm's home: every list served was logged, every held-back rating went in, and
    # nothing after the replayed days was ever loaded
    settings = backtest.arm_settings("refresh", tmp_path / "refresh", "ml-100k",
                                     tmp_path / "cut", extra)
    with backtest.clean_environment():
        warehouse.ensure(settings)
        try:
            with contextlib.closing(warehouse.connect(settings)) as conn:
                (logged,), = query(conn, "select count(*) from app.exposures")
                dated = query(conn, "select extract(epoch from shown_at)::bigint, count(*) "
                                    "from app.exposures group by 1 order by 1")
                (rated,), = query(conn, "select count(*) from app.ratings")
                (raw,), = query(conn, "select count(*) from raw.ratings")
        finally:
            warehouse.embedded(settings).stop()
    assert logged == sum(n.viewers for n in nights)
    # each day's lists are dated at the replayed day's start, before its ratings
    assert dated == [(backtest.midnight(d), n.viewers) for (d, _), n in zip(days, nights,
                                                                           strict=True)]
    assert rated == sum(len(r) for _, r in days)
    assert raw == sum(t < backtest.midnight(start) for t in times)


def test_the_command_says_what_is_wrong(tmp_path):
    done = subprocess.run([sys.executable, "-m", "moviesforyou", "backtest", "-s", str(tmp_path),
                           "-n", "2"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode != 0
    said = " ".join((done.stdout + done.stderr).split())  # the console wraps long lines
    assert f"error: {tmp_path}: no MovieLens ratings file" in said, said

