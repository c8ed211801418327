r"""Observation operators :math:`h` acting on one unbatched state.

Every operator maps a state of a fixed shape to a flat vector of ``num_observations``
predicted observations. Linear operators (point selection, block mean, dense matrix) are
exact under JAX linearisation; a :class:`NonlinearObservation` wraps any differentiable
function and is linearised by JAX (``jax.linearize``) where guidance needs a Jacobian.

References:
    The operator/noise split follows DAPPER's ``Operator`` (Raanes et al., nansencenter/DAPPER).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Sequence

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from .._typing import Observation, State


class AbstractObservationOperator(eqx.Module):
    """``h(x) -> y_pred`` for one state of shape ``state_shape``."""

    state_shape: eqx.AbstractVar[tuple[int, ...]]

    @property
    @abc.abstractmethod
    def num_observations(self) -> int:
        """Length of the predicted observation vector."""

    @abc.abstractmethod
    def _apply(self, x: State) -> Observation:
        """The operator itself, on a state already checked to have ``state_shape``."""

    def __call__(self, x: State) -> Observation:
        if tuple(x.shape) != tuple(self.state_shape):
            raise ValueError(
                f"{type(self).__name__}: state has shape {tuple(x.shape)}, expected "
                f"state_shape {tuple(self.state_shape)}"
            )
        return self._apply(x)


def _as_shape(shape: Sequence[int] | int, name: str) -> tuple[int, ...]:
    shape = (shape,) if isinstance(shape, int) else tuple(int(s) for s in shape)
    if not shape or any(s <= 0 for s in shape):
        raise ValueError(f"{name} must be a non-empty tuple of positive sizes, got {shape}")
    return shape


class PointSelection(AbstractObservationOperator):
    """Observe selected entries of the state: ``y = x.ravel()[indices]``.

    Build it from flat indices or, with :meth:`from_mask`, from a boolean mask of the
    state's shape (entries where the mask is True are observed, in C order).
    """

    state_shape: tuple[int, ...] = eqx.field(static=True)
    indices: Int[Array, " obs"]

    def __init__(self, state_shape: Sequence[int] | int, indices: ArrayLike | Sequence[int]):
        self.state_shape = _as_shape(state_shape, "PointSelection.state_shape")
        idx = np.asarray(indices)
        size = math.prod(self.state_shape)
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(
                f"PointSelection.indices must be a 1-D integer array, got dtype {idx.dtype} "
                f"and shape {idx.shape}"
            )
        if idx.size == 0:
            raise ValueError("PointSelection.indices selects no state entry")
        bad = idx[(idx < 0) | (idx >= size)]
        if bad.size:
            raise ValueError(
                f"PointSelection.indices has entries {bad[:5].tolist()} outside [0, {size}) "
                f"for state_shape {self.state_shape}"
            )
        self.indices = jnp.asarray(idx, dtype=jnp.int32)

    @classmethod
    def from_mask(cls, mask: Bool[ArrayLike, "*s"] | np.ndarray) -> PointSelection:
        """Observe the entries where ``mask`` is True."""
        mask = np.asarray(mask)
        if mask.dtype != np.bool_:
            raise ValueError(f"PointSelection mask must be boolean, got dtype {mask.dtype}")
        if not mask.any():
            raise ValueError(f"PointSelection mask of shape {mask.shape} selects no grid point")
        return cls(mask.shape, np.flatnonzero(mask))

    @property
    def num_observations(self) -> int:
        return int(self.indices.shape[0])

    def _apply(self, x: State) -> Observation:
        return x.reshape(-1)[self.indices]


class BlockMean(AbstractObservationOperator):
    """Average the state over blocks of its trailing axes (coarsening).

    ``block_shape`` covers the last ``len(block_shape)`` axes; leading axes (channels,
    levels) are kept. When a size is not a multiple of the block, the edge blocks average
    over the cells they have.
    """

    state_shape: tuple[int, ...] = eqx.field(static=True)
    block_shape: tuple[int, ...] = eqx.field(static=True)

    def __init__(self, state_shape: Sequence[int] | int, block_shape: Sequence[int] | int):
        self.state_shape = _as_shape(state_shape, "BlockMean.state_shape")
        self.block_shape = _as_shape(block_shape, "BlockMean.block_shape")
        if len(self.block_shape) > len(self.state_shape):
            raise ValueError(
                f"BlockMean.block_shape {self.block_shape} has more axes than state_shape "
                f"{self.state_shape}"
            )

    def _padded(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        lead = self.state_shape[: len(self.state_shape) - len(self.block_shape)]
        trail = self.state_shape[len(lead) :]
        counts = tuple(-(-n // b) for n, b in zip(trail, self.block_shape, strict=True))
        return lead, counts

    @property
    def num_observations(self) -> int:
        lead, counts = self._padded()
        return math.prod(lead) * math.prod(counts)

    def _apply(self, x: State) -> Observation:
        lead, counts = self._padded()
        trail = self.state_shape[len(lead) :]
        pad = [(0, 0)] * len(lead) + [
            (0, c * b - n) for n, b, c in zip(trail, self.block_shape, counts, strict=True)
        ]
        ones = jnp.pad(jnp.ones(trail, x.dtype), pad[len(lead) :])
        xp = jnp.pad(x, pad)
        split = lead + tuple(
            v for c, b in zip(counts, self.block_shape, strict=True) for v in (c, b)
        )
        block_axes = tuple(len(lead) + 2 * i + 1 for i in range(len(counts)))
        sums = xp.reshape(split).sum(axis=block_axes)
        cells = ones.reshape(split[len(lead) :]).sum(
            axis=tuple(2 * i + 1 for i in range(len(counts)))
        )
        # Explicit leading singleton axes: no implicit rank promotion against ``lead``.
        cells = cells.reshape((1,) * len(lead) + cells.shape)
        return (sums / cells).reshape(-1)


class LinearObservation(AbstractObservationOperator):
    """A dense linear operator on the flattened state: ``y = H x.ravel()``."""

    state_shape: tuple[int, ...] = eqx.field(static=True)
    matrix: Float[Array, "obs d"]

    def __init__(self, matrix: ArrayLike, state_shape: Sequence[int] | int | None = None):
        matrix = jnp.asarray(matrix)
        if matrix.ndim != 2 or matrix.shape[0] == 0:
            raise ValueError(
                f"LinearObservation.matrix must be 2-D (obs, d) with obs >= 1, got {matrix.shape}"
            )
        shape = (matrix.shape[1],) if state_shape is None else state_shape
        self.state_shape = _as_shape(shape, "LinearObservation.state_shape")
        if math.prod(self.state_shape) != matrix.shape[1]:
            raise ValueError(
                f"LinearObservation.matrix has {matrix.shape[1]} columns but state_shape "
                f"{self.state_shape} has {math.prod(self.state_shape)} entries"
            )
        self.matrix = matrix

    @property
    def num_observations(self) -> int:
        return int(self.matrix.shape[0])

    def _apply(self, x: State) -> Observation:
        return self.matrix.astype(x.dtype) @ x.reshape(-1)


class NonlinearObservation(AbstractObservationOperator):
    """Any differentiable ``fn(x) -> y_pred``; guidance linearises it with ``jax.linearize``."""

    fn: Callable[[State], Observation]
    state_shape: tuple[int, ...] = eqx.field(static=True)
    num_outputs: int = eqx.field(static=True)

    def __init__(
        self, fn: Callable[[State], Observation], state_shape: Sequence[int] | int, num_outputs: int
    ):
        if not callable(fn):
            raise ValueError(f"NonlinearObservation.fn must be callable, got {type(fn).__name__}")
        if int(num_outputs) != num_outputs or num_outputs < 1:
            raise ValueError(f"NonlinearObservation.num_outputs must be >= 1, got {num_outputs}")
        self.fn = fn
        self.state_shape = _as_shape(state_shape, "NonlinearObservation.state_shape")
        self.num_outputs = int(num_outputs)

    @property
    def num_observations(self) -> int:
        return self.num_outputs

    def _apply(self, x: State) -> Observation:
        y = jnp.asarray(self.fn(x))
        if y.shape != (self.num_outputs,):
            raise ValueError(
                f"NonlinearObservation.fn returned shape {y.shape}, expected ({self.num_outputs},)"
            )
        return y
