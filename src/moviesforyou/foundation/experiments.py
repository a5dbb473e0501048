"""Champion against challenger, live: which arm a viewer is in.

An experiment (``ops.experiments``) serves the challenger's lists to a fixed share
of viewers. A viewer's bucket is the first 32 bits of ``md5("<salt>:<user id>")``
modulo :data:`BUCKETS`; buckets below ``share x BUCKETS`` are the challenger's.
The salt is the experiment's name, so an experiment keeps each viewer in one arm
from its first night to its last, and the next experiment draws the arms afresh.

The warehouse's one definition is ``app.arm_of`` (``sql/app.sql``), which the
publish and the SQL functions call; :func:`arm_of` is the same rule in Python for
the API and the tests, which check that the two agree.
"""

from __future__ import annotations

import hashlib

import numpy as np

CHAMPION, CHALLENGER = "champion", "challenger"
ARMS = (CHAMPION, CHALLENGER)
#: Buckets per experiment: a share is honoured to 0.01%.
BUCKETS = 10_000


def bucket(salt: str, user_id: int) -> int:
    """The viewer's bucket in ``[0, BUCKETS)`` under ``salt``."""
    digest = hashlib.md5(f"{salt}:{int(user_id)}".encode()).hexdigest()
    return int(digest[:8], 16) % BUCKETS


def arm_of(salt: str | None, share: float, user_id: int) -> str:
    """``challenger`` for the viewers of an experiment's share, else ``champion``
    (everyone when no experiment runs: ``salt`` None or ``share`` 0)."""
    if not salt or share <= 0:
        return CHAMPION
    return CHALLENGER if bucket(salt, user_id) < round(share * BUCKETS) else CHAMPION


def challenger_mask(salt: str | None, share: float, user_ids) -> np.ndarray:
    """Per user id, whether the viewer is in the challenger's arm."""
    ids = np.asarray(user_ids)
    if not salt or share <= 0:
        return np.zeros(len(ids), dtype=bool)
    cut = round(share * BUCKETS)
    return np.fromiter((bucket(salt, u) < cut for u in ids), dtype=bool, count=len(ids))
