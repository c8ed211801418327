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

import jax
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
        observation_model: the family's own synthetic observation model and labels, or ``None``
            (gridded families observe every ``observations.stride``-th point).
    """

    emulator: AbstractEmulator
    grid: GridSpec | None
    frame_shape: tuple[int, ...]
    units: tuple[str, ...]
    truth: np.ndarray | None
    initial_state: object
    observation_model: tuple[ObservationModel, list[str]] | None = None


@dataclasses.dataclass(frozen=True)
class ModelSetting:
    """A registered model family.

    Attributes:
        build: ``build(config, truth_key, init_key) -> ModelParts``.
        truth_sources: the ``truth.source`` values it accepts.
        observation_sources: the ``observations.source`` values it accepts.
        keys: the ``[model]`` keys it reads besides :data:`COMMON_MODEL_KEYS`, or ``None``
            for a setting that may read any (``model.factory``'s). A key outside them has
            no effect: the config refuses it at a value other than its default and leaves
            it out of the resolved ``config.toml``.
        default_emulator: the card ``model.emulator`` names when the config leaves it at
            its schema default (that default is the Lorenz-96 family's); ``""``: none.
    """

    build: Callable[..., ModelParts]
    truth_sources: tuple[str, ...]
    observation_sources: tuple[str, ...]
    keys: tuple[str, ...] | None = None
    default_emulator: str = ""


#: The ``[model]`` keys every family reads.
COMMON_MODEL_KEYS = ("name", "factory", "initial_spread", "initial_ensemble")


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
        if spec is None or spec.loader is None:
            raise ConfigError(f"model.factory = {path!r}: {file} is not a Python source file")
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
    if config.truth.source == "file":
        slow = read_site_truth(config, emulator.num_sites)
    else:
        slow = lorenz96_truth(config, emulator.setting, truth_key)[1]
    x0 = Lorenz96Emulator.initial_state(slow[0], slow[1])
    return emulator, slow[2:], x0


def open_input(path: Path, source: str):
    """The netCDF/zarr input file at ``path`` that the config key ``source`` names; a
    missing or unreadable file is a :class:`ConfigError` naming the key."""
    if not path.exists():
        raise ConfigError(f"{source}: file not found")
    try:
        return open_gridded(path)
    except ValueError as error:
        raise ConfigError(f"{source}: {str(error).removeprefix(f'{path}: ')}") from None


def read_site_truth(config: ExperimentConfig, num_sites: int) -> np.ndarray:
    """A site-indexed truth file: ``x`` with dims ``(time, site)`` at the model times
    ``−Δt, 0, Δt, …, K Δt`` (``Δt = model.time_step``; ``x^{-1}, x^0`` and the cycles)."""
    path = Path(config.truth.path)
    source = f"truth.path = {str(path)!r}"
    dataset = open_input(path, source)
    times = config.model.time_step * np.arange(-1, config.run.cycles + 1)
    try:
        return _site_frames(dataset, (num_sites,), times, source)
    except ValueError as error:
        raise ConfigError(str(error)) from None


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
    observation_model = ObservationModel(operator, config.observations.error_std**2)
    return observation_model, [f"X[{s}]" for s in sites]


def read_truth(path: Path, grid: GridSpec, times: np.ndarray) -> np.ndarray:
    """True frames ``(cycle, *frame)`` from a netCDF/zarr file on the model grid.

    The file holds one variable per model variable with dims ``(time, [level,] lat, lon)``
    in any order; it must contain every requested time, and be finite there.
    """
    source = f"truth.path = {str(path)!r}"
    dataset = open_input(path, source)
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
    gc.require_graphcast()  # the package first: without it no file can be used
    path = Path(config.truth.path)
    dataset = open_input(path, f"truth.path = {str(path)!r}")
    start = np.datetime64(datetime.fromisoformat(config.run.start_time), "s")
    emulator = gc.load_gencast(
        m.checkpoint, m.statistics, dataset, start, use_gpu_attention=m.gpu_attention
    )
    step = np.timedelta64(12 * 3600, "s")
    times = np.concatenate([[start - step, start], cycle_times(config)])
    frames = gc.era5_frames(dataset, emulator.grid, times)
    x0 = emulator.initial_state(frames[0], frames[1], start)
    # Scores compare finite fields: the truth's SST over land takes the same fill value.
    truth = np.stack([np.asarray(emulator.fill_missing(jnp.asarray(f))) for f in frames[2:]])
    return emulator, emulator.grid, truth, x0


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
    observation_model = _synthetic_site_observations(config, emulator.num_sites)
    return ModelParts(emulator, None, (emulator.num_sites,), ("1",), truth, x0, observation_model)


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
    "linear_gaussian",
    ModelSetting(
        _linear_gaussian,
        ("simulate", "none"),
        ("synthetic",),
        keys=("state_dim", "observed", "observation_std"),
    ),
)
MODELS.register(
    "gaussian_field",
    ModelSetting(
        _gaussian_field,
        ("simulate", "file", "none"),
        _GRIDDED_OBSERVATIONS,
        keys=(
            "num_lat",
            "num_lon",
            "variables",
            "levels",
            "correlation_length_km",
            "ar_coefficient",
            "noise_std",
        ),
    ),
)
MODELS.register(
    "lorenz96",
    ModelSetting(
        _lorenz96_setting,
        ("simulate", "file", "none"),
        ("synthetic", "sites"),
        keys=("emulator", "weights", "time_step", "spin_up"),
    ),
)
MODELS.register(
    "heldsuarez",
    ModelSetting(
        _heldsuarez_setting,
        ("simulate", "file", "bundled", "none"),
        _GRIDDED_OBSERVATIONS,
        keys=("emulator", "weights", "noise"),
        default_emulator="hs_t21_32x64_hybrid",
    ),
)
MODELS.register(
    "gencast",
    ModelSetting(
        _gencast_setting,
        ("simulate", "file", "none"),
        _GRIDDED_OBSERVATIONS,
        keys=("checkpoint", "statistics", "gpu_attention"),
    ),
)


def read_initial_ensemble(config: ExperimentConfig, parts: ModelParts, num_particles: int):
    """The particles of ``model.initial_ensemble``: one per ``member`` of the file.

    Gridded models: one variable per model variable with dims ``(member, [time,] [level,]
    lat, lon)`` on the model grid, at ``run.start_time``. Site-indexed models: ``x`` with
    dims ``(member, [time,] site)``, at model time 0. An emulator that conditions on the
    previous frame too (:class:`~filtrax.emulators._base.AbstractTwoFrameEmulator`) needs
    both times: ``start − Δ`` and ``start`` (site-indexed: ``−Δt`` and ``0``). Each member's
    state is ``emulator.initial_state(previous, current)`` where the emulator has one.
    """
    from ..emulators._base import AbstractTwoFrameEmulator

    path = Path(config.model.initial_ensemble)
    source = f"model.initial_ensemble = {str(path)!r}"
    if len(jax.tree_util.tree_leaves(parts.initial_state)) != 1:
        raise ConfigError(
            f"{source}: this model's state is a pytree (several arrays), which an ensemble "
            f"file cannot give; build the particles in Python and call filtrax.assimilate"
        )
    dataset = _open_ensemble(path, source, num_particles)
    two_frames = isinstance(parts.emulator, AbstractTwoFrameEmulator)
    times = _initial_times(config, parts.grid is None, two_frames)
    members = []
    for i in range(num_particles):
        member = dataset.isel(member=i, drop=True)
        if "time" not in member.dims:
            if two_frames:
                raise ConfigError(
                    f"{source} has no 'time' dimension, but the emulator conditions on the "
                    f"previous frame too: give each member at the times {list(map(str, times))}"
                )
            member = member.expand_dims(time=times[-1:])
        members.append(_member_frames(member, parts, times, f"{source}, member {i}"))
    dtype = jax.tree_util.tree_leaves(parts.initial_state)[0].dtype
    previous = jnp.asarray(np.stack([m[0] for m in members]), dtype)
    current = jnp.asarray(np.stack([m[-1] for m in members]), dtype)
    start = getattr(parts.emulator, "initial_state", None)
    return current if start is None else jax.vmap(start)(previous, current)


def _open_ensemble(path: Path, source: str, num_particles: int):
    dataset = open_input(path, source)
    if "member" not in dataset.dims:
        raise ConfigError(
            f"{source} has no 'member' dimension (dimensions: "
            f"{', '.join(map(str, dataset.dims)) or 'none'}); one member per particle"
        )
    if dataset.sizes["member"] != num_particles:
        raise ConfigError(
            f"{source} has {dataset.sizes['member']} members, but filter.particles = "
            f"{num_particles}; set filter.particles = {dataset.sizes['member']}"
        )
    return dataset


def _initial_times(config: ExperimentConfig, site_indexed: bool, two_frames: bool) -> np.ndarray:
    """The times an initial ensemble gives: model times for sites, datetimes on grids."""
    if site_indexed:
        times = np.array([-config.model.time_step, 0.0])
    else:
        start = np.datetime64(datetime.fromisoformat(config.run.start_time), "s")
        times = np.array([start - np.timedelta64(round(config.run.cycle_hours * 3600), "s"), start])
    return times if two_frames else times[-1:]


def _member_frames(member, parts: ModelParts, times: np.ndarray, source: str) -> np.ndarray:
    """One member's frames ``(time, *frame)`` at ``times``, checked like a truth file."""
    from ..io import plausibility

    try:
        if parts.grid is None:
            frames = _site_frames(member, parts.frame_shape, times, source)
        else:
            frames = frames_at_times(
                member, parts.grid, times, source=source, time_label="initial times", finite=True
            )
            labels = [channel.label() for channel in parts.grid.channels]
            plausibility.check_frames(frames, parts.units, labels, source)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    return frames


def _site_frames(dataset, frame_shape, times: np.ndarray, source: str) -> np.ndarray:
    """Frames ``(time, site)`` of the variable ``x`` at the model ``times``."""
    if "x" not in dataset or set(map(str, dataset["x"].dims)) != {"time", "site"}:
        raise ValueError(f"{source}: expected a variable 'x' with dimensions (time, site)")
    x = dataset["x"].transpose("time", "site")
    if x.sizes["site"] != frame_shape[0]:
        raise ValueError(f"{source}: 'x' has {x.sizes['site']} sites, the model {frame_shape[0]}")
    file_times = np.asarray(x["time"].values, np.float64) if "time" in x.coords else times
    absent = [float(t) for t in times if not np.isclose(file_times, t).any()]
    if absent:
        raise ValueError(f"{source} has no state at the model times {absent[:3]}")
    order = [int(np.flatnonzero(np.isclose(file_times, t))[0]) for t in times]
    frames = np.asarray(x.values, np.float64)[order]
    if not np.isfinite(frames).all():
        raise ValueError(f"{source}: 'x' has non-finite values; it must be finite everywhere")
    return frames
