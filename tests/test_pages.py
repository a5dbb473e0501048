"""The web page in headless Chromium: search, home, a viewer's recommendations, sign-up."""

from __future__ import annotations

import re
import time

from conftest import call, query, wait_for


def test_page_search_shows_your_movie_and_similar_ones(browser, api_server, screenshots):
    from selenium.webdriver.common.by import By

    browser.get(api_server + "/")
    box = wait_for(browser, "#search-input")
    box.send_keys("gmae 1997")
    browser.find_element(By.ID, "search-button").click()
    title = wait_for(browser, "#your-movie-title", "The Game (1997)")
    assert title.text == "The Game (1997)"
    card = browser.find_element(By.ID, "your-movie-card").text
    assert "Mystery, Thriller" in card and "Mean rating: 3.6" in card
    items = browser.find_elements(By.CSS_SELECTOR, "#similar-list li.movie")
    assert len(items) == 10
    assert "Model version" in browser.find_element(By.ID, "served-by").text
    browser.save_screenshot(str(screenshots / "search.png"))


def table_rows(driver) -> list[list[str]]:
    """The recommendations table's cells, read in one go (it is re-rendered on filters)."""
    return driver.execute_script(
        "return [...document.querySelectorAll('#user-recs tbody tr')]"
        ".map(r => [...r.cells].map(c => c.textContent))")


def test_page_home_has_rows_to_browse(browser, api_server, screenshots):
    from selenium.webdriver.common.by import By

    browser.get(api_server + "/")
    wait_for(browser, "#home-rows section[data-key='trending'] li.movie")
    keys = [s.get_attribute("data-key")
            for s in browser.find_elements(By.CSS_SELECTOR, "#home-rows section")]
    assert keys[:2] == ["top", "trending"] and keys[-1].startswith("genre:"), keys
    assert all(len(s.find_elements(By.CSS_SELECTOR, "li.movie")) == 6
               for s in browser.find_elements(By.CSS_SELECTOR, "#home-rows section"))
    browser.save_screenshot(str(screenshots / "home.png"))


def test_page_search_with_filters_and_a_viewer(browser, api_server, wh, screenshots):
    from selenium.webdriver.common.by import By

    def results() -> list[tuple[str, str, str]]:
        return [(li.find_element(By.CSS_SELECTOR, ".title").text,
                 li.find_element(By.CSS_SELECTOR, ".genres").text,
                 li.find_element(By.CSS_SELECTOR, ".extra").text)
                for li in browser.find_elements(By.CSS_SELECTOR, "#find-results li.movie")]

    # a misspelt title: the classic first, not a film rated once
    browser.get(api_server + "/find?q=shawshenk")
    wait_for(browser, "#find-results li.movie")
    assert results()[0][0] == "The Shawshank Redemption (1994)"
    # filters from the form: genre, years, ordered by the viewer's predicted rating
    browser.get(api_server + "/find")
    form = wait_for(browser, "#find-form")
    wait_for(browser, "#find-genre option[value='Horror']")
    form.find_element(By.CSS_SELECTOR, "#find-genre option[value='Horror']").click()
    form.find_element(By.NAME, "year_from").send_keys("1990")
    form.find_element(By.NAME, "year_to").send_keys("1995")
    form.find_element(By.CSS_SELECTOR, "select[name=sort] option[value=predicted]").click()
    viewer = form.find_element(By.NAME, "viewer")
    viewer.clear()
    viewer.send_keys("1")
    form.find_element(By.CSS_SELECTOR, "button").click()
    wait_for(browser, "#find-total", "films")
    assert "viewer=1" in browser.current_url and "genre=Horror" in browser.current_url
    found = results()
    (total,), = query(wh, "select count(*) from recs.movie_catalogue where 'Horror' = any(genres)"
                          " and release_year between 1990 and 1995")
    assert len(found) == min(20, total) and total > 20
    assert all("Horror" in genres for _, genres, _ in found)
    assert all(1990 <= int(re.search(r"\((\d{4})\)$", t).group(1)) <= 1995 for t, _, _ in found)
    predicted = [float(re.match(r"predicted (\d\.\d)", x).group(1)) for _, _, x in found]
    assert predicted == sorted(predicted, reverse=True)
    rated = {m for (m,) in query(wh, "select movie_id from marts.fct_ratings where user_id = 1")}
    shown = [int(li.get_attribute("data-movie-id"))
             for li in browser.find_elements(By.CSS_SELECTOR, "#find-results li.movie")]
    assert [x.endswith("you rated it") for _, _, x in found] == [m in rated for m in shown]
    browser.save_screenshot(str(screenshots / "find.png"))


def test_page_user_recommendations_with_genre_filter(browser, api_server, screenshots):
    from selenium.webdriver.common.by import By

    browser.get(api_server + "/")
    wait_for(browser, "#user-id").send_keys("1")
    browser.find_element(By.CSS_SELECTOR, "#user-jump button").click()
    wait_for(browser, "#user-title", "user 1")
    wait_for(browser, "#user-recs tbody tr")
    # the page in sections, each with its reason
    wait_for(browser, "#user-sections section[data-key='because'] h2", "Because you rated")
    keys = [s.get_attribute("data-key")
            for s in browser.find_elements(By.CSS_SELECTOR, "#user-sections section")]
    assert keys[:3] == ["for_you", "because", "genre"] and "like_you" in keys, keys
    assert all(s.find_elements(By.CSS_SELECTOR, "li.movie") and
               s.find_element(By.CSS_SELECTOR, ".reason").text
               for s in browser.find_elements(By.CSS_SELECTOR, "#user-sections section"))
    rows = table_rows(browser)
    assert len(rows) == 20
    assert any("Drama" in genres for _, _, genres, _ in rows)
    browser.find_element(By.CSS_SELECTOR, "#genre-filters input[value='Drama']").click()
    deadline = time.time() + 15
    while time.time() < deadline:
        rows = table_rows(browser)
        if len(rows) == 20 and not any("Drama" in genres for _, _, genres, _ in rows):
            break
        time.sleep(0.2)
    assert len(rows) == 20 and not any("Drama" in genres for _, _, genres, _ in rows)
    assert all(0.5 <= float(predicted) <= 5 for *_, predicted in rows)
    browser.save_screenshot(str(screenshots / "user.png"))


def test_page_sign_up_gives_recommendations_from_chosen_genres(browser, api_server, screenshots):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    browser.get(api_server + "/signup")
    wait_for(browser, "#signup-genres input[value='Western']").click()
    # ml-100k has a user file: its age/gender and occupation lists can be used
    assert browser.find_element(By.NAME, "age").is_displayed()
    assert browser.find_element(By.NAME, "occupation").is_displayed()
    assert not browser.find_element(By.ID, "signup-note").is_displayed()
    browser.find_element(By.ID, "signup-button").click()
    wait_for(browser, "#signup-welcome", "Welcome, user")
    items = browser.find_elements(By.CSS_SELECTOR, "#signup-list li.movie")
    assert len(items) == 10
    assert "Western" in items[0].find_element(By.CLASS_NAME, "genres").text
    browser.save_screenshot(str(screenshots / "signup.png"))
    # the browser keeps the token, and the user's own page uses it for their history
    user_id = browser.find_element(By.ID, "signup-welcome").text.split("user ")[1].split("!")[0]
    assert len(browser.execute_script(f"return localStorage.getItem('mfy-token-{user_id}')")
               or "") > 30
    status, _ = call(api_server, f"/api/users/{user_id}/ratings")
    assert status == 401  # without the token nobody else reads it

    # on their own page they rate from the list, and the list changes at once
    browser.find_element(By.ID, "my-page").click()
    wait_for(browser, "#user-recs tbody tr select.rate")

    def listed() -> list[str]:  # in one go: the page replaces the rows as it reloads
        return browser.execute_script(
            "return [...document.querySelectorAll('#user-recs tbody tr')]"
            ".map((row) => row.dataset.movieId)")

    def rated() -> int:
        return browser.execute_script(
            "return document.querySelectorAll('#user-ratings li').length")

    before = listed()
    for done, stars in enumerate(("5", "4.5", "1"), start=1):
        first = listed()
        Select(browser.find_element(By.CSS_SELECTOR, "#user-recs tbody tr select.rate")
               ).select_by_value(stars)
        deadline = time.time() + 15
        while listed() == first or not listed() or rated() != done:
            assert time.time() < deadline, "the list did not change after a rating"
            time.sleep(0.2)
    wait_for(browser, "#served-by", "3 ratings folded in")
    assert not set(before[:3]) & set(listed())  # rated films leave the list
    browser.save_screenshot(str(screenshots / "rated.png"))
