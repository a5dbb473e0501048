"""The MovieLens releases the platform knows, and what each layout of files has.

Shared by the stages: ingestion reads a release by its layout, the quality suites
and the cold-start lists adapt to its :class:`Features`, and :func:`release_features`
says which a loaded dataset has.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from moviesforyou.foundation.errors import SourceError

GROUPLENS = "https://files.grouplens.org/datasets/movielens"


@dataclass(frozen=True)
class Release:
    """A MovieLens release and the layout of its files.

    Attributes:
        name: the release's name, also the ``dataset`` value in the warehouse.
        layout: ``100k`` (``|``/tab, latin-1), ``1m`` (``::``, latin-1) or ``csv`` (UTF-8).
        url: the GroupLens download URL.
    """

    name: str
    layout: str

    @property
    def url(self) -> str:
        return f"{GROUPLENS}/{self.name}.zip"


RELEASES: dict[str, Release] = {
    r.name: r
    for r in (
        Release("ml-100k", "100k"),
        Release("ml-1m", "1m"),
        Release("ml-latest-small", "csv"),
        Release("ml-25m", "csv"),
        Release("ml-32m", "csv"),
    )
}

#: Files each layout must have; the ingester reads these and nothing else.
REQUIRED_FILES: dict[str, tuple[str, ...]] = {
    "100k": ("u.data", "u.item", "u.user", "u.genre", "u.occupation"),
    "1m": ("ratings.dat", "movies.dat", "users.dat"),
    "csv": ("ratings.csv", "movies.csv"),
}

#: Files a layout may lack, and the feature each carries: a release without one
#: loads with that feature off (ml-latest-small's tags and links are extras).
OPTIONAL_FILES: dict[str, dict[str, str]] = {
    "csv": {"tags.csv": "tags", "links.csv": "links"},
}


@dataclass(frozen=True)
class Features:
    """What a release of a layout has, as its README describes it.

    The quality suites (``when:``), the cold-start lists and the API adapt to these:
    a CSV release has no user file, so it gets no age/gender, occupation or region lists.

    Attributes:
        layout: ``100k``, ``1m`` or ``csv``.
        demographics: a user file with gender, age and occupation.
        half_stars: ratings 0.5-5 in half steps (else whole stars 1-5).
        tags: free-text tags (``tags.csv``).
        links: IMDb and TMDb ids (``links.csv``); 100K has IMDb URLs instead.
    """

    layout: str
    demographics: bool
    half_stars: bool
    tags: bool
    links: bool

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


FEATURES: dict[str, Features] = {
    "100k": Features("100k", demographics=True, half_stars=False, tags=False, links=False),
    "1m": Features("1m", demographics=True, half_stars=False, tags=False, links=False),
    "csv": Features("csv", demographics=False, half_stars=True, tags=True, links=True),
}


def features_of(layout: str, names) -> Features:
    """What a release of ``layout`` with the files ``names`` has: a feature whose
    optional file is absent is off."""
    present = set(names)
    off = {feature: False for file, feature in OPTIONAL_FILES.get(layout, {}).items()
           if file not in present}
    return dataclasses.replace(FEATURES[layout], **off)


def release_features(cur, dataset: str) -> Features:
    """What ``dataset``'s release has: its newest load's layout and files (the ledger
    keeps each file's checksum), else the GroupLens release of that name."""
    cur.execute("""select layout, files from ops.source_loads
                   where dataset = %s and status = 'loaded' and layout is not null
                   order by load_id desc limit 1""", (dataset,))
    row = cur.fetchone()
    if row:
        return features_of(row[0], row[1] or {}) if row[1] else FEATURES[row[0]]
    if dataset in RELEASES:
        return FEATURES[RELEASES[dataset].layout]
    raise SourceError(f"no load of {dataset!r} records its layout: ingest the release first")
