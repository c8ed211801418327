r"""Unit-variance latent noise for the diffusion: i.i.d. Gaussian or GenCast's spherical noise.

Every random draw of a sampler (the initial :math:`z_0 = \sigma_0\varepsilon`, the churn, the
weight's :math:`\sigma_\text{max}\varepsilon`) is :math:`\varepsilon = \text{noise}(k, z)`, a
pure function of an explicit key ``k`` with the shape and dtype of a template ``z``.

GenCast does not use i.i.d. grid-point noise. It uses isotropic Gaussian noise on the sphere,
band-limited to total wavenumbers :math:`l < L = n_\text{lon}/2` with a flat power spectrum
(Price et al. 2025, GenCast, Nature 637):

.. math::
    \varepsilon(x) = \sqrt{4\pi} \sum_{l=0}^{L-1} \sum_{m=-l}^{l}
        \frac{\xi_{lm}}{\sqrt{L\,(2l+1)}}\, Y_{lm}(x),
    \qquad \xi_{lm} \sim \mathcal N(0, 1) \text{ i.i.d.},

with real spherical harmonics orthonormal on the unit sphere,
:math:`\int Y_{lm} Y_{l'm'}\,d\Omega = \delta_{ll'}\delta_{mm'}`. The addition theorem
:math:`\sum_m Y_{lm}(x)^2 = (2l+1)/4\pi` then gives

.. math::
    \operatorname{Cov}[\varepsilon(x), \varepsilon(x')] = \frac1L \sum_{l=0}^{L-1}
        P_l(\cos\gamma_{xx'}), \qquad \operatorname{Var}[\varepsilon(x)] = 1,

where :math:`\gamma_{xx'}` is the angle between the two points: the noise has unit variance
at every grid point, is isotropic, and puts power :math:`1/L` on each total wavenumber
(:math:`4\pi/(L(2l+1))` on each of its :math:`2l+1` coefficients). Unlike i.i.d. noise it is
spatially correlated and has only :math:`L^2` degrees of freedom (half the grid points at 1°).

References:
    Price et al. (2025), "Probabilistic weather forecasting with machine learning", Nature
    637, 84–90 (GenCast), Methods "Diffusion model specifics"; DeepMind's implementation is
    ``graphcast.samplers_utils.spherical_white_noise_like``.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import math
import numbers
from collections.abc import Iterable
from typing import TYPE_CHECKING

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._typing import Key, State
from ..grid import GridSpec
from .samplers import standard_normal_noise

if TYPE_CHECKING:
    from dinosaur.spherical_harmonic import Grid

LATENT_NOISES = ("gaussian", "spherical")

# A coordinate matches a dinosaur node set when it is within this fraction of the grid spacing:
# loose enough for latitudes stored in float32 or with a few decimals, far tighter than the
# gap between dinosaur's node sets (their largest differences exceed 10 % of a spacing).
_TOLERANCE = 1e-3


class AbstractLatentNoise(eqx.Module):
    """``noise(key, template)``: unit-variance noise with the shape and dtype of ``template``.

    A pure function of ``key``: the same key gives the same draw, with no global state.
    """

    @abc.abstractmethod
    def __call__(self, key: Key, template: State) -> State:
        """A draw with ``template``'s shape and dtype (``template``'s values are unused)."""


class GaussianNoise(AbstractLatentNoise):
    r"""I.i.d. :math:`\mathcal N(0, 1)` at every entry of the template."""

    def __call__(self, key: Key, template: State) -> State:
        return standard_normal_noise(key, template)


def _float_tuple(values: Iterable[float]) -> tuple[float, ...]:
    return tuple(float(v) for v in np.asarray(values, dtype=float).ravel())


class SphericalWhiteNoise(AbstractLatentNoise):
    r"""GenCast's band-limited white noise on the sphere (Price et al. 2025), for frames
    ``(..., lat, lon)``: independent draws for every leading index.

    .. math::
        \varepsilon = \sqrt{4\pi} \sum_{l<L} \sum_{|m| \le l}
            \frac{\xi_{lm}}{\sqrt{L(2l+1)}}\, Y_{lm}, \qquad \xi_{lm} \sim \mathcal N(0, 1),

    synthesised on the grid with the real spherical harmonics of ``dinosaur`` (orthonormal on
    the unit sphere), so that :math:`\operatorname{Var}\varepsilon = 1` at every grid point
    exactly and the power per total wavenumber is :math:`1/L` (module docstring).

    Attributes:
        latitudes: degrees north, ascending or descending; dinosaur's cell-centred equiangular
            (``GridSpec.regular``), equiangular-with-poles (GenCast's 1° grid) or Gaussian
            latitudes for this number of rows.
        longitudes: degrees east, ``360 i / n_lon`` for ``i = 0, …, n_lon - 1``.
        total_wavenumbers: the band limit :math:`L` (total wavenumbers ``l < L``); ``None``
            is GenCast's :math:`L = \lfloor n_\text{lon}/2 \rfloor`, the most the longitudes
            resolve.
    """

    latitudes: tuple[float, ...] = eqx.field(static=True, converter=_float_tuple)
    longitudes: tuple[float, ...] = eqx.field(static=True, converter=_float_tuple)
    total_wavenumbers: int | None = eqx.field(static=True, default=None)

    def __check_init__(self) -> None:
        _synthesis(self.latitudes, self.longitudes, self.total_wavenumbers)  # validates

    @classmethod
    def from_grid(cls, grid: GridSpec, total_wavenumbers: int | None = None) -> SphericalWhiteNoise:
        """The noise on ``grid``'s latitudes and longitudes."""
        return cls(grid.latitudes, grid.longitudes, total_wavenumbers)

    @property
    def band_limit(self) -> int:
        """:math:`L`: the noise holds total wavenumbers ``l = 0, …, L - 1``."""
        return _synthesis(self.latitudes, self.longitudes, self.total_wavenumbers).band_limit

    @property
    def spectral_grid(self) -> Grid:
        """The ``dinosaur.spherical_harmonic.Grid`` of the synthesis (its nodal arrays are
        ``(lon, lat)`` with latitudes ascending from the south pole)."""
        return _synthesis(self.latitudes, self.longitudes, self.total_wavenumbers).grid

    def __call__(
        self, key: Key, template: Float[Array, "*batch lat lon"]
    ) -> Float[Array, "*batch lat lon"]:
        grid_shape = (len(self.latitudes), len(self.longitudes))
        if template.ndim < 2 or template.shape[-2:] != grid_shape:
            raise ValueError(
                f"SphericalWhiteNoise: template has shape {template.shape}, expected "
                f"(..., lat, lon) ending in {grid_shape}"
            )
        synthesis = _synthesis(self.latitudes, self.longitudes, self.total_wavenumbers)
        # Synthesise in at least float32 (a bfloat16 Legendre sum would lose the unit variance).
        dtype = template.dtype if jnp.finfo(template.dtype).bits >= 32 else jnp.float32
        nodal = _synthesise(
            key,
            jnp.asarray(synthesis.legendre, dtype),
            jnp.asarray(synthesis.fourier, dtype),
            template.shape[:-2],
        )
        return nodal.astype(template.dtype)


@functools.partial(jax.jit, static_argnums=3)
def _synthesise(
    key: Key,
    legendre: Float[Array, "m lat l"],
    fourier: Float[Array, "lon m"],
    batch_shape: tuple[int, ...],
) -> Float[Array, "*batch lat lon"]:
    """``Σ_m fourier[i, m] Σ_l legendre[m, j, l] ξ[..., m, l]`` with ``ξ ~ N(0, 1)``.

    Jitted as a whole so that an eager call compiles once rather than op by op.
    """
    # One N(0, 1) per entry of dinosaur's rectangular (m, l) layout; the entries with
    # |m| > l multiply identically zero Legendre columns, so they are drawn and dropped.
    modal_shape = (legendre.shape[0], legendre.shape[2])
    xi = jax.random.normal(key, (*batch_shape, *modal_shape), legendre.dtype)
    # HIGHEST: f32-accurate sums on GPUs/TPUs too (TF32 would round the draw to ~1e-3); the
    # matmuls are tiny next to a denoiser call.
    highest = jax.lax.Precision.HIGHEST
    per_m = jnp.einsum("mjl,...ml->...mj", legendre, xi, precision=highest)
    return jnp.einsum("im,...mj->...ji", fourier, per_m, precision=highest)


def latent_noise_from_name(name: str, grid: GridSpec) -> AbstractLatentNoise:
    """``"gaussian"`` (i.i.d.) or ``"spherical"`` (GenCast's) latent noise on ``grid``."""
    if name == "gaussian":
        return GaussianNoise()
    if name == "spherical":
        return SphericalWhiteNoise.from_grid(grid)
    raise ValueError(f"unknown latent noise {name!r}; choices: {', '.join(LATENT_NOISES)}")


# --------------------------------------------------------------------------------------------
# The synthesis operator (built once per grid with NumPy; applied with jnp)
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Synthesis:
    """``ε[..., j, i] = Σ_m fourier[i, m] Σ_l legendre[m, j, l] ξ[..., m, l]`` on our grid.

    ``legendre`` carries dinosaur's Legendre factors times the spectral amplitude
    :math:`\\sqrt{4\\pi / (L(2l+1))}`, in the grid's latitude order.
    """

    grid: Grid  # dinosaur is imported lazily: it takes seconds to load
    band_limit: int
    legendre: np.ndarray  # (m, lat, l)
    fourier: np.ndarray  # (lon, m)
    orthonormal_legendre: np.ndarray  # (m, lat, l): the Legendre factors of Y_lm, unscaled
    mask: np.ndarray  # (m, l): True where |m| <= l (dinosaur's rectangular layout)


def _show(values: np.ndarray) -> str:
    shown = ", ".join(f"{v:.6g}" for v in values[:3])
    if values.size > 4:
        return f"({shown}, …, {values[-1]:.6g}) ({values.size} values)"
    return f"({', '.join(f'{v:.6g}' for v in values)})"


def _latitude_spacing(latitudes: tuple[float, ...]) -> tuple[str, bool]:
    """dinosaur's name for the latitude nodes, and whether the grid runs north to south."""
    from dinosaur.spherical_harmonic import get_latitude_nodes

    lat = np.asarray(latitudes)
    n = lat.size
    descending = bool(lat[0] > lat[-1])
    ascending = lat[::-1] if descending else lat
    candidates = {}
    for spacing in ("equiangular", "equiangular_with_poles", "gauss"):
        candidates[spacing] = np.rad2deg(np.arcsin(get_latitude_nodes(n, spacing)[0]))
        if np.allclose(ascending, candidates[spacing], rtol=0, atol=_TOLERANCE * 180 / n):
            return spacing, descending
    raise ValueError(
        f"SphericalWhiteNoise.latitudes = {_show(lat)} match none of dinosaur's {n}-row "
        f"latitude spacings; expected (ascending or descending) the cell-centred equiangular "
        f"{_show(candidates['equiangular'])}, the equiangular with poles "
        f"{_show(candidates['equiangular_with_poles'])} or the Gaussian "
        f"{_show(candidates['gauss'])}"
    )


@functools.lru_cache(maxsize=16)
def _synthesis(
    latitudes: tuple[float, ...], longitudes: tuple[float, ...], total_wavenumbers: int | None
) -> _Synthesis:
    """Validate the grid and build its synthesis operator (cached on the static fields)."""
    from dinosaur import spherical_harmonic

    for name, values in (("latitudes", latitudes), ("longitudes", longitudes)):
        if len(values) < 2:
            raise ValueError(f"SphericalWhiteNoise.{name} = {values} must have at least 2 entries")
    lon = np.asarray(longitudes)
    num_lon = lon.size
    expected_lon = 360.0 * np.arange(num_lon) / num_lon
    if not np.allclose(lon, expected_lon, rtol=0, atol=_TOLERANCE * 360 / num_lon):
        raise ValueError(
            f"SphericalWhiteNoise.longitudes = {_show(lon)} must be regular from 0°, i.e. "
            f"360·i/n_lon: expected {_show(expected_lon)}"
        )
    spacing, descending = _latitude_spacing(latitudes)
    # Longitudinal wavenumbers m <= L - 1 < n_lon / 2 stay below the Nyquist wavenumber.
    most = num_lon // 2
    band_limit = most if total_wavenumbers is None else total_wavenumbers
    if (
        isinstance(band_limit, bool)
        or not isinstance(band_limit, numbers.Integral)
        or not 1 <= band_limit <= most
    ):
        raise ValueError(
            f"SphericalWhiteNoise.total_wavenumbers = {total_wavenumbers!r} must be an integer "
            f"in [1, n_lon // 2 = {most}] (or None for {most})"
        )
    band_limit = int(band_limit)
    grid = spherical_harmonic.Grid(
        longitude_wavenumbers=band_limit,
        total_wavenumbers=band_limit,
        longitude_nodes=num_lon,
        latitude_nodes=len(latitudes),
        latitude_spacing=spacing,
    )
    basis = grid.spherical_harmonics.basis
    # dinosaur's basis is fourier[i, m] · legendre[m, j, l] = Y_lm(λ_i, φ_j), orthonormal on
    # the unit sphere (unit-L² Fourier modes times Legendre functions of unit L² norm on
    # [-1, 1]); so the amplitude sqrt(4π / (L (2l + 1))) gives Var ε = 1 exactly.
    _, total = grid.modal_axes
    amplitude = np.sqrt(4 * math.pi / (band_limit * (2 * total + 1)))
    orthonormal = np.asarray(basis.p) * grid.mask[:, None, :]
    if descending:
        orthonormal = orthonormal[:, ::-1, :]  # dinosaur's latitudes ascend from the south
    orthonormal = np.ascontiguousarray(orthonormal)
    return _Synthesis(
        grid,
        band_limit,
        orthonormal * amplitude,
        np.asarray(basis.f),
        orthonormal,
        np.asarray(grid.mask, bool),
    )


def spherical_harmonic_basis(
    latitudes: Iterable[float], longitudes: Iterable[float], band_limit: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""``(legendre, fourier, mask)``: real spherical harmonics on a grid, orthonormal on the
    unit sphere, :math:`Y_{lm}(\lambda_i, \varphi_j) = \text{fourier}[i, m]\,
    \text{legendre}[m, j, l]` for total wavenumbers ``l < band_limit`` (default
    :math:`n_\text{lon}/2`), latitudes in the grid's order; ``mask[m, l]`` marks the
    entries of dinosaur's rectangular ``(m, l)`` layout that are harmonics (:math:`|m| \le
    l`). The grid is validated as :class:`SphericalWhiteNoise` validates it."""
    synthesis = _synthesis(_float_tuple(latitudes), _float_tuple(longitudes), band_limit)
    return synthesis.orthonormal_legendre, synthesis.fourier, synthesis.mask
