r"""Train, validate and card a gridded atmosphere emulator on Held–Suarez data.

**Data.** Two zarr stores written by ``filtrax heldsuarez-data``: the training run, and a
held-out run started from another initial state (another seed), which never enters training.
Channels are stacked as in :func:`filtrax.io.heldsuarez_store.stack_channels`.

**Statistics** (GenCast's normalisation files): per channel, the mean and standard deviation
of the states and the standard deviation of 12-hour differences, over the training store.

**Loss** (:mod:`filtrax.training.engine`): with :math:`z = (x^{k+1} - x^k)/s_\Delta`,

.. math::
    \mathcal L = \mathbb E\, \frac{1}{C}\sum_c \lambda_c(\sigma)\,\overline{w_\text{lat}\,
        (D_\theta(z + \sigma\epsilon; \sigma, c)_c - z_c)^2},

where :math:`w_\text{lat} \propto \cos\phi` (mean 1) weights grid cells by area, as GenCast's
loss does, and :math:`\lambda_c(\sigma) = (\sigma^2 + \sigma_{d,c}^2)/(\sigma\sigma_{d,c})^2`
with the per-channel :math:`\sigma_\text{data}` of ``network.sigma_data`` (GenCast:
:math:`\sigma_d = 1` for every channel).

**Conditioning noise** (``training.condition_noise`` :math:`= \tau`, off by default as in
GenCast). The two conditioning frames are replaced by :math:`\tilde x^{j} = x^{j} +
\tau s_\Delta \eta_j` and the target by :math:`z = (x^{k+1} - \tilde x^k)/s_\Delta`, the
step from the noisy state to the *clean* next state. An emulator run autoregressively
conditions on its own samples, which carry the spatially white noise of its previous steps;
trained on clean frames only, the network passes that noise on and the rollout gains energy
step after step (``benchmarks/emulator_dynamics.py``). With :math:`\tau > 0` it learns to
remove it: the "training noise" that Sanchez-Gonzalez et al. (2020, ICML, "Learning to
simulate complex physics with graph networks") add to a learned simulator's inputs against
the accumulation of its own rollout errors.

**History** (``network.history``): 2 conditions on :math:`(x^{k-1}, x^k)` as GenCast does;
1 puts the (noised) :math:`x^k` in both slots, as the emulator's ``condition`` then does, so
that a two-state network can be fine-tuned to it.

**Fine-tuning** (``training.initialise_from``): the network starts from existing weights of
the same architecture instead of a random draw, and keeps their statistics. Weights without
a noisy-input path may be given one (``network.noisy_path``).

**Noisy-input path fit** (``training.path_fit_samples``): after the optimiser (or instead
of it, with ``training.steps = 0``), the path's stencils are fit by least squares with the
rest of the network fixed (:mod:`filtrax.training.noisy_path`).

**Validation** on the held-out store, for each variable (all its levels, cos-lat weighted,
physical units) and lead: the free ensemble's ensemble-mean RMSE, fair CRPS and spread/skill
:math:`\sqrt{(N+1)/N}\,\text{spread}/\text{RMSE}`, against persistence (RMSE, CRPS of a
point forecast = absolute error) and the zonal climatology of the training run (a Gaussian
per channel and latitude: RMSE, closed-form CRPS).
"""

from __future__ import annotations

import logging
import math
import os
import platform
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from ..diffusion.denoisers import EDMPreconditionedDenoiser
from ..dynamics.heldsuarez import LEVEL_VARIABLES, SURFACE_VARIABLES
from ..emulators.atmosphere import (
    STATISTICS_FIELDS,
    AtmosphereEmulator,
    build_network,
    load_emulator,
    save_emulator,
    sigma_data_of,
    with_noisy_path,
)
from ..emulators.cards import trained_card
from ..emulators.sphere_unet import NoisyInputPath, SphereUNet
from ..experiments.builders import sampler_from_section
from ..grid import Channel, GridSpec
from ..io.heldsuarez_store import stack_channels, write_segment
from ..metrics import crps, gaussian_crps
from .config import AtmosphereTrainingConfig
from .engine import (
    card_text,
    dataclass_dict,
    forecast_ensembles,
    loss_weight,
    noise_level_options,
    optimise,
    sample_noise_levels,
)
from .noisy_path import fit_noisy_path

logger = logging.getLogger(__name__)
INIT_STREAM, LOOP_STREAM, SCORE_STREAM, PATH_STREAM, PATH_FIT_STREAM = 3, 4, 5, 6, 7


def open_store(path: str | Path) -> xr.Dataset:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"data store {path} not found; write it with 'filtrax heldsuarez-data --out {path}'"
        )
    return xr.open_zarr(path, consolidated=False)


def grid_of(ds: xr.Dataset) -> GridSpec:
    """The grid and channel order of a Held–Suarez store."""
    levels = [float(v) for v in ds["level"].values]
    channels = [Channel(v, level) for v in LEVEL_VARIABLES for level in levels]
    channels += [Channel(v) for v in SURFACE_VARIABLES]
    return GridSpec(
        tuple(float(v) for v in ds["lat"].values),
        tuple(float(v) for v in ds["lon"].values),
        tuple(channels),
        level_name="sigma",
    )


def channel_statistics(data: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel ``mean``, ``std`` and ``diff_std`` of ``(time, channel, lat, lon)``."""
    data = np.asarray(data, np.float64)
    return {
        "mean": data.mean(axis=(0, 2, 3)).astype(np.float32),
        "std": data.std(axis=(0, 2, 3)).astype(np.float32),
        "diff_std": np.diff(data, axis=0).std(axis=(0, 2, 3)).astype(np.float32),
    }


def denoising_loss(network, batch, key, stats, area, opt: dict) -> jax.Array:
    """σ-weighted, area-weighted EDM loss on ``(x^{k-1}, x^k, x^{k+1})`` batches."""
    previous, current, following = batch
    column = (slice(None), slice(None), None, None)
    mean, std, diff_std = (stats[k][None][column] for k in ("mean", "std", "diff_std"))
    u_key, noise_key = jax.random.split(key)
    if opt["condition_noise"] > 0:  # static: the default program draws nothing extra
        # A stream of its own, so that the default (τ = 0) draws stay as they were.
        eta = jax.random.normal(jax.random.fold_in(key, 7), (2, *current.shape), current.dtype)
        previous = previous + opt["condition_noise"] * diff_std * eta[0]
        current = current + opt["condition_noise"] * diff_std * eta[1]
    if opt["history"] == 1:  # the emulator's condition() with history 1: x^k in both slots
        previous = current
    cond = (jnp.stack([previous, current], axis=1) - mean[:, None]) / std[:, None]
    z = (following - current) / diff_std
    sigma = sample_noise_levels(jax.random.uniform(u_key, (z.shape[0],)), opt)
    noisy = z + sigma[:, None, None, None] * jax.random.normal(noise_key, z.shape)
    denoiser = EDMPreconditionedDenoiser(network, sigma_data=opt["sigma_data"])
    denoised = jax.vmap(denoiser)(noisy, sigma, cond)
    error = jnp.mean(area[None, None] * (denoised - z) ** 2, axis=(2, 3))  # (batch, channel)
    sigma_data = denoiser.sigma_data_like(z[0]).reshape(1, -1)  # (1, channel) or (1, 1)
    return jnp.mean(loss_weight(sigma[:, None], sigma_data) * error)


def random_network(config: AtmosphereTrainingConfig, grid: GridSpec) -> SphereUNet | NoisyInputPath:
    """The random network of the config's sizes that a training without
    ``training.initialise_from`` starts from (drawn from the config's seed)."""
    key = jax.random.fold_in(jax.random.key(config.seed), INIT_STREAM)
    return build_network(dataclass_dict(config.network), grid, key)


def train_network(
    config: AtmosphereTrainingConfig,
    data: np.ndarray,
    stats,
    grid: GridSpec,
    sigma_data: float | tuple[float, ...],
    initial: SphereUNet | NoisyInputPath | None = None,
):
    """Train from ``initial`` (fine-tuning) or from a random network of the config's sizes."""
    t = config.training
    root = jax.random.key(config.seed)
    network = random_network(config, grid) if initial is None else initial
    states = jnp.asarray(data, jnp.float32)
    stats_j = {k: jnp.asarray(v, jnp.float32) for k, v in stats.items()}
    area = jnp.asarray(grid.area_weights(), jnp.float32)
    opt = noise_level_options(t)
    opt["sigma_data"] = sigma_data
    opt["condition_noise"] = t.condition_noise
    opt["history"] = config.network.history
    length = states.shape[0]

    def loss_fn(network, key, states):
        batch_key, loss_key = jax.random.split(key)
        index = jax.random.randint(batch_key, (t.batch_size,), 1, length - 1)
        batch = (states[index - 1], states[index], states[index + 1])
        return denoising_loss(network, batch, loss_key, stats_j, area, opt)

    loop_key = jax.random.fold_in(root, LOOP_STREAM)
    return optimise(config, network, loss_fn, loop_key, Path(config.output), states, scan=False)


# How far the training data's statistics may be from those of the weights being fine-tuned,
# in units of the weights' per-channel std (mean) or as a ratio (std, diff_std). Two runs of
# the same generator command on different machines diverge chaotically and give two samples
# of one climate: 5 years differed by up to 0.03 std in the mean and 3 % in the std.
STATISTICS_TOLERANCE = 0.1


def initial_network(
    path: str, config: AtmosphereTrainingConfig, grid: GridSpec, stats, key
) -> tuple[SphereUNet | NoisyInputPath, dict[str, np.ndarray]]:
    """The network of the emulator at ``path`` (sha256-checked) and its normalisation
    statistics, for fine-tuning.

    Its architecture and grid must be those of ``config`` and the training data, except
    that weights without a noisy-input path may be given one (``network.noisy_path``; drawn
    from ``key``, with zero stencils, so the network starts as the weights' exactly). The
    fine-tuned network keeps the statistics it was trained with (its inputs and outputs are
    normalised by them); the training data's own ``stats`` must agree with them within
    :data:`STATISTICS_TOLERANCE`, or the data is of another climate than the weights'.
    """
    if not Path(path).exists():
        raise FileNotFoundError(f"training.initialise_from = {path!r}: file not found")
    card = trained_card(path)
    start = load_emulator(card, path)
    field = "training.initialise_from"
    difference = start.grid.difference(grid)
    if difference:
        raise ValueError(
            f"{field} = {path!r}: its grid differs from {config.data.train}'s: {difference}"
        )
    card_network = card["network"]
    for name in ("widths", "embed"):
        wanted = getattr(config.network, name)
        wanted = list(wanted) if isinstance(wanted, tuple) else wanted  # as the card has it
        if wanted != card_network[name]:
            raise ValueError(
                f"{field} = {path!r} has network.{name} = {card_network[name]!r}; the config "
                f"asks for {wanted!r}"
            )
    start_terms, wanted_terms = card_network.get("noisy_path", 0), config.network.noisy_path
    if start_terms not in (0, wanted_terms):
        raise ValueError(
            f"{field} = {path!r} has network.noisy_path = {start_terms!r}; the config asks for "
            f"{wanted_terms!r} (weights without a path can be given one, not the reverse)"
        )
    network = start.denoiser.network
    if not isinstance(network, SphereUNet | NoisyInputPath):
        raise ValueError(
            f"{field} = {path!r} holds a {type(network).__name__}; fine-tuning starts from a "
            f"SphereUNet, with or without a noisy-input path"
        )
    if start_terms == 0:
        network = with_noisy_path(
            network, wanted_terms, grid, key, size=config.network.noisy_path_size
        )
    start_stats = {k: np.asarray(getattr(start, k), np.float32) for k in STATISTICS_FIELDS}
    departures = {
        "mean": np.abs(stats["mean"] - start_stats["mean"]) / start_stats["std"],
        "std": np.abs(np.log(stats["std"] / start_stats["std"])),
        "diff_std": np.abs(np.log(stats["diff_std"] / start_stats["diff_std"])),
    }
    for name, departure in departures.items():
        worst = int(np.argmax(departure))
        if departure[worst] > STATISTICS_TOLERANCE:
            raise ValueError(
                f"{field} = {path!r} was trained on data with other statistics than "
                f"{config.data.train}: {name} of {grid.channels[worst].label()} is "
                f"{stats[name][worst]:.6g} there and {start_stats[name][worst]:.6g} in the "
                f"weights (tolerance {STATISTICS_TOLERANCE} of the std, or as a log-ratio)"
            )
    return network, start_stats


def _variable_slices(grid: GridSpec) -> dict[str, list[int]]:
    return {v: [i for i, c in enumerate(grid.channels) if c.variable == v] for v in grid.variables}


def validate(
    config: AtmosphereTrainingConfig,
    emulator: AtmosphereEmulator,
    train: np.ndarray,
    held_out: np.ndarray,
) -> dict:
    """Card scores per variable and lead on ``held_out`` ``(time, channel, lat, lon)``."""
    v = config.validation
    grid = emulator.grid
    sampler = sampler_from_section(config.sampler)
    max_lead = max(v.leads)
    length = held_out.shape[0]
    if length < max_lead + 3:
        raise ValueError(
            f"the held-out store has {length} states; leads up to {max_lead} need at least "
            f"{max_lead + 3}"
        )
    # Initial times spread evenly over the held-out period (deterministic).
    start = np.linspace(1, length - max_lead - 1, v.initial_states).round().astype(int)
    initial = np.stack([held_out[start - 1], held_out[start]], axis=1)
    key = jax.random.fold_in(jax.random.key(config.seed), SCORE_STREAM)
    tic = time.perf_counter()
    frames = forecast_ensembles(emulator, sampler, initial, v.members, max_lead, key)
    seconds = time.perf_counter() - tic
    area = grid.area_weights()
    zonal_mean = train.mean(axis=(0, 3))[:, :, None]  # (channel, lat, 1)
    zonal_std = train.std(axis=(0, 3))[:, :, None]
    n = v.members
    scores: dict = {
        "members": n,
        "initial_states": v.initial_states,
        "leads_hours": [lead * emulator.time_step_hours for lead in v.leads],
    }

    def weighted(values):  # mean over initial states, channels of a variable, lat, lon
        return float(np.mean(values * area))

    for variable, channels in _variable_slices(grid).items():
        rows = {k: [] for k in ("rmse", "spread", "ratio", "crps", "rmse_persistence")}
        rows.update(crps_persistence=[], rmse_climatology=[], crps_climatology=[])
        for lead in v.leads:
            truth = held_out[start + lead][:, channels]  # (M, c, lat, lon)
            ensemble = frames[lead - 1][:, :, channels]  # (M, members, c, lat, lon)
            mean = ensemble.mean(axis=1)
            rmse = math.sqrt(weighted((mean - truth) ** 2))
            spread = math.sqrt(weighted(ensemble.var(axis=1, ddof=1)))
            rows["rmse"].append(rmse)
            rows["spread"].append(spread)
            rows["ratio"].append(math.sqrt((n + 1) / n) * spread / rmse)
            rows["crps"].append(
                float(np.mean([crps(ensemble[m], truth[m], area) for m in range(len(start))]))
            )
            persistence = held_out[start][:, channels]
            rows["rmse_persistence"].append(math.sqrt(weighted((persistence - truth) ** 2)))
            rows["crps_persistence"].append(weighted(np.abs(persistence - truth)))
            clim_mean, clim_std = zonal_mean[channels], zonal_std[channels]
            rows["rmse_climatology"].append(math.sqrt(weighted((clim_mean - truth) ** 2)))
            rows["crps_climatology"].append(weighted(gaussian_crps(clim_mean, clim_std, truth)))
        for name, values in rows.items():
            scores[f"{name}_{variable}"] = [round(x, 6) for x in values]
    scores["forecast_seconds"] = round(seconds, 1)
    return scores


def _checkpoint_step(output: Path) -> int:
    if not (output / "checkpoint.npz").exists():  # training.steps = 0: nothing was optimised
        return 0
    with np.load(output / "checkpoint.npz", allow_pickle=False) as data:
        return int(data["step"])


def _training_data(config: AtmosphereTrainingConfig):
    """The training and held-out stores (on one grid), the grid and their stacked states."""
    train_ds = open_store(config.data.train)
    held_ds = open_store(config.data.validation)
    grid = grid_of(train_ds)
    difference = grid.difference(grid_of(held_ds))
    if difference:
        raise ValueError(
            f"{config.data.train} and {config.data.validation} have different grids: {difference}"
        )
    train = stack_channels(train_ds.load())
    if config.data.max_train_states:
        train = train[: config.data.max_train_states]
    held_out = stack_channels(held_ds.load())
    return train_ds, held_ds, grid, train, held_out


#: The generator's settings a card repeats from the training store's attributes.
_CARD_DATA_ATTRIBUTES = (
    "truth_grid",
    "truth_levels",
    "time_step_minutes",
    "state_grid",
    "seed",
    "spin_up_days",
    "years",
    "source",
)


def _card_data(config, attrs, held_attrs, train, held_out, hours: float) -> dict:
    """The card's ``[data]`` table: where the states came from and how many were used."""
    return {
        "train": str(config.data.train),
        "validation": str(config.data.validation),
        "train_states": int(train.shape[0]),
        "validation_states": int(held_out.shape[0]),
        "time_step_hours": hours,
        **{
            k: (str(v) if not isinstance(v, int | float | str) else v)
            for k, v in attrs.items()
            if k in _CARD_DATA_ATTRIBUTES
        },
        "validation_seed": held_attrs.get("seed"),
    }


def _card_training(config, output: Path, losses: list[float], seconds: float) -> dict:
    """The card's ``[training]`` table: the settings, the losses, the time and the machine."""
    return {
        **dataclass_dict(config.training),
        "steps_completed": _checkpoint_step(output),
        "final_loss": losses[-1] if losses else float("nan"),
        "first_loss": losses[0] if losses else float("nan"),
        "seconds": round(seconds, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__} "
        f"{jax.default_backend()}",
    }


def train_atmosphere(config: AtmosphereTrainingConfig) -> Path:
    """Load data, train (resuming), validate and write ``<name>.npz`` and ``<name>.toml``."""
    output = Path(config.output)
    output.mkdir(parents=True, exist_ok=True)
    train_ds, held_ds, grid, train, held_out = _training_data(config)
    stats = channel_statistics(train)
    hours = float(train_ds.attrs.get("save_hours", 12.0))
    logger.info("data: %s train, %s held out", train.shape, held_out.shape)

    sigma_data = sigma_data_of(config.network.sigma_data, grid)  # checked before training
    initial = None
    if config.training.initialise_from:
        path_key = jax.random.fold_in(jax.random.key(config.seed), PATH_STREAM)
        initial, stats = initial_network(
            config.training.initialise_from, config, grid, stats, path_key
        )
    network, losses, train_seconds = train_network(config, train, stats, grid, sigma_data, initial)
    emulator = AtmosphereEmulator(
        EDMPreconditionedDenoiser(network, sigma_data=sigma_data),
        mean=jnp.asarray(stats["mean"]),
        std=jnp.asarray(stats["std"]),
        diff_std=jnp.asarray(stats["diff_std"]),
        grid=grid,
        time_step_hours=hours,
        name=config.name,
        history=config.network.history,
    )
    if config.training.path_fit_samples:
        tic = time.perf_counter()
        fit_key = jax.random.fold_in(jax.random.key(config.seed), PATH_FIT_STREAM)
        emulator = fit_noisy_path(
            emulator, train, fit_key, samples=config.training.path_fit_samples
        )
        network = emulator.denoiser.network
        train_seconds += time.perf_counter() - tic
    weights = output / f"{config.name}.npz"
    digest = save_emulator(weights, emulator)
    scores = validate(config, emulator, train, held_out)
    num_params = sum(x.size for x in jax.tree_util.tree_leaves(eqx.filter(network, eqx.is_array)))
    card = {
        "name": config.name,
        "description": config.description
        or (
            "GenCast-style diffusion emulator of coarse-grained Held-Suarez states (dinosaur), "
            f"one {hours:g} h step conditioned on "
            + ("two previous states." if config.network.history == 2 else "the current state.")
        ),
        "kind": "learned",
        "family": "atmosphere",
        "license": "Apache-2.0",
        "weights": weights.name,
        "sha256": digest,
        "reference": "filtrax.emulators.atmosphere; trained by 'filtrax train'",
        "data": _card_data(config, train_ds.attrs, held_ds.attrs, train, held_out, hours),
        "grid": {
            "latitudes": list(grid.latitudes),
            "longitudes": list(grid.longitudes),
            "level_name": "sigma",
            "levels": [float(x) for x in train_ds["level"].values],
            "level_variables": list(LEVEL_VARIABLES),
            "surface_variables": list(SURFACE_VARIABLES),
        },
        "statistics": {k: [float(x) for x in v] for k, v in stats.items()},
        "network": {**dataclass_dict(config.network), "parameters": int(num_params)},
        "training": _card_training(config, output, losses, train_seconds),
        "sampler": dataclass_dict(config.sampler),
        "validation": scores,
    }
    d = config.data
    if d.truth_segment_length:
        segment = output / f"{config.name}_truth.nc"
        write_segment(d.validation, d.truth_segment_start, d.truth_segment_length, segment)
        card["truth_segment"] = segment.name
        card["truth_segment_source"] = (
            f"states {d.truth_segment_start}..{d.truth_segment_start + d.truth_segment_length - 1}"
            f" of {d.validation} (filtrax.io.heldsuarez_store.write_segment)"
        )
    path = output / f"{config.name}.toml"
    path.write_text(card_text(card))
    return path
