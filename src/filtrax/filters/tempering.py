r"""Inflation of the predictive weights by a tempering exponent α.

With Gaussian log-likelihoods :math:`\ell_i`, inflating the observation variance
:math:`R \to R/\alpha` in the weights is the same as tempering,
:math:`w_i(\alpha) = \operatorname{softmax}(\alpha\ell)_i` (the normalising constants are
common to all particles). :math:`\mathrm{ESS}(\alpha)` is non-increasing in α, with
:math:`\mathrm{ESS}(0) = N`, so a one-dimensional search finds the α that puts the ESS
in a target band. α is re-chosen every cycle; the filter is then biased (not consistent
as N → ∞) but does not collapse.

References:
    Savary, Rozet & Louppe (2025), the FA-APF inflation.
    Jasra, Stephens, Doucet & Tsagaris (2011), adaptive tempering for SMC.
"""

from __future__ import annotations

import abc
import math

import equinox as eqx
import jax
import jax.numpy as jnp

from .._typing import LogWeights, Scalar, is_traced
from ..resampling import effective_sample_size


class AbstractTempering(eqx.Module):
    """Chooses the exponent α ∈ (0, 1] applied to the log-likelihoods of one cycle."""

    @abc.abstractmethod
    def exponent(self, log_likelihoods: LogWeights, log_weights: LogWeights) -> Scalar:
        """α for these log-likelihoods, given the particles' current log-weights."""


class FixedTempering(AbstractTempering):
    """A fixed α (1 means no tempering)."""

    alpha: Scalar = eqx.field(default=1.0, converter=jnp.asarray)

    def __check_init__(self) -> None:
        if not is_traced(self.alpha) and not 0 <= float(self.alpha) <= 1:
            raise ValueError(f"FixedTempering.alpha must lie in [0, 1], got {float(self.alpha)}")

    def exponent(self, log_likelihoods, log_weights):
        return self.alpha.astype(log_likelihoods.dtype)


class ESSBandTempering(AbstractTempering):
    """α chosen by bisection on log α so that ESS(α) lies in ``[lower·N, upper·N]``.

    If α = 1 already gives ``ESS ≥ lower·N`` no inflation is applied. Otherwise bisection
    on ``log α ∈ [log min_alpha, 0]`` runs for ``iterations`` steps on the N scalars
    ``ℓ_i`` (no model call). If the band is never hit (ESS can jump across a narrow band),
    the largest α tried with ``ESS > upper·N`` is used, which errs towards diversity.

    Attributes:
        lower, upper: the band as fractions of N (default [0.2, 0.25]).
        min_alpha: the smallest α considered (1e-12, as in the authors' code).
        iterations: the number of bisection steps (50 reach a 1e-12 relative width).
    """

    # The band is made of array leaves: sweeping it does not recompile the cycle.
    lower: Scalar = eqx.field(default=0.2, converter=jnp.asarray)
    upper: Scalar = eqx.field(default=0.25, converter=jnp.asarray)
    min_alpha: float = eqx.field(static=True, default=1e-12)
    iterations: int = eqx.field(static=True, default=50)

    def __check_init__(self) -> None:
        if is_traced(self.lower) or is_traced(self.upper):
            return
        lower, upper = float(self.lower), float(self.upper)
        if not 0 < lower <= upper <= 1:
            raise ValueError(
                f"ESSBandTempering needs 0 < lower <= upper <= 1, got lower={lower}, upper={upper}"
            )
        if not 0 < self.min_alpha < 1:
            raise ValueError(f"ESSBandTempering.min_alpha must lie in (0, 1), got {self.min_alpha}")
        if self.iterations < 1:
            raise ValueError(f"ESSBandTempering.iterations must be >= 1, got {self.iterations}")

    def exponent(self, log_likelihoods, log_weights):
        n = log_likelihoods.shape[0]
        dtype = log_likelihoods.dtype
        lower, upper = self.lower.astype(dtype) * n, self.upper.astype(dtype) * n

        def ess(log_alpha):
            return effective_sample_size(log_weights + jnp.exp(log_alpha) * log_likelihoods)

        def bisect(_, carry):
            lo, hi, found = carry
            mid = 0.5 * (lo + hi)
            value = ess(mid)
            in_band = (value >= lower) & (value <= upper)
            lo_new = jnp.where(found, lo, jnp.where(value > upper, mid, lo))
            hi_new = jnp.where(found, hi, jnp.where(value < lower, mid, hi))
            # Once in the band, freeze the bracket on the hit: lo = hi = mid.
            lo_new = jnp.where(in_band & ~found, mid, lo_new)
            hi_new = jnp.where(in_band & ~found, mid, hi_new)
            return lo_new, hi_new, found | in_band

        init = (
            jnp.asarray(math.log(self.min_alpha), dtype),
            jnp.zeros((), dtype),
            jnp.bool_(False),
        )
        lo, _, _ = jax.lax.fori_loop(0, self.iterations, bisect, init)
        return jnp.where(ess(jnp.zeros((), dtype)) >= lower, 1.0, jnp.exp(lo)).astype(dtype)
