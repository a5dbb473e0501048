"""A replay of a release's own later history: ``moviesforyou backtest``.

The release is cut at the start of a day: a copy of it keeps the ratings from before
the cut, and the ratings of the next ``nights`` days are held back. Each arm (a
policy) replays those days in a throw-away home of its own (embedded warehouse,
MLflow store, Airflow home):

1. the nightly DAG runs once on the cut release and publishes;
2. each day, that day's viewers ask the API for their lists (so the exposure log
   records them, dated at the start of the replayed day), and the lists are judged
   against the ratings the viewers gave that day: the hit rate at 10 (a viewer
   rated a film of their list) and NDCG@10 of the films they liked (4 stars or
   more);
3. the day's ratings then go into ``app.ratings`` with their real times (the table
   the API's write path fills), and the arm's night follows (but for the last day:
   no later day would judge its lists).

Arms: ``refresh`` (the nightly DAG as configured: refresh nights, the tuning day,
the gate), ``refit`` (the same with ``MFY_REFIT=full``: every night re-fits in
Spark), ``frozen`` (no nightly run: the first model's lists, folded in live for
viewers who rated since) and ``experiment`` (``refresh`` with a challenger served to
half the viewers: :mod:`moviesforyou.orchestration.backtest_experiment`).

The table of every night and arm is printed, logged to the MLflow experiment
``moviesforyou-backtest`` (one run per arm, the night as the step) and plotted
(:mod:`moviesforyou.orchestration.backtest_record`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from moviesforyou.foundation import embedded, warehouse
from moviesforyou.foundation.config import Settings, find_project_root
from moviesforyou.foundation.errors import MoviesForYouError
from moviesforyou.foundation.releases import REQUIRED_FILES
from moviesforyou.ingestion.sources import detect_layout, release_for
from moviesforyou.orchestration import airflow_local
from moviesforyou.orchestration import backtest_experiment as experiment_arm
from serving import db
from spark_jobs import metrics

log = logging.getLogger(__name__)

#: Each arm's settings on top of the replay's: None runs no nightly at all.
ARMS: dict[str, dict[str, str] | None] = {
    "refresh": {}, "refit": {"MFY_REFIT": "full"}, "frozen": None,
    experiment_arm.ARM: {"MFY_CHALLENGER_SHARE": experiment_arm.SHARE}}
#: How each layout writes its ratings: file, separator, header line, text encoding.
RATINGS_FILE = {"100k": ("u.data", "\t", False, "latin-1"),
                "1m": ("ratings.dat", "::", False, "latin-1"),
                "csv": ("ratings.csv", ",", True, "utf-8")}
LIKED = 4.0
K = 10

Rating = tuple[int, int, float, int]  # user, movie, stars, unix time


class BacktestError(MoviesForYouError):
    pass


@dataclasses.dataclass
class Night:
    arm: str
    night: int
    day: dt.date
    viewers: int
    hit_rate_10: float | None
    ndcg_10: float | None
    coverage: float | None
    model_version: str | None
    family: str | None
    seconds: float


# --------------------------------------------------------------------------- the cut


def release_folder(source: Path, work: Path) -> tuple[Path, str]:
    """The folder holding the release's files (a zip is extracted under ``work``),
    and its layout."""
    if source.suffix == ".zip":
        with zipfile.ZipFile(source) as archive:
            archive.extractall(work / "release")
        source = work / "release"
    for folder in [source, *sorted(p for p in source.rglob("*") if p.is_dir())]:
        layout = detect_layout({p.name for p in folder.iterdir() if p.is_file()})
        if layout:
            return folder, layout
    raise BacktestError(f"{source}: no MovieLens ratings file "
                        f"({', '.join(f[0] for f in REQUIRED_FILES.values())})")


def read_ratings(folder: Path, layout: str) -> Iterator[Rating]:
    """The release's ratings, one at a time (a 25M release never sits in memory)."""
    name, sep, header, encoding = RATINGS_FILE[layout]
    with open(folder / name, encoding=encoding) as handle:
        if header:
            next(handle, None)
        for number, line in enumerate(handle, start=2 if header else 1):
            fields = line.rstrip("\r\n").split(sep)
            try:
                yield int(fields[0]), int(fields[1]), float(fields[2]), int(fields[3])
            except (IndexError, ValueError):
                raise BacktestError(f"{folder / name}, line {number}: expected user, movie, "
                                    f"rating and time, got {line.strip()[:80]!r}") from None


def cut_release(folder: Path, layout: str, cut: int, out: Path) -> Path:
    """A copy of the release in ``out`` whose ratings all come before ``cut``."""
    name, sep, header, encoding = RATINGS_FILE[layout]
    shutil.copytree(folder, out, ignore=shutil.ignore_patterns(name))
    with open(folder / name, encoding=encoding) as source, \
            open(out / name, "w", encoding=encoding) as kept:
        if header:
            kept.write(next(source))
        for line in source:
            if int(line.split(sep)[3]) < cut:
                kept.write(line)
    sums = out / "SHA256SUMS"  # the release's checksums, of the copy as it now is
    if sums.exists():
        listed = [line.split()[-1] for line in sums.read_text().splitlines() if line.strip()]
        sums.write_text("".join(f"{hashlib.sha256((out / f).read_bytes()).hexdigest()}  {f}\n"
                                for f in listed if (out / f).is_file()))
    return out


EPOCH = dt.date(1970, 1, 1)


def day_of(ts: int) -> dt.date:
    """The UTC day of a unix time."""
    return EPOCH + dt.timedelta(days=ts // 86_400)


def replay_days(ratings: Iterable[Rating], nights: int,
                start: dt.date | None) -> list[tuple[dt.date, list[Rating]]]:
    """The ``nights`` days replayed (UTC), from ``start`` or ending on the release's
    last day, with their ratings (only those are kept in memory)."""
    days: dict[dt.date, list[Rating]] = defaultdict(list)
    last = None
    for rating in ratings:
        day = day_of(rating[3])
        last = day if last is None or day > last else last
        if start is None or start <= day < start + dt.timedelta(days=nights):
            days[day].append(rating)
        if start is None and len(days) > nights:  # keep the latest nights days seen
            del days[min(days)]
    if last is None:
        return []
    first = start or last - dt.timedelta(days=nights - 1)
    return [(day, sorted(days.get(day, []), key=lambda r: r[3]))
            for day in (first + dt.timedelta(days=n) for n in range(nights))]


def midnight(day: dt.date) -> int:
    return int(dt.datetime.combine(day, dt.time(), dt.UTC).timestamp())


# --------------------------------------------------------------------------- judging


def judge(lists: dict[int, list[int]], ratings: list[Rating]) -> tuple[float | None, float | None]:
    """Hit rate at 10 of the viewers' lists against what they rated, and the mean NDCG@10
    of the films they liked (the training's metric; viewers who liked none are left
    out of it)."""
    rated, liked = defaultdict(set), defaultdict(set)
    for user, movie, stars, _ in ratings:
        rated[user].add(movie)
        if stars >= LIKED:
            liked[user].add(movie)
    hits = [any(m in rated[user] for m in shown[:K]) for user, shown in lists.items()]
    judged = {user: liked[user] for user in lists if liked[user]}
    return (sum(hits) / len(hits) if hits else None,
            metrics.ndcg_at_k(lists, judged, K) if judged else None)


# --------------------------------------------------------------------------- one arm


@contextlib.contextmanager
def clean_environment():
    """No MFY_* or MLflow variable of the caller reaches an arm's pipeline: its warehouse,
    MLflow store and settings are its own home's, never the caller's."""
    saved = dict(os.environ)
    for name in list(os.environ):
        if name.startswith(("MFY_", "MLFLOW_", "AIRFLOW")):
            del os.environ[name]
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def serving(settings: Settings):
    """The API on the arm's home (cache off: every lookup is the live one)."""
    port = embedded.free_port(18500)
    env = db.api_environment(settings, cache_size=0)
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "serving.app:app", "--host", "127.0.0.1", "--port",
         str(port), "--log-level", "warning"], cwd=find_project_root(), env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                urllib.request.urlopen(f"{base}/openapi.json", timeout=5)
                break
            except OSError:
                if process.poll() is not None or time.time() > deadline:
                    raise BacktestError("the API did not start") from None
                time.sleep(0.3)
        yield base
    finally:
        process.terminate()
        process.wait(10)


def nightly(settings: Settings, night: int, anchor: dt.date) -> None:
    """The nightly DAG once, its logical date ``night`` days after ``anchor``."""
    when = dt.datetime.combine(anchor + dt.timedelta(days=night), dt.time(2, 30), dt.UTC)
    status, log, _ = airflow_local.run_dag(settings, conf={"fail_fast": True},
                                           logical_date=when.isoformat())
    if status:
        raise BacktestError(f"night {night}: the nightly DAG failed (log: {log})")


def lists_for(base: str, settings: Settings, users: list[int]) -> dict[int, list[int]]:
    """Each viewer's top ``K`` as the API at ``base`` serves it (and logs it). A viewer
    it does not know yet, whose first rating comes on a replayed day (a CSV release
    lists no users), gets the cold-start list of ``recs.recommend_logged`` in SQL."""
    lists = {}
    for user in users:
        try:
            with urllib.request.urlopen(f"{base}/api/users/{user}/recommendations?k={K}",
                                        timeout=60) as answer:
                lists[user] = [m["movie_id"] for m in json.load(answer)["recommendations"]]
        except urllib.error.HTTPError as error:
            if error.code != 404:
                raise
            with contextlib.closing(warehouse.connect(settings)) as conn, conn, \
                    conn.cursor() as cur:
                cur.execute("select movie_id from recs.recommend_logged(%s, %s) order by rank",
                            (user, K))
                lists[user] = [m for (m,) in cur.fetchall()]
    return lists


def _database_now(settings: Settings) -> dt.datetime:
    with contextlib.closing(warehouse.connect(settings)) as conn, conn.cursor() as cur:
        cur.execute("select now()")
        return cur.fetchone()[0]


def date_exposures(settings: Settings, since: dt.datetime, day: dt.date, lists: int,
                   timeout: float = 30) -> int:
    """Give the exposures the API logged for ``day`` (since ``since``, once all ``lists``
    are written: it writes every second) the replayed day's start as their time, before
    every rating of that day: the online measures then join them with the ratings that
    came after, as they would have live. Returns the exposures dated."""
    deadline = time.time() + timeout
    with contextlib.closing(warehouse.connect(settings)) as conn, conn.cursor() as cur:
        while True:
            cur.execute("select count(*) from app.exposures where shown_at >= %s", (since,))
            (logged,), = cur.fetchall()
            conn.rollback()  # a fresh snapshot for the next look
            if logged >= lists or time.time() > deadline:
                break
            time.sleep(0.3)
        cur.execute("update app.exposures set shown_at = to_timestamp(%s) where shown_at >= %s",
                    (midnight(day), since))
        conn.commit()
        return cur.rowcount


def replay_arm(arm: str, settings: Settings, days: list[tuple[dt.date, list[Rating]]],
               anchor: dt.date, on_night: Callable[[Night], None] | None = None) -> list[Night]:
    """One arm over ``days``, in ``settings``' home (the cut release as its source)."""
    overrides = ARMS[arm]
    warehouse.ensure(settings)
    nightly(settings, 0, anchor)
    run = experiment_arm.start(settings) if arm == experiment_arm.ARM else None
    out = []
    try:
        with serving(settings) as base:
            for night, (day, ratings) in enumerate(days, start=1):
                started = time.time()
                since = _database_now(settings)
                lists = lists_for(base, settings, sorted({r[0] for r in ratings}))
                date_exposures(settings, since, day, len(lists))
                with contextlib.closing(warehouse.connect(settings)) as conn, conn, \
                        conn.cursor() as cur:
                    cur.executemany(
                        "insert into app.ratings (dataset, user_id, movie_id, rating, rated_at) "
                        "values (%s, %s, %s, %s, to_timestamp(%s))",
                        [(settings.dataset, u, m, s, t) for u, m, s, t in ratings])
                    cur.execute("select count(*) from recs.movie_catalogue")
                    (films,), = cur.fetchall()
                    cur.execute("select model_version, coalesce(to_jsonb(p) ->> 'list_family', "
                                "'als') from recs.publication as p")
                    models = {arm: cur.fetchone()}
                    if run is not None:
                        models = {f"{arm}/{a}": m for a, m in experiment_arm.models(cur).items()}
                groups = ({arm: lists} if run is None else
                          {f"{arm}/{a}": g for a, g in experiment_arm.split(lists, run).items()})
                if overrides is not None and night < len(days):  # no day judges the last
                    nightly(settings, night, anchor)
                for label, group in groups.items():
                    hit_rate, ndcg = judge(group, ratings)
                    shown = {m for films_shown in group.values() for m in films_shown}
                    result = Night(label, night, day, len(group), hit_rate, ndcg,
                                   len(shown) / films if films and group else None,
                                   *models[label], round(time.time() - started, 1))
                    out.append(result)
                    if on_night:
                        on_night(result)
        if run is not None:
            log.info(experiment_arm.verdict(settings))
    finally:
        if settings.is_embedded:
            warehouse.embedded(settings).stop()
    return out


def arm_settings(arm: str, home: Path, dataset: str, source: Path,
                 extra: dict[str, str]) -> Settings:
    env = {"MFY_HOME": str(home), "MFY_DATASET": dataset, "MFY_SOURCE": str(source),
           "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow' / 'mlflow.db'}",
           **extra, **(ARMS[arm] or {})}
    return Settings.from_env(env)


# --------------------------------------------------------------------------- the replay


def backtest(dataset: str, source: Path, nights: int, *, start: dt.date | None = None,
             arms: tuple[str, ...] = ("refresh",), work: Path | None = None,
             extra: dict[str, str] | None = None,
             on_night: Callable[[Night], None] | None = None) -> list[Night]:
    """Replay ``nights`` days of ``source`` under each arm (see the module's doc).

    Args:
        extra: settings of every arm's pipeline (e.g. ``MFY_TRAIN_CONF``,
            ``MFY_TUNE_DAY``); nothing else of the caller's environment reaches them.
        work: where the throw-away homes go (a temporary folder, removed after).
    """
    unknown = set(arms) - set(ARMS)
    if unknown:
        raise BacktestError(f"unknown arm(s) {', '.join(sorted(unknown))}: "
                            f"choose from {', '.join(ARMS)}")
    if nights < 1:
        raise BacktestError("--nights must be at least 1")
    owned = work is None
    work = Path(tempfile.mkdtemp(prefix="mfy-backtest-")) if owned else work
    try:
        folder, layout = release_folder(source, work)
        release_for(dataset, layout)  # a known release, or a named one of a known layout
        days = replay_days(read_ratings(folder, layout), nights, start)
        if not days:
            raise BacktestError(f"{source}: the release has no ratings")
        cut = midnight(days[0][0])
        if not any(r[3] < cut for r in read_ratings(folder, layout)):
            raise BacktestError(f"no rating of {source} comes before {days[0][0]}: "
                                "nothing to publish from")
        cut_folder = cut_release(folder, layout, cut, work / "cut")
        # the DAG's weekday rules see the replayed weekdays, on dates inside its schedule
        anchor = dt.date(2026, 1, 5) + dt.timedelta(days=days[0][0].weekday())  # a Monday
        results = []
        with clean_environment():
            for arm in arms:
                settings = arm_settings(arm, work / arm, dataset, cut_folder, extra or {})
                results += replay_arm(arm, settings, days, anchor, on_night)
        return results
    finally:
        if owned:
            shutil.rmtree(work, ignore_errors=True)
