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


def measure_recs(settings: Settings) -> dict:
    """Coverage and popularity bias of the live recommendations, into ops.recs_quality
    (the dbt models tagged ``after_publish``)."""
    transform.run_dbt(settings, ["build", "--select", "tag:after_publish"])
    with contextlib.closing(warehouse.connect(settings)) as conn, conn, conn.cursor() as cur:
        cur.execute("""select q.publish_id, q.catalogue_coverage, q.mean_popularity_percentile,
                              q.share_of_top_10pct
                       from ops.recs_quality as q
                       join recs.publication as pub on pub.publish_id = q.publish_id""")
        publish_id, coverage, percentile, top = cur.fetchone()
    log.info("publish %s: coverage %.1f%%, mean popularity percentile %.2f, %.0f%% from the "
             "top 10%%", publish_id, 100 * coverage, percentile, 100 * top)
    return {"publish_id": publish_id, "catalogue_coverage": coverage,
            "mean_popularity_percentile": percentile, "share_of_top_10pct": top}


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
