r"""A GenCast-style gridded emulator: normalised 12-hour residual on a latitude–longitude grid.

GenCast's conventions (Price et al. 2025), applied to any stack of
``(variable, level)`` channels on an equiangular grid:

* **State.** A particle state is ``(2, channel, lat, lon)`` =
  :math:`(x^{k-1}, x^k)` in physical units; observations see :math:`x^k`.
* **Conditioning.** :math:`c = ((x^{k-1} - \mu)/s, (x^k - \mu)/s)` with per-channel
  statistics :math:`\mu, s` (GenCast's ``mean_by_level`` and ``stddev_by_level``). A card
  with ``network.history = 1`` conditions on :math:`x^k` alone, given in both slots,
  :math:`c = ((x^k - \mu)/s, (x^k - \mu)/s)`: the state still stacks two frames, and the
  older one is ignored. With two states a network can predict each variable's step from its
  own last step, and learn little of how the winds move the temperature; with one it has
  to (``benchmarks/emulator_dynamics.py``).
* **Latent.** The residual normalised by the standard deviation of 12-hour differences,
  :math:`z = (x^{k+1} - x^k)/s_\Delta` (``diffs_stddev_by_level``), and
  :math:`\Phi_s(z) = x^k + s_\Delta z`, affine in :math:`z` as the guidance requires.
* **Denoiser.** EDM preconditioning around
  :class:`~filtrax.emulators.sphere_unet.SphereUNet`, trained on
  :math:`\sigma \in [0.02, 88]`. GenCast takes :math:`\sigma_\text{data} = 1`; a card may
  give one :math:`\sigma_\text{data}` per channel (``network.sigma_data``), the conditional
  spread of the normalised residual, which keeps a small network's members from carrying
  the marginal spread as noise (Price et al. 2025).
* **Noise.** Every diffusion draw comes from :attr:`AtmosphereEmulator.latent_noise`: i.i.d.
  Gaussian by default, or GenCast's band-limited spherical white noise
  (:class:`~filtrax.diffusion.latent_noise.SphericalWhiteNoise`, ``noise="spherical"``).

The channel order is the grid's: every level of each level variable, variable by variable,
then the surface variables (:func:`filtrax.io.heldsuarez_store.stack_channels`). The
statistics files hold one value per channel, so they are GenCast's per-variable-and-level
statistics.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._typing import FramePair, Key, State
from ..diffusion.denoisers import EDMPreconditionedDenoiser
from ..diffusion.latent_noise import (
    AbstractLatentNoise,
    GaussianNoise,
    SphericalWhiteNoise,
    latent_noise_from_name,
)
from ..grid import Channel, GridSpec
from ._base import AbstractTwoFrameEmulator
from .cards import (
    card_and_weights,
    fill_module,
    load_card,
    load_weights,
    module_arrays,
    write_weights,
)
from .sphere_unet import NoisyInputPath, SphereUNet

STATISTICS_FIELDS = ("mean", "std", "diff_std")


class AtmosphereEmulator(AbstractTwoFrameEmulator):
    r"""A second-order gridded emulator of one ``time_step_hours`` transition.

    Attributes:
        denoiser: the EDM-preconditioned network.
        mean, std: per-channel conditioning statistics :math:`\mu, s`.
        diff_std: per-channel residual scale :math:`s_\Delta`.
        grid: latitudes, longitudes and channels (static).
        time_step_hours: the transition length.
        name: the card name or the weights file.
        history: the states the network sees: 2 (GenCast) or 1 (:math:`x^k` in both slots).
        latent_noise: the unit noise of every diffusion draw (:meth:`noise`); i.i.d.
            Gaussian by default, :class:`SphericalWhiteNoise` on :attr:`grid` for GenCast's.
            A sampling choice, not part of the weights.
    """

    # Narrower than AbstractEmulator's: safe, a module's fields are frozen.
    denoiser: EDMPreconditionedDenoiser  # pyright: ignore[reportIncompatibleVariableOverride]
    mean: Float[Array, " channel"]
    std: Float[Array, " channel"]
    diff_std: Float[Array, " channel"]
    grid: GridSpec = eqx.field(static=True)
    time_step_hours: float = eqx.field(static=True, default=12.0)
    name: str = eqx.field(static=True, default="atmosphere")
    history: int = eqx.field(static=True, default=2)
    latent_noise: AbstractLatentNoise = GaussianNoise()

    def __check_init__(self) -> None:
        if self.history not in (1, 2):
            raise ValueError(f"{self.name}: history = {self.history!r}, expected 1 or 2 states")
        noise = self.latent_noise
        if isinstance(noise, SphericalWhiteNoise) and not _same_grid(noise, self.grid):
            raise ValueError(
                f"{self.name}: latent_noise is spherical noise on {len(noise.latitudes)} "
                f"latitudes {noise.latitudes[0]:g}..{noise.latitudes[-1]:g} and "
                f"{len(noise.longitudes)} longitudes, expected the emulator's grid "
                f"({len(self.grid.latitudes)} latitudes {self.grid.latitudes[0]:g}.."
                f"{self.grid.latitudes[-1]:g}, {len(self.grid.longitudes)} longitudes); "
                f"build it with SphericalWhiteNoise.from_grid(emulator.grid)"
            )

    @property
    def state_shape(self) -> tuple[int, ...]:
        return (2, *self.grid.shape)

    def _column(self, values):
        return values[:, None, None]

    def condition(self, state: State) -> State:
        if state.shape != self.state_shape:
            raise ValueError(
                f"{self.name}: a particle state must have shape {self.state_shape} = "
                f"(frame, channel, lat, lon), got {state.shape}"
            )
        if self.history == 1:
            state = jnp.stack([state[-1], state[-1]])
        return (state - self._column(self.mean)[None]) / self._column(self.std)[None]

    def latent_to_frame(self, z: State, state: FramePair) -> State:
        return state[-1] + self._column(self.diff_std) * z

    def noise(self, key: Key, template: State) -> State:
        """Unit latent noise from :attr:`latent_noise` (one independent field per channel)."""
        return self.latent_noise(key, template)


def _same_grid(noise: SphericalWhiteNoise, grid: GridSpec) -> bool:
    return (
        len(noise.latitudes) == len(grid.latitudes)
        and len(noise.longitudes) == len(grid.longitudes)
        and np.allclose(noise.latitudes, grid.latitudes)
        and np.allclose(noise.longitudes, grid.longitudes)
    )


def with_latent_noise(
    emulator: AtmosphereEmulator, noise: str | AbstractLatentNoise
) -> AtmosphereEmulator:
    """``emulator`` drawing its diffusion noise from ``noise``: ``"gaussian"``,
    ``"spherical"`` (GenCast's, on the emulator's grid) or a latent-noise module."""
    return dataclasses.replace(emulator, latent_noise=_latent_noise(noise, emulator.grid))


def _latent_noise(noise: str | AbstractLatentNoise, grid: GridSpec) -> AbstractLatentNoise:
    return latent_noise_from_name(noise, grid) if isinstance(noise, str) else noise


# --------------------------------------------------------------------------------------------
# Cards and weights
# --------------------------------------------------------------------------------------------


def grid_from_card(card: dict) -> GridSpec:
    g = card["grid"]
    channels = []
    for variable in g["level_variables"]:
        channels.extend(Channel(variable, float(level)) for level in g["levels"])
    channels.extend(Channel(variable) for variable in g["surface_variables"])
    return GridSpec(
        tuple(float(v) for v in g["latitudes"]),
        tuple(float(v) for v in g["longitudes"]),
        tuple(channels),
        level_name=g.get("level_name", "sigma"),
    )


def sigma_data_of(values, grid: GridSpec) -> float | tuple[float, ...]:
    """``network.sigma_data`` for ``grid``: one value for all channels, or one per channel."""
    values = tuple(float(v) for v in values)
    if len(values) == 1:
        return values[0]
    if len(values) != len(grid.channels):
        labels = ", ".join(c.label() for c in grid.channels)
        raise ValueError(
            f"network.sigma_data has {len(values)} values; expected 1 (all channels) or "
            f"{len(grid.channels)}, one per channel in this order: {labels}"
        )
    return values


def build_network(architecture: dict, grid: GridSpec, key) -> SphereUNet | NoisyInputPath:
    """The card's or config's ``[network]``: a :class:`SphereUNet`, wrapped in a
    :class:`NoisyInputPath` of ``noisy_path`` terms when that is > 0."""
    terms = int(architecture.get("noisy_path", 0))
    unet_key, path_key = jax.random.split(key)
    network = SphereUNet(
        channels=len(grid.channels),
        condition_frames=2,
        widths=tuple(int(w) for w in architecture["widths"]),
        latitudes=grid.latitudes,
        embed=int(architecture.get("embed", 64)),
        key=unet_key if terms else key,  # without a path, the draws of earlier versions
    )
    size = int(architecture.get("noisy_path_size", 3))
    return with_noisy_path(network, terms, grid, path_key, size=size)


def with_noisy_path(
    network, terms: int, grid: GridSpec, key, *, size: int = 3
) -> SphereUNet | NoisyInputPath:
    """``network`` wrapped in a :class:`NoisyInputPath` of ``terms`` bands of ``size`` ×
    ``size`` stencils (``terms`` 0: unchanged).

    The path's stencils start at zero, so the wrapped network is ``network`` exactly:
    existing weights can be given one and fine-tuned or fit (``training.initialise_from``,
    ``training.path_fit_samples``)."""
    if terms == 0:
        return network
    return NoisyInputPath(network, channels=len(grid.channels), terms=terms, key=key, size=size)


def save_emulator(path: str | Path, emulator: AtmosphereEmulator) -> str:
    """Weights and statistics to ``path`` (npz, no pickles); returns the file's sha256."""
    arrays = module_arrays(emulator.denoiser.network)
    for name in STATISTICS_FIELDS:
        arrays[f"statistics.{name}"] = np.asarray(getattr(emulator, name), np.float32)
    arrays["statistics.time_step_hours"] = np.asarray(emulator.time_step_hours, np.float64)
    return write_weights(path, arrays)


def emulator_from_card(
    card: dict,
    arrays: dict[str, np.ndarray],
    source: str,
    *,
    noise: str | AbstractLatentNoise = "gaussian",
) -> AtmosphereEmulator:
    grid = grid_from_card(card)
    network = fill_module(build_network(card["network"], grid, jax.random.key(0)), arrays, source)
    stats = {}
    for field in STATISTICS_FIELDS:
        key = f"statistics.{field}"
        if key not in arrays:
            raise ValueError(f"{source}: weights lack the array {key!r}")
        if arrays[key].shape != (len(grid.channels),):
            raise ValueError(
                f"{source}: {key} has shape {arrays[key].shape}, expected "
                f"({len(grid.channels)},) (one value per channel)"
            )
        stats[field] = jnp.asarray(arrays[key], jnp.float32)
    stored = arrays.get("statistics.time_step_hours")  # weights written before it lack it
    hours = float(card["data"]["time_step_hours"] if stored is None else stored)
    if not math.isclose(hours, float(card["data"]["time_step_hours"])):
        raise ValueError(
            f"{source}: weights were trained for {hours} h steps, the card says "
            f"{card['data']['time_step_hours']} h"
        )
    try:
        sigma_data = sigma_data_of(card["network"].get("sigma_data", [1.0]), grid)
    except ValueError as error:
        raise ValueError(f"{source}: the card's {error}") from None
    history = card["network"].get("history", 2)
    if history not in (1, 2):
        raise ValueError(f"{source}: the card's network.history = {history!r}, expected 1 or 2")
    return AtmosphereEmulator(
        EDMPreconditionedDenoiser(network, sigma_data=sigma_data),
        grid=grid,
        time_step_hours=hours,
        name=card["name"],
        history=int(history),
        latent_noise=_latent_noise(noise, grid),
        **stats,
    )


def load_emulator(
    card: dict | None,
    weights: str | Path | None = None,
    *,
    noise: str | AbstractLatentNoise = "gaussian",
) -> AtmosphereEmulator:
    """The emulator of a bundled card, or of a ``filtrax train`` output (``weights``, with
    its card, :func:`trained_card` when ``card`` is None); the sha256 is checked either way.
    ``noise`` is its latent noise (:func:`with_latent_noise`)."""
    card, path = card_and_weights(card, weights)
    for section in ("grid", "network", "data"):
        if section not in card:
            raise ValueError(f"card {card.get('name')!r} lacks the [{section}] table")
    arrays = load_weights(path, card["sha256"])
    return emulator_from_card(card, arrays, str(path), noise=noise)


def bundled_emulator(
    name: str, *, noise: str | AbstractLatentNoise = "gaussian"
) -> AtmosphereEmulator:
    """The emulator of the bundled card ``name``, drawing ``noise`` (:func:`with_latent_noise`)."""
    card = load_card(name)
    if card.get("family") != "atmosphere":
        raise ValueError(f"card {name!r} is not a gridded atmosphere emulator")
    return load_emulator(card, noise=noise)
