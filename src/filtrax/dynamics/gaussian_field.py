r"""A gridded linear-Gaussian model: an AR(1) Gaussian random field on the sphere.

.. math::
    x^{k+1} = a\,x^k + w^k, \qquad w^k \sim \mathcal N(0, Q), \qquad
    Q = s^2\, C_\text{channel} \otimes C_\text{space},

with :math:`C_\text{space}(i,j) = \exp(-d_{ij}^2 / 2L^2)` for the great-circle distance
:math:`d_{ij}` between grid cells and :math:`C_\text{channel} = (1-\rho) I + \rho\,\mathbf 1
\mathbf 1^\top` coupling the variables, so that observing one variable informs the others.

It exercises every gridded code path (frames ``(channel, lat, lon)``, sub-grid and station
observations, cos-lat metrics, maps) with an exact emulator: its denoiser is the analytic
:class:`~filtrax.diffusion.GaussianDenoiser` of the residual :math:`z = x^{k+1} - a x^k`.
Fields are dimensionless (standardised anomalies).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._typing import Key, State
from ..diffusion.denoisers import GaussianDenoiser
from ..grid import GridSpec
from .linear_gaussian import AbstractResidualGaussianEmulator

EARTH_RADIUS_KM = 6371.0


def great_circle_distances_km(grid: GridSpec) -> np.ndarray:
    """Distances between all grid cells (flattened lat-major), shape ``(cells, cells)``."""
    lat = np.deg2rad(np.repeat(np.asarray(grid.latitudes), len(grid.longitudes)))
    lon = np.deg2rad(np.tile(np.asarray(grid.longitudes), len(grid.latitudes)))
    cos_angle = np.sin(lat)[:, None] * np.sin(lat)[None, :] + np.cos(lat)[:, None] * np.cos(lat)[
        None, :
    ] * np.cos(lon[:, None] - lon[None, :])
    return EARTH_RADIUS_KM * np.arccos(np.clip(cos_angle, -1.0, 1.0))


class GaussianFieldEmulator(AbstractResidualGaussianEmulator):
    """Exact diffusion emulator of the AR(1) field, on the residual latent (frames = states)."""

    ar_coefficient: float = eqx.field(static=True)
    denoiser: GaussianDenoiser

    def latent_to_frame(self, z: State, state: State) -> State:
        return self.ar_coefficient * state + z


class GaussianFieldModel(eqx.Module):
    """The AR(1) Gaussian field on ``grid`` (see the module docstring)."""

    grid: GridSpec = eqx.field(static=True)
    ar_coefficient: float = eqx.field(static=True)
    noise_covariance: Float[Array, "d d"]

    @classmethod
    def build(
        cls,
        grid: GridSpec,
        *,
        correlation_length_km: float = 1500.0,
        ar_coefficient: float = 0.9,
        noise_std: float = 1.0,
        channel_correlation: float = 0.7,
    ) -> GaussianFieldModel:
        if not 0 < ar_coefficient < 1:
            raise ValueError(f"ar_coefficient must lie in (0, 1), got {ar_coefficient}")
        if not correlation_length_km > 0 or not noise_std > 0:
            raise ValueError(
                f"correlation_length_km and noise_std must be > 0, got "
                f"{correlation_length_km} and {noise_std}"
            )
        if not 0 <= channel_correlation < 1:
            raise ValueError(f"channel_correlation must lie in [0, 1), got {channel_correlation}")
        distances = great_circle_distances_km(grid)
        spatial = np.exp(-0.5 * (distances / correlation_length_km) ** 2)
        num_channels = len(grid.channels)
        channel = (1 - channel_correlation) * np.eye(num_channels) + channel_correlation
        Q = noise_std**2 * np.kron(channel, spatial)
        Q += 1e-4 * noise_std**2 * np.eye(Q.shape[0])  # keeps Q numerically positive definite
        return cls(grid, float(ar_coefficient), jnp.asarray(Q.astype(jnp.zeros(()).dtype)))

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        return self.grid.shape

    def emulator(self) -> GaussianFieldEmulator:
        return GaussianFieldEmulator(
            ar_coefficient=self.ar_coefficient,
            denoiser=GaussianDenoiser(self.noise_covariance),
        )

    def climatological_covariance(self) -> Float[Array, "d d"]:
        """The stationary covariance ``Q / (1 − a²)``."""
        return self.noise_covariance / (1.0 - self.ar_coefficient**2)

    def sample_climatology(self, key: Key) -> State:
        """One frame from the stationary distribution."""
        root = self._square_root() / jnp.sqrt(1.0 - self.ar_coefficient**2)
        draw = root @ jax.random.normal(key, (root.shape[0],), root.dtype)
        return draw.reshape(self.frame_shape)

    def _square_root(self) -> Float[Array, "d d"]:
        # U sqrt(λ): robust in float32, where a Cholesky factor of this smooth kernel fails.
        eigenvalues, eigenvectors = jnp.linalg.eigh(self.noise_covariance)
        return eigenvectors * jnp.sqrt(jnp.maximum(eigenvalues, 0.0))[None, :]

    def simulate(
        self, key: Key, initial_frame: State, num_cycles: int
    ) -> Float[Array, " cycle *s"]:
        """Truth frames ``x^1..x^K`` from ``x^0``, shape ``(K, channel, lat, lon)``."""
        chol = self._square_root()

        def step(x, k):
            w = chol @ jax.random.normal(jax.random.fold_in(key, k), (chol.shape[0],), x.dtype)
            x = self.ar_coefficient * x + w.reshape(x.shape)
            return x, x

        _, frames = jax.lax.scan(step, initial_frame, jnp.arange(num_cycles))
        return frames
