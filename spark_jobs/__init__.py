"""Spark ALS training, evaluation and the MLflow registry gate.

Modules, one per step (each docstring names its inputs and outputs):

* :mod:`spark_jobs.session` - the SparkSession for this machine or a cluster;
* :mod:`spark_jobs.snapshot` - export the training snapshot from the warehouse;
* :mod:`spark_jobs.metrics` - rating and ranking metrics;
* :mod:`spark_jobs.models` - ALS, baselines, and the registered pyfunc model;
* :mod:`spark_jobs.train` - the job: split, tune, evaluate, log, register, gate;
* :mod:`spark_jobs.registry` - champion history, promotions and rollback.
"""
