"""The ``recs_freshness`` DAG's steps: what the live lists are like, and how old.

:func:`measure_recs` runs after every publish (the DAG is triggered by the
recommendations asset); :func:`check_freshness` runs hourly and fails when the
live lists are older than ``MFY_MAX_RECS_AGE_HOURS``.
"""

from __future__ import annotations

import contextlib
import logging

from moviesforyou.foundation import warehouse
from moviesforyou.foundation.config import Settings
from moviesforyou.transformation import transform

log = logging.getLogger(__name__)


#: The online measures logged on each model version (``marts.mart_online_measures``):
#: name -> (successes, trials) summed over a day's sources.
ONLINE = {"hit_rate_10": ("hit_viewers_10", "exposed_viewers"),
          "hit_rate_50": ("hit_viewers_50", "exposed_viewers"),
          "liked_hit_rate_10": ("liked_hit_viewers_10", "exposed_viewers"),
          "liked_hit_rate_50": ("liked_hit_viewers_50", "exposed_viewers"),
          "shown_share": ("new_ratings_of_shown", "new_ratings"),
          "liked_shown_share": ("liked_ratings_of_shown", "liked_ratings")}


def prune_exposures(settings: Settings) -> int:
    """Drop exposures older than ``MFY_EXPOSURE_RETENTION_DAYS``; returns how many."""
    with contextlib.closing(warehouse.connect(settings)) as conn, conn, conn.cursor() as cur:
        cur.execute("delete from app.exposures where shown_at < now() - make_interval(days => %s)",
                    (settings.exposure_retention_days,))
        return cur.rowcount


def online_measures(settings: Settings) -> dict[str, list[tuple]]:
    """Each model version's online measures by day, over its sources: version ->
    [(day, {measure: value})], oldest day first (empty before the first nightly build
    that had exposures)."""
    sums = ", ".join(f"sum({column})" for column in sorted({c for pair in ONLINE.values()
                                                             for c in pair}))
    columns = sorted({c for pair in ONLINE.values() for c in pair})
    with contextlib.closing(warehouse.connect(settings)) as conn, conn.cursor() as cur:
        cur.execute("select to_regclass('marts.mart_online_measures') is not null")
        if not cur.fetchone()[0]:
            return {}
        cur.execute(f"""select model_version, shown_on, {sums} from marts.mart_online_measures
                        where model_version is not null group by 1, 2 order by 1, 2""")
        rows = cur.fetchall()
    by_version: dict[str, list[tuple]] = {}
    for version, day, *values in rows:
        total = dict(zip(columns, values, strict=True))
        by_version.setdefault(version, []).append((day, {
            name: (total[hits] / total[trials] if total[trials] else None)
            for name, (hits, trials) in ONLINE.items()}))
    return by_version


def measure_recs(settings: Settings) -> dict:
    """After a publish: the exposure log pruned to its retention; the dbt models tagged
    ``after_publish`` (coverage and popularity bias of the live lists into
    ops.recs_quality; the online measures of what viewers were shown up to now,
    marts.mart_online_measures); and those measures logged on each model version in
    MLflow."""
    from spark_jobs import registry  # MLflow and pandas: not when the DAG file is parsed

    pruned = prune_exposures(settings)
    transform.run_dbt(settings, ["build", "--select", "tag:after_publish"])
    logged = registry.log_online_measures(settings, online_measures(settings))
    with contextlib.closing(warehouse.connect(settings)) as conn, conn, conn.cursor() as cur:
        cur.execute("""select q.publish_id, q.catalogue_coverage, q.mean_popularity_percentile,
                              q.share_of_top_10pct
                       from ops.recs_quality as q
                       join recs.publication as pub on pub.publish_id = q.publish_id""")
        publish_id, coverage, percentile, top = cur.fetchone()
    log.info("publish %s: coverage %.1f%%, mean popularity percentile %.2f, %.0f%% from the "
             "top 10%%", publish_id, 100 * coverage, percentile, 100 * top)
    return {"publish_id": publish_id, "catalogue_coverage": coverage,
            "mean_popularity_percentile": percentile, "share_of_top_10pct": top,
            "exposures_pruned": pruned, "online_points_logged": logged}


class StaleRecommendations(RuntimeError):
    pass


def check_freshness(settings: Settings, max_age_hours: float | None = None) -> dict:
    """How old the served recommendations are; raises past ``max_recs_age_hours``
    (``MFY_MAX_RECS_AGE_HOURS``, 36)."""
    max_age = float(max_age_hours or settings.max_recs_age_hours)
    with contextlib.closing(warehouse.connect(settings)) as conn, conn, conn.cursor() as cur:
        cur.execute("""
            insert into ops.freshness_checks (dataset, publish_id, published_hours_ago,
                ratings_through, source_checked_hours_ago, pending_app_ratings, max_age_hours,
                is_fresh)
            select %(d)s, pub.publish_id,
                   extract(epoch from now() - log.went_live_at) / 3600,
                   pub.ratings_through,
                   extract(epoch from now() - (select max(loaded_at) from ops.source_loads
                                               where dataset = %(d)s)) / 3600,
                   (select count(*) from app.ratings where dataset = %(d)s
                        and received_at > coalesce(pub.generated_at, '-infinity')),
                   %(max)s,
                   coalesce(extract(epoch from now() - log.went_live_at) / 3600 <= %(max)s,
                            false)
            from recs.publication as pub
            left join ops.publish_log as log on log.publish_id = pub.publish_id
            returning publish_id, published_hours_ago, pending_app_ratings, is_fresh""",
                    {"d": settings.dataset, "max": max_age})
        publish_id, age, pending, fresh = cur.fetchone()
    result = {"publish_id": publish_id, "published_hours_ago": age,
              "pending_app_ratings": pending, "is_fresh": fresh}
    log.info("freshness: %s", result)
    if not fresh:
        raise StaleRecommendations(f"the live recommendations (publish {publish_id}) are "
                                   f"{age:.1f} h old, over {max_age:g} h")
    return result
