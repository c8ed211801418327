r"""Guidance as denoiser wrappers: DPS, SDA and MMPS.

By Bayes,
:math:`\nabla\log p(x_\sigma\mid y) = \nabla\log p(x_\sigma) + \nabla\log p(y\mid x_\sigma)`,
and by Tweedie the posterior denoiser is

.. math:: D_\text{post}(x_\sigma) = \hat x + \sigma^2 \nabla_{x_\sigma}\log \hat p(y\mid x_\sigma),
   \qquad \hat x = D(x_\sigma, \sigma, c).

Each guidance approximates :math:`p(y\mid x_\sigma) \approx \mathcal N(y;\, h(\hat x),\, C_\sigma)`
and, with :math:`C_\sigma` held constant and :math:`h` linearised at :math:`\hat x`
(Jacobian :math:`G`),

.. math:: \nabla_{x_\sigma}\log\hat p(y\mid x_\sigma) = J^\top G^\top u, \qquad
   C_\sigma u = y - h(\hat x), \qquad J = \partial\hat x/\partial x_\sigma .

The methods differ only in :math:`C_\sigma` (``R = diag(r)`` is the observation noise):

* DPS: :math:`C = R` (a Dirac approximation of :math:`p(x\mid x_\sigma)`), times a scale ζ.
* SDA: :math:`C = R + \gamma\sigma^2 I`.
* MMPS: :math:`C = R + G\,\mathbb V[x\mid x_\sigma]\,G^\top = R + \sigma^2 G J G^\top`
  (Tweedie covariance), solved matrix-free with a few Krylov iterations whose matvecs are
  VJPs of the *one* stored linearisation. Using :math:`J^\top` for :math:`J` relies on the
  symmetry of the ideal denoiser's Jacobian (:math:`\sigma^2 J` is a covariance).

Because every guidance is a wrapper with the denoiser interface, it works with every
sampler. A NaN in ``y`` marks a missing value (see :mod:`filtrax.observations.model`).

References:
    Chung et al. (2023), DPS, arXiv:2209.14687.
    Rozet & Louppe (2023), SDA, arXiv:2306.10574.
    Rozet, Andry, Lanusse & Louppe (2024), MMPS, arXiv:2405.13712.
"""

from __future__ import annotations

import abc
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PyTree

from .._typing import Observation, ObservationMask, State, is_traced
from ..diffusion.denoisers import AbstractDenoiser
from ..observations.model import ObservationModel, observation_mask
from .linear_solvers import (
    MATVECS_PER_ITERATION,
    SOLVERS,
    conjugate_gradient,
    safeguarded_curvature,
)

CovarianceMatVec = Callable[[Observation], Observation]


class AbstractGuidance(eqx.Module):
    """How ``u = C_σ^{-1} (y − h(x̂))`` is formed; see the module docstring."""

    @property
    @abc.abstractmethod
    def backward_calls(self) -> int:
        """Denoiser VJPs per posterior-denoiser call (the score itself included)."""

    @abc.abstractmethod
    def solve(
        self,
        residual: Observation,
        noise_variance: Observation,
        mask: ObservationMask,
        sigma: Float[Array, ""],
        covariance_matvec: CovarianceMatVec,
    ) -> Observation:
        """Return ``u`` (zero on masked entries). ``covariance_matvec(v) = σ² G J Gᵀ v``."""


class DPSGuidance(AbstractGuidance):
    """DPS with the Gaussian likelihood: ``C = R``, score scaled by ``scale`` (ζ)."""

    scale: Float[Array, ""] = eqx.field(default=1.0, converter=jnp.asarray)

    @property
    def backward_calls(self) -> int:
        return 1

    def solve(self, residual, noise_variance, mask, sigma, covariance_matvec):
        return jnp.where(mask, self.scale.astype(residual.dtype) * residual / noise_variance, 0.0)


class SDAGuidance(AbstractGuidance):
    """SDA: ``C = R + γ σ² I`` (Rozet & Louppe 2023, with Γ = γ I)."""

    gamma: Float[Array, ""] = eqx.field(default=1e-2, converter=jnp.asarray)

    def __check_init__(self) -> None:
        if not is_traced(self.gamma) and not float(self.gamma) >= 0:
            raise ValueError(f"SDAGuidance.gamma must be >= 0, got {float(self.gamma)}")

    @property
    def backward_calls(self) -> int:
        return 1

    def solve(self, residual, noise_variance, mask, sigma, covariance_matvec):
        variance = noise_variance + self.gamma.astype(residual.dtype) * sigma**2
        return jnp.where(mask, residual / variance, 0.0)


class MMPSGuidance(AbstractGuidance):
    """MMPS: ``C = R + σ² G J Gᵀ``, solved with a fixed number of Krylov iterations from 0.

    The Tweedie covariance ``σ² J`` is symmetric positive semi-definite for the ideal
    denoiser, but a *learned* denoiser's Jacobian need not be: the system can then lose
    definiteness at some noise levels and CG divides by a vanishing or negative curvature,
    which sends a particle far off (measured on the Lorenz-96 emulator: guided proposals
    with standard deviations of ~100 where the prior's is 0.05). CG therefore measures the
    curvature of ``R + C`` along ``p`` as ``pᵀRp + |pᵀCp|`` (:func:`safeguarded_curvature`):
    for a valid covariance (``pᵀCp ≥ 0``, the exact denoiser) nothing changes, and an
    indefinite ``C`` can only shorten a step, by its own magnitude. BiCGSTAB and GMRES run
    unguarded.

    Attributes:
        iterations: ``K``, the number of solver iterations (≥ 1).
        solver: ``"cg"`` (default, ``K`` VJPs), ``"bicgstab"`` (``2K``) or ``"gmres"`` (``K``).
    """

    iterations: int = eqx.field(static=True, default=2)
    solver: str = eqx.field(static=True, default="cg")

    def __check_init__(self) -> None:
        if self.solver not in SOLVERS:
            raise ValueError(
                f"MMPSGuidance.solver is {self.solver!r}; expected one of {sorted(SOLVERS)}"
            )
        if int(self.iterations) != self.iterations or self.iterations < 1:
            raise ValueError(
                f"MMPSGuidance.iterations must be an integer >= 1, got {self.iterations}"
            )

    @property
    def backward_calls(self) -> int:
        return MATVECS_PER_ITERATION[self.solver] * self.iterations + 1

    def solve(self, residual, noise_variance, mask, sigma, covariance_matvec):
        def matvec(v):
            # Masked rows become the identity with a zero right-hand side: the same as
            # deleting the unobserved entries from the system.
            v_obs = jnp.where(mask, v, 0.0)
            return jnp.where(mask, noise_variance * v_obs + covariance_matvec(v_obs), v)

        def curvature(p, Ap):
            return safeguarded_curvature(p, Ap, jnp.where(mask, noise_variance, 1.0))

        rhs = jnp.where(mask, residual, 0.0)
        if self.solver == "cg":
            return conjugate_gradient(matvec, rhs, self.iterations, curvature)
        return SOLVERS[self.solver](matvec, rhs, self.iterations)


class GuidedDenoiser(AbstractDenoiser):
    """A posterior denoiser ``D_post(x_σ, σ, c) ≈ E[x | x_σ, c, y]``.

    Attributes:
        denoiser: the prior denoiser.
        guidance: DPS, SDA or MMPS.
        observation_model: the observation model (operator ``h`` on the *physical* state and noise).
        y: the observation vector; NaN marks a missing value.
        latent_to_state: maps the diffusion variable to the state ``h`` acts on (GenCast's
            affine ``Φ_c``: normalised residual → physical fields). Identity by default.
    """

    denoiser: AbstractDenoiser
    guidance: AbstractGuidance
    observation_model: ObservationModel
    y: Observation
    latent_to_state: Callable[[State], State] | None = None

    def __check_init__(self) -> None:
        if jnp.shape(self.y) != (self.observation_model.num_observations,):
            raise ValueError(
                f"GuidedDenoiser.y has shape {jnp.shape(self.y)}, expected "
                f"({self.observation_model.num_observations},)"
            )
        if not is_traced(self.y):
            self.observation_model.check_observations(self.y, name="GuidedDenoiser.y")

    def _predict(self, x: State) -> Observation:
        state = x if self.latent_to_state is None else self.latent_to_state(x)
        return self.observation_model.predict(state)

    def __call__(self, x_t: State, sigma: Float[ArrayLike, ""], cond: PyTree) -> State:
        sigma = jnp.asarray(sigma, x_t.dtype)
        # One stored linearisation of the network, reused for every matvec and the score.
        x_hat, denoiser_vjp = jax.vjp(lambda x: self.denoiser(x, sigma, cond), x_t)
        y_pred, observe_linear = jax.linearize(self._predict, x_hat)
        observe_transpose = jax.linear_transpose(observe_linear, x_hat)

        def pull_back(v: Observation) -> State:
            """``Jᵀ Gᵀ v``: one VJP through the denoiser."""
            (v_state,) = observe_transpose(v)
            (v_noisy,) = denoiser_vjp(v_state)
            return v_noisy

        def covariance_matvec(v: Observation) -> Observation:
            return sigma**2 * observe_linear(pull_back(v))

        y = self.y.astype(y_pred.dtype)
        mask = observation_mask(y)
        residual = jnp.where(mask, y - y_pred, 0.0)
        variance = self.observation_model.noise_variance.astype(y_pred.dtype)
        u = self.guidance.solve(residual, variance, mask, sigma, covariance_matvec)
        # The covariance C_σ is treated as a constant: no gradient flows through the solve.
        u = jax.lax.stop_gradient(u)
        return x_hat + sigma**2 * pull_back(u)
