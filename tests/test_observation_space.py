"""Observation-space diagnostics against the Kalman filter's exact innovation statistics.

On the linear-Gaussian model the exact filter's forecast gives ``d^b = y − H m^f`` with
covariance ``H P^f Hᵀ + R`` and its analysis ``d^a = y − H m^a``; the reduced χ² of the
innovations and Desroziers' ratio follow on the same observations. A consistent ensemble
filter matches both (about 1); one that assumes observation errors 3 times too large must
not (the negative control).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from filtrax.dynamics.linear_gaussian import random_linear_gaussian_model
from filtrax.experiments.config import load_config
from filtrax.experiments.factory import build_experiment
from filtrax.experiments.runner import run_experiment

CONFIG = str(Path(__file__).resolve().parents[1] / "configs/linear_gaussian/kalman_check.toml")
ENKF = ["filter.method=enkf", "run.cycles=40", "filter.particles=256"]
SCORED = slice(5, None)  # the configs' burn-in


@pytest.fixture(autouse=True)
def _no_persistent_cache(monkeypatch):
    monkeypatch.setenv("FILTRAX_CACHE_DIR", "")


def kalman_innovation_statistics(config) -> tuple[np.ndarray, np.ndarray]:
    """Per cycle: the reduced χ² and Desroziers' ratio of the exact filter."""
    experiment = build_experiment(config)
    m = config.model
    model = random_linear_gaussian_model(
        config.seed, m.state_dim, m.observed, observation_variance=m.observation_std**2
    )
    A, Q = np.asarray(model.transition_matrix, float), np.asarray(model.noise_covariance, float)
    H, r = np.asarray(model.observation_matrix, float), np.asarray(model.observation_variance)
    d = m.state_dim
    exact = model.kalman_filter(np.zeros(d), np.zeros((d, d)), experiment.observations)
    mean, covariance = np.zeros(d), np.zeros((d, d))  # the particles start as copies of 0
    chi2, desroziers = [], []
    for y, analysis_mean, analysis_covariance in zip(
        np.asarray(experiment.observations, float), exact.means, exact.covariances, strict=True
    ):
        forecast_mean, forecast_covariance = A @ mean, A @ covariance @ A.T + Q
        d_b, d_a = y - H @ forecast_mean, y - H @ analysis_mean
        chi2.append(np.mean(d_b**2 / (np.diag(H @ forecast_covariance @ H.T) + r)))
        desroziers.append(np.sum(d_a * d_b) / np.sum(r))
        mean, covariance = analysis_mean, analysis_covariance
    return np.array(chi2), np.array(desroziers)


def run_metrics(overrides, tmp_path) -> xr.Dataset:
    config = load_config(CONFIG, overrides)
    run_experiment(config, tmp_path / "run", quiet=True, report=False)
    return xr.open_dataset(tmp_path / "run" / "metrics.nc").load()


def test_the_enkf_matches_the_kalman_filters_innovation_statistics(tmp_path):
    config = load_config(CONFIG, ENKF)
    chi2, desroziers = kalman_innovation_statistics(config)
    metrics = run_metrics(ENKF, tmp_path)
    analysis = metrics.sel(ensemble="analysis", obs_variable="x").isel(cycle=SCORED)
    exact_chi2, exact_desroziers = chi2[SCORED].mean(), desroziers[SCORED].mean()
    assert 0.8 < exact_chi2 < 1.25 and 0.8 < exact_desroziers < 1.25  # the statistic itself
    assert float(analysis.chi2_reduced.mean()) == pytest.approx(exact_chi2, abs=0.08)
    assert float(analysis.desroziers_ratio.mean()) == pytest.approx(exact_desroziers, abs=0.08)
    # A free ensemble's background is itself: its O−B is its O−A.
    free = metrics.sel(ensemble="baseline")
    np.testing.assert_array_equal(free.omb_rms.values, free.oma_rms.values)
    # The analysis draws closer to the observations than the background, and has less spread.
    assert float(analysis.oma_rms.mean()) < float(analysis.omb_rms.mean())
    assert float(analysis.spread_analysis_obs.mean()) < float(analysis.spread_background_obs.mean())


def test_a_filter_that_distrusts_the_observations_fails_the_check(tmp_path):
    """Observation errors assumed 3 times too large (R × 9): Desroziers' ratio, against the
    assumed R, falls far below the exact filter's, and so does the χ²."""
    chi2, desroziers = kalman_innovation_statistics(load_config(CONFIG, ENKF))
    metrics = run_metrics([*ENKF, "filter.observation_error_inflation=3"], tmp_path)
    analysis = metrics.sel(ensemble="analysis", obs_variable="x").isel(cycle=SCORED)
    assert float(analysis.desroziers_ratio.mean()) < 0.6 * desroziers[SCORED].mean()
    assert float(analysis.chi2_reduced.mean()) < 0.6 * chi2[SCORED].mean()
