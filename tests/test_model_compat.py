"""A champion registered before the code moved into layers still loads and predicts.

Its pickle names ``spark_jobs.models.MoviesForYouALS`` and its code copy (MLflow's
``code_paths``) is the pre-move ``spark_jobs``, which imports ``moviesforyou.foldin``.
The pre-move files come from the repository's history (commit 4d59ee4, the last
before the move), so the model is built exactly as that code built it.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT
from moviesforyou.foundation.factors import Biases, Factors, ModelParams, save_factors

BEFORE_THE_MOVE = "4d59ee4"


def _old_spark_jobs(out) -> None:
    out.mkdir(parents=True)
    for name in ("__init__.py", "models.py", "families.py"):
        shown = subprocess.run(["git", "show", f"{BEFORE_THE_MOVE}:spark_jobs/{name}"],
                               cwd=ROOT, capture_output=True, text=True)
        if shown.returncode != 0:
            pytest.skip(f"the repository's history has no {BEFORE_THE_MOVE} (a shallow clone)")
        (out / name).write_text(shown.stdout)


def _run(code: str, *, path: str | None = None) -> str:
    env_path = [*([path] if path else []), str(ROOT / "src"), str(ROOT)]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, cwd=ROOT,
                            env={"PYTHONPATH": ":".join(env_path), "PATH": "/usr/bin:/bin",
                                 "HOME": str(ROOT / ".mfy")})
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_a_model_pickled_before_the_move_loads_and_predicts(tmp_path):
    old_code = tmp_path / "code" / "spark_jobs"
    _old_spark_jobs(old_code)
    rng = np.random.default_rng(0)
    factors = []
    for implicit in (False, True):
        factors.append(Factors(
            params=ModelParams(rank=3, implicit=implicit), user_ids=np.array([1, 2]),
            user_factors=rng.normal(size=(2, 3)), item_ids=np.array([10, 20, 30]),
            item_factors=rng.normal(size=(3, 3)),
            biases=None if implicit else Biases(3.5, pd.Series({1: 0.1, 2: -0.2}),
                                                pd.Series({10: 0.3, 20: 0.0, 30: -0.1})),
            scale=(1.0, 5.0)))
    save_factors(tmp_path / "factors", *factors)
    model = tmp_path / "model"
    # saved by the pre-move code: its class, pickled by reference, with its code copy
    _run(f"""
import mlflow.pyfunc
from spark_jobs.models import MoviesForYouALS
assert MoviesForYouALS.__module__ == "spark_jobs.models"
mlflow.pyfunc.save_model({str(model)!r}, python_model=MoviesForYouALS(),
                         artifacts={{"factors": {str(tmp_path / "factors")!r}}},
                         code_paths=[{str(old_code)!r}],
                         pip_requirements=["mlflow", "numpy", "pandas", "pyarrow"])
""", path=str(old_code.parent))
    # loaded by today's code
    out = _run(f"""
import json, mlflow.pyfunc, pandas as pd
model = mlflow.pyfunc.load_model({str(model)!r})
answer = model.predict(pd.DataFrame({{"user_id": [1, 2, 99], "movie_id": [10, 30, 10]}}))
print(json.dumps(answer.to_dict(orient="list")))
""")
    answer = json.loads(out.strip().splitlines()[-1])
    expected = factors[0].predict(np.array([1, 2, 99]), np.array([10, 30, 10]))
    assert answer["predicted_rating"] == pytest.approx(expected.tolist())
    assert answer["ranking_score"][2] == 0.0  # an unknown user
