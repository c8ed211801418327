r"""Oracle tests of the parameterisation wrappers (:mod:`filtrax.diffusion.parameterisations`).

For a Gaussian prior x ~ N(μ, Q) the exact network of every convention is known in closed form.
With z = a x + b ε (x independent of ε ~ N(0, I)) the joint Gaussian of (x, ε, z) gives

    C = a² Q + b² I,  E[x | z] = μ + a Q C⁻¹ (z − a μ),  E[ε | z] = b C⁻¹ (z − a μ),
    ∇ log p(z) = −C⁻¹ (z − a μ),

and every prediction target is linear in (x, ε): v = α ε − s x, u = ȧ x + ḃ ε. Each exact
network below is built from these in its *own* convention: it receives the inputs and the time
(or noise input) the wrapper hands it and recovers (a, b) from that time with the schedule's
formulas as the papers write them, never from the wrapper's conversion. Wrapped, it must equal
``GaussianDenoiser(Q)`` (which works through the eigendecomposition of Q, not a solve) at every
σ from 0.01 to 80, to float64 round-off. Negative controls (a network of the wrong
convention, a wrong σ ↔ t map) must miss by a wide margin.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import filtrax as fx

D = 4
SIGMAS = (0.01, 0.03, 0.1, 0.5, 1.0, 3.0, 10.0, 80.0)
TOLERANCE = 1e-10  # float64; the outputs are O(1), the inputs up to O(80)
MARGIN = 0.05  # a negative control's worst error must exceed this

BETA_MIN, BETA_MAX = 0.1, 20.0
COSINE_OFFSET = 0.008
DDPM_ALPHAS_CUMPROD = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))  # Ho et al. (2020)


def _prior(dtype):
    rng = np.random.default_rng(7)
    A = rng.standard_normal((D, D))
    Q = A @ A.T / D + 0.1 * np.eye(D)
    return jnp.asarray(Q, dtype), jnp.asarray(rng.standard_normal(D), dtype)


def _noisy_state(Q, mu, sigma, seed):
    """x_σ = x + σ ε with x drawn from the prior."""
    rng = np.random.default_rng(seed)
    chol = np.linalg.cholesky(np.asarray(Q, np.float64))
    x = np.asarray(mu, np.float64) + chol @ rng.standard_normal(D)
    return jnp.asarray(x + sigma * rng.standard_normal(D), Q.dtype)


def _gaussian_moments(Q, mu, a, b, z):
    """(E[x | z], E[ε | z], ∇ log p(z)) for z = a x + b ε from the joint Gaussian."""
    C = a**2 * Q + b**2 * jnp.eye(D, dtype=Q.dtype)
    w = jnp.linalg.solve(C, z - a * mu)
    return mu + a * (Q @ w), b * w, -w


# The schedules as the papers write them: the network's time -> (α_t, s_t).


def _linear_beta_alpha_sd(t):
    """Song et al. (2021), eq. 33: log α_t = −¼ t² (β_max − β_min) − ½ t β_min."""
    log_alpha = -0.25 * t**2 * (BETA_MAX - BETA_MIN) - 0.5 * t * BETA_MIN
    return jnp.exp(log_alpha), jnp.sqrt(-jnp.expm1(2.0 * log_alpha))


def _cosine_alpha_sd(t):
    """Nichol & Dhariwal (2021), eq. 17: ᾱ_t = f(t)/f(0), f(t) = cos²((t + s)/(1 + s) π/2)."""

    def f(u):
        return jnp.cos((u + COSINE_OFFSET) / (1.0 + COSINE_OFFSET) * (math.pi / 2)) ** 2

    alpha_bar = f(t) / f(jnp.zeros_like(t))
    return jnp.sqrt(alpha_bar), jnp.sqrt(1.0 - alpha_bar)


def _discrete_alpha_sd(t):
    """The DDPM table at index t; between entries, log σ linear in the index (the convention
    DiscreteVPSchedule documents), so α = 1/√(1+σ²), s = σ α."""
    alpha_bar = jnp.asarray(DDPM_ALPHAS_CUMPROD, t.dtype)
    lower = jnp.clip(jnp.floor(t), 0.0, alpha_bar.shape[0] - 2.0)
    frac = t - lower
    i = lower.astype(jnp.int32)

    def log_sigma(j):
        return 0.5 * jnp.log((1.0 - alpha_bar[j]) / alpha_bar[j])

    sigma = jnp.exp((1.0 - frac) * log_sigma(i) + frac * log_sigma(i + 1))
    return 1.0 / jnp.sqrt(1.0 + sigma**2), sigma / jnp.sqrt(1.0 + sigma**2)


VP_SCHEDULE_NAMES = ("linear_beta", "cosine", "discrete_ddpm")


def _vp_schedule(name):
    """The wrapper's schedule and the paper's (α_t, s_t); built inside the test, so that the
    discrete table is stored in the test's precision."""
    return {
        "linear_beta": (fx.LinearBetaVPSchedule(BETA_MIN, BETA_MAX), _linear_beta_alpha_sd),
        "cosine": (fx.CosineVPSchedule(COSINE_OFFSET), _cosine_alpha_sd),
        "discrete_ddpm": (fx.DiscreteVPSchedule.linear(), _discrete_alpha_sd),
    }[name]


def _table_sigmas():
    return np.sqrt((1.0 - DDPM_ALPHAS_CUMPROD) / DDPM_ALPHAS_CUMPROD)


def _vp_sigmas(schedule_name):
    """The discrete table spans σ ∈ [0.0100005, 157]: its own levels (integer times), and
    points between them inside that range."""
    if schedule_name != "discrete_ddpm":
        return SIGMAS
    table = _table_sigmas()
    return (*(float(table[i]) for i in (0, 1, 499, 999)), *SIGMAS[1:])


# The exact networks, each in its own convention.


def _vp_network(Q, alpha_sd, prediction):
    def network(z, t, mu):
        alpha, sd = alpha_sd(t)
        x_mean, eps_mean, _ = _gaussian_moments(Q, mu, alpha, sd, z)
        targets = {"epsilon": eps_mean, "v": alpha * eps_mean - sd * x_mean, "x": x_mean}
        return targets[prediction]

    return network


def _ve_network(Q, prediction, noise_input):
    def network(x_sigma, c_noise, mu):
        sigma = c_noise if noise_input == "sigma" else jnp.exp(c_noise)
        x_mean, eps_mean, score = _gaussian_moments(Q, mu, 1.0, sigma, x_sigma)
        return {"epsilon": eps_mean, "x": x_mean, "score": score}[prediction]

    return network


def _velocity_network(Q, path):
    def network(z, t, mu):
        a, b, a_dot, b_dot = path(t)
        x_mean, eps_mean, _ = _gaussian_moments(Q, mu, a, b, z)
        return a_dot * x_mean + b_dot * eps_mean

    return network


def _straight_data_at_zero(t):
    return 1.0 - t, t, -1.0, 1.0


def _straight_data_at_one(t):
    return t, 1.0 - t, 1.0, -1.0


def _trigonometric(t):
    half_pi = math.pi / 2
    return (
        jnp.cos(half_pi * t),
        jnp.sin(half_pi * t),
        -half_pi * jnp.sin(half_pi * t),
        half_pi * jnp.cos(half_pi * t),
    )


def _cos_half_pi(t):
    return jnp.cos(math.pi / 2 * t)


def _sin_half_pi(t):
    return jnp.sin(math.pi / 2 * t)


FLOWS = {
    "rectified_data_at_zero": (fx.RectifiedFlowInterpolant(), _straight_data_at_zero),
    "rectified_data_at_one": (
        fx.RectifiedFlowInterpolant(data_at_zero=False),
        _straight_data_at_one,
    ),
    "trigonometric_given_derivatives_and_inverse": (
        fx.CustomInterpolant(
            _cos_half_pi,
            _sin_half_pi,
            data_coefficient_derivative=lambda t: -math.pi / 2 * jnp.sin(math.pi / 2 * t),
            noise_coefficient_derivative=lambda t: math.pi / 2 * jnp.cos(math.pi / 2 * t),
            time_of_sigma=lambda sigma: 2.0 / math.pi * jnp.arctan(sigma),
        ),
        _trigonometric,
    ),
    "trigonometric_autodiff_bisection": (
        fx.CustomInterpolant(_cos_half_pi, _sin_half_pi),
        _trigonometric,
    ),
    "straight_data_at_one_bisection": (
        fx.CustomInterpolant(lambda t: t, lambda t: 1.0 - t),
        _straight_data_at_one,
    ),
}


def _worst_error(denoiser, Q, mu, sigmas):
    """max over σ and entries of |denoiser − GaussianDenoiser(Q)|, and the per-σ errors."""
    exact = fx.GaussianDenoiser(Q)
    errors = []
    for k, sigma in enumerate(sigmas):
        x_t = _noisy_state(Q, mu, sigma, seed=k)
        sigma = jnp.asarray(sigma, Q.dtype)
        out = denoiser(x_t, sigma, mu)
        assert out.shape == x_t.shape and out.dtype == x_t.dtype
        errors.append(float(jnp.max(jnp.abs(out - exact(x_t, sigma, mu)))))
    return max(errors), errors


@pytest.mark.x64
@pytest.mark.parametrize("prediction", ["epsilon", "v", "x"])
@pytest.mark.parametrize("schedule_name", list(VP_SCHEDULE_NAMES))
def test_vp_exact_networks_give_the_gaussian_denoiser(schedule_name, prediction):
    Q, mu = _prior(jnp.float64)
    schedule, alpha_sd = _vp_schedule(schedule_name)
    denoiser = fx.VPDenoiser(_vp_network(Q, alpha_sd, prediction), schedule, prediction)
    worst, errors = _worst_error(denoiser, Q, mu, _vp_sigmas(schedule_name))
    assert worst < TOLERANCE, errors


@pytest.mark.x64
@pytest.mark.parametrize("noise_input", ["sigma", "log_sigma"])
@pytest.mark.parametrize("prediction", ["epsilon", "x", "score"])
def test_ve_exact_networks_give_the_gaussian_denoiser(prediction, noise_input):
    Q, mu = _prior(jnp.float64)
    network = _ve_network(Q, prediction, noise_input)
    denoiser = fx.VEDenoiser(network, prediction=prediction, noise_input=noise_input)
    worst, errors = _worst_error(denoiser, Q, mu, SIGMAS)
    assert worst < TOLERANCE, errors


@pytest.mark.x64
@pytest.mark.parametrize("flow_name", list(FLOWS))
def test_flow_matching_exact_velocities_give_the_gaussian_denoiser(flow_name):
    Q, mu = _prior(jnp.float64)
    interpolant, path = FLOWS[flow_name]
    denoiser = fx.FlowMatchingDenoiser(_velocity_network(Q, path), interpolant)
    worst, errors = _worst_error(denoiser, Q, mu, SIGMAS)
    assert worst < TOLERANCE, errors


@pytest.mark.x64
def test_time_scale_reaches_the_network():
    """A network trained on 1000 t (SD3-style) recovers t; the conversion is unchanged."""
    Q, mu = _prior(jnp.float64)
    velocity = _velocity_network(Q, _straight_data_at_zero)
    network = lambda z, scaled_t, cond: velocity(z, scaled_t / 1000.0, cond)  # noqa: E731
    denoiser = fx.FlowMatchingDenoiser(network, time_scale=1000.0)
    worst, errors = _worst_error(denoiser, Q, mu, SIGMAS)
    assert worst < TOLERANCE, errors


@pytest.mark.x64
@pytest.mark.parametrize("schedule_name", list(VP_SCHEDULE_NAMES))
def test_vp_schedules_invert_and_match_the_papers(schedule_name):
    schedule, alpha_sd = _vp_schedule(schedule_name)
    sigmas = jnp.asarray(_vp_sigmas(schedule_name), jnp.float64)
    times = jax.vmap(schedule.time)(sigmas)
    np.testing.assert_allclose(jax.vmap(schedule.sigma)(times), sigmas, rtol=1e-12)
    alpha, sd = jax.vmap(alpha_sd)(times)
    # The papers' forms lose digits to 1 − ᾱ_t at small σ (1e-16 / 1e-4).
    np.testing.assert_allclose(sd / alpha, sigmas, rtol=1e-10)
    if schedule_name == "discrete_ddpm":
        table = jnp.asarray(_table_sigmas()[[0, 1, 499, 999]], jnp.float64)
        np.testing.assert_allclose(jax.vmap(schedule.time)(table), [0, 1, 499, 999], atol=1e-9)
        # Outside the table the time is clamped to its ends.
        clamped = jax.vmap(schedule.time)(jnp.asarray([1e-3, 1e3], jnp.float64))
        np.testing.assert_allclose(clamped, [0.0, 999.0])


@pytest.mark.x64
@pytest.mark.parametrize("flow_name", list(FLOWS))
def test_interpolant_times_invert_sigma(flow_name):
    interpolant, _ = FLOWS[flow_name]
    for sigma in SIGMAS:
        sigma = jnp.asarray(sigma, jnp.float64)
        a, b, _, _ = interpolant.coefficients(interpolant.time(sigma))
        np.testing.assert_allclose(b / a, sigma, rtol=1e-12)


# Negative controls: the same oracle must catch a wrong convention or a wrong σ ↔ t map.


class _NoiseSdSchedule(fx.AbstractVPSchedule):
    """Wrong on purpose: reads σ as s_t instead of s_t/α_t, i.e. solves s_t = σ (σ < 1)."""

    inner: fx.AbstractVPSchedule

    def sigma(self, t):
        ratio = self.inner.sigma(t)
        return ratio / jnp.sqrt(1.0 + ratio**2)

    def time(self, sigma):
        return self.inner.time(sigma / jnp.sqrt(1.0 - sigma**2))


def _negative_controls(Q):
    linear, _ = _vp_schedule("linear_beta")
    eps_net = _vp_network(Q, _linear_beta_alpha_sd, "epsilon")
    v_net = _vp_network(Q, _linear_beta_alpha_sd, "v")
    below_one = (0.1, 0.3, 0.5, 0.9)
    return {
        "epsilon_network_read_as_v": (fx.VPDenoiser(eps_net, linear, "v"), SIGMAS),
        "v_network_read_as_epsilon": (fx.VPDenoiser(v_net, linear, "epsilon"), SIGMAS),
        "sigma_read_as_noise_sd": (fx.VPDenoiser(eps_net, _NoiseSdSchedule(linear)), below_one),
        "cosine_network_on_the_linear_beta_map": (
            fx.VPDenoiser(_vp_network(Q, _cosine_alpha_sd, "epsilon"), linear),
            SIGMAS,
        ),
        "score_read_as_epsilon": (
            fx.VEDenoiser(_ve_network(Q, "score", "sigma"), prediction="epsilon"),
            SIGMAS,
        ),
        "log_sigma_fed_to_a_sigma_network": (
            fx.VEDenoiser(_ve_network(Q, "epsilon", "sigma"), noise_input="log_sigma"),
            SIGMAS,
        ),
        "data_at_one_flow_read_as_data_at_zero": (
            fx.FlowMatchingDenoiser(_velocity_network(Q, _straight_data_at_one)),
            SIGMAS,
        ),
    }


NEGATIVE_CONTROLS = list(_negative_controls(jnp.eye(D)))


@pytest.mark.x64
@pytest.mark.parametrize("case", NEGATIVE_CONTROLS)
def test_negative_controls_miss_the_gaussian_denoiser(case):
    Q, mu = _prior(jnp.float64)
    denoiser, sigmas = _negative_controls(Q)[case]
    worst, errors = _worst_error(denoiser, Q, mu, sigmas)
    assert worst > MARGIN, errors
    assert min(errors) > 1e4 * TOLERANCE, errors


# float32, jit, vmap and linearize: the guidance differentiates through the denoiser.


def _float32_wrappers(Q):
    discrete, discrete_alpha_sd = _vp_schedule("discrete_ddpm")
    linear, _ = _vp_schedule("linear_beta")
    return {
        "vp_epsilon_linear_beta": fx.VPDenoiser(
            _vp_network(Q, _linear_beta_alpha_sd, "epsilon"), linear
        ),
        "vp_v_discrete": fx.VPDenoiser(_vp_network(Q, discrete_alpha_sd, "v"), discrete, "v"),
        "ve_score": fx.VEDenoiser(_ve_network(Q, "score", "sigma"), prediction="score"),
        "flow_trigonometric_bisection": fx.FlowMatchingDenoiser(
            _velocity_network(Q, _trigonometric),
            FLOWS["trigonometric_autodiff_bisection"][0],
        ),
    }


@pytest.mark.parametrize("name", list(_float32_wrappers(jnp.eye(D))))
def test_float32_jit_vmap_and_linearize(name):
    Q, mu = _prior(jnp.float32)
    denoiser = _float32_wrappers(Q)[name]
    exact = fx.GaussianDenoiser(Q)
    states = jnp.stack([_noisy_state(Q, mu, 2.0, seed=k) for k in range(3)])
    sigma = jnp.asarray(2.0, jnp.float32)

    batched = jax.jit(jax.vmap(denoiser, in_axes=(0, None, None)))
    out = batched(states, sigma, mu)
    assert out.dtype == jnp.float32
    expected = jax.vmap(exact, in_axes=(0, None, None))(states, sigma, mu)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)

    @jax.jit
    def tweedie_covariance(x_t, sigma):
        _, tangent = jax.linearize(lambda x: denoiser(x, sigma, mu), x_t)
        jacobian = jax.vmap(tangent)(jnp.eye(D, dtype=jnp.float32)).T
        return sigma**2 * jacobian

    np.testing.assert_allclose(
        tweedie_covariance(states[0], sigma), exact.tweedie_covariance(sigma), atol=1e-5
    )

    # Every σ, to float32 round-off of inputs of size 1 + σ.
    for k, level in enumerate(SIGMAS):
        x_t = _noisy_state(Q, mu, level, seed=k)
        level = jnp.asarray(level, jnp.float32)
        error = jnp.max(jnp.abs(denoiser(x_t, level, mu) - exact(x_t, level, mu)))
        assert float(error) < 1e-6 * (1.0 + float(level)), (float(level), float(error))


SAMPLERS = {
    "dpm_solver_pp_2s_gencast_10": lambda: fx.DPMSolverPlusPlus2SSampler.gencast(num_levels=10),
    "heun_10": lambda: fx.HeunSampler(fx.karras_noise_levels(80.0, 0.01, 7.0, 10)),
}


@pytest.mark.parametrize(
    "dtype",
    [pytest.param("float32"), pytest.param("float64", marks=pytest.mark.x64)],
)
@pytest.mark.parametrize("sampler_name", list(SAMPLERS))
def test_sampler_with_a_wrapped_vp_network_matches_the_gaussian_denoiser(sampler_name, dtype):
    """The same key gives the same samples with the wrapped exact VP-ε network."""
    dtype = jnp.dtype(dtype)
    Q, mu = _prior(dtype)
    sampler = SAMPLERS[sampler_name]()
    wrapped = fx.VPDenoiser(
        _vp_network(Q, _linear_beta_alpha_sd, "epsilon"), _vp_schedule("linear_beta")[0]
    )
    template = jnp.zeros(D, dtype)
    keys = jax.random.split(jax.random.key(3), 8)

    def draw(denoiser):
        one = lambda key: sampler.sample(denoiser, mu, template, key=key)  # noqa: E731
        return jax.jit(jax.vmap(one))(keys)

    reference, samples = draw(fx.GaussianDenoiser(Q)), draw(wrapped)
    assert samples.dtype == dtype
    tolerance = 3e-5 if dtype == jnp.float32 else 1e-9
    np.testing.assert_allclose(samples, reference, atol=tolerance, rtol=0)
    assert float(jnp.std(reference)) > 0.3  # the samples are spread, not collapsed


def test_bad_configurations_are_refused():
    network = _vp_network(jnp.eye(D), _linear_beta_alpha_sd, "epsilon")
    with pytest.raises(ValueError, match="prediction"):
        fx.VPDenoiser(network, fx.LinearBetaVPSchedule(), prediction="eps")
    with pytest.raises(ValueError, match="noise_input"):
        fx.VEDenoiser(network, noise_input="quarter_log_sigma")
    with pytest.raises(ValueError, match="prediction"):
        fx.VEDenoiser(network, prediction="v")
    with pytest.raises(ValueError, match="beta_min"):
        fx.LinearBetaVPSchedule(beta_min=0.0)
    with pytest.raises(ValueError, match="decreasing"):
        fx.DiscreteVPSchedule([0.5, 0.9])
    with pytest.raises(ValueError, match="t_min"):
        fx.CustomInterpolant(_cos_half_pi, _sin_half_pi, t_min=1.0, t_max=0.0)
    with pytest.raises(ValueError, match="time_scale"):
        fx.FlowMatchingDenoiser(network, time_scale=0.0)
