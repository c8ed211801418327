r"""Train, validate and card a Lorenz-96 slow-variable diffusion emulator.

**Data.** Trajectories of the two-scale system (:mod:`filtrax.dynamics.lorenz96`, DAPPER's
conventions) sampled every :math:`\Delta t`; the validation trajectories are drawn with
another key and never enter training.

**Loss** (GenCast's: Price et al. 2025; Karras et al. 2022). With :math:`z = (X^{k+1} - X^k)/s_z`,
:math:`\sigma = (\sigma_\min^{1/\rho} + u(\sigma_\max^{1/\rho} - \sigma_\min^{1/\rho}))^\rho`,
:math:`u \sim U[0, 1]`, :math:`\sigma \in [0.02, 88]`, :math:`\rho = 7`:

.. math::
    \mathcal L = \mathbb E\, \lambda(\sigma)\,
        \| D_\theta(z + \sigma\epsilon; \sigma, c) - z\|^2 / K,
    \qquad \lambda(\sigma) = (\sigma^2 + 1)/\sigma^2,

minimised with AdamW (warm-up, cosine decay, gradient clipping); the shipped weights are an
exponential moving average of the iterates.

**Validation** (on held-out trajectories, with the sampler of the config):

* one-step fair CRPS of the emulator ensemble against two Gaussian baselines, the
  climatology :math:`\mathcal N(\mu_x, s_x^2)` and a linear-Gaussian AR(1)
  :math:`X^{k+1} - \mu = A(X^k - \mu) + \eta` fitted by least squares to the training data,
  both scored in closed form (Gneiting & Raftery 2007, eq. 21);
* the free ensemble's ensemble-mean RMSE, spread and spread/skill ratio
  :math:`\sqrt{(N+1)/N}\,\text{spread}/\text{RMSE}` (Fortin et al. 2014; 1 for a
  calibrated ensemble of N members) at the configured leads.

Training checkpoints every ``checkpoint_every`` steps (atomic npz, no pickles) and resumes
from the last one.
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

from ..diffusion.denoisers import EDMPreconditionedDenoiser
from ..dynamics.lorenz96 import DEFAULT_DT, setting_model
from ..emulators.lorenz96 import Lorenz96Emulator, build_network, save_emulator
from ..experiments.builders import sampler_from_section
from ..io.lorenz96_files import generate_dataset, write_dataset
from ..metrics import crps, gaussian_crps
from .config import TrainingConfig
from .engine import (
    card_text,
    dataclass_dict,
    forecast_ensembles,
    loss_weight,
    noise_level_options,
    optimise,
    sample_noise_levels,
)

logger = logging.getLogger(__name__)

TRAIN_STREAM, VALIDATION_STREAM, INIT_STREAM, LOOP_STREAM, SCORE_STREAM = 1, 2, 3, 4, 5


def make_datasets(config: TrainingConfig):
    """Training and held-out validation data sets (deterministic in ``config.seed``)."""
    d = config.data
    model = setting_model(d.setting)
    root = jax.random.key(config.seed)
    common = dict(sample_every=d.time_step, spin_up_time=d.spin_up, dt_integration=DEFAULT_DT)
    train = generate_dataset(
        model,
        jax.random.fold_in(root, TRAIN_STREAM),
        num_samples=d.train_samples,
        num_trajectories=d.train_trajectories,
        **common,
    )
    validation = generate_dataset(
        model,
        jax.random.fold_in(root, VALIDATION_STREAM),
        num_samples=d.validation_samples,
        num_trajectories=d.validation_trajectories,
        **common,
    )
    return train, validation


def statistics(X: np.ndarray) -> dict[str, float]:
    """``mean``, ``std`` and ``diff_std`` of trajectories ``(trajectory, time, site)``."""
    X = np.asarray(X, np.float64)
    return {
        "mean": float(X.mean()),
        "std": float(X.std()),
        "diff_std": float(np.diff(X, axis=1).std()),
    }


def denoising_loss(network, batch, key, stats, opt: dict) -> jax.Array:
    """The σ-weighted EDM loss on a batch of ``(X^{k-1}, X^k, X^{k+1})`` triples."""
    previous, current, following = batch
    cond = (jnp.stack([previous, current], axis=1) - stats["mean"]) / stats["std"]
    z = (following - current) / stats["diff_std"]
    u_key, noise_key = jax.random.split(key)
    sigma = sample_noise_levels(jax.random.uniform(u_key, (z.shape[0],)), opt)
    noisy = z + sigma[:, None] * jax.random.normal(noise_key, z.shape)
    denoiser = EDMPreconditionedDenoiser(network, sigma_data=1.0)
    denoised = jax.vmap(denoiser)(noisy, sigma, cond)
    return jnp.mean(loss_weight(sigma) * jnp.mean((denoised - z) ** 2, axis=-1))


def _sample_batch(data: jax.Array, key, batch_size: int):
    trajectories, length, _ = data.shape
    t_key, k_key = jax.random.split(key)
    traj = jax.random.randint(t_key, (batch_size,), 0, trajectories)
    t = jax.random.randint(k_key, (batch_size,), 1, length - 1)
    return data[traj, t - 1], data[traj, t], data[traj, t + 1]


def train_network(config: TrainingConfig, train_data: np.ndarray, stats: dict, output: Path):
    """Run (or resume) the optimisation (:func:`filtrax.training.engine.optimise`)."""
    t = config.training
    root = jax.random.key(config.seed)
    network = build_network(dataclass_dict(config.network), jax.random.fold_in(root, INIT_STREAM))
    data = jnp.asarray(train_data, jnp.float32)
    stats_j = {k: jnp.asarray(v, jnp.float32) for k, v in stats.items()}
    opt = noise_level_options(t)

    def loss_fn(network, key, data):
        batch_key, loss_key = jax.random.split(key)
        batch = _sample_batch(data, batch_key, t.batch_size)
        return denoising_loss(network, batch, loss_key, stats_j, opt)

    loop_key = jax.random.fold_in(root, LOOP_STREAM)
    return optimise(config, network, loss_fn, loop_key, output, data)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def fit_ar1(X: np.ndarray, mean: float):
    """Least squares for :math:`X^{k+1}-\\mu = A(X^k-\\mu)+\\eta`; ``A`` and the residual std."""
    X = np.asarray(X, np.float64) - mean
    inputs = X[:, :-1].reshape(-1, X.shape[-1])
    targets = X[:, 1:].reshape(-1, X.shape[-1])
    coefficients, *_ = np.linalg.lstsq(inputs, targets, rcond=None)
    residual = targets - inputs @ coefficients
    return coefficients.T, residual.std(axis=0)


def validate(
    config: TrainingConfig, emulator: Lorenz96Emulator, train: np.ndarray, held_out: np.ndarray
) -> dict:
    """The card's validation scores on ``held_out`` trajectories ``(trajectory, time, site)``."""
    v = config.validation
    sampler = sampler_from_section(config.sampler)
    max_lead = max(v.leads)
    trajectories, length, _ = held_out.shape
    if length < max_lead + 3:
        raise ValueError(
            f"validation trajectories have {length} states; leads up to {max_lead} need "
            f"at least {max_lead + 3}"
        )
    rng = np.random.default_rng(config.seed)
    which = rng.integers(0, trajectories, v.initial_states)
    start = rng.integers(1, length - max_lead, v.initial_states)
    initial = np.stack([held_out[which, start - 1], held_out[which, start]], axis=1)
    key = jax.random.fold_in(jax.random.key(config.seed), SCORE_STREAM)
    tic = time.perf_counter()
    frames = forecast_ensembles(emulator, sampler, initial, v.members, max_lead, key)
    seconds = time.perf_counter() - tic
    n = v.members
    scores: dict = {"members": n, "initial_states": v.initial_states, "leads": list(v.leads)}
    rmse_l, spread_l, ratio_l, crps_l = [], [], [], []
    for lead in v.leads:
        truth = held_out[which, start + lead]
        ensemble = frames[lead - 1].transpose(1, 0, 2)  # (members, M, K)
        rmse = float(np.sqrt(np.mean((ensemble.mean(0) - truth) ** 2)))
        spread = float(np.sqrt(np.mean(ensemble.var(0, ddof=1))))
        rmse_l.append(rmse)
        spread_l.append(spread)
        ratio_l.append(math.sqrt((n + 1) / n) * spread / rmse)
        crps_l.append(crps(ensemble, truth))
    scores.update(rmse=rmse_l, spread=spread_l, spread_skill_ratio=ratio_l, crps=crps_l)
    # One-step CRPS against the climatology and the fitted AR(1).
    stats = statistics(train)
    truth1 = held_out[which, start + 1]
    current = held_out[which, start]
    coefficients, residual_std = fit_ar1(train, stats["mean"])
    ar_mean = stats["mean"] + (current - stats["mean"]) @ coefficients.T
    scores["one_step_crps"] = crps_l[v.leads.index(1)] if 1 in v.leads else None
    scores["one_step_crps_climatology"] = float(
        gaussian_crps(stats["mean"], stats["std"], truth1).mean()
    )
    scores["one_step_crps_ar1"] = float(gaussian_crps(ar_mean, residual_std, truth1).mean())
    scores["one_step_rmse_persistence"] = float(np.sqrt(np.mean((current - truth1) ** 2)))
    scores["one_step_rmse_ar1"] = float(np.sqrt(np.mean((ar_mean - truth1) ** 2)))
    scores["climatological_std"] = stats["std"]
    scores["forecast_seconds"] = seconds
    return scores


# --------------------------------------------------------------------------------------------
# Card
# --------------------------------------------------------------------------------------------


def train_lorenz96(config: TrainingConfig) -> Path:
    """Generate data, train (resuming), validate and write ``<name>.npz`` and ``<name>.toml``.

    Returns the card path.
    """
    output = Path(config.output)
    output.mkdir(parents=True, exist_ok=True)
    tic = time.perf_counter()
    train_ds, validation_ds = make_datasets(config)
    write_dataset(validation_ds, output / "validation.nc")
    data_seconds = time.perf_counter() - tic
    train = train_ds["X"].values
    held_out = validation_ds["X"].values
    stats = statistics(train)
    logger.info("data: %s train, %s held out (%.1f s)", train.shape, held_out.shape, data_seconds)

    network, losses, train_seconds = train_network(config, train, stats, output)
    emulator = Lorenz96Emulator(
        EDMPreconditionedDenoiser(network, sigma_data=1.0),
        mean=stats["mean"],
        std=stats["std"],
        diff_std=stats["diff_std"],
        time_step=config.data.time_step,
        num_sites=train.shape[-1],
        setting=config.data.setting,
        name=config.name,
    )
    weights = output / f"{config.name}.npz"
    digest = save_emulator(weights, emulator)
    scores = validate(config, emulator, train, held_out)

    model = setting_model(config.data.setting)
    num_params = sum(x.size for x in jax.tree_util.tree_leaves(eqx.filter(network, eqx.is_array)))
    card = {
        "name": config.name,
        "description": config.description
        or (
            f"Diffusion emulator of the slow variables X of two-scale Lorenz-96 "
            f"({config.data.setting}), one step of dt = {config.data.time_step}, conditioned "
            f"on (X^(k-1), X^k)."
        ),
        "kind": "learned",
        "family": "lorenz96",
        "license": "Apache-2.0",
        "weights": weights.name,
        "sha256": digest,
        "reference": "filtrax.emulators.lorenz96; trained by 'filtrax train'",
        "data": {
            "setting": config.data.setting,
            **{k: v for k, v in model.parameters.items()},
            "time_step": config.data.time_step,
            "dt_integration": DEFAULT_DT,
            "spin_up": config.data.spin_up,
            "train_trajectories": config.data.train_trajectories,
            "train_samples": config.data.train_samples,
            "validation_trajectories": config.data.validation_trajectories,
            "validation_samples": config.data.validation_samples,
            "seed": config.seed,
            **{f"statistics_{k}": v for k, v in stats.items()},
        },
        "network": {
            "num_sites": int(train.shape[-1]),
            **dataclass_dict(config.network),
            "parameters": int(num_params),
        },
        "training": {
            **{k: v for k, v in dataclass_dict(config.training).items()},
            "final_loss": losses[-1] if losses else float("nan"),
            "first_loss": losses[0] if losses else float("nan"),
            "seconds": round(train_seconds, 1),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__} "
            f"{jax.default_backend()}",
        },
        "sampler": dataclass_dict(config.sampler),
        "validation": scores,
    }
    path = output / f"{config.name}.toml"
    path.write_text(card_text(card))
    return path
