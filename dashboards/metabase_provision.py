"""Provision Metabase through its API, and export its MoviesForYou dashboards back.

``provision`` (the compose stack's one-shot ``metabase-provision`` service):

1. first start: creates the admin user with the setup token
   (``/api/session/properties`` → ``/api/setup``); later starts log in;
2. adds the warehouse as the read-only role (``/api/database``);
3. creates or updates the collection, one native-SQL question per entry of
   ``dashboards/metabase/moviesforyou.json`` and the dashboards with their cards.

Running it again updates everything in place (matched by name). ``export``
reads the collection back into the JSON file after edits in Metabase; it writes
no connection details, so no credentials reach the repository.

Environment: ``MB_URL`` (http://metabase:3000), ``MB_ADMIN_EMAIL``,
``MB_ADMIN_PASSWORD``, ``MFY_WAREHOUSE_HOST`` (warehouse), ``MFY_WAREHOUSE_PORT``
(5432), ``MFY_WAREHOUSE_DB`` (moviesforyou), ``MFY_READER_ROLE`` (mfy_reader),
``MFY_READER_PASSWORD``. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

SPEC = Path(__file__).parent / "metabase" / "moviesforyou.json"


class MetabaseError(RuntimeError):
    pass


class Metabase:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.session: str | None = None

    def call(self, method: str, path: str, body: dict | None = None):
        headers = {"Content-Type": "application/json"}
        if self.session:
            headers["X-Metabase-Session"] = self.session
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, headers=headers,
                                         method=method)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                raw = response.read()
        except urllib.error.HTTPError as error:
            raise MetabaseError(f"{method} {path}: HTTP {error.code}: "
                                f"{error.read()[:500].decode(errors='replace')}") from None
        return json.loads(raw) if raw else None

    def wait_until_up(self, seconds: float = 300) -> None:
        deadline = time.time() + seconds
        while True:
            try:
                if (self.call("GET", "/api/health") or {}).get("status") == "ok":
                    return
            except (MetabaseError, OSError):
                pass
            if time.time() > deadline:
                raise MetabaseError(f"Metabase at {self.url} did not come up in {seconds:.0f} s")
            time.sleep(3)

    def log_in(self, email: str, password: str, site_name: str = "MoviesForYou") -> bool:
        """Set Metabase up on its first start, else log in. Returns True if it set up."""
        properties = self.call("GET", "/api/session/properties")
        token = properties.get("setup-token")
        if token and not properties.get("has-user-setup"):
            answer = self.call("POST", "/api/setup", {
                "token": token,
                "user": {"email": email, "password": password, "first_name": "MoviesForYou",
                         "last_name": "Admin", "site_name": site_name},
                "prefs": {"site_name": site_name, "allow_tracking": False}})
            self.session = answer["id"]
            return True
        self.session = self.call("POST", "/api/session",
                                 {"username": email, "password": password})["id"]
        return False


def _by_name(items, name: str):
    return next((item for item in items if item.get("name") == name), None)


def _list(answer):
    return answer["data"] if isinstance(answer, dict) and "data" in answer else answer


def provision(mb: Metabase, spec: dict, env: dict[str, str]) -> dict:
    """Database, collection, questions and dashboards, created or updated by name."""
    details = {"host": env.get("MFY_WAREHOUSE_HOST", "warehouse"),
               "port": int(env.get("MFY_WAREHOUSE_PORT", "5432")),
               "dbname": env.get("MFY_WAREHOUSE_DB", "moviesforyou"),
               "user": env.get("MFY_READER_ROLE", "mfy_reader"),
               "password": env["MFY_READER_PASSWORD"], "ssl": False}
    database = _by_name(_list(mb.call("GET", "/api/database")), spec["database"])
    body = {"engine": "postgres", "name": spec["database"], "details": details,
            "is_full_sync": True}
    if database is None:
        database = mb.call("POST", "/api/database", body)
    else:
        database = mb.call("PUT", f"/api/database/{database['id']}", body)

    collection = _by_name(mb.call("GET", "/api/collection"), spec["collection"])
    if collection is None:
        collection = mb.call("POST", "/api/collection",
                             {"name": spec["collection"], "parent_id": None})
    items = _list(mb.call("GET", f"/api/collection/{collection['id']}/items"))

    cards = {}
    for question in spec["questions"]:
        body = {"name": question["name"], "description": question.get("description"),
                "display": question["display"], "collection_id": collection["id"],
                "visualization_settings": question.get("visualization_settings", {}),
                "dataset_query": {"type": "native", "database": database["id"],
                                  "native": {"query": question["sql"], "template-tags": {}}}}
        existing = _by_name([i for i in items if i.get("model") == "card"], question["name"])
        card = (mb.call("PUT", f"/api/card/{existing['id']}", body) if existing
                else mb.call("POST", "/api/card", body))
        cards[question["name"]] = card["id"]

    dashboards = {}
    for dashboard in spec["dashboards"]:
        existing = _by_name([i for i in items if i.get("model") == "dashboard"],
                            dashboard["name"])
        if existing is None:
            existing = mb.call("POST", "/api/dashboard", {
                "name": dashboard["name"], "description": dashboard.get("description"),
                "collection_id": collection["id"]})
        dashcards = [{"id": -(i + 1), "card_id": cards[c["question"]], "row": c["row"],
                      "col": c["col"], "size_x": c["size_x"], "size_y": c["size_y"],
                      "parameter_mappings": [], "visualization_settings": {}}
                     for i, c in enumerate(dashboard["cards"])]
        mb.call("PUT", f"/api/dashboard/{existing['id']}", {
            "description": dashboard.get("description"), "dashcards": dashcards})
        dashboards[dashboard["name"]] = existing["id"]
    return {"database": database["id"], "collection": collection["id"], "cards": cards,
            "dashboards": dashboards}


def export(mb: Metabase, spec: dict) -> dict:
    """The collection's questions and dashboards as the spec (no connection details)."""
    collection = _by_name(mb.call("GET", "/api/collection"), spec["collection"])
    if collection is None:
        raise MetabaseError(f"no collection named {spec['collection']!r}")
    items = _list(mb.call("GET", f"/api/collection/{collection['id']}/items"))
    questions, names = [], {}
    for item in sorted((i for i in items if i.get("model") == "card"), key=lambda i: i["id"]):
        card = mb.call("GET", f"/api/card/{item['id']}")
        names[card["id"]] = card["name"]
        questions.append({"name": card["name"], "description": card.get("description"),
                          "display": card["display"],
                          "sql": card["dataset_query"]["native"]["query"],
                          "visualization_settings": card.get("visualization_settings") or {}})
    dashboards = []
    for item in sorted((i for i in items if i.get("model") == "dashboard"),
                       key=lambda i: i["id"]):
        dashboard = mb.call("GET", f"/api/dashboard/{item['id']}")
        dashboards.append({"name": dashboard["name"],
                           "description": dashboard.get("description"),
                           "cards": [{"question": names[c["card_id"]], "row": c["row"],
                                      "col": c["col"], "size_x": c["size_x"],
                                      "size_y": c["size_y"]}
                                     for c in dashboard.get("dashcards", [])
                                     if c.get("card_id") in names]})
    return {"collection": spec["collection"], "database": spec["database"],
            "questions": questions, "dashboards": dashboards}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["provision", "export"])
    parser.add_argument("--spec", type=Path, default=SPEC)
    args = parser.parse_args(argv)
    env = dict(os.environ)
    mb = Metabase(env.get("MB_URL", "http://metabase:3000"))
    spec = json.loads(args.spec.read_text())
    mb.wait_until_up()
    set_up = mb.log_in(env["MB_ADMIN_EMAIL"], env["MB_ADMIN_PASSWORD"])
    if args.command == "provision":
        result = provision(mb, spec, env)
        print(f"Metabase {'set up' if set_up else 'updated'}: {len(result['cards'])} questions, "
              f"dashboards {sorted(result['dashboards'])}")
    else:
        args.spec.write_text(json.dumps(export(mb, spec), indent=2) + "\n")
        print(f"wrote {args.spec}")


if __name__ == "__main__":
    try:
        main()
    except MetabaseError as exc:
        sys.exit(f"metabase: {exc}")
