"""Empirical orders of the ODE samplers, measured without Monte Carlo noise.

(The other unit oracles live in test_samplers.py, test_resampling.py, test_tempering.py,
test_linear_solvers.py and test_noise_levels_and_denoisers.py.)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import filtrax as fx

Q4 = np.array(
    [[1.0, 0.5, 0.1, 0.0], [0.5, 0.8, 0.2, 0.1], [0.1, 0.2, 0.6, 0.3], [0.0, 0.1, 0.3, 0.9]]
)


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
