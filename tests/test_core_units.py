"""Unit oracles for resampling, tempering, Krylov solvers, samplers and the denoisers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import filtrax as fx
from filtrax.guidance.linear_solvers import bicgstab, conjugate_gradient, gmres

# --- resampling ------------------------------------------------------------------------------

SCHEMES = {
    "systematic": fx.systematic,
    "stratified": fx.stratified,
    "residual": fx.residual,
    "multinomial": fx.multinomial,
}


def _offspring_check(scheme, log_weights, num_keys=20_000):
    """z-scores of the mean offspring counts against N·w over many independent keys."""
    n = log_weights.shape[0]
    keys = jax.random.split(jax.random.key(0), num_keys)
    ancestors = jax.jit(jax.vmap(lambda k: scheme(k, log_weights, n)))(keys)
    counts = np.asarray(jax.vmap(lambda a: jnp.bincount(a, length=n))(ancestors), float)
    expected = n * np.asarray(jax.nn.softmax(log_weights))
    stderr = counts.std(axis=0, ddof=1) / np.sqrt(num_keys)
    # Deterministic counts (zero variance) must be exact.
    exact = stderr < 1e-12
    z = np.abs(counts.mean(axis=0) - expected)[~exact] / stderr[~exact]
    return z, np.abs(counts.mean(axis=0) - expected)[exact]


@pytest.mark.parametrize("name", sorted(SCHEMES))
def test_resampling_is_unbiased(name):
    log_weights = jnp.log(jnp.asarray([0.31, 0.02, 0.17, 0.005, 0.095, 0.4, 0.0, 0.0]) + 1e-30)
    z, exact_error = _offspring_check(SCHEMES[name], log_weights)
    assert z.max() < 5.0, f"{name}: max z-score {z.max():.2f}"
    assert np.all(exact_error < 1e-6)


def test_unbiasedness_check_detects_a_biased_scheme():
    """Control: systematic resampling with its uniform frozen at the top of [0, 1/N) is
    deterministic and biased; the same check must reject it."""

    def frozen_systematic(key, log_weights, num):
        positions = (0.999 + jnp.arange(num, dtype=log_weights.dtype)) / num
        cdf = jnp.cumsum(jax.nn.softmax(log_weights))
        return jnp.minimum(jnp.searchsorted(cdf, positions, side="right"), num - 1)

    log_weights = jnp.log(jnp.asarray([0.31, 0.02, 0.17, 0.005, 0.095, 0.4]))
    z, exact_error = _offspring_check(frozen_systematic, log_weights, num_keys=200)
    assert z.size == 0 or z.max() > 5.0
    assert exact_error.max() > 0.1


@pytest.mark.parametrize("name", sorted(SCHEMES))
def test_resampling_output_and_degenerate_weights(name):
    scheme = SCHEMES[name]
    log_weights = jnp.asarray([-jnp.inf, 0.0, -jnp.inf, -jnp.inf])
    ancestors = np.asarray(scheme(jax.random.key(1), log_weights, 4))
    assert ancestors.dtype == np.int32 and ancestors.shape == (4,)
    np.testing.assert_array_equal(ancestors, 1)


def test_systematic_on_equal_weights_is_the_identity():
    ancestors = fx.systematic(jax.random.key(3), jnp.zeros(16), 16)
    np.testing.assert_array_equal(ancestors, np.arange(16))


def test_effective_sample_size():
    assert float(fx.effective_sample_size(jnp.zeros(10))) == pytest.approx(10.0)
    w = np.array([0.5, 0.25, 0.25])
    got = fx.effective_sample_size(jnp.log(jnp.asarray(w)) + 7.0)
    assert float(got) == pytest.approx(1.0 / np.sum(w**2), rel=1e-5)


def test_unknown_resampling_name():
    with pytest.raises(ValueError, match="unknown resampling scheme 'bogus'"):
        fx.get_resampler("bogus")


# --- tempering --------------------------------------------------------------------------------


def test_ess_band_tempering_hits_the_band():
    n = 256
    log_likelihoods = 1e3 * jax.random.normal(jax.random.key(0), (n,))
    uniform = jnp.full((n,), -jnp.log(float(n)))
    alpha = fx.ESSBandTempering().exponent(log_likelihoods, uniform)
    ess = float(fx.effective_sample_size(uniform + alpha * log_likelihoods))
    assert 0 < float(alpha) < 1
    assert 0.2 * n - 1e-3 <= ess <= 0.25 * n + 1e-3


def test_ess_band_tempering_keeps_alpha_one_when_not_needed():
    n = 64
    log_likelihoods = 1e-3 * jax.random.normal(jax.random.key(0), (n,))
    uniform = jnp.full((n,), -jnp.log(float(n)))
    assert float(fx.ESSBandTempering().exponent(log_likelihoods, uniform)) == 1.0
    assert float(fx.FixedTempering(0.3).exponent(log_likelihoods, uniform)) == pytest.approx(0.3)


def test_tempering_validation():
    with pytest.raises(ValueError, match="lower <= upper"):
        fx.ESSBandTempering(lower=0.3, upper=0.2)
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\]"):
        fx.FixedTempering(1.5)


# --- Krylov solvers ---------------------------------------------------------------------------


@pytest.mark.x64
@pytest.mark.parametrize("solver", [conjugate_gradient, gmres, bicgstab])
def test_solvers_converge_in_n_iterations(solver):
    rng = np.random.default_rng(0)
    n = 7
    L = rng.normal(size=(n, n))
    A = jnp.asarray(L @ L.T + 0.5 * np.eye(n))
    b = jnp.asarray(rng.normal(size=n))
    x = solver(lambda v: A @ v, b, n)
    np.testing.assert_allclose(np.asarray(A @ x), np.asarray(b), rtol=1e-8, atol=1e-8)
    # Fewer iterations: a smaller residual than the zero start, not an exact solve.
    partial = solver(lambda v: A @ v, b, 2)
    assert 1e-8 < float(jnp.linalg.norm(A @ partial - b)) < float(jnp.linalg.norm(b))


@pytest.mark.parametrize("solver", [conjugate_gradient, gmres, bicgstab])
def test_solvers_survive_a_zero_right_hand_side(solver):
    x = solver(lambda v: 2.0 * v, jnp.zeros(5), 3)
    np.testing.assert_array_equal(np.asarray(x), 0.0)


# --- noise levels and denoisers ---------------------------------------------------------------


def test_karras_noise_levels():
    levels = np.asarray(fx.karras_noise_levels(80.0, 0.03, 7.0, 20))
    assert levels.shape == (21,)
    assert levels[0] == pytest.approx(80.0) and levels[-2] == pytest.approx(0.03, rel=1e-5)
    assert levels[-1] == 0.0 and np.all(np.diff(levels) < 0)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        fx.karras_noise_levels(1.0, 2.0, 7.0, 10)
    with pytest.raises(ValueError, match="num_levels"):
        fx.karras_noise_levels(80.0, 0.03, 7.0, 1)


@pytest.mark.x64
def test_gaussian_denoiser_tweedie_covariance_is_sigma_squared_jacobian():
    rng = np.random.default_rng(1)
    L = rng.normal(size=(5, 5))
    Q = L @ L.T + 0.1 * np.eye(5)
    denoiser = fx.GaussianDenoiser(jnp.asarray(Q))
    mean = jnp.asarray(rng.normal(size=5))
    for sigma in (0.1, 1.0, 30.0):
        jacobian = jax.jacfwd(lambda x, s=sigma: denoiser(x, jnp.asarray(s), mean))(jnp.zeros(5))
        exact = np.linalg.inv(np.linalg.inv(Q) + np.eye(5) / sigma**2)
        np.testing.assert_allclose(sigma**2 * np.asarray(jacobian), exact, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(denoiser.tweedie_covariance(sigma), exact, rtol=1e-8, atol=1e-10)
    with pytest.raises(ValueError, match="must be square"):
        fx.GaussianDenoiser(jnp.zeros((2, 3)))


def test_edm_preconditioning_coefficients():
    seen = {}

    def network(x_scaled, c_noise, cond):
        seen["x"], seen["c"] = x_scaled, c_noise
        return jnp.ones_like(x_scaled)

    denoiser = fx.EDMPreconditionedDenoiser(network, sigma_data=0.5)
    x, sigma = jnp.asarray([2.0, -1.0]), 3.0
    out = denoiser(x, jnp.asarray(sigma), None)
    total = sigma**2 + 0.25
    np.testing.assert_allclose(seen["x"], np.asarray(x) / np.sqrt(total), rtol=1e-6)
    assert float(seen["c"]) == pytest.approx(np.log(sigma) / 4)
    expected = 0.25 / total * np.asarray(x) + sigma * 0.5 / np.sqrt(total)
    np.testing.assert_allclose(out, expected, rtol=1e-6)


# --- samplers ---------------------------------------------------------------------------------


def _sample_moments(sampler, Q, num_samples=20_000):
    denoiser = fx.GaussianDenoiser(jnp.asarray(Q))
    keys = jax.random.split(jax.random.key(2), num_samples)
    d = Q.shape[0]
    draw = jax.vmap(lambda k: sampler.sample(denoiser, jnp.zeros(d), jnp.zeros(d), key=k))
    samples = np.asarray(jax.jit(draw)(keys), float)
    return samples.mean(axis=0), np.cov(samples.T)


Q4 = np.array(
    [[1.0, 0.5, 0.1, 0.0], [0.5, 0.8, 0.2, 0.1], [0.1, 0.2, 0.6, 0.3], [0.0, 0.1, 0.3, 0.9]]
)
FINE = fx.karras_noise_levels(80.0, 0.002, 7.0, 64)


@pytest.mark.x64
@pytest.mark.parametrize(
    "sampler",
    [
        fx.HeunSampler(FINE),
        fx.DPMSolverPlusPlus2SSampler(FINE, churn_noise_scale=1.0),
        # First-order samplers need many more levels for the same accuracy.
        fx.DDIMSampler(fx.karras_noise_levels(80.0, 0.002, 7.0, 512), 1.0),
        fx.DDIMSampler(fx.karras_noise_levels(80.0, 0.002, 7.0, 512), 0.0),
        fx.AdamsBashforthSampler(FINE, 3, 0),
        fx.AdamsBashforthSampler(FINE, 3, 2, 0.25),
    ],
    ids=["heun", "dpm++2s", "ddpm", "ddim", "ab3", "ab3-langevin"],
)
def test_samplers_reproduce_a_gaussian_prior(sampler):
    mean, cov = _sample_moments(sampler, Q4)
    n = 20_000
    std = np.sqrt(np.diag(Q4))
    assert np.max(np.abs(mean) / (std / np.sqrt(n))) < 5.0
    se = np.sqrt((Q4**2 + np.outer(std**2, std**2)) / n)
    assert np.max(np.abs(cov - Q4) / se) < 6.0


def _ode_covariance_error(cls, steps):
    """Exact covariance of a deterministic sampler's output, without Monte Carlo noise.

    The probability-flow ODE of a Gaussian is linear, so the sampler maps its initial noise
    ε (z₀ = σ_max ε) by a matrix M; the output covariance is M Mᵀ, from ``jax.jacfwd``.
    """
    levels = fx.karras_noise_levels(80.0, 0.002, 7.0, steps)
    sampler, denoiser = cls(levels), fx.GaussianDenoiser(jnp.asarray(Q4))

    def run(eps):
        return sampler.sample(
            denoiser, jnp.zeros(4), jnp.zeros(4), key=jax.random.key(0), noise=lambda k, t: eps
        )

    M = np.asarray(jax.jacfwd(run)(jnp.zeros(4)))
    return np.abs(M @ M.T - Q4).max()


@pytest.mark.x64
def test_empirical_orders_of_euler_and_heun():
    """Halving the step: the error drops ≈2× for Euler (order 1), ≈4× for Heun (order 2)."""
    euler = [_ode_covariance_error(fx.EulerSampler, n) for n in (32, 64, 128)]
    heun = [_ode_covariance_error(fx.HeunSampler, n) for n in (32, 64, 128)]
    euler_order = np.log2(euler[1] / euler[2])
    heun_order = np.log2(heun[1] / heun[2])
    assert 0.8 < euler_order < 1.3, euler
    assert 1.7 < heun_order < 2.5, heun


def test_ddim_eta_zero_equals_euler():
    denoiser = fx.GaussianDenoiser(jnp.asarray(Q4, jnp.float32))
    levels = fx.karras_noise_levels(80.0, 0.01, 7.0, 12)
    args = (denoiser, jnp.zeros(4), jnp.zeros(4))
    # Same initial noise: DDIM draws z0 from fold_in(key, 0), Euler from key itself.
    key = jax.random.key(5)
    ddim = fx.DDIMSampler(levels, 0.0).sample(*args, key=key)
    euler = fx.EulerSampler(levels).sample(*args, key=jax.random.fold_in(key, 0))
    np.testing.assert_allclose(ddim, euler, rtol=1e-4, atol=1e-5)


def test_sampler_validation():
    with pytest.raises(ValueError, match="must end with 0"):
        fx.HeunSampler(jnp.asarray([3.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match="strictly decreasing"):
        fx.EulerSampler(jnp.asarray([1.0, 2.0, 0.0]))
    with pytest.raises(ValueError, match="eta must be >= 0"):
        fx.DDIMSampler(FINE, -1.0)
