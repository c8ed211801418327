r"""The EDM/Karras noise-level grid.

For :math:`i = 0, \dots, n-1`

.. math::
    \sigma_i = \Big(\sigma_{\max}^{1/\rho} + \tfrac{i}{n-1}
               \big(\sigma_{\min}^{1/\rho} - \sigma_{\max}^{1/\rho}\big)\Big)^{\rho},

followed by :math:`\sigma_n = 0`. The grid is descending and has ``n + 1`` entries.

References:
    Karras, Aittala, Aila & Laine (2022), "Elucidating the Design Space of
    Diffusion-Based Generative Models", arXiv:2206.00364, eq. (5).
    Price et al. (2024), GenCast, ``samplers_utils.noise_schedule`` (same formula).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax.typing import DTypeLike
from jaxtyping import Array, Float


def karras_noise_levels(
    sigma_max: float,
    sigma_min: float,
    rho: float,
    num_levels: int,
    *,
    dtype: DTypeLike | None = None,
) -> Float[Array, " num_levels_plus_one"]:
    """Descending EDM noise levels ``σ_0 = σ_max > … > σ_{n-1} = σ_min`` and a final ``0``.

    Args:
        sigma_max: the highest noise level (GenCast: 80 for sampling, 88 in training).
        sigma_min: the lowest non-zero noise level.
        rho: the curvature of the grid (7 in EDM and GenCast, 6 in the FA-APF code).
        num_levels: ``n``, the number of non-zero levels.
        dtype: the floating dtype of the result (default: JAX's default float).

    Returns:
        An array of shape ``(n + 1,)``.

    Raises:
        ValueError: if a parameter is out of range.
    """
    if not (math.isfinite(sigma_max) and math.isfinite(sigma_min)):
        raise ValueError(f"sigma_max and sigma_min must be finite, got {sigma_max}, {sigma_min}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(
            f"noise levels need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, "
            f"sigma_max={sigma_max}"
        )
    if not rho > 0:
        raise ValueError(f"rho must be positive, got {rho}")
    if int(num_levels) != num_levels or num_levels < 2:
        raise ValueError(f"num_levels must be an integer >= 2, got {num_levels}")
    fraction = jnp.linspace(0.0, 1.0, int(num_levels), dtype=dtype)
    top, bottom = sigma_max ** (1.0 / rho), sigma_min ** (1.0 / rho)
    sigmas = (top + fraction * (bottom - top)) ** rho
    return jnp.concatenate([sigmas, jnp.zeros((1,), dtype=sigmas.dtype)])
