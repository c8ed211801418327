r"""Rejuvenation after selection: giving duplicated particles back their diversity.

Resampling duplicates the selected particles, and a near-deterministic move (an emulator
whose 12-hour transition has little spread) cannot separate the copies again: the ensemble
loses the diversity it needs to find the truth again (sample impoverishment). A
rejuvenation moves every selected particle after selection, before the proposal.

:class:`KernelRejuvenation` is the regularised particle filter's kernel (Musso, Oudjane &
Le Gland 2001) in the shrinkage form of Liu & West (2001): with the selection weights
:math:`w_j` of the particles :math:`x_j`, their weighted mean :math:`\bar x` and the
weighted anomalies :math:`A_j = \sqrt{w_j}\,(x_j - \bar x)`,

.. math:: x'_i = \bar x + a\,(x_{a_i} - \bar x) + h \sum_j A_j z_{ij},
          \qquad a = \sqrt{1 - h^2},\quad z_{ij} \sim \mathcal N(0, 1),

whose mean and covariance are, in expectation over the resampling and :math:`z`, those of
the weighted ensemble: the kernel adds diversity without inflating the spread. The noise
covariance is the ensemble's own, of rank ≤ N − 1, so no ``d × d`` matrix is formed
(``O(N² d)`` per cycle). ``h = 1`` draws a fresh Gaussian ensemble with the weighted
moments; ``h → 0`` is plain resampling.
"""

from __future__ import annotations

import abc
import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, PyTree

from .. import streams
from .._typing import Key, LogWeights, Scalar


class AbstractRejuvenation(eqx.Module):
    """Moves the selected particles after selection (see the module docstring)."""

    @property
    @abc.abstractmethod
    def is_identity(self) -> bool:
        """Whether it leaves the selected particles as they are."""

    @abc.abstractmethod
    def __call__(
        self, selected: PyTree, weighed: PyTree, log_weights: LogWeights, *, keys: Key
    ) -> PyTree:
        """``selected`` (N particles, equally weighted) rejuvenated, given the ``weighed``
        particles they were selected from and their normalised selection ``log_weights``;
        ``keys`` holds one key per particle."""


class NoRejuvenation(AbstractRejuvenation):
    """Plain resampling (the default)."""

    @property
    def is_identity(self) -> bool:
        return True

    def __call__(self, selected, weighed, log_weights, *, keys):
        return selected


class KernelRejuvenation(AbstractRejuvenation):
    """The shrinkage kernel of the regularised particle filter.

    Attributes:
        bandwidth: ``h`` in ``(0, 1]``: the share of each particle's position that is
            redrawn from the weighted ensemble's covariance.
    """

    # An array leaf: sweeping the bandwidth does not recompile the cycle.
    bandwidth: Scalar = eqx.field(default=0.5, converter=jnp.asarray)

    def __check_init__(self) -> None:
        if isinstance(self.bandwidth, jax.core.Tracer):
            return
        value = float(self.bandwidth) if self.bandwidth.shape == () else math.nan
        if not 0 < value <= 1:
            raise ValueError(
                f"KernelRejuvenation.bandwidth = {self.bandwidth.tolist()!r}; expected a "
                f"number in (0, 1]"
            )

    @property
    def is_identity(self) -> bool:
        return False

    def __call__(self, selected, weighed, log_weights, *, keys):
        n = log_weights.shape[0]
        weights = jnp.exp(log_weights - jax.scipy.special.logsumexp(log_weights))
        # One standard normal vector per particle, from its own key: the same combination of
        # anomalies moves every leaf, so the particle's frames stay consistent.
        z = jax.vmap(
            lambda k: jax.random.normal(jax.random.fold_in(k, streams.REJUVENATION), (n,))
        )(keys)
        h = self.bandwidth
        shrink = jnp.sqrt(1.0 - h * h)

        def move(picked: Array, pool: Array) -> Array:
            if not jnp.issubdtype(pool.dtype, jnp.floating):
                return picked
            w = weights.astype(pool.dtype).reshape((n,) + (1,) * (pool.ndim - 1))
            mean = jnp.sum(w * pool, axis=0, keepdims=True)
            anomalies = jnp.sqrt(w) * (pool - mean)
            noise = jnp.tensordot(z.astype(pool.dtype), anomalies, axes=1)
            return mean + shrink.astype(pool.dtype) * (picked - mean) + h.astype(pool.dtype) * noise

        return jax.tree_util.tree_map(move, selected, weighed)
