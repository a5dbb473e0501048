"""Hand-written miniature releases in the published ml-1m and ml-latest formats.

The rows are invented; only the layouts follow the MovieLens READMEs (``::``-separated
latin-1 for ml-1m, UTF-8 CSV with quoting for ml-latest). They are written out at test
time rather than kept as files so that nothing in the repository looks like MovieLens
data, whose licence forbids redistribution.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

ML_1M_MINI: dict[str, list[str]] = {
    'movies.dat': [
        "1::Toy Story (1995)::Animation|Children's|Comedy",
        "2::Jumanji (1995)::Adventure|Children's|Fantasy",
        '3::Misérables, Les (1995)::Drama|Musical',
        '4::Crying Game, The (1992)::Drama|Romance|War',
        '5::Cité des enfants perdus, La (1995)::Adventure|Sci-Fi',
    ],
    'users.dat': [
        '1::F::1::10::48067',
        '2::M::56::16::70072',
        '3::M::25::15::55117',
        '4::F::45::7::02460',
    ],
    'ratings.dat': [
        '1::1::5::978300760',
        '1::3::3::978302109',
        '1::5::4::978301968',
        '2::1::4::978298413',
        '2::2::2::978299026',
        '2::4::5::978299941',
        '3::3::1::978297867',
        '3::5::5::978298147',
        '4::2::3::978294008',
        '4::4::4::978294282',
    ],
}

ML_LATEST_MINI: dict[str, list[str]] = {
    'movies.csv': [
        'movieId,title,genres',
        '1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy',
        '2,"Misérables, Les (1995)",Drama|War',
        '3,"Amélie (Fabuleux destin d\'Amélie Poulain, Le) (2001)",Comedy|Romance',
        '4,"Dark Knight, The (2008)",Action|Crime|Drama|IMAX',
        '5,Babylon 5,Sci-Fi',
        '6,Generic Documentary,(no genres listed)',
    ],
    'ratings.csv': [
        'userId,movieId,rating,timestamp',
        '1,1,4.0,964982703',
        '1,3,4.5,964981247',
        '1,4,5.0,964982224',
        '2,2,3.0,1445714835',
        '2,4,0.5,1445714885',
        '2,5,2.5,1445715029',
        '3,1,3.5,1306463578',
        '3,6,1.0,1306464000',
        '7,3,5.0,1106635946',
    ],
    'tags.csv': [
        'userId,movieId,tag,timestamp',
        '2,4,dark hero,1445714994',
        '2,4,"Heath Ledger, ""Joker""",1445714996',
        '3,1,pixar,1306463600',
    ],
    'links.csv': [
        'movieId,imdbId,tmdbId',
        '1,0114709,862',
        '2,0113828,48750',
        '3,0211915,194',
        '4,0468569,155',
        '5,0105946,',
        '6,9999999,',
    ],
}


def write(folder: Path) -> Path:
    """Write both releases under ``folder`` (``ml-1m-mini/``, ``ml-latest-mini/``)."""
    for name, files, encoding in (("ml-1m-mini", ML_1M_MINI, "latin-1"),
                                  ("ml-latest-mini", ML_LATEST_MINI, "utf-8")):
        release = folder / name
        release.mkdir(parents=True, exist_ok=True)
        for file, content in files.items():
            (release / file).write_text("\n".join(content) + "\n", encoding=encoding)
    return folder


#: Files the GroupLens zips carry beyond the ones the ingester reads (from their READMEs).
_EXTRAS: dict[str, dict[str, str]] = {
    "ml-1m": {"README": "Synthetic stand-in for the MovieLens 1M release layout.\n"},
    "ml-latest-small": {"README.txt": "Synthetic stand-in for ml-latest-small.\n"},
    "ml-25m": {"README.txt": "Synthetic stand-in for ml-25m.\n",
               "genome-tags.csv": "tagId,tag\n1,007\n2,\"action, packed\"\n",
               "genome-scores.csv": "movieId,tagId,relevance\n1,1,0.02875\n1,2,0.2345\n"},
    "ml-32m": {"README.txt": "Synthetic stand-in for ml-32m.\n",
               "checksums.txt": "(md5 sums of the release's files)\n"},
}
#: The layout of each GroupLens release name.
LAYOUT = {"ml-100k": "100k", "ml-1m": "1m", "ml-latest-small": "csv", "ml-25m": "csv",
          "ml-32m": "csv"}


#: Per layout: the catalogue file, its field separator and encoding; the ratings file and
#: its separator.
_FILES = {"100k": ("u.item", "|", "latin-1", "u.data", "\t"),
          "1m": ("movies.dat", "::", "latin-1", "ratings.dat", "::"),
          "csv": ("movies.csv", ",", "utf-8", "ratings.csv", ",")}


@dataclass(frozen=True)
class Duplicate:
    """A film listed twice, as the real releases list some: ``kept`` and ``duplicate``
    are its two ids; ``user`` rated it under both, ``rating`` (at ``rated_at``) later."""

    kept: int
    duplicate: int
    user: int
    rating: float
    rated_at: int


def list_a_film_twice(release: Path, layout: str) -> Duplicate:
    """Repeat the first film of ``release``'s catalogue under a new id, with the same
    title, year, genres and (100K link, links.csv's imdbId) IMDb id, and move one rating
    of a viewer of the film to the new id, later than their first, as ml-100k's users
    rated Chasing Amy under both of its ids. The rating count is unchanged."""
    movies_file, sep, encoding, ratings_file, rsep = _FILES[layout]
    lines = (release / movies_file).read_text(encoding=encoding).splitlines()
    header = lines[:1] if layout == "csv" else []
    body = lines[len(header):]
    kept = int(body[0].split(sep, 1)[0])
    duplicate = max(int(line.split(sep, 1)[0]) for line in body) + 1
    body.append(f"{duplicate}{sep}{body[0].split(sep, 1)[1]}")
    (release / movies_file).write_text("\n".join(header + body) + "\n", encoding=encoding)
    if layout == "csv" and (release / "links.csv").exists():
        links = (release / "links.csv").read_text(encoding="utf-8").splitlines()
        imdb_tmdb = next(x for x in links[1:] if int(x.split(",", 1)[0]) == kept).split(",", 1)[1]
        links.append(f"{duplicate},{imdb_tmdb}")
        (release / "links.csv").write_text("\n".join(links) + "\n", encoding="utf-8")
    ratings = (release / ratings_file).read_text(encoding=encoding).splitlines()
    start = 1 if layout == "csv" else 0
    rows = [line.split(rsep) for line in ratings[start:]]
    first = next(r for r in rows if int(r[1]) == kept)
    user, at = first[0], int(first[3])
    later = next(r for r in rows if r[0] == user and int(r[3]) > at and int(r[1]) != kept)
    later[1] = str(duplicate)
    (release / ratings_file).write_text(
        "\n".join(ratings[:start] + [rsep.join(r) for r in rows]) + "\n", encoding=encoding)
    return Duplicate(kept, duplicate, int(user), float(later[2]), int(later[3]))


def synthetic_release(folder: Path, name: str, *, ratings: int, seed: int, users: int,
                      movies: int, as_zip: bool, duplicate: bool = False) -> Path:
    """A seeded synthetic release in the layout of the GroupLens release ``name``.

    As a zip it is packed as GroupLens packs it: every file under a ``<name>/``
    folder, with the README and the files the ingester does not read (ml-25m's
    genome, ml-32m's checksums). With ``duplicate``, one film is listed twice
    (:func:`list_a_film_twice`; what was done is in ``folder/<name>.duplicate.json``).
    Returns the zip or the folder.
    """
    import shutil
    import zipfile

    from moviesforyou.ingestion import synth

    release = folder / name
    synth.generate(release, synth.SynthSpec(n_ratings=ratings, n_users=users, n_movies=movies,
                                            seed=seed), layout=LAYOUT[name])
    for file, text in _EXTRAS.get(name, {}).items():
        (release / file).write_text(text, encoding="utf-8")
    if duplicate:
        twice = list_a_film_twice(release, LAYOUT[name])
        (folder / f"{name}.duplicate.json").write_text(json.dumps(asdict(twice)))
    if not as_zip:
        return release
    archive = folder / f"{name}.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as packed:
        packed.write(release, f"{name}/")
        for path in sorted(release.iterdir()):
            packed.write(path, f"{name}/{path.name}")
    shutil.rmtree(release)
    return archive
