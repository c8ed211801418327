"""The least-squares fit of a noisy-input path against the exact denoiser of a Gaussian.

Oracle: three channels that always hold the same value, white in space, z ~ N(0, s^2) per
point, and a base network that outputs 0 (EDM's skip path alone, the exact denoiser of
N(0, s^2 I) when sigma_data = s). The exact denoiser averages the copies,
D_i = s^2 / (3 s^2 + sigma^2) * sum_j x_j, with expected squared error per entry
s^2 sigma^2 / (3 s^2 + sigma^2), against s^2 sigma^2 / (s^2 + sigma^2) for the skip path.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from filtrax.diffusion.denoisers import EDMPreconditionedDenoiser
from filtrax.emulators.atmosphere import AtmosphereEmulator
from filtrax.emulators.sphere_unet import NoisyInputPath, SphereUNet
from filtrax.grid import Channel, GridSpec
from filtrax.training.noisy_path import fit_noisy_path

LAT = tuple((-90 + 22.5 * (np.arange(8) + 0.5)).tolist())
LON = tuple((45.0 * np.arange(8)).tolist())
SPREAD = 0.4  # s, also the preconditioning's sigma_data


def _copies_emulator(terms=4, size=3):
    channels = tuple(Channel(f"copy{i}") for i in range(3))
    grid = GridSpec(LAT, LON, channels, level_name="sigma")
    base = SphereUNet(
        channels=3, condition_frames=2, widths=(8,), latitudes=LAT, key=jax.random.key(0)
    )  # zero-initialised head: F_base = 0
    network = NoisyInputPath(base, channels=3, terms=terms, key=jax.random.key(1), size=size)
    return AtmosphereEmulator(
        EDMPreconditionedDenoiser(network, sigma_data=SPREAD),
        mean=jnp.zeros(3),
        std=jnp.ones(3),
        diff_std=jnp.ones(3),
        grid=grid,
        name="copies",
    )


def _copies_states(num_times, seed):
    """States whose 12 h residuals are three identical white N(0, s^2) fields."""
    rng = np.random.default_rng(seed)
    steps = SPREAD * rng.standard_normal((num_times - 1, 1, len(LAT), len(LON)))
    states = np.concatenate([np.zeros((1, 1, len(LAT), len(LON))), np.cumsum(steps, 0)])
    return np.repeat(states, 3, axis=1).astype(np.float32)


def _squared_error(emulator, sigma, draws=64):
    key_z, key_noise = jax.random.split(jax.random.key(7))
    z = SPREAD * jax.random.normal(key_z, (draws, 1, len(LAT), len(LON)))
    z = jnp.repeat(z, 3, axis=1)
    x = z + sigma * jax.random.normal(key_noise, z.shape)
    cond = jnp.zeros((2, 3, len(LAT), len(LON)))
    denoised = jax.vmap(lambda xi: emulator.denoiser(xi, jnp.asarray(sigma), cond))(x)
    return float(jnp.mean((denoised - z) ** 2))


@pytest.mark.parametrize("sigma", [0.03, 0.1, 0.3])
def test_fitted_path_reaches_the_exact_three_copy_denoiser(sigma):
    emulator = _copies_emulator()
    fitted = fit_noisy_path(emulator, _copies_states(200, 0), jax.random.key(2), samples=256)
    s2 = SPREAD**2
    exact = s2 * sigma**2 / (3 * s2 + sigma**2)
    skip = s2 * sigma**2 / (s2 + sigma**2)
    # The unfitted path is the skip path (the oracle's check that it can fail) ...
    np.testing.assert_allclose(_squared_error(emulator, sigma), skip, rtol=0.1)
    # ... and the fitted one has the exact error, 1/3 of the skip path's at small sigma
    # (measured: within 1 % for sigma in [0.02, 1], 3 % at 2), up to sampling error.
    error = _squared_error(fitted, sigma)
    assert exact * 0.92 < error < exact * 1.08, (error, exact, skip)


@pytest.mark.parametrize("size", [1, 5])
def test_fitted_path_of_other_stencil_sizes_reaches_the_exact_denoiser(size):
    emulator = _copies_emulator(size=size)
    assert emulator.denoiser.network.stencils.weight.shape[:2] == (size, size)
    fitted = fit_noisy_path(emulator, _copies_states(200, 0), jax.random.key(2), samples=256)
    sigma, s2 = 0.1, SPREAD**2
    exact = s2 * sigma**2 / (3 * s2 + sigma**2)
    assert exact * 0.92 < _squared_error(fitted, sigma) < exact * 1.08


def test_fit_refuses_a_network_without_a_path_and_bad_arguments():
    emulator = _copies_emulator()
    plain = eqx.tree_at(lambda e: e.denoiser.network, emulator, emulator.denoiser.network.base)
    states = _copies_states(10, 0)
    with pytest.raises(TypeError, match="copies: the network has no noisy-input path to fit"):
        fit_noisy_path(plain, states, jax.random.key(0), samples=4)
    with pytest.raises(ValueError, match="samples must be >= 1, got 0"):
        fit_noisy_path(emulator, states, jax.random.key(0), samples=0)
    with pytest.raises(ValueError, match="states must hold at least 3 times, got 2"):
        fit_noisy_path(emulator, states[:2], jax.random.key(0), samples=4)
    assert math.isfinite(_squared_error(emulator, 0.1))
