"""Run an experiment into a run directory, cycle by cycle, resumably.

Run directory layout::

    config.toml          the resolved config (what ``--resume`` checks against)
    inputs.toml          the path and sha256 of every input file (``--resume`` checks them)
    observations.nc      the observations used, (cycle, obs), NaN = not observed
    truth.nc             the true frames, when known
    analysis.zarr        the analysis ensemble per cycle (filter)
    baseline.zarr        the free ensemble per cycle (when ``run.baseline``)
    checkpoints/*.npz    the filter state after the last finished cycle (npz, no pickle)
    metrics.nc           rmse, spread, crps, ess, alpha, seconds per cycle (and channel)

Each cycle runs :func:`filtrax.assimilate` on one observation, writes its analysis into a
preallocated zarr region, scores it (:mod:`.scoring`), then atomically replaces the
checkpoint, which keeps the scores (write + fsync + ``os.replace``). ``metrics.nc`` is
assembled from the checkpoints' records, without reading the ensembles back. A run killed
at any point resumes from its last finished cycle with the same keys (cycle ``k`` always
uses ``fold_in(root, k)``), so the outputs equal those of an uninterrupted run bit for bit
on the same machine.

``[parallel]`` only lays the particles out over devices: it is left out of the config
digest, so a run may resume on another number of devices (``run.profile``, which only
times phases after the run, is left out too). In a multi-host run
(``parallel.distributed``) every process runs the filter and only process 0 writes; the
run directory must be on a filesystem that every host sees.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import sys
import time
import tomllib
import warnings
import zipfile
from pathlib import Path

import dask.array
import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from .. import streams
from ..driver import SaveAt, assimilate
from ..filters.particle import AbstractFilter, FilterState
from ..io.atomic import atomic_savez
from ..io.datasets import dataset_to_frames, frames_to_dataset
from ..parallel import initialize_distributed, is_main_process, to_host
from ..profiling import PHASES, phase_seconds
from . import observation_space, run_directory, scoring
from .config import ConfigError, ExperimentConfig, ParallelConfig, config_from_dict, toml_text
from .errors import RunDirectoryError
from .factory import Experiment, build_experiment
from .run_directory import atomic_netcdf
from .schema import display

logger = logging.getLogger(__name__)

HISTORY_FIELDS = (
    "ess",
    "alpha",
    "inflation",
    "log_evidence_increment",
    "move_gain",
    "forward_calls",
    "backward_calls",
    "seconds",
)
RUN_STREAMS = streams.RUN
# Seconds of timed calls per phase in a run's phase profile (filtrax.profiling).
PROFILE_BUDGET_SECONDS = 1.0


#: Keys added after runs were written: ``{section: {key: (the value that means "as before",
#: keys that only matter otherwise)}}``. At that value they are left out of the digest, so
#: that those runs still resume.
DIGEST_NEUTRAL_DEFAULTS = {
    "filter": {"rejuvenation": ("none", ("rejuvenation_bandwidth", "rejuvenation_regularisation"))},
    "model": {"factory": ("", ()), "initial_ensemble": ("", ())},
    "observations": {"stations": (0, ("network_seed",))},
}


def config_digest(config: ExperimentConfig) -> str:
    """The sha256 of the config without ``[parallel]``, ``run.profile`` and
    ``run.observation_diagnostics`` (none changes the results: one lays particles out, the
    others only time phases or forecast on streams of their own), with the ``[filter]`` keys
    ``filter.method`` does not read at their defaults, and without later-added keys at their
    neutral value (:data:`DIGEST_NEUTRAL_DEFAULTS`)."""
    run = dataclasses.replace(config.run, profile=True, observation_diagnostics=True)
    # [filter] keys filter.method does not read count at their defaults: the resolved
    # config.toml drops them, and a resume reads it back.
    neutral = dataclasses.replace(
        config, parallel=ParallelConfig(), run=run, filter=config.filter.in_effect_only()
    )
    # Every key, in effect or not: digests of runs written before [model] was trimmed.
    data = neutral.full_dict()
    for section, keys in DIGEST_NEUTRAL_DEFAULTS.items():
        for key, (value, dependents) in keys.items():
            if data[section][key] == value:
                for dropped in (key, *dependents):
                    del data[section][dropped]
    return hashlib.sha256(toml_text(data).encode()).hexdigest()


def _save_checkpoint(path: Path, state: FilterState, history: dict, digest: str) -> None:
    state = to_host(state)  # every host takes part in gathering shards; only one writes
    if not is_main_process():
        return
    arrays = {
        f"particles_{i}": leaf for i, leaf in enumerate(jax.tree_util.tree_leaves(state.particles))
    }
    arrays["log_weights"] = state.log_weights
    arrays["cycle"] = state.cycle
    arrays["config_sha256"] = np.frombuffer(digest.encode(), dtype=np.uint8)
    arrays.update({f"history_{k}": v for k, v in history.items()})
    atomic_savez(path, arrays)


def _history(data, field: str) -> np.ndarray:
    """A checkpoint's record of ``field``; NaN for one a checkpoint from before it lacks
    (``move_gain``), so that such a run still resumes and scores."""
    if f"history_{field}" in data.files:
        return np.array(data[f"history_{field}"])
    return np.full(np.asarray(data["history_ess"]).shape, np.nan)


def _checkpoint_history(data) -> dict[str, np.ndarray]:
    """Every record an open checkpoint holds: the diagnostics (NaN for one it predates), and
    the observation-space statistics and the scores where it has them (a checkpoint from
    before them lacks them)."""
    history = {k: _history(data, k) for k in HISTORY_FIELDS}
    history.update(
        {
            k: np.array(data[f"history_{k}"])
            for k in (*observation_space.FIELDS, *scoring.SCORE_FIELDS)
            if f"history_{k}" in data.files
        }
    )
    return history


def _load_checkpoint(path: Path, template: FilterState, digest: str) -> tuple[FilterState, dict]:
    try:
        return _read_checkpoint(path, template, digest)
    except RunDirectoryError:
        raise
    except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as error:
        raise RunDirectoryError(
            f"--resume: checkpoint {path} is unreadable ({type(error).__name__}: {error}); "
            f"restore it, or delete it to rerun that ensemble from cycle 0"
        ) from None


def _read_checkpoint(path: Path, template: FilterState, digest: str) -> tuple[FilterState, dict]:
    # np.load leaves a file it failed to read open; this handle is closed either way.
    with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as data:
        stored = bytes(data["config_sha256"]).decode()
        if stored != digest:
            raise RunDirectoryError(
                f"checkpoint {path} was written by another config (sha256 {stored[:12]}…, "
                f"this config {digest[:12]}…)"
            )
        leaves, treedef = jax.tree_util.tree_flatten(template.particles)
        particles = [jnp.asarray(data[f"particles_{i}"]) for i in range(len(leaves))]
        for i, (new, old) in enumerate(zip(particles, leaves, strict=True)):
            if new.shape != old.shape or new.dtype != old.dtype:
                raise RunDirectoryError(
                    f"checkpoint {path}: particles_{i} is {new.shape} {new.dtype}, expected "
                    f"{old.shape} {old.dtype}"
                )
        state = FilterState(
            jax.tree_util.tree_unflatten(treedef, particles),
            jnp.asarray(data["log_weights"]),
            jnp.asarray(data["cycle"]),
        )
        history = _checkpoint_history(data)
    return state, history


def _preallocate(store: Path, experiment: Experiment, num_particles: int) -> None:
    """Write the zarr metadata for all cycles (NaN-filled, chunked per cycle)."""
    num_cycles = len(experiment.cycle_times)
    frames = dask.array.full(
        (num_cycles, num_particles, *experiment.frame_shape),
        np.nan,
        dtype=np.asarray(experiment.initial_particles).dtype,
        chunks=(1, num_particles, *experiment.frame_shape),
    )
    dataset = frames_to_dataset(
        frames,
        grid=experiment.grid,
        units=experiment.units,
        coords={"time": ("cycle", experiment.cycle_times), "cycle": np.arange(num_cycles)},
    )
    dataset.attrs.update(
        {
            "title": f"filtrax analysis ensemble: {experiment.config.name}",
            "Conventions": "CF-1.8",
            "source": "filtrax",
        }
    )
    with warnings.catch_warnings():
        # Consolidated metadata spares every reader a scan of the store, and xarray's warning
        # when it is missing; zarr 3 warns that it is outside its format's specification.
        # The per-cycle region writes change no metadata, so it stays valid.
        warnings.filterwarnings("ignore", "Consolidated metadata", UserWarning)
        dataset.to_zarr(store, mode="w", compute=False, consolidated=True)


def _write_cycle(store: Path, experiment: Experiment, k: int, ensemble: np.ndarray) -> None:
    dataset = frames_to_dataset(ensemble[None], grid=experiment.grid, units=experiment.units)
    # A region write carries only the variables that vary along ``cycle``; the static
    # coordinates were written once by _preallocate.
    dataset = dataset.drop_vars(list(dataset.coords))
    dataset.to_zarr(store, region={"cycle": slice(k, k + 1)}, consolidated=False)


#: Short names in the progress bar; other variables show their own name.
SHORT_NAMES = {
    "temperature": "T",
    "u_component_of_wind": "u",
    "v_component_of_wind": "v",
    "geopotential": "z",
    "surface_pressure": "sp",
    "near_surface_temperature": "T2m",
}


class _ProgressScore:
    """What a run's progress bar shows, per variable (levels pooled, cos-latitude weighted):
    for the free ensemble its RMSE so far; for the filter, once the free ensemble has run, its
    RMSE over the free ensemble's on the same cycles (``T/free=0.31``), a number without
    units that says at a glance where the filter helps; without a free ensemble, its RMSE."""

    def __init__(self, experiment: Experiment):
        grid = experiment.grid
        self.truth = experiment.truth
        names = ["x"] if grid is None else [c.variable for c in grid.channels]
        self.groups = {v: np.asarray([n == v for n in names]) for v in dict.fromkeys(names)}
        self.squared: dict[tuple[str, str], dict[int, float]] = {}

    def postfix(self, name: str, k: int, rmse: np.ndarray) -> dict[str, str]:
        """Record cycle ``k``'s RMSE per channel (as metrics.nc scores it) of member
        ``name`` and return the bar's scores."""
        if self.truth is None:
            return {}
        per_channel = rmse**2
        shown = {}
        for variable, mask in self.groups.items():
            errors = self.squared.setdefault((name, variable), {})
            errors[k] = float(np.mean(per_channel[mask]))
            free = self.squared.get(("baseline", variable), {})
            label = SHORT_NAMES.get(variable, variable)
            if name != "baseline" and free and all(c in free for c in errors):
                ratio = np.sqrt(sum(errors.values()) / sum(free[c] for c in errors))
                shown[f"{label}/free"] = f"{ratio:.2f}"
            else:
                shown[label] = f"{np.sqrt(np.mean(list(errors.values()))):.3g}"
        return shown


def _empty_history(experiment: Experiment, members: int) -> dict[str, np.ndarray]:
    """A member's NaN-filled records: per-cycle diagnostics, observation-space statistics
    and scores, each with the cycle axis first (what its checkpoint stores)."""
    num_cycles = len(experiment.cycle_times)
    history = {k: np.full(num_cycles, np.nan) for k in HISTORY_FIELDS}
    history.update(
        observation_space.empty_history(num_cycles, experiment.observation_model.num_observations)
    )
    history.update(scoring.empty_scores(num_cycles, scoring.num_channels(experiment), members))
    return history


def _run_member(
    name: str,
    filter_: AbstractFilter,
    experiment: Experiment,
    run_dir: Path,
    digest: str,
    progress: _ProgressScore,
    *,
    resume: bool,
    quiet: bool,
) -> float:
    """Run ``name``'s remaining cycles; returns the seconds of the first cycle it ran here
    (compilation included; NaN when none was left)."""
    store = run_dir / f"{name}.zarr"
    checkpoint = run_dir / "checkpoints" / f"{name}.npz"
    num_cycles = len(experiment.cycle_times)
    root = jax.random.fold_in(jax.random.key(experiment.config.seed), RUN_STREAMS[name])
    state = filter_.init(experiment.initial_particles)
    history = _empty_history(experiment, state.log_weights.shape[0])
    if resume and checkpoint.exists():
        state, loaded = _load_checkpoint(checkpoint, state, digest)
        history.update({k: v for k, v in loaded.items() if v.shape == history[k].shape})
        if not all(k in loaded for k in scoring.SCORE_FIELDS):
            # Written before the scores were kept: score its cycles once, and keep them.
            scoring.score_store(experiment, store, history, int(state.cycle))
            _save_checkpoint(checkpoint, state, history, digest)
        logger.info("%s: resuming at cycle %d of %d", name, int(state.cycle), num_cycles)
    diagnose = experiment.config.run.observation_diagnostics
    recorder = observation_space.Recorder(experiment, filter_, name) if diagnose else None
    if recorder is not None and int(state.cycle) == 0:
        recorder.start(history, state)
    if is_main_process() and (not store.exists() or not (resume and checkpoint.exists())):
        _preallocate(store, experiment, state.log_weights.shape[0])
    start = int(state.cycle)
    bar = tqdm(
        total=num_cycles,
        initial=start,
        desc=name,
        disable=quiet,
        unit="cycle",
        dynamic_ncols=True,
    )

    def record(chunk) -> None:
        """Write the chunk's cycles, then checkpoint: a killed run resumes after them."""
        ensembles = to_host(chunk.analysis)
        for i, ensemble in enumerate(ensembles):
            k = chunk.first_cycle + i
            for field in HISTORY_FIELDS[:-1]:
                history[field][k] = float(np.asarray(getattr(chunk.diagnostics, field))[i])
            history["seconds"][k] = chunk.seconds / len(ensembles)
            if is_main_process():
                _write_cycle(store, experiment, k, ensemble)
            scoring.score_cycle(experiment, k, ensemble, history)
            postfix = {}
            if name != "baseline":  # a free ensemble neither weighs nor selects
                postfix = {"ESS": f"{history['ess'][k]:.1f}", "alpha": f"{history['alpha'][k]:.2g}"}
            postfix.update(progress.postfix(name, k, history["score_rmse"][k]))
            bar.set_postfix(postfix, refresh=False)
            bar.update(1)
        if recorder is not None:  # the runner's chunks are one cycle each
            recorder.record(history, chunk.first_cycle + len(ensembles) - 1, chunk.final_state)
        _save_checkpoint(checkpoint, chunk.final_state, history, digest)

    if start < num_cycles:
        assimilate(
            filter_,
            state.particles,
            experiment.observations[start:],
            experiment.filter_observation,
            key=root,
            initial_state=state,
            save=SaveAt(moments=False, ensemble=True),
            chunk_cycles=1,
            callback=record,
        )
    bar.close()
    return float(history["seconds"][start]) if start < num_cycles else float("nan")


STARTUP_DESCRIPTIONS = {
    "seconds_build": "seconds to read the inputs and load the emulator (this invocation)",
    "seconds_first_cycle": "seconds of the first cycle this invocation ran, compiling included",
    "seconds_compiling": "the first cycle's excess over the median later one: its compiling",
    "seconds_to_first_cycle": "seconds from this invocation's start to its first cycle's end",
}


def _startup_times(build: float, first_cycle: dict[str, float], metrics: xr.Dataset) -> dict:
    """What this invocation waited for: the build (inputs and emulator), then each member's
    first cycle here (``first_cycle``, in the order they ran), which carries its compilation
    (the excess over the member's median later cycle estimates it)."""
    members = [str(m) for m in metrics.ensemble.values]
    first = np.array([first_cycle.get(m, np.nan) for m in members])
    later = metrics.seconds.values[:, 1:]
    warm = np.nanmedian(later, axis=1) if later.shape[1] else np.full(len(members), np.nan)
    ran = [seconds for seconds in first_cycle.values() if np.isfinite(seconds)]
    values = {
        "seconds_build": ((), build),
        "seconds_first_cycle": (("ensemble",), first),
        "seconds_compiling": (("ensemble",), first - warm),
        "seconds_to_first_cycle": ((), build + (ran[0] if ran else np.nan)),
    }
    return {
        name: (dims, value, {"long_name": STARTUP_DESCRIPTIONS[name]})
        for name, (dims, value) in values.items()
    }


def _channel_coords(experiment: Experiment) -> dict:
    if experiment.grid is None:
        return {
            "channel": ("channel", ["x"]),
            "variable": ("channel", ["x"]),
            "units": ("channel", [experiment.units[0]]),
            "level": ("channel", [np.nan]),
        }
    labels = [c.label() for c in experiment.grid.channels]
    return {
        "channel": ("channel", labels),
        "variable": ("channel", [c.variable for c in experiment.grid.channels]),
        "units": ("channel", list(experiment.units)),
        "level": (
            "channel",
            [np.nan if c.level is None else c.level for c in experiment.grid.channels],
        ),
    }


DESCRIPTIONS = {
    "rmse": "RMSE of the ensemble mean against the truth, cos-latitude weighted",
    "rmse_unweighted": "RMSE of the ensemble mean, unweighted lat-lon mean (as the authors)",
    "spread": "sqrt of the mean unbiased ensemble variance, cos-latitude weighted",
    "spread_unweighted": "sqrt of the mean unbiased ensemble variance, unweighted",
    "crps": "fair CRPS, cos-latitude weighted",
    "ess": "effective sample size before resampling",
    "alpha": "tempering exponent of the weights",
    "inflation": "multiplicative inflation factor of the forecast ensemble",
    "log_evidence_increment": "log p(y_k | y_{1:k-1}) estimate",
    "move_gain": "share of the innovation the guided move absorbed (Kalman update after it)",
    "forward_calls": "denoiser forward evaluations in the cycle",
    "backward_calls": "denoiser vector-Jacobian products in the cycle",
    "seconds": "wall-clock seconds of the cycle (the first includes compilation)",
}


def _member_history(run_dir: Path, method: str) -> dict[str, np.ndarray]:
    """A finished member's records, from its checkpoint. Its scores are there: the run
    scored every cycle, and a resume scored the cycles of a checkpoint from before the
    scores were kept (:func:`_run_member`)."""
    with np.load(run_dir / "checkpoints" / f"{method}.npz", allow_pickle=False) as data:
        return _checkpoint_history(data)


def compute_metrics(experiment: Experiment, run_dir: Path) -> xr.Dataset:
    """Per-cycle scores and diagnostics of every recorded ensemble (``ensemble`` axis:
    analysis, baseline), from the records their checkpoints keep."""
    methods = [m for m in ("analysis", "baseline") if (run_dir / f"{m}.zarr").exists()]
    histories = [_member_history(run_dir, method) for method in methods]
    coords = {
        "ensemble": ("ensemble", methods),
        "cycle": np.arange(len(experiment.cycle_times)),
        "time": ("cycle", experiment.cycle_times),
    }
    coords.update(_channel_coords(experiment))
    data_vars = scoring.channel_data_vars(experiment, histories, DESCRIPTIONS)
    for k in HISTORY_FIELDS:
        values = np.stack([h[k] for h in histories])
        data_vars[k] = (("ensemble", "cycle"), values, {"long_name": DESCRIPTIONS[k]})
    data_vars.update(scoring.rank_data_vars(histories))
    dataset = xr.Dataset(data_vars, coords=coords)
    records = [{k: h[k] for k in observation_space.FIELDS if k in h} for h in histories]
    if experiment.config.run.observation_diagnostics and all(
        len(r) == len(observation_space.FIELDS) for r in records
    ):
        parts = observation_space.statistics(experiment, records)
        dataset = dataset.assign_coords(parts["coords"]).assign(parts["data_vars"])
    dataset.attrs.update(
        {"title": f"filtrax metrics: {experiment.config.name}", "Conventions": "CF-1.8"}
    )
    return dataset


def _phase_profile(experiment: Experiment, members, metrics: xr.Dataset) -> dict:
    """``seconds_<phase>`` per ensemble (see :mod:`filtrax.profiling`), on the first cycle."""
    observed = np.flatnonzero(np.isfinite(experiment.observations).any(axis=1))
    k = int(observed[0]) if observed.size else 0
    y = jnp.asarray(experiment.observations[k])
    profiles = {phase: [] for phase in PHASES}
    for name, filter_ in members:
        if jax.process_count() > 1 or not experiment.config.run.profile:
            # Profiling runs on process 0 alone, so it cannot run sharded programs that
            # span the other hosts: a multi-host run records no phase split, nor does a
            # run that asked for none (run.profile = false).
            for phase in PHASES:
                profiles[phase].append(np.nan)
            continue
        state = filter_.init(experiment.initial_particles)
        key = jax.random.fold_in(jax.random.key(experiment.config.seed), RUN_STREAMS[name])
        # A budget of one second per phase: gridded cycles take seconds, and three timed
        # calls of each phase would cost the run several extra cycles.
        seconds = phase_seconds(
            filter_, state, y, experiment.filter_observation, key, budget=PROFILE_BUDGET_SECONDS
        )
        for phase in PHASES:
            profiles[phase].append(seconds[phase])
    order = [name for name, _ in members]
    positions = [order.index(str(name)) for name in metrics["ensemble"].values]
    return {
        f"seconds_{phase}": (
            ("ensemble",),
            np.asarray(values)[positions],
            {"long_name": f"seconds per cycle in phase '{phase}' (filtrax.profiling)"},
        )
        for phase, values in profiles.items()
    }


def _write_inputs(experiment: Experiment, run_dir: Path) -> None:
    observations = xr.Dataset(
        {
            "y": (
                ("cycle", "obs"),
                experiment.observations,
                {"long_name": "observations, NaN = not observed"},
            )
        },
        coords={
            "cycle": np.arange(len(experiment.cycle_times)),
            "time": ("cycle", experiment.cycle_times),
            "label": ("obs", list(experiment.observation_labels)),
            "noise_variance": ("obs", np.asarray(experiment.observation_model.noise_variance)),
        },
    )
    atomic_netcdf(observations, run_dir / "observations.nc")
    if experiment.truth is not None:
        truth = frames_to_dataset(
            experiment.truth,
            grid=experiment.grid,
            units=experiment.units,
            leading_dims=("cycle",),
            coords={"time": ("cycle", experiment.cycle_times)},
        )
        atomic_netcdf(truth, run_dir / "truth.nc")


def _check_resumable(run_dir: Path, digest: str) -> None:
    config_path = run_dir / "config.toml"
    if not config_path.exists():
        raise RunDirectoryError(f"--resume: {run_dir} holds no run (no config.toml)")
    try:
        previous = config_from_dict(tomllib.loads(config_path.read_text(encoding="utf-8")))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, ConfigError) as error:
        raise RunDirectoryError(
            f"--resume: {config_path} is unreadable ({error}); it records the run's config: "
            f"restore it, or start a new --out directory"
        ) from None
    if config_digest(previous) != digest:
        raise RunDirectoryError(
            f"--resume: the config differs from the one in {config_path}; resume with the "
            f"same config and overrides, or start a new --out directory"
        )


def _check_same_inputs(experiment: Experiment, run_dir: Path) -> None:
    """On resume, the observations (and truth) must be those the finished cycles used: an
    observation file edited since would mix two sets of observations in one run."""
    for name, values in (("observations", experiment.observations), ("truth", experiment.truth)):
        path = run_dir / f"{name}.nc"
        if values is None or not path.exists():
            continue
        with xr.open_dataset(path) as stored:
            if name == "observations":
                previous = stored["y"].values
            else:
                previous = dataset_to_frames(stored.load(), experiment.grid)
        if previous.shape != np.shape(values) or not np.array_equal(
            previous, np.asarray(values, previous.dtype), equal_nan=True
        ):
            source = {"observations": "observations.path", "truth": "truth.path"}[name]
            raise RunDirectoryError(
                f"--resume: the {name} differ from those this run used ({path}); was "
                f"{source} edited since? Restore it, or start a new --out directory"
            )


def run_experiment(
    config: ExperimentConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    quiet: bool = False,
    report: bool = True,
) -> Path:
    """Run ``config`` into ``run_dir`` (see the module docstring); returns the directory.

    ``resume`` continues the run there; ``overwrite`` replaces it (its own files only; see
    :mod:`.run_directory` for what a run may do to its directory)."""
    if config.parallel.distributed:
        initialize_distributed()
    run_dir = Path(run_dir)
    digest = config_digest(config)
    _check_directory(run_dir, config, digest, resume=resume, overwrite=overwrite)
    say = _Phases(quiet or not is_main_process())
    ignored = config.filter.keys_without_effect()
    if ignored:
        settings = ", ".join(f"filter.{k} = {display(v)}" for k, v in ignored.items())
        say(f"filter.method = {config.filter.method!r} does not read {settings}: ignored")
    if resume and _finished(run_dir, digest, report):
        # Nothing to run or rewrite: skip the build (seconds of dinosaur and emulator set-up).
        say("the run was already complete, and its metrics and report are up to date")
        return run_dir
    # Build (and so read every input file) before touching the directory: a config that
    # fails leaves nothing behind that a second attempt would take for a run.
    say("building the experiment: reading its inputs, loading the emulator")
    tic = time.perf_counter()
    experiment = build_experiment(config)
    build_seconds, first_cycle = time.perf_counter() - tic, {}
    main = is_main_process()
    if main:
        if not resume:
            run_directory.begin(run_dir, config)
        if resume and (run_dir / "observations.nc").exists():
            _check_same_inputs(experiment, run_dir)
        else:
            _write_inputs(experiment, run_dir)
        (run_dir / "checkpoints").mkdir(exist_ok=True)
    members = [("analysis", experiment.filter)]
    if experiment.baseline is not None:
        members.append(("baseline", experiment.baseline))
    # The free ensemble runs first, so that the filter's progress bar can show its ratio to
    # it; each member has its own key stream (RUN_STREAMS), so the order changes no number.
    progress = _ProgressScore(experiment)
    for name, filter_ in members[::-1]:
        say(f"{name}: the first cycle compiles the cycle step, later ones reuse it")
        first_cycle[name] = _run_member(
            name,
            filter_,
            experiment,
            run_dir,
            digest,
            progress,
            resume=resume,
            quiet=quiet or not main,
        )
    if not main:
        return run_dir
    if not any(np.isfinite(list(first_cycle.values()))) and _outputs_current(run_dir, report):
        say("the run was already complete, and its metrics and report are up to date")
        return run_dir
    _write_outputs(experiment, run_dir, members, (build_seconds, first_cycle), say, report)
    return run_dir


def _write_outputs(
    experiment: Experiment,
    run_dir: Path,
    members,
    times: tuple[float, dict[str, float]],
    say,
    report: bool,
) -> None:
    """metrics.nc (with the start-up ``times`` and the phase profile), the netCDF copies of
    the ensembles when asked for, and the report."""
    say("writing metrics.nc from the scores each cycle recorded")
    metrics = compute_metrics(experiment, run_dir)
    metrics = metrics.assign(_startup_times(*times, metrics))
    if experiment.config.run.profile:
        say("timing each phase of one cycle on its own (run.profile = true)")
    metrics = metrics.assign(_phase_profile(experiment, members, metrics))
    atomic_netcdf(metrics, run_dir / "metrics.nc")
    if experiment.config.run.output_format == "netcdf":
        say("writing the ensembles as netCDF (run.output_format = 'netcdf')")
        for name, _ in members:
            xr.open_zarr(run_dir / f"{name}.zarr", consolidated=False).to_netcdf(
                run_dir / f"{name}.nc"
            )
    if report:
        from ..report import write_report

        say("writing the report and its figures")
        write_report(run_dir)


def _check_directory(run_dir: Path, config, digest: str, *, resume: bool, overwrite: bool):
    """Refuse a run directory this run may not use, before anything is built or written."""
    if resume and overwrite:
        raise RunDirectoryError("--resume and --overwrite exclude each other: pick one")
    if resume:
        _check_resumable(run_dir, digest)
        run_directory.check_inputs(run_dir, config)
    else:
        run_directory.check_fresh(run_dir, overwrite=overwrite)


def _finished(run_dir: Path, digest: str, report: bool) -> bool:
    """Whether every ensemble ``metrics.nc`` scored has a checkpoint of this config at its
    last cycle, and the outputs are current (:func:`_outputs_current`) and newer than the
    run's copies of its inputs. It reads file headers only: a finished run builds nothing."""
    if not _outputs_current(run_dir, report):
        return False
    # The run's copies of its inputs, edited since it was scored: the full path compares them.
    written = (run_dir / "metrics.nc").stat().st_mtime
    copies = [run_dir / f"{name}.nc" for name in ("observations", "truth")]
    if any(p.exists() and p.stat().st_mtime > written for p in copies):
        return False
    try:
        with xr.open_dataset(run_dir / "metrics.nc") as metrics:
            scored = {str(name) for name in metrics["ensemble"].values}
        for name in scored:
            with np.load(run_dir / "checkpoints" / f"{name}.npz", allow_pickle=False) as data:
                if bytes(data["config_sha256"]).decode() != digest:
                    return False
                if int(data["cycle"]) != data["history_seconds"].shape[0]:
                    return False
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return False  # the full resume path reports what is wrong
    return bool(scored)


def _outputs_current(run_dir: Path, report: bool) -> bool:
    """Whether ``metrics.nc`` (and the report, when asked for) were written after the last
    checkpoint and ``metrics.nc`` reads: then a resume with nothing left has nothing to do."""
    outputs = [run_dir / "metrics.nc", *([run_dir / "report.md"] if report else [])]
    checkpoints = list((run_dir / "checkpoints").glob("*.npz"))
    if not checkpoints or not all(p.exists() for p in outputs):
        return False
    newest = max(p.stat().st_mtime for p in checkpoints)
    if min(p.stat().st_mtime for p in outputs) < newest:
        return False
    try:
        with xr.open_dataset(run_dir / "metrics.nc") as metrics:
            return "rmse" in metrics or "ess" in metrics
    except (OSError, ValueError):
        return False


@dataclasses.dataclass(frozen=True)
class _Phases:
    """One line on stderr as each long phase of a run starts (none when ``quiet``)."""

    quiet: bool

    def __call__(self, message: str) -> None:
        if not self.quiet:
            tqdm.write(f"filtrax: {message}", file=sys.stderr)
