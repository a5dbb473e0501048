"""Every release the README claims, through the whole nightly DAG to publish, in one warehouse.

The releases are seeded synthetic stand-ins in each GroupLens layout (the real ones
cannot be downloaded here, nor redistributed): ml-100k's ``|``/tab files, ml-1m's
``::`` files in a GroupLens-style zip, and the CSV layout with half stars, tags,
links and no user file, as a folder (ml-latest-small) and as zips carrying the
files the ingester leaves alone (ml-25m's genome, ml-32m's checksums).

They run one after the other with ``dag.test()`` on one warehouse, so each run also
switches the live release: the API, started once after the first publish, must
follow, serving each release's catalogue, users and cold-start options. The real
ml-100k runs end to end in ``test_dags.py``.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path

import pytest

import fixture_releases
from conftest import QUICK_TRAIN, call, fresh_database, query, running_api, temporary_environment
from moviesforyou.foundation import warehouse
from moviesforyou.ingestion import sources
from spark_jobs import registry

pytestmark = [pytest.mark.integration, pytest.mark.spark, pytest.mark.slow]

#: (release, packed as a zip?, seed), in the order they go live.
RELEASES = [("ml-100k", False, 11), ("ml-1m", True, 12), ("ml-latest-small", False, 13),
            ("ml-25m", True, 14), ("ml-32m", True, 15)]
USERS, MOVIES, RATINGS = 120, 400, 9_000
#: The CSV releases train every family: ALS, and the BPMF and EASE candidates beside it
#: (short chains, small grids), whichever the tuning chooses goes through the gate
FAMILIES_TRAIN = {**QUICK_TRAIN, "bpmf_grid": {"rank": [5], "max_iter": [30]},
                  "ease_grid": {"reg_param": [100.0, 400.0], "rank": [0]}}
LISTS = {True: {"overall", "genre", "season", "trending", "age_gender", "occupation",
               "region"},
         False: {"overall", "genre", "season", "trending"}}


@dataclasses.dataclass
class Lab:
    """One warehouse, MLflow store and DAG for all releases; the API once something is live."""

    settings: object
    dag: object
    sources: dict[str, Path]
    api: str | None = None

    def run(self, release: str, train: dict | None = None):
        env = {"MFY_HOME": str(self.settings.home),
               "AIRFLOW_CONN_MFY_WAREHOUSE": self.settings.warehouse_url,
               "AIRFLOW_VAR_MFY_DATASET": release,
               "AIRFLOW_VAR_MFY_SOURCE": str(self.sources[release])}
        with temporary_environment(env):
            return self.dag.test(run_conf={"train": train or QUICK_TRAIN})


@pytest.fixture(scope="module")
def lab(airflow_db, embedded_settings, spark):
    from airflow.dag_processing.dagbag import DagBag

    from conftest import ROOT

    folder = Path(tempfile.mkdtemp(prefix="mfy-releases-"))
    folder.chmod(0o755)
    made = {name: fixture_releases.synthetic_release(
                folder, name, ratings=RATINGS, seed=seed, users=USERS, movies=MOVIES,
                as_zip=as_zip, duplicate=True)
            for name, as_zip, seed in RELEASES}
    dag = DagBag(dag_folder=str(ROOT / "dags" / "movielens_nightly.py")).dags[
        "movielens_nightly"]
    for task in dag.tasks:  # a failure should fail the test now, not after back-off
        task.retries = 0
    home = folder / "home"
    with fresh_database(embedded_settings) as settings:
        lab = Lab(dataclasses.replace(settings, home=home), dag, made)
        with running_api(lab.settings, dataset="ml-100k") as base:
            lab.api = base
            yield lab
    shutil.rmtree(folder, ignore_errors=True)


def _served_release(base: str, release: str, timeout: float = 15) -> dict:
    """The API's health once it serves ``release`` (it follows the live publish)."""
    deadline = time.time() + timeout
    while True:
        status, health = call(base, "/api/health")
        if status == 200 and health["dataset"] == release or time.time() > deadline:
            return health
        time.sleep(0.5)


@pytest.mark.parametrize("release", [name for name, _, _ in RELEASES])
def test_release_runs_the_whole_dag_and_goes_live(lab, release):
    features = sources.FEATURES[fixture_releases.LAYOUT[release]]
    run = lab.run(release, None if features.demographics else FAMILIES_TRAIN)
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert run.state == "success", states
    assert set(states.values()) == {"success"}, states

    connection = warehouse.connect(lab.settings)
    try:
        (layout,), = query(connection, """select layout from ops.source_loads
                                          where dataset = %s and status = 'loaded'
                                          order by load_id desc limit 1""", (release,))
        assert layout == features.layout
        (ratings, half), = query(connection, """
            select count(*), count(*) filter (where rating <> trunc(rating))
            from raw.ratings where dataset = %s""", (release,))
        assert ratings == RATINGS
        assert (half > 0) is features.half_stars
        (users, with_demographics), = query(connection, """
            select count(*), count(*) filter (where has_demographics)
            from marts.dim_users where not is_app_user""")
        assert users == USERS
        assert with_demographics == (USERS if features.demographics else 0)
        (dataset, publish_id, model, rating_family, list_family), = query(
            connection, "select dataset, publish_id, model_version, rating_family, "
                        "list_family from recs.publication")
        assert dataset == release
        # the families published are the ones the champion's version records
        tags = registry.configure(lab.settings).get_model_version(
            registry.model_name(lab.settings), model).tags
        assert tags["mfy.families"] == f"ratings {rating_family}, lists {list_family}"
        lists = {t for (t,) in query(connection,
                                     "select distinct list_type from recs.popular_movies")}
        assert lists == LISTS[features.demographics]
        (recommended_users, short), = query(connection, """
            select count(*), count(*) filter (where n < 50) from (
                select user_id, count(*) as n from recs.user_recommendations group by user_id
            ) as per_user""")
        assert recommended_users == USERS and short == 0
        # every movie recommended is this release's
        assert query(connection, """select count(*) from recs.user_recommendations as r
                                    left join raw.movies as m
                                        on m.dataset = %s and m.movie_id = r.movie_id
                                    where m.movie_id is null""", (release,)) == [(0,)]
        suites = {layer: ok for layer, ok in query(connection, """
            select distinct on (layer) layer, success from ops.validations
            order by layer, validation_id desc""")}
        assert suites == {"raw": True, "marts": True, "recs": True}
        (note,), = query(connection, "select note from ops.pipeline_runs where run_id = %s",
                         (run.run_id,))
        assert note.startswith(f"published publish {publish_id} (model v{model}"), note
        # the film the release lists twice is one film: one catalogue row, one rating of
        # the viewer who rated it under both ids (the later), and counted as a merge
        twice = fixture_releases.Duplicate(**json.loads(
            (lab.sources[release].parent / f"{release}.duplicate.json").read_text()))
        (entries,), = query(connection, "select count(*) from raw.movies where dataset = %s",
                            (release,))
        (catalogue,), = query(connection, "select count(*) from recs.movie_catalogue")
        assert catalogue == entries - 1
        assert query(connection, "select movie_id, merged_movie_ids from recs.movie_catalogue "
                                 "where movie_id = %s or %s = any(merged_movie_ids)",
                     (twice.duplicate, twice.duplicate)) == [(twice.kept, [twice.duplicate])]
        assert query(connection, """
            select rating::float8, extract(epoch from rated_at)::bigint from marts.fct_ratings
            where user_id = %s and movie_id in (%s, %s)""",
                     (twice.user, twice.kept, twice.duplicate)) == [(twice.rating, twice.rated_at)]
        assert query(connection, "select merged_entries from ops.source_loads where dataset "
                                 "= %s and status = 'loaded'", (release,)) == [(1,)]
        (counts,), = query(connection, "select row_counts from ops.pipeline_runs "
                                       "where run_id = %s", (run.run_id,))
        assert counts["merged_entries"] == 1
        (known_user,), = query(connection, "select min(user_id) from marts.dim_users")
    finally:
        connection.close()

    # the API follows the live release without a restart
    health = _served_release(lab.api, release)
    assert (health["dataset"], health["publish_id"]) == (release, publish_id)
    status, page = call(lab.api, "/api/movies")
    assert status == 200 and page["total"] == catalogue
    status, answer = call(lab.api, f"/api/users/{known_user}/recommendations?k=5")
    assert status == 200 and {r["source"] for r in answer["recommendations"]} == {"als"}
    status, options = call(lab.api, "/api/signup-options")
    assert status == 200 and options["dataset"] == release
    assert set(options["lists"]) == LISTS[features.demographics]
    assert options["demographics"] is features.demographics
    assert bool(options["occupations"]) is features.demographics
    # a newcomer signs up with what the release supports and gets lists from it
    genre = options["genres"][0]
    profile = {"preferred_genres": [genre]}
    if features.demographics:
        profile |= {"age": 30, "gender": "F", "occupation": options["occupations"][0]}
    # past the genre list (50), the demographic lists follow where the release has them
    status, signed = call(lab.api, "/api/users?k=60", profile)
    assert status == 201, signed
    sources_used = {r["source"] for r in signed["recommendations"]}
    assert f"genre:{genre}" in sources_used
    assert (any(s.startswith(("age_gender:", "occupation:")) for s in sources_used)
            is features.demographics)
    # their rating is stored for the live release
    movie = signed["recommendations"][0]["movie_id"]
    status, stored = call(lab.api, f"/api/users/{signed['user_id']}/ratings",
                          {"ratings": [{"movie_id": movie, "rating": 4.5},
                                       {"movie_id": twice.duplicate, "rating": 2.0}]},
                          token=signed["token"])
    assert status == 202
    # a rating of the duplicate entry counts for its film, and the answer says so
    assert stored["merged"] == [{"movie_id": twice.duplicate, "counted_as": twice.kept}]
    status, film = call(lab.api, f"/api/movies/{twice.duplicate}")
    assert status == 200 and film["movie_id"] == twice.kept
    connection = warehouse.connect(lab.settings)
    try:
        assert query(connection, "select dataset, movie_id from app.ratings where user_id = %s "
                                 "order by app_rating_id", (signed["user_id"],)) == [
            (release, movie), (release, twice.kept)]
    finally:
        connection.close()
    # and their next list is folded in with it against this release's model
    status, folded = call(lab.api, f"/api/users/{signed['user_id']}/recommendations?k=10")
    assert status == 200 and folded["folded_in_ratings"] == 2, folded
    assert {r["source"] for r in folded["recommendations"]} == {"als-live"}
    assert movie not in {r["movie_id"] for r in folded["recommendations"]}
    assert len(folded["recommendations"]) == 10


def test_a_refresh_night_on_a_csv_release_publishes_the_newcomers_list(lab):
    """The night after the last (CSV, half stars, no user file) release went live: no
    tuning, so the champion is refreshed; the newcomer who rated two films (one under a
    merged id) gets factors and a published list without them, and only the users who
    rated were scored."""
    release = RELEASES[-1][0]
    connection = warehouse.connect(lab.settings)
    try:
        (user, movies), = query(connection, "select user_id, array_agg(movie_id) "
                                            "from app.ratings where dataset = %s "
                                            "group by user_id", (release,))
        (champion,), = query(connection, "select model_version from recs.publication")
    finally:
        connection.close()

    run = lab.run(release, {"tune": False})

    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert run.state == "success", states
    connection = warehouse.connect(lab.settings)
    try:
        (version, counts), = query(connection, """select model_version, row_counts
                                                  from ops.publish_log where status = 'live'""")
        (reason,), = query(connection, "select reason from ops.model_promotions "
                                       "order by promotion_id desc limit 1")
        listed = query(connection, "select movie_id, source from recs.user_recommendations "
                                   "where user_id = %s", (user,))
    finally:
        connection.close()
    assert version != champion
    assert reason.startswith(f"refresh of champion v{champion}: its movie factors with the "
                             "users of 2 new rating(s) re-solved"), reason
    assert counts["users_scored"] == 1 and counts["user_recommendations"] == (USERS + 1) * 50
    assert len(listed) == 50 and {s for _, s in listed} == {"als"}
    assert len(movies) == 2 and not set(movies) & {m for m, _ in listed}


def test_champion_of_another_release_is_never_published(lab):
    """Publishing needs a champion trained on the release being published."""
    from spark_jobs import registry

    settings = dataclasses.replace(lab.settings, dataset="ml-1m")  # live: the last one
    with pytest.raises(registry.RegistryError, match="was trained on ml-32m, not ml-1m"):
        registry.export_champion(settings)


def test_every_page_flow_on_a_csv_release(lab, browser):
    """The viewer's flows in the browser on a CSV release (no user file, half stars,
    tags): sign up with genres only, rate from the list in half stars and see it change
    at once, the page's sections, the home page's rows, search with filters and the
    viewer's predicted ratings, and a film's similar list."""
    import re

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from conftest import wait_for

    assert _served_release(lab.api, "ml-32m")["dataset"] == "ml-32m"
    # sign-up asks for genres only, and uses them
    browser.get(lab.api + "/signup")
    box = wait_for(browser, "#signup-genres input[value='Drama']")
    wait_for(browser, "#signup-note", "has no user profiles")
    for name in ("age", "gender", "occupation"):
        assert not browser.find_element(By.NAME, name).is_displayed(), name
    box.click()
    browser.find_element(By.ID, "signup-button").click()
    wait_for(browser, "#signup-welcome", "Welcome, user")
    items = browser.find_elements(By.CSS_SELECTOR, "#signup-list li.movie")
    assert len(items) == 10
    assert "Drama" in items[0].find_element(By.CLASS_NAME, "genres").text
    user = int(browser.find_element(By.ID, "signup-welcome").text.split("user ")[1]
               .split("!")[0])

    # their page: rate three films from the list in half stars; it changes each time
    browser.find_element(By.ID, "my-page").click()
    wait_for(browser, "#user-recs tbody tr select.rate")

    def listed() -> list[str]:
        return browser.execute_script("return [...document.querySelectorAll("
                                      "'#user-recs tbody tr')].map((row) => row.dataset.movieId)")

    for done, stars in enumerate(("4.5", "5", "0.5"), start=1):
        first = listed()
        Select(browser.find_element(By.CSS_SELECTOR, "#user-recs tbody tr select.rate")
               ).select_by_value(stars)
        deadline = time.time() + 15
        while listed() == first or not listed() or browser.execute_script(
                "return document.querySelectorAll('#user-ratings li').length") != done:
            assert time.time() < deadline, f"the list did not change after rating {done}"
            time.sleep(0.2)
    wait_for(browser, "#served-by", "3 ratings folded in")
    assert "4.5" in browser.find_element(By.ID, "user-ratings").text
    # the page in sections: no demographic ones, the release has no user file
    wait_for(browser, "#user-sections section[data-key='because'] h2", "Because you rated")
    keys = [s.get_attribute("data-key")
            for s in browser.find_elements(By.CSS_SELECTOR, "#user-sections section")]
    assert keys[:3] == ["for_you", "because", "genre"], keys
    assert not {"like_you", "region"} & set(keys), keys
    # trending: the last 30 days up to the newest rating, here the app's own ratings
    # of this session; a section only if it has a film the viewer has not rated
    connection = warehouse.connect(lab.settings)
    try:
        rated = {str(m) for (m,) in query(connection, "select movie_id from app.ratings "
                                                      "where user_id = %s", (user,))}
        trending = {str(m) for (m,) in query(connection, "select movie_id from "
                                                         "recs.popular_movies where "
                                                         "list_type = 'trending'")}
        (title, movie), = query(connection, """
            select c.title, c.movie_id from recs.movie_catalogue c
            where exists (select 1 from recs.similar_movies s where s.movie_id = c.movie_id)
            order by c.rating_count desc, c.movie_id limit 1""")
        similar = [m for (m,) in query(connection, "select similar_movie_id from "
                                                   "recs.similar_movies where movie_id = %s "
                                                   "order by rank limit 10", (movie,))]
    finally:
        connection.close()
    assert trending and ("trending" in keys) is bool(trending - rated), (keys, trending, rated)

    # the home page's rows
    browser.get(lab.api + "/")
    wait_for(browser, "#home-rows section[data-key='trending'] li.movie")
    keys = [s.get_attribute("data-key")
            for s in browser.find_elements(By.CSS_SELECTOR, "#home-rows section")]
    assert keys[:2] == ["top", "trending"] and keys[-1].startswith("genre:"), keys

    # search: Drama of 1990-2010 by the viewer's predicted rating (the page remembers
    # who signed up in this browser); the films they rated say so
    browser.get(lab.api + "/find?genre=Drama&year_from=1990&year_to=2010&sort=predicted")
    wait_for(browser, "#find-total", "films")
    assert browser.find_element(By.NAME, "viewer").get_attribute("value") == str(user)
    found = [(li.get_attribute("data-movie-id"), li.find_element(By.CSS_SELECTOR, ".title").text,
              li.find_element(By.CSS_SELECTOR, ".genres").text,
              li.find_element(By.CSS_SELECTOR, ".extra").text)
             for li in browser.find_elements(By.CSS_SELECTOR, "#find-results li.movie")]
    assert found and all("Drama" in genres for _, _, genres, _ in found)
    assert all(1990 <= int(re.search(r"\((\d{4})\)$", t).group(1)) <= 2010
               for _, t, _, _ in found)
    # films the model has no factors for (never rated) have no prediction: last
    predicted = [float(m.group(1)) if (m := re.match(r"predicted (\d\.\d)", x)) else -1
                 for *_, x in found]
    assert predicted == sorted(predicted, reverse=True) and predicted[0] > 0
    assert [x.endswith("you rated it") for *_, x in found] == [m in rated for m, *_ in found]

    # a film's similar list, from the home page's title box
    browser.get(lab.api + "/")
    wait_for(browser, "#search-input").send_keys(title)
    browser.find_element(By.ID, "search-button").click()
    wait_for(browser, "#similar-list li.movie")
    assert [int(li.get_attribute("data-movie-id")) for li in browser.find_elements(
        By.CSS_SELECTOR, "#similar-list li.movie")] == similar
