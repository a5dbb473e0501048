"""Great Expectations gates: one suite per table, per layer, run as a checkpoint.

The suites are code, in version control: ``expectations/<layer>.yml`` lists,
for each table of the layer, the expectations it must meet. Each entry is a GX
expectation by its snake_case name with its arguments, or ``unexpected_rows``
with a SQL query that returns the rows that break a rule (GX's
``UnexpectedRowsExpectation``; ``{batch}`` is the table under validation).
``{schema}``, ``{dataset}`` and the layer's ``params`` are filled in before GX
sees the query, so a suite can check the build schema of the recs tables
before they go live.

Expectations that hold only for some releases say so with ``when:``, a mapping
of release features (:class:`moviesforyou.foundation.releases.Features`: ``layout``,
``demographics``, ``half_stars``, ``tags``, ``links``) to the values they need;
a table may have a ``when:`` too. The features are those of the dataset under
validation (the layout its load recorded), so a CSV release, which has no user
file, is held to "no demographic cold-start lists" and a 100K release to "an
age/gender and an occupation list", rather than either being loosened for all.

The GX context is file based, under ``$MFY_HOME/gx``: data sources, suites,
validation definitions and one checkpoint per layer are (re)written from the
YAML on each run, and the checkpoint updates the Data Docs site at
``$MFY_HOME/gx/gx/uncommitted/data_docs/local_site/index.html``
(``moviesforyou validate LAYER`` prints the path). The warehouse URL reaches GX
through the ``MFY_GX_WAREHOUSE_URL`` config variable, so no password is
written into ``great_expectations.yml``.

A failed validation raises :class:`ValidationFailed`, whose message names
every failing table and expectation: callers (the publish step, Airflow tasks)
fail with it rather than carry on.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import yaml

from moviesforyou.foundation import releases, warehouse
from moviesforyou.foundation.config import Settings
from moviesforyou.foundation.errors import MoviesForYouError

log = logging.getLogger(__name__)
# GX logs every metric at INFO; its progress bars are off via the context's config
logging.getLogger("great_expectations").setLevel(logging.WARNING)

_URL_VARIABLE = "MFY_GX_WAREHOUSE_URL"


class ValidationFailed(MoviesForYouError):
    """A layer broke one or more of its expectations."""

    retry_helps = False  # the same data breaks them again

    def __init__(self, report: Report) -> None:
        self.report = report
        lines = [f"{report.layer}: {len(report.failures)} expectation(s) failed"]
        lines += [f"  - {f}" for f in report.failures]
        super().__init__("\n".join(lines))


@dataclass
class Failure:
    table: str
    expectation: str
    description: str
    observed: Any

    def __str__(self) -> str:
        return f"{self.table}: {self.description} ({self.expectation}; observed {self.observed})"


@dataclass
class Report:
    layer: str
    success: bool
    evaluated: int
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0
    docs: str | None = None

    def as_json(self) -> dict:
        return {"layer": self.layer, "success": self.success, "evaluated": self.evaluated,
                "failures": [f.__dict__ | {"observed": str(f.observed)} for f in self.failures],
                "seconds": round(self.seconds, 3), "docs": self.docs}


def load_suite_spec(settings: Settings, layer: str) -> dict:
    path = settings.suites_dir / f"{layer}.yml"
    spec = yaml.safe_load(path.read_text())
    if not isinstance(spec, dict) or not isinstance(spec.get("tables"), dict):
        raise MoviesForYouError(f"{path}: expected a mapping with a 'tables' mapping")
    return spec


def context(settings: Settings):
    """The file-based GX context under ``$MFY_HOME/gx``."""
    import great_expectations as gx

    root = settings.home / "gx"
    root.mkdir(parents=True, exist_ok=True)
    # the data source's ${MFY_GX_WAREHOUSE_URL}, given to this context alone (not the
    # process's environment, and never written to the context's files)
    ctx = gx.get_context(mode="file", project_root_dir=str(root), runtime_environment={
        _URL_VARIABLE: _sqlalchemy_url(warehouse.url(settings))})
    bars = ctx.variables.progress_bars
    globally = bars.get("globally") if isinstance(bars, dict) else getattr(bars, "globally", None)
    if globally is not False:
        from great_expectations.data_context.types.base import ProgressBarsConfig

        ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
        ctx.variables.save()
    return ctx


def _sqlalchemy_url(url: str) -> str:
    return "postgresql+psycopg2://" + url.split("://", 1)[1]


def applies(entry: dict, features: dict[str, Any]) -> bool:
    """Whether a suite entry's ``when:`` conditions hold for a release's features."""
    when = entry.get("when") or {}
    unknown = sorted(set(when) - set(features))
    if unknown:
        raise MoviesForYouError(f"'when: {when}' names unknown release feature(s) "
                                f"{', '.join(unknown)}; known: {', '.join(features)}")
    return all(features[name] == value for name, value in when.items())


def _expectation(entry: dict, variables: dict[str, Any]):
    import great_expectations as gx
    from great_expectations.expectations.registry import get_expectation_impl

    entry = {k: v for k, v in entry.items() if k != "when"}
    kind = entry.pop("type")
    description = entry.pop("description", None)
    if kind == "unexpected_rows":
        query = entry.pop("query")
        for name, value in variables.items():
            query = query.replace("{" + name + "}", str(value))
        return gx.expectations.UnexpectedRowsExpectation(
            unexpected_rows_query=query, description=description, **entry)
    return get_expectation_impl(kind)(description=description, **entry)


def validate(settings: Settings, layer: str, *, schema: str | None = None,
             params: dict[str, Any] | None = None, raise_on_failure: bool = True,
             subject: str | None = None, features: dict | None = None) -> Report:
    """Validate every table of ``layer`` (in ``schema``, default the layer's own).

    Each validation is recorded in ``ops.validations``, with ``subject`` naming
    what was validated (``load:<id>``, ``publish:<id>``). ``features`` gives the
    release's features when they are not yet those of its last live load (a
    staged load under audit).

    Returns:
        The report; with ``raise_on_failure`` a failure raises :class:`ValidationFailed`.
    """
    import great_expectations as gx

    started = time.time()
    spec = load_suite_spec(settings, layer)
    schema = schema or spec.get("schema", layer)
    variables = {"schema": schema, "dataset": settings.dataset,
                 **spec.get("params", {}), **(params or {})}
    if features is None:
        with contextlib.closing(warehouse.connect(settings)) as conn, conn.cursor() as cur:
            features = releases.release_features(cur, settings.dataset).as_dict()
    ctx = context(settings)
    source = ctx.data_sources.add_or_update_postgres(
        name="warehouse", connection_string="${" + _URL_VARIABLE + "}")
    definitions, tables, not_applicable = [], 0, 0
    for table, table_spec in spec["tables"].items():
        if not applies(table_spec, features):
            not_applicable += len(table_spec["expectations"])
            continue
        entries = [e for e in table_spec["expectations"] if applies(e, features)]
        not_applicable += len(table_spec["expectations"]) - len(entries)
        tables += 1
        asset_name = f"{schema}.{table}"
        asset = (source.get_asset(asset_name) if asset_name in {a.name for a in source.assets}
                 else source.add_table_asset(asset_name, table_name=table, schema_name=schema))
        batch = (asset.batch_definitions[0] if asset.batch_definitions
                 else asset.add_batch_definition_whole_table("whole table"))
        suite = gx.ExpectationSuite(
            name=f"{layer}.{table}",
            expectations=[_expectation(e, variables) for e in entries],
            meta={"description": table_spec.get("description", "")},
        )
        suite = ctx.suites.add_or_update(suite)
        definitions.append(ctx.validation_definitions.add_or_update(
            gx.ValidationDefinition(name=f"{layer}.{table}@{schema}", data=batch, suite=suite)))
    checkpoint = ctx.checkpoints.add_or_update(gx.Checkpoint(
        name=f"{layer}@{schema}", validation_definitions=definitions,
        actions=[gx.checkpoint.UpdateDataDocsAction(name="update_data_docs")],
        result_format="SUMMARY"))
    result = checkpoint.run()

    report = Report(layer=layer, success=bool(result.success), evaluated=0,
                    docs=data_docs_index(settings))
    for run in result.run_results.values():
        table = run.suite_name.split(".", 1)[1]
        for er in run.results:
            report.evaluated += 1
            if er.success:
                continue
            config = er.expectation_config
            observed = (er.result or {}).get("observed_value",
                                             (er.result or {}).get("unexpected_count"))
            error = _exception_message(er.exception_info)
            if error:
                observed = f"error: {error.splitlines()[0]}"
            report.failures.append(Failure(
                table=f"{schema}.{table}", expectation=config.type,
                description=config.description or _describe(config), observed=observed))
    report.seconds = time.time() - started
    _record(settings, report, schema, subject)
    log.info("%s: %d expectations on %d tables, %s in %.1f s (%d not applicable to a %s "
             "release)", layer, report.evaluated, tables,
             "passed" if report.success else "FAILED", report.seconds, not_applicable,
             features["layout"])
    if raise_on_failure and not report.success:
        raise ValidationFailed(report)
    return report


def audit_load(settings: Settings):
    """The audit of write-audit-publish for :func:`moviesforyou.ingestion.ingest.load_release`:
    the raw suite on a staged load's schema, recorded against ``load:<id>``."""
    import dataclasses

    def audit(load) -> Report:
        return validate(dataclasses.replace(settings, dataset=load.dataset), "raw",
                        schema=load.schema,
                        features=releases.features_of(load.layout, load.files).as_dict(),
                        subject=f"load:{load.load_id}")

    return audit


def _record(settings: Settings, report: Report, schema: str, subject: str | None) -> None:
    import json

    conn = warehouse.connect(settings)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("""insert into ops.validations (layer, dataset, schema_name, subject,
                               success, evaluated, failures, seconds)
                           values (%s, %s, %s, %s, %s, %s, %s, %s)""",
                        (report.layer, settings.dataset, schema, subject, report.success,
                         report.evaluated, json.dumps(report.as_json()["failures"]),
                         report.seconds))
    finally:
        conn.close()


def passed_before(settings: Settings, layer: str, subject: str) -> bool:
    """Whether ``subject`` already passed ``layer``'s suites (ops.validations)."""
    conn = warehouse.connect(settings)
    try:
        with conn.cursor() as cur:
            cur.execute("""select success from ops.validations
                           where layer = %s and dataset = %s and subject = %s
                           order by validation_id desc limit 1""",
                        (layer, settings.dataset, subject))
            row = cur.fetchone()
            return bool(row and row[0])
    finally:
        conn.close()


def _exception_message(info) -> str | None:
    """The first exception message in a result's exception_info (flat or keyed by metric)."""
    if not isinstance(info, dict):
        return None
    if info.get("raised_exception"):
        return info.get("exception_message") or "unknown error"
    for value in info.values():
        found = _exception_message(value)
        if found:
            return found
    return None


def _describe(config) -> str:
    kwargs = {k: v for k, v in config.kwargs.items() if k not in ("batch_id",)}
    return f"{config.type}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"


def data_docs_index(settings: Settings) -> str:
    return str(settings.home / "gx" / "gx" / "uncommitted" / "data_docs" / "local_site"
               / "index.html")
