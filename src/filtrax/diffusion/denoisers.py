r"""Denoisers: the protocol, EDM preconditioning and the analytic Gaussian denoiser.

Variance-exploding (EDM) convention: :math:`x_\sigma = x + \sigma\varepsilon`,
:math:`\varepsilon \sim \mathcal N(0, I)`. A denoiser returns the posterior mean

.. math:: D(x_\sigma, \sigma, c) \approx \mathbb E[x \mid x_\sigma, c].

Tweedie's formulas link it to the score and the posterior covariance:

.. math::
    \nabla_{x_\sigma}\log p(x_\sigma \mid c) = \frac{D - x_\sigma}{\sigma^2}, \qquad
    \mathbb V[x \mid x_\sigma, c] = \sigma^2 \frac{\partial D}{\partial x_\sigma}.

All denoisers are written for **one unbatched state**; callers ``vmap``.

References:
    Karras et al. (2022), arXiv:2206.00364, Table 1 (preconditioning).
    Efron (2011), "Tweedie's formula and selection bias", JASA.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.typing import DTypeLike
from jaxtyping import Array, ArrayLike, Float, PyTree

from .._typing import State


class AbstractDenoiser(eqx.Module):
    """``D(x_t, σ, cond) → E[x | x_t, cond]`` for one unbatched state.

    ``cond`` is an explicit pytree (previous states, forcings, a prior mean, …); there is
    no ``**kwargs``. ``sigma`` is a scalar array.
    """

    @abc.abstractmethod
    def __call__(self, x_t: State, sigma: Float[Array, ""], cond: PyTree) -> State:
        """Return the denoised state ``E[x | x_t, cond]``, with the shape of ``x_t``."""


NOISE_INPUTS = ("quarter_log_sigma", "sigma")


def _sigma_data_value(value) -> float | tuple[float, ...]:
    """A number stays a float; a sequence becomes a tuple of floats (hashable, static)."""
    if isinstance(value, int | float):
        return float(value)
    return tuple(float(v) for v in value)


class EDMPreconditionedDenoiser(AbstractDenoiser):
    r"""EDM preconditioning around a raw network :math:`F_\theta`.

    .. math::
        D(x, \sigma, c) = c_\text{skip}(\sigma)\,x
            + c_\text{out}(\sigma)\, F_\theta\big(c_\text{in}(\sigma)\,x,\; c_\text{noise}(\sigma),
            \; c\big),

    with :math:`c_\text{skip} = \sigma_d^2/(\sigma^2+\sigma_d^2)`,
    :math:`c_\text{out} = \sigma\sigma_d/\sqrt{\sigma^2+\sigma_d^2}`,
    :math:`c_\text{in} = 1/\sqrt{\sigma^2+\sigma_d^2}` and
    :math:`c_\text{noise} = \tfrac14 \log\sigma` (Karras et al.), or :math:`\sigma` itself
    for networks that encode the noise level themselves (GenCast's ``Denoiser`` takes
    ``noise_levels`` and builds Fourier features of :math:`\log\sigma` internally).

    **Per-channel** :math:`\sigma_\text{data}`. ``sigma_data`` may hold one value per entry of
    the state's leading (channel) axis; every coefficient is then taken per channel. For a
    conditional model the data the network has to model around its conditional mean have the
    conditional spread, not the marginal one, and a network that has not yet learned to use
    its noisy input returns :math:`c_\text{skip} x + (1-c_\text{skip})\,\mu`, the exact
    denoiser of :math:`\mathcal N(\mu, \sigma_\text{data}^2)`: matching
    :math:`\sigma_\text{data}` to the conditional spread keeps such a network's samples
    calibrated (Price et al. 2025).

    Attributes:
        network: ``network(x_scaled, c_noise, cond) -> raw output`` with the shape of ``x``.
        sigma_data: the standard deviation of the (normalised) data, 1 in GenCast; a float,
            or a tuple with one value per channel (the state's leading axis).
        noise_input: ``"quarter_log_sigma"`` (default) or ``"sigma"``: what the network
            receives as :math:`c_\text{noise}`.

    References:
        Karras et al. (2022), arXiv:2206.00364, Table 1 and Appendix B.6.
    """

    network: Callable[[State, Float[Array, ""], PyTree], State]
    sigma_data: float | tuple[float, ...] = eqx.field(
        static=True, default=1.0, converter=_sigma_data_value
    )
    noise_input: str = eqx.field(static=True, default="quarter_log_sigma")

    def __check_init__(self) -> None:
        values = self.sigma_data if isinstance(self.sigma_data, tuple) else (self.sigma_data,)
        if not values or not all(math.isfinite(v) and v > 0 for v in values):
            raise ValueError(
                f"EDMPreconditionedDenoiser.sigma_data is {self.sigma_data!r}; expected a "
                f"positive number or a non-empty tuple of them (one per channel)"
            )
        if self.noise_input not in NOISE_INPUTS:
            raise ValueError(
                f"EDMPreconditionedDenoiser.noise_input is {self.noise_input!r}; expected one "
                f"of {NOISE_INPUTS}"
            )

    def __call__(self, x_t: State, sigma: Float[Array, ""], cond: PyTree) -> State:
        c_skip, c_out, c_in, c_noise = self.preconditioning(x_t, sigma)
        return c_skip * x_t + c_out * self.network(c_in * x_t, c_noise, cond)

    def preconditioning(self, x_t: State, sigma: Float[ArrayLike, ""]) -> tuple[Array, ...]:
        r""":math:`(c_\text{skip}, c_\text{out}, c_\text{in}, c_\text{noise})` at ``sigma``,
        broadcastable against ``x_t`` (per channel with per-channel :math:`\sigma_\text{data}`)."""
        sigma = jnp.asarray(sigma, dtype=x_t.dtype)
        sigma_data = self.sigma_data_like(x_t)
        sigma_data_sq = sigma_data**2
        total_var = sigma**2 + sigma_data_sq
        c_skip = sigma_data_sq / total_var
        # One explicit rsqrt, so that every layout rounds alike: XLA rewrites x / sqrt(v) into
        # x * rsqrt(v) only while the sqrt has one user, and a partitioned (shard_map)
        # program merges two sqrts before that rewrite; rsqrt is not correctly rounded on
        # CPU, so the two programs would differ by an ulp.
        c_in = jax.lax.rsqrt(total_var)
        c_out = sigma * sigma_data * c_in
        c_noise = jnp.log(sigma) / 4.0 if self.noise_input == "quarter_log_sigma" else sigma
        return c_skip, c_out, c_in, c_noise

    def sigma_data_like(self, x_t: State) -> Float[Array, "..."]:
        r""":math:`\sigma_\text{data}` broadcastable against ``x_t`` (a scalar, or one value
        per leading-axis entry)."""
        if not isinstance(self.sigma_data, tuple):
            return jnp.asarray(self.sigma_data, dtype=x_t.dtype)
        if x_t.ndim == 0 or x_t.shape[0] != len(self.sigma_data):
            raise ValueError(
                f"EDMPreconditionedDenoiser: sigma_data has {len(self.sigma_data)} per-channel "
                f"values, but the state has shape {x_t.shape}; expected {len(self.sigma_data)} "
                f"entries on its leading (channel) axis"
            )
        values = jnp.asarray(self.sigma_data, dtype=x_t.dtype)
        return values.reshape(-1, *([1] * (x_t.ndim - 1)))


class StandardNormalDenoiser(AbstractDenoiser):
    r"""Exact denoiser of :math:`z \sim \mathcal N(0, I)`, for a latent already whitened.

    .. math::
        D(z_\sigma, \sigma) = \mathbb E[z \mid z_\sigma] = \frac{z_\sigma}{1 + \sigma^2},
        \qquad \mathbb V[z \mid z_\sigma] = \frac{\sigma^2}{1 + \sigma^2} I.

    With an affine latent-to-frame map :math:`x = b + A z` it is the exact denoiser of the
    Gaussian :math:`\mathcal N(b, A A^\top)` seen through that map, so MMPS with it is exact
    (its Tweedie covariance is :math:`A\,\mathbb V[z\mid z_\sigma]A^\top`); the conditioning
    is unused (the hybrid emulator's residual, :mod:`filtrax.emulators.hybrid`).
    """

    def __call__(self, x_t: State, sigma: Float[ArrayLike, ""], cond: PyTree) -> State:
        return x_t / (1 + jnp.asarray(sigma, x_t.dtype) ** 2)


class GaussianDenoiser(AbstractDenoiser):
    r"""Exact denoiser of a Gaussian prior :math:`x \sim \mathcal N(\mu, Q)`, with ``cond = μ``.

    .. math::
        D(x_\sigma) = \mu + Q (Q + \sigma^2 I)^{-1} (x_\sigma - \mu), \qquad
        \mathbb V[x\mid x_\sigma] = \sigma^2 \partial D/\partial x_\sigma
            = \sigma^2 Q (Q + \sigma^2 I)^{-1} = (Q^{-1} + \sigma^{-2} I)^{-1}.

    ``Q = U \operatorname{diag}(\lambda) U^\top`` is diagonalised once, so a call costs two
    matrix-vector products: :math:`D = \mu + U \operatorname{diag}(\lambda/(\lambda+\sigma^2))
    U^\top (x_\sigma - \mu)`. States of any shape are flattened (C order) against ``Q``.

    The prior mean is passed as the conditioning so that one denoiser serves every
    particle of a linear-Gaussian transition ``x' ~ N(A x, Q)`` (``cond = A x``).

    Attributes:
        eigenvalues: the eigenvalues ``λ`` of ``Q`` (clipped at 0).
        eigenvectors: the orthonormal eigenvectors ``U`` of ``Q``, as columns.

    References:
        Savary, Rozet & Louppe (2025), the exactness test bed.
    """

    eigenvalues: Float[Array, " d"]
    eigenvectors: Float[Array, "d d"]

    def __init__(self, covariance: Float[ArrayLike, "d d"]):
        covariance = jnp.asarray(covariance)
        shape = covariance.shape
        if covariance.ndim != 2 or shape[0] != shape[1]:
            raise ValueError(f"GaussianDenoiser.covariance must be square (d, d), got {shape}")
        eigenvalues, eigenvectors = jnp.linalg.eigh(0.5 * (covariance + covariance.T))
        self.eigenvalues = jnp.maximum(eigenvalues, 0.0)
        self.eigenvectors = eigenvectors

    @property
    def covariance(self) -> Float[Array, "d d"]:
        """``Q`` reassembled from its eigendecomposition."""
        return (self.eigenvectors * self.eigenvalues[None, :]) @ self.eigenvectors.T

    def _shrinkage(self, sigma: Float[ArrayLike, ""], dtype: DTypeLike) -> Float[Array, " d"]:
        eigenvalues = self.eigenvalues.astype(dtype)
        return eigenvalues / (eigenvalues + jnp.asarray(sigma, dtype) ** 2)

    def __call__(self, x_t: State, sigma: Float[Array, ""], cond: State) -> State:
        prior_mean = jnp.asarray(cond, dtype=x_t.dtype)
        if prior_mean.shape != x_t.shape:
            raise ValueError(
                f"GaussianDenoiser: cond (the prior mean) has shape {prior_mean.shape}, "
                f"expected the state shape {x_t.shape}"
            )
        if x_t.size != self.eigenvalues.shape[0]:
            raise ValueError(
                f"GaussianDenoiser: state has {x_t.size} entries, covariance is "
                f"{self.eigenvalues.shape[0]} x {self.eigenvalues.shape[0]}"
            )
        U = self.eigenvectors.astype(x_t.dtype)
        deviation = (x_t - prior_mean).reshape(-1)
        update = U @ (self._shrinkage(sigma, x_t.dtype) * (U.T @ deviation))
        return prior_mean + update.reshape(x_t.shape)

    def tweedie_covariance(self, sigma: Float[ArrayLike, ""]) -> Float[Array, "d d"]:
        """``V[x | x_σ] = σ² Q (Q + σ² I)^{-1}`` in closed form (flattened state)."""
        dtype = self.eigenvectors.dtype
        variances = jnp.asarray(sigma, dtype) ** 2 * self._shrinkage(sigma, dtype)
        return (self.eigenvectors * variances[None, :]) @ self.eigenvectors.T
