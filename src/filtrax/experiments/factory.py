"""Turn a validated :class:`ExperimentConfig` into library objects (models, filters, data).

This is the only place that maps config names to classes; everything it builds is a plain
library object that can also be constructed by hand.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from ..diffusion.noise_levels import karras_noise_levels
from ..diffusion.samplers import (
    AbstractSampler,
    AdamsBashforthSampler,
    DDIMSampler,
    DPMSolverPlusPlus2SSampler,
    EulerSampler,
    HeunSampler,
)
from ..dynamics.gaussian_field import GaussianFieldModel
from ..dynamics.linear_gaussian import random_linear_gaussian_model
from ..emulators._base import AbstractEmulator
from ..filters.particle import (
    AbstractFilter,
    AuxiliaryParticleFilter,
    BootstrapParticleFilter,
    FreeEnsemble,
)
from ..filters.proposals import EmulatorProposal
from ..filters.tempering import AbstractTempering, ESSBandTempering, FixedTempering
from ..filters.weights import DiracPredictiveWeight, MomentMatchedPredictiveWeight
from ..guidance.guided import AbstractGuidance, DPSGuidance, MMPSGuidance, SDAGuidance
from ..io.datasets import dataset_to_frames
from ..io.grid import Channel, GridSpec
from ..io.observation_files import read_gridded_observations, read_station_table
from ..observations.model import ObservationModel
from ..observations.operators import PointSelection
from .config import ConfigError, ExperimentConfig


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
        observation: the observation model.
        observation_labels: one label per observation.
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
    observation: ObservationModel
    observation_labels: tuple[str, ...]
    initial_particles: jax.Array
    filter: AbstractFilter
    baseline: AbstractFilter | None
    cycle_times: np.ndarray
    units: tuple[str, ...]


def cycle_times(config: ExperimentConfig) -> np.ndarray:
    start = datetime.fromisoformat(config.run.start_time)
    step = timedelta(hours=config.run.cycle_hours)
    return np.array([start + (k + 1) * step for k in range(config.run.cycles)], "datetime64[s]")


def build_sampler(config: ExperimentConfig) -> AbstractSampler:
    s = config.sampler
    levels = karras_noise_levels(s.sigma_max, s.sigma_min, s.rho, s.levels)
    if s.name == "dpmpp2s":
        return DPMSolverPlusPlus2SSampler(levels, churn=s.churn, churn_noise_scale=s.churn_noise)
    if s.name == "heun":
        return HeunSampler(levels)
    if s.name == "euler":
        return EulerSampler(levels)
    if s.name == "ddim":
        return DDIMSampler(levels, s.eta)
    if s.name == "adams_bashforth":
        return AdamsBashforthSampler(levels, s.order, s.corrections, s.langevin_step)
    raise ConfigError(f"sampler.name = {s.name!r} has no builder")


def build_guidance(config: ExperimentConfig) -> AbstractGuidance:
    g = config.guidance
    if g.name == "mmps":
        return MMPSGuidance(g.iterations, g.solver)
    if g.name == "dps":
        return DPSGuidance(g.scale)
    if g.name == "sda":
        return SDAGuidance(g.gamma)
    raise ConfigError(f"guidance.name = {g.name!r} has no builder")


def build_tempering(config: ExperimentConfig) -> AbstractTempering:
    f = config.filter
    if f.tempering == "ess_band":
        return ESSBandTempering(*f.ess_band)
    return FixedTempering(f.alpha)


def build_filter(
    config: ExperimentConfig, emulator: AbstractEmulator, method: str
) -> AbstractFilter:
    f = config.filter
    sampler = build_sampler(config)
    if method == "free":
        return FreeEnsemble(EmulatorProposal(emulator, sampler))
    if method == "bootstrap":
        proposal = EmulatorProposal(emulator, sampler)
        return BootstrapParticleFilter(proposal, build_tempering(config), f.resampling)
    if method == "fa_apf":
        proposal = EmulatorProposal(emulator, sampler, build_guidance(config))
        if f.weights == "dirac":
            weight = DiracPredictiveWeight(f.weight_sigma_max, f.noise_draws)
        else:
            weight = MomentMatchedPredictiveWeight(f.weight_sigma_max, f.cg_iterations)
        return AuxiliaryParticleFilter(
            proposal, weight, build_tempering(config), f.resampling, f.skip_first_selection
        )
    raise ConfigError(f"filter.method = {method!r} has no builder")


def _grid(config: ExperimentConfig) -> GridSpec:
    m = config.model
    channels = []
    for variable in m.variables:
        if m.levels:
            channels.extend(Channel(variable, float(level)) for level in m.levels)
        else:
            channels.append(Channel(variable))
    return GridSpec.regular(m.num_lat, m.num_lon, channels)


def _synthetic_gridded_observations(config: ExperimentConfig, grid: GridSpec):
    """Every ``stride``-th point in lat and lon of the observed variables, all levels."""
    o = config.observations
    variables = list(o.variables) or list(grid.variables)
    mask = np.zeros(grid.shape, bool)
    for variable in variables:
        for level in grid.levels_of(variable) if variable in grid.variables else [None]:
            channel = grid.channel_index(variable, level)
            mask[channel, :: o.stride, :: o.stride] = True
    operator = PointSelection.from_mask(mask)
    observation = ObservationModel(operator, o.error_std**2)
    labels = []
    for flat in np.flatnonzero(mask):
        c, i, j = np.unravel_index(flat, grid.shape)
        labels.append(
            f"{grid.channels[c].label()} lat={grid.latitudes[i]:.2f} lon={grid.longitudes[j]:.2f}"
        )
    return observation, labels


def read_truth(path: Path, grid: GridSpec, times: np.ndarray) -> np.ndarray:
    """True frames ``(cycle, *frame)`` from a netCDF/zarr file on the model grid.

    The file holds one variable per model variable with dims ``(time, [level,] lat, lon)``;
    it must contain every requested time.
    """
    if not path.exists():
        raise ConfigError(f"truth.path = {str(path)!r}: file not found")
    dataset = (
        xr.open_zarr(path, consolidated=False) if path.suffix == ".zarr" else xr.open_dataset(path)
    )
    missing = [v for v in grid.variables if v not in dataset]
    if missing:
        raise ConfigError(f"truth file {path} lacks the variables {missing}")
    file_times = np.asarray(dataset["time"].values, "datetime64[s]")
    absent = [str(t) for t in times if t not in file_times]
    if absent:
        raise ConfigError(f"truth file {path} has no state at the cycle times {absent[:3]}")
    selected = dataset.sel(time=times.astype("datetime64[ns]"))
    for name, expected in (("lat", grid.latitudes), ("lon", grid.longitudes)):
        if not np.allclose(selected[name].values, expected, atol=1e-6):
            raise ConfigError(f"truth file {path}: coordinate {name!r} differs from the model grid")
    return dataset_to_frames(selected.load(), grid)


def build_experiment(config: ExperimentConfig) -> Experiment:
    """Models, truth, observations and filters for ``config`` (deterministic in ``seed``)."""
    root = jax.random.key(config.seed)
    truth_key, obs_key, init_key = (jax.random.fold_in(root, i) for i in (101, 102, 103))
    num_cycles = config.run.cycles
    m = config.model
    if config.truth.source == "none" and config.observations.source == "synthetic":
        raise ConfigError(
            "truth.source = 'none' needs observations from a file: synthetic observations are "
            "drawn from the truth (set observations.source to 'stations' or 'gridded')"
        )
    if config.truth.source == "file" and m.name != "gaussian_field":
        raise ConfigError(
            f"truth.source = 'file' needs a gridded model; model.name = {m.name!r} is "
            f"site-indexed and simulates its own truth"
        )
    if config.observations.source != "synthetic" and m.name != "gaussian_field":
        raise ConfigError(
            f"observations.source = {config.observations.source!r} needs a gridded model; "
            f"model.name = {m.name!r} is site-indexed (use observations.source = 'synthetic')"
        )

    if m.name == "linear_gaussian":
        if m.observed > m.state_dim:
            raise ConfigError(
                f"model.observed = {m.observed} exceeds model.state_dim = {m.state_dim}"
            )
        model = random_linear_gaussian_model(
            config.seed,
            m.state_dim,
            m.observed,
            observation_variance=m.observation_std**2,
        )
        emulator = model.emulator()
        x0 = jnp.zeros(m.state_dim)
        truth = np.asarray(model.simulate(truth_key, x0, num_cycles)[0])
        observation = model.observation_model()
        labels = tuple(
            f"x[{int(np.flatnonzero(row)[0])}]" for row in np.asarray(model.observation_matrix)
        )
        grid, frame_shape, units = None, (m.state_dim,), ("1",)
    elif m.name == "gaussian_field":
        grid = _grid(config)
        model = GaussianFieldModel.build(
            grid,
            correlation_length_km=m.correlation_length_km,
            ar_coefficient=m.ar_coefficient,
            noise_std=m.noise_std,
        )
        emulator = model.emulator()
        x0 = model.sample_climatology(init_key)
        truth = np.asarray(model.simulate(truth_key, x0, num_cycles))
        if config.truth.source == "file":
            start = np.array([datetime.fromisoformat(config.run.start_time)], "datetime64[s]")
            frames = read_truth(
                Path(config.truth.path), grid, np.concatenate([start, cycle_times(config)])
            )
            x0, truth = jnp.asarray(frames[0], dtype=x0.dtype), frames[1:]
        elif config.truth.source == "none":
            truth = None
        frame_shape, units = grid.shape, tuple("1" for _ in grid.channels)
    else:
        raise ConfigError(f"model.name = {m.name!r} has no builder")

    times = cycle_times(config)
    source = config.observations.source
    if source == "synthetic":
        if grid is not None:
            observation, labels = _synthetic_gridded_observations(config, grid)
        predicted = jax.vmap(observation.predict)(jnp.asarray(truth))
        noise = jax.random.normal(obs_key, predicted.shape, predicted.dtype)
        observations = np.array(predicted + jnp.sqrt(observation.noise_variance)[None] * noise)
    else:
        path = Path(config.observations.path)
        if source == "stations":
            observation_set = read_station_table(path, grid, times)
        else:
            observation_set = read_gridded_observations(
                path, grid, times, config.observations.error_std
            )
        observations = np.array(observation_set.values, dtype=np.asarray(x0).dtype)
        observation = observation_set.observation_model()
        labels = observation_set.labels
    labels = tuple(labels)
    if config.observations.every > 1:
        skipped = (np.arange(num_cycles) + 1) % config.observations.every != 0
        observations[skipped] = np.nan

    particles = jnp.broadcast_to(x0, (config.filter.particles, *x0.shape))
    method = config.filter.method
    return Experiment(
        config=config,
        emulator=emulator,
        grid=grid,
        frame_shape=tuple(frame_shape),
        truth=truth,
        observations=observations,
        observation=observation,
        observation_labels=labels,
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
