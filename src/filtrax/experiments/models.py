"""Model settings: each model family is a registered setting that builds its parts.

:data:`MODELS` maps ``model.name`` to a :class:`ModelSetting`: which truth and observation
sources the family accepts, and a builder that turns the config into the emulator, its
grid and units, the truth, the initial state and (for site-indexed families) the
observation model. :func:`filtrax.experiments.factory.build_experiment` does the rest the
same way for every family: observations, the initial ensemble and the filters.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import math
import sys
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import jax.numpy as jnp
import numpy as np

from ..dynamics.gaussian_field import GaussianFieldModel
from ..dynamics.heldsuarez import UNITS as HELDSUAREZ_UNITS
from ..dynamics.linear_gaussian import random_linear_gaussian_model
from ..dynamics.lorenz96 import DEFAULT_DT, full_trajectory, setting_model
from ..emulators._base import AbstractEmulator
from ..emulators.atmosphere import load_emulator as load_atmosphere
from ..emulators.cards import list_cards, load_card, trained_card
from ..emulators.hybrid import load_hybrid
from ..emulators.lorenz96 import Lorenz96Emulator, load_emulator
from ..grid import Channel, GridSpec
from ..io.datasets import frames_at_times, open_gridded
from ..observations.model import ObservationModel
from ..observations.operators import PointSelection
from ..registry import Registry
from .errors import ConfigError

if TYPE_CHECKING:
    from .config import ExperimentConfig


@dataclasses.dataclass(frozen=True)
class ModelParts:
    """What a model setting builds from a config.

    Attributes:
        emulator: the emulator the filters drive.
        grid: the latitude-longitude grid, or ``None`` for site-indexed states.
        frame_shape: the shape of one frame.
        units: the unit of each channel (or of the single site variable).
        truth: the true frames per cycle ``(cycle, *frame)``, or ``None`` when unknown.
        initial_state: the true state at the initial time (the particles' centre).
        observation: the family's own synthetic observation model and labels, or ``None``
            (gridded families observe every ``observations.stride``-th point).
    """

    emulator: AbstractEmulator
    grid: GridSpec | None
    frame_shape: tuple[int, ...]
    units: tuple[str, ...]
    truth: np.ndarray | None
    initial_state: object
    observation: tuple[ObservationModel, list[str]] | None = None


@dataclasses.dataclass(frozen=True)
class ModelSetting:
    """A registered model family.

    Attributes:
        build: ``build(config, truth_key, init_key) -> ModelParts``.
        truth_sources: the ``truth.source`` values it accepts.
        observation_sources: the ``observations.source`` values it accepts.
    """

    build: Callable[..., ModelParts]
    truth_sources: tuple[str, ...]
    observation_sources: tuple[str, ...]


#: ``model.name`` -> :class:`ModelSetting`.
MODELS: Registry[ModelSetting] = Registry("model.name")


def model_setting(config: ExperimentConfig) -> ModelSetting:
    """The setting that builds ``config``'s model: ``model.factory``'s when it names one,
    else the registered ``model.name``."""
    if config.model.factory:
        return setting_from_import_path(config.model.factory)
    return MODELS[config.model.name]


def setting_from_import_path(path: str) -> ModelSetting:
    """The :class:`ModelSetting` at ``path``: ``package.module:NAME`` (an importable module)
    or ``path/to/file.py:NAME`` (a file, relative to the working directory).

    ``NAME`` may be dotted (an attribute of an attribute). It is a :class:`ModelSetting`,
    or a function of no arguments that returns one (so that building it can wait until
    the run needs it).
    """
    where, sep, name = path.rpartition(":")
    if not sep or not where or not name:
        raise ConfigError(
            f"model.factory = {path!r}: expected 'package.module:NAME' or 'path/to/file.py:NAME'"
        )
    entry = _import_module(path, where)
    for part in name.split("."):
        if not hasattr(entry, part):
            raise ConfigError(f"model.factory = {path!r}: {where!r} has no attribute {part!r}")
        entry = getattr(entry, part)
    if not isinstance(entry, ModelSetting) and callable(entry):
        try:
            entry = entry()
        except Exception as error:
            raise ConfigError(
                f"model.factory = {path!r}: calling {name}() failed ({type(error).__name__}: "
                f"{error}); expected a ModelSetting or a function of no arguments returning "
                "one (a builder build(config, truth_key, init_key) goes inside a ModelSetting)"
            ) from error
    if not isinstance(entry, ModelSetting):
        raise ConfigError(
            f"model.factory = {path!r} is an object of type {type(entry).__name__}; expected "
            "a filtrax.experiments.models.ModelSetting (or a function returning one)"
        )
    return entry


def _import_module(path: str, where: str):
    """The module ``where`` names: a ``.py`` file, or a dotted module name.

    A file is imported as ``python file.py`` would run it: its folder goes on ``sys.path``
    (so that it can import its neighbours), under a module name derived from its resolved
    path (so that two files of the same name stay apart).
    """
    if where.endswith(".py"):
        file = Path(where).resolve()
        if not file.is_file():
            raise ConfigError(f"model.factory = {path!r}: no file {where!r}")
        digest = hashlib.sha256(str(file).encode()).hexdigest()[:12]
        module_name = f"filtrax_user_setting_{file.stem}_{digest}"
        if module_name in sys.modules:
            return sys.modules[module_name]
        if str(file.parent) not in sys.path:
            sys.path.insert(0, str(file.parent))
        spec = importlib.util.spec_from_file_location(module_name, file)
        module = importlib.util.module_from_spec(spec)
        # Registered before it runs, as an import would: dataclasses and equinox modules
        # defined in the file look their module up in sys.modules.
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as error:
            del sys.modules[module_name]
            raise ConfigError(
                f"model.factory = {path!r}: importing {where!r} failed: "
                f"{type(error).__name__}: {error}"
            ) from error
        return module
    try:
        return importlib.import_module(where)
    except ModuleNotFoundError as error:
        if error.name is not None and where.startswith(error.name):
            raise ConfigError(
                f"model.factory = {path!r}: cannot import {where!r} ({error}); install it or "
                "give the file instead ('path/to/file.py:NAME')"
            ) from None
        raise ConfigError(
            f"model.factory = {path!r}: importing {where!r} failed: {error}"
        ) from error
    except Exception as error:
        raise ConfigError(
            f"model.factory = {path!r}: importing {where!r} failed: {type(error).__name__}: {error}"
        ) from error


def cycle_times(config: ExperimentConfig) -> np.ndarray:
    start = datetime.fromisoformat(config.run.start_time)
    step = timedelta(hours=config.run.cycle_hours)
    return np.array([start + (k + 1) * step for k in range(config.run.cycles)], "datetime64[s]")


def gaussian_field_grid(config: ExperimentConfig) -> GridSpec:
    m = config.model
    channels = []
    for variable in m.variables:
        if m.levels:
            channels.extend(Channel(variable, float(level)) for level in m.levels)
        else:
            channels.append(Channel(variable))
    return GridSpec.regular(m.num_lat, m.num_lon, channels)


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
            lorenz = [c["name"] for c in list_cards() if c.get("family") == "lorenz96"]
            raise ConfigError(
                f"model.emulator = {m.emulator!r} is a {card.get('family')!r} emulator, not a "
                f"Lorenz-96 one; model.name = 'lorenz96' takes one of: {', '.join(lorenz)}"
            )
        try:
            emulator = load_emulator(card)
        except (OSError, ValueError, KeyError) as error:  # a damaged installation
            raise ConfigError(f"model.emulator = {m.emulator!r}: {error}") from None
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

    The file holds one variable per model variable with dims ``(time, [level,] lat, lon)``
    in any order; it must contain every requested time, and be finite there.
    """
    source = f"truth.path = {str(path)!r}"
    if not path.exists():
        raise ConfigError(f"{source}: file not found")
    try:
        dataset = open_gridded(path)
    except ValueError as error:
        raise ConfigError(f"{source}: {str(error).removeprefix(f'{path}: ')}") from None
    try:
        return frames_at_times(
            dataset, grid, times, source=source, time_label="cycle times", finite=True
        )
    except ValueError as error:
        raise ConfigError(str(error)) from None


#: A gridded atmosphere card's ``family`` -> ``load(card, weights, noise=...)``.
ATMOSPHERE_FAMILIES: dict[str, Callable] = {
    "atmosphere": load_atmosphere,
    "hybrid_atmosphere": load_hybrid,
}


def load_atmosphere_emulator(config: ExperimentConfig):
    """The configured gridded atmosphere emulator (card or trained weights, drawing the
    ``model.noise`` latent noise) and its card."""
    m = config.model
    field = "model.weights" if m.weights else "model.emulator"
    try:
        card = trained_card(m.weights) if m.weights else load_card(m.emulator)
    except (OSError, ValueError, KeyError) as error:
        raise ConfigError(f"{field} = {m.weights or m.emulator!r}: {error}") from None
    family = card.get("family")
    if family not in ATMOSPHERE_FAMILIES:
        raise ConfigError(
            f"model.emulator = {m.emulator!r} is not a gridded atmosphere emulator "
            f"(family {family!r}); see 'filtrax models'"
        )
    try:
        return ATMOSPHERE_FAMILIES[family](card, m.weights or None, noise=m.noise), card
    except (OSError, ValueError, KeyError) as error:
        raise ConfigError(f"{field} = {m.weights or m.emulator!r}: {error}") from None


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
    x0 = emulator.initial_state(frames[0], frames[1])
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


def _linear_gaussian(config: ExperimentConfig, truth_key, init_key) -> ModelParts:
    m = config.model
    if m.observed > m.state_dim:
        raise ConfigError(f"model.observed = {m.observed} exceeds model.state_dim = {m.state_dim}")
    model = random_linear_gaussian_model(
        config.seed, m.state_dim, m.observed, observation_variance=m.observation_std**2
    )
    x0 = jnp.zeros(m.state_dim)
    truth = np.asarray(model.simulate(truth_key, x0, config.run.cycles)[0])
    labels = [f"x[{int(np.flatnonzero(row)[0])}]" for row in np.asarray(model.observation_matrix)]
    return ModelParts(
        model.emulator(), None, (m.state_dim,), ("1",), truth, x0,
        (model.observation_model(), labels),
    )  # fmt: skip


def _gaussian_field(config: ExperimentConfig, truth_key, init_key) -> ModelParts:
    m = config.model
    grid = gaussian_field_grid(config)
    model = GaussianFieldModel.build(
        grid,
        correlation_length_km=m.correlation_length_km,
        ar_coefficient=m.ar_coefficient,
        noise_std=m.noise_std,
    )
    x0 = model.sample_climatology(init_key)
    truth = np.asarray(model.simulate(truth_key, x0, config.run.cycles))
    if config.truth.source == "file":
        start = np.array([datetime.fromisoformat(config.run.start_time)], "datetime64[s]")
        frames = read_truth(
            Path(config.truth.path), grid, np.concatenate([start, cycle_times(config)])
        )
        x0, truth = jnp.asarray(frames[0], dtype=x0.dtype), frames[1:]
    elif config.truth.source == "none":
        truth = None
    units = tuple("1" for _ in grid.channels)
    return ModelParts(model.emulator(), grid, grid.shape, units, truth, x0)


def _lorenz96_setting(config: ExperimentConfig, truth_key, init_key) -> ModelParts:
    emulator, truth, x0 = _lorenz96(config, truth_key)
    if config.truth.source == "none":
        truth = None
    observation = _synthetic_site_observations(config, emulator.num_sites)
    return ModelParts(emulator, None, (emulator.num_sites,), ("1",), truth, x0, observation)


def _heldsuarez_setting(config: ExperimentConfig, truth_key, init_key) -> ModelParts:
    emulator, grid, truth, x0 = _heldsuarez(config)
    units = tuple(HELDSUAREZ_UNITS.get(c.variable, "1") for c in grid.channels)
    return ModelParts(emulator, grid, grid.shape, units, truth, x0)


def _gencast_setting(config: ExperimentConfig, truth_key, init_key) -> ModelParts:
    from ..emulators.gencast import UNITS as GENCAST_UNITS

    emulator, grid, truth, x0 = _gencast(config)
    units = tuple(GENCAST_UNITS.get(c.variable, "1") for c in grid.channels)
    return ModelParts(emulator, grid, grid.shape, units, truth, x0)


_GRIDDED_OBSERVATIONS = ("synthetic", "gridded", "stations")
MODELS.register(
    "linear_gaussian", ModelSetting(_linear_gaussian, ("simulate", "none"), ("synthetic",))
)
MODELS.register(
    "gaussian_field",
    ModelSetting(_gaussian_field, ("simulate", "file", "none"), _GRIDDED_OBSERVATIONS),
)
MODELS.register(
    "lorenz96", ModelSetting(_lorenz96_setting, ("simulate", "none"), ("synthetic", "sites"))
)
MODELS.register(
    "heldsuarez",
    ModelSetting(
        _heldsuarez_setting, ("simulate", "file", "bundled", "none"), _GRIDDED_OBSERVATIONS
    ),
)
MODELS.register(
    "gencast", ModelSetting(_gencast_setting, ("simulate", "file", "none"), _GRIDDED_OBSERVATIONS)
)
