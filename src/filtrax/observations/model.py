r"""The Gaussian observation model :math:`y = h(x) + v`,
:math:`v \sim \mathcal N(0, \operatorname{diag} r)`.

**Missing values.** A NaN in ``y`` means "not observed". Masked entries contribute
nothing: the log-likelihood sums over observed entries only, and guidance solves its
linear systems on the observed block (masked rows are replaced by the identity with a
zero right-hand side, which is the same as deleting them).
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .._typing import Key, Observation, ObservationMask, Scalar, State, is_traced
from .operators import AbstractObservationOperator


def observation_mask(y: Observation) -> ObservationMask:
    """True where ``y`` is observed (finite)."""
    return jnp.isfinite(y)


class ObservationModel(eqx.Module):
    """An observation operator plus diagonal Gaussian noise.

    Attributes:
        operator: ``h``, mapping one state to ``num_observations`` predictions.
        noise_variance: the noise variances ``r``, shape ``(num_observations,)`` (a scalar is
            broadcast). They must be finite and positive.
    """

    operator: AbstractObservationOperator
    noise_variance: Float[Array, " obs"]

    def __init__(self, operator: AbstractObservationOperator, noise_variance: ArrayLike):
        if not isinstance(operator, AbstractObservationOperator):
            raise ValueError(
                "ObservationModel.operator must be an AbstractObservationOperator, got "
                f"{type(operator).__name__}"
            )
        self.operator = operator
        n = operator.num_observations
        variance = jnp.asarray(noise_variance)
        if variance.ndim == 0:
            variance = jnp.full((n,), variance)
        if variance.shape != (n,):
            raise ValueError(
                f"ObservationModel.noise_variance has shape {variance.shape}, expected ({n},) "
                f"(one variance per observation) or a scalar"
            )
        if not is_traced(variance):
            host = np.asarray(variance)
            bad = np.flatnonzero(~(np.isfinite(host) & (host > 0)))
            if bad.size:
                raise ValueError(
                    f"ObservationModel.noise_variance must be finite and > 0; entries "
                    f"{bad[:5].tolist()} are {host[bad[:5]].tolist()}"
                )
        self.noise_variance = variance

    @property
    def num_observations(self) -> int:
        return self.operator.num_observations

    @property
    def state_shape(self) -> tuple[int, ...]:
        return tuple(self.operator.state_shape)

    def predict(self, x: State) -> Observation:
        return self.operator(x)

    def reads_channels(self, channels) -> np.ndarray:
        """Which observations read the given channels of a ``(channel, ...)`` frame: those
        whose value of the indicator frame (1 in ``channels``, 0 elsewhere) is 1. A point
        selection, or an interpolation within one channel, gives exactly 1 there."""
        indicator = np.zeros(self.state_shape, np.float32)
        indicator[list(channels)] = 1.0
        return np.isclose(np.asarray(self.predict(jnp.asarray(indicator))), 1.0)

    def with_error_inflation(self, factor: float) -> ObservationModel:
        r"""This model with every error std multiplied by ``factor`` (variances by
        ``factor²``): observation-error ("R") inflation, a standard guard of ensemble filters
        against over-fitting observations with a sampled or approximate prior covariance
        (Houtekamer & Zhang 2016, Mon. Wea. Rev. 144, 4489–4532). A filter given the
        result assumes the larger error; the observations themselves are unchanged."""
        if not (math.isfinite(factor) and factor > 0):
            raise ValueError(
                f"ObservationModel.with_error_inflation: factor = {factor!r}; expected a "
                f"finite value > 0"
            )
        if factor == 1.0:
            return self
        return ObservationModel(self.operator, self.noise_variance * factor**2)

    def log_likelihood_terms(self, y: Observation, y_pred: Observation) -> Observation:
        """``log N(y_j; y_pred_j, r_j)`` per observation, 0 where ``y_j`` is not observed."""
        mask = observation_mask(y)
        variance = self.noise_variance.astype(y_pred.dtype)
        residual = jnp.where(mask, y - y_pred, 0.0)
        terms = residual**2 / variance + jnp.log(2.0 * math.pi * variance)
        return -0.5 * jnp.where(mask, terms, 0.0)

    def log_likelihood_of_prediction(self, y: Observation, y_pred: Observation) -> Scalar:
        """``log N(y; y_pred, diag r)`` over the observed (finite) entries of ``y``."""
        return jnp.sum(self.log_likelihood_terms(y, y_pred))

    def log_likelihood(self, y: Observation, x: State) -> Scalar:
        """``log p(y | x)`` over the observed entries of ``y``."""
        return self.log_likelihood_of_prediction(y, self.predict(x))

    def sample(self, x: State, *, key: Key) -> Observation:
        """Draw ``y ~ N(h(x), diag r)``."""
        y_pred = self.predict(x)
        std = jnp.sqrt(self.noise_variance.astype(y_pred.dtype))
        return y_pred + std * jax.random.normal(key, y_pred.shape, y_pred.dtype)

    def _check_magnitude(self, y: np.ndarray, name: str) -> None:
        """The Gaussian log-likelihood squares ``y / σ``: a value whose square overflows the
        working precision (a unit mistake, mostly) would end as a non-finite weight."""
        dtype = y.dtype if np.issubdtype(y.dtype, np.floating) else np.dtype(np.float32)
        limit = np.sqrt(np.finfo(dtype).max) / 1e3  # room for the misfit's other terms
        std = np.sqrt(np.broadcast_to(np.asarray(self.noise_variance, np.float64), y.shape))
        with np.errstate(over="ignore", invalid="ignore"):
            scaled = np.abs(np.asarray(y, np.float64)) / std
        too_large = np.nan_to_num(scaled, nan=0.0) > limit
        if too_large.any():
            where = np.argwhere(too_large)[0]
            raise ValueError(
                f"{name}{where.tolist()} = {float(y[tuple(where)]):g} is "
                f"{float(scaled[tuple(where)]):.3g} error stds, too large for {dtype} "
                f"arithmetic (at most {limit:.3g}): its squared misfit would overflow; check "
                f"its units"
            )

    def check_observations(
        self, observations: ArrayLike, *, name: str = "y", require_observed: bool = True
    ) -> None:
        """Raise ``ValueError`` unless ``y`` has shape ``(..., num_observations)``.

        With ``require_observed``, each observation vector (the last axis) must have at
        least one finite entry: guidance on an empty observation set is meaningless.
        Infinite values are rejected (only NaN marks a missing value).
        """
        y = np.asarray(observations)
        n = self.num_observations
        if y.ndim < 1 or y.shape[-1] != n:
            raise ValueError(f"{name} has shape {y.shape}, expected (..., {n}) observations")
        if np.isinf(y).any():
            where = np.argwhere(np.isinf(y))[0].tolist()
            raise ValueError(f"{name} has an infinite value at index {where}; use NaN for missing")
        self._check_magnitude(y, name)
        if require_observed:
            empty = ~np.isfinite(y).any(axis=-1)
            if empty.any():
                where = np.argwhere(empty)[0].tolist() if y.ndim > 1 else []
                raise ValueError(
                    f"{name}{where if where else ''} has no observed (finite) entry: an empty "
                    f"observation set cannot guide the sampler"
                )
