"""Oracles for the reverse-diffusion samplers.

With the exact denoiser of a Gaussian prior ``N(μ, Q)`` every sampler must return draws of
``N(μ, Q)`` up to its discretisation error. Deterministic samplers are affine in their
initial noise ``ε``, so their output law is known *exactly* from one Jacobian
(``cov = J Jᵀ``), which gives Monte-Carlo-free convergence-order tests.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.polynomial import polynomial

from filtrax.diffusion.denoisers import AbstractDenoiser, GaussianDenoiser
from filtrax.diffusion.noise_levels import karras_noise_levels
from filtrax.diffusion.samplers import (
    AdamsBashforthSampler,
    DDIMSampler,
    DPMSolverPlusPlus2SSampler,
    EulerSampler,
    HeunSampler,
)

Q = np.array(
    [
        [1.0, 0.6, 0.2, 0.0],
        [0.6, 0.9, 0.3, 0.1],
        [0.2, 0.3, 0.5, 0.25],
        [0.0, 0.1, 0.25, 1.2],
    ]
)
MU = np.array([1.0, -2.0, 0.5, 3.0])
D = Q.shape[0]


def _fixed_noise(eps):
    """A key-independent noise function (every call returns ``eps``, broadcast)."""
    return lambda key, template: jnp.broadcast_to(jnp.asarray(eps, template.dtype), template.shape)


# --- Monte-Carlo moments -----------------------------------------------------------------------

NUM_SAMPLES = 20_000
# σ_max = 1000 makes the start bias of the deterministic samplers (they start from σ_max·ε,
# not from N(μ, Q + σ_max² I)) about ‖Q^½ μ‖/σ_max ≈ 0.004, well below the Monte-Carlo error.
SIGMA_MAX = 1000.0


def _levels(n: int, sigma_max: float = SIGMA_MAX) -> jax.Array:
    return karras_noise_levels(sigma_max, 0.002, 7.0, n)


# (sampler, allowance): the allowance is the discretisation bias of the covariance, relative
# to sqrt(Q_ii Q_jj), about twice the bias measured with 400k samples (or exactly, for the
# deterministic samplers) on this problem.
MOMENT_CASES = {
    "heun-64": (HeunSampler(_levels(64)), 0.03),
    "dpm++2s-64": (DPMSolverPlusPlus2SSampler(_levels(64), churn_noise_scale=1.0), 0.025),
    "ddim-eta0-512": (DDIMSampler(_levels(512), 0.0), 0.035),
    "ddim-eta1-512": (DDIMSampler(_levels(512), 1.0), 0.07),
    "ab3-c0-64": (AdamsBashforthSampler(_levels(64), 3, 0), 0.03),
    "ab3-c2-64": (AdamsBashforthSampler(_levels(64), 3, 2, 0.25), 0.07),
}


def _draw(sampler, num=NUM_SAMPLES, seed=0, dtype=jnp.float32):
    denoiser = GaussianDenoiser(jnp.asarray(Q, dtype))
    mu, template = jnp.asarray(MU, dtype), jnp.zeros(D, dtype)
    keys = jax.random.split(jax.random.key(seed), num)
    one = lambda k: sampler.sample(denoiser, mu, template, key=k)  # noqa: E731
    return np.asarray(jax.jit(jax.vmap(one))(keys), np.float64)


def _check_moments(samples, allowance):
    n = samples.shape[0]
    std = np.sqrt(np.diag(Q))
    mean_err = np.abs(samples.mean(axis=0) - MU)
    mean_tol = 5.0 * std / np.sqrt(n) + 0.01
    assert np.all(mean_err < mean_tol), f"mean error {mean_err} vs tolerance {mean_tol}"
    cov = np.cov(samples.T)
    # Var(S_ij) ≈ (Q_ij² + Q_ii Q_jj)/n for Gaussian samples.
    se = np.sqrt((Q**2 + np.outer(std**2, std**2)) / n)
    cov_tol = 5.0 * se + allowance * np.outer(std, std)
    assert np.all(np.abs(cov - Q) < cov_tol), (
        f"covariance error\n{cov - Q}\nvs tolerance\n{cov_tol}"
    )


@pytest.mark.parametrize("name", sorted(MOMENT_CASES))
def test_sampler_reproduces_a_gaussian_prior(name):
    sampler, allowance = MOMENT_CASES[name]
    _check_moments(_draw(sampler), allowance)


def test_moment_check_rejects_a_wrong_sampler():
    """Control: too few Euler steps visibly shrink the covariance; the same check must fail."""
    samples = _draw(EulerSampler(_levels(16)), num=4000)
    with pytest.raises(AssertionError, match="covariance"):
        _check_moments(samples, 0.03)
    # A sampler that ignores the prior mean fails the mean check.
    shifted = samples - MU + 0.2
    with pytest.raises(AssertionError, match="mean"):
        _check_moments(shifted, 1.0)


@pytest.mark.parametrize(
    "sampler",
    [
        DDIMSampler(_levels(5), 0.5),
        DPMSolverPlusPlus2SSampler(_levels(5)),
        AdamsBashforthSampler(_levels(5), 3, 1),
    ],
    ids=lambda s: type(s).__name__,
)
def test_sampler_keeps_template_shape_dtype_and_is_reproducible(sampler):
    denoiser = GaussianDenoiser(jnp.asarray(Q, jnp.float32))
    template = jnp.zeros((2, 2), jnp.float32)
    mu = jnp.asarray(MU.reshape(2, 2), jnp.float32)
    run = jax.jit(lambda k: sampler.sample(denoiser, mu, template, key=k))
    a, b, c = run(jax.random.key(1)), run(jax.random.key(1)), run(jax.random.key(2))
    assert a.shape == (2, 2) and a.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(a)))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.allclose(np.asarray(a), np.asarray(c))


# --- exact laws of deterministic samplers ------------------------------------------------------


def _exact_law(sampler, mu=None):
    """Mean and covariance of a deterministic sampler's output, which is affine in ε."""
    mu = np.zeros(D) if mu is None else mu
    denoiser = GaussianDenoiser(jnp.asarray(Q))
    key = jax.random.key(0)

    def run(eps):
        return sampler.sample(
            denoiser, jnp.asarray(mu), jnp.zeros(D), key=key, noise=_fixed_noise(eps)
        )

    # Affine map: evaluate at ε = 0 and at the unit vectors (cheaper to compile than jacfwd).
    outputs = np.asarray(jax.jit(jax.vmap(run))(jnp.eye(D + 1, D, k=-1)))
    offset, J = outputs[0], (outputs[1:] - outputs[0]).T
    return offset, J @ J.T


def _orders(make, steps):
    """Max covariance errors on Karras grids of ``steps`` levels, and the observed orders."""
    errors = np.array(
        [np.abs(_exact_law(make(_levels(n, 80.0)))[1] - Q).max() for n in steps], float
    )
    refinement = np.asarray(steps[1:], float) / np.asarray(steps[:-1], float)
    return errors, np.log(errors[:-1] / errors[1:]) / np.log(refinement)


@pytest.mark.x64
def test_heun_converges_faster_than_euler():
    # 16 → 64 levels (a 4× refinement): the error falls ~4× for Euler, ~16× for Heun.
    euler_err, euler_order = _orders(EulerSampler, steps=(16, 64))
    heun_err, heun_order = _orders(HeunSampler, steps=(16, 64))
    assert np.all((euler_order > 0.8) & (euler_order < 1.2)), euler_order
    assert np.all(heun_order > 1.8), heun_order
    assert np.all(heun_err < 0.5 * euler_err)
    assert heun_err[-1] < 0.1 * euler_err[-1]


@pytest.mark.x64
@pytest.mark.parametrize(
    ("make", "min_order"),
    [
        (lambda lv: DPMSolverPlusPlus2SSampler(lv, churn=0.0), 1.8),
        (lambda lv: AdamsBashforthSampler(lv, 3, 0), 2.3),
    ],
    ids=["dpm++2s-no-churn", "ab3"],
)
def test_higher_order_samplers_converge_at_their_order(make, min_order):
    errors, orders = _orders(make, steps=(32, 64))
    assert np.all(orders > min_order), (errors, orders)


@pytest.mark.x64
def test_deterministic_law_tends_to_the_prior():
    """Heun on a fine grid: the exact output law is N(μ, Q) up to the start bias."""
    mean, cov = _exact_law(HeunSampler(_levels(64, 80.0)), mu=MU)
    np.testing.assert_allclose(cov, Q, atol=1e-2)
    # The exact flow maps N(0, σ²I) at σ_max to mean μ − Q^½ (Q + σ² I)^{-½} μ.
    lam, U = np.linalg.eigh(Q)
    start_bias = U @ (np.sqrt(lam / (lam + 80.0**2)) * (U.T @ MU))
    np.testing.assert_allclose(mean, MU - start_bias, atol=2e-3)
    assert np.abs(start_bias).max() > 0.02  # the correction matters at this tolerance


@pytest.mark.x64
def test_ddim_eta_zero_equals_euler():
    levels = karras_noise_levels(80.0, 0.01, 7.0, 16)
    denoiser = GaussianDenoiser(jnp.asarray(Q))
    eps = jnp.asarray(np.random.default_rng(0).normal(size=D))
    args = (denoiser, jnp.asarray(MU), jnp.zeros(D))

    @jax.jit
    def run(ddim, euler, key, euler_key):
        fixed = _fixed_noise(eps)
        return (
            ddim.sample(*args, key=key, noise=fixed),
            euler.sample(*args, key=key, noise=fixed),
            ddim.sample(*args, key=key),
            euler.sample(*args, key=euler_key),
        )

    key = jax.random.key(5)
    ddim_fixed, euler_fixed, ddim_key, euler_key = map(
        np.asarray,
        run(DDIMSampler(levels, 0.0), EulerSampler(levels), key, jax.random.fold_in(key, 0)),
    )
    np.testing.assert_allclose(ddim_fixed, euler_fixed, rtol=1e-12, atol=1e-12)
    # With the default noise, DDIM draws its start from fold_in(key, 0), Euler from key.
    np.testing.assert_allclose(ddim_key, euler_key, rtol=1e-12, atol=1e-12)
    # η > 0 does differ (η is an array leaf: same compiled function).
    ddim1 = np.asarray(run(DDIMSampler(levels, 1.0), EulerSampler(levels), key, key)[2])
    assert not np.allclose(ddim1, euler_key)


@pytest.mark.x64
def test_first_order_adams_bashforth_is_euler():
    levels = karras_noise_levels(80.0, 0.01, 7.0, 16)
    denoiser = GaussianDenoiser(jnp.asarray(Q))
    noise = _fixed_noise(np.random.default_rng(1).normal(size=D))
    args = (denoiser, jnp.asarray(MU), jnp.zeros(D))
    run = jax.jit(lambda sampler: sampler.sample(*args, key=jax.random.key(0), noise=noise))
    ab1 = run(AdamsBashforthSampler(levels, 1, 0))
    euler = run(EulerSampler(levels))
    np.testing.assert_allclose(np.asarray(ab1), np.asarray(euler), rtol=1e-12, atol=1e-12)


# --- Adams–Bashforth against an independent polynomial reference ------------------------------


@dataclasses.dataclass(frozen=True)
class _SlopeDenoiser:
    """``D(z, σ) = z − σ p(σ)``: the PF-ODE slope ``(z − D)/σ = p(σ)`` does not depend on z."""

    def slope(self, sigma):
        return jnp.sin(3.0 * sigma) + sigma**2

    def __call__(self, z, sigma, cond):
        return z - sigma * self.slope(sigma) * jnp.ones_like(z)


def _adams_bashforth_reference(levels, order, corrections, delta, c):
    """Variable-step AB by numpy polynomial interpolation; the noise is the constant ``c``."""
    p = lambda s: np.sin(3.0 * s) + s**2  # noqa: E731
    n = len(levels) - 1
    z = levels[0] * c
    for i in range(n):
        nodes = levels[max(0, i - order + 1) : i + 1]
        coef = polynomial.polyfit(nodes, p(nodes), len(nodes) - 1)
        antiderivative = polynomial.polyint(coef)
        z = (
            z
            + polynomial.polyval(levels[i + 1], antiderivative)
            - polynomial.polyval(levels[i], antiderivative)
        )
        if i < n - 1:
            sigma_c = levels[i + 1] + 1e-4
            for _ in range(corrections):
                gamma = delta * sigma_c**2
                score = -p(sigma_c) / sigma_c
                z = z + 0.5 * gamma * score + np.sqrt(gamma) * c
    return z


@pytest.mark.x64
@pytest.mark.parametrize(("order", "corrections"), [(1, 0), (2, 0), (3, 0), (4, 0), (3, 2)])
def test_adams_bashforth_matches_a_polynomial_reference(order, corrections):
    levels = np.asarray(karras_noise_levels(3.0, 0.05, 2.0, 16))
    sampler = AdamsBashforthSampler(jnp.asarray(levels), order, corrections, 0.3)
    c = 0.7
    run = jax.jit(
        lambda key: sampler.sample(
            _SlopeDenoiser(), None, jnp.zeros(3), key=key, noise=_fixed_noise(c)
        )
    )
    out = run(jax.random.key(0))
    expected = _adams_bashforth_reference(levels, order, corrections, 0.3, c)
    np.testing.assert_allclose(np.asarray(out), np.full(3, expected), rtol=1e-10, atol=1e-10)


@pytest.mark.x64
def test_adams_bashforth_integrates_low_degree_slopes_exactly():
    """Slope linear in σ: AB2 is exact after its Euler first step, AB1 is not."""

    class Linear:
        def __call__(self, z, sigma, cond):
            return z - sigma * (2.0 + 3.0 * sigma) * jnp.ones_like(z)

    levels = np.asarray(karras_noise_levels(2.0, 0.1, 3.0, 5))

    @jax.jit
    def run(sampler):
        return sampler.sample(
            Linear(), None, jnp.zeros(1), key=jax.random.key(0), noise=_fixed_noise(0.0)
        )

    # ∫_{σ0}^{0} (2 + 3σ) dσ, minus the Euler error of the first step: −(3/2) h₀².
    h0 = levels[1] - levels[0]
    exact = -(2.0 * levels[0] + 1.5 * levels[0] ** 2)
    for order in (2,):
        out = run(AdamsBashforthSampler(jnp.asarray(levels), order, 0))
        np.testing.assert_allclose(np.asarray(out), [exact - 1.5 * h0**2], rtol=1e-12)
    euler = run(AdamsBashforthSampler(jnp.asarray(levels), 1, 0))
    assert abs(float(euler[0]) - exact) > 1e-2


# --- call counts -------------------------------------------------------------------------------


class _CountingDenoiser(AbstractDenoiser):
    inner: AbstractDenoiser
    calls: list

    def __call__(self, x_t, sigma, cond):
        self.calls.append(float(sigma))
        return self.inner(x_t, sigma, cond)


COUNT_CASES = [
    EulerSampler(_levels(2)),
    EulerSampler(_levels(5)),
    HeunSampler(_levels(2)),
    HeunSampler(_levels(5)),
    DDIMSampler(_levels(5), 0.0),
    DDIMSampler(_levels(2), 1.0),
    DPMSolverPlusPlus2SSampler(_levels(2)),
    DPMSolverPlusPlus2SSampler(_levels(5)),
    DPMSolverPlusPlus2SSampler.gencast(),
    AdamsBashforthSampler(_levels(2), 3, 2),
    # All order 3: eager mode compiles the coefficient solve once per order.
    AdamsBashforthSampler(_levels(5), 3, 0),
    AdamsBashforthSampler(_levels(5), 3, 3),
]


@pytest.mark.parametrize("sampler", COUNT_CASES, ids=lambda s: f"{type(s).__name__}-{s.num_steps}")
def test_num_denoiser_calls_equals_the_calls_made(sampler):
    calls: list[float] = []
    denoiser = _CountingDenoiser(GaussianDenoiser(jnp.asarray(Q, jnp.float32)), calls)
    with jax.disable_jit():
        out = sampler.sample(
            denoiser, jnp.zeros(D), jnp.zeros(D, jnp.float32), key=jax.random.key(0)
        )
    assert np.all(np.isfinite(np.asarray(out)))
    assert len(calls) == sampler.num_denoiser_calls
    # Every call is at a positive noise level (σ = 0 is never passed to the denoiser).
    assert min(calls) > 0


def test_num_denoiser_calls_formulas():
    n = 5
    levels = _levels(n)
    assert EulerSampler(levels).num_denoiser_calls == n
    assert HeunSampler(levels).num_denoiser_calls == 2 * n - 1
    assert DDIMSampler(levels).num_denoiser_calls == n
    assert DPMSolverPlusPlus2SSampler(levels).num_denoiser_calls == 2 * n - 1
    assert AdamsBashforthSampler(levels, 3, 2).num_denoiser_calls == n + 2 * (n - 1)


@pytest.mark.x64
def test_preset_configurations():
    gencast = DPMSolverPlusPlus2SSampler.gencast()
    np.testing.assert_allclose(
        np.asarray(gencast.noise_levels), np.asarray(karras_noise_levels(80.0, 0.03, 7.0, 20))
    )
    assert (gencast.churn, gencast.churn_min_sigma, gencast.churn_noise_scale) == (2.5, 0.75, 1.05)
    assert gencast.churn_max_sigma == float("inf")
    assert DPMSolverPlusPlus2SSampler.gencast(10, churn=0.0).churn == 0.0
    savary = AdamsBashforthSampler.savary2025()
    np.testing.assert_allclose(
        np.asarray(savary.noise_levels), np.asarray(karras_noise_levels(88.0, 2e-5, 6.0, 32))
    )
    assert (savary.order, savary.num_corrections, float(savary.langevin_step)) == (3, 2, 0.25)
    assert savary.num_denoiser_calls == 32 + 2 * 31
    assert gencast.num_denoiser_calls == 2 * 20 - 1


# --- validation --------------------------------------------------------------------------------

ALL_SAMPLERS = [
    EulerSampler,
    HeunSampler,
    DDIMSampler,
    DPMSolverPlusPlus2SSampler,
    AdamsBashforthSampler,
]


@pytest.mark.parametrize("cls", ALL_SAMPLERS, ids=lambda c: c.__name__)
@pytest.mark.parametrize(
    ("levels", "match"),
    [
        ([3.0, 2.0, 1.0], "end with 0"),
        ([3.0, 2.0, 0.5, 0.1], "end with 0"),
        ([1.0, 2.0, 0.0], "strictly decreasing"),
        ([2.0, 2.0, 1.0, 0.0], "strictly decreasing"),
        ([2.0, 1.0, 1.5, 0.0], "strictly decreasing"),
        ([0.0], "at least 2"),
        ([[2.0, 1.0, 0.0]], "1-D"),
    ],
)
@pytest.mark.bad_input
def test_invalid_noise_levels_are_rejected(cls, levels, match):
    with pytest.raises(ValueError, match=match):
        cls(jnp.asarray(levels))


def test_invalid_sampler_parameters_are_rejected():
    levels = _levels(5)
    with pytest.raises(ValueError, match="eta"):
        DDIMSampler(levels, -0.1)
    with pytest.raises(ValueError, match="churn"):
        DPMSolverPlusPlus2SSampler(levels, churn=-1.0)
    with pytest.raises(ValueError, match="churn"):
        DPMSolverPlusPlus2SSampler(levels, churn_noise_scale=-1.0)
    with pytest.raises(ValueError, match="order"):
        AdamsBashforthSampler(levels, 0, 2)
    with pytest.raises(ValueError, match="num_corrections"):
        AdamsBashforthSampler(levels, 3, -1)
    with pytest.raises(ValueError, match="langevin_step"):
        AdamsBashforthSampler(levels, 3, 2, 0.0)
