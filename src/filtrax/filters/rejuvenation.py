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

:class:`TransformRejuvenation` replaces the resampled copies by the ensemble transform
particle filter's deterministic map (Reich 2013), the optimal-transport coupling of the
weights and uniform ones; :class:`ComposedRejuvenation` chains rejuvenations (the transform,
then the kernel).
"""

from __future__ import annotations

import abc
import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, PyTree

from .. import streams
from .._typing import LogWeights, ParticleKeys, Scalar, is_traced


class AbstractRejuvenation(eqx.Module):
    """Moves the selected particles after selection (see the module docstring)."""

    @property
    @abc.abstractmethod
    def is_identity(self) -> bool:
        """Whether it leaves the selected particles as they are."""

    @abc.abstractmethod
    def __call__(
        self, selected: PyTree, weighed: PyTree, log_weights: LogWeights, *, keys: ParticleKeys
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
        if is_traced(self.bandwidth):
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


def _squared_distances(particles: PyTree, n: int, dtype) -> Array:
    """``C_ij = ‖x_i − x_j‖²`` summed over every floating leaf of the particles."""

    def one(leaf: Array) -> Array:
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            return jnp.zeros((n, n), dtype)
        flat = leaf.reshape(n, -1).astype(dtype)
        norms = jnp.sum(flat * flat, axis=1)
        return jnp.maximum(norms[:, None] + norms[None, :] - 2.0 * flat @ flat.T, 0.0)

    leaves = jax.tree_util.tree_leaves(jax.tree_util.tree_map(one, particles))
    return sum(leaves, jnp.zeros((n, n), dtype))


def sinkhorn_coupling(
    cost: Array, log_weights: LogWeights, regularisation: Scalar, iterations: int
) -> Array:
    r"""The entropic optimal-transport coupling ``T`` of ``w`` (rows) and ``1/N`` (columns).

    Log-domain Sinkhorn (Cuturi 2013; Peyré & Cuturi 2019, §4.4) for
    :math:`\min_T \langle T, C\rangle - \varepsilon H(T)` with
    :math:`T\mathbf 1 = w`, :math:`T^\top\mathbf 1 = \mathbf 1/N` and
    :math:`\varepsilon` = ``regularisation`` × the mean off-diagonal cost. The iteration ends
    on the column update, so every column sums to exactly ``1/N``: each transformed particle
    is a convex combination of the weighed ones.
    """
    n = cost.shape[0]
    dtype = cost.dtype
    scale = jnp.sum(cost) / jnp.maximum(n * (n - 1), 1)
    # Identical particles (a start from copies of one state) cost nothing to move: any
    # coupling is optimal, and a unit scale keeps the iteration finite.
    epsilon = regularisation.astype(dtype) * jnp.where(scale > 0, scale, 1.0)
    log_a = (log_weights - jax.scipy.special.logsumexp(log_weights)).astype(dtype)
    log_b = jnp.full((n,), -math.log(n), dtype)
    lse = jax.scipy.special.logsumexp

    def body(_, potentials):
        f, g = potentials
        f = epsilon * log_a - epsilon * lse((g[None, :] - cost) / epsilon, axis=1)
        g = epsilon * log_b - epsilon * lse((f[:, None] - cost) / epsilon, axis=0)
        return f, g

    zeros = jnp.zeros((n,), dtype)
    f, g = jax.lax.fori_loop(0, iterations, body, (zeros, zeros))
    return jnp.exp((f[:, None] + g[None, :] - cost) / epsilon)


class TransformRejuvenation(AbstractRejuvenation):
    r"""The ensemble transform particle filter's deterministic resampling (Reich 2013).

    Replaces the resampled copies by :math:`x'_j = N \sum_i T_{ij}\, x_i`, where :math:`T`
    is the (entropic) optimal-transport coupling of the selection weights :math:`w_i` and
    the uniform weights :math:`1/N` under the cost :math:`\|x_i - x_j\|^2`
    (:func:`sinkhorn_coupling`). The weighted mean is kept exactly, no particle is copied,
    and no randomness enters: each new particle is the weighted ensemble's local average
    around one of the uniform quantiles. The transform contracts the spread by the
    coupling's blur (more for a larger ``regularisation``), which Reich compensates by
    inflation; as ``regularisation → 0`` it tends to the exact transport (the monotone
    rearrangement in one dimension). Its cost is ``O(N² d)`` for the distances plus
    ``iterations × O(N²)``. Use it with global selection: the stitched ensemble of a
    block-local filter carries no weights of its own.

    Attributes:
        regularisation: :math:`\varepsilon` relative to the mean squared distance between
            particles (an array leaf: sweeping it does not recompile).
        iterations: Sinkhorn iterations.
    """

    regularisation: Scalar = eqx.field(default=0.05, converter=jnp.asarray)
    iterations: int = eqx.field(static=True, default=200)

    def __check_init__(self) -> None:
        if is_traced(self.regularisation):
            return
        value = float(self.regularisation) if self.regularisation.shape == () else math.nan
        if not value > 0:
            raise ValueError(
                f"TransformRejuvenation.regularisation = {self.regularisation.tolist()!r}; "
                f"expected a number > 0"
            )
        if int(self.iterations) != self.iterations or self.iterations < 1:
            raise ValueError(
                f"TransformRejuvenation.iterations = {self.iterations!r}; expected an integer >= 1"
            )

    @property
    def is_identity(self) -> bool:
        return False

    def __call__(self, selected, weighed, log_weights, *, keys):
        n = log_weights.shape[0]
        cost = _squared_distances(weighed, n, log_weights.dtype)
        coupling = sinkhorn_coupling(cost, log_weights, self.regularisation, self.iterations)
        transform = n * coupling  # columns sum to one

        def move(picked: Array, pool: Array) -> Array:
            if not jnp.issubdtype(pool.dtype, jnp.floating):
                return picked
            return jnp.tensordot(transform.T.astype(pool.dtype), pool, axes=1)

        return jax.tree_util.tree_map(move, selected, weighed)


class ComposedRejuvenation(AbstractRejuvenation):
    """Several rejuvenations in turn, each given the same weighed particles and weights.

    ``ComposedRejuvenation((TransformRejuvenation(), KernelRejuvenation(h)))`` transports the
    weighted ensemble to equal weights, then jitters each transformed particle with the
    *weighed* ensemble's covariance: the kernel gives back the diversity and part of the
    spread that the transform's averaging takes away.

    Attributes:
        steps: the rejuvenations, applied first to last.
    """

    steps: tuple[AbstractRejuvenation, ...]

    def __check_init__(self) -> None:
        if not self.steps or not all(isinstance(s, AbstractRejuvenation) for s in self.steps):
            raise ValueError(
                "ComposedRejuvenation.steps must be a non-empty tuple of rejuvenations"
            )

    @property
    def is_identity(self) -> bool:
        return all(step.is_identity for step in self.steps)

    def __call__(self, selected, weighed, log_weights, *, keys):
        for step in self.steps:
            selected = step(selected, weighed, log_weights, keys=keys)
        return selected
