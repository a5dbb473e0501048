"""The NumPy model families beside Spark ALS: BPMF for predicted ratings, EASE for lists.

Both come out in the shape Spark ALS leaves (:class:`~spark_jobs.models.Factors`:
user and movie vectors whose dot product is the score, plus the bias baseline for
ratings), so the gate, scoring, publishing, the SQL functions and the API treat
every family alike; only how a new viewer is folded in differs
(:mod:`moviesforyou.foundation.foldin`).

**BPMF** (Salakhutdinov and Mnih, "Bayesian probabilistic matrix factorization
using MCMC", 2008), with biases. Each user is ``[p_u, b_u]`` and each movie
``[q_i, b_i]``; a rating is ``mu + b_u + b_i + p_u . q_i`` plus Gaussian noise of
precision ``tau``. Users and movies have Gaussian priors whose means and
precisions have Gaussian-Wishart priors, and ``tau`` a Gamma prior, so nothing is
tuned by hand but the rank and the number of sweeps. Gibbs sampling alternates:
the hyperparameters given the vectors, every user given the movies (one
``(rank+1)``-square Gaussian each, the ALS user step with the prior in place of
the regularisation and a random draw around its solution), every movie given the
users, then ``tau``. The prediction is the mean over the sweeps after a burn-in,
which is what a single point estimate (ALS) lacks on sparse data: on ml-100k's
five folds it lowers the RMSE from 0.920 to about 0.897
(``benchmarks/model_quality.py --quality``).

The mean of ``S`` sampled products ``P_s Q_sᵀ`` is the product of the stacked
samples, ``[P_1 .. P_S] [Q_1 .. Q_S]ᵀ / S``; its truncated SVD (from the QR
factors of both stacks, never the users x movies matrix) gives the published
vectors, ``2 x rank`` of them, which keep that mean to within 0.0003 RMSE on
ml-100k. A new viewer is folded in with the explicit ALS user step against the
published movie vectors, with the ridge regularisation that best reproduces the
sampled users' own predictions (:func:`calibrate_fold_in`).

Cost: each sweep is two passes over the ratings of ``(rank + 1)²`` flops each
(one small matrix product per user and per movie), plus one small Cholesky per
user and movie; memory is the ratings' vectors (ratings x (rank + 1) floats) and
the kept samples (users and movies x rank x samples floats).

**EASE** (Steck, "Embarrassingly shallow autoencoders for sparse data", 2019):
item-item weights ``B = I - P diag(1 / diag(P))`` with ``P = (XᵀX + lambda I)⁻¹``
and a viewer's scores ``x B``, ``X`` holding rating values. With the eigenvectors
of ``XᵀX = Q diag(L) Qᵀ``, for a movie the viewer has not rated the score is
exactly ``x Q diag(w) Qᵀ e_j / P_jj`` with ``w = L / (lambda (L + lambda))``:
a factor model whose viewer vector is ``x Q diag(sqrt w)`` and whose movie vector
is ``Q_j diag(sqrt w) / P_jj``. So a viewer's vector is the sum of their ratings
times ``P_jj`` times the movie vectors, a fold-in without a solve. All
eigen-directions kept (``rank`` 0) is EASE exactly; fewer approximate it (the
leading directions, from a randomized SVD of the ratings when there are many
more than ``rank``; the small ones weigh little, ``w`` shrinks them). There are
at most as many directions as users or movies, whichever is fewer, and each
user's published vector has that many numbers, up to the rank, so EASE is a
candidate only while one of the two is at most :data:`EASE_MAX_SIZE`; the gate
then compares it with implicit ALS on the same holdout. A lambda grid on the
same ratings shares one decomposition.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import time

import numpy as np
import pandas as pd
from scipy import sparse

from moviesforyou.foundation.factors import ITEM, RATING, USER, Biases, Factors, ModelParams
from moviesforyou.foundation.foldin import BIAS_REG_USER, explicit_user

log = logging.getLogger(__name__)

#: BPMF sweeps discarded before averaging, and every how many sweeps one is kept.
BURN_IN, THIN = 20, 2
#: The fold-in regularisations :func:`calibrate_fold_in` chooses from (ALS-WR).
FOLD_IN_REGS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
#: EASE's eigen-decomposition is dense in the smaller of users and movies; above
#: this many of both it is not a candidate (``TrainConfig.ease_max_size``).
EASE_MAX_SIZE = 10_000


# --------------------------------------------------------------------------- BPMF


def _gaussian_wishart(vectors: np.ndarray, rng: np.random.Generator) -> tuple:
    """A draw of the prior's mean and precision given the vectors (conjugate update
    of a Gaussian-Wishart with mean 0, scale I, beta 2, nu = dimension)."""
    n, d = vectors.shape
    beta0, nu0 = 2.0, d
    mean = vectors.mean(axis=0)
    spread = np.cov(vectors.T, bias=True) if n > 1 else np.zeros((d, d))
    beta, nu = beta0 + n, nu0 + n
    mu = n * mean / beta
    scale_inv = np.eye(d) + n * spread + beta0 * n / beta * np.outer(mean, mean)
    scale = np.linalg.inv(scale_inv)
    chol = np.linalg.cholesky((scale + scale.T) / 2)
    bartlett = np.tril(rng.standard_normal((d, d)), -1)
    bartlett[np.diag_indices(d)] = np.sqrt(rng.chisquare(nu - np.arange(d)))
    root = chol @ bartlett
    precision = root @ root.T
    draw = mu + np.linalg.solve(np.linalg.cholesky(beta * precision).T, rng.standard_normal(d))
    return draw, precision


class _Side:
    """One side (users or movies) of the ratings: each member's ratings, for the
    normal equations (one small matrix product per member, over its ratings)."""

    def __init__(self, index: np.ndarray, size: int):
        self.size = size
        self.order = np.argsort(index, kind="stable")
        self.bounds = np.searchsorted(index[self.order], np.arange(size + 1))

    def normal_equations(self, other: np.ndarray, target: np.ndarray):
        """Per member: sum of ``v vᵀ`` and of ``v t`` over its ratings (``other`` holds
        the other side's vector of each rating)."""
        other, target = other[self.order], target[self.order]
        d = other.shape[1]
        gram, rhs = np.empty((self.size, d, d)), np.empty((self.size, d))
        bounds = self.bounds
        for member in range(self.size):
            rows = other[bounds[member]:bounds[member + 1]]
            gram[member] = rows.T @ rows
            rhs[member] = target[bounds[member]:bounds[member + 1]] @ rows
        return gram, rhs

    def draw(self, other, target, tau, mean, precision, rng) -> np.ndarray:
        """Every member's vector from its Gaussian conditional."""
        gram, rhs = self.normal_equations(other, target)
        a = precision[None] + tau * gram
        b = (precision @ mean)[None] + tau * rhs
        chol = np.linalg.cholesky(a)
        centre = np.linalg.solve(a, b[..., None])[..., 0]
        noise = rng.standard_normal(b.shape)
        return centre + np.linalg.solve(np.swapaxes(chol, 1, 2), noise[..., None])[..., 0]


def fit_bpmf(ratings: pd.DataFrame, params: ModelParams, *, seed: int = 42,
             scale: tuple[float, float] = (0.5, 5.0), progress_every: int = 25) -> Factors:
    """BPMF with biases by Gibbs sampling; the mean prediction as published factors.

    Args:
        ratings: user, movie and rating columns.
        params: ``rank`` latent factors and ``max_iter`` sweeps (family ``bpmf``).
    Returns:
        Factors whose ``biases.predict + dots`` is the posterior mean prediction
        (compressed to ``2 x rank`` vectors), with ``fold_in_reg`` the fold-in
        regularisation chosen by :func:`calibrate_fold_in`.
    """
    if params.max_iter <= BURN_IN:
        raise ValueError(f"bpmf needs more than {BURN_IN} sweeps (the burn-in), "
                         f"not {params.max_iter}")
    started = time.time()
    rng = np.random.default_rng(seed)
    users, u = np.unique(ratings[USER].to_numpy(), return_inverse=True)
    movies, m = np.unique(ratings[ITEM].to_numpy(), return_inverse=True)
    stars = ratings[RATING].to_numpy(np.float64)
    mu = float(stars.mean())
    residual = stars - mu
    k = params.rank
    user_side, movie_side = _Side(u, len(users)), _Side(m, len(movies))
    # columns 0..k-1 the factors, k the own bias; the other side's bias enters as an offset
    p = rng.standard_normal((len(users), k + 1)) * 0.1
    q = rng.standard_normal((len(movies), k + 1)) * 0.1
    tau = 2.0
    kept_p, kept_q, sum_bu, sum_bi = [], [], np.zeros(len(users)), np.zeros(len(movies))
    with_one = np.ones((len(stars), 1))
    for sweep in range(params.max_iter):
        mean, precision = _gaussian_wishart(p, rng)
        p = user_side.draw(np.hstack([q[m, :k], with_one]), residual - q[m, k], tau, mean,
                           precision, rng)
        mean, precision = _gaussian_wishart(q, rng)
        q = movie_side.draw(np.hstack([p[u, :k], with_one]), residual - p[u, k], tau, mean,
                            precision, rng)
        error = residual - p[u, k] - q[m, k] - np.einsum("ij,ij->i", p[u, :k], q[m, :k])
        tau = rng.gamma(1 + len(stars) / 2, 1 / (1 + 0.5 * float(error @ error)))
        if sweep >= BURN_IN and (sweep - BURN_IN) % THIN == 0:
            kept_p.append(p[:, :k].copy())
            kept_q.append(q[:, :k].copy())
            sum_bu += p[:, k]
            sum_bi += q[:, k]
        if progress_every and (sweep + 1) % progress_every == 0:
            log.info("bpmf: sweep %d of %d, train RMSE %.4f, noise sd %.3f, %.0f s",
                     sweep + 1, params.max_iter, np.sqrt(error @ error / len(stars)),
                     tau ** -0.5, time.time() - started)
    n = len(kept_p)
    user_vectors, movie_vectors = _mean_product(np.hstack(kept_p) / np.sqrt(n),
                                                np.hstack(kept_q) / np.sqrt(n), 2 * k)
    biases = Biases(mu, pd.Series(sum_bu / n, index=users), pd.Series(sum_bi / n, index=movies))
    factors = Factors(params=params, user_ids=users, user_factors=user_vectors,
                      item_ids=movies, item_factors=movie_vectors, biases=biases, scale=scale)
    reg = calibrate_fold_in(factors, ratings, seed=seed)
    log.info("bpmf: %d sweeps, %d kept, rank %d, fold-in reg %g, %.0f s", params.max_iter, n,
             user_vectors.shape[1], reg, time.time() - started)
    return dataclasses.replace(factors, fold_in_reg=reg)


def _mean_product(left: np.ndarray, right: np.ndarray, rank: int) -> tuple:
    """Vectors ``a, b`` of at most ``rank`` columns with ``a bᵀ`` the best rank-``rank``
    approximation of ``left rightᵀ``, from the QR factors of both (never the product)."""
    q_left, r_left = np.linalg.qr(left)
    q_right, r_right = np.linalg.qr(right)
    u, s, vt = np.linalg.svd(r_left @ r_right.T)
    rank = min(rank, len(s))
    root = np.sqrt(s[:rank])
    return q_left @ u[:, :rank] * root, q_right @ vt[:rank].T * root


def calibrate_fold_in(factors: Factors, ratings: pd.DataFrame, *, users: int = 300,
                      seed: int = 42) -> float:
    """The ALS-WR regularisation with which the explicit fold-in
    (:mod:`moviesforyou.foundation.foldin`) best reproduces the model's own predictions
    for a sample of its users, over every movie (mean squared difference): what a viewer
    folded in between two nights gets."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(factors.user_ids, size=min(users, len(factors.user_ids)), replace=False)
    sample = ratings[ratings[USER].isin(chosen)]
    biases = factors.biases
    base = biases.mu + biases.item.reindex(factors.item_ids).to_numpy()
    errors = dict.fromkeys(FOLD_IN_REGS, 0.0)
    for user, history in sample.groupby(USER):
        rows = factors.item_index.get_indexer(history[ITEM].to_numpy())
        stars = history[RATING].to_numpy(np.float64)
        bias = (stars - base[rows]).sum() / (len(rows) + BIAS_REG_USER)
        own = factors.user_factors[factors.user_index.get_loc(user)]
        target = biases.user[user] + factors.item_factors @ own
        for reg in FOLD_IN_REGS:
            x = explicit_user(factors.item_factors[rows], stars - base[rows] - bias, reg)
            errors[reg] += float(np.mean((bias + factors.item_factors @ x - target) ** 2))
    return min(errors, key=errors.get)


# --------------------------------------------------------------------------- EASE


#: Extra random directions of the randomized SVD, and its power iterations.
OVERSAMPLE, POWER_ITERATIONS = 64, 3


def _eigen(x: sparse.csr_matrix, rank: int, seed: int = 42) -> tuple[np.ndarray, np.ndarray]:
    """The leading eigenvalues and eigenvectors of ``XᵀX``, largest first, at most
    ``rank`` of them (0: all). Exact (dense) when users or movies are few enough;
    otherwise a randomized SVD of ``X`` (Halko, Martinsson and Tropp, 2011: a random
    projection, power iterations, the SVD of the small projected matrix), whose cost
    is a few passes over the ratings at ``rank`` columns."""
    small = min(x.shape)
    if not rank or small <= rank + OVERSAMPLE:
        if x.shape[0] < x.shape[1]:  # XᵀX's eigenvectors from the smaller SVD of X
            _, singular, vt = np.linalg.svd(x.toarray(), full_matrices=False)
            values, vectors = singular ** 2, vt.T
        else:
            values, vectors = np.linalg.eigh((x.T @ x).toarray())
            order = np.argsort(values)[::-1]
            values, vectors = values[order], vectors[:, order]
        return values[:rank or None], vectors[:, :rank or None]
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(x @ rng.standard_normal((x.shape[1], rank + OVERSAMPLE)))
    for _ in range(POWER_ITERATIONS):
        basis, _ = np.linalg.qr(x.T @ basis)
        basis, _ = np.linalg.qr(x @ basis)
    _, singular, vt = np.linalg.svd(np.asarray((x.T @ basis).T), full_matrices=False)
    return singular[:rank] ** 2, vt[:rank].T


@functools.lru_cache(maxsize=2)
def _decomposition(x: _Hashed, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_eigen`, kept for the next EASE fit on the same ratings (a lambda grid
    needs one decomposition, not one per lambda)."""
    return _eigen(x.matrix, rank)


class _Hashed:
    """A ratings matrix, hashed by its contents for :func:`_decomposition`'s cache."""

    def __init__(self, matrix: sparse.csr_matrix) -> None:
        self.matrix = matrix
        digest = hashlib.sha256()
        for part in (matrix.indptr, matrix.indices, matrix.data):
            digest.update(np.ascontiguousarray(part).tobytes())
        self.key = f"{matrix.shape}:{digest.hexdigest()}"

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other) -> bool:
        return isinstance(other, _Hashed) and other.key == self.key


def fit_ease(ratings: pd.DataFrame, params: ModelParams, *,
             scale: tuple[float, float] = (0.5, 5.0),
             max_size: int = EASE_MAX_SIZE) -> Factors:
    """EASE on rating values as a factor model (see the module docstring).

    Raises:
        ValueError: more than ``max_size`` users and movies.
    """
    started = time.time()
    users, u = np.unique(ratings[USER].to_numpy(), return_inverse=True)
    movies, m = np.unique(ratings[ITEM].to_numpy(), return_inverse=True)
    if min(len(users), len(movies)) > max_size:
        raise ValueError(f"ease: {len(users):,} users and {len(movies):,} movies: more than "
                         f"{max_size:,} of both (every user's vector has as many numbers, "
                         "up to its rank)")
    x = sparse.csr_matrix((ratings[RATING].to_numpy(np.float64), (u, m)),
                          shape=(len(users), len(movies)))
    lam = params.reg_param
    values, vectors = _decomposition(_Hashed(x), params.rank)
    keep = values > values[0] * 1e-10
    values, vectors = values[keep], vectors[:, keep]
    # diag(P), P = (XᵀX + lambda I)⁻¹, with the dropped directions at eigenvalue 0
    mass = (vectors ** 2).sum(axis=1)
    p_diag = (vectors ** 2 / (values + lam)).sum(axis=1) + (1 - mass) / lam
    root = np.sqrt(values / (lam * (values + lam)))
    item_factors = vectors * root / p_diag[:, None]
    user_factors = np.asarray(x @ (vectors * root))
    log.info("ease: lambda %g, %d users, %d movies, %d directions, %.1f s", lam, len(users),
             len(movies), len(values), time.time() - started)
    return Factors(params=params, user_ids=users, user_factors=user_factors, item_ids=movies,
                   item_factors=item_factors, scale=scale, fold_weights=p_diag)
