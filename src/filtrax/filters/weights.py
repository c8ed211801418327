r"""Approximations of the FA-APF's predictive weight :math:`p(y^{k+1}\mid s^k)`.

The optimal proposal makes the incremental weight the predictive likelihood

.. math:: p(y \mid s^k) = \int p(y\mid x)\,p(x\mid s^k)\,\mathrm dx,

which a diffusion emulator does not give in closed form. Both approximations below use
one denoiser evaluation at the highest noise level :math:`\sigma_1`, where
:math:`D(\sigma_1\varepsilon; \sigma_1, c) \approx \mathbb E[z\mid c]` and
:math:`\sigma_1^2 J(\sigma_1) \approx \operatorname{Cov}[z\mid c]` (Tweedie's formula; Efron 2011):

* :class:`DiracPredictiveWeight` (the paper): :math:`\mathcal N(y;\, h(\Phi(\hat z)),\, R)`.
  It ignores the forecast spread, so its weights are too sharp; tempering compensates.
* :class:`MomentMatchedPredictiveWeight` (ours): :math:`\mathcal N(y;\, h(\Phi(\hat z)),\,
  R + \sigma_1^2 G J G^\top)` with the Tweedie covariance, the quadratic form solved by CG.
  In the linear-Gaussian model it is exact as :math:`\sigma_1 \to \infty`, so α = 1 is right.

References:
    Savary, Rozet & Louppe (2025), arXiv:2509.18811 (the Dirac approximation).
    Moment matching: the ICML 2026 follow-up, arXiv:2605.20028.
"""

from __future__ import annotations

import abc
import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, PyTree

from .._typing import Key, Observation, Scalar, is_traced
from ..emulators._base import AbstractEmulator
from ..guidance.linear_solvers import conjugate_gradient, safeguarded_curvature
from ..observations.model import ObservationModel, observation_mask


class AbstractPredictiveWeight(eqx.Module):
    """``log p̂(y | s)`` for one particle state ``s``."""

    @abc.abstractmethod
    def call_counts(self, num_observations: int) -> tuple[int, int]:
        """Denoiser ``(forward evaluations, VJPs)`` per particle."""

    @abc.abstractmethod
    def log_likelihood(
        self,
        state: PyTree,
        y: Observation,
        observation_model: ObservationModel,
        emulator: AbstractEmulator,
        *,
        key: Key,
    ) -> Scalar:
        """The approximate predictive log-likelihood of ``y`` for this particle."""

    @property
    def splits_per_observation(self) -> bool:
        """Whether the log-likelihood is ``log N(y; h(Φ(ẑ)), R)`` of a predicted frame, a sum
        over observations (block-local selection and inflation need it)."""
        return False

    def predicted_frame(self, state: PyTree, emulator: AbstractEmulator, *, key: Key):
        """The predicted frame ``Φ(ẑ)``, when :attr:`splits_per_observation`."""
        raise NotImplementedError(f"{type(self).__name__} does not split per observation")


def _check_sigma_max(sigma_max: Array, owner: str) -> None:
    if is_traced(sigma_max):
        return
    value = float(sigma_max) if jnp.shape(sigma_max) == () else math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{owner}.sigma_max must be finite and > 0, got {sigma_max.tolist()}")


class DiracPredictiveWeight(AbstractPredictiveWeight):
    """``N(y; h(Φ(ẑ)), R)`` with ``ẑ`` the mean of ``D(σ_max ε_m)`` over ``num_noise_draws``.

    Attributes:
        sigma_max: the noise level of the expectation (88: GenCast's training maximum).
        num_noise_draws: ``M``, the number of noise draws averaged (1 in the paper).
    """

    # An array leaf: sweeping it does not recompile the cycle.
    sigma_max: Scalar = eqx.field(default=88.0, converter=jnp.asarray)
    num_noise_draws: int = eqx.field(static=True, default=1)

    def __check_init__(self) -> None:
        _check_sigma_max(self.sigma_max, "DiracPredictiveWeight")
        if int(self.num_noise_draws) != self.num_noise_draws or self.num_noise_draws < 1:
            raise ValueError(
                f"DiracPredictiveWeight.num_noise_draws must be an integer >= 1, "
                f"got {self.num_noise_draws}"
            )

    def call_counts(self, num_observations: int) -> tuple[int, int]:
        return self.num_noise_draws, 0

    @property
    def splits_per_observation(self) -> bool:
        return True

    def predicted_frame(self, state, emulator, *, key):
        """``Φ(ẑ)``: the frame of the one-call (or ``M``-call) conditional mean."""
        cond = emulator.condition(state)
        template = emulator.latent_template(state)
        sigma = self.sigma_max.astype(template.dtype)

        def denoised(m):
            eps = emulator.noise(jax.random.fold_in(key, m), template)
            return emulator.denoiser(sigma * eps, sigma, cond)

        z_mean = jnp.mean(jax.vmap(denoised)(jnp.arange(self.num_noise_draws)), axis=0)
        return emulator.latent_to_frame(z_mean, state)

    def log_likelihood(self, state, y, observation_model, emulator, *, key):
        return observation_model.log_likelihood(y, self.predicted_frame(state, emulator, key=key))


class MomentMatchedPredictiveWeight(AbstractPredictiveWeight):
    """``N(y; h(Φ(ẑ)), R + σ² G J Gᵀ)`` at ``σ = sigma_max``: tuning-free, use it with α = 1.

    The quadratic form ``rᵀ C⁻¹ r`` uses ``cg_iterations`` CG steps (matvecs are VJPs of the
    one stored linearisation), with the safeguarded curvature of
    :class:`~filtrax.guidance.guided.MMPSGuidance` (inactive for an exact
    denoiser). The log-determinant of ``C`` is dropped by default: it is the
    same for every particle when the Tweedie covariance does not depend on the particle
    (exactly so in the linear-Gaussian model), and then cancels in the normalised weights.
    With ``dense_log_determinant`` it is computed exactly from the ``obs × obs`` matrix,
    built with one VJP per observation: affordable only for small observation sets, and
    needed for an exact log-evidence.

    Attributes:
        sigma_max: the noise level of the Tweedie moments.
        cg_iterations: ``K``, the CG iterations for the quadratic form.
        dense_log_determinant: include ``log det C`` (``obs`` extra VJPs).
    """

    # An array leaf: sweeping it does not recompile the cycle.
    sigma_max: Scalar = eqx.field(default=88.0, converter=jnp.asarray)
    cg_iterations: int = eqx.field(static=True, default=4)
    dense_log_determinant: bool = eqx.field(static=True, default=False)

    def __check_init__(self) -> None:
        _check_sigma_max(self.sigma_max, "MomentMatchedPredictiveWeight")
        if int(self.cg_iterations) != self.cg_iterations or self.cg_iterations < 1:
            raise ValueError(
                f"MomentMatchedPredictiveWeight.cg_iterations must be an integer >= 1, "
                f"got {self.cg_iterations}"
            )

    def call_counts(self, num_observations: int) -> tuple[int, int]:
        extra = num_observations if self.dense_log_determinant else 0
        return 1, self.cg_iterations + extra

    def log_likelihood(self, state, y, observation_model, emulator, *, key):
        cond = emulator.condition(state)
        template = emulator.latent_template(state)
        sigma = self.sigma_max.astype(template.dtype)
        eps = emulator.noise(key, template)
        z_hat, denoiser_vjp = jax.vjp(lambda z: emulator.denoiser(z, sigma, cond), sigma * eps)

        def predict(z):
            return observation_model.predict(emulator.latent_to_frame(z, state))

        y_pred, observe_linear = jax.linearize(predict, z_hat)
        observe_transpose = jax.linear_transpose(observe_linear, z_hat)
        y = y.astype(y_pred.dtype)
        mask = observation_mask(y)
        variance = observation_model.noise_variance.astype(y_pred.dtype)
        residual = jnp.where(mask, y - y_pred, 0.0)

        def matvec(v):
            v = jnp.where(mask, v, 0.0)
            (v_latent,) = observe_transpose(v)
            (v_noisy,) = denoiser_vjp(v_latent)
            covariance_term = sigma**2 * observe_linear(v_noisy)
            return jnp.where(mask, variance * v + covariance_term, v)

        def curvature(p, Ap):
            # As in MMPS guidance: a learned denoiser's Jacobian can break C ⪰ 0.
            return safeguarded_curvature(p, Ap, jnp.where(mask, variance, 1.0))

        solution = conjugate_gradient(matvec, residual, self.cg_iterations, curvature)
        quadratic = jnp.vdot(residual, solution)
        if self.dense_log_determinant:
            n = residual.shape[0]
            columns = jax.vmap(matvec)(jnp.eye(n, dtype=residual.dtype))
            matrix = 0.5 * (columns + columns.T)
            _, log_det = jnp.linalg.slogdet(matrix)  # masked rows are identity: log 1 = 0
        else:
            log_det = jnp.sum(jnp.where(mask, jnp.log(variance), 0.0))
        num_observed = jnp.sum(mask).astype(residual.dtype)
        return -0.5 * (quadratic + log_det + num_observed * math.log(2.0 * math.pi))
