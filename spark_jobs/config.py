"""What a training run depends on: :class:`TrainConfig`, and the error it raises.

Every field of :class:`TrainConfig` is logged as an MLflow parameter. The
nightly DAG's run conf (``{"train": {...}}``) overrides fields through
:func:`train_config`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

from moviesforyou.foundation.errors import MoviesForYouError
from spark_jobs.models import ModelParams


class TrainingError(MoviesForYouError):
    """The job cannot train on this input; nothing was registered."""


@dataclass
class TrainConfig:
    """Everything a run depends on; each field is logged as an MLflow parameter."""

    folds_dir: Path | None = None
    k: int = 10
    relevance_threshold: float = 4.0
    holdout_per_user: int = 10
    test_fraction: float = 0.2
    seed: int = 42
    # defaults from benchmarks/model_quality.py on ml-100k: reg 0.15 / rank 50 was the
    # best explicit setting, reg 0.5 / alpha 4 / rank 64 the best implicit one. Ten
    # iterations, not 15: within 0.001 RMSE and NDCG@10 of 15 on ml-100k and a 1M
    # release (benchmarks/als_iterations.py), and a third less of every fit, which at
    # 25M is compute-bound (about 50 s an iteration at rank 64 on two cores)
    explicit_grid: dict = field(default_factory=lambda: {
        "rank": [20, 50], "reg_param": [0.1, 0.15], "max_iter": [10]})
    implicit_grid: dict = field(default_factory=lambda: {
        "rank": [50, 64], "reg_param": [0.1, 0.5], "alpha": [1.0, 4.0], "max_iter": [10]})
    #: the NumPy families beside ALS (:mod:`spark_jobs.families`; empty: not tried).
    #: BPMF competes with the tuned explicit ALS for predicted ratings on a validation
    #: carve-out of the tuning sample; EASE with the implicit grid for lists, on the
    #: same chronological carve-out. On ml-100k BPMF at rank 20 is 0.897 RMSE over
    #: u1-u5 (ALS 0.920), EASE 0.331 NDCG@10 on ua (ALS 0.285)
    bpmf_grid: dict = field(default_factory=lambda: {"rank": [20], "max_iter": [150]})
    #: (one decomposition serves every lambda of the grid: the larger ones cost seconds)
    ease_grid: dict = field(default_factory=lambda: {
        "reg_param": [800.0, 1600.0, 2400.0, 3200.0, 6400.0, 12800.0], "rank": [1024]})
    #: BPMF is a candidate up to this many ratings (Gibbs sweeps in NumPy: about 25 s
    #: a fit at 100K, 4.5 minutes at 1M on two cores)
    bpmf_max_ratings: int = 2_000_000
    #: EASE is a candidate while users or movies, the fewer, are at most this many (its
    #: vectors have that many numbers, up to the rank; at rank 1024 and 1M ratings a
    #: decomposition takes about 40 s)
    ease_max_size: int = 10_000
    explicit: ModelParams | None = None  # fixed configuration: skip tuning
    implicit: ModelParams | None = None
    rmse_tolerance: float = 0.01
    #: tuning picks the best list model among those whose validation top-k lists show
    #: at least this share of the catalogue (the more popular a model's picks, the
    #: fewer films it ever shows), unless the best of them ranks no better than most
    #: popular there; 0 for the best NDCG whatever it covers
    min_coverage: float = 0.25
    blocks: int | None = None
    #: tune on the whole histories of a user sample of about this many ratings (None:
    #: on all); the chosen configuration is then fitted on all of them. At 1M a 200,000
    #: sample chose the same points as all in a quarter of the time
    #: (benchmarks/tuning_sample.py); at 5M tuning on 2M was most of a 34-minute train_als
    tune_max_ratings: int | None = 500_000
    #: score models, baselines and the gate on the whole histories of a user sample of
    #: about this many ratings (None: on all). Held-out figures need no more (at 25M
    #: that is about 13,000 users, 130,000 held-out ratings), and each held-out fit
    #: then costs a twelfth; the published models still fit on all
    eval_max_ratings: int | None = 2_000_000

    def grid(self, implicit: bool, family: str = "als") -> list[ModelParams]:
        """The candidates of one grid: ALS' explicit or implicit grid, or a NumPy
        family's (``bpmf`` for ratings, ``ease`` for lists)."""
        spec = {"als": self.implicit_grid if implicit else self.explicit_grid,
                "bpmf": self.bpmf_grid, "ease": self.ease_grid}[family]
        keys = list(spec)
        return [ModelParams(implicit=implicit, family=family,
                            **dict(zip(keys, values, strict=True)))
                for values in itertools.product(*(spec[k] for k in keys))] if spec else []


def train_config(overrides: dict | None = None) -> TrainConfig:
    """A TrainConfig from a run's conf (``{"train": {...}}``), e.g. fixed ALS params;
    ``tune`` is the nightly rule's (:func:`spark_jobs.nightly.tune_today`), not a field."""
    values = {k: v for k, v in (overrides or {}).items() if k != "tune"}
    for key in ("explicit", "implicit"):
        if values.get(key):
            values[key] = ModelParams(**{**values[key], "implicit": key == "implicit"})
    return TrainConfig(**values)
