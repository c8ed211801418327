"""Bilinear interpolation of a gridded frame to scattered points (stations).

A frame has shape ``(channel, lat, lon)`` as described by a :class:`~filtrax.grid.GridSpec`.
Each observation point names a channel and a location; its predicted value is the bilinear
interpolation of that channel at that location:

* **Longitude is periodic.** A point between the last grid longitude and the first one
  (plus 360) interpolates between those two columns.
* **Latitude is clamped.** Grids are often cell-centred, so the first and last grid rows
  are not at the poles. A point poleward of the outermost grid row takes the value of that
  row (interpolated in longitude only): no extrapolation.

The four flat frame indices and weights of every point are computed once, on the host, in
the constructor; applying the operator is a gather and a weighted sum, which is exactly
linear in the frame and friendly to ``jit``, ``vmap`` and ``jax.linearize``. A point that
lies exactly on a grid node gets the weights ``(1, 0, 0, 0)`` and reproduces the grid value
exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int

from .._typing import Observation, State
from .operators import AbstractObservationOperator

if TYPE_CHECKING:
    from ..grid import GridSpec


def _longitude_cells(grid_lon: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left column and fractional position in ``[0, 1)`` of each longitude (periodic)."""
    lon0 = grid_lon[0]
    # Shift into [lon0, lon0 + 360); grid longitudes themselves are left untouched (exact).
    lon = np.where(lon < lon0, lon + 360.0, lon)
    extended = np.append(grid_lon, lon0 + 360.0)
    left = np.searchsorted(extended, lon, side="right") - 1
    left = np.clip(left, 0, grid_lon.size - 1)
    frac = (lon - extended[left]) / (extended[left + 1] - extended[left])
    return left, np.clip(frac, 0.0, 1.0)


def _latitude_cells(
    grid_lat: np.ndarray, lat: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two bracketing rows and the weight of the second one, clamped at the outermost rows."""
    n = grid_lat.size
    descending = grid_lat[0] > grid_lat[-1]
    ascending = grid_lat[::-1] if descending else grid_lat
    low = np.clip(np.searchsorted(ascending, lat, side="right") - 1, 0, n - 2)
    frac = (lat - ascending[low]) / (ascending[low + 1] - ascending[low])
    frac = np.clip(frac, 0.0, 1.0)  # clamp to the nearest grid row beyond the outermost rows
    high = low + 1
    if descending:
        low, high = n - 1 - low, n - 1 - high
    return low, high, frac


class BilinearInterpolation(AbstractObservationOperator):
    """Observe a ``(channel, lat, lon)`` frame at scattered points by bilinear interpolation.

    Args:
        grid: the grid of the frame; ``state_shape`` is ``grid.shape``.
        channels: the channel index of each point, shape ``(obs,)`` (see
            :meth:`GridSpec.channel_index <filtrax.grid.GridSpec.channel_index>`).
        latitudes: degrees north in ``[-90, 90]``, shape ``(obs,)``. Points poleward of the
            outermost grid row are clamped to that row.
        longitudes: degrees east in ``[-180, 360)``, shape ``(obs,)``; normalised to
            ``[0, 360)``. Longitude is periodic.

    Attributes:
        indices: the four flat frame indices of each point, shape ``(obs, 4)``.
        weights: their bilinear weights (non-negative, summing to one), shape ``(obs, 4)``.

    Raises:
        ValueError: mismatched or empty point arrays, a non-integer or out-of-range channel,
            or a latitude/longitude out of range (the message names the point index).
    """

    state_shape: tuple[int, ...] = eqx.field(static=True)
    indices: Int[Array, "obs 4"]
    weights: Float[Array, "obs 4"]

    def __init__(
        self,
        grid: GridSpec,
        channels: ArrayLike | Sequence[int],
        latitudes: ArrayLike | Sequence[float],
        longitudes: ArrayLike | Sequence[float],
    ):
        name = type(self).__name__
        chan = np.asarray(channels)
        lat = np.asarray(latitudes, dtype=np.float64)
        lon = np.asarray(longitudes, dtype=np.float64)
        if (
            chan.ndim != 1
            or lat.ndim != 1
            or lon.ndim != 1
            or not (chan.shape == lat.shape == lon.shape)
        ):
            raise ValueError(
                f"{name}: channels, latitudes and longitudes must be 1-D arrays of one length, "
                f"got shapes {chan.shape}, {lat.shape}, {lon.shape}"
            )
        if chan.size == 0:
            raise ValueError(f"{name}: no observation point given")
        if not np.issubdtype(chan.dtype, np.integer):
            raise ValueError(f"{name}: channels must be integers, got dtype {chan.dtype}")
        num_channels, num_lat, num_lon = grid.shape
        bad = np.flatnonzero((chan < 0) | (chan >= num_channels))
        if bad.size:
            i = int(bad[0])
            raise ValueError(
                f"{name}: point {i} has channel index {int(chan[i])} outside "
                f"[0, {num_channels}) (channels: "
                f"{', '.join(c.label() for c in grid.channels)})"
            )
        bad = np.flatnonzero(~((lat >= -90.0) & (lat <= 90.0)))
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"{name}: point {i} has latitude {lat[i]} outside [-90, 90]")
        bad = np.flatnonzero(~((lon >= -180.0) & (lon < 360.0)))
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"{name}: point {i} has longitude {lon[i]} outside [-180, 360)")
        lon = np.where(lon < 0.0, lon + 360.0, lon)
        lon = np.where(lon >= 360.0, lon - 360.0, lon)  # -1e-20 + 360 rounds to 360

        grid_lat = np.asarray(grid.latitudes, dtype=np.float64)
        grid_lon = np.asarray(grid.longitudes, dtype=np.float64)
        row0, row1, t = _latitude_cells(grid_lat, lat)
        col0, u = _longitude_cells(grid_lon, lon)
        col1 = (col0 + 1) % num_lon

        base = chan.astype(np.int64) * (num_lat * num_lon)
        indices = np.stack(
            [
                base + row0 * num_lon + col0,
                base + row0 * num_lon + col1,
                base + row1 * num_lon + col0,
                base + row1 * num_lon + col1,
            ],
            axis=-1,
        )
        weights = np.stack(
            [(1.0 - t) * (1.0 - u), (1.0 - t) * u, t * (1.0 - u), t * u],
            axis=-1,
        )
        self.state_shape = tuple(int(s) for s in grid.shape)
        self.indices = jnp.asarray(indices, dtype=jnp.int32)
        self.weights = jnp.asarray(weights)

    @property
    def num_observations(self) -> int:
        return int(self.indices.shape[0])

    def _apply(self, x: State) -> Observation:
        corners = x.reshape(-1)[self.indices]
        return jnp.sum(corners * self.weights.astype(x.dtype), axis=-1)
