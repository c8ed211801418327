r"""Multiplicative inflation of the particle filters' forecast ensemble.

A learned emulator whose spread under-represents its error makes every ensemble filter
over-confident: the forecast spread is too small, the weights (or the Kalman gain) pull too
little towards the observations, and the ensemble loses the truth. Multiplicative inflation
widens the forecast about its mean,

.. math:: x_i \leftarrow \bar x + \lambda\,(x_i - \bar x), \qquad \lambda \ge 1,

as the EnKF does (Anderson & Anderson 1999). In the particle filters it acts on the
ensemble whose predictions are weighted: the particles at :math:`k` for the FA-APF (its
weights predict :math:`y^{k+1}` from them), the propagated particles for the bootstrap PF.
The predicted observations :math:`\hat y_i` are widened by the same λ about their mean,
which is exact for a linear prediction and costs no model call.

**Innovation-based λ** (:class:`InnovationInflation`, re-chosen every cycle like α). With
:math:`d = y - \overline{\hat y}` over the :math:`m` observed entries, a forecast ensemble
that is right on average satisfies
:math:`\mathbb E\,d^\top d = \lambda^2 \sum_j \operatorname{var}_i \hat y_{ij} + \sum_j r_j`
(Desroziers, Berre, Chapnik & Poli 2005; Li, Kalnay & Miyoshi 2009), so

.. math:: \lambda^2 = \frac{d^\top d - \sum_j r_j}{\sum_j \operatorname{var}_i \hat y_{ij}},

clipped to ``[minimum, maximum]``. A single cycle's estimate is noisy (relative standard
deviation about :math:`\sqrt{2/m}`); it is used as is, because the point is to react in the
cycle where the ensemble starts to lose the truth.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PyTree

from .._typing import Observation, Scalar, is_traced, tunable_leaf
from ..observations.model import ObservationModel, observation_mask


def inflate(particles: PyTree, factor: Scalar | float) -> PyTree:
    r""":math:`\bar x + \lambda(x_i - \bar x)` on every leaf (leading particle axis).

    The mean is unweighted: the particle filters here carry equal weights between cycles.
    Integer leaves (e.g. a valid time in seconds) are left as they are.
    """

    def one(leaf):
        if not jnp.issubdtype(leaf.dtype, jnp.inexact):
            return leaf
        mean = jnp.mean(leaf, axis=0, keepdims=True)
        return mean + jnp.asarray(factor, leaf.dtype) * (leaf - mean)

    return jax.tree_util.tree_map(one, particles)


def _as_float(value: ArrayLike) -> float:
    return float(np.asarray(value))


def _check_bound(value: ArrayLike, name: str) -> None:
    if is_traced(value):  # a filter built inside a traced function: checked where it was made
        return
    if not (math.isfinite(_as_float(value)) and _as_float(value) >= 1.0):
        raise ValueError(f"{name} must be a finite number >= 1, got {_as_float(value)}")


class AbstractInflation(eqx.Module):
    """Chooses λ ≥ 1 from the predicted observations of the forecast ensemble."""

    @property
    def is_identity(self) -> bool:
        """True when λ is always 1 (the filters then skip the arithmetic entirely)."""
        return False

    @abc.abstractmethod
    def factor(
        self,
        predictions: Float[Array, "particle obs"],
        y: Observation,
        observation_model: ObservationModel,
    ) -> Scalar:
        """λ for this cycle."""


class FixedInflation(AbstractInflation):
    """A constant λ (1: no inflation).

    λ is an array leaf: another λ reuses the compiled cycle. Whether it is exactly 1 is
    fixed when the strategy is made (``identity``, static): at 1 the filters skip the
    arithmetic, which keeps their analyses bit for bit those without inflation.

    Attributes:
        factor_value: λ.
        identity: whether λ is exactly 1 (derived; a traced λ is not).
    """

    factor_value: ArrayLike
    identity: bool = eqx.field(static=True)

    def __init__(self, factor_value: ArrayLike = 1.0):
        self.factor_value = tunable_leaf(factor_value)
        self.identity = not is_traced(factor_value) and _as_float(factor_value) == 1.0

    def __check_init__(self) -> None:
        _check_bound(self.factor_value, "FixedInflation.factor_value")

    @property
    def is_identity(self) -> bool:
        return self.identity

    def factor(self, predictions, y, observation_model):
        return jnp.asarray(self.factor_value, predictions.dtype)


def as_inflation(owner: str) -> Callable[[AbstractInflation | float], AbstractInflation]:
    """A field converter for ``owner``'s ``inflation``: a strategy as it is, a number as a
    :class:`FixedInflation` (checked there: λ ≥ 1; the error names ``owner``)."""

    def convert(inflation: AbstractInflation | float) -> AbstractInflation:
        if isinstance(inflation, AbstractInflation):
            return inflation
        try:
            return FixedInflation(float(inflation))
        except ValueError as error:
            raise ValueError(f"{owner}.inflation: {error}") from None

    return convert


class InnovationInflation(AbstractInflation):
    """λ from the cycle's innovation statistics, clipped to ``[minimum, maximum]``.

    Attributes:
        minimum: the smallest λ (1: never deflate below the ensemble's own spread).
        maximum: the largest λ.
    """

    # Array leaves: sweeping the bounds reuses the compiled cycle.
    minimum: ArrayLike = eqx.field(default=1.0, converter=tunable_leaf)
    maximum: ArrayLike = eqx.field(default=2.0, converter=tunable_leaf)

    def __check_init__(self) -> None:
        _check_bound(self.minimum, "InnovationInflation.minimum")
        _check_bound(self.maximum, "InnovationInflation.maximum")
        if is_traced(self.minimum) or is_traced(self.maximum):
            return
        if _as_float(self.maximum) < _as_float(self.minimum):
            raise ValueError(
                f"InnovationInflation.maximum = {_as_float(self.maximum)} is below minimum = "
                f"{_as_float(self.minimum)}"
            )

    def factor(self, predictions, y, observation_model):
        y = y.astype(predictions.dtype)
        mask = observation_mask(y)
        innovation = jnp.where(mask, y - jnp.mean(predictions, axis=0), 0.0)
        noise = jnp.sum(jnp.where(mask, observation_model.noise_variance.astype(y.dtype), 0.0))
        spread = jnp.sum(jnp.where(mask, jnp.var(predictions, axis=0, ddof=1), 0.0))
        tiny = jnp.finfo(predictions.dtype).tiny
        estimate = (jnp.sum(innovation**2) - noise) / jnp.maximum(spread, tiny)
        dtype = predictions.dtype
        lowest = jnp.square(jnp.asarray(self.minimum, dtype))
        highest = jnp.square(jnp.asarray(self.maximum, dtype))
        return jnp.sqrt(jnp.clip(estimate, lowest, highest))
