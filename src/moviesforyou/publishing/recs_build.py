"""Building the recs tables in ``recs_build``, the schema readers never look at.

:func:`build` creates every table from ``sql/recs_tables.sql`` and
``sql/recs_factors.sql``, COPYs Spark's scored lists and the champion's factors
into them, copies the catalogue and the cold-start lists from their dbt marts
(:data:`COPY_FROM_MARTS`), indexes, analyses and grants, all in one
transaction. :mod:`moviesforyou.publishing.publish` validates the result and swaps it in.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

from psycopg2 import sql

from moviesforyou.foundation import foldin, warehouse
from moviesforyou.foundation.config import Settings

LIVE, BUILD, HISTORY = "recs", "recs_build", "recs_history"
#: The published tables, in the order the swap moves them.
TABLES = ("publication", "arms", "user_recommendations", "popular_movies", "similar_movies",
          "movie_catalogue", "user_factors", "movie_factors")


_COMMENTS = {
    "publication": "The publish behind every other recs table: model, time and data freshness.",
    "arms": ("The model behind each arm (champion, and challenger while an experiment runs: "
             "ops.experiments) and the settings a fold-in against it needs."),
    "user_recommendations": (
        "Top-N movies per user, already-rated movies excluded, by the model of the user's "
        "arm (recs.arm). source: als (implicit ALS ranking) or popular (users the model "
        "does not know yet)."),
    "similar_movies": (
        "Nearest movies per movie (MFY_SIMILARITY): by default the mean cosine of the "
        "explicit and the centred implicit ALS factors, plus a genre overlap term."),
    "popular_movies": (
        "Cold-start lists by list_type: overall, genre, age_gender (age band and gender), "
        "occupation and season of the rating date (score: the number of ratings), and "
        "trending (the last 30 days of ratings, each weighing exp(-days old / 7))."),
    "movie_catalogue": ("The catalogue as the API serves it, one row per film, with a "
                        "trigram-searchable title and the ids merged into each film."),
    "user_factors": ("Per-user bias and factor vectors of the rating and list models of the "
                     "user's arm."),
    "movie_factors": ("Per-movie bias and factor vectors of the rating and list models, and "
                      "an EASE list model's fold weights; one row per arm."),
}

#: The cold-start lists and the catalogue are dbt models (marts/serving); the
#: publish copies them into the build schema, so they go live with the rest.
COPY_FROM_MARTS = {
    "popular_movies": ("mart_cold_start_lists", ("list_type", "segment", "rank", "movie_id",
                                                 "score", "rating_count", "mean_rating")),
    "movie_catalogue": ("mart_movie_catalogue", ("movie_id", "title", "original_title",
                                                 "release_year", "genres", "mean_rating",
                                                 "bayesian_rating", "rating_count", "imdb_url",
                                                 "search_text", "merged_movie_ids")),
}


_PUBLICATION = """
insert into {s}.publication
select %(pid)s, %(dataset)s, %(model_name)s, %(version)s, %(run_id)s, %(generated)s, %(n)s,
       %(mu)s, %(lo)s, %(hi)s,
       (select max(rated_at) from marts.fct_ratings where dataset = %(dataset)s),
       (select max(loaded_at) from ops.source_loads
        where dataset = %(dataset)s and status in ('loaded', 'unchanged')),
       %(explicit_reg)s, %(implicit_reg)s, %(alpha)s, %(bias_reg_user)s,
       (select max(ingested_at) from marts.fct_ratings
        where dataset = %(dataset)s and rating_source = 'app'),
       %(rating_family)s, %(list_family)s, %(experiment)s, %(share)s
"""

_ARM = """
insert into {s}.arms
values (%(arm)s, %(share)s, %(model_name)s, %(version)s, %(run_id)s, %(mu)s, %(lo)s, %(hi)s,
        %(explicit_reg)s, %(implicit_reg)s, %(alpha)s, %(bias_reg_user)s, %(rating_family)s,
        %(list_family)s)
"""


def _copy_parquet(cur, table: sql.Composable, folder: Path, columns: list[str],
                  constants: dict[str, str] | None = None) -> int:
    """COPY a Parquet folder (Spark's output) into ``table``, in bounded batches, with
    ``constants`` (column -> value) written beside its ``columns`` on every row."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.dataset as pads

    rows = 0
    constants = constants or {}
    statement = sql.SQL("copy {} ({}) from stdin with (format csv)").format(
        table, sql.SQL(", ").join(map(sql.Identifier, [*columns, *constants])))
    for batch in pads.dataset(str(folder), format="parquet").to_batches(
            columns=columns, batch_size=250_000):
        if batch.num_rows == 0:
            continue
        frame = pa.Table.from_batches([batch])
        for name, value in constants.items():
            frame = frame.append_column(name, pa.array([value] * batch.num_rows, pa.string()))
        buffer = io.BytesIO()
        pacsv.write_csv(frame, buffer,
                        write_options=pacsv.WriteOptions(include_header=False))
        buffer.seek(0)
        cur.copy_expert(statement.as_string(cur), buffer)
        rows += batch.num_rows
    return rows


def _copy_live(cur, table: str, columns: list[str], key: str | None = None) -> int:
    """Copy the live ``table``'s rows into the build schema's, skipping the ``key``
    values the build already has (the users scored again)."""
    names = sql.SQL(", ").join(map(sql.Identifier, columns))
    statement = sql.SQL("insert into {build}.{t} ({c}) select {c} from {live}.{t} l").format(
        build=sql.Identifier(BUILD), live=sql.Identifier(LIVE), t=sql.Identifier(table),
        c=names)
    if key:
        statement += sql.SQL(" where not exists (select 1 from {build}.{t} b "
                             "where b.{k} = l.{k})").format(
            build=sql.Identifier(BUILD), t=sql.Identifier(table), k=sql.Identifier(key))
    cur.execute(statement)
    return cur.rowcount


def live_refreshed_since(cur, settings: Settings, champion: dict,
                         experiment=None) -> int | None:
    """Since when (epoch seconds) the champion, a refresh of the live publish's model,
    re-solved users; None when its publish must score everyone: not a refresh, a
    refresh of another version than the live one, list lengths that changed, or
    arms drawn otherwise (another ``experiment``, or none where one ran)."""
    if "refreshed_since" not in champion:
        return None
    cur.execute("select to_regclass(%s) is not null", (f"{LIVE}.publication",))
    if not cur.fetchone()[0]:
        return None
    cur.execute(sql.SQL("select model_version, dataset, recommendations_per_user, "
                        "(select coalesce(max(rank), 0) from {l}.similar_movies), "
                        "to_jsonb(p) ->> 'experiment', "
                        "coalesce((to_jsonb(p) ->> 'challenger_share')::float8, 0) "
                        "from {l}.publication as p").format(l=sql.Identifier(LIVE)))
    live = cur.fetchone()
    config = settings.publish
    arms = (experiment.name, experiment.share) if experiment else (None, 0.0)
    if live != (champion["refresh_of"], settings.dataset, config.n, config.similar_n, *arms):
        return None
    return int(champion["refreshed_since"])


def movie_genres(conn):
    """Each movie's genres (``marts.bridge_movie_genres``) as a Series of lists, the
    content signal of the similar-movie lists; small (one row per movie)."""
    import pandas as pd

    with conn.cursor() as cur:
        cur.execute("select movie_id, array_agg(genre order by genre) "
                    "from marts.bridge_movie_genres group by movie_id")
        rows = cur.fetchall()
    return pd.Series({movie: genres for movie, genres in rows}, dtype=object)


def movie_tags(conn):
    """Each film's tags (``stg_movielens__tags`` under the film's kept id, trimmed and
    lower-cased) with how many users gave each, as a Series of dicts, for the
    similar-movie lists' ``+tags`` term. Only tags given to two movies or more can make
    two movies alike, so only those are read: at ml-25m's 1.1M tag applications, about
    45k movies' dicts. Empty for a release without tags."""
    import pandas as pd

    with conn.cursor() as cur:
        cur.execute("""
            with given as (
                select coalesce(merges.canonical_movie_id, tags.movie_id) as movie_id,
                       lower(btrim(tags.tag)) as tag, count(distinct tags.user_id) as users
                from staging.stg_movielens__tags as tags
                left join intermediate.int_movie_merges as merges
                    on merges.movie_id = tags.movie_id
                where btrim(coalesce(tags.tag, '')) <> ''
                group by 1, 2
            ),
            shared as (
                select tag from given group by tag having count(*) >= 2
            )
            select movie_id, array_agg(tag order by tag), array_agg(users order by tag)
            from given join shared using (tag)
            group by movie_id""")
        rows = cur.fetchall()
    return pd.Series({movie: dict(zip(tags, users, strict=True))
                      for movie, tags, users in rows}, dtype=object)


def _pg_array(vector) -> str:
    return "{" + ",".join(repr(float(x)) for x in vector) + "}"


def _copy_factors(cur, table: sql.Composable, key: str, explicit, implicit, bias, *,
                  arm: str, version: str, keep=None) -> int:
    """COPY both models' factors (outer-joined on id) and the bias into ``table``.

    Args:
        key: ``user`` or ``item``, which side of the factor sets to write.
        arm, version: the arm and model version the rows are of.
        keep: a function of the ids giving a mask of those to write (the users of
            ``arm``); all of them without it.
    """
    import numpy as np  # NumPy and pandas only when building: the DAG file imports this

    from moviesforyou.foundation.factors import lookup, positions

    ids = np.union1d(getattr(explicit, f"{key}_ids"), getattr(implicit, f"{key}_ids"))
    if keep is not None:
        ids = ids[keep(ids)]
    columns = [lookup(bias, ids, 0.0).astype(str)]
    for factors in (explicit, implicit):
        rows = positions(getattr(factors, f"{key}_index"), ids)
        matrix = getattr(factors, f"{key}_factors")
        columns.append([_pg_array(matrix[r]) if r >= 0 else r"\N" for r in rows])
    weights = implicit.fold_weights if key == "item" else None
    rows = positions(implicit.item_index, ids) if weights is not None else np.full(len(ids), -1)
    columns.append([repr(float(weights[r])) if r >= 0 else r"\N" for r in rows])
    buffer = io.StringIO()
    for ident, *values in zip(ids, *columns, strict=True):
        buffer.write(f"{int(ident)}\t" + "\t".join(values) + f"\t{arm}\t{version}\n")
    buffer.seek(0)
    id_column = "user_id" if key == "user" else "movie_id"
    cur.copy_expert(sql.SQL("copy {} ({}, bias, explicit_factors, implicit_factors, fold_weight, "
                            "arm, model_version) from stdin")
                    .format(table, sql.Identifier(id_column)).as_string(cur), buffer)
    return len(ids)


def _has_extension(cur, name: str) -> bool:
    cur.execute("select 1 from pg_extension where extname = %s", (name,))
    return cur.fetchone() is not None


def _arm_values(arm: str, share: float, meta: dict, explicit,
                implicit) -> dict:
    """An arm's model, as ``publication`` and ``arms`` record it."""
    return {"arm": arm, "share": share, "model_name": meta["model_name"],
            "version": meta["version"], "run_id": meta.get("run_id"),
            "mu": explicit.biases.mu, "lo": explicit.scale[0], "hi": explicit.scale[1],
            "explicit_reg": explicit.fold_in_regularisation,
            "implicit_reg": implicit.params.reg_param, "alpha": implicit.params.alpha,
            "bias_reg_user": foldin.BIAS_REG_USER, "rating_family": explicit.params.family,
            "list_family": implicit.params.family}


def _challenger_lists(cur, s: sql.Identifier, challenger, columns: list[str]) -> tuple[int, int]:
    """The challenger's viewers' lists in place of the champion's (scored for those
    viewers only: ``arms.seen_of_arm``). Returns (champion rows removed, rows added)."""
    arm = {"salt": challenger.experiment.name, "share": challenger.experiment.share,
           "version": challenger.meta["version"]}
    cur.execute(sql.SQL("delete from {}.user_recommendations "
                        "where app.arm_of(%(salt)s, %(share)s, user_id) = 'challenger'")
                .format(s), arm)
    removed = cur.rowcount
    added = _copy_parquet(cur, sql.SQL("{}.user_recommendations").format(s),
                          challenger.scored.user_recommendations, columns,
                          constants={"arm": "challenger", "model_version": arm["version"]})
    return removed, added


def build(conn, settings: Settings, *, publish_id: int, champion: dict,
          factors: Path, scored, challenger=None) -> dict[str, int]:
    """Create and fill every recs table in the build schema (one transaction).

    ``challenger``: the arm of a running experiment
    (:class:`moviesforyou.publishing.arms.Challenger`, scored for its viewers), whose
    lists and factors its viewers get in place of the champion's; None: everyone is
    the champion's.
    """
    from moviesforyou.foundation.experiments import CHALLENGER, CHAMPION, challenger_mask
    from moviesforyou.foundation.factors import load_factors

    explicit, implicit = load_factors(factors)
    experiment = challenger.experiment if challenger else None
    salt, share = (experiment.name, experiment.share) if experiment else (None, 0.0)
    config = settings.publish
    s = sql.Identifier(BUILD)
    generated = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    counts: dict[str, int] = {}
    with conn, conn.cursor() as cur:
        drop_schema_tables(cur, BUILD)
        values = {"s": s, "pid": sql.Literal(publish_id),
                  "version": sql.Literal(champion["version"])}
        cur.execute(sql.SQL(warehouse.ddl("recs_tables")).format(
            generated=sql.Literal(generated), **values))
        for side, keys in (("user", ("user_id",)), ("movie", ("arm", "movie_id"))):
            cur.execute(sql.SQL(warehouse.ddl("recs_factors")).format(
                table=sql.Identifier(f"{side}_factors"), key=sql.Identifier(f"{side}_id"),
                keys=sql.SQL(", ").join(map(sql.Identifier, keys)),
                pkey=sql.Identifier(f"{side}_factors_p{publish_id}_pkey"), **values))
        for table, comment in _COMMENTS.items():
            cur.execute(sql.SQL("comment on table {}.{} is {}").format(
                s, sql.Identifier(table), sql.Literal(comment)))
        recs_columns = ["user_id", "rank", "movie_id", "score", "predicted_rating", "source"]
        similar_columns = ["movie_id", "rank", "similar_movie_id", "similarity"]
        counts["user_recommendations"] = _copy_parquet(
            cur, sql.SQL("{}.user_recommendations").format(s), scored.user_recommendations,
            recs_columns)
        if challenger is not None:
            removed, counts["challenger_recommendations"] = _challenger_lists(
                cur, s, challenger, recs_columns)
            counts["user_recommendations"] += counts["challenger_recommendations"] - removed
        if scored.similar_movies is None:
            # a refresh's publish: only the users who rated since were scored; every
            # other list and every movie's neighbours are the live ones, unchanged
            counts["user_recommendations"] += _copy_live(cur, "user_recommendations",
                                                         recs_columns, "user_id")
            counts["similar_movies"] = _copy_live(cur, "similar_movies", similar_columns)
        else:
            counts["similar_movies"] = _copy_parquet(
                cur, sql.SQL("{}.similar_movies").format(s), scored.similar_movies,
                similar_columns)
        arms = [(CHAMPION, 1 - share, champion, explicit, implicit)]
        if challenger is not None:
            arms.append((CHALLENGER, share, challenger.meta,
                         *load_factors(challenger.factors)))
        for arm, arm_share, meta, arm_explicit, arm_implicit in arms:
            counts[f"user_factors_{arm}"] = _copy_factors(
                cur, sql.SQL("{}.user_factors").format(s), "user", arm_explicit, arm_implicit,
                arm_explicit.biases.user, arm=arm, version=meta["version"],
                keep=lambda ids, arm=arm: challenger_mask(salt, share, ids) == (arm == CHALLENGER))
            counts[f"movie_factors_{arm}"] = _copy_factors(
                cur, sql.SQL("{}.movie_factors").format(s), "item", arm_explicit,
                arm_implicit, arm_explicit.biases.item, arm=arm, version=meta["version"])
            cur.execute(sql.SQL(_ARM).format(s=s), _arm_values(
                arm, arm_share, meta, arm_explicit, arm_implicit))
        counts["arms"] = len(arms)
        counts["user_factors"] = sum(counts.pop(f"user_factors_{arm[0]}") for arm in arms)
        counts["movie_factors"] = sum(counts.pop(f"movie_factors_{arm[0]}") for arm in arms)
        for table, (mart, columns) in COPY_FROM_MARTS.items():
            names = sql.SQL(", ").join(map(sql.Identifier, columns))
            cur.execute(sql.SQL("insert into {}.{} ({}) select {} from marts.{}").format(
                s, sql.Identifier(table), names, names, sql.Identifier(mart))
                + (sql.SQL(" where rank <= {}").format(sql.Literal(config.popular_n))
                   if table == "popular_movies" else sql.SQL("")))
            counts[table] = cur.rowcount
        cur.execute(sql.SQL(_PUBLICATION).format(s=s), {
            **_arm_values(CHAMPION, 1 - share, champion, explicit, implicit),
            "pid": publish_id, "dataset": settings.dataset, "generated": generated,
            "n": config.n, "experiment": salt, "share": share})
        counts["publication"] = 1
        # a film's other ids (duplicate entries of the release) find it: /api/movies/{id}
        cur.execute(sql.SQL(
            "create index {} on {}.movie_catalogue using gin (merged_movie_ids)"
        ).format(sql.Identifier(f"movie_catalogue_p{publish_id}_merged_idx"), s))
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


def drop_schema_tables(cur, schema: str, suffix: str = "") -> None:
    for table in TABLES:
        cur.execute(sql.SQL("drop table if exists {}.{}").format(
            sql.Identifier(schema), sql.Identifier(table + suffix)))
