"""Each film once, in the evaluation: the official ml-100k folds under the films' kept ids.

MovieLens 100K lists 19 films under two ids with the same IMDb link (Chasing Amy, 246
and 268; Body Snatchers, 573 and 670; ...). The marts merge them (dbt's
int_movie_merges, tested end to end on the real release in ``test_api.py``); the folds
are written with the released ids, so the evaluation maps both of their sides the same
way. Pure pandas on the real files, no services.
"""

from __future__ import annotations

import pandas as pd
import pytest

from spark_jobs.config import TrainingError
from spark_jobs.models import ITEM, TIME, USER
from spark_jobs.splitters import merge_fold, official_folds, read_fold


def links_of(ml100k) -> dict[int, int]:
    """merged id -> kept id, by the rule of int_movie_merges: the same non-empty IMDb
    link, the lowest id kept."""
    items = pd.read_csv(ml100k / "u.item", sep="|", header=None, encoding="latin-1",
                        usecols=[0, 4], names=["movie_id", "url"]).dropna()
    kept = items.groupby("url")["movie_id"].transform("min")
    return {int(m): int(k) for m, k in zip(items["movie_id"], kept, strict=True) if m != k}


def test_the_folds_map_both_sides_through_the_kept_ids(ml100k):
    merges = links_of(ml100k)
    assert len(merges) == 19 and merges[268] == 246 and merges[670] == 573
    released = read_fold(ml100k / "u.data")
    merged = merge_fold(released, merges)
    # a viewer who rated a film under both ids keeps the later rating
    both = released[released[ITEM].isin([246, 268])].groupby(USER).filter(lambda g: len(g) == 2)
    assert len(both) > 0
    latest = both.sort_values(TIME).groupby(USER).tail(1)
    got = merged[merged[USER].isin(both[USER]) & (merged[ITEM] == 246)]
    assert sorted(got["rating"]) == sorted(latest["rating"]) and len(got) == len(latest)
    assert not merged[ITEM].isin(list(merges)).any()

    with pytest.raises(TrainingError, match="not in the snapshot"):
        official_folds(ml100k, merged)  # the released ids are not the snapshot's
    splits = official_folds(ml100k, merged, merges)
    assert "19 duplicate entries merged" in splits.description
    for base, test in [*splits.rating, splits.ranking]:
        assert not base[ITEM].isin(list(merges)).any() and not test[ITEM].isin(list(merges)).any()
        pairs = set(zip(test[USER], test[ITEM], strict=True))
        assert not pairs & set(zip(base[USER], base[ITEM], strict=True))
        assert not test.duplicated([USER, ITEM]).any()
