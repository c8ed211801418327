"""Turn a validated :class:`ExperimentConfig` into library objects (models, filters, data).

This is the only place that maps config names to classes; everything it builds is a plain
library object that can also be constructed by hand.
"""

from __future__ import annotations

import dataclasses
import math
from datetime import datetime, timedelta
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

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
from ..dynamics.lorenz96 import DEFAULT_DT, full_trajectory
from ..emulators._base import AbstractEmulator
from ..emulators.atmosphere import AtmosphereEmulator
from ..emulators.cards import load_card
from ..emulators.lorenz96 import Lorenz96Emulator, load_emulator
from ..filters.covariance_localisation import GaspariCohnLocalisation
from ..filters.enkf import EnsembleKalmanFilter
from ..filters.inflation import FixedInflation, InnovationInflation
from ..filters.letkf import LocalEnsembleTransformKalmanFilter
from ..filters.localisation import BlockLocalisation
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
from ..io.datasets import frames_at_times, open_gridded
from ..io.grid import Channel, GridSpec
from ..io.observation_files import (
    read_gridded_observations,
    read_site_table,
    read_station_table,
)
from ..observations.model import ObservationModel
from ..observations.operators import PointSelection
from ..parallel import AbstractParticleMap, particle_map
from .config import ConfigError, ExperimentConfig, SamplerConfig


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
        observation: the observation model the observations were drawn from (or read with).
        filter_observation: the observation model the filters assume: ``observation`` with
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
    observation: ObservationModel
    filter_observation: ObservationModel
    observation_labels: tuple[str, ...]
    initial_state: jax.Array
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
    return sampler_from_config(config.sampler)


def sampler_from_config(s: SamplerConfig) -> AbstractSampler:
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
    """The filter ``method`` of ``config``; ``layout`` defaults to :func:`build_particle_map`."""
    f = config.filter
    sampler = build_sampler(config)
    layout = build_particle_map(config) if layout is None else layout
    if method == "free":
        return FreeEnsemble(EmulatorProposal(emulator, sampler), particle_map=layout)
    if method == "enkf":
        return EnsembleKalmanFilter(
            EmulatorProposal(emulator, sampler),
            f.inflation,
            build_covariance_localisation(config, emulator),
            particle_map=layout,
        )
    if method == "letkf":
        return LocalEnsembleTransformKalmanFilter(
            EmulatorProposal(emulator, sampler),
            f.inflation,
            f.relaxation,
            build_covariance_localisation(config, emulator),
            particle_map=layout,
        )
    localisation = BlockLocalisation(f.localisation_block) if f.localisation_block else None
    if f.adaptive_inflation:
        inflation = InnovationInflation(f.inflation, f.inflation_max)
    else:
        inflation = FixedInflation(f.inflation)
    if method == "bootstrap":
        proposal = EmulatorProposal(emulator, sampler)
        return BootstrapParticleFilter(
            proposal,
            build_tempering(config),
            f.resampling,
            localisation,
            inflation,
            particle_map=layout,
        )
    if method == "fa_apf":
        proposal = EmulatorProposal(emulator, sampler, build_guidance(config))
        if f.weights == "dirac":
            weight = DiracPredictiveWeight(f.weight_sigma_max, f.noise_draws)
        else:
            weight = MomentMatchedPredictiveWeight(f.weight_sigma_max, f.cg_iterations)
        return AuxiliaryParticleFilter(
            proposal,
            weight,
            build_tempering(config),
            f.resampling,
            f.skip_first_selection,
            localisation,
            inflation,
            particle_map=layout,
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
        if variable not in grid.variables:
            raise ConfigError(
                f"observations.variables names {variable!r}, which the model does not have; "
                f"available: {', '.join(grid.variables)}"
            )
        own = grid.levels_of(variable)
        wanted = own if not o.levels or own == (None,) else o.levels
        for level in wanted:
            try:
                channel = grid.channel_index(variable, level)
            except ValueError as error:
                raise ConfigError(f"observations.levels: {error}") from None
            mask[channel, :: o.stride, :: o.stride] = True
    if not mask.any():
        raise ConfigError(
            f"the observation mask (observations.variables = {variables}, levels = "
            f"{list(o.levels)}, stride = {o.stride}) selects no grid point"
        )
    operator = PointSelection.from_mask(mask)
    observation = ObservationModel(operator, o.error_std**2)
    labels = []
    for flat in np.flatnonzero(mask):
        c, i, j = np.unravel_index(flat, grid.shape)
        labels.append(
            f"{grid.channels[c].label()} lat={grid.latitudes[i]:.2f} lon={grid.longitudes[j]:.2f}"
        )
    return observation, labels


def load_lorenz96_emulator(config: ExperimentConfig) -> Lorenz96Emulator:
    """The configured Lorenz-96 emulator; its training Δt must equal ``model.time_step``."""
    m = config.model
    if m.weights:
        try:
            emulator = load_emulator(None, m.weights)
        except (OSError, ValueError, KeyError) as error:
            raise ConfigError(f"model.weights = {m.weights!r}: {error}") from None
    else:
        try:
            card = load_card(m.emulator)
        except ValueError as error:
            raise ConfigError(f"model.emulator = {m.emulator!r}: {error}") from None
        if card.get("family") != "lorenz96":
            raise ConfigError(
                f"model.emulator = {m.emulator!r} is not a learned Lorenz-96 emulator "
                f"(its card has kind {card.get('kind')!r})"
            )
        emulator = load_emulator(card)
    if not math.isclose(emulator.time_step, m.time_step, rel_tol=1e-9):
        source = m.weights or f"card {m.emulator!r}"
        raise ConfigError(
            f"model.time_step = {m.time_step} but the emulator ({source}) was trained at "
            f"time_step {emulator.time_step}; pick an emulator trained at this step "
            f"(see 'filtrax models') or set model.time_step = {emulator.time_step}"
        )
    return emulator


def _lorenz96(config: ExperimentConfig, truth_key):
    """Emulator, true slow frames ``(cycle, K)`` and the initial state ``(X^{-1}, X^0)``."""

    emulator = load_lorenz96_emulator(config)
    slow = lorenz96_truth(config, emulator.setting, truth_key)[1]
    x0 = Lorenz96Emulator.initial_state(slow[0], slow[1])
    return emulator, slow[2:], x0


def lorenz96_truth(config: ExperimentConfig, setting: str, truth_key) -> tuple[np.ndarray, ...]:
    """The twin's truth: the full state every RK4 step and the slow frames every cycle.

    Returns ``(full, slow)``: ``full`` has ``(cycles + 1)·m + 1`` rows (``m`` RK4 steps per
    cycle), row 0 at the time of :math:`X^{-1}`; ``slow`` is ``full[::m, :K]``, i.e.
    :math:`X^{-1}, X^0, X^1, \\dots` (cycle ``k`` valid at row ``k + 1``).
    """
    from ..training.lorenz96 import setting_model

    model = setting_model(setting)
    steps_per_cycle = round(config.model.time_step / DEFAULT_DT)
    if not math.isclose(steps_per_cycle * DEFAULT_DT, config.model.time_step, rel_tol=1e-9):
        raise ConfigError(
            f"model.time_step = {config.model.time_step} is not a multiple of the RK4 step "
            f"{DEFAULT_DT}"
        )
    full = full_trajectory(
        model,
        truth_key,
        spin_up_time=config.model.spin_up,
        num_steps=(config.run.cycles + 1) * steps_per_cycle,
    )
    return full, full[::steps_per_cycle, : model.num_slow].astype(np.float32)


def _synthetic_site_observations(config: ExperimentConfig, num_sites: int):
    """Every ``stride``-th site, observed with ``error_std``."""
    sites = np.arange(0, num_sites, config.observations.stride)
    operator = PointSelection((num_sites,), jnp.asarray(sites))
    observation = ObservationModel(operator, config.observations.error_std**2)
    return observation, [f"X[{s}]" for s in sites]


def read_truth(path: Path, grid: GridSpec, times: np.ndarray) -> np.ndarray:
    """True frames ``(cycle, *frame)`` from a netCDF/zarr file on the model grid.

    The file holds one variable per model variable with dims ``(time, [level,] lat, lon)``;
    it must contain every requested time.
    """
    if not path.exists():
        raise ConfigError(f"truth.path = {str(path)!r}: file not found")
    try:
        return frames_at_times(
            open_gridded(path), grid, times, source=f"truth file {path}", time_label="cycle times"
        )
    except ValueError as error:
        raise ConfigError(str(error)) from None


def load_atmosphere_emulator(config: ExperimentConfig):
    """The configured gridded atmosphere emulator (card or trained weights, drawing the
    ``model.noise`` latent noise) and its card."""
    from ..emulators.atmosphere import load_emulator as load_atmosphere
    from ..emulators.atmosphere import trained_card

    m = config.model
    try:
        if m.weights:
            card = trained_card(m.weights)
            return load_atmosphere(card, m.weights, noise=m.noise), card
        card = load_card(m.emulator)
    except (OSError, ValueError, KeyError) as error:
        field = "model.weights" if m.weights else "model.emulator"
        raise ConfigError(f"{field} = {m.weights or m.emulator!r}: {error}") from None
    if card.get("family") != "atmosphere":
        raise ConfigError(
            f"model.emulator = {m.emulator!r} is not a gridded atmosphere emulator "
            f"(family {card.get('family')!r}); see 'filtrax models'"
        )
    return load_atmosphere(card, noise=m.noise), card


def bundled_truth_path(card: dict) -> Path:
    """The held-out truth segment shipped with an atmosphere emulator's card."""
    from importlib import resources

    if "truth_segment" not in card:
        raise ConfigError(
            f"truth.source = 'bundled': emulator {card['name']!r} ships no truth segment"
        )
    return Path(str(resources.files("filtrax.emulators") / "cards" / card["truth_segment"]))


def _heldsuarez(config: ExperimentConfig):
    """Emulator, grid, true frames ``(cycle, *frame)`` and the state :math:`(x^{-1}, x^0)`."""
    emulator, card = load_atmosphere_emulator(config)
    if not math.isclose(config.run.cycle_hours, emulator.time_step_hours):
        raise ConfigError(
            f"run.cycle_hours = {config.run.cycle_hours} but emulator {emulator.name!r} "
            f"steps {emulator.time_step_hours} h"
        )
    grid = emulator.grid
    if config.truth.source == "none":
        raise ConfigError(
            "model.name = 'heldsuarez' needs a truth for its initial state (truth.source = "
            "'bundled' or 'file')"
        )
    if config.truth.source == "simulate":
        raise ConfigError(
            "model.name = 'heldsuarez' does not simulate its truth inside a run; use "
            "truth.source = 'bundled' (the card's held-out segment) or 'file' (a store "
            "written by 'filtrax heldsuarez-data')"
        )
    path = Path(config.truth.path) if config.truth.source == "file" else bundled_truth_path(card)
    start = np.datetime64(datetime.fromisoformat(config.run.start_time), "s")
    step = np.timedelta64(round(config.run.cycle_hours * 3600), "s")
    times = np.concatenate([[start - step, start], cycle_times(config)])
    frames = read_truth(path, grid, times)
    x0 = AtmosphereEmulator.initial_state(frames[0], frames[1])
    return emulator, grid, frames[2:], x0


def _gencast(config: ExperimentConfig):
    """GenCast from a checkpoint, its initial state and truth from ERA5 (``truth.path``).

    Not run on our machines (no graphcast code, weights or ERA5 here): the functions it
    calls are tested one by one (``tests/test_gencast.py``), this assembly is not.
    """
    from ..emulators import gencast as gc

    m = config.model
    if config.truth.source != "file":
        raise ConfigError(
            "model.name = 'gencast' reads its initial state and truth from ERA5: set "
            "truth.source = 'file' and truth.path to an ERA5 zarr/netCDF on GenCast's grid"
        )
    if not math.isclose(config.run.cycle_hours, 12.0):
        raise ConfigError(f"run.cycle_hours = {config.run.cycle_hours} but GenCast steps 12 h")
    for field in ("checkpoint", "statistics"):
        if not getattr(m, field):
            raise ConfigError(f"model.{field} must be set for model.name = 'gencast'")
    network, grid = gc.load_gencast_network(m.checkpoint, use_gpu_attention=m.gpu_attention)
    statistics = gc.read_statistics(m.statistics, grid.channels)
    path = Path(config.truth.path)
    if not path.exists():
        raise ConfigError(f"truth.path = {str(path)!r}: file not found")
    dataset = open_gridded(path)
    start = np.datetime64(datetime.fromisoformat(config.run.start_time), "s")
    step = np.timedelta64(12 * 3600, "s")
    times = np.concatenate([[start - step, start], cycle_times(config)])
    frames = gc.era5_frames(dataset, grid, times)
    emulator = gc.gencast_emulator(
        network,
        statistics,
        grid,
        sst_missing=gc.sst_missing_mask(frames[1], grid),
        statics=gc.era5_statics(dataset, grid, statistics),
        name=Path(m.checkpoint).stem,
    )
    x0 = emulator.initial_state(frames[0], frames[1], start)
    # Scores compare finite fields: the truth's SST over land takes the same fill value.
    truth = np.stack([np.asarray(emulator.fill_missing(jnp.asarray(f))) for f in frames[2:]])
    return emulator, grid, truth, x0


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
    init_key = jax.random.fold_in(jax.random.key(config.seed), 103)

    def perturb(leaf):
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            return leaf

        def perturbation(i):
            k = jax.random.fold_in(init_key, i)
            return spread * jax.random.normal(k, leaf.shape[1:], leaf.dtype)

        return leaf + jax.vmap(perturbation)(jnp.arange(num_particles))

    return jax.tree_util.tree_map(perturb, particles)


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
    if config.observations.source == "sites" and m.name != "lorenz96":
        raise ConfigError(
            f"observations.source = 'sites' needs a site-indexed learned model "
            f"(model.name = 'lorenz96'), got model.name = {m.name!r}"
        )
    if config.truth.source == "bundled" and m.name != "heldsuarez":
        raise ConfigError(
            f"truth.source = 'bundled' needs a learned gridded model (model.name = "
            f"'heldsuarez'), got {m.name!r}"
        )
    if config.truth.source == "file" and m.name not in ("gaussian_field", "heldsuarez", "gencast"):
        raise ConfigError(
            f"truth.source = 'file' needs a gridded model; model.name = {m.name!r} is "
            f"site-indexed and simulates its own truth"
        )
    if config.observations.source in ("gridded", "stations") and m.name not in (
        "gaussian_field",
        "heldsuarez",
        "gencast",
    ):
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
    elif m.name == "lorenz96":
        emulator, truth, x0 = _lorenz96(config, truth_key)
        if config.truth.source == "none":
            truth = None
        observation, labels = _synthetic_site_observations(config, emulator.num_sites)
        grid, frame_shape, units = None, (emulator.num_sites,), ("1",)
    elif m.name == "heldsuarez":
        from ..dynamics.heldsuarez import UNITS

        emulator, grid, truth, x0 = _heldsuarez(config)
        frame_shape = grid.shape
        units = tuple(UNITS.get(c.variable, "1") for c in grid.channels)
    elif m.name == "gencast":
        from ..emulators.gencast import UNITS as GENCAST_UNITS

        emulator, grid, truth, x0 = _gencast(config)
        frame_shape = grid.shape
        units = tuple(GENCAST_UNITS.get(c.variable, "1") for c in grid.channels)
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
        if source == "sites":
            observation_set = read_site_table(
                path,
                frame_shape[0],
                m.time_step,
                num_cycles,
                config.observations.error_std,
            )
        elif source == "stations":
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

    particles = initial_particles(config, x0, config.filter.particles)
    method = config.filter.method
    return Experiment(
        config=config,
        emulator=emulator,
        grid=grid,
        frame_shape=tuple(frame_shape),
        truth=truth,
        observations=observations,
        observation=observation,
        filter_observation=observation.with_error_inflation(
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
