r"""Least-squares fit of a :class:`~filtrax.emulators.sphere_unet.NoisyInputPath`'s stencils.

**The problem gradient training does not solve.** At small :math:`\sigma` the denoiser can beat
EDM's skip path only through directions of its noisy input that carry little signal: the
difference of two channels that hold the same value (in the Held–Suarez residual the
lowest-level temperature, the lowest-level geopotential and the near-surface temperature are
identical), or of neighbouring cells. In the network's input :math:`c_\text{in} x` such a
direction has variance :math:`(\sigma/\sigma_\text{data})^2` against 1 for the others, so a
linear layer learns it :math:`(\sigma_\text{data}/\sigma)^2` times more slowly than the rest.
Measured on ``hs_t21_16x32_focus`` with a path trained by AdamW as in ``focus_hs.toml``: after
1000 steps the stencils' entries were below 0.06 (the three-copy average needs 1/3 and
−2/3) and the EDM loss of the three identical channels at :math:`\sigma \le 0.05` was
still 1.00–1.01, where EDM's skip path has it, against 0.34 for their average.

**The fit.** With the base network fixed, the path is linear in its parameters, so its
best stencils are a linear least-squares solution, which does not care how ill-conditioned
the inputs are. For training states :math:`(c, z)` (clean conditioning frames) and
:math:`\sigma` drawn log-uniformly on [``sigma_min``, ``sigma_max``], with
:math:`x = z + \sigma\epsilon`, each grid point gives one row:

.. math::

    \text{features} = \big(m(\sigma)\phi_k(\sigma)\, p(c_\text{in} x)\big)_{k},\quad
    \text{target} = \frac{z - c_\text{skip} x}{c_\text{out}} - F_\text{base}(c_\text{in} x,
    c_\text{noise}, c),

where :math:`p` is the stencil-sized patch of every channel around the point (spherically padded)
plus a constant, and rows are weighted by cos-latitude. Minimising the weighted squared error
of the target is minimising EDM's loss (:math:`\lambda(\sigma) c_\text{out}^2 = 1`) over the
path's parameters. The normal equations are accumulated in float64 and solved with a ridge of
``ridge`` times the mean diagonal.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from ..emulators.atmosphere import AtmosphereEmulator
from ..emulators.sphere_unet import NoisyInputPath, pad_sphere


def _patches(x_scaled, size: int):
    """``(lat, lon, size² * channel)`` features in :class:`SphereConv`'s weight order."""
    padded = pad_sphere(x_scaled.transpose(1, 2, 0), size // 2)
    lat, lon = x_scaled.shape[1:]
    rows = [padded[i : i + lat, j : j + lon] for i in range(size) for j in range(size)]
    return jnp.concatenate(rows, axis=-1)


def fit_noisy_path(
    emulator: AtmosphereEmulator,
    states: np.ndarray,
    key: jax.Array,
    *,
    samples: int,
    sigma_min: float = 0.02,
    sigma_max: float = 2.0,
    ridge: float = 1e-6,
    batch: int = 8,
) -> AtmosphereEmulator:
    """``emulator`` (whose network is a :class:`NoisyInputPath`) with its stencils fit by
    least squares on ``samples`` draws of (transition of ``states``, σ, noise).

    ``states`` is ``(time, channel, lat, lon)`` in physical units; the base network is kept.
    """
    network = emulator.denoiser.network
    if not isinstance(network, NoisyInputPath):
        raise TypeError(f"{emulator.name}: the network has no noisy-input path to fit")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if states.shape[0] < 3:
        raise ValueError(f"states must hold at least 3 times, got {states.shape[0]}")
    denoiser = emulator.denoiser
    channels = len(emulator.grid.channels)
    area = jnp.asarray(emulator.grid.area_weights(), jnp.float32)  # (lat, lon), mean 1
    diff_std = jnp.asarray(emulator.diff_std)[:, None, None]
    data = jnp.asarray(states, jnp.float32)

    def rows(key):
        k_time, k_sigma, k_noise = jax.random.split(key, 3)
        t = jax.random.randint(k_time, (), 1, data.shape[0] - 1)
        window = jax.lax.dynamic_slice_in_dim(data, t - 1, 3)
        cond = emulator.condition(window[:2])
        z = (window[2] - window[1]) / diff_std
        u = jax.random.uniform(k_sigma)
        sigma = jnp.exp(math.log(sigma_min) + u * (math.log(sigma_max) - math.log(sigma_min)))
        x = z + sigma * jax.random.normal(k_noise, z.shape)
        c_skip, c_out, c_in, c_noise = denoiser.preconditioning(x, sigma)
        target = (z - c_skip * x) / c_out - network.base(c_in * x, c_noise, cond)
        gain = (sigma**2 + network.sigma_ref**2) / (sigma * network.sigma_ref)
        weights = gain * network.bands(sigma)  # (terms,)
        patch = _patches(c_in * x, network.size)
        patch = jnp.concatenate([patch, jnp.ones((*patch.shape[:2], 1), patch.dtype)], -1)
        features = weights[None, None, :, None] * patch[:, :, None, :]  # (lat, lon, K, size² C + 1)
        features = features.reshape(-1, network.terms * patch.shape[-1])
        root_w = jnp.sqrt(area).reshape(-1, 1)
        return root_w * features, root_w * target.transpose(1, 2, 0).reshape(-1, channels)

    @jax.jit
    def normal_equations(keys):
        f, t = jax.vmap(rows)(keys)
        f = f.reshape(-1, f.shape[-1])
        t = t.reshape(-1, t.shape[-1])
        return f.T @ f, f.T @ t

    keys = jax.random.split(key, samples)
    gram, moment = 0.0, 0.0
    for start in tqdm(range(0, samples, batch), desc="noisy path fit", unit="batch"):
        g, m = normal_equations(keys[start : start + batch])
        gram = gram + np.asarray(g, np.float64)
        moment = moment + np.asarray(m, np.float64)
    gram, moment = np.asarray(gram), np.asarray(moment)  # arrays once one batch was added
    regularised = gram + ridge * np.mean(np.diag(gram)) * np.eye(gram.shape[0])
    solution = np.linalg.solve(regularised, moment)  # (K * (size² C + 1), C)
    if not np.all(np.isfinite(solution)):
        raise FloatingPointError("the noisy-path least-squares solution is not finite")
    fitted = _with_stencils(network, solution, channels)
    return eqx.tree_at(lambda e: e.denoiser.network, emulator, fitted)


def _with_stencils(network: NoisyInputPath, solution: np.ndarray, channels: int):
    """``network`` with the least-squares ``solution`` ``(K * (size² C + 1), C)`` as its
    stencils' weights and biases."""
    size = network.size
    per_term = solution.reshape(network.terms, size * size * channels + 1, channels)
    # SphereConv: weight (size, size, cin, terms * cout), output index k * C + c; bias likewise.
    weight = per_term[:, :-1].transpose(1, 0, 2).reshape(size, size, channels, -1)
    bias = per_term[:, -1].reshape(-1)
    stencils = network.stencils
    return eqx.tree_at(
        lambda n: (n.stencils.weight, n.stencils.bias),
        network,
        (
            jnp.asarray(weight, stencils.weight.dtype),
            jnp.asarray(bias, stencils.bias.dtype),
        ),
    )
