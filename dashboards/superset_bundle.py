"""The Superset dashboards as code: import the bundle, check its charts, export it back.

``dashboards/superset/`` is a Superset export bundle (YAML: database, datasets,
charts, dashboards), kept in version control. Its database entry carries no user
or password; the URL of the warehouse (as the read-only role, from the environment:
``MFY_SUPERSET_WAREHOUSE_URL`` in compose) is given at import.

Commands (``import``, ``check`` and ``screenshot`` run with Superset's own
Python, e.g. ``.venv-superset/bin/python``, because Superset cannot share the
project's environment; ``export`` needs only the standard library)::

    MFY_SUPERSET_WAREHOUSE_URL=... python dashboards/superset_bundle.py import dashboards/superset
    python dashboards/superset_bundle.py check
    SUPERSET_ADMIN_PASSWORD=... python dashboards/superset_bundle.py export \\
        --url http://127.0.0.1:8088 --user admin --out dashboards/superset
    python dashboards/superset_bundle.py screenshot --url ... --out docs/screenshots

``import`` loads the bundle (overwriting), then stores each chart's query
context so that ``/api/v1/chart/<id>/data`` answers and caches warm. ``check``
runs every chart's query on the warehouse and fails if any fails or returns
nothing. ``export`` downloads the dashboards through Superset's REST API after
edits in the UI and rewrites the bundle, with credentials stripped.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import sys
import urllib.request
import zipfile
from http.cookiejar import CookieJar
from pathlib import Path

import yaml

ROOT_NAME = "moviesforyou_dashboards"


# --------------------------------------------------------------------------- bundle files


def build_zip(folder: Path, warehouse_url: str) -> bytes:
    """The bundle as the zip Superset imports, with the warehouse URL filled in."""
    url = warehouse_url.replace("postgresql://", "postgresql+psycopg2://", 1)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(folder.rglob("*.yaml")):
            relative = path.relative_to(folder).as_posix()
            content = yaml.safe_load(path.read_text())
            if relative.startswith("databases/"):
                content["sqlalchemy_uri"] = url
            archive.writestr(f"{ROOT_NAME}/{relative}", yaml.safe_dump(content, sort_keys=False))
    return buffer.getvalue()


def strip_credentials(content: dict) -> dict:
    """A database entry without its user and password (and without any secret extras):
    only the host and database stay, as a reminder; import puts in the URL it is given."""
    uri = content.get("sqlalchemy_uri", "")
    content["sqlalchemy_uri"] = re.sub(r"://[^/@]*@", "://", uri)
    content.pop("password", None)
    extra = content.get("extra") or {}
    for key in ("encrypted_extra", "masked_encrypted_extra", "ssh_tunnel"):
        extra.pop(key, None)
        content.pop(key, None)
    return content


def write_bundle(zip_bytes: bytes, out: Path) -> list[str]:
    """Unpack a Superset export into ``out`` (replacing it), credentials stripped."""
    written = []
    with zipfile.ZipFile(io.BytesIO(zip_bytes)) as archive:
        for name in archive.namelist():
            relative = name.split("/", 1)[1]
            if not relative.endswith(".yaml"):
                continue
            content = yaml.safe_load(archive.read(name))
            if relative.startswith("databases/"):
                content = strip_credentials(content)
            if relative.startswith("charts/"):
                content["query_context"] = None  # rebuilt at import, ids differ per install
            target = out / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(yaml.safe_dump(content, sort_keys=False))
            written.append(relative)
    return written


# --------------------------------------------------------------------------- query contexts


def _column(params: dict, name: str):
    grain = params.get("time_grain_sqla")
    if grain:
        return {"columnType": "BASE_AXIS", "sqlExpression": name, "label": name,
                "expressionType": "SQL", "timeGrain": grain}
    return name


def query_context(params: dict, datasource_id: int) -> dict:
    """What Superset's front end would send for this chart (the viz types we use)."""
    viz = params["viz_type"]
    query: dict = {"filters": [], "extras": {"having": "", "where": ""},
                   "row_limit": params.get("row_limit", 1000), "orderby": [],
                   "annotation_layers": [], "applied_time_extras": {}, "url_params": {},
                   "custom_params": {}, "custom_form_data": {}}
    for f in params.get("adhoc_filters", []):
        if f["operator"] == "TEMPORAL_RANGE":
            query["filters"].append({"col": f["subject"], "op": "TEMPORAL_RANGE",
                                     "val": f["comparator"]})
        else:
            query["filters"].append({"col": f["subject"], "op": f["operator"],
                                     "val": f["comparator"]})
    if viz == "table" and params.get("query_mode") == "raw":
        query["columns"] = params["all_columns"]
        query["orderby"] = [json.loads(o) for o in params.get("order_by_cols", [])]
    elif viz == "pie":
        query["columns"] = params["groupby"]
        query["metrics"] = [params["metric"]]
        query["orderby"] = [[params["metric"], False]]
    elif viz == "big_number_total":
        query["metrics"] = [params["metric"]]
        query["row_limit"] = 1
    elif viz.startswith("echarts_timeseries"):
        query["columns"] = [_column(params, params["x_axis"]), *params.get("groupby", [])]
        query["metrics"] = params["metrics"]
        query["series_columns"] = params.get("groupby", [])
        query["orderby"] = [[params["metrics"][0], False]]
    else:
        raise ValueError(f"no query context for viz type {viz}")
    return {"datasource": {"id": datasource_id, "type": "table"}, "force": False,
            "queries": [query], "form_data": params, "result_format": "json",
            "result_type": "full"}


# --------------------------------------------------------------------------- in Superset


def _app():
    from superset.app import create_app

    return create_app()


def import_bundle(folder: Path, warehouse_url: str, username: str) -> int:
    """Import (overwrite) and store query contexts. Returns the number of charts."""
    app = _app()
    with app.app_context():
        from superset import db, security_manager
        from superset.commands.chart.importers.dispatcher import ImportChartsCommand
        from superset.commands.dashboard.importers.dispatcher import ImportDashboardsCommand
        from superset.commands.database.importers.dispatcher import ImportDatabasesCommand
        from superset.commands.dataset.importers.dispatcher import ImportDatasetsCommand
        from superset.models.slice import Slice
        from superset.utils.core import override_user

        user = security_manager.find_user(username=username)
        with override_user(user):
            archive = zipfile.ZipFile(io.BytesIO(build_zip(folder, warehouse_url)))
            # the importer takes paths below the bundle's root folder
            contents = {name.split("/", 1)[1]: archive.read(name).decode()
                        for name in archive.namelist()}
            # a dashboard import never overwrites the objects it contains, so each kind
            # is imported (and overwritten) by its own command first
            for command, kind, folders in (
                    (ImportDatabasesCommand, "Database", ("databases/",)),
                    (ImportDatasetsCommand, "SqlaTable", ("databases/", "datasets/")),
                    (ImportChartsCommand, "Slice", ("databases/", "datasets/", "charts/")),
                    (ImportDashboardsCommand, "Dashboard", ("",))):
                part = {k: v for k, v in contents.items() if k.startswith(folders)}
                part["metadata.yaml"] = yaml.safe_dump(
                    {**yaml.safe_load(contents["metadata.yaml"]), "type": kind})
                command(part, overwrite=True).run()
            charts = 0
            for chart in db.session.query(Slice).all():
                params = json.loads(chart.params)
                params["datasource"] = f"{chart.datasource_id}__table"
                chart.params = json.dumps(params)
                chart.query_context = json.dumps(query_context(params, chart.datasource_id))
                charts += 1
            db.session.commit()
    return charts


def check_charts(username: str) -> list[tuple[str, str, int]]:
    """Run every chart's query. Returns (chart, status, rows); fails on any error."""
    app = _app()
    results = []
    with app.app_context():
        from superset import db, security_manager
        from superset.charts.schemas import ChartDataQueryContextSchema
        from superset.commands.chart.data.get_data_command import ChartDataCommand
        from superset.models.slice import Slice
        from superset.utils.core import override_user

        with override_user(security_manager.find_user(username=username)):
            for chart in db.session.query(Slice).order_by(Slice.slice_name):
                try:
                    context = ChartDataQueryContextSchema().load(json.loads(chart.query_context))
                    command = ChartDataCommand(context)
                    command.validate()
                    payload = command.run()
                    query = payload["queries"][0]
                    if query.get("error"):
                        results.append((chart.slice_name, f"error: {query['error']}", 0))
                    else:
                        results.append((chart.slice_name, "ok", query.get("rowcount", 0)))
                except Exception as exc:  # report every chart, then fail
                    results.append((chart.slice_name, f"error: {exc}", 0))
    return results


# --------------------------------------------------------------------------- REST


class Client:
    """Superset's REST API with a session login (export and screenshots)."""

    def __init__(self, url: str, user: str, password: str) -> None:
        self.url = url.rstrip("/")
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
        body = {"username": user, "password": password, "provider": "db", "refresh": False}
        self.token = self._json("POST", "/api/v1/security/login", body)["access_token"]

    def _request(self, method: str, path: str, body: dict | None = None):
        headers = {"Content-Type": "application/json"}
        if getattr(self, "token", None):
            headers["Authorization"] = f"Bearer {self.token}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, headers=headers,
                                         method=method)
        return self.opener.open(request, timeout=60)

    def _json(self, method: str, path: str, body: dict | None = None):
        with self._request(method, path, body) as response:
            return json.loads(response.read())

    def dashboards(self) -> list[dict]:
        query = "(page_size:100)"
        return self._json("GET", f"/api/v1/dashboard/?q={urllib.request.quote(query)}")["result"]

    def export(self, ids: list[int]) -> bytes:
        query = urllib.request.quote(f"!({','.join(map(str, ids))})")
        with self._request("GET", f"/api/v1/dashboard/export/?q={query}") as response:
            return response.read()


def export_bundle(url: str, user: str, password: str, out: Path, prefix: str) -> list[str]:
    client = Client(url, user, password)
    ids = [d["id"] for d in client.dashboards() if d["dashboard_title"].startswith(prefix)]
    if not ids:
        raise SystemExit(f"no dashboard titled {prefix!r}... in {url}")
    for stale in out.rglob("*.yaml"):
        stale.unlink()
    return write_bundle(client.export(ids), out)


def screenshots(url: str, user: str, password: str, out: Path, prefix: str,
                chromium: str = "/usr/bin/chromium",
                chromedriver: str = "/usr/bin/chromedriver") -> list[Path]:
    """Log in through the page and screenshot each MoviesForYou dashboard."""
    import time

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    dashboards = [d for d in Client(url, user, password).dashboards()
                  if d["dashboard_title"].startswith(prefix)]
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--window-size=1600,1400"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    saved = []
    try:
        driver.get(f"{url}/login/")
        wait = WebDriverWait(driver, 180)  # a busy 2-core machine renders slowly
        wait.until(ec.presence_of_element_located((By.ID, "username"))).send_keys(user)
        driver.find_element(By.ID, "password").send_keys(password)
        driver.find_element(By.CSS_SELECTOR, "button[type='submit'], input[type='submit']").click()
        wait.until(lambda d: "/login" not in d.current_url)
        out.mkdir(parents=True, exist_ok=True)
        for dashboard in dashboards:
            driver.set_window_size(1600, 1400)
            driver.get(f"{url}/superset/dashboard/{dashboard['id']}/?standalone=1")
            wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, ".dashboard-component")))
            time.sleep(2)  # the whole dashboard in the window: Superset renders only the
            _fit_window(driver)  # charts in view, and the picture is the window
            deadline = time.time() + 90
            while time.time() < deadline:  # until no chart is loading any more
                if not driver.find_elements(By.CSS_SELECTOR, ".loading, [aria-label='loading']"):
                    break
                time.sleep(1)
            _fit_window(driver)  # rows that rendered late made the page taller
            time.sleep(2)
            slug = dashboard.get("slug") or str(dashboard["id"])
            path = out / f"superset-{slug}.png"
            driver.save_screenshot(str(path))
            saved.append(path)
    finally:
        driver.quit()
    return saved


def _fit_window(driver) -> None:
    """The browser window as tall as the page (at most 6,000 px)."""
    height = driver.execute_script(
        "return Math.max(document.body.scrollHeight, document.documentElement.scrollHeight)")
    driver.set_window_size(1600, max(1400, min(int(height) + 60, 6000)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    imp = commands.add_parser("import", help="import the bundle into this Superset")
    imp.add_argument("folder", type=Path)
    imp.add_argument("--warehouse-url", default=os.environ.get("MFY_SUPERSET_WAREHOUSE_URL"),
                     help="postgresql://mfy_reader:PASSWORD@host:port/moviesforyou "
                          "[default: $MFY_SUPERSET_WAREHOUSE_URL, which keeps the password "
                          "off the command line]")
    imp.add_argument("--username", default="admin")
    chk = commands.add_parser("check", help="run every chart's query")
    chk.add_argument("--username", default="admin")
    for name in ("export", "screenshot"):
        sub = commands.add_parser(name)
        sub.add_argument("--url", default="http://127.0.0.1:8088")
        sub.add_argument("--user", default="admin")
        sub.add_argument("--password", default=os.environ.get("SUPERSET_ADMIN_PASSWORD"),
                         help="[default: $SUPERSET_ADMIN_PASSWORD]")
        sub.add_argument("--out", type=Path, required=True)
        sub.add_argument("--prefix", default="MoviesForYou")
    args = parser.parse_args(argv)
    if args.command == "import" and not args.warehouse_url:
        parser.error("import: set MFY_SUPERSET_WAREHOUSE_URL (or give --warehouse-url)")
    if args.command in ("export", "screenshot") and not args.password:
        parser.error(f"{args.command}: set SUPERSET_ADMIN_PASSWORD (or give --password)")

    if args.command == "import":
        print(f"imported; {import_bundle(args.folder, args.warehouse_url, args.username)} charts")
    elif args.command == "check":
        results = check_charts(args.username)
        for name, status, rows in results:
            print(f"{status:>6}  {rows:>6} rows  {name}")
        failed = [r for r in results if r[1] != "ok"]
        if failed or not results:
            sys.exit(f"{len(failed)} of {len(results)} charts failed")
    elif args.command == "export":
        written = export_bundle(args.url, args.user, args.password, args.out, args.prefix)
        print(f"wrote {len(written)} files to {args.out}, credentials stripped")
    else:
        for path in screenshots(args.url, args.user, args.password, args.out, args.prefix):
            print(path)


if __name__ == "__main__":
    main()
