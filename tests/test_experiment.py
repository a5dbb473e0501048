"""Champion against challenger, live, on the real published ml-100k.

A second model is trained and becomes the registry's challenger; a publish with
MFY_CHALLENGER_SHARE serves it to a fixed share of viewers. The arms are one rule in
SQL and Python, stable and balanced; every table, SQL function, API answer, fold-in
and exposure of a viewer is their arm's; the measures per arm decide the winner
through the ledger; a rollback restores both arms.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import math
import time

import pytest
from click.testing import CliRunner

from conftest import QUICK_MODELS, call, execute, query
from moviesforyou.foundation import warehouse
from moviesforyou.foundation.experiments import BUCKETS, arm_of
from moviesforyou.foundation.factors import load_factors
from moviesforyou.orchestration import experiment, recs_publish, training
from moviesforyou.orchestration.cli import main
from moviesforyou.publishing import arms, publish
from moviesforyou.publishing.recs_build import HISTORY, drop_schema_tables
from spark_jobs.config import TrainConfig
from spark_jobs.gate import LiveTest, decide_live

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SHARE = 0.3
#: Another configuration than the session's champion: a real, different model.
CHALLENGER_MODELS = {**QUICK_MODELS,
                     "explicit_grid": {"rank": [6], "reg_param": [0.5], "max_iter": [5]},
                     "implicit_grid": {"rank": [12], "reg_param": [0.5], "alpha": [2.0],
                                       "max_iter": [6]}}


def within(count: int, total: int, share: float, sigmas: float = 4) -> bool:
    """Whether ``count`` of ``total`` is within ``sigmas`` binomial deviations of ``share``."""
    return abs(count / total - share) <= sigmas * math.sqrt(share * (1 - share) / total)


def test_the_split_is_one_rule_in_sql_and_python_stable_and_balanced(wh):
    users = range(1, 20_001)
    drawn = {}
    for salt, share in (("ml-100k-v2-a", 0.1), ("ml-100k-v2-a", 0.5), ("ml-100k-v3-b", 0.5)):
        in_sql = [arm for (arm,) in query(
            wh, "select app.arm_of(%s, %s, u) from generate_series(1, 20000) as u order by u",
            (salt, share))]
        in_python = [arm_of(salt, share, u) for u in users]
        assert in_sql == in_python
        challengers = in_python.count("challenger")
        assert within(challengers, len(users), share), (salt, share, challengers)
        drawn[salt, share] = {u for u, arm in zip(users, in_python, strict=True)
                              if arm == "challenger"}
    # a larger share of the same experiment only adds viewers: nobody changes sides back
    assert drawn["ml-100k-v2-a", 0.1] < drawn["ml-100k-v2-a", 0.5]
    # another experiment draws afresh: about half of one arm is in the other's
    overlap = len(drawn["ml-100k-v2-a", 0.5] & drawn["ml-100k-v3-b", 0.5])
    assert within(overlap, 10_000, 0.5)
    # the same viewer, asked again, is in the same arm; no experiment: all champions
    assert {arm_of("x", 0.5, 7) for _ in range(5)} == {arm_of("x", 0.5, 7)}
    assert query(wh, "select app.arm_of(null, 0.5, 7), app.arm_of('x', 0, 7)") == [
        ("champion", "champion")]
    assert BUCKETS == 10_000


def test_the_two_proportion_test_matches_a_hand_computation():
    # 200 of 1,000 against 260 of 1,000: pooled 0.23, standard error
    # sqrt(0.23 x 0.77 x 2 / 1000) = 0.018820, z = 0.06 / 0.018820 = 3.188, p = 0.00143
    test = LiveTest(1000, 200, 1000, 260)
    assert test.difference == pytest.approx(0.06)
    assert test.z == pytest.approx(3.1881, abs=1e-4)
    assert test.p_value == pytest.approx(0.001432, abs=2e-6)
    assert decide_live(test)[0]
    assert not decide_live(LiveTest(1000, 260, 1000, 200))[0]  # the champion is better
    assert "no significant" in decide_live(LiveTest(1000, 200, 1000, 215))[1]
    assert "too few" in decide_live(LiveTest(50, 10, 50, 40))[1]


@pytest.fixture(scope="module")
def live(published, spark):
    """The session's warehouse with a challenger trained and an experiment published;
    afterwards the champion and the live publish it had."""
    from spark_jobs import registry

    settings = dataclasses.replace(published, publish=dataclasses.replace(
        published.publish, challenger_share=SHARE))
    client = registry.configure(published)
    name = registry.model_name(published)
    champion = str(client.get_model_version_by_alias(name, "champion").version)
    with contextlib.closing(warehouse.connect(published)) as conn, conn.cursor() as cur:
        before = publish.live_publish_id(cur)
        cur.execute("select max(publish_id) from ops.publish_log")
        (last,), = cur.fetchall()
    trained = training.train_and_gate(published, TrainConfig(**CHALLENGER_MODELS), spark=spark)
    if trained.promoted:  # the challenger must not be the champion
        training.rollback(published, champion, "the experiment test's champion")
    result = recs_publish.publish(settings, spark=spark)
    try:
        yield {"settings": settings, "champion": champion, "challenger": trained.version,
               "publish_id": result.publish_id, "before": before, "result": result}
    finally:
        running = arms.running(published)
        if running is not None:
            arms.end(published, running, "stopped", "test over")
        if str(client.get_model_version_by_alias(name, "champion").version) != champion:
            training.rollback(published, champion, "the experiment test is over")
        publish.rollback(published, before)
        # the versions this module published leave the history too: the fixture's next
        # rollback finds what it would have found without this module
        with contextlib.closing(warehouse.connect(published)) as conn, conn, \
                conn.cursor() as cur:
            cur.execute("select publish_id from ops.publish_log where action = 'publish' "
                        "and publish_id > %s", (last,))
            for (pid,) in cur.fetchall():
                drop_schema_tables(cur, HISTORY, f"__p{pid}")


def arm_users(wh, arm: str) -> list[int]:
    return [u for (u,) in query(wh, "select distinct user_id from recs.user_recommendations "
                                    "where arm = %s order by user_id", (arm,))]


def test_a_publish_serves_each_viewer_the_lists_and_factors_of_their_arm(live, wh):
    run = arms.running(live["settings"])
    assert (run.challenger_version, run.share, run.champion_version_at_start) == (
        live["challenger"], SHARE, live["champion"])
    assert query(wh, "select experiment, challenger_share from recs.publication") == [
        (run.name, SHARE)]
    assert query(wh, "select arm, share, model_version from recs.arms order by arm") == [
        ("challenger", SHARE, live["challenger"]), ("champion", 1 - SHARE, live["champion"])]
    assert query(wh, "select experiment from ops.publish_log where publish_id = %s",
                 (live["publish_id"],)) == [(run.name,)]
    # every user has one arm, the rule's, and 50 rows of its model
    users = query(wh, """select user_id, min(arm), count(distinct arm), min(model_version),
                                count(distinct model_version), count(*)
                         from recs.user_recommendations group by user_id""")
    assert len(users) == 943
    for user, arm, arms_, version, versions, rows in users:
        assert (arm, arms_, versions, rows) == (arm_of(run.name, SHARE, user), 1, 1, 50)
        assert version == live[arm]
    assert within(len(arm_users(wh, "challenger")), 943, SHARE)
    assert live["result"].row_counts["challenger_recommendations"] == 50 * len(
        arm_users(wh, "challenger"))
    # factors: a viewer's are their arm's; every movie has both arms'
    assert query(wh, """select count(*) from recs.user_factors as u
                        where u.arm <> recs.arm(u.user_id)""") == [(0,)]
    movies = query(wh, "select arm, model_version, count(*) from recs.movie_factors "
                       "group by 1, 2 order by 1")
    assert [(arm, version) for arm, version, _ in movies] == [
        ("challenger", live["challenger"]), ("champion", live["champion"])]
    assert all(count > 1500 for *_, count in movies)
    # the SQL functions: a challenger viewer's list and predictions are the challenger's
    viewer = arm_users(wh, "challenger")[0]
    assert {v for (v,) in query(wh, "select model_version from recs.recommend(%s, 60)",
                                (viewer,))} == {live["challenger"]}
    folder = live["settings"].home / "models" / live["challenger"]
    explicit, _ = load_factors(folder)
    (predicted,), = query(wh, "select recs.predict_rating(%s, 50)", (viewer,))
    assert predicted == pytest.approx(float(explicit.predict([viewer], [50])[0]), abs=1e-6)


def test_the_api_serves_and_logs_each_viewer_one_arm(live, api_server, wh):
    since = query(wh, "select now()")[0][0]
    asked = arm_users(wh, "challenger")[:5] + arm_users(wh, "champion")[:5]
    for user in asked * 2:  # the second time from the cache
        status, answer = call(api_server, f"/api/users/{user}/recommendations?k=10")
        assert status == 200
        assert answer["model_version"] == live[arm_of(arms.running(
            live["settings"]).name, SHARE, user)]
    # a newcomer of the challenger's arm is folded in against the challenger's model
    name = arms.running(live["settings"]).name
    while True:
        _, newcomer = call(api_server, "/api/users", {"preferred_genres": ["Comedy"]})
        if arm_of(name, SHARE, newcomer["user_id"]) == "challenger":
            break
    viewer = newcomer["user_id"]
    status, _ = call(api_server, f"/api/users/{viewer}/ratings", {"ratings": [
        {"movie_id": 50, "rating": 5}, {"movie_id": 181, "rating": 5}]},
        token=newcomer["token"])
    assert status == 202
    _, folded = call(api_server, f"/api/users/{viewer}/recommendations?k=10")
    assert folded["model_version"] == live["challenger"]
    assert {r["source"] for r in folded["recommendations"]} == {"als-live"}
    # every lookup is logged under the viewer's arm, and no viewer is in both
    deadline = dt.datetime.now() + dt.timedelta(seconds=15)
    while True:
        logged = query(wh, """select user_id, arm, model_version, source from app.exposures
                              where shown_at >= %s and user_id = any(%s)""",
                       (since, [*asked, viewer]))
        if len(logged) >= 2 * len(asked) + 2 or dt.datetime.now() > deadline:
            break
        time.sleep(0.3)
    assert len(logged) >= 2 * len(asked) + 2
    for user, arm, version, source in logged:
        # the cold-start lists are not a model's: both arms get the publish's own
        assert (arm, version) == (arm_of(name, SHARE, user),
                                  live["champion" if source == "cold" else arm])
    assert query(wh, """select user_id from app.exposures where shown_at >= %s
                        group by user_id having count(distinct arm) > 1""", (since,)) == []
    # the next test counts the measures of its own viewer-days only
    execute(wh, "delete from app.exposures where shown_at >= %s", (since,))


def test_the_measures_per_arm_decide_the_winner_through_the_ledger(live, wh):
    from moviesforyou.transformation import transform
    from spark_jobs import registry

    settings = live["settings"]
    run = arms.running(settings)
    day = dt.date.today() - dt.timedelta(days=9)
    at = dt.datetime.combine(day, dt.time(10), dt.UTC)
    viewers = {"champion": [], "challenger": []}
    for user in range(800_000, 802_000):  # ids no release user has
        bucket = viewers[arm_of(run.name, SHARE, user)]
        if len(bucket) < 150:
            bucket.append(user)
    hits = {"champion": 30, "challenger": 60}  # 20% against 40% of 150 viewer-days
    try:
        with wh, wh.cursor() as cur:
            for arm, users in viewers.items():
                cur.executemany("""insert into app.exposures (shown_at, user_id, publish_id,
                                       model_version, arm, source, movie_ids)
                                   values (%s, %s, %s, %s, %s, 'stored', '{50,172,181}')""",
                                [(at, u, live["publish_id"], live[arm], arm) for u in users])
                cur.executemany("""insert into app.ratings (dataset, user_id, movie_id, rating,
                                       rated_at) values ('ml-100k', %s, 172, 5, %s)""",
                                [(u, at + dt.timedelta(hours=1)) for u in users[:hits[arm]]])
        transform.run_dbt(settings, ["build", "--select", "stg_app__exposures+"])
        found = experiment.status(settings)
        assert found.experiment.name == run.name
        assert {arm: (f["viewers"], f["hits_10"]) for arm, f in found.figures.items()} == {
            "champion": (150, 30), "challenger": (150, 60)}
        assert found.test.p_value < 0.001 and found.won, found.verdict
        shown = CliRunner().invoke(main, ["models", "experiment"], env=settings.to_env())
        assert shown.exit_code == 0, shown.output
        assert run.name in shown.output and "0.4000" in shown.output

        promoted = CliRunner().invoke(main, ["models", "experiment", "promote"],
                                   env=settings.to_env())
        assert promoted.exit_code == 0, promoted.output
        client = registry.configure(settings)
        name = registry.model_name(settings)
        assert str(client.get_model_version_by_alias(name, "champion").version) == \
            live["challenger"]
        (ledger,), = query(wh, """select row(action, challenger_version,
                                      champion_version_before, champion_version_after,
                                      promoted) from ops.model_promotions
                                  order by promotion_id desc limit 1""")
        assert ledger == f"(experiment,{live['challenger']},{live['champion']}," \
                         f"{live['challenger']},t)"
        ended = arms.latest(settings)
        assert (ended.name, ended.outcome) == (run.name, "promoted") and ended.ended_at
    finally:
        users = viewers["champion"] + viewers["challenger"]
        execute(wh, "delete from app.exposures where user_id = any(%s)", (users,))
        execute(wh, "delete from app.ratings where user_id = any(%s)", (users,))


def test_the_rollback_restores_both_arms(live, wh, spark):
    # the winner is the champion now: the next publish serves everyone its lists
    after = recs_publish.publish(live["settings"], spark=spark)
    assert query(wh, "select experiment, challenger_share from recs.publication") == [
        (None, 0.0)]
    assert query(wh, "select arm, model_version from recs.arms") == [
        ("champion", live["challenger"])]
    assert query(wh, "select distinct arm from recs.user_recommendations") == [("champion",)]

    restored, _ = publish.rollback(live["settings"], live["publish_id"])
    assert restored == live["publish_id"] != after.publish_id
    assert query(wh, "select count(*) from recs.arms") == [(2,)]
    assert query(wh, "select count(*) from recs.user_recommendations as r "
                     "where r.arm <> recs.arm(r.user_id)") == [(0,)]
    viewer = arm_users(wh, "challenger")[0]
    assert {v for (v,) in query(wh, "select model_version from recs.recommend(%s, 5)",
                                (viewer,))} == {live["challenger"]}
