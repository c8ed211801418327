"""Block localisation of the particle filters' selection, ensemble inflation, and the EnKF's
Gaspari–Cohn covariance localisation.

The oracle: a linear-Gaussian model made of 16 independent 2-site systems, every site
observed. With blocks that match the independent systems, the block filters are exact
filters of each system, so at N = 256 they reproduce the Kalman filter; the global
bootstrap PF at the same N collapses (32 informative observations) and fails the same check.
Likewise a covariance localisation that keeps each system and cuts across systems removes
the spurious cross-system covariances of a small EnKF ensemble (N = 12 < 32 dimensions).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import filtrax as fx
from filtrax.experiments.config import ConfigError, load_config
from filtrax.filters.inflation import inflate

# --- the pieces -------------------------------------------------------------------------------


def test_site_blocks_tile_the_trailing_axes():
    blocks, count = fx.BlockLocalisation(4).site_blocks((10,))
    assert count == 3
    np.testing.assert_array_equal(blocks, [0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
    blocks, count = fx.BlockLocalisation((2, 3)).site_blocks((5, 4, 6))  # a channel axis first
    assert count == 4 and blocks.shape == (4, 6)
    np.testing.assert_array_equal(blocks[:, 0], [0, 0, 2, 2])
    np.testing.assert_array_equal(blocks[0], [0, 0, 0, 1, 1, 1])


@pytest.mark.parametrize(
    ("block_shape", "frame_shape", "message"),
    [
        ([0], (8,), "integers >= 1"),
        ([], (8,), "integers >= 1"),
        ([9], (8,), r"block_shape\[0\] = 9 exceeds"),
        ([2, 2], (8,), "has 2 axes but the frame has shape"),
    ],
)
def test_bad_block_shapes_are_refused(block_shape, frame_shape, message):
    with pytest.raises(ValueError, match=message):
        fx.BlockLocalisation(block_shape).site_blocks(frame_shape)


def test_observations_belong_to_the_block_of_their_site():
    localisation = fx.BlockLocalisation(4)
    model = fx.ObservationModel(fx.PointSelection((10,), [9, 0, 5, 4]), 1.0)
    blocks = localisation.observation_blocks(model, jnp.zeros(10))
    np.testing.assert_array_equal(blocks, [2, 0, 1, 1])
    # With a channel axis the site axes are the last ones: channel 1, site 7 is in block 1.
    model = fx.ObservationModel(fx.PointSelection((2, 10), [10 + 7, 2]), 1.0)
    blocks = localisation.observation_blocks(model, jnp.zeros((2, 10)))
    np.testing.assert_array_equal(blocks, [1, 0])


def test_stitch_takes_each_block_from_its_ancestor():
    n, sites = 3, 10
    localisation = fx.BlockLocalisation(4)
    site_blocks, _ = localisation.site_blocks((sites,))
    # Two frames per particle; value = 100·particle + 10·frame + site.
    values = (
        100 * np.arange(n)[:, None, None]
        + 10 * np.arange(2)[None, :, None]
        + np.arange(sites)[None, None, :]
    )
    particles = jnp.asarray(values, jnp.float32)
    ancestors = jnp.array([[2, 2, 0], [1, 0, 0], [0, 1, 2]])  # (block, particle)
    stitched = np.asarray(localisation.stitch(particles, ancestors, site_blocks))
    for i in range(n):
        for site in range(sites):
            source = int(ancestors[site_blocks[site], i])
            np.testing.assert_array_equal(
                stitched[i, :, site], np.asarray(particles[source, :, site])
            )
    with pytest.raises(ValueError, match="does not end with the frame's site axes"):
        localisation.stitch(jnp.zeros((n, sites, 2)), ancestors, site_blocks)
    # A per-particle scalar (a valid time, as in GenCastState) follows block 0's ancestor.
    times = jnp.array([10, 20, 30], jnp.int32)
    _, stitched_times = localisation.stitch((particles, times), ancestors, site_blocks)
    np.testing.assert_array_equal(stitched_times, [30, 30, 10])


def test_inflation_scales_anomalies_about_the_mean():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 2, 5)), jnp.float32)
    y = inflate(x, 1.5)
    mean_x, mean_y = x.mean(0, keepdims=True), y.mean(0, keepdims=True)
    np.testing.assert_allclose(mean_y, mean_x, atol=1e-6)
    np.testing.assert_allclose(y - mean_y, 1.5 * (x - mean_x), atol=1e-5)
    assert fx.FixedInflation(1.0).is_identity and not fx.FixedInflation(1.1).is_identity
    seconds = jnp.arange(8, dtype=jnp.int32)
    _, inflated_seconds = inflate((x, seconds), 1.5)
    assert inflated_seconds.dtype == jnp.int32
    np.testing.assert_array_equal(inflated_seconds, seconds)


def test_innovation_inflation_solves_the_innovation_identity():
    """λ² = (dᵀd − Σr) / Σ var ŷ, clipped; NaN (unobserved) entries are left out."""
    rng = np.random.default_rng(1)
    predictions = jnp.asarray(rng.normal(size=(16, 5)), jnp.float32)
    model = fx.ObservationModel(fx.PointSelection((5,), np.arange(5)), 0.5)
    y = jnp.asarray(np.asarray(predictions.mean(0)) + np.array([2.0, -1.0, 1.5, np.nan, 0.5]))
    seen = np.isfinite(np.asarray(y))
    d = (np.asarray(y) - np.asarray(predictions.mean(0)))[seen]
    var = np.var(np.asarray(predictions), axis=0, ddof=1)[seen]
    expected = np.sqrt((d @ d - 0.5 * seen.sum()) / var.sum())
    inflation = fx.InnovationInflation(1.0, 10.0)
    assert float(inflation.factor(predictions, y, model)) == pytest.approx(expected, rel=1e-5)
    assert float(fx.InnovationInflation(1.0, 1.1).factor(predictions, y, model)) == pytest.approx(
        1.1
    )
    # An ensemble that already covers the innovation is not deflated below the floor.
    assert float(inflation.factor(predictions, predictions.mean(0), model)) == 1.0
    with pytest.raises(ValueError, match=r"maximum = 1.0 is below minimum = 1.5"):
        fx.InnovationInflation(1.5, 1.0)


def test_moment_matched_weights_cannot_be_localised():
    model = fx.random_linear_gaussian_model(seed=0, state_dim=4)
    proposal = fx.EmulatorProposal(
        model.emulator(),
        fx.HeunSampler(fx.karras_noise_levels(80.0, 0.01, 7.0, 4)),
        fx.MMPSGuidance(2),
    )
    with pytest.raises(ValueError, match="localisation needs DiracPredictiveWeight"):
        fx.AuxiliaryParticleFilter(
            proposal, fx.MomentMatchedPredictiveWeight(), localisation=fx.BlockLocalisation(2)
        )
    with pytest.raises(ValueError, match="inflation needs DiracPredictiveWeight"):
        fx.AuxiliaryParticleFilter(
            proposal, fx.MomentMatchedPredictiveWeight(), inflation=fx.InnovationInflation()
        )
    with pytest.raises(ValueError, match="must be a finite number >= 1"):
        fx.FixedInflation(0.9)


def test_config_checks_the_block_and_the_weights(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[model]\nname = "lorenz96"\n')
    with pytest.raises(ConfigError, match=r"filter.localisation_block = \[0\] is invalid"):
        load_config(path, ["filter.localisation_block=[0]"])
    with pytest.raises(ConfigError, match=r"cannot be combined with localisation or inflation"):
        load_config(path, ["filter.localisation_block=[4]", "filter.weights=moment_matched"])
    with pytest.raises(ConfigError, match=r"adaptive_inflation = true applies to the filters"):
        load_config(path, ["filter.method=free", "filter.adaptive_inflation=true"])


# --- the oracle: independent 2-site systems ---------------------------------------------------

NUM_SYSTEMS = 16
STATE_DIM = 2 * NUM_SYSTEMS
NUM_CYCLES = 15
NUM_PARTICLES = 256
Q_VAR, R_VAR = 0.5, 0.1


@pytest.fixture(scope="module")
def independent_systems():
    rng = np.random.default_rng(3)
    A = np.zeros((STATE_DIM, STATE_DIM))
    for b in range(NUM_SYSTEMS):
        angle = rng.uniform(0, np.pi)
        rotation = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
        A[2 * b : 2 * b + 2, 2 * b : 2 * b + 2] = 0.9 * np.asarray(rotation)
    model = fx.LinearGaussianModel(
        jnp.asarray(A, jnp.float32),
        jnp.asarray(Q_VAR * np.eye(STATE_DIM), jnp.float32),
        jnp.eye(STATE_DIM, dtype=jnp.float32),
        jnp.full((STATE_DIM,), R_VAR, jnp.float32),
    )
    _, observations = model.simulate(jax.random.key(1), jnp.zeros(STATE_DIM), NUM_CYCLES)
    kalman = model.kalman_filter(
        np.zeros(STATE_DIM), np.zeros((STATE_DIM, STATE_DIM)), np.asarray(observations)
    )
    return model, observations, kalman


def _error_against_kalman(independent_systems, filter_, num_particles=NUM_PARTICLES):
    model, observations, kalman = independent_systems
    result = fx.assimilate(
        filter_,
        jnp.zeros((num_particles, STATE_DIM)),
        observations,
        model.observation_model(),
        key=jax.random.key(2),
    )
    kalman_var = np.einsum("kii->ki", kalman.covariances)
    mean_error = np.abs(np.asarray(result.analysis_mean) - kalman.means) / np.sqrt(kalman_var)
    variance_ratio = np.var(np.asarray(result.analysis), axis=1, ddof=1).mean(1) / kalman_var.mean(
        1
    )
    return float(mean_error.mean()), variance_ratio


def _check_localised_or_control(
    independent_systems,
    filter_,
    localised,
    mean_bound,
    variance_bound,
    control_bound,
    num_particles=NUM_PARTICLES,
):
    """The localised filter is within the bounds of the Kalman filter; the global control
    (same N) is off by more than ``control_bound`` Kalman standard deviations."""
    mean_error, variance_ratio = _error_against_kalman(independent_systems, filter_, num_particles)
    if localised:
        assert mean_error < mean_bound, (
            f"time-averaged |mean − KF mean| / KF std = {mean_error:.3f}"
        )
        assert np.all(np.abs(variance_ratio - 1) < variance_bound), (
            f"variance ratios {variance_ratio}"
        )
    else:
        assert mean_error > control_bound, f"the global control should be off: {mean_error:.3f}"


def _sampler():
    return fx.HeunSampler(fx.karras_noise_levels(200.0, 0.002, 7.0, 24))


@pytest.mark.parametrize("localised", [True, False], ids=["blocks", "global-control"])
def test_block_bootstrap_pf_matches_kalman_and_the_global_one_does_not(
    independent_systems, localised
):
    model = independent_systems[0]
    filter_ = fx.BootstrapParticleFilter(
        fx.EmulatorProposal(model.emulator(), _sampler()),
        localisation=fx.BlockLocalisation(2) if localised else None,
    )
    # Measured: 0.14 with blocks (Monte Carlo error of a 2-D bootstrap PF at N = 256), 2.85
    # without (the global weights collapse on 32 observations).
    _check_localised_or_control(independent_systems, filter_, localised, 0.2, 0.2, 0.5)


def test_block_fa_apf_with_exact_tempering_matches_kalman(independent_systems):
    """Q = qI, R = rI, H = I: Dirac weights tempered by r/(r + q) are exact per block."""
    model = independent_systems[0]
    filter_ = fx.AuxiliaryParticleFilter(
        fx.EmulatorProposal(model.emulator(), _sampler(), fx.MMPSGuidance(2)),
        fx.DiracPredictiveWeight(sigma_max=1e6),
        fx.FixedTempering(R_VAR / (R_VAR + Q_VAR)),
        localisation=fx.BlockLocalisation(2),
    )
    mean_error, variance_ratio = _error_against_kalman(independent_systems, filter_)
    # Measured: 0.053, variance ratios 1.07–1.14 (the 24-level sampler's discretisation).
    assert mean_error < 0.1, f"time-averaged |mean − KF mean| / KF std = {mean_error:.3f}"
    assert np.all(np.abs(variance_ratio - 1) < 0.2), f"variance ratios {variance_ratio}"


@pytest.mark.parametrize("method", ["fa_apf", "bootstrap"])
def test_config_builds_block_local_inflated_filters(tmp_path, method):
    from filtrax.experiments.factory import build_filter

    path = tmp_path / "c.toml"
    path.write_text('[model]\nname = "lorenz96"\n')
    overrides = [
        f"filter.method={method}",
        "filter.localisation_block=[2]",
        "filter.adaptive_inflation=true",
        "filter.inflation=1.1",
        "filter.inflation_max=1.5",
    ]
    emulator = fx.random_linear_gaussian_model(seed=0, state_dim=4).emulator()
    filter_ = build_filter(load_config(path, overrides), emulator, method)
    assert filter_.localisation == fx.BlockLocalisation(2)
    assert filter_.inflation == fx.InnovationInflation(1.1, 1.5)
    plain = build_filter(load_config(path, [f"filter.method={method}"]), emulator, method)
    assert plain.localisation is None and plain.inflation.is_identity


# --- covariance localisation of the EnKF ------------------------------------------------------


def test_gaspari_cohn_function():
    from filtrax.filters.covariance_localisation import gaspari_cohn

    c = 2.5
    values = np.asarray(gaspari_cohn(jnp.asarray([0.0, c, 2 * c, 3 * c, -c]), c))
    np.testing.assert_allclose(values, [1.0, 5 / 24, 0.0, 0.0, 5 / 24], atol=1e-6)
    d = jnp.linspace(0.0, 2.2 * c, 2001)
    rho = np.asarray(gaspari_cohn(d, c))
    assert np.all(np.diff(rho) <= 1e-7) and np.all(rho >= -1e-7)  # monotone, non-negative
    assert np.max(np.abs(np.diff(rho))) < 2e-3  # continuous (no jump at c or 2c)


def test_sphere_localisation_places_point_observations_at_their_sites():
    latitudes, longitudes = [-45.0, 0.0, 45.0], [0.0, 90.0, 180.0, 270.0]
    localisation = fx.GaspariCohnLocalisation.on_sphere(latitudes, longitudes, 2000.0)
    frame = jnp.zeros((2, 3, 4))  # (channel, lat, lon)
    # channel 1 at (0°, 90°), channel 0 at (45°, 270°) and at (0°, 90°).
    indices = [12 + 1 * 4 + 1, 2 * 4 + 3, 1 * 4 + 1]
    model = fx.ObservationModel(fx.PointSelection((2, 3, 4), indices), 1.0)
    where = np.asarray(localisation.observation_coordinates(model, frame))
    sites = np.asarray(localisation.coordinates)
    np.testing.assert_allclose(where, sites[[1, 2, 1], [1, 3, 1]], rtol=1e-5, atol=1e-2)
    rho_xy, rho_yy = localisation.factors(model, frame)
    assert rho_xy.shape == (24, 3) and rho_yy.shape == (3, 3)
    np.testing.assert_allclose(np.asarray(rho_yy)[0, 2], 1.0, rtol=1e-6)  # the same column
    assert float(rho_yy[0, 1]) == 0.0  # 90° apart: 10 000 km > 2c
    # Both channels of an observed column get the full gain; 90° of longitude away, none.
    rho = np.asarray(rho_xy).reshape(2, 3, 4, 3)[:, :, :, 0]
    np.testing.assert_allclose(rho[:, 1, 1], 1.0, rtol=1e-6)
    assert np.all(rho[:, 1, 0] == 0.0)
    with pytest.raises(ValueError, match=r"frame has shape \(2, 4, 3\), which does not end"):
        localisation.factors(model, jnp.zeros((2, 4, 3)))
    with pytest.raises(ValueError, match=r"half_width = 0.0; expected a positive distance"):
        fx.GaspariCohnLocalisation.on_sphere(latitudes, longitudes, 0.0)


@pytest.mark.parametrize("localised", [True, False], ids=["localised", "global-control"])
@pytest.mark.parametrize(
    "kalman_filter",
    [fx.EnsembleKalmanFilter, fx.LocalEnsembleTransformKalmanFilter],
    ids=["enkf", "letkf"],
)
def test_localised_enkf_matches_kalman_and_the_global_one_does_not(
    independent_systems, localised, kalman_filter
):
    """System b's two sites sit at coordinate 10·b: a half-width of 1 keeps each system whole
    and cuts every cross-system covariance (EnKF) or every other system's observation
    (LETKF)."""
    model = independent_systems[0]
    coordinates = jnp.asarray(10.0 * np.repeat(np.arange(NUM_SYSTEMS), 2)[:, None], jnp.float32)
    filter_ = kalman_filter(
        fx.EmulatorProposal(model.emulator(), _sampler()),
        localisation=fx.GaspariCohnLocalisation(coordinates, 1.0) if localised else None,
    )
    # Measured, EnKF: 0.31 localised (the sampling error of 12 members), variance ratios
    # 0.80–1.13; 2.43 global, variance ratios 0.25–0.44 (12 members for 32 dimensions).
    # LETKF: 0.20 localised, variance ratios 0.95–0.99; 2.50 global, 0.36–0.38.
    _check_localised_or_control(independent_systems, filter_, localised, 0.45, 0.3, 1.0, 12)


def test_config_builds_the_enkf_localisation_for_grids_and_rings(tmp_path):
    from filtrax.emulators.atmosphere import bundled_emulator
    from filtrax.experiments.factory import (
        build_covariance_localisation,
        build_filter,
        load_lorenz96_emulator,
    )

    path = tmp_path / "c.toml"
    path.write_text('[model]\nname = "lorenz96"\n')
    with pytest.raises(
        ConfigError,
        match=r"localisation_half_width = 500.0 applies to enkf, letkf and fa_apf with "
        r"a filter.hybrid other than 'none', not filter.method = 'fa_apf' with filter.hybrid = "
        r"'none'",
    ):
        load_config(path, ["filter.localisation_half_width=500"])
    config = load_config(path, ["filter.method=enkf", "filter.localisation_half_width=3"])
    emulator = load_lorenz96_emulator(config)
    ring = build_filter(config, emulator, "enkf").localisation
    assert ring.site_shape == (emulator.num_sites,) and ring.half_width == 3.0
    sphere = build_covariance_localisation(config, bundled_emulator("hs_t21_16x32"))
    assert sphere.site_shape == (16, 32)
    np.testing.assert_allclose(np.linalg.norm(sphere.coordinates, axis=-1), 6371.0, rtol=1e-5)
    plain = fx.random_linear_gaussian_model(seed=0, state_dim=4).emulator()
    with pytest.raises(ConfigError, match=r"needs a latitude-longitude grid or the Lorenz-96"):
        build_covariance_localisation(config, plain)
    global_config = load_config(path, ["filter.method=enkf"])
    assert build_covariance_localisation(global_config, plain) is None
    letkf_config = load_config(
        path,
        ["filter.method=letkf", "filter.localisation_half_width=3", "filter.relaxation=0.5"],
    )
    letkf = build_filter(letkf_config, emulator, "letkf")
    assert isinstance(letkf, fx.LocalEnsembleTransformKalmanFilter)
    assert letkf.relaxation == 0.5 and letkf.localisation.half_width == 3.0
    with pytest.raises(ConfigError, match=r"filter.relaxation = 0.5 applies to letkf, not"):
        load_config(path, ["filter.method=enkf", "filter.relaxation=0.5"])
    with pytest.raises(ConfigError, match=r"filter.relaxation = 1.5"):
        load_config(path, ["filter.method=letkf", "filter.relaxation=1.5"])
    with pytest.raises(ValueError, match=r"relaxation = -0.1; expected a value in \[0, 1\]"):
        fx.LocalEnsembleTransformKalmanFilter(letkf.proposal, relaxation=-0.1)
    with pytest.raises(
        ValueError, match=r"LocalEnsembleTransformKalmanFilter.inflation: .* >= 1, got 0.9"
    ):
        fx.LocalEnsembleTransformKalmanFilter(letkf.proposal, inflation=0.9)
