"""Thresholds that follow the data: what a small or young release is held to.

Pure functions, no services: the similar-films floor and the gate on a holdout too
thin to judge. The releases that exercise them end to end are in ``test_shapes.py``.
"""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import pandas as pd

from spark_jobs.gate import MIN_JUDGED_USERS, decide, thin_holdout
from spark_jobs.models import ModelParams
from spark_jobs.score import neighbour_floor

PARAMS = (ModelParams(rank=5, reg_param=0.1, max_iter=5),
          ModelParams(rank=10, reg_param=0.1, max_iter=5, implicit=True))
OTHER = (ModelParams(rank=8, reg_param=0.1, max_iter=5),
         ModelParams(rank=12, reg_param=0.1, max_iter=5, implicit=True))


def test_the_neighbour_floor_is_the_setting_on_a_big_release_and_follows_a_small_one():
    big = pd.Series(range(1, 1001))  # the 100th most rated has 901 ratings
    assert neighbour_floor(big, 10) == 10
    small = pd.Series([30] * 20 + [3] * 90)  # the 100th most rated has 3
    assert neighbour_floor(small, 10) == 3
    assert neighbour_floor(pd.Series([50, 2, 1]), 10) == 1  # fewer than 100 rated
    assert neighbour_floor(pd.Series([], dtype="int64"), 10) == 1


def _champion(params, split_id="old-split"):
    explicit, implicit = params
    return SimpleNamespace(version="3", tags={
        "mfy.explicit_params": json.dumps(dataclasses.asdict(explicit)),
        "mfy.implicit_params": json.dumps(dataclasses.asdict(implicit)),
        "mfy.split_id": split_id, "mfy.metric.ndcg_at_10": "0.1", "mfy.metric.rmse": "1.0"})


def _decide(champion, judged, challenger=OTHER):
    def evaluate(*_):
        return {"ndcg_at_10": 0.05, "rmse": 1.2}

    return decide(challenger_metrics={"ndcg_at_10": 0.2, "rmse": 0.9}, challenger=challenger,
                  split_id="new-split", dataset="d", digest="abc", champion=champion,
                  champion_dataset="d", evaluate=evaluate, k=10, rmse_tolerance=0.01,
                  judged_users=judged)


def test_a_thin_holdout_is_named_and_a_first_model_still_publishes():
    assert thin_holdout(MIN_JUDGED_USERS) is None and thin_holdout(None) is None
    warning = thin_holdout(12)
    assert "12 viewer(s)" in warning and str(MIN_JUDGED_USERS) in warning
    promoted, reason, _ = _decide(None, 12)
    assert promoted and reason == "no champion yet"


def test_on_a_thin_holdout_the_champion_stays_unless_it_is_refit_on_newer_data():
    promoted, reason, compared = _decide(_champion(PARAMS), 12)
    assert promoted is False and "too thin to judge" in reason and compared is None
    # a better challenger on a holdout thick enough is promoted
    promoted, reason, compared = _decide(_champion(PARAMS), MIN_JUDGED_USERS)
    assert promoted and "challenger better" in reason and compared
    # the champion's own configuration on newer data needs no comparison
    promoted, reason, _ = _decide(_champion(PARAMS), 12, challenger=PARAMS)
    assert promoted and "newer data" in reason
