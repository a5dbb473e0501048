// MoviesForYou web page: three views over the JSON API, no framework.
"use strict";

const $ = (selector) => document.querySelector(selector);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// Sign-up gives a token, kept in this browser; requests about that user carry it.
const tokenKey = (userId) => `mfy-token-${userId}`;

function headersFor(path) {
  const headers = { "Content-Type": "application/json" };
  const user = path.match(/^\/api\/users\/(\d+)\//);
  const token = user && localStorage.getItem(tokenKey(user[1]));
  if (token) headers.Authorization = `Bearer ${token}`;
  return headers;
}

async function api(path, options = {}) {
  const response = await fetch(path, { headers: headersFor(path), ...options });
  const body = await response.json();
  if (!response.ok) throw new Error(body.detail || response.statusText);
  return body;
}

function showError(error) {
  const box = $("#error");
  box.textContent = error ? String(error.message || error) : "";
  box.hidden = !error;
}

function servedBy(answer) {
  if (answer && answer.model_version) {
    $("#served-by").textContent =
      `Model version ${answer.model_version}, publish ${answer.publish_id}` +
      (answer.folded_in_ratings
        ? `, with your ${answer.folded_in_ratings} ratings folded in just now` : "");
  }
}

function movieLabel(movie) {
  return movie.year ? `${movie.title} (${movie.year})` : movie.title;
}

function stars(value) {
  return value == null ? "–" : Number(value).toFixed(1);
}

function movieItem(movie, extra) {
  return el("li", { class: "movie", "data-movie-id": movie.movie_id },
    el("span", { class: "title" }, movieLabel(movie)),
    el("span", { class: "genres" }, (movie.genres || []).join(", ")),
    el("span", { class: "extra" }, extra || ""));
}

// ------------------------------------------------------------------ search view

async function searchTitle(title) {
  showError(null);
  try {
    const answer = await api(`/api/similar?title=${encodeURIComponent(title)}&k=10`);
    const movie = answer.movie;
    $("#your-movie-card").replaceChildren(
      el("strong", { id: "your-movie-title" }, movieLabel(movie)),
      el("div", {}, `Genres: ${movie.genres.join(", ") || "none"}`),
      el("div", {}, `Mean rating: ${stars(movie.mean_rating)} from ${movie.rating_count} ratings`));
    $("#other-matches").textContent = answer.other_matches.length
      ? `Did you mean: ${answer.other_matches.map(movieLabel).join("; ")}` : "";
    $("#similar-list").replaceChildren(...answer.similar.map((m) =>
      movieItem(m, `similarity ${m.similarity.toFixed(2)}`)));
    $("#your-movie").hidden = false;
    servedBy(answer);
  } catch (error) {
    $("#your-movie").hidden = true;
    showError(error);
  }
}

// ------------------------------------------------------------------ find view

// The search page: title (typo-tolerant), genre, years, order; with a viewer (a user
// number; an app user's token must be in this browser) each film shows the rating
// the model expects from them and whether they rated it.
async function showFind(params) {
  const select = $("#find-genre");
  if (select.options.length === 1) {
    for (const genre of await loadGenres()) select.append(el("option", { value: genre }, genre));
  }
  const form = $("#find-form");
  const viewer = params.get("viewer") || localStorage.getItem("mfy-last-user") || "";
  for (const name of ["q", "genre", "year_from", "year_to", "sort"]) {
    form.elements[name].value = params.get(name) || "";
  }
  form.elements.viewer.value = viewer;
  if (![...params.keys()].length) return;
  const query = new URLSearchParams({ limit: "20" });
  for (const name of ["q", "year_from", "year_to", "sort"]) {
    if (params.get(name)) query.set(name, params.get(name));
  }
  if (params.get("genre")) query.set("genres", params.get("genre"));
  if (viewer) query.set("user_id", viewer);
  showError(null);
  try {
    const token = viewer && localStorage.getItem(tokenKey(viewer));
    const answer = await api(`/api/movies/search?${query}`,
      token ? { headers: { Authorization: `Bearer ${token}` } } : {});
    $("#find-total").textContent = `${answer.total} films`;
    $("#find-results").replaceChildren(...answer.movies.map((m) => movieItem(m,
      m.predicted_rating !== undefined
        ? `predicted ${stars(m.predicted_rating)}${m.rated ? " · you rated it" : ""}`
        : `rated ${stars(m.mean_rating)} by ${m.rating_count}`)));
  } catch (error) {
    $("#find-results").replaceChildren();
    showError(error);
  }
}

// ------------------------------------------------------------------ user view

let genres = [];

async function loadGenres() {
  if (!genres.length) genres = (await api("/api/genres")).genres;
  return genres;
}

function genreBoxes(container, name, choices = genres) {
  const legend = container.querySelector("legend");
  container.replaceChildren(legend, ...choices.map((genre) =>
    el("label", { class: "genre" },
      el("input", { type: "checkbox", name, value: genre }), genre)));
}

async function showUser(userId) {
  await loadGenres();
  const filters = $("#genre-filters");
  if (!filters.querySelector("input")) {
    genreBoxes(filters, "exclude");
    filters.addEventListener("change", () => loadUserRecs(userId));
  }
  $("#user-title").textContent = `Recommendations for user ${userId}`;
  if (document.querySelector("#genre-filters input:checked")) {
    await Promise.all([loadUserRecs(userId), loadSections(userId)]);
    return;
  }
  // the whole page's data in one request: sections, the ranked list, the ratings
  showError(null);
  try {
    const answer = await api(`/api/users/${userId}/page?k=6&n=20`);
    showRows($("#user-sections"), answer.sections);
    showRecs(userId, { ...answer.list, recommendations: answer.recommendations });
    $("#user-ratings").replaceChildren(...answer.ratings.ratings.map((r) =>
      el("li", {}, `${movieLabel(r)}: ${stars(r.rating)}${r.pending ? " (pending)" : ""}`)));
  } catch (error) {
    for (const id of ["#user-sections", "#user-recs tbody", "#user-ratings"]) {
      $(id).replaceChildren();
    }
    showError(error);
  }
}

// Rows of films, each with a heading and the reason it is there.
function showRows(container, rows) {
  container.replaceChildren(...rows.map((s) =>
    el("section", { class: "row", "data-key": s.key },
      el("h2", {}, s.title), el("p", { class: "muted reason" }, s.reason),
      el("ol", { class: "movies" }, ...s.movies.map((m) => movieItem(m))))));
}

// The page in sections, each with its reason ("Because you rated ...", the favourite
// genre, the season's list, people like you): one request.
async function loadSections(userId) {
  try {
    showRows($("#user-sections"), (await api(`/api/users/${userId}/sections?k=6`)).sections);
  } catch (error) {
    $("#user-sections").replaceChildren();
  }
}

// The home page: top films, trending, the season's list, the biggest genres.
async function loadHome() {
  if ($("#home-rows").childElementCount) return;
  const answer = await api("/api/home?k=6");
  showRows($("#home-rows"), answer.rows);
  servedBy(answer);
}

async function loadUserRecs(userId) {
  showError(null);
  const excluded = [...document.querySelectorAll("#genre-filters input:checked")]
    .map((box) => box.value);
  const query = excluded.map((g) => `&exclude_genres=${encodeURIComponent(g)}`).join("");
  try {
    showRecs(userId, await api(`/api/users/${userId}/recommendations?k=20${query}`));
  } catch (error) {
    $("#user-recs tbody").replaceChildren();
    showError(error);
  }
}

function showRecs(userId, answer) {
  // the viewer's own page (their token is in this browser): they can rate from the list
  const own = Boolean(localStorage.getItem(tokenKey(userId)));
  $("#rate-column").hidden = !own;
  $("#user-recs tbody").replaceChildren(...answer.recommendations.map((r) =>
    el("tr", { "data-movie-id": r.movie_id },
      el("td", {}, r.rank), el("td", {}, movieLabel(r)),
      el("td", {}, r.genres.join(", ")), el("td", {}, stars(r.predicted_rating)),
      ...(own ? [el("td", {}, rateBox(userId, r.movie_id))] : []))));
  servedBy(answer);
}

// A star picker; choosing stores the rating, and the list is asked for again: the
// API folds the new rating in at once.
function rateBox(userId, movieId) {
  const box = el("select", { class: "rate", "aria-label": "Your rating" },
    el("option", { value: "" }, "rate…"),
    ...[5, 4.5, 4, 3.5, 3, 2.5, 2, 1.5, 1, 0.5].map((v) => el("option", { value: v }, v)));
  box.addEventListener("change", async () => {
    if (!box.value) return;
    try {
      await api(`/api/users/${userId}/ratings`, { method: "POST", body: JSON.stringify(
        { ratings: [{ movie_id: movieId, rating: Number(box.value) }] }) });
      await showUser(userId);
    } catch (error) {
      showError(error);
    }
  });
  return box;
}

// ------------------------------------------------------------------ sign-up view

// Only the questions the live release has cold-start lists for: a release without a
// user file (the CSV ones) has no age/gender or occupation lists, so only genres.
async function showSignup() {
  const options = await api("/api/signup-options");
  const box = $("#signup-genres");  // the genres that have a cold-start list
  if (!box.querySelector("input")) genreBoxes(box, "preferred", options.genres);
  document.querySelectorAll("#signup-form [data-needs]").forEach((label) => {
    label.hidden = !options.lists.includes(label.dataset.needs);
  });
  const note = $("#signup-note");
  note.hidden = options.demographics;
  note.textContent = `The ${options.dataset} release has no user profiles, so your ` +
    "genres and what is popular pick your first films.";
  const select = $("#occupation-select");
  if (select.options.length === 1) {
    select.append(...options.occupations.map((o) => el("option", { value: o }, o)));
  }
}

function shown(form, name) {
  const field = form.elements[name];
  return field && !field.closest("label").hidden;
}

async function signUp(form) {
  showError(null);
  const data = new FormData(form);
  const body = { preferred_genres: data.getAll("preferred") };
  if (shown(form, "age") && data.get("age")) body.age = Number(data.get("age"));
  if (shown(form, "gender")) body.gender = data.get("gender") || null;
  if (shown(form, "occupation")) body.occupation = data.get("occupation") || null;
  try {
    const answer = await api("/api/users?k=10", { method: "POST", body: JSON.stringify(body) });
    localStorage.setItem(tokenKey(answer.user_id), answer.token);
    localStorage.setItem("mfy-last-user", answer.user_id);
    $("#signup-welcome").textContent =
      `Welcome, user ${answer.user_id}! Films picked for you:`;
    $("#signup-list").replaceChildren(...answer.recommendations.map((r) =>
      movieItem(r, r.source.replace(":", ": "))));
    const mine = $("#my-page");
    mine.href = `/users/${answer.user_id}`;
    $("#signup-result").hidden = false;
    servedBy(answer);
  } catch (error) {
    showError(error);
  }
}

// ------------------------------------------------------------------ routing

function route() {
  const path = window.location.pathname;
  for (const view of document.querySelectorAll("main > section")) view.hidden = true;
  const user = path.match(/^\/users\/(\d+)/);
  if (user) {
    $("#view-user").hidden = false;
    showUser(Number(user[1])).catch(showError);
  } else if (path === "/find") {
    $("#view-find").hidden = false;
    showFind(new URLSearchParams(window.location.search)).catch(showError);
  } else if (path === "/signup") {
    $("#view-signup").hidden = false;
    showSignup().catch(showError);
  } else {
    $("#view-search").hidden = false;
    loadHome().catch(showError);
    const title = new URLSearchParams(window.location.search).get("title");
    if (title) {
      $("#search-input").value = title;
      searchTitle(title);
    }
  }
}

function go(url) {
  history.pushState({}, "", url);
  route();
}

document.addEventListener("DOMContentLoaded", () => {
  $("#search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    go(`/?title=${encodeURIComponent($("#search-input").value)}`);
  });
  $("#find-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const params = new URLSearchParams();
    for (const [name, value] of new FormData(event.target)) if (value) params.set(name, value);
    go(`/find?${params}`);
  });
  $("#user-jump").addEventListener("submit", (event) => {
    event.preventDefault();
    go(`/users/${Number($("#user-id").value)}`);
  });
  $("#signup-form").addEventListener("submit", (event) => {
    event.preventDefault();
    signUp(event.target);
  });
  $("#my-page").addEventListener("click", (event) => {
    event.preventDefault();
    go(event.target.getAttribute("href"));
  });
  for (const link of document.querySelectorAll("[data-nav]")) {
    link.addEventListener("click", (event) => {
      event.preventDefault();
      go(link.getAttribute("href"));
    });
  }
  window.addEventListener("popstate", route);
  route();
});
