r"""Estimate the hybrid emulator's structured residual from training data.

For training pairs :math:`(x^k, x^{k+1})` of the coarse truth and the dynamical core's forecast
:math:`F(x^k)` (:mod:`filtrax.dynamics.coarse_forecast`), the residual
:math:`r = x^{k+1} - F(x^k)` gives (:class:`filtrax.emulators.hybrid.SphericalResidual`):

* :math:`\mu_c(\varphi)`, :math:`a_c(\varphi)`: its mean and standard deviation over time
  and longitude, per channel and latitude row (the model is zonally symmetric);
* :math:`w = \text{coef}\big((r - \mu)/a\big)`: the spherical-harmonic coefficients of the
  normalised residual, by least squares weighted by cell area (``project``);
* :math:`C_l = \frac{1}{T(2l+1)} \sum_t \sum_{|m| \le l} w_{t,:,m,l}\, w_{t,:,m,l}^\top`,
  the cross-channel covariance per total wavenumber (isotropy: no dependence on :math:`m`),
  scaled by :func:`normalised_covariances` so that the synthesised field has unit variance,
  and :math:`B_l = C_l^{1/2}` (symmetric square root).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from ..diffusion.latent_noise import spherical_harmonic_basis
from ..grid import GridSpec


class HarmonicProjector:
    r"""Least-squares spherical-harmonic coefficients of fields on a grid, weighted by area.

    :math:`\hat w = \arg\min_w \sum_{j,i} \cos\varphi_j\,(f_{ji} - \sum Y_{lm}(j,i) w_{lm})^2`
    over the harmonics with :math:`l <` ``band_limit``; returned in dinosaur's rectangular
    ``(m, l)`` layout with zeros where :math:`|m| > l`.
    """

    def __init__(self, grid: GridSpec, band_limit: int):
        legendre, fourier, mask = spherical_harmonic_basis(
            grid.latitudes, grid.longitudes, band_limit
        )
        self.mask = mask
        self.shape = mask.shape
        m_index, l_index = np.nonzero(mask)
        # Y[(j, i), k] for the k-th harmonic (m_k, l_k).
        basis = fourier[None, :, m_index] * legendre[m_index, :, l_index].T[:, None, :]
        design = basis.reshape(-1, m_index.size)
        weights = np.repeat(np.cos(np.deg2rad(np.asarray(grid.latitudes))), len(grid.longitudes))
        weighted = design * weights[:, None]
        normal = design.T @ weighted
        normal += 1e-8 * np.trace(normal) / normal.shape[0] * np.eye(normal.shape[0])
        self._solve = np.linalg.solve(normal, weighted.T)  # (harmonic, point)
        self._m, self._l = m_index, l_index

    def __call__(self, fields: np.ndarray) -> np.ndarray:
        """``(..., lat, lon)`` fields to ``(..., m, l)`` coefficients."""
        flat = fields.reshape(*fields.shape[:-2], -1).astype(np.float64)
        coefficients = flat @ self._solve.T
        out = np.zeros((*fields.shape[:-2], *self.shape))
        out[..., self._m, self._l] = coefficients
        return out


class WindProjector:
    r"""Least-squares streamfunction and velocity potential of winds, weighted by area.

    :math:`(\hat\psi, \hat\chi) = \arg\min \sum \cos\varphi\,\lVert (u, v) - W(\psi,
    \chi)\rVert^2` over harmonics with :math:`l <` ``band_limit``, where :math:`W` is the
    emulator's own map (:func:`~filtrax.emulators.hybrid.winds_from_potentials`), so that
    synthesis undoes projection on what the grid resolves (a quadrature transform on a coarse
    equiangular grid does not). :math:`l = 0` carries no wind and is left out.
    """

    def __init__(self, grid: GridSpec, band_limit: int):
        import jax
        import jax.numpy as jnp

        from ..emulators.hybrid import winds_from_potentials

        _, _, mask = spherical_harmonic_basis(grid.latitudes, grid.longitudes, band_limit)
        m_index, l_index = np.nonzero(mask)
        resolved = l_index > 0
        m_index, l_index = m_index[resolved], l_index[resolved]
        self.shape, self._m, self._l = mask.shape, m_index, l_index

        def winds(coefficients):
            half = m_index.size
            psi = jnp.zeros(mask.shape).at[m_index, l_index].set(coefficients[:half])
            chi = jnp.zeros(mask.shape).at[m_index, l_index].set(coefficients[half:])
            u, v = winds_from_potentials(psi, chi, grid.latitudes, grid.longitudes, band_limit)
            return jnp.concatenate([u.ravel(), v.ravel()])

        # W is linear: its Jacobian is the design matrix (float32, as the emulator uses it).
        design = np.asarray(jax.jacfwd(winds)(jnp.zeros(2 * m_index.size)), np.float64)
        cos_lat = np.cos(np.deg2rad(np.asarray(grid.latitudes)))
        weights = np.tile(np.repeat(cos_lat, len(grid.longitudes)), 2)
        weighted = design * weights[:, None]
        normal = design.T @ weighted
        normal += 1e-8 * np.trace(normal) / normal.shape[0] * np.eye(normal.shape[0])
        self._solve = np.linalg.solve(normal, weighted.T)

    def __call__(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Winds ``(..., lat, lon)`` to ``(ψ, χ)``, each ``(..., m, l)``."""
        batch = u.shape[:-2]
        flat = np.concatenate([u.reshape(*batch, -1), v.reshape(*batch, -1)], axis=-1)
        coefficients = flat.astype(np.float64) @ self._solve.T
        half = self._m.size
        psi, chi = np.zeros((*batch, *self.shape)), np.zeros((*batch, *self.shape))
        psi[..., self._m, self._l] = coefficients[..., :half]
        chi[..., self._m, self._l] = coefficients[..., half:]
        return psi, chi


@functools.lru_cache(maxsize=4)
def _wind_projector(latitudes, longitudes, band_limit: int) -> WindProjector:
    from ..grid import Channel

    channels = (Channel("u_component_of_wind", 0.0), Channel("v_component_of_wind", 0.0))
    return WindProjector(GridSpec(latitudes, longitudes, channels), band_limit)


def wind_projector_of(grid: GridSpec, band_limit: int) -> WindProjector:
    """The :class:`WindProjector` of a grid, built once per process (its design matrix is
    a Jacobian with one column per harmonic)."""
    return _wind_projector(tuple(grid.latitudes), tuple(grid.longitudes), band_limit)


def zonal_moments(residuals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation over time and longitude: ``(channel, lat)`` each."""
    data = np.asarray(residuals, np.float64)
    return data.mean(axis=(0, 3)), data.std(axis=(0, 3))


def wavenumber_covariances(coefficients: np.ndarray, mask: np.ndarray) -> np.ndarray:
    r""":math:`C_l` ``(l, channel, channel)`` from coefficients ``(time, channel, m, l)``."""
    valid = mask.astype(np.float64)
    per_l = np.einsum("tcml,tdml,ml->lcd", coefficients, coefficients, valid)
    counts = coefficients.shape[0] * valid.sum(axis=0)  # T (2l + 1)
    return per_l / counts[:, None, None]


def normalised_covariances(covariances: np.ndarray, scalar: np.ndarray | None = None) -> np.ndarray:
    r""":math:`C_l` scaled so that :math:`\sum_l C_{l,cc}\,(2l+1)/4\pi = 1` for every channel,
    the variance of the synthesised field at every point (addition theorem). Channels where
    ``scalar`` is False (the winds' streamfunction and velocity potential) keep their scale."""
    degrees = np.arange(covariances.shape[0])
    point_variance = np.einsum("lcc,l->c", covariances, (2 * degrees + 1) / (4 * math.pi))
    scale = 1 / np.sqrt(point_variance)
    if scalar is not None:
        scale = np.where(scalar, scale, 1.0)
    return covariances * scale[None, :, None] * scale[None, None, :]


def symmetric_sqrt(covariances: np.ndarray) -> np.ndarray:
    """:math:`C^{1/2}` per leading index (eigenvalues clipped at zero)."""
    values, vectors = np.linalg.eigh(0.5 * (covariances + np.swapaxes(covariances, -1, -2)))
    root = np.sqrt(np.clip(values, 0, None))
    return np.einsum("lij,lj,lkj->lik", vectors, root, vectors)


def _coefficients(part, mean, amplitude, projector, wind_projector, winds):
    """The latent coefficients of residuals: normalised scalars by least squares, and for the
    winds their streamfunction and velocity potential (unnormalised)."""
    coefficients = projector((part - mean[:, :, None]) / amplitude[:, :, None])
    if winds is not None:
        stream, potential = (list(w) for w in winds)
        anomaly = part - mean[:, :, None]
        psi, chi = wind_projector(anomaly[:, stream], anomaly[:, potential])
        coefficients[:, stream] = psi
        coefficients[:, potential] = chi
    return coefficients


def wind_amplitudes(residual, observed_std: np.ndarray) -> np.ndarray:
    """The amplitude rows of a residual's wind channels that give them ``observed_std``
    ``(channel, lat)`` per latitude: the synthesised winds' variance is exact, the sum of
    squares of their Jacobian rows along one meridian (it does not depend on longitude)."""
    import jax
    import jax.numpy as jnp

    channels = np.asarray([*residual.stream_channels, *residual.potential_channels])
    latent = jnp.zeros(residual.latent_shape)

    def meridian(z):
        return residual.unit(z)[channels, :, 0]

    jacobian = np.asarray(jax.jacrev(meridian)(latent), np.float64)
    synthesised = np.sqrt((jacobian**2).reshape(*jacobian.shape[:2], -1).sum(-1))
    amplitude = np.asarray(residual.amplitude, np.float64).copy()
    amplitude[channels] = observed_std[channels] / synthesised
    return amplitude.astype(np.float32)


def _streamfunction_grid(anomaly, grid, wind_projector, stream, potential) -> np.ndarray:
    """ψ of the wind anomalies on the grid, ``(time, level, lat, lon)`` (band-limited)."""
    band_limit = wind_projector.shape[1]
    legendre, fourier, _ = spherical_harmonic_basis(grid.latitudes, grid.longitudes, band_limit)
    psi, _ = wind_projector(anomaly[:, stream], anomaly[:, potential])
    per_m = np.einsum("mjl,tcml->tcmj", legendre, psi)
    return np.einsum("im,tcmj->tcji", fourier, per_m)


def balance_regression(
    residuals: np.ndarray, grid: GridSpec, band_limit: int, chunk: int = 64
) -> np.ndarray:
    r""":math:`\beta` ``(channel, lat, level)``: per latitude, the least-squares regression of
    each scalar channel's residual on the streamfunction of every level (zero for the winds);
    a tiny ridge keeps the polar rows, where :math:`\psi` hardly varies, well posed."""
    from ..emulators.hybrid import wind_channels

    stream, potential = (list(w) for w in wind_channels(grid))
    wind_projector = wind_projector_of(grid, band_limit)
    mean = residuals.mean(axis=(0, 3), dtype=np.float64)
    levels, (channels, num_lat, _) = len(stream), grid.shape
    gram = np.zeros((num_lat, levels, levels))
    cross = np.zeros((channels, num_lat, levels))
    for start in range(0, len(residuals), chunk):
        anomaly = np.asarray(residuals[start : start + chunk], np.float64) - mean[:, :, None]
        psi = _streamfunction_grid(anomaly, grid, wind_projector, stream, potential)
        gram += np.einsum("tkji,tqji->jkq", psi, psi)
        cross += np.einsum("tkji,tcji->cjk", psi, anomaly)
    ridge = 1e-6 * np.trace(gram, axis1=1, axis2=2)[:, None, None] / levels + 1e-30
    solved = np.linalg.solve(gram + ridge * np.eye(levels), cross.transpose(1, 2, 0))
    beta = solved.transpose(2, 0, 1)  # (lat, level, channel) -> (channel, lat, level)
    beta[[*stream, *potential]] = 0.0
    return beta


def unbalanced(residuals, beta, grid, band_limit, chunk: int = 64) -> np.ndarray:
    r"""The residuals less their balanced part :math:`\sum_k \beta_k \psi_k`."""
    from ..emulators.hybrid import wind_channels

    stream, potential = (list(w) for w in wind_channels(grid))
    wind_projector = wind_projector_of(grid, band_limit)
    mean = residuals.mean(axis=(0, 3), dtype=np.float64)
    out = np.empty(residuals.shape, np.float32)
    for start in range(0, len(residuals), chunk):
        part = np.asarray(residuals[start : start + chunk], np.float64)
        anomaly = part - mean[:, :, None]
        psi = _streamfunction_grid(anomaly, grid, wind_projector, stream, potential)
        out[start : start + chunk] = part - np.einsum("cjk,tkji->tcji", beta, psi)
    return out


def estimate_residual(
    residuals: np.ndarray,
    grid: GridSpec,
    band_limit: int | None = None,
    chunk: int = 64,
    winds: bool = False,
    balance: bool = False,
) -> dict[str, np.ndarray]:
    """``mean``, ``amplitude`` and ``sqrt_covariance`` of :class:`SphericalResidual` from
    residuals ``(time, channel, lat, lon)`` (module docstring); with ``winds``, the wind
    channels through a streamfunction and a velocity potential, and with ``balance`` also the
    balanced part of the other channels (``balance_regression``)."""
    from ..emulators.hybrid import SphericalResidual, wind_channels

    band_limit = band_limit or len(grid.longitudes) // 2
    beta = None
    if balance:
        if not winds:
            raise ValueError("a balanced residual needs winds = True (ψ is its predictor)")
        beta = balance_regression(residuals, grid, band_limit, chunk)
        residuals = unbalanced(residuals, beta, grid, band_limit, chunk)
    mean, amplitude = zonal_moments(residuals)
    projector = HarmonicProjector(grid, band_limit)
    pairs = wind_channels(grid) if winds else None
    wind_projector = wind_projector_of(grid, band_limit) if winds else None
    scalar = np.ones(residuals.shape[1], bool)
    if pairs is not None:
        scalar[[*pairs[0], *pairs[1]]] = False
    total = np.zeros((band_limit, residuals.shape[1], residuals.shape[1]))
    for start in range(0, len(residuals), chunk):
        part = np.asarray(residuals[start : start + chunk], np.float64)
        coefficients = _coefficients(part, mean, amplitude, projector, wind_projector, pairs)
        total += wavenumber_covariances(coefficients, projector.mask) * len(part)
    covariances = normalised_covariances(total / len(residuals), scalar)
    estimate = {
        "mean": mean.astype(np.float32),
        "amplitude": amplitude.astype(np.float32),
        "sqrt_covariance": symmetric_sqrt(covariances).astype(np.float32),
    }
    if pairs is not None:
        residual = SphericalResidual.on_grid(grid, **estimate, winds=True)
        estimate["amplitude"] = wind_amplitudes(residual, amplitude)
    if beta is not None:
        estimate["balance"] = beta.astype(np.float32)
    return estimate
