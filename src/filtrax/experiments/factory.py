"""Turn a validated :class:`ExperimentConfig` into library objects (models, filters, data).

This is the only place that maps config names to classes; everything it builds is a plain
library object that can also be constructed by hand.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .. import streams
from ..diffusion.samplers import AbstractSampler
from ..emulators._base import AbstractEmulator
from ..emulators.lorenz96 import Lorenz96Emulator
from ..filters.covariance_localisation import GaspariCohnLocalisation
from ..filters.particle import AbstractFilter
from ..filters.tempering import AbstractTempering
from ..grid import GridSpec
from ..guidance.guided import AbstractGuidance
from ..io import plausibility
from ..io.observation_files import (
    ErrorStdConflictError,
    read_gridded_observations,
    read_site_table,
    read_station_table,
)
from ..observations.model import ObservationModel
from ..observations.operators import PointSelection
from ..parallel import AbstractParticleMap, particle_map
from .builders import (
    FILTERS,
    FilterParts,
    guidance_from_section,
    sampler_from_section,
    tempering_from_section,
)
from .config import SYNTHETIC_ERROR_STD, ConfigError, ExperimentConfig, SamplerConfig
from .models import MODELS, ModelSetting, cycle_times, model_setting, read_initial_ensemble

# The model families' loaders live in .models; these names stay importable from here.
from .models import bundled_truth_path as bundled_truth_path
from .models import load_atmosphere_emulator as load_atmosphere_emulator
from .models import load_lorenz96_emulator as load_lorenz96_emulator
from .models import lorenz96_truth as lorenz96_truth
from .models import read_truth as read_truth


@dataclasses.dataclass(frozen=True)
class Experiment:
    """Everything a run needs, built from a config.

    Attributes:
        config: the resolved config.
        emulator: the emulator the filters drive.
        grid: the grid of gridded models, ``None`` for site-indexed states.
        frame_shape: shape of one analysis frame.
        truth: the true frames per cycle ``(cycle, *frame)``, or ``None`` when unknown.
        observations: ``(cycle, obs)``, NaN where not observed.
        observation_model: the observation model the observations were drawn from (or read with).
        filter_observation: the observation model the filters assume: ``observation_model`` with
            its error std times ``filter.observation_error_inflation`` (R inflation).
        observation_labels: one label per observation.
        initial_state: the true state at the initial time (the particles' centre).
        initial_particles: ``(N, *state)``.
        filter: the assimilation method.
        baseline: the free ensemble run for comparison, or ``None``.
        cycle_times: valid time of each cycle's analysis.
        units: the unit of each channel (or of the single site variable).
    """

    config: ExperimentConfig
    emulator: AbstractEmulator
    grid: GridSpec | None
    frame_shape: tuple[int, ...]
    truth: np.ndarray | None
    observations: np.ndarray
    observation_model: ObservationModel
    filter_observation: ObservationModel
    observation_labels: tuple[str, ...]
    initial_state: jax.Array
    initial_particles: jax.Array
    filter: AbstractFilter
    baseline: AbstractFilter | None
    cycle_times: np.ndarray
    units: tuple[str, ...]


def build_sampler(config: ExperimentConfig) -> AbstractSampler:
    return sampler_from_config(config.sampler)


def sampler_from_config(s: SamplerConfig) -> AbstractSampler:
    return sampler_from_section(s)


def build_guidance(config: ExperimentConfig) -> AbstractGuidance:
    return guidance_from_section(config.guidance)


def build_tempering(config: ExperimentConfig) -> AbstractTempering:
    return tempering_from_section(config.filter)


def build_particle_map(config: ExperimentConfig) -> AbstractParticleMap:
    """``[parallel]``: one device (optionally batched) or particles sharded over a mesh."""
    p = config.parallel
    devices = "all" if p.devices == 0 else p.devices
    batch_size = p.particle_batch_size or None
    try:
        layout = particle_map(devices, batch_size)
    except ValueError as error:
        raise ConfigError(f"parallel.devices: {error}") from None
    try:
        layout.check(config.filter.particles)
    except ValueError as error:
        raise ConfigError(f"filter.particles: {error}") from None
    return layout


def build_covariance_localisation(
    config: ExperimentConfig, emulator: AbstractEmulator
) -> GaspariCohnLocalisation | None:
    """The EnKF's Gaspari–Cohn localisation of ``filter.localisation_half_width`` (km on a
    latitude–longitude grid, sites on the Lorenz-96 ring), or ``None`` when it is 0."""
    half_width = config.filter.localisation_half_width
    if half_width == 0:
        return None
    grid = getattr(emulator, "grid", None)
    if isinstance(grid, GridSpec):
        return GaspariCohnLocalisation.on_sphere(grid.latitudes, grid.longitudes, half_width)
    if isinstance(emulator, Lorenz96Emulator):
        return GaspariCohnLocalisation.on_ring(emulator.num_sites, half_width)
    raise ConfigError(
        f"filter.localisation_half_width = {half_width!r} needs a latitude-longitude grid or "
        f"the Lorenz-96 ring; model.name = {config.model.name!r} has neither"
    )


def build_filter(
    config: ExperimentConfig,
    emulator: AbstractEmulator,
    method: str,
    layout: AbstractParticleMap | None = None,
) -> AbstractFilter:
    """The filter ``method`` of ``config`` (a name of :data:`~.builders.FILTERS`); ``layout``
    defaults to :func:`build_particle_map`."""
    parts = FilterParts(
        config,
        emulator,
        build_sampler(config),
        build_particle_map(config) if layout is None else layout,
        build_covariance_localisation(config, emulator),
    )
    return FILTERS[method](parts)


def _observed_columns(o, grid: GridSpec) -> np.ndarray:
    """The ``(lat, lon)`` mask of observed columns: every ``stride``-th point in lat and lon,
    or ``o.stations`` columns drawn without replacement with probability proportional to
    ``cos(lat)`` (each column's area, so that the network is uniform on the sphere)."""
    rows, cols = grid.shape[-2:]
    mask = np.zeros((rows, cols), bool)
    if not o.stations:
        if o.stride >= rows:
            raise ConfigError(
                f"observations.stride = {o.stride} is not below the grid's {rows} latitude "
                f"rows: it would observe only the southernmost row; expected 1 to {rows - 1}"
            )
        mask[:: o.stride, :: o.stride] = True
        return mask
    if o.stations > rows * cols:
        raise ConfigError(
            f"observations.stations = {o.stations} exceeds the grid's {rows} x {cols} = "
            f"{rows * cols} columns; expected 1 to {rows * cols}"
        )
    area = np.repeat(np.cos(np.deg2rad(np.asarray(grid.latitudes))), cols)
    key = jax.random.fold_in(jax.random.key(o.network_seed), streams.NETWORK)
    chosen = jax.random.choice(
        key, rows * cols, (o.stations,), replace=False, p=jnp.asarray(area / area.sum())
    )
    mask.flat[np.asarray(chosen)] = True
    return mask


def _synthetic_gridded_observations(config: ExperimentConfig, grid: GridSpec):
    """The observed variables, all levels (or ``observations.levels``), at the observed
    columns (:func:`_observed_columns`)."""
    o = config.observations
    variables = list(o.variables) or list(grid.variables)
    mask = np.zeros(grid.shape, bool)
    columns = _observed_columns(o, grid)
    for variable in variables:
        if variable not in grid.variables:
            raise ConfigError(
                f"observations.variables names {variable!r}, which the model does not have; "
                f"available: {', '.join(grid.variables)}"
            )
    if o.levels and all(grid.levels_of(v) == (None,) for v in variables):
        raise ConfigError(
            f"observations.levels = {list(o.levels)}, but the observed variables "
            f"({', '.join(variables)}) are surface fields without levels; leave "
            f"observations.levels empty"
        )
    for variable in variables:
        own = grid.levels_of(variable)
        wanted = own if not o.levels or own == (None,) else o.levels
        for level in wanted:
            try:
                channel = grid.channel_index(variable, level)
            except ValueError as error:
                raise ConfigError(f"observations.levels: {error}") from None
            mask[channel] = columns
    if not mask.any():
        raise ConfigError(
            f"the observation mask (observations.variables = {variables}, levels = "
            f"{list(o.levels)}, stride = {o.stride}) selects no grid point"
        )
    operator = PointSelection.from_mask(mask)
    observation_model = ObservationModel(operator, o.error_std**2)
    labels = []
    for flat in np.flatnonzero(mask):
        c, i, j = np.unravel_index(flat, grid.shape)
        labels.append(
            f"{grid.channels[c].label()} lat={grid.latitudes[i]:.2f} lon={grid.longitudes[j]:.2f}"
        )
    return observation_model, labels


def initial_particles(config: ExperimentConfig, x0, num_particles: int):
    """``num_particles`` copies of the initial state, perturbed by ``model.initial_spread``.

    ``x0`` may be a pytree (GenCast's state carries its valid time); only floating-point
    leaves are perturbed. Member ``i``'s perturbation uses ``fold_in(init_key, i)``: it
    does not depend on N.
    """
    x0 = jax.tree_util.tree_map(jnp.asarray, x0)
    particles = jax.tree_util.tree_map(
        lambda leaf: jnp.broadcast_to(leaf, (num_particles, *leaf.shape)), x0
    )
    spread = config.model.initial_spread
    if spread == 0:
        return particles
    init_key = jax.random.fold_in(jax.random.key(config.seed), streams.INITIAL)

    def perturb(leaf):
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            return leaf

        def perturbation(i):
            k = jax.random.fold_in(init_key, i)
            return spread * jax.random.normal(k, leaf.shape[1:], leaf.dtype)

        return leaf + jax.vmap(perturbation)(jnp.arange(num_particles))

    return jax.tree_util.tree_map(perturb, particles)


def _read_observation_file(config: ExperimentConfig, frame_shape, grid, times):
    """The observation file of ``observations.source``; what is wrong with it is a
    :class:`ConfigError` naming ``observations.path``."""
    o = config.observations
    path = Path(o.path)
    if not path.exists():
        raise ConfigError(f"observations.path = {o.path!r}: file not found")
    given = o.error_std or None  # 0 = unset: the file's own
    try:
        if o.source == "sites":
            observations = read_site_table(
                path,
                frame_shape[0],
                config.model.time_step,
                config.run.cycles,
                given or SYNTHETIC_ERROR_STD,
            )
        elif o.source == "stations":
            observations = read_station_table(path, grid, times)
        else:
            return read_gridded_observations(path, grid, times, given)
    except ConfigError:
        raise
    except ErrorStdConflictError as error:
        raise ConfigError(
            f"observations.error_std = {o.error_std:g} differs from the file's "
            f"{error.field!r} ({error.found:g}) in observations.path = {o.path!r}; leave "
            f"observations.error_std unset to use the file's, or make them agree"
        ) from None
    except (ValueError, OSError, KeyError) as error:  # pandas, pyarrow and netCDF errors too
        message = str(error) if str(error) else type(error).__name__
        # The readers name the file first; the key already does.
        message = message.removeprefix(f"{path}: ")
        raise ConfigError(f"observations.path = {o.path!r}: {message}") from None
    if given is not None:
        _check_same_error_std(o, observations)
    return observations


def _check_same_error_std(o, observations) -> None:
    """An error std in the config and another in the table: one of them is mistaken."""
    std = np.sqrt(np.asarray(observations.noise_variance, np.float64))
    differ = np.flatnonzero(~np.isclose(std, o.error_std, rtol=1e-6))
    if differ.size:
        i = int(differ[0])
        raise ConfigError(
            f"observations.error_std = {o.error_std:g} differs from the error_std column of "
            f"observations.path = {o.path!r} ({std[i]:g} for {observations.labels[i]}); "
            f"leave observations.error_std unset to use the file's, or make them agree"
        )


def _check_sources(config: ExperimentConfig, setting: ModelSetting) -> None:
    """The truth and observation sources that the model family accepts."""
    name, truth, source = config.model.name, config.truth.source, config.observations.source

    def accepting(kind: str, value: str) -> str:
        names = [n for n, s in MODELS.items() if value in getattr(s, kind)]
        return " or ".join(f"{n!r}" for n in names)

    if truth == "none" and source == "synthetic":
        raise ConfigError(
            "truth.source = 'none' needs observations from a file: synthetic observations are "
            "drawn from the truth (set observations.source to 'stations' or 'gridded')"
        )
    if config.model.factory:
        for label, value, accepted in (
            ("truth.source", truth, setting.truth_sources),
            ("observations.source", source, setting.observation_sources),
        ):
            if value not in accepted:
                raise ConfigError(
                    f"{label} = {value!r} is not one that model.factory = "
                    f"{config.model.factory!r} accepts (it accepts {', '.join(accepted)})"
                )
    if source == "sites" and source not in setting.observation_sources:
        raise ConfigError(
            f"observations.source = 'sites' needs a site-indexed learned model "
            f"(model.name = {accepting('observation_sources', 'sites')}), got model.name = "
            f"{name!r}"
        )
    if truth == "bundled" and truth not in setting.truth_sources:
        raise ConfigError(
            f"truth.source = 'bundled' needs a learned gridded model (model.name = "
            f"{accepting('truth_sources', 'bundled')}), got {name!r}"
        )
    if truth == "file" and truth not in setting.truth_sources:
        raise ConfigError(
            f"truth.source = 'file' is not one that model.name = {name!r} accepts (it "
            f"accepts {', '.join(setting.truth_sources)}); truth files work for "
            f"{accepting('truth_sources', 'file')}"
        )
    if source not in setting.observation_sources:
        raise ConfigError(
            f"observations.source = {source!r} needs a gridded model; model.name = {name!r} is "
            f"site-indexed (use observations.source = "
            f"{' or '.join(repr(a) for a in setting.observation_sources)})"
        )


def _check_file_within_selection(config, grid: GridSpec, observation_model, labels) -> None:
    """``observations.variables`` and ``levels`` with a file: every observation the file
    holds must be of a listed variable and level (nothing is dropped without a word)."""
    o = config.observations
    if not o.variables and not o.levels:
        return
    for c, channel in enumerate(grid.channels):
        reads = observation_model.reads_channels([c])
        if not reads.any():
            continue
        outside_variables = bool(o.variables) and channel.variable not in o.variables
        outside_levels = (
            bool(o.levels)
            and channel.level is not None
            and (not any(np.isclose(channel.level, level) for level in o.levels))
        )
        if outside_variables or outside_levels:
            key, value = (
                ("variables", list(o.variables))
                if outside_variables
                else ("levels", list(o.levels))
            )
            first = labels[int(np.argmax(reads))]
            raise ConfigError(
                f"observations.path = {o.path!r} observes {channel.label()} ({first}), which "
                f"observations.{key} = {value} leaves out; a file's observations are all used: "
                f"list it, leave observations.{key} empty, or drop it from the file"
            )


def _check_plausible(config, grid, units, truth, observations, observation_model, labels) -> None:
    """Truth and observation files in the model's units (:mod:`filtrax.io.plausibility`)."""
    try:
        if truth is not None and config.truth.source == "file":
            plausibility.check_frames(
                truth,
                units,
                [channel.label() for channel in grid.channels],
                f"truth.path = {config.truth.path!r}",
            )
        if config.observations.source != "synthetic":
            plausibility.check_observations(
                observations,
                observation_model,
                units,
                labels,
                f"observations.path = {config.observations.path!r}",
            )
    except ValueError as error:
        raise ConfigError(str(error)) from None


def build_experiment(config: ExperimentConfig) -> Experiment:
    """Models, truth, observations and filters for ``config`` (deterministic in ``seed``)."""
    root = jax.random.key(config.seed)
    truth_key, obs_key, init_key = (
        jax.random.fold_in(root, s) for s in (streams.TRUTH, streams.OBSERVATIONS, streams.INITIAL)
    )
    num_cycles = config.run.cycles
    setting = model_setting(config)
    _check_sources(config, setting)
    parts = setting.build(config, truth_key, init_key)
    emulator, grid, truth, x0 = parts.emulator, parts.grid, parts.truth, parts.initial_state
    frame_shape, units = parts.frame_shape, parts.units
    times = cycle_times(config)
    source = config.observations.source
    if source == "synthetic" and grid is None and parts.observation_model is None:
        m = config.model
        where = f"model.factory = {m.factory!r}" if m.factory else f"model.name = {m.name!r}"
        raise ConfigError(
            f"{where} built a site-indexed model (grid None) without its synthetic "
            "observation model: its ModelParts need observation = (ObservationModel, labels)"
        )
    if source == "synthetic" and grid is None and config.observations.stations:
        raise ConfigError(
            f"observations.stations = {config.observations.stations} draws columns of a grid, "
            f"but model.name = {config.model.name!r} has sites, not a grid; set it to 0 "
            f"(observations.stride picks every stride-th site)"
        )
    if source == "synthetic":
        if grid is not None:
            observation_model, labels = _synthetic_gridded_observations(config, grid)
        else:
            assert parts.observation_model is not None  # refused above
            observation_model, labels = parts.observation_model
        predicted = jax.vmap(observation_model.predict)(jnp.asarray(truth))
        noise = jax.random.normal(obs_key, predicted.shape, predicted.dtype)
        observations = np.array(
            predicted + jnp.sqrt(observation_model.noise_variance)[None] * noise
        )
    else:
        observation_set = _read_observation_file(config, frame_shape, grid, times)
        observations = np.array(observation_set.values, dtype=np.asarray(x0).dtype)
        observation_model = observation_set.observation_model()
        labels = observation_set.labels
    labels = tuple(labels)
    if grid is not None:
        _check_plausible(config, grid, units, truth, observations, observation_model, labels)
        if source != "synthetic":
            _check_file_within_selection(config, grid, observation_model, labels)
    if config.observations.every > 1:
        skipped = (np.arange(num_cycles) + 1) % config.observations.every != 0
        observations[skipped] = np.nan

    if config.model.initial_ensemble:
        particles = read_initial_ensemble(config, parts, config.filter.particles)
    else:
        particles = initial_particles(config, x0, config.filter.particles)
    method = config.filter.method
    return Experiment(
        config=config,
        emulator=emulator,
        grid=grid,
        frame_shape=tuple(frame_shape),
        truth=truth,
        observations=observations,
        observation_model=observation_model,
        filter_observation=observation_model.with_error_inflation(
            config.filter.observation_error_inflation
        ),
        observation_labels=labels,
        initial_state=jax.tree_util.tree_map(jnp.asarray, x0),
        initial_particles=particles,
        filter=build_filter(config, emulator, method),
        baseline=(
            build_filter(config, emulator, "free")
            if config.run.baseline and method != "free"
            else None
        ),
        cycle_times=times,
        units=units,
    )
