"""Oracles for the Karras noise grid, the EDM preconditioning and the Gaussian denoiser."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from filtrax.diffusion.denoisers import (
    AbstractDenoiser,
    EDMPreconditionedDenoiser,
    GaussianDenoiser,
)
from filtrax.diffusion.noise_levels import karras_noise_levels


def _random_spd(d: int, seed: int, jitter: float = 0.1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    L = rng.normal(size=(d, d))
    return L @ L.T / d + jitter * np.eye(d)


# --- noise levels ------------------------------------------------------------------------------


@pytest.mark.x64
@pytest.mark.parametrize(
    ("sigma_max", "sigma_min", "rho", "n"),
    [(80.0, 0.03, 7.0, 20), (88.0, 2e-5, 6.0, 32), (1.0, 0.5, 1.0, 2), (10.0, 0.1, 0.5, 7)],
)
def test_karras_levels_match_the_formula(sigma_max, sigma_min, rho, n):
    levels = np.asarray(karras_noise_levels(sigma_max, sigma_min, rho, n))
    assert levels.shape == (n + 1,)
    assert levels.dtype == np.float64
    i = np.arange(n)
    top, bottom = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    expected = (top + i / (n - 1) * (bottom - top)) ** rho
    np.testing.assert_allclose(levels[:-1], expected, rtol=1e-12)
    assert levels[0] == pytest.approx(sigma_max, rel=1e-12)
    assert levels[-2] == pytest.approx(sigma_min, rel=1e-12)
    assert levels[-1] == 0.0
    assert np.all(np.diff(levels) < 0)


def test_karras_levels_rho_one_is_linear_and_dtype_is_honoured():
    levels = karras_noise_levels(5.0, 1.0, 1.0, 5, dtype=jnp.float32)
    assert levels.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(levels), [5.0, 4.0, 3.0, 2.0, 1.0, 0.0], rtol=1e-6)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((1.0, 2.0, 7.0, 10), "sigma_min < sigma_max"),
        ((1.0, 1.0, 7.0, 10), "sigma_min < sigma_max"),
        ((1.0, 0.0, 7.0, 10), "sigma_min < sigma_max"),
        ((1.0, -0.1, 7.0, 10), "sigma_min < sigma_max"),
        ((80.0, 0.03, 0.0, 10), "rho"),
        ((80.0, 0.03, -7.0, 10), "rho"),
        ((80.0, 0.03, 7.0, 1), "num_levels"),
        ((80.0, 0.03, 7.0, 0), "num_levels"),
        ((80.0, 0.03, 7.0, 2.5), "num_levels"),
        ((math.inf, 0.03, 7.0, 10), "finite"),
        ((80.0, math.nan, 7.0, 10), "finite"),
    ],
)
@pytest.mark.bad_input
def test_karras_levels_reject_bad_parameters(args, match):
    with pytest.raises(ValueError, match=match):
        karras_noise_levels(*args)


# --- EDM preconditioning -----------------------------------------------------------------------


def test_abstract_denoiser_cannot_be_instantiated():
    with pytest.raises(TypeError):
        AbstractDenoiser()  # type: ignore[abstract]


@pytest.mark.x64
@pytest.mark.parametrize("sigma_data", [1.0, 0.5, 2.0])
@pytest.mark.parametrize("sigma", [1e-3, 0.7, 3.0, 80.0])
def test_edm_preconditioning_matches_hand_computation(sigma, sigma_data):
    seen: dict[str, np.ndarray] = {}
    W = np.array([[0.3, -1.2, 0.5], [0.0, 0.7, 2.0], [1.1, 0.4, -0.6]])

    def network(x_scaled, c_noise, cond):
        seen["x_scaled"], seen["c_noise"], seen["cond"] = x_scaled, c_noise, cond
        return jnp.tanh(jnp.asarray(W) @ x_scaled) + c_noise * cond["bias"]

    denoiser = EDMPreconditionedDenoiser(network, sigma_data=sigma_data)
    x = np.array([2.0, -1.0, 0.25])
    bias = np.array([0.1, -0.2, 0.3])
    out = np.asarray(denoiser(jnp.asarray(x), jnp.asarray(sigma), {"bias": jnp.asarray(bias)}))

    total = sigma**2 + sigma_data**2
    c_skip = sigma_data**2 / total
    c_out = sigma * sigma_data / math.sqrt(total)
    c_in = 1.0 / math.sqrt(total)
    c_noise = math.log(sigma) / 4.0
    np.testing.assert_allclose(np.asarray(seen["x_scaled"]), c_in * x, rtol=1e-13)
    assert float(seen["c_noise"]) == pytest.approx(c_noise, rel=1e-13)
    np.testing.assert_array_equal(np.asarray(seen["cond"]["bias"]), bias)
    expected = c_skip * x + c_out * (np.tanh(W @ (c_in * x)) + c_noise * bias)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.x64
def test_edm_preconditioning_limits():
    """σ → 0: D → x (skip connection only); σ → ∞: D → σ_d · F (output only)."""
    x = jnp.asarray([1.5, -0.5])
    denoiser = EDMPreconditionedDenoiser(lambda u, c, cond: jnp.full_like(u, 7.0), sigma_data=0.5)
    np.testing.assert_allclose(denoiser(x, jnp.asarray(1e-12), None), x, rtol=1e-10)
    np.testing.assert_allclose(denoiser(x, jnp.asarray(1e12), None), [3.5, 3.5], rtol=1e-10)


@pytest.mark.x64
def test_per_channel_sigma_data_makes_a_mean_only_network_the_gaussian_denoiser():
    """A network that ignores its noisy input and returns the (scaled) conditional mean μ gives
    ``c_skip x + (1 - c_skip) μ``; with per-channel σ_data that is exactly the denoiser of
    N(μ, diag σ_data²) (the analytic Gaussian denoiser). With GenCast's σ_data = 1 the same
    kind of network lets through noise of the marginal spread: the control must differ."""
    sigma_data = np.array([0.3, 0.5, 1.2])
    mean = np.array([[0.4, -1.0], [2.0, 0.1], [-0.3, 0.7]])  # (channel, site)

    def mean_only(sd):
        def network(x_scaled, c_noise, cond):
            sigma = jnp.exp(4.0 * c_noise)  # c_noise = log(σ)/4
            scale = jnp.asarray(sd).reshape(-1, 1)
            return cond * sigma / (scale * jnp.sqrt(sigma**2 + scale**2))

        return network

    per_channel = EDMPreconditionedDenoiser(mean_only(sigma_data), sigma_data=tuple(sigma_data))
    oracle = GaussianDenoiser(np.diag(np.repeat(sigma_data**2, 2)))
    control = EDMPreconditionedDenoiser(mean_only(np.ones(3)), sigma_data=1.0)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(3, 2)))
    for sigma in (0.05, 0.4, 1.0, 3.0, 30.0):
        s = jnp.asarray(sigma)
        expected = np.asarray(oracle(x, s, jnp.asarray(mean)))
        np.testing.assert_allclose(
            np.asarray(per_channel(x, s, jnp.asarray(mean))), expected, rtol=1e-12, atol=1e-12
        )
        if sigma > 10:  # both denoisers return the mean when the noise swamps the data
            continue
        gap = np.abs(np.asarray(control(x, s, jnp.asarray(mean))) - expected).max()
        assert gap > 1e-2, f"σ = {sigma}: σ_data = 1 should not give the N(μ, diag σ_d²) denoiser"


@pytest.mark.x64
def test_per_channel_sigma_data_equals_the_scalar_preconditioning_channel_by_channel():
    sigma_data = (0.4, 2.0)

    def network(x_scaled, c_noise, cond):  # elementwise, so channels do not mix
        return jnp.tanh(1.3 * x_scaled) + c_noise * cond

    x = jnp.asarray([[1.5, -0.2, 0.3], [0.7, 2.5, -1.0]])
    cond = jnp.asarray([[0.1, 0.2, 0.3], [-0.4, 0.5, 0.6]])
    together = EDMPreconditionedDenoiser(network, sigma_data=list(sigma_data))
    assert together.sigma_data == sigma_data  # converted to a hashable tuple
    for sigma in (0.01, 0.8, 20.0):
        s = jnp.asarray(sigma)
        out = np.asarray(together(x, s, cond))
        for c, sd in enumerate(sigma_data):
            alone = EDMPreconditionedDenoiser(network, sigma_data=sd)
            np.testing.assert_allclose(out[c], np.asarray(alone(x, s, cond))[c], rtol=1e-13)


def test_sigma_data_errors_name_the_value_and_the_expected_shape():
    network = lambda u, c, cond: u  # noqa: E731
    for bad in (0.0, -1.0, (), (0.5, float("nan"))):
        with pytest.raises(ValueError, match=r"sigma_data is .*expected a positive number"):
            EDMPreconditionedDenoiser(network, sigma_data=bad)
    denoiser = EDMPreconditionedDenoiser(network, sigma_data=(0.5, 0.6, 0.7))
    with pytest.raises(ValueError, match=r"3 per-channel values, but the state has shape \(2, 4\)"):
        denoiser(jnp.ones((2, 4)), jnp.asarray(1.0), None)


def test_edm_loss_weight_is_gencasts_at_unit_sigma_data():
    from filtrax.training.engine import loss_weight

    sigma = np.array([0.02, 0.5, 3.0, 88.0])
    np.testing.assert_allclose(loss_weight(sigma), (sigma**2 + 1) / sigma**2, rtol=1e-14)
    np.testing.assert_allclose(
        loss_weight(sigma, 0.4), (sigma**2 + 0.16) / (0.16 * sigma**2), rtol=1e-14
    )


def test_edm_preconditioning_keeps_float32_and_jits():
    denoiser = EDMPreconditionedDenoiser(lambda u, c, cond: u * c, sigma_data=1.0)
    x = jnp.ones((2, 3), jnp.float32)
    out = jax.jit(lambda x, s: denoiser(x, s, None))(x, jnp.asarray(2.0, jnp.float32))
    assert out.dtype == jnp.float32 and out.shape == (2, 3)
    sigma = 2.0
    expected = 1 / (sigma**2 + 1) + sigma / math.sqrt(sigma**2 + 1) * (
        1 / math.sqrt(sigma**2 + 1) * math.log(sigma) / 4
    )
    np.testing.assert_allclose(np.asarray(out), np.full((2, 3), expected), rtol=1e-6)


# --- Gaussian denoiser -------------------------------------------------------------------------


@pytest.mark.x64
@pytest.mark.parametrize("sigma", [1e-3, 0.3, 1.0, 10.0, 500.0])
def test_gaussian_denoiser_matches_closed_form(sigma):
    d = 6
    Q = _random_spd(d, seed=3)
    rng = np.random.default_rng(4)
    mu, x = rng.normal(size=d), rng.normal(size=d) * 3
    denoiser = GaussianDenoiser(jnp.asarray(Q))
    out = np.asarray(denoiser(jnp.asarray(x), jnp.asarray(sigma), jnp.asarray(mu)))
    expected = mu + Q @ np.linalg.solve(Q + sigma**2 * np.eye(d), x - mu)
    np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.asarray(denoiser.covariance), Q, rtol=1e-12, atol=1e-13)


@pytest.mark.x64
def test_gaussian_denoiser_flattens_states_in_c_order():
    Q = _random_spd(6, seed=5)
    rng = np.random.default_rng(6)
    mu, x = rng.normal(size=(2, 3)), rng.normal(size=(2, 3))
    denoiser = GaussianDenoiser(jnp.asarray(Q))
    out = np.asarray(denoiser(jnp.asarray(x), jnp.asarray(0.8), jnp.asarray(mu)))
    flat = mu.ravel() + Q @ np.linalg.solve(Q + 0.64 * np.eye(6), (x - mu).ravel())
    assert out.shape == (2, 3)
    np.testing.assert_allclose(out, flat.reshape(2, 3), rtol=1e-10, atol=1e-12)


def test_gaussian_denoiser_keeps_the_state_dtype():
    denoiser = GaussianDenoiser(jnp.asarray(_random_spd(4, seed=7), jnp.float32))
    out = jax.jit(lambda x, s, c: denoiser(x, s, c))(
        jnp.ones(4, jnp.float32), jnp.asarray(1.0, jnp.float32), jnp.zeros(4, jnp.float32)
    )
    assert out.dtype == jnp.float32


@pytest.mark.x64
@pytest.mark.parametrize("sigma", [0.05, 0.5, 2.0, 40.0])
def test_tweedie_covariance_is_sigma_squared_jacobian(sigma):
    d = 5
    Q = _random_spd(d, seed=8)
    denoiser = GaussianDenoiser(jnp.asarray(Q))
    mu = jnp.asarray(np.random.default_rng(9).normal(size=d))
    x0 = jnp.asarray(np.random.default_rng(10).normal(size=d))
    jac = np.asarray(jax.jacfwd(lambda x: denoiser(x, jnp.asarray(sigma), mu))(x0))
    tweedie = np.asarray(denoiser.tweedie_covariance(jnp.asarray(sigma)))
    exact = np.linalg.inv(np.linalg.inv(Q) + np.eye(d) / sigma**2)
    scale = np.abs(exact).max()
    np.testing.assert_allclose(sigma**2 * jac, tweedie, rtol=1e-9, atol=1e-12 * scale)
    np.testing.assert_allclose(tweedie, exact, rtol=1e-9, atol=1e-12 * scale)
    # Symmetric positive definite, and bounded by both Q and σ² I.
    np.testing.assert_allclose(tweedie, tweedie.T, atol=1e-14 * scale)
    assert np.linalg.eigvalsh(tweedie).min() > 0
    assert np.linalg.eigvalsh(Q - tweedie).min() > -1e-12
    assert np.linalg.eigvalsh(sigma**2 * np.eye(d) - tweedie).min() > -1e-12


@pytest.mark.x64
def test_tweedie_covariance_tends_to_the_prior_at_large_sigma():
    Q = _random_spd(4, seed=11)
    denoiser = GaussianDenoiser(jnp.asarray(Q))
    errors = []
    for sigma in (1e2, 1e3, 1e4):
        tweedie = np.asarray(denoiser.tweedie_covariance(jnp.asarray(sigma)))
        errors.append(np.abs(tweedie - Q).max() / np.abs(Q).max())
    # V = Q − Q²/σ² + O(σ⁻⁴): the error decays like σ⁻².
    assert errors[-1] < 1e-7
    assert errors[0] / errors[1] == pytest.approx(100.0, rel=1e-2)
    # At small σ the posterior covariance is σ² I (the prior is irrelevant).
    small = np.asarray(denoiser.tweedie_covariance(jnp.asarray(1e-4)))
    np.testing.assert_allclose(small, 1e-8 * np.eye(4), rtol=1e-5, atol=1e-14)


@pytest.mark.x64
def test_gaussian_denoiser_psd_clipping_of_a_singular_covariance():
    """A rank-deficient Q: directions with zero prior variance are pinned at the mean."""
    u = np.array([1.0, 2.0, -1.0]) / math.sqrt(6)
    Q = 2.0 * np.outer(u, u)
    denoiser = GaussianDenoiser(jnp.asarray(Q))
    assert np.asarray(denoiser.eigenvalues).min() >= 0
    x = jnp.asarray([3.0, -1.0, 0.5])
    out = np.asarray(denoiser(x, jnp.asarray(0.5), jnp.zeros(3)))
    expected = u * (2.0 / (2.0 + 0.25)) * (u @ np.asarray(x))
    np.testing.assert_allclose(out, expected, atol=1e-12)


@pytest.mark.parametrize("shape", [(3, 4), (4,), (2, 2, 2)])
@pytest.mark.bad_input
def test_gaussian_denoiser_rejects_a_non_square_covariance(shape):
    with pytest.raises(ValueError, match="must be square"):
        GaussianDenoiser(jnp.zeros(shape))


@pytest.mark.bad_input
def test_gaussian_denoiser_rejects_mismatched_cond_and_state():
    denoiser = GaussianDenoiser(jnp.eye(4))
    with pytest.raises(ValueError, match="cond"):
        denoiser(jnp.zeros(4), jnp.asarray(1.0), jnp.zeros(3))
    with pytest.raises(ValueError, match="cond"):
        denoiser(jnp.zeros(4), jnp.asarray(1.0), jnp.zeros((2, 2)))
    with pytest.raises(ValueError, match="entries"):
        denoiser(jnp.zeros(5), jnp.asarray(1.0), jnp.zeros(5))
