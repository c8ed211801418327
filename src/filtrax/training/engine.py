r"""The optimisation loop every learned emulator shares: GenCast's loss, AdamW, EMA, resume.

**Noise levels** (GenCast, Price et al. 2025; Karras et al. 2022):
:math:`\sigma = (\sigma_\min^{1/\rho} +
u(\sigma_\max^{1/\rho} - \sigma_\min^{1/\rho}))^\rho`, :math:`u \sim U[0, 1]`, with loss
weight :math:`\lambda(\sigma) = (\sigma^2 + 1)/\sigma^2` (EDM with :math:`\sigma_\text{data}=1`).
With ``training.focus_fraction`` > 0 that fraction of each batch draws its σ from the same
law on :math:`[\sigma_\min, \sigma_\text{focus}]` instead (:func:`sample_noise_levels`):
the small noise levels, where a network must learn to use its noisy input, get more of the
gradient, while the large ones, where it learns the conditional mean, keep theirs.

**Optimiser.** AdamW with linear warm-up and cosine decay to 1 % of the peak, global-norm
clipping, and an exponential moving average of the iterates (the shipped weights).

**Resume.** Steps run in compiled chunks; every ``checkpoint_every`` steps the parameters,
EMA, optimiser state, loss history and cumulative wall-clock seconds go to an atomic npz
(no pickles) tagged with a digest of the config. A killed run resumes to the same weights
it would have reached uninterrupted, because the key of step ``i`` is
``fold_in(loop_key, i)``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from ..experiments.config import toml_value
from ..io.atomic import atomic_savez
from .config import focused_entries

logger = logging.getLogger(__name__)


def noise_levels(u, sigma_min, sigma_max, rho):
    """GenCast's training noise levels for uniforms ``u``."""
    low, high = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (low + u * (high - low)) ** rho


def sample_noise_levels(u, opt: dict):
    r"""Training noise levels for uniforms ``u`` of shape ``(batch,)``: :func:`noise_levels`
    on :math:`[\sigma_\min, \sigma_\max]`, except for the first
    :func:`~filtrax.training.config.focused_entries` entries, mapped onto
    :math:`[\sigma_\min, \sigma_\text{focus}]`. ``opt`` holds ``sigma_min``, ``sigma_max``,
    ``rho`` and optionally ``focus_fraction`` and ``focus_sigma_max`` (static)."""
    sigma = noise_levels(u, opt["sigma_min"], opt["sigma_max"], opt["rho"])
    fraction = opt.get("focus_fraction", 0.0)
    if fraction > 0:  # static: the default program is unchanged
        focused = jnp.arange(u.shape[0]) < focused_entries(fraction, u.shape[0])
        low = noise_levels(u, opt["sigma_min"], opt["focus_sigma_max"], opt["rho"])
        sigma = jnp.where(focused, low, sigma)
    return sigma


def noise_level_options(t) -> dict:
    """What :func:`sample_noise_levels` reads from a ``[training]`` section ``t``."""
    return {
        "sigma_min": t.sigma_min,
        "sigma_max": t.sigma_max,
        "rho": t.rho,
        "focus_fraction": t.focus_fraction,
        "focus_sigma_max": t.focus_sigma_max,
    }


def loss_weight(sigma, sigma_data: float | jax.Array = 1.0):
    r""":math:`\lambda(\sigma) = (\sigma^2 + \sigma_\text{data}^2)/(\sigma\,\sigma_\text{data})^2`,
    EDM's weight (Karras et al. 2022, Table 1), which makes the loss of the raw network output
    unit-scaled at every σ; with :math:`\sigma_\text{data} = 1` it is GenCast's
    :math:`(\sigma^2 + 1)/\sigma^2`. ``sigma`` and ``sigma_data`` broadcast."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def make_optimizer(t) -> optax.GradientTransformation:
    """AdamW with warm-up and cosine decay, after global-norm clipping (``t``: ``[training]``)."""
    warmup = max(t.warmup, 1)
    # optax needs at least one decay step after the warm-up (a one-step run included).
    total = max(t.steps, warmup + 1)
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, t.learning_rate, warmup, total, t.learning_rate * 0.01
    )
    return optax.chain(
        optax.clip_by_global_norm(t.clip_norm),
        optax.adamw(schedule, weight_decay=t.weight_decay),
    )


def dataclass_dict(section) -> dict:
    return {f.name: getattr(section, f.name) for f in dataclasses.fields(section)}


def config_digest(config) -> str:
    """A digest of what determines the weights (not validation, sampler or bookkeeping)."""
    keep = config.to_dict()
    for name in ("validation", "sampler", "description"):
        keep.pop(name, None)
    keep["training"].pop("checkpoint_every")
    keep["training"].pop("stop_after", None)
    keep["training"].pop("path_fit_samples", None)  # a fit after the optimiser, not in it
    # Options that are off leave the digest as it was before they existed, so that earlier
    # runs still resume.
    if not keep["training"].get("focus_fraction"):
        keep["training"].pop("focus_fraction", None)
        keep["training"].pop("focus_sigma_max", None)
    if not keep.get("network", {}).get("noisy_path"):
        keep.get("network", {}).pop("noisy_path", None)
        keep.get("network", {}).pop("noisy_path_size", None)
    for name in ("truth_segment_start", "truth_segment_length"):  # outputs, not inputs
        keep["data"].pop(name, None)
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


def save_checkpoint(path: Path, train_state, step: int, losses, digest: str, seconds: float):
    leaves = jax.tree_util.tree_leaves(train_state)
    arrays = {f"leaf_{i:04d}": np.asarray(leaf) for i, leaf in enumerate(leaves)}
    arrays["step"] = np.asarray(step)
    arrays["seconds"] = np.asarray(seconds, np.float64)
    arrays["losses"] = np.asarray(losses, np.float64)
    arrays["digest"] = np.asarray(digest)
    atomic_savez(path, arrays)


def load_checkpoint(path: Path, template, digest: str):
    with np.load(path, allow_pickle=False) as data:
        if str(data["digest"]) != digest:
            raise ValueError(
                f"checkpoint {path} belongs to another training config (digest "
                f"{data['digest']} != {digest}); delete it or use another output folder"
            )
        leaves, treedef = jax.tree_util.tree_flatten(template)
        restored = [
            jnp.asarray(data[f"leaf_{i:04d}"], dtype=leaf.dtype) for i, leaf in enumerate(leaves)
        ]
        return (
            jax.tree_util.tree_unflatten(treedef, restored),
            int(data["step"]),
            [float(v) for v in data["losses"]],
            float(data["seconds"]),
        )


def optimise(
    config,
    network: eqx.Module,
    loss_fn: Callable[[eqx.Module, jax.Array, object], jax.Array],
    loop_key: jax.Array,
    output: Path,
    data=None,
    *,
    scan: bool = True,
):
    """Minimise ``loss_fn(network, key_of_step, data)`` with ``config.training`` (resuming).

    ``data`` (a pytree of arrays) is passed to the compiled chunk as an argument rather than
    closed over: a closed-over array becomes a constant of the compiled program, which for a
    training set of 100 MB makes compilation and every step far slower.

    Returns the EMA network, the loss history (one mean per chunk) and the optimisation's
    wall-clock seconds summed over every session that contributed to it. With
    ``training.stop_after`` the run ends at that step (or at the checkpoint's step, if later).
    """
    t = config.training
    params, static = eqx.partition(network, eqx.is_array)
    optimizer = make_optimizer(t)
    train_state = (params, params, optimizer.init(params))
    checkpoint = output / "checkpoint.npz"
    digest = config_digest(config)
    step, losses, seconds_before = 0, [], 0.0
    if checkpoint.exists():
        train_state, step, losses, seconds_before = load_checkpoint(checkpoint, train_state, digest)
        logger.info("resuming training at step %d of %d", step, t.steps)

    run_chunk = _chunk_runner(t, optimizer, static, loss_fn, loop_key, scan=scan)

    tic = time.perf_counter()
    last = min(t.steps, t.stop_after) if t.stop_after else t.steps
    bar = tqdm(
        total=last, initial=min(step, last), desc=config.name, unit="step", dynamic_ncols=True
    )
    since_checkpoint = 0
    while step < last:
        num = min(t.chunk, last - step)
        # optax mixes Python floats and int32 step counts: allow standard promotion inside.
        with jax.numpy_dtype_promotion("standard"):
            train_state, chunk_losses = run_chunk(train_state, jnp.asarray(step), num, data)
        chunk_losses = np.asarray(chunk_losses)
        if not np.all(np.isfinite(chunk_losses)):
            raise FloatingPointError(
                f"training loss became non-finite between steps {step} and {step + num}"
            )
        losses.append(float(chunk_losses.mean()))
        step += num
        since_checkpoint += num
        bar.update(num)
        bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
        if since_checkpoint >= t.checkpoint_every or step >= last:
            seconds = seconds_before + time.perf_counter() - tic
            save_checkpoint(checkpoint, train_state, step, losses, digest, seconds)
            since_checkpoint = 0
    bar.close()
    return eqx.combine(train_state[1], static), losses, seconds_before + time.perf_counter() - tic


def _chunk_runner(t, optimizer, static, loss_fn, loop_key, *, scan: bool):
    """``run_chunk(train_state, start, num_steps, data) -> (train_state, losses)``: AdamW
    steps with an EMA of the parameters, the key of step ``s`` being ``fold_in(loop_key, s)``
    (so a resumed run draws the same keys)."""

    def one(carry, index, start, data):
        params, ema, opt_state = carry
        key = jax.random.fold_in(loop_key, start + index)
        loss, grads = jax.value_and_grad(lambda p: loss_fn(eqx.combine(p, static), key, data))(
            params
        )
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        ema = jax.tree_util.tree_map(lambda e, p: t.ema * e + (1 - t.ema) * p, ema, params)
        return (params, ema, opt_state), loss

    @eqx.filter_jit
    def scanned_chunk(state, start, num_steps, data):
        return jax.lax.scan(lambda c, i: one(c, i, start, data), state, jnp.arange(num_steps))

    one_step = eqx.filter_jit(one)

    def looped_chunk(state, start, num_steps, data):
        chunk_losses = []
        for index in range(num_steps):
            state, loss = one_step(state, jnp.asarray(index), start, data)
            chunk_losses.append(loss)
        return state, jnp.stack(chunk_losses)

    # XLA's CPU backend runs convolution gradients inside a while loop (lax.scan) about 8x
    # slower than the same step compiled on its own (measured: 2.7 s against 0.33 s per step
    # of the atmosphere U-Net), so convolutional networks step from Python.
    return scanned_chunk if scan else looped_chunk


def forecast_ensembles(emulator, sampler, initial_states, members: int, steps: int, key):
    """Free forecasts ``(steps, M, members, *frame)`` from states ``(M, *state)``.

    Member ``j`` of initial state ``m`` uses ``fold_in(fold_in(fold_in(key, m), j), step)``.
    """
    from ..filters.proposals import EmulatorProposal

    proposal = EmulatorProposal(emulator, sampler)
    empty = jnp.zeros((0,), jnp.float32)

    def member(state, member_key):
        def step(s, index):
            s = proposal(s, empty, None, key=jax.random.fold_in(member_key, index))
            return s, emulator.current_frame(s)

        return jax.lax.scan(step, state, jnp.arange(steps))[1]

    def one_state(state, state_key):
        keys = jax.vmap(lambda j: jax.random.fold_in(state_key, j))(jnp.arange(members))
        return jax.vmap(member, in_axes=(None, 0))(state, keys)

    keys = jax.vmap(lambda m: jax.random.fold_in(key, m))(jnp.arange(initial_states.shape[0]))
    frames = jax.jit(jax.vmap(one_state))(jnp.asarray(initial_states), keys)
    return np.moveaxis(np.asarray(frames), 2, 0)  # (steps, M, members, *frame)


def card_text(card: dict) -> str:
    """A model card as TOML: top-level scalars first, then one table per dict."""
    top = "".join(f"{k} = {toml_value(v)}\n" for k, v in card.items() if not isinstance(v, dict))
    tables = []
    for key, value in card.items():
        if isinstance(value, dict):
            body = "".join(f"{k} = {toml_value(v)}\n" for k, v in value.items() if v is not None)
            tables.append(f"\n[{key}]\n{body}")
    return top + "".join(tables)
