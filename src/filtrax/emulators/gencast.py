r"""DeepMind's GenCast behind filtrax's emulator interface (optional extra ``gencast``).

Price et al. (2025), "Probabilistic weather forecasting with machine learning", Nature
637, and its supplementary information. Two layers:

**Pure, tested without GenCast** (everything except :func:`load_gencast`):

* :func:`gencast_channels` — the stacking order of ``model_utils.dataset_to_stacked``:
  variables in alphabetical order of their names, each level variable's levels contiguous
  and ascending (84 target channels at 13 levels: 0 ``10m_u``, 2 ``2m_temperature``,
  3–15 ``geopotential``, …, 31–43 ``temperature``, 44 ``total_precipitation_12hr``). The
  same :class:`~filtrax.grid.GridSpec` and :mod:`filtrax.io.datasets` stacking code
  serve our own gridded emulators.
* :func:`read_statistics` — ``mean_by_level``, ``stddev_by_level``,
  ``diffs_stddev_by_level`` and ``min_by_level`` as one value per channel.
* :class:`GenCastEmulator` — normalised inputs :math:`(x-\mu)/s`; the latent is the
  normalised 12-hour residual :math:`z = (x^{k+1}-x^k)/s_\Delta` for variables that are
  inputs, and :math:`z = (x-\mu)/s` for target-only ones (precipitation), so
  :math:`\Phi_s(z)` is affine per channel; SST over land is filled with its minimum
  before normalisation (GenCast's ``NaNCleaner``), so particle states stay finite and
  :meth:`GenCastEmulator.with_nans` puts the NaNs back for output; forcings
  (``year_progress_sin/cos``, ``day_progress_sin/cos``) are computed in JAX from the
  particle's valid time, for the input times and the target time
  (:func:`progress_forcings`); diffusion noise is GenCast's band-limited spherical white
  noise (:class:`~filtrax.diffusion.latent_noise.SphericalWhiteNoise`).

**Thin, not run here** (:func:`load_gencast`): import DeepMind's ``graphcast``, load a
checkpoint, build ``denoiser.Denoiser`` inside ``haiku.transform`` exactly as
``GenCast.__init__`` does (so the checkpoint parameters are used unchanged), optionally
switch its attention to the GPU kernels, and wrap it as the raw network :math:`F_\theta`
of :class:`~filtrax.diffusion.denoisers.EDMPreconditionedDenoiser` (with
``noise_input="sigma"``: GenCast encodes :math:`\log\sigma` itself).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PyTree

from .._typing import Key, State
from ..diffusion.denoisers import EDMPreconditionedDenoiser
from ..diffusion.latent_noise import AbstractLatentNoise, SphericalWhiteNoise
from ..grid import Channel, GridSpec
from ..io.datasets import check_grid_coordinates, frames_at_times
from ._base import AbstractEmulator

GENCAST_LEVELS = (50, 100, 150, 200, 250, 300, 400, 500, 600, 700, 850, 925, 1000)
SURFACE_VARIABLES = (
    "2m_temperature",
    "mean_sea_level_pressure",
    "10m_v_component_of_wind",
    "10m_u_component_of_wind",
    "total_precipitation_12hr",
    "sea_surface_temperature",
)
LEVEL_VARIABLES = (
    "temperature",
    "geopotential",
    "u_component_of_wind",
    "v_component_of_wind",
    "vertical_velocity",
    "specific_humidity",
)
TARGET_ONLY_VARIABLES = ("total_precipitation_12hr",)
FORCING_VARIABLES = (
    "year_progress_sin",
    "year_progress_cos",
    "day_progress_sin",
    "day_progress_cos",
)
STATIC_VARIABLES = ("geopotential_at_surface", "land_sea_mask")
SEA_SURFACE_TEMPERATURE = "sea_surface_temperature"
STATISTICS_FILES = {
    "mean": "mean_by_level.nc",
    "std": "stddev_by_level.nc",
    "diff_std": "diffs_stddev_by_level.nc",
    "minimum": "min_by_level.nc",
}
UNITS = {
    "2m_temperature": "K",
    "temperature": "K",
    "sea_surface_temperature": "K",
    "mean_sea_level_pressure": "Pa",
    "10m_u_component_of_wind": "m s-1",
    "10m_v_component_of_wind": "m s-1",
    "u_component_of_wind": "m s-1",
    "v_component_of_wind": "m s-1",
    "geopotential": "m2 s-2",
    "vertical_velocity": "Pa s-1",
    "specific_humidity": "kg kg-1",
    "total_precipitation_12hr": "m",
}
SECONDS_PER_DAY = 86_400
# GenCast's year progress uses the mean tropical year (graphcast data_utils).
DAYS_PER_YEAR = 365.24219
TIME_STEP_SECONDS = 12 * 3600

GENCAST_INSTALL_HINT = (
    "the GenCast adapter needs DeepMind's graphcast code and dm-haiku, which filtrax does not "
    "vendor: pip install 'filtrax[gencast]' "
    "'graphcast @ git+https://github.com/google-deepmind/graphcast' (the PyPI package named "
    "'graphcast' is an unrelated project). The checkpoint and statistics come from the "
    "dm_graphcast bucket (gencast/params, gencast/stats); see docs/experiments/gencast.md."
)


# --------------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------------


def gencast_channels(
    levels: Sequence[float] = GENCAST_LEVELS,
    surface: Sequence[str] = SURFACE_VARIABLES,
    level_variables: Sequence[str] = LEVEL_VARIABLES,
) -> tuple[Channel, ...]:
    """GenCast's target channels in its stacking order (alphabetical, levels ascending)."""
    channels: list[Channel] = []
    for variable in sorted((*surface, *level_variables)):
        if variable in level_variables:
            channels.extend(Channel(variable, float(level)) for level in sorted(levels))
        else:
            channels.append(Channel(variable))
    return tuple(channels)


def gencast_grid(
    resolution_degrees: float = 1.0, channels: Sequence[Channel] | None = None
) -> GridSpec:
    """The equiangular grid with poles, latitudes ascending, longitudes from 0 (GenCast's
    1° grid is 181 × 360; 0.25° is 721 × 1440)."""
    num_lat = round(180 / resolution_degrees) + 1
    num_lon = round(360 / resolution_degrees)
    latitudes = np.linspace(-90.0, 90.0, num_lat)
    longitudes = np.arange(num_lon) * (360.0 / num_lon)
    return GridSpec(
        tuple(latitudes.tolist()),
        tuple(longitudes.tolist()),
        tuple(gencast_channels() if channels is None else channels),
        level_name="pressure_hPa",
    )


def read_statistics(directory: str | Path, channels: Sequence[Channel]) -> dict[str, np.ndarray]:
    """GenCast's statistics files as ``{"mean", "std", "diff_std", "minimum"}`` vectors.

    Each file holds one variable per field name, with a ``level`` dimension for level
    variables. Target-only variables (precipitation) have no ``diffs_stddev`` entry that
    GenCast uses; a missing one is reported as NaN there and nowhere else.
    """
    directory = Path(directory)
    out = {}
    for field, filename in STATISTICS_FILES.items():
        path = directory / filename
        if not path.exists():
            raise FileNotFoundError(f"GenCast statistics: {path} not found")
        with xr.open_dataset(path) as dataset:
            out[field] = statistics_vector(dataset, channels, source=str(path), field=field)
            if field in ("mean", "std"):
                default = 0.0 if field == "mean" else 1.0
                for group in ("forcing", "static"):
                    names = FORCING_VARIABLES if group == "forcing" else STATIC_VARIABLES
                    out[f"{group}_{field}"] = np.asarray(
                        [float(dataset[v].values) if v in dataset else default for v in names],
                        np.float32,
                    )
    return out


def statistics_vector(
    dataset: xr.Dataset, channels: Sequence[Channel], *, source: str, field: str
) -> np.ndarray:
    """One statistic per channel from a ``*_by_level`` dataset."""
    values = []
    for channel in channels:
        if channel.variable not in dataset:
            if field == "diff_std" and channel.variable in TARGET_ONLY_VARIABLES:
                values.append(np.nan)
                continue
            present = sorted(map(str, dataset.data_vars))
            raise ValueError(f"{source}: no variable {channel.variable!r} (has {present})")
        entry = dataset[channel.variable]
        if channel.level is not None:
            if "level" not in entry.dims or channel.level not in entry["level"].values:
                raise ValueError(f"{source}: {channel.variable!r} has no level {channel.level:g}")
            entry = entry.sel(level=channel.level)
        values.append(float(entry.values))
    return np.asarray(values, np.float32)


def _canonical_era5(dataset: xr.Dataset) -> xr.Dataset:
    """``lat``/``lon`` ascending, no ``batch``, a ``time`` axis of datetimes.

    Accepts WeatherBench-2 names (``latitude``, ``longitude``, descending latitudes) and
    GenCast's example files (``batch`` of size 1, ``datetime`` coordinate on ``time``).
    """
    renames = {k: v for k, v in (("latitude", "lat"), ("longitude", "lon")) if k in dataset.dims}
    dataset = dataset.rename(renames)
    if "batch" in dataset.dims:
        dataset = dataset.isel(batch=0)
    if "datetime" in dataset.coords and "time" in dataset.dims:
        dataset = dataset.drop_vars("time").rename({"datetime": "time"})
    return dataset.sortby("lat")


def era5_frames(dataset: xr.Dataset, grid: GridSpec, times: np.ndarray) -> np.ndarray:
    """ERA5 as frames ``(time, channel, lat, lon)`` on ``grid`` (SST NaNs kept)."""
    frames = frames_at_times(_canonical_era5(dataset), grid, times, source="the ERA5 dataset")
    return frames.astype(np.float32)


def era5_statics(
    dataset: xr.Dataset, grid: GridSpec, statistics: dict[str, np.ndarray]
) -> np.ndarray:
    """``geopotential_at_surface`` and ``land_sea_mask``, normalised, ``(2, lat, lon)``."""
    dataset = _canonical_era5(dataset)
    check_grid_coordinates(dataset, grid, source="the ERA5 dataset")
    fields = []
    for i, variable in enumerate(STATIC_VARIABLES):
        if variable not in dataset:
            raise ValueError(f"the ERA5 dataset lacks the static field {variable!r}")
        values = np.asarray(dataset[variable].transpose("lat", "lon").values, np.float32)
        fields.append((values - statistics["static_mean"][i]) / statistics["static_std"][i])
    return np.stack(fields)


def sst_missing_mask(frame: np.ndarray, grid: GridSpec) -> np.ndarray:
    """Where a frame's SST is NaN (land and sea ice edge), ``(lat, lon)``."""
    if SEA_SURFACE_TEMPERATURE not in grid.variables:
        return np.zeros(grid.shape[1:], bool)
    return np.isnan(np.asarray(frame)[grid.channel_index(SEA_SURFACE_TEMPERATURE)])


# --------------------------------------------------------------------------------------------
# Forcings
# --------------------------------------------------------------------------------------------


def progress_forcings(
    seconds: Int[ArrayLike, ""], longitudes: Sequence[float], num_lat: int
) -> Float[Array, "4 lat lon"]:
    r"""``year_progress_sin/cos`` and ``day_progress_sin/cos`` at a valid time.

    ``seconds`` counts from 1970-01-01T00:00 UTC. With :math:`d` the (fractional) days,
    year progress is :math:`(d / 365.24219) \bmod 1` and day progress at longitude
    :math:`\lambda` is :math:`(d \bmod 1 + \lambda/360) \bmod 1` (local mean solar time);
    each enters as :math:`\sin 2\pi p, \cos 2\pi p` (graphcast ``data_utils``).
    Integer seconds keep the time of day exact in float32.
    """
    seconds = jnp.asarray(seconds)
    whole_days = (seconds // SECONDS_PER_DAY).astype(jnp.float32)
    day_fraction = (seconds % SECONDS_PER_DAY).astype(jnp.float32) / SECONDS_PER_DAY
    year = jnp.mod((whole_days + day_fraction) / DAYS_PER_YEAR, 1.0)
    lon = jnp.asarray(longitudes, jnp.float32)
    day = jnp.mod(day_fraction + lon / 360.0, 1.0)
    shape = (num_lat, lon.shape[0])
    year_angle = jnp.broadcast_to(2 * jnp.pi * year, shape)
    day_angle = jnp.broadcast_to(2 * jnp.pi * day[None, :], shape)
    return jnp.stack(
        [jnp.sin(year_angle), jnp.cos(year_angle), jnp.sin(day_angle), jnp.cos(day_angle)]
    )


def seconds_since_epoch(time: np.datetime64 | str) -> int:
    """Whole seconds since 1970-01-01 (int32 holds them until 2038)."""
    # NumPy's stubs lack the (datetime64, unit) constructor that converts units.
    return int(np.datetime64(time, "s").astype(np.int64))  # pyright: ignore[reportCallIssue, reportArgumentType]


# --------------------------------------------------------------------------------------------
# The emulator
# --------------------------------------------------------------------------------------------


class GenCastState(eqx.Module):
    """A particle: the two input frames in physical units (SST filled over land) and the
    valid time of the later one.

    Attributes:
        frames: ``(2, channel, lat, lon)`` = :math:`(x^{k-1}, x^k)`.
        seconds: valid time of :math:`x^k`, seconds since 1970-01-01 (int32).
    """

    frames: Float[Array, "2 channel lat lon"]
    seconds: Int[Array, ""]


class GenCastEmulator(AbstractEmulator):
    r"""GenCast's conventions around any raw network ``F(z_scaled, σ, cond)``.

    The conditioning handed to the network is a dict of arrays (stacked, ``(…, lat, lon)``):
    ``inputs`` :math:`((x^{k-1}-\mu)/s, (x^k-\mu)/s)` on the input channels,
    ``input_forcings`` at both input times, ``target_forcings`` at the target time and the
    normalised ``statics``.

    Attributes:
        denoiser: EDM preconditioning around the raw network (``noise_input="sigma"``).
        mean, std: input/target normalisation, one value per channel (``mean_by_level``,
            ``stddev_by_level``).
        diff_std: residual scale per channel (``diffs_stddev_by_level``; unused for
            target-only channels).
        minimum: per-channel minimum (``min_by_level``): SST's fill value over land.
        sst_missing: ``(lat, lon)``, True where SST is undefined (land).
        statics: normalised static fields ``(static, lat, lon)`` in :data:`STATIC_VARIABLES`
            order.
        forcing_mean, forcing_std: normalisation of :data:`FORCING_VARIABLES` (GenCast
            normalises every input that its statistics files list; 0 and 1 where absent).
        latent_noise: the diffusion noise (GenCast: spherical white noise on ``grid``).
        grid: grid and target channels (static).
        target_only: per channel, True for variables that are not inputs (static).
    """

    # Narrower than AbstractEmulator's: safe, a module's fields are frozen.
    denoiser: EDMPreconditionedDenoiser  # pyright: ignore[reportIncompatibleVariableOverride]
    mean: Float[Array, " channel"]
    std: Float[Array, " channel"]
    diff_std: Float[Array, " channel"]
    minimum: Float[Array, " channel"]
    sst_missing: Bool[Array, "lat lon"]
    statics: Float[Array, "static lat lon"]
    forcing_mean: Float[Array, " forcing"]
    forcing_std: Float[Array, " forcing"]
    latent_noise: AbstractLatentNoise
    grid: GridSpec = eqx.field(static=True)
    target_only: tuple[bool, ...] = eqx.field(static=True)
    time_step_seconds: int = eqx.field(static=True, default=TIME_STEP_SECONDS)
    name: str = eqx.field(static=True, default="gencast")

    def __check_init__(self) -> None:
        num = len(self.grid.channels)
        for field in ("mean", "std", "diff_std", "minimum"):
            shape = tuple(getattr(self, field).shape)
            if shape != (num,):
                raise ValueError(
                    f"GenCastEmulator.{field} has shape {shape}, expected ({num},) "
                    f"(one value per channel)"
                )
        if len(self.target_only) != num:
            raise ValueError(
                f"GenCastEmulator.target_only has {len(self.target_only)} entries, expected {num}"
            )
        grid_shape = self.grid.shape[1:]
        if tuple(self.sst_missing.shape) != grid_shape:
            raise ValueError(
                f"GenCastEmulator.sst_missing has shape {tuple(self.sst_missing.shape)}, "
                f"expected {grid_shape}"
            )
        if tuple(self.statics.shape[1:]) != grid_shape:
            raise ValueError(
                f"GenCastEmulator.statics has shape {tuple(self.statics.shape)}, expected "
                f"(static, *{grid_shape})"
            )

    # -- channel bookkeeping (static) --------------------------------------------------------

    @property
    def input_channels(self) -> tuple[int, ...]:
        return tuple(i for i, only in enumerate(self.target_only) if not only)

    @property
    def sst_channel(self) -> int | None:
        for i, channel in enumerate(self.grid.channels):
            if channel.variable == SEA_SURFACE_TEMPERATURE:
                return i
        return None

    def _column(self, values: Array) -> Array:
        return values[:, None, None]

    # -- the emulator interface -------------------------------------------------------------

    def fill_missing(self, frame: State) -> State:
        """SST over land := its minimum (GenCast's ``NaNCleaner`` fill), keeping states finite."""
        channel = self.sst_channel
        if channel is None:
            return frame
        filled = jnp.where(self.sst_missing, self.minimum[channel], frame[channel])
        return frame.at[channel].set(filled)

    def with_nans(self, frame: State) -> State:
        """The frame as GenCast reports it: NaN over land in SST."""
        channel = self.sst_channel
        if channel is None:
            return frame
        return frame.at[channel].set(jnp.where(self.sst_missing, jnp.nan, frame[channel]))

    def condition(self, state: GenCastState) -> PyTree:
        if tuple(state.frames.shape) != (2, *self.grid.shape):
            raise ValueError(
                f"{self.name}: GenCastState.frames must have shape {(2, *self.grid.shape)}, "
                f"got {tuple(state.frames.shape)}"
            )
        inputs = (state.frames - self._column(self.mean)[None]) / self._column(self.std)[None]
        lat = len(self.grid.latitudes)
        lon = self.grid.longitudes
        times = state.seconds + self.time_step_seconds * jnp.arange(-1, 2)
        forcings = jax.vmap(lambda t: progress_forcings(t, lon, lat))(times)
        forcing_mean = self._column(self.forcing_mean)[None]
        forcings = (forcings - forcing_mean) / self._column(self.forcing_std)[None]
        return {
            "inputs": inputs[:, jnp.asarray(self.input_channels)],
            "input_forcings": forcings[:2],
            "target_forcings": forcings[2],
            "statics": self.statics,
        }

    def latent_template(self, state: GenCastState) -> State:
        return jnp.zeros_like(state.frames[-1])

    def latent_to_frame(self, z: State, state: GenCastState) -> State:
        residual = state.frames[-1] + self._column(self.diff_std) * z
        absolute = self._column(self.mean) + self._column(self.std) * z
        target_only = jnp.asarray(self.target_only)[:, None, None]
        return jnp.where(target_only, absolute, residual)

    def advance(self, state: GenCastState, frame: State) -> GenCastState:
        frames = jnp.stack([state.frames[-1], self.fill_missing(frame)])
        return GenCastState(frames, state.seconds + self.time_step_seconds)

    def current_frame(self, state: GenCastState) -> State:
        return state.frames[-1]

    def noise(self, key: Key, template: State) -> State:
        return self.latent_noise(key, template)

    def initial_state(
        self, previous: Float[ArrayLike, "*s"], current: Float[ArrayLike, "*s"], time
    ) -> GenCastState:
        """The particle :math:`(x^{k-1}, x^k)` valid at ``time`` (SST NaNs filled)."""
        frames = jnp.stack([self.fill_missing(jnp.asarray(f)) for f in (previous, current)])
        return GenCastState(frames, jnp.asarray(seconds_since_epoch(time), jnp.int32))


def gencast_emulator(
    network: Callable,
    statistics: dict[str, np.ndarray],
    grid: GridSpec,
    *,
    sst_missing: np.ndarray | None = None,
    statics: np.ndarray | None = None,
    latent_noise: AbstractLatentNoise | None = None,
    name: str = "gencast",
) -> GenCastEmulator:
    """Assemble a :class:`GenCastEmulator` around ``network`` (GenCast's or a stand-in)."""
    shape = grid.shape[1:]
    target_only = tuple(c.variable in TARGET_ONLY_VARIABLES for c in grid.channels)
    diff_std = np.where(target_only, 1.0, statistics["diff_std"]).astype(np.float32)
    checked = {f: statistics[f] for f in ("mean", "std", "minimum")} | {"diff_std": diff_std}
    for field, values in checked.items():
        bad = [grid.channels[i].label() for i in np.flatnonzero(~np.isfinite(values))]
        if bad:
            raise ValueError(f"GenCast statistics: {field} is not finite for {bad}")
    return GenCastEmulator(
        EDMPreconditionedDenoiser(network, sigma_data=1.0, noise_input="sigma"),
        mean=jnp.asarray(statistics["mean"], jnp.float32),
        std=jnp.asarray(statistics["std"], jnp.float32),
        diff_std=jnp.asarray(diff_std),
        minimum=jnp.asarray(statistics["minimum"], jnp.float32),
        sst_missing=jnp.zeros(shape, bool) if sst_missing is None else jnp.asarray(sst_missing),
        statics=(
            jnp.zeros((len(STATIC_VARIABLES), *shape), jnp.float32)
            if statics is None
            else jnp.asarray(statics, jnp.float32)
        ),
        forcing_mean=jnp.asarray(statistics.get("forcing_mean", np.zeros(4)), jnp.float32),
        forcing_std=jnp.asarray(statistics.get("forcing_std", np.ones(4)), jnp.float32),
        latent_noise=SphericalWhiteNoise.from_grid(grid) if latent_noise is None else latent_noise,
        grid=grid,
        target_only=target_only,
        name=name,
    )


# --------------------------------------------------------------------------------------------
# The thin layer around DeepMind's code (not run on our machines)
# --------------------------------------------------------------------------------------------


def gpu_attention(architecture_config):
    """A copy of ``denoiser_architecture_config`` using attention kernels that run on GPUs.

    Splash attention is TPU-only; graphcast's documentation switches the sparse
    transformer to ``attention_type="triblockdiag_mha"`` with ``mask_type="full"``. The
    input config is not modified.
    """
    transformer = dataclasses.replace(
        architecture_config.sparse_transformer_config,
        attention_type="triblockdiag_mha",
        mask_type="full",
    )
    return dataclasses.replace(architecture_config, sparse_transformer_config=transformer)


def _import_graphcast():
    try:
        # Optional dependencies (the `gencast` extra): absent in most environments.
        import haiku  # pyright: ignore[reportMissingImports]
        from graphcast import (  # pyright: ignore[reportMissingImports]
            checkpoint,
            denoiser,
            gencast,
            xarray_jax,
        )
    except ModuleNotFoundError as error:
        raise ImportError(f"{error}: {GENCAST_INSTALL_HINT}") from None
    return haiku, checkpoint, denoiser, gencast, xarray_jax


def require_graphcast() -> None:
    """Raise an ImportError with the install hint unless DeepMind's ``graphcast`` imports."""
    _import_graphcast()


class _Opaque:
    """A hashable handle for a static, non-array object (compared by identity)."""

    def __init__(self, value):
        self.value = value


class GraphcastNetwork(eqx.Module):
    """GenCast's raw ``denoiser.Denoiser`` as ``F(z_scaled, σ, cond)`` on stacked arrays.

    Attributes:
        params: the checkpoint's parameters, unchanged.
        apply: ``haiku.transform(...).apply`` of the raw denoiser (static).
        grid: target grid and channels; ``input_variables``: the task's input names.
    """

    params: PyTree
    apply: _Opaque = eqx.field(static=True)
    grid: GridSpec = eqx.field(static=True)
    input_channels: tuple[int, ...] = eqx.field(static=True)
    input_variables: tuple[str, ...] = eqx.field(static=True)

    def __call__(self, z_scaled: State, sigma: Array, cond: PyTree) -> State:
        _, _, _, _, xarray_jax = _import_graphcast()
        grid = self.grid
        input_grid = dataclasses.replace(
            grid, channels=tuple(grid.channels[i] for i in self.input_channels)
        )
        inputs = _to_dataset(xarray_jax, cond["inputs"], input_grid)
        inputs.update(_forcings_dataset(xarray_jax, cond["input_forcings"], grid))
        inputs = inputs.drop_vars([v for v in FORCING_VARIABLES if v not in self.input_variables])
        for i, variable in enumerate(STATIC_VARIABLES):
            if variable in self.input_variables:
                inputs[variable] = xarray_jax.DataArray(
                    cond["statics"][i], dims=("lat", "lon"), coords=_lat_lon(grid)
                )
        forcings = _forcings_dataset(xarray_jax, cond["target_forcings"][None], grid)
        noisy = _to_dataset(xarray_jax, z_scaled[None], grid)
        noise_levels = xarray_jax.DataArray(jnp.reshape(sigma, (1,)), dims=("batch",))
        out = self.apply.value(self.params, None, inputs, noisy, noise_levels, forcings)
        return _from_dataset(out, grid)


def _lat_lon(grid: GridSpec) -> dict:
    # The denoiser builds its grid-to-mesh graph from these coordinates.
    return {"lat": np.asarray(grid.latitudes), "lon": np.asarray(grid.longitudes)}


def _forcings_dataset(xarray_jax, forcings, grid: GridSpec) -> xr.Dataset:
    """``(time, 4, lat, lon)`` progress features → GenCast's shapes: year progress
    ``(batch, time)``, day progress ``(batch, time, lon)``."""
    lon = {"lon": np.asarray(grid.longitudes)}
    data = {}
    for i, variable in enumerate(FORCING_VARIABLES):
        if variable.startswith("year"):
            values = forcings[None, :, i, 0, 0]
            data[variable] = xarray_jax.DataArray(values, dims=("batch", "time"))
        else:
            data[variable] = xarray_jax.DataArray(
                forcings[None, :, i, 0, :], dims=("batch", "time", "lon"), coords=lon
            )
    return xr.Dataset(data)


def _to_dataset(xarray_jax, frames, grid: GridSpec) -> xr.Dataset:
    """Stacked ``(time, channel, lat, lon)`` → a batch-1 Dataset with GenCast's dims."""
    data = {}
    coords = _lat_lon(grid)
    for variable in grid.variables:
        levels = grid.levels_of(variable)
        values = frames[:, jnp.asarray([grid.channel_index(variable, lev) for lev in levels])]
        if levels == (None,):
            data[variable] = xarray_jax.DataArray(
                values[None, :, 0], dims=("batch", "time", "lat", "lon"), coords=coords
            )
        else:
            data[variable] = xarray_jax.DataArray(
                values[None],
                dims=("batch", "time", "level", "lat", "lon"),
                coords={**coords, "level": list(levels)},
            )
    return xr.Dataset(data)


def _from_dataset(dataset: xr.Dataset, grid: GridSpec) -> State:
    from graphcast import xarray_jax  # pyright: ignore[reportMissingImports]

    channels = []
    for channel in grid.channels:
        values = dataset[channel.variable]
        if channel.level is not None:
            values = values.sel(level=channel.level)
        channels.append(xarray_jax.unwrap_data(values.isel(batch=0, time=0)))
    return jnp.stack(channels)


def load_gencast_network(
    checkpoint_path: str | Path,
    *,
    resolution_degrees: float = 1.0,
    use_gpu_attention: bool = True,
) -> tuple[GraphcastNetwork, GridSpec]:
    """GenCast's raw denoiser from a checkpoint (``GenCast 1p0deg <2019.npz`` and the like).

    Builds ``denoiser.Denoiser(noise_encoder_config, denoiser_architecture_config)`` inside
    ``haiku.transform`` with ``node_output_size`` set to the number of target channels, as
    ``GenCast.__init__`` does, so ``ckpt.params`` apply unchanged.
    **Not run on our machines**: neither the code nor the weights can be downloaded here.
    """
    haiku, checkpoint, denoiser, gencast, _ = _import_graphcast()
    with open(checkpoint_path, "rb") as f:
        ckpt = checkpoint.load(f, gencast.CheckPoint)
    task = ckpt.task_config
    channels = gencast_channels(levels=task.pressure_levels)
    grid = gencast_grid(resolution_degrees, channels)
    architecture = dataclasses.replace(
        ckpt.denoiser_architecture_config, node_output_size=len(channels)
    )
    if use_gpu_attention:
        architecture = gpu_attention(architecture)

    def forward(inputs, noisy_targets, noise_levels, forcings):
        network = denoiser.Denoiser(ckpt.noise_encoder_config, architecture)
        return network(inputs, noisy_targets, noise_levels, forcings)

    transformed = haiku.transform(forward)
    target_only = tuple(c.variable in TARGET_ONLY_VARIABLES for c in channels)
    network = GraphcastNetwork(
        ckpt.params,
        _Opaque(transformed.apply),
        grid,
        tuple(i for i, only in enumerate(target_only) if not only),
        tuple(task.input_variables),
    )
    return network, grid


def load_gencast(
    checkpoint_path: str | Path,
    statistics_dir: str | Path,
    era5: xr.Dataset,
    initial_time,
    *,
    resolution_degrees: float = 1.0,
    use_gpu_attention: bool = True,
) -> GenCastEmulator:
    """The whole emulator: network, statistics, the SST land mask at ``initial_time`` and
    the static fields, from a checkpoint, GenCast's statistics and an ERA5 dataset."""
    network, grid = load_gencast_network(
        checkpoint_path, resolution_degrees=resolution_degrees, use_gpu_attention=use_gpu_attention
    )
    statistics = read_statistics(statistics_dir, grid.channels)
    frame = era5_frames(era5, grid, np.asarray([initial_time], "datetime64[s]"))[0]
    return gencast_emulator(
        network,
        statistics,
        grid,
        sst_missing=sst_missing_mask(frame, grid),
        statics=era5_statics(era5, grid, statistics),
        name=Path(checkpoint_path).stem,
    )
