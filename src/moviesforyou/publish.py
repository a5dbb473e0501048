"""Publish the recommendations: build beside the live tables, validate, swap in one step.

Input: the champion in the MLflow registry and the marts dbt built.
Output: the ``recs`` tables, the SQL functions on them, and a row in
``ops.publish_log``.

1. **Build.** The champion's factors are scored in Spark (``spark_jobs.score``)
   and COPYed, with the cold-start lists and the catalogue (built in SQL from
   the marts), into ``recs_build``, a schema readers never look at.
2. **Validate.** The ``recs`` suite (``expectations/recs.yml``) runs on the
   build schema. A failure records the result, drops the build, raises
   :class:`~moviesforyou.quality.ValidationFailed` and leaves the live tables
   as they were.
3. **Swap.** One short transaction locks the live tables, moves them to
   ``recs_history`` (renamed ``<table>__p<publish_id>``) and moves the new ones
   into ``recs``. Readers hold a table only for the length of a query, so they
   wait for at most the swap (milliseconds), and a query reads either the old
   or the new version, never a mix and never an empty table. The lock wait is
   bounded by a ``lock_timeout`` shorter than ``deadlock_timeout`` and retried,
   so the swap gives way to readers rather than aborting them.
4. **Keep.** The last ``MFY_RECS_KEEP`` versions stay in ``recs_history``;
   :func:`rollback` swaps one of them back in the same way.

Every row of every recs table carries its ``publish_id`` and ``model_version``,
so any answer says which model and publish produced it.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2.errors
from psycopg2 import sql

from moviesforyou import quality, warehouse
from moviesforyou.config import Settings
from moviesforyou.errors import MoviesForYouError

log = logging.getLogger(__name__)

LIVE, BUILD, HISTORY = "recs", "recs_build", "recs_history"
#: The published tables, in the order the swap moves them.
TABLES = ("publication", "user_recommendations", "popular_movies", "similar_movies",
          "movie_catalogue", "user_factors", "movie_factors")
_LOCK_KEY = "moviesforyou.publish"


class PublishError(MoviesForYouError):
    pass


@dataclass(frozen=True)
class PublishConfig:
    """Settings of a publish; each has an environment variable."""

    n: int = 50  #: MFY_RECS_N: recommendations per user
    similar_n: int = 20  #: MFY_SIMILAR_N: neighbours per movie
    similar_min_ratings: int = 10  #: MFY_SIMILAR_MIN_RATINGS: a neighbour needs this many
    popular_n: int = 50  #: MFY_POPULAR_N: length of each cold-start list
    keep: int = 3  #: MFY_RECS_KEEP: earlier versions kept for rollback
    lock_timeout_ms: int = 200  #: MFY_SWAP_LOCK_TIMEOUT_MS: below deadlock_timeout (1 s)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> PublishConfig:
        env = os.environ if env is None else env
        names = {"n": "MFY_RECS_N", "similar_n": "MFY_SIMILAR_N",
                 "similar_min_ratings": "MFY_SIMILAR_MIN_RATINGS", "popular_n": "MFY_POPULAR_N",
                 "keep": "MFY_RECS_KEEP", "lock_timeout_ms": "MFY_SWAP_LOCK_TIMEOUT_MS"}
        values = {}
        for attr, var in names.items():
            if env.get(var):
                try:
                    values[attr] = int(env[var])
                except ValueError:
                    raise PublishError(f"{var}={env[var]!r}: expected a whole number") from None
                if values[attr] < (0 if attr == "keep" else 1):
                    raise PublishError(f"{var}={env[var]!r}: too small")
        return cls(**values)


@dataclass
class PublishResult:
    publish_id: int
    model_version: str
    row_counts: dict[str, int]
    timings: dict[str, float] = field(default_factory=dict)
    swap_lock_ms: float = 0.0
    validation: dict | None = None


# --------------------------------------------------------------------------- the log


def _log_start(cur, settings: Settings, action: str, **values) -> int:
    cur.execute("""insert into ops.publish_log (action, status, dataset, model_name,
                       model_version, mlflow_run_id, metrics)
                   values (%s, 'building', %s, %s, %s, %s, %s) returning publish_id""",
                (action, settings.dataset, values.get("model_name"),
                 values.get("model_version"), values.get("run_id"),
                 json.dumps(values.get("metrics", {}))))
    return cur.fetchone()[0]


def _log_update(settings: Settings, publish_id: int, **values) -> None:
    columns = sql.SQL(", ").join(
        sql.SQL("{} = %s").format(sql.Identifier(k)) for k in values)
    params = [json.dumps(v) if isinstance(v, dict) else v for v in values.values()]
    with contextlib.closing(warehouse.connect(settings)) as conn, conn, conn.cursor() as cur:
        cur.execute(sql.SQL("update ops.publish_log set {} where publish_id = %s").format(columns),
                    [*params, publish_id])


def live_publish_id(cur) -> int | None:
    cur.execute("select to_regclass('recs.publication') is not null")
    if not cur.fetchone()[0]:
        return None
    cur.execute("select publish_id from recs.publication")
    row = cur.fetchone()
    return row[0] if row else None


# --------------------------------------------------------------------------- build


_DDL = """
create table {s}.publication (
    publish_id bigint not null,
    dataset text not null,
    model_name text not null,
    model_version text not null,
    mlflow_run_id text,
    generated_at timestamptz not null,
    recommendations_per_user integer not null,
    global_mean double precision not null,
    rating_min double precision not null,
    rating_max double precision not null,
    ratings_through timestamptz,
    source_loaded_at timestamptz,
    constraint publication_p{pid}_pkey primary key (publish_id)
);
create table {s}.user_recommendations (
    user_id integer not null,
    rank integer not null,
    movie_id integer not null,
    score double precision not null,
    predicted_rating double precision,
    source text not null,
    model_version text not null default {version},
    publish_id bigint not null default {pid},
    generated_at timestamptz not null default {generated},
    constraint user_recommendations_p{pid}_pkey primary key (user_id, rank)
);
create table {s}.similar_movies (
    movie_id integer not null,
    rank integer not null,
    similar_movie_id integer not null,
    similarity double precision not null,
    model_version text not null default {version},
    publish_id bigint not null default {pid},
    generated_at timestamptz not null default {generated},
    constraint similar_movies_p{pid}_pkey primary key (movie_id, rank)
);
create table {s}.popular_movies (
    list_type text not null,
    segment text not null,
    rank integer not null,
    movie_id integer not null,
    score double precision not null,
    rating_count integer not null,
    mean_rating double precision,
    model_version text not null default {version},
    publish_id bigint not null default {pid},
    generated_at timestamptz not null default {generated},
    constraint popular_movies_p{pid}_pkey primary key (list_type, segment, rank)
);
create table {s}.movie_catalogue (
    movie_id integer not null,
    title text not null,
    original_title text,
    release_year integer,
    genres text[] not null,
    mean_rating double precision,
    bayesian_rating double precision,
    rating_count integer not null,
    imdb_url text,
    search_text text not null,
    publish_id bigint not null default {pid},
    constraint movie_catalogue_p{pid}_pkey primary key (movie_id)
);
"""

#: user_factors and movie_factors: the same shape, keyed by {side}_id.
_FACTORS_DDL = """
create table {s}.{table} (
    {key} integer not null,
    bias double precision not null,
    explicit_factors double precision[],
    implicit_factors double precision[],
    model_version text not null default {version},
    publish_id bigint not null default {pid},
    constraint {pkey} primary key ({key})
);
"""

_COMMENTS = {
    "publication": "The publish behind every other recs table: model, time and data freshness.",
    "user_recommendations": (
        "Top-N movies per user, already-rated movies excluded. source: als (implicit ALS "
        "ranking) or popular (users the model does not know yet)."),
    "similar_movies": "Nearest movies per movie by cosine similarity of implicit ALS factors.",
    "popular_movies": (
        "Cold-start lists by list_type: overall, genre, age_gender (age band and gender), "
        "occupation and season of the rating date; score is the number of ratings."),
    "movie_catalogue": "The catalogue as the API serves it, with a trigram-searchable title.",
    "user_factors": "Per-user bias and factor vectors of the explicit and implicit ALS models.",
    "movie_factors": "Per-movie bias and factor vectors of the explicit and implicit ALS models.",
}

_COLD_START = """
insert into {s}.popular_movies (list_type, segment, rank, movie_id, score, rating_count,
                               mean_rating)
with ratings as (
    select f.user_id, f.movie_id, f.rating, d.season
    from marts.fct_ratings as f
    left join marts.dim_dates as d on d.date_sk = f.date_sk
    where f.dataset = %(dataset)s
),
counted as (
    select 'overall' as list_type, 'all' as segment, movie_id, count(*) as n,
           avg(rating) as mean
    from ratings group by movie_id
    union all
    select 'genre', b.genre, r.movie_id, count(*), avg(r.rating)
    from ratings as r join marts.bridge_movie_genres as b on b.movie_id = r.movie_id
    group by b.genre, r.movie_id
    union all
    select 'age_gender', u.age_band || ' ' || u.gender, r.movie_id, count(*), avg(r.rating)
    from ratings as r join marts.dim_users as u on u.user_id = r.user_id
    where u.has_demographics and u.gender is not null
    group by u.age_band, u.gender, r.movie_id
    union all
    select 'occupation', u.occupation, r.movie_id, count(*), avg(r.rating)
    from ratings as r join marts.dim_users as u on u.user_id = r.user_id
    where u.has_demographics
    group by u.occupation, r.movie_id
    union all
    select 'season', r.season, r.movie_id, count(*), avg(r.rating)
    from ratings as r where r.season is not null
    group by r.season, r.movie_id
),
ranked as (
    select *, row_number() over (
        partition by list_type, segment order by n desc, mean desc, movie_id) as rank
    from counted
)
select list_type, segment, rank, movie_id, n, n, mean
from ranked where rank <= %(n)s
"""

_CATALOGUE = """
insert into {s}.movie_catalogue (movie_id, title, original_title, release_year, genres,
    mean_rating, bayesian_rating, rating_count, imdb_url, search_text)
select movie_id, title, original_title, release_year, coalesce(genres, '{{}}'), mean_rating,
       bayesian_rating, rating_count, imdb_url,
       lower(concat_ws(' ', title, release_year, original_title))
from marts.dim_movies
"""

_PUBLICATION = """
insert into {s}.publication
select %(pid)s, %(dataset)s, %(model_name)s, %(version)s, %(run_id)s, %(generated)s, %(n)s,
       %(mu)s, %(lo)s, %(hi)s,
       (select max(rated_at) from marts.fct_ratings where dataset = %(dataset)s),
       (select max(loaded_at) from ops.source_loads
        where dataset = %(dataset)s and status in ('loaded', 'unchanged'))
"""


def _copy_parquet(cur, table: sql.Composable, folder: Path, columns: list[str]) -> int:
    """COPY a Parquet folder (Spark's output) into ``table``, in bounded batches."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.dataset as pads

    rows = 0
    statement = sql.SQL("copy {} ({}) from stdin with (format csv)").format(
        table, sql.SQL(", ").join(map(sql.Identifier, columns)))
    for batch in pads.dataset(str(folder), format="parquet").to_batches(
            columns=columns, batch_size=250_000):
        if batch.num_rows == 0:
            continue
        buffer = io.BytesIO()
        pacsv.write_csv(pa.Table.from_batches([batch]), buffer,
                        write_options=pacsv.WriteOptions(include_header=False))
        buffer.seek(0)
        cur.copy_expert(statement.as_string(cur), buffer)
        rows += batch.num_rows
    return rows


def _pg_array(vector) -> str:
    return "{" + ",".join(repr(float(x)) for x in vector) + "}"


def _copy_factors(cur, table: sql.Composable, key: str, explicit, implicit, bias) -> int:
    """COPY both models' factors (outer-joined on id) and the bias into ``table``.

    Args:
        key: ``user`` or ``item``, which side of the factor sets to write.
    """
    import numpy as np

    from spark_jobs.models import lookup, positions

    ids = np.union1d(getattr(explicit, f"{key}_ids"), getattr(implicit, f"{key}_ids"))
    columns = [lookup(bias, ids, 0.0).astype(str)]
    for factors in (explicit, implicit):
        rows = positions(getattr(factors, f"{key}_index"), ids)
        matrix = getattr(factors, f"{key}_factors")
        columns.append([_pg_array(matrix[r]) if r >= 0 else r"\N" for r in rows])
    buffer = io.StringIO()
    for ident, *values in zip(ids, *columns, strict=True):
        buffer.write(f"{int(ident)}\t" + "\t".join(values) + "\n")
    buffer.seek(0)
    id_column = "user_id" if key == "user" else "movie_id"
    cur.copy_expert(sql.SQL("copy {} ({}, bias, explicit_factors, implicit_factors) from stdin")
                    .format(table, sql.Identifier(id_column)).as_string(cur), buffer)
    return len(ids)


def _has_extension(cur, name: str) -> bool:
    cur.execute("select 1 from pg_extension where extname = %s", (name,))
    return cur.fetchone() is not None


def build(conn, settings: Settings, config: PublishConfig, *, publish_id: int, champion: dict,
          factors: Path, scored) -> dict[str, int]:
    """Create and fill every recs table in the build schema (one transaction)."""
    from spark_jobs.models import load_factors

    explicit, implicit = load_factors(factors)
    s = sql.Identifier(BUILD)
    generated = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    counts: dict[str, int] = {}
    with conn, conn.cursor() as cur:
        _drop_schema_tables(cur, BUILD)
        values = {"s": s, "pid": sql.Literal(publish_id),
                  "version": sql.Literal(champion["version"])}
        cur.execute(sql.SQL(_DDL).format(generated=sql.Literal(generated), **values))
        for side in ("user", "movie"):
            cur.execute(sql.SQL(_FACTORS_DDL).format(
                table=sql.Identifier(f"{side}_factors"), key=sql.Identifier(f"{side}_id"),
                pkey=sql.Identifier(f"{side}_factors_p{publish_id}_pkey"), **values))
        for table, comment in _COMMENTS.items():
            cur.execute(sql.SQL("comment on table {}.{} is {}").format(
                s, sql.Identifier(table), sql.Literal(comment)))
        counts["user_recommendations"] = _copy_parquet(
            cur, sql.SQL("{}.user_recommendations").format(s), scored.user_recommendations,
            ["user_id", "rank", "movie_id", "score", "predicted_rating", "source"])
        counts["similar_movies"] = _copy_parquet(
            cur, sql.SQL("{}.similar_movies").format(s), scored.similar_movies,
            ["movie_id", "rank", "similar_movie_id", "similarity"])
        counts["user_factors"] = _copy_factors(cur, sql.SQL("{}.user_factors").format(s), "user",
                                               explicit, implicit, explicit.biases.user)
        counts["movie_factors"] = _copy_factors(cur, sql.SQL("{}.movie_factors").format(s),
                                                "item", explicit, implicit, explicit.biases.item)
        params = {"dataset": settings.dataset, "n": config.popular_n}
        cur.execute(sql.SQL(_COLD_START).format(s=s), params)
        counts["popular_movies"] = cur.rowcount
        cur.execute(sql.SQL(_CATALOGUE).format(s=s))
        counts["movie_catalogue"] = cur.rowcount
        cur.execute(sql.SQL(_PUBLICATION).format(s=s), {
            "pid": publish_id, "dataset": settings.dataset, "model_name": champion["model_name"],
            "version": champion["version"], "run_id": champion.get("run_id"),
            "generated": generated, "n": config.n, "mu": explicit.biases.mu,
            "lo": explicit.scale[0], "hi": explicit.scale[1]})
        counts["publication"] = 1
        if _has_extension(cur, "pg_trgm"):
            cur.execute(sql.SQL(
                "create index {} on {}.movie_catalogue using gin (search_text gin_trgm_ops)"
            ).format(sql.Identifier(f"movie_catalogue_p{publish_id}_search_idx"), s))
        for table in TABLES:
            cur.execute(sql.SQL("analyze {}.{}").format(s, sql.Identifier(table)))
        if _role_exists(cur, settings.reader_role):
            cur.execute(sql.SQL("grant select on all tables in schema {} to {}").format(
                s, sql.Identifier(settings.reader_role)))
    return counts


def _role_exists(cur, role: str) -> bool:
    cur.execute("select 1 from pg_roles where rolname = %s", (role,))
    return cur.fetchone() is not None


def _drop_schema_tables(cur, schema: str, suffix: str = "") -> None:
    for table in TABLES:
        cur.execute(sql.SQL("drop table if exists {}.{}").format(
            sql.Identifier(schema), sql.Identifier(table + suffix)))


# --------------------------------------------------------------------------- swap


def _swap(conn, config: PublishConfig, *, incoming_schema: str, incoming_suffix: str,
          new_live: int, log_sql: list[tuple[str, tuple]]) -> tuple[float, float]:
    """Move the live tables to history and the incoming ones to ``recs``, atomically.

    Returns:
        (milliseconds the locks were held, milliseconds spent waiting for them).
    """
    started = time.perf_counter()
    attempts = 200
    for _ in range(attempts):
        try:
            with conn.cursor() as cur:
                cur.execute(sql.SQL("set local lock_timeout = {}").format(
                    sql.Literal(f"{config.lock_timeout_ms}ms")))
                old = live_publish_id(cur)
                live = [t for t in TABLES if _exists(cur, LIVE, t)]
                if live:
                    cur.execute(sql.SQL("lock table {} in access exclusive mode").format(
                        sql.SQL(", ").join(sql.SQL("recs.{}").format(sql.Identifier(t))
                                           for t in live)))
                locked = time.perf_counter()
                for table in TABLES:
                    if table in live:
                        archived = f"{table}__p{old}"
                        cur.execute(sql.SQL("alter table recs.{} rename to {}").format(
                            sql.Identifier(table), sql.Identifier(archived)))
                        cur.execute(sql.SQL("alter table recs.{} set schema {}").format(
                            sql.Identifier(archived), sql.Identifier(HISTORY)))
                    incoming = table + incoming_suffix
                    cur.execute(sql.SQL("alter table {}.{} set schema recs").format(
                        sql.Identifier(incoming_schema), sql.Identifier(incoming)))
                    if incoming_suffix:
                        cur.execute(sql.SQL("alter table recs.{} rename to {}").format(
                            sql.Identifier(incoming), sql.Identifier(table)))
                cur.execute("update ops.publish_log set status = 'archived' "
                            "where status = 'live' and publish_id <> %s", (new_live,))
                cur.execute("update ops.publish_log set status = 'live', went_live_at = now() "
                            "where publish_id = %s", (new_live,))
                for statement, params in log_sql:
                    cur.execute(statement, params)
            conn.commit()
            done = time.perf_counter()
            return (done - locked) * 1000, (locked - started) * 1000
        except psycopg2.errors.LockNotAvailable:
            conn.rollback()
            time.sleep(random.uniform(0.01, 0.05))  # let the readers in the queue through
    raise PublishError(f"could not lock the live recs tables in {attempts} attempts "
                       f"of {config.lock_timeout_ms} ms")


def _exists(cur, schema: str, table: str) -> bool:
    cur.execute("select to_regclass(%s) is not null",
                (sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table))
                 .as_string(cur),))
    return cur.fetchone()[0]


def history_versions(cur) -> list[int]:
    """Publish ids kept in ``recs_history`` (complete sets only), newest first."""
    cur.execute("""select substring(tablename from '__p(\\d+)$')::bigint as pid, count(*)
                   from pg_tables where schemaname = %s and tablename ~ '__p\\d+$'
                   group by 1 order by 1 desc""", (HISTORY,))
    return [pid for pid, n in cur.fetchall() if n == len(TABLES)]


def _prune(conn, keep: int) -> list[int]:
    with conn, conn.cursor() as cur:
        dropped = history_versions(cur)[keep:]
        for pid in dropped:
            _drop_schema_tables(cur, HISTORY, f"__p{pid}")
        if dropped:
            cur.execute("update ops.publish_log set status = 'dropped' "
                        "where publish_id = any(%s)", (dropped,))
    return dropped


# --------------------------------------------------------------------------- functions


def functions_sql() -> str:
    return (Path(__file__).parent / "sql" / "recs_functions.sql").read_text()


def _create_functions(conn) -> None:
    with conn, conn.cursor() as cur:
        cur.execute(functions_sql())


# --------------------------------------------------------------------------- entry points


@contextlib.contextmanager
def _publish_lock(settings: Settings):
    """One swap or rollback at a time, across processes."""
    conn = warehouse.connect(settings)
    try:
        with conn.cursor() as cur:
            cur.execute("select pg_try_advisory_lock(hashtext(%s))", (_LOCK_KEY,))
            if not cur.fetchone()[0]:
                raise PublishError("another publish or rollback is running")
        yield conn
    finally:
        conn.close()


class _Steps:
    """Timings of a publish's steps, and failure bookkeeping in ops.publish_log."""

    def __init__(self, settings: Settings, publish_id: int) -> None:
        self.settings, self.publish_id, self.timings = settings, publish_id, {}

    def run(self, name: str, fn, *args, **kwargs):
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.timings[name] = round(time.perf_counter() - started, 3)

    def failed(self, exc: BaseException) -> None:
        validation = exc.report.as_json() if isinstance(exc, quality.ValidationFailed) else None
        _log_update(self.settings, self.publish_id, status="failed", finished_at="now",
                    timings=self._merged(), error=str(exc)[:4000], validation=validation)

    def _merged(self) -> dict:
        with contextlib.closing(warehouse.connect(self.settings)) as conn, conn.cursor() as cur:
            cur.execute("select timings from ops.publish_log where publish_id = %s",
                        (self.publish_id,))
            row = cur.fetchone()
        return {**(row[0] if row else {}), **self.timings}

    def save(self, **values) -> None:
        _log_update(self.settings, self.publish_id, timings=self._merged(), **values)


def prepare(settings: Settings, config: PublishConfig | None = None, *, spark=None,
            factors: Path | None = None) -> int:
    """Step 1: score the champion and build every recs table in ``recs_build``.

    Returns:
        The publish id (its ``ops.publish_log`` row is ``building``).
    """
    from spark_jobs import registry
    from spark_jobs.score import ScoreConfig, score
    from spark_jobs.snapshot import export_snapshot

    config = config or PublishConfig.from_env()
    warehouse.ensure(settings)
    started = time.perf_counter()
    factors = factors or registry.export_champion(settings)
    champion = json.loads((factors.parent / "champion.json").read_text())
    with _publish_lock(settings) as conn:
        with conn, conn.cursor() as cur:
            publish_id = _log_start(cur, settings, "publish", model_name=champion["model_name"],
                                    model_version=champion["version"],
                                    run_id=champion.get("run_id"))
        steps = _Steps(settings, publish_id)
        steps.timings["export_champion"] = round(time.perf_counter() - started, 3)
        log.info("publish %d: model %s v%s", publish_id, champion["model_name"],
                 champion["version"])
        work = Path(tempfile.mkdtemp(prefix="mfy-publish-", dir=settings.home))
        try:
            snapshot = steps.run("export_seen", export_snapshot, settings, work / "snapshot")
            if spark is None:
                from spark_jobs.session import get_spark
                spark = get_spark(settings.home, app_name="moviesforyou-score")
            scored = steps.run("score", score, spark, factors, snapshot.path, work / "scored",
                               ScoreConfig(n=config.n, similar_n=config.similar_n,
                                           min_ratings=config.similar_min_ratings))
            counts = steps.run("build", build, conn, settings, config, publish_id=publish_id,
                               champion=champion, factors=factors, scored=scored)
        except BaseException as exc:
            conn.rollback()
            steps.failed(exc)
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
    steps.save(row_counts=counts)
    return publish_id


def _building(cur, publish_id: int) -> None:
    """Check that ``recs_build`` holds this publish's tables, ready to validate or swap."""
    cur.execute("select to_regclass('recs_build.publication') is not null")
    built = None
    if cur.fetchone()[0]:
        cur.execute("select publish_id from recs_build.publication")
        row = cur.fetchone()
        built = row[0] if row else None
    if built != publish_id:
        raise PublishError(f"recs_build holds publish {built}, not {publish_id}: "
                           "run the publish again")


def validate_build(settings: Settings, publish_id: int,
                   config: PublishConfig | None = None) -> quality.Report:
    """Step 2: the recs suite on ``recs_build``. A failure drops the build and raises."""
    config = config or PublishConfig.from_env()
    steps = _Steps(settings, publish_id)
    try:
        with contextlib.closing(warehouse.connect(settings)) as conn:
            with conn, conn.cursor() as cur:
                _building(cur, publish_id)
            report = steps.run("validate", quality.validate, settings, "recs", schema=BUILD,
                               params={"n": config.n}, raise_on_failure=False,
                               subject=f"publish:{publish_id}")
            if not report.success:
                with conn, conn.cursor() as cur:
                    _drop_schema_tables(cur, BUILD)
                raise quality.ValidationFailed(report)
    except BaseException as exc:
        steps.failed(exc)
        raise
    steps.save(validation=report.as_json())
    return report


def go_live(settings: Settings, publish_id: int,
            config: PublishConfig | None = None) -> PublishResult:
    """Step 3: swap a validated build in, refresh the SQL functions, prune old versions."""
    config = config or PublishConfig.from_env()
    steps = _Steps(settings, publish_id)
    with _publish_lock(settings) as conn:
        try:
            with conn.cursor() as cur:
                _building(cur, publish_id)
                cur.execute("select validation, model_version, row_counts "
                            "from ops.publish_log where publish_id = %s", (publish_id,))
                validation, version, counts = cur.fetchone()
            conn.rollback()
            if not (validation or {}).get("success"):
                raise PublishError(f"publish {publish_id} has not passed validation")
            lock_ms, wait_ms = _swap(conn, config, incoming_schema=BUILD, incoming_suffix="",
                                     new_live=publish_id, log_sql=[])
            steps.timings["swap_wait"] = round(wait_ms / 1000, 3)
            steps.run("functions", _create_functions, conn)
            dropped = _prune(conn, config.keep)
        except BaseException as exc:
            conn.rollback()
            steps.failed(exc)
            raise
    steps.save(finished_at="now", swap_lock_ms=lock_ms)
    log.info("publish %d live: %s; swap held its locks %.1f ms; dropped old versions %s",
             publish_id, counts, lock_ms, dropped or "none")
    return PublishResult(publish_id, version, counts, steps._merged(), lock_ms, validation)


def publish(settings: Settings, config: PublishConfig | None = None, *, spark=None,
            factors: Path | None = None) -> PublishResult:
    """All three steps. Raises, and changes nothing live, on any failure."""
    config = config or PublishConfig.from_env()
    publish_id = prepare(settings, config, spark=spark, factors=factors)
    validate_build(settings, publish_id, config)
    return go_live(settings, publish_id, config)


def versions(settings: Settings) -> list[tuple]:
    """Live and kept versions: (publish_id, where, model_version, went_live_at, row_counts)."""
    with contextlib.closing(warehouse.connect(settings)) as conn, conn.cursor() as cur:
        live = live_publish_id(cur)
        kept = history_versions(cur)
        cur.execute("""select publish_id, model_version, went_live_at, row_counts
                       from ops.publish_log where publish_id = any(%s)
                       order by publish_id desc""", ([p for p in [live, *kept] if p],))
        return [(pid, "live" if pid == live else "kept", version, at, counts)
                for pid, version, at, counts in cur.fetchall()]


def rollback(settings: Settings, publish_id: int | None = None,
             config: PublishConfig | None = None) -> tuple[int, float]:
    """Swap a kept version back in (default: the newest kept). Returns (id, lock ms)."""
    config = config or PublishConfig.from_env()
    with _publish_lock(settings) as conn:
        with conn, conn.cursor() as cur:
            kept = history_versions(cur)
            live = live_publish_id(cur)
            if not kept:
                raise PublishError("no earlier version is kept in recs_history")
            target = kept[0] if publish_id is None else int(publish_id)
            if target not in kept:
                raise PublishError(f"publish {target} is not kept; kept: "
                                   f"{', '.join(map(str, kept))}")
            cur.execute("select model_name, model_version from ops.publish_log "
                        "where publish_id = %s", (target,))
            name, version = cur.fetchone()
        lock_ms, _ = _swap(conn, config, incoming_schema=HISTORY, incoming_suffix=f"__p{target}",
                           new_live=target, log_sql=[(
                               """insert into ops.publish_log (action, status, dataset,
                                      model_name, model_version, finished_at, went_live_at,
                                      metrics, swap_lock_ms)
                                  values ('rollback', 'archived', %s, %s, %s, now(), now(),
                                          %s, %s)""",
                               (settings.dataset, name, version,
                                json.dumps({"restored_publish_id": target,
                                            "replaced_publish_id": live}), None))])
    log.info("rolled back: publish %d (model v%s) is live again, replacing %s", target, version,
             live)
    return target, lock_ms
