r"""A hybrid atmosphere emulator: the dynamical core carries the mean, a residual the rest.

The 16 × 32 pure-network cards (:mod:`filtrax.emulators.atmosphere`) learned little of the
dynamics' coupling and draw nearly white members. Here the coupling comes from the equations
themselves, and the randomness from a model of what they miss (issue 23):

.. math::
    x^{k+1} = F(x^k) + \mu + a \odot \mathcal S(B z), \qquad z \sim p(z \mid c),

* **Mean path** :math:`F`: dinosaur's Held–Suarez primitive equations at T21 integrate the
  coarse state 12 h (:class:`~filtrax.dynamics.coarse_forecast.CoarseForecast`). It runs
  forward only, once per particle per cycle, in :meth:`HybridAtmosphereEmulator.advance`: the
  particle state is :math:`s = (x^k, F(x^k))`, so the forecast is conditioning and no
  gradient of the guidance passes through it.
* **Structured residual** :class:`SphericalResidual`: the 12-hour residual
  :math:`r = x^{k+1}_\text{truth} - F(x^k_\text{truth})` has a per-channel, per-latitude mean
  :math:`\mu` and amplitude :math:`a`; its normalised form is modelled as isotropic on the
  sphere with one cross-channel covariance :math:`C_l = B_l B_l^\top` per total wavenumber
  :math:`l`, synthesised by :math:`\mathcal S` from real spherical harmonics. All of it is
  estimated from training residuals (:mod:`filtrax.training.residual`).
* **Latent** :math:`z` ``(channel, m, l)``: the whitened residual's spherical-harmonic
  coefficients in dinosaur's rectangular layout (entries with :math:`|m| > l` are unused).
  :math:`\Phi_s(z) = F(x^k) + \mu + a \odot \mathcal S(Bz)` is affine in :math:`z`, so MMPS
  and the predictive weights act through it unchanged.
* **Denoiser.** With ``StandardNormalDenoiser`` the residual is exactly the Gaussian
  :math:`\mathcal N(\mu, \Sigma)` with :math:`\Sigma = A A^\top`,
  :math:`A = \operatorname{diag}(a)\mathcal S B`, and the denoiser is exact: a diffusion
  model whose network has learned nothing beyond second moments. A learned denoiser on the same
  latent (conditioned on :math:`c`, EDM-preconditioned as GenCast's) can replace it without
  changing anything else.

References:
    Price et al. (2025), GenCast (Nature 637): the latent residual and its conventions.
    Mardani et al. (2025), CorrDiff: residual diffusion on a deterministic base.
    Kochkov et al. (2024), NeuralGCM: a dynamical core with learned corrections.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .._typing import FramePair, State
from ..diffusion.denoisers import AbstractDenoiser, StandardNormalDenoiser
from ..diffusion.latent_noise import spherical_harmonic_basis
from ..grid import GridSpec
from ._base import AbstractEmulator

_HIGHEST = jax.lax.Precision.HIGHEST


class SphericalResidual(eqx.Module):
    r"""The residual's affine map from a white latent: :math:`r = \mu + a \odot \mathcal S(Bz)`.

    .. math::
        (Bz)_{c,m,l} = \sum_{c'} B_{l,c,c'}\, z_{c',m,l}, \qquad
        \mathcal S(w)_{c,j,i} = \sum_m \text{fourier}_{i,m} \sum_l
            \text{legendre}_{m,j,l}\, w_{c,m,l},

    with :math:`Y_{lm}` orthonormal on the unit sphere. For :math:`z \sim \mathcal N(0, I)`
    the covariance of :math:`\mathcal S(Bz)` between points :math:`x, x'` of channels
    :math:`c, c'` is :math:`\sum_l C_{l,cc'} \frac{2l+1}{4\pi} P_l(\cos\gamma_{xx'})`
    (the addition theorem): isotropic, with cross-channel covariance :math:`C_l` at
    wavenumber :math:`l`. ``normalised_covariances`` (:mod:`filtrax.training.residual`) scales
    :math:`C_l` so that this is 1 on the diagonal, hence
    :math:`\operatorname{Var} r_c(\varphi) = a_c(\varphi)^2` exactly.

    **Winds.** A wind component is not an isotropic scalar: the residual's winds are largely
    geostrophic, :math:`u \approx -\partial_y \Phi / f` (correlation 0.6 with the
    geopotential's meridional difference at σ = 0.19, measured on the 32 × 64 residuals). So
    the latent channels of ``u`` and ``v`` (``stream_channels``, ``potential_channels``) carry
    the streamfunction :math:`\psi` and velocity potential :math:`\chi` instead, isotropic and
    cross-correlated with the scalars, and the winds are derived as
    :math:`(u, v) = \mathbf k \times \nabla\psi + \nabla\chi` (dinosaur's
    ``vor_div_to_uv_nodal`` of :math:`\nabla^2\psi, \nabla^2\chi`), then scaled by their
    ``amplitude`` row (fitted so that their variance per latitude is the residual's).
    Geostrophy also ties the mass fields to :math:`\psi` with a coefficient :math:`\approx f`
    that changes sign at the equator, so each scalar channel adds a **balanced part**
    :math:`\sum_k \beta_{c,k}(\varphi)\,\psi_k`, regressed per latitude on the
    streamfunction of every level (``balance``; the balance operator of variational
    assimilation, Derber & Bouttier 1999), and :math:`\mu, a, C_l` describe the unbalanced
    remainder.

    Attributes:
        mean: :math:`\mu`, ``(channel, lat)``.
        amplitude: :math:`a`, ``(channel, lat)``.
        sqrt_covariance: :math:`B_l`, ``(l, channel, channel)``.
        legendre, fourier: the grid's harmonics (``spherical_harmonic_basis``).
        latitudes, longitudes: the grid (static; for the wind transforms).
        balance: :math:`\beta`, ``(channel, lat, level)``, or ``None`` (no balanced part).
        stream_channels, potential_channels: the ``u`` and ``v`` channels, level by level
            (static; empty: every channel an isotropic scalar).
    """

    mean: Float[Array, "channel lat"]
    amplitude: Float[Array, "channel lat"]
    sqrt_covariance: Float[Array, "l channel channel"]
    legendre: Float[Array, "m lat l"]
    fourier: Float[Array, "lon m"]
    balance: Float[Array, "channel lat level"] | None = None
    latitudes: tuple[float, ...] = eqx.field(static=True, default=())
    longitudes: tuple[float, ...] = eqx.field(static=True, default=())
    stream_channels: tuple[int, ...] = eqx.field(static=True, default=())
    potential_channels: tuple[int, ...] = eqx.field(static=True, default=())

    @classmethod
    def on_grid(
        cls, grid: GridSpec, mean, amplitude, sqrt_covariance, winds: bool = False, balance=None
    ) -> SphericalResidual:
        """The residual on ``grid``, band-limited to the number of wavenumbers in
        ``sqrt_covariance``; with ``winds``, its ``u_component_of_wind`` and
        ``v_component_of_wind`` channels come from a streamfunction and a velocity potential."""
        band_limit = int(np.shape(sqrt_covariance)[0])
        legendre, fourier, _ = spherical_harmonic_basis(grid.latitudes, grid.longitudes, band_limit)
        stream, potential = wind_channels(grid) if winds else ((), ())
        f32 = jnp.float32
        return cls(
            jnp.asarray(mean, f32),
            jnp.asarray(amplitude, f32),
            jnp.asarray(sqrt_covariance, f32),
            jnp.asarray(legendre, f32),
            jnp.asarray(fourier, f32),
            None if balance is None else jnp.asarray(balance, f32),
            tuple(grid.latitudes),
            tuple(grid.longitudes),
            stream,
            potential,
        )

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """``(channel, m, l)``."""
        return (self.mean.shape[0], self.legendre.shape[0], self.legendre.shape[2])

    def unit(self, z: Float[Array, "channel m l"]) -> Float[Array, "channel lat lon"]:
        r""":math:`\mathcal S(Bz)`, with the winds derived from :math:`\psi, \chi`."""
        return self._unit(self._coloured(z))

    def _coloured(self, z):
        return jnp.einsum("lcd,dml->cml", self.sqrt_covariance, z, precision=_HIGHEST)

    def _synthesise(self, coloured):
        per_m = jnp.einsum("mjl,cml->cmj", self.legendre, coloured, precision=_HIGHEST)
        return jnp.einsum("im,cmj->cji", self.fourier, per_m, precision=_HIGHEST)

    def _unit(self, coloured):
        unit = self._synthesise(coloured)
        if not self.stream_channels:
            return unit
        u, v = winds_from_potentials(
            coloured[jnp.asarray(self.stream_channels)],
            coloured[jnp.asarray(self.potential_channels)],
            self.latitudes,
            self.longitudes,
            self.legendre.shape[2],
        )
        unit = unit.at[jnp.asarray(self.stream_channels)].set(u.astype(unit.dtype))
        return unit.at[jnp.asarray(self.potential_channels)].set(v.astype(unit.dtype))

    def __call__(self, z: Float[Array, "channel m l"]) -> Float[Array, "channel lat lon"]:
        coloured = self._coloured(z)
        out = self.mean[:, :, None] + self.amplitude[:, :, None] * self._unit(coloured)
        if self.balance is None:
            return out
        # The balanced part of the mass fields, a regression on ψ per latitude (module
        # docstring): geostrophy makes Φ ≈ f ψ, whose sign flips at the equator, which no
        # isotropic cross-covariance can carry.
        psi = self._synthesise(coloured[jnp.asarray(self.stream_channels)])
        return out + jnp.einsum("cjk,kji->cji", self.balance, psi, precision=_HIGHEST)


def wind_channels(grid: GridSpec) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The ``u`` and ``v`` channel indices of ``grid``, level by level (paired)."""
    stream = [i for i, c in enumerate(grid.channels) if c.variable == "u_component_of_wind"]
    potential = [i for i, c in enumerate(grid.channels) if c.variable == "v_component_of_wind"]
    levels_u = [grid.channels[i].level for i in stream]
    if not stream or levels_u != [grid.channels[i].level for i in potential]:
        raise ValueError(
            "a residual with winds needs u_component_of_wind and v_component_of_wind on the "
            f"same levels; the grid has u on {levels_u} and v on "
            f"{[grid.channels[i].level for i in potential]}"
        )
    return tuple(stream), tuple(potential)


def _spectral_grid(latitudes, longitudes, band_limit):
    from ..diffusion.latent_noise import _synthesis

    return _synthesis(tuple(latitudes), tuple(longitudes), band_limit).grid


def winds_from_potentials(psi, chi, latitudes, longitudes, band_limit):
    r""":math:`(u, v)` ``(..., lat, lon)`` of spectral :math:`\psi, \chi` ``(..., m, l)`` on the
    unit sphere: :math:`u = -\partial_\varphi\psi + \partial_\lambda\chi/\cos\varphi`,
    :math:`v = \partial_\lambda\psi/\cos\varphi + \partial_\varphi\chi` (dinosaur)."""
    from dinosaur import spherical_harmonic

    grid = _spectral_grid(latitudes, longitudes, band_limit)
    # Only the |m| <= l entries are harmonics; the derivative recurrences would carry the
    # others (a white latent fills them) into the winds.
    mask = jnp.asarray(grid.mask, psi.dtype)
    with jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"):
        u, v = spherical_harmonic.vor_div_to_uv_nodal(
            grid, grid.laplacian(psi * mask), grid.laplacian(chi * mask)
        )
    return jnp.swapaxes(u, -1, -2), jnp.swapaxes(v, -1, -2)


class HybridAtmosphereEmulator(AbstractEmulator):
    r""":math:`x^{k+1} = F(x^k) + r`, ``r`` from :class:`SphericalResidual` (module docstring).

    A particle state is ``(2, channel, lat, lon)`` = :math:`(x^k, F(x^k))`; observations see
    :math:`x^k`. The conditioning is both frames normalised by the per-channel ``mean`` and
    ``std`` (what a learned denoiser sees; the exact Gaussian denoiser ignores it).

    Attributes:
        denoiser: on the latent ``(channel, m, l)``; exact for ``StandardNormalDenoiser``.
        residual: the latent-to-residual map.
        mean, std: per-channel conditioning statistics.
        grid: latitudes, longitudes and channels (static).
        forecast: :math:`F`, a frame-to-frame function traceable under ``jit``/``vmap``
            (static: the dynamical core's operators are constants).
        time_step_hours: the transition length.
        name: the card name.
    """

    denoiser: AbstractDenoiser
    residual: SphericalResidual
    mean: Float[Array, " channel"]
    std: Float[Array, " channel"]
    grid: GridSpec = eqx.field(static=True)
    forecast: Callable[[State], State] = eqx.field(static=True)
    time_step_hours: float = eqx.field(static=True, default=12.0)
    name: str = eqx.field(static=True, default="hybrid")

    @property
    def state_shape(self) -> tuple[int, ...]:
        return (2, *self.grid.shape)

    def condition(self, state: State) -> State:
        if state.shape != self.state_shape:
            raise ValueError(
                f"{self.name}: a particle state must have shape {self.state_shape} = "
                f"(x^k and its forecast, channel, lat, lon), got {state.shape}"
            )
        return (state - self.mean[None, :, None, None]) / self.std[None, :, None, None]

    def latent_template(self, state: FramePair) -> Float[Array, "*latent"]:
        return jnp.zeros(self.residual.latent_shape, state.dtype)

    def latent_to_frame(self, z: Float[Array, "*latent"], state: FramePair) -> State:
        return state[1] + self.residual(z).astype(state.dtype)

    def advance(self, state: FramePair, frame: State) -> FramePair:
        return jnp.stack([frame, self.forecast(frame).astype(frame.dtype)])

    def current_frame(self, state: FramePair) -> State:
        return state[0]

    def initial_state(
        self, previous: Float[ArrayLike, "*s"], current: Float[ArrayLike, "*s"]
    ) -> FramePair:
        """The particle state of ``current`` (``previous`` is unused: one state suffices)."""
        del previous
        current = jnp.asarray(current)
        return jnp.stack([current, self.forecast(current).astype(current.dtype)])


def gaussian_hybrid(
    grid: GridSpec, forecast, residual: SphericalResidual, mean, std, **kwargs
) -> HybridAtmosphereEmulator:
    """The hybrid emulator whose residual is exactly Gaussian (``StandardNormalDenoiser``)."""
    return HybridAtmosphereEmulator(
        StandardNormalDenoiser(),
        residual,
        jnp.asarray(mean, jnp.float32),
        jnp.asarray(std, jnp.float32),
        grid=grid,
        forecast=forecast,
        **kwargs,
    )


RESIDUAL_FIELDS = ("mean", "amplitude", "sqrt_covariance", "balance")
STATISTICS_FIELDS = ("mean", "std")


def hybrid_arrays(emulator: HybridAtmosphereEmulator) -> dict[str, np.ndarray]:
    """What a hybrid card's weights file holds (npz, no pickles)."""
    arrays = {
        f"residual.{k}": np.asarray(getattr(emulator.residual, k))
        for k in RESIDUAL_FIELDS
        if getattr(emulator.residual, k) is not None
    }
    arrays.update({f"statistics.{k}": np.asarray(getattr(emulator, k)) for k in STATISTICS_FIELDS})
    arrays["statistics.time_step_hours"] = np.asarray(emulator.time_step_hours, np.float64)
    return arrays


def _checked(arrays: dict[str, np.ndarray], key: str, shape: tuple[int, ...], source: str):
    if key not in arrays:
        raise ValueError(f"{source}: weights lack the array {key!r}")
    if arrays[key].shape != shape:
        raise ValueError(f"{source}: {key} has shape {arrays[key].shape}, expected {shape}")
    return arrays[key]


def hybrid_from_card(card: dict, arrays: dict[str, np.ndarray], source: str):
    """The emulator of a ``family = "hybrid_atmosphere"`` card and its weights' arrays."""
    from ..dynamics.coarse_forecast import coarse_forecast
    from .atmosphere import grid_from_card

    grid = grid_from_card(card)
    channels, num_lat, num_lon = grid.shape
    base = card["base"]
    band_limit = int(card["residual"]["band_limit"])
    levels = grid.levels_of(grid.channels[0].variable)
    forecast = coarse_forecast(base["truth_grid"], len(levels), num_lat, num_lon)
    if not np.allclose(forecast.latitudes, grid.latitudes, atol=1e-4):
        raise ValueError(
            f"{source}: the card's latitudes are not the {num_lat}-row equiangular grid of "
            f"its dynamical core (ascending from {forecast.latitudes[0]:g})"
        )
    shapes = {
        "mean": (channels, num_lat),
        "amplitude": (channels, num_lat),
        "sqrt_covariance": (band_limit, channels, channels),
    }
    if "residual.balance" in arrays:
        shapes["balance"] = (channels, num_lat, len(levels))
    residual = {k: _checked(arrays, f"residual.{k}", s, source) for k, s in shapes.items()}
    stats = {k: _checked(arrays, f"statistics.{k}", (channels,), source) for k in STATISTICS_FIELDS}
    winds = bool(card["residual"].get("winds", False))
    return gaussian_hybrid(
        grid,
        forecast,
        SphericalResidual.on_grid(grid, **residual, winds=winds),
        stats["mean"],
        stats["std"],
        time_step_hours=float(card["data"]["time_step_hours"]),
        name=card["name"],
    )


def load_hybrid(card: dict | None, weights=None, *, noise="gaussian"):
    """The hybrid emulator of a bundled card, or of a fitted output (``weights`` with its
    sidecar card); the sha256 is checked. Its latent is already the residual's own
    spherical-harmonic coefficients, so the only latent noise is ``"gaussian"``."""

    from .cards import card_and_weights, load_weights

    if noise != "gaussian":
        raise ValueError(
            f"model.noise = {noise!r}: a hybrid emulator's latent is white spherical-harmonic "
            f"coefficients already; expected 'gaussian'"
        )
    card, path = card_and_weights(card, weights)
    for section in ("grid", "base", "residual", "data"):
        if section not in card:
            raise ValueError(f"card {card.get('name')!r} lacks the [{section}] table")
    return hybrid_from_card(card, load_weights(path, card["sha256"]), str(path))
