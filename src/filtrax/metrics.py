r"""Ensemble scores (NumPy, at the edges: they run on recorded analyses, not inside ``jit``).

For an ensemble ``x`` of shape ``(N, *space)`` and a truth ``t`` of shape ``(*space)``, with
spatial weights ``w`` averaging to 1 (cos-latitude on a sphere, WeatherBench-2 convention):

* skill: :math:`\mathrm{RMSE} = \sqrt{\overline{w(\bar x - t)^2}}`;
* spread: :math:`\sqrt{\overline{w\,s^2}}` with the unbiased ensemble variance :math:`s^2`;
* CRPS, the fair (unbiased) estimator
  :math:`\frac1N\sum_i|x_i-t| - \frac{1}{2N(N-1)}\sum_{i,j}|x_i-x_j|`, averaged with ``w``;
* the rank of the truth within the ensemble, for rank histograms.

References:
    Ferro (2014), "Fair scores for ensemble forecasts", QJRMS. Rasp et al. (2024),
    WeatherBench 2, JAMES. Fortin et al. (2014), spread-skill ratio, J. Hydrometeorol.
"""

from __future__ import annotations

import math

import numpy as np


def _weights(shape: tuple[int, ...], weights: np.ndarray | None) -> np.ndarray:
    if weights is None:
        return np.ones(shape)
    w = np.broadcast_to(np.asarray(weights, dtype=float), shape)
    return w / w.mean()


def rmse(ensemble: np.ndarray, truth: np.ndarray, weights: np.ndarray | None = None) -> float:
    """RMSE of the ensemble mean (``ensemble``: ``(N, *space)``)."""
    error = np.mean(ensemble, axis=0) - truth
    return float(np.sqrt(np.mean(_weights(truth.shape, weights) * error**2)))


def spread(ensemble: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Square root of the weighted mean unbiased ensemble variance."""
    if ensemble.shape[0] < 2:
        return 0.0
    variance = np.var(ensemble, axis=0, ddof=1)
    return float(np.sqrt(np.mean(_weights(variance.shape, weights) * variance)))


def crps(ensemble: np.ndarray, truth: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Fair CRPS averaged over space; O(N log N) per point via sorting."""
    n = ensemble.shape[0]
    skill = np.mean(np.abs(ensemble - truth[None]), axis=0)
    if n < 2:
        return float(np.mean(_weights(truth.shape, weights) * skill))
    ordered = np.sort(ensemble, axis=0)
    # Σ_{i,j} |x_i − x_j| = 2 Σ_k (2k − N + 1) x_(k) for sorted x (k = 0..N-1).
    coefficients = (2 * np.arange(n) - n + 1).reshape((n,) + (1,) * truth.ndim)
    pair_sum = 2.0 * np.sum(coefficients * ordered, axis=0)
    score = skill - pair_sum / (2.0 * n * (n - 1))
    return float(np.mean(_weights(truth.shape, weights) * score))


def truth_ranks(ensemble: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Rank of the truth among the N members at every point, in ``0..N`` (ties split)."""
    below = np.sum(ensemble < truth[None], axis=0)
    equal = np.sum(ensemble == truth[None], axis=0)
    return below + equal // 2


def rank_histogram(ranks: np.ndarray, num_members: int) -> np.ndarray:
    """Counts of each rank ``0..N``."""
    return np.bincount(np.asarray(ranks).ravel(), minlength=num_members + 1)


def effective_autocorrelation_time(series: np.ndarray, max_lag: int | None = None) -> float:
    """``1 + 2 Σ_k ρ_k`` summed until the first non-positive autocorrelation (Geyer 1992)."""
    x = np.asarray(series, dtype=float)
    x = x[np.isfinite(x)]
    n = x.size
    if n < 3 or np.var(x) == 0:
        return 1.0
    x = x - x.mean()
    max_lag = n // 2 if max_lag is None else min(max_lag, n - 1)
    tau = 1.0
    for lag in range(1, max_lag + 1):
        rho = float(np.dot(x[:-lag], x[lag:]) / np.dot(x, x))
        if rho <= 0:
            break
        tau += 2.0 * rho
    return tau


def time_mean_with_interval(series: np.ndarray, z: float = 1.96) -> tuple[float, float]:
    """Time mean and the half-width of its confidence interval, inflated for autocorrelation."""
    x = np.asarray(series, dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return float("nan"), float("nan")
    if x.size == 1:
        return float(x[0]), float("nan")
    effective_n = x.size / effective_autocorrelation_time(x)
    return float(x.mean()), float(z * x.std(ddof=1) / np.sqrt(effective_n))


def gaussian_crps(mean, std, truth) -> np.ndarray:
    r"""Closed-form CRPS of :math:`\mathcal N(m, s^2)` at ``truth``, pointwise.

    :math:`s\,[z(2\Phi(z) - 1) + 2\varphi(z) - 1/\sqrt\pi]` with :math:`z = (t - m)/s`
    (Gneiting et al. 2005, eq. 5); :math:`|t - m|` where :math:`s = 0`.
    """
    from jax.scipy.special import ndtr

    std = np.asarray(std, dtype=float)
    safe = np.where(std > 0, std, 1.0)
    z = (np.asarray(truth, dtype=float) - mean) / safe
    pdf = np.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
    cdf = np.asarray(ndtr(z))
    value = safe * (z * (2 * cdf - 1) + 2 * pdf - 1 / math.sqrt(math.pi))
    return np.where(std > 0, value, np.abs(np.asarray(truth, dtype=float) - mean))
