"""The server deployment's services, run natively from ``docker-compose.yml``.

No Docker engine runs on a developer's laptop or in CI here, yet what the compose
file's services do can still run: this module reads the compose file itself and,
for each service built from the project's image (``x-project``: airflow-init,
the Airflow api-server, scheduler, dag-processor and triggerer, the MLflow
server, the API) and Superset's, runs **the same command with the same environment** that
compose would give it: the image's ``ENV`` lines (``docker/Dockerfile``), then
``env_file``, then ``environment``, interpolated from the ``.env`` file as compose
interpolates them. Only what a container would see differently is mapped:

* host names: ``warehouse:5432``, ``mlflow:5000``, ``airflow-apiserver:8080`` and
  a bare ``warehouse`` become ``127.0.0.1`` and a free local port;
* the container's paths: the image's ``WORKDIR`` (``/opt/moviesforyou``) is this
  checkout, ``/opt/venv`` its ``.venv``, and every volume (``airflow-home``,
  ``mfy-state``, ``mlflow-artifacts``, ...) a folder under the stack's state folder;
* servers listen on 127.0.0.1 only (compose publishes them on 127.0.0.1 too).

The ``warehouse`` service (the ``postgres`` image) is one embedded PostgreSQL
cluster: its ``POSTGRES_USER`` gets ``POSTGRES_PASSWORD``, the scripts mounted
into ``/docker-entrypoint-initdb.d`` (``docker/postgres/init-databases.sh``) run
with the service's environment, and then every connection must give its role's
password, as on the server. Services start in ``depends_on`` order, each waiting
for its dependencies' conditions (``service_healthy`` runs the compose
healthcheck, ``service_completed_successfully`` waits for exit status 0).

Services built from another Dockerfile on a base image this machine has the
programs of (:data:`BASE_IMAGES`: ``apache/superset``, whose Superset release is in
``.venv-superset``) run too: the Dockerfile's ``CMD`` unless compose gives a command,
the base image's ``ENV`` and then the Dockerfile's, its environment's ``bin`` first on
``PATH``, and what its ``COPY`` lines put in the image copied from this checkout
under the state folder (``images/<service>/...``) at each start. Metabase (a Java
application from its own image, not installed here) and what depends on it are
listed by :func:`LocalStack.skipped` and not started.

Usage: ``make stack-local`` (``PYTHONPATH=tools python -m stack --env-file .env``), or
:class:`LocalStack` as a context manager (``tests/test_stack.py``).
"""

from stack.compose import (  # noqa: F401 (the tests' and tools' names)
    BASE_IMAGES,
    COMPOSE_FILE,
    FIRST_PORT,
    PROJECT_DOCKERFILE,
    ROOT,
    BaseImage,
    Image,
    StackError,
    interpolate,
    load_compose,
    read_dockerfile,
    read_env_file,
)
from stack.plan import Plan, Service  # noqa: F401
from stack.running import LocalStack  # noqa: F401
