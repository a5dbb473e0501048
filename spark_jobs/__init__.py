"""Spark ALS training, evaluation and the MLflow registry gate.

Modules, one per concern (each docstring names its inputs and outputs; the
table in ``spark_jobs/README.md`` says what each holds): :mod:`~spark_jobs.nightly`
(the nightly rules, what spark-submit runs), :mod:`~spark_jobs.train` (the job),
:mod:`~spark_jobs.config`, :mod:`~spark_jobs.splitters`,
:mod:`~spark_jobs.evaluation`, :mod:`~spark_jobs.tuning`, :mod:`~spark_jobs.plots`,
:mod:`~spark_jobs.snapshot`, :mod:`~spark_jobs.session`, :mod:`~spark_jobs.metrics`,
:mod:`~spark_jobs.models`, :mod:`~spark_jobs.registry` and :mod:`~spark_jobs.score`.
"""
