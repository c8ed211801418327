r"""``filtrax train`` for the hybrid emulator: dinosaur forecasts of training states, their
residuals, and the structured residual's statistics (:mod:`filtrax.training.residual`).

The forecasts are the cost (one dynamical-core integration per training pair), so they are
written in chunks under ``OUTPUT/residuals/``: a killed fit called again continues from the
last finished chunk. The estimation itself takes seconds, and the card and weights are
written at the end (:mod:`filtrax.emulators.hybrid`).
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from ..dynamics.coarse_forecast import coarse_forecast
from ..dynamics.heldsuarez import LEVEL_VARIABLES, SURFACE_VARIABLES
from ..emulators.cards import write_weights
from ..emulators.hybrid import SphericalResidual, gaussian_hybrid, hybrid_arrays
from ..grid import GridSpec
from ..io.heldsuarez_store import stack_channels
from .atmosphere import grid_of
from .config import HybridTrainingConfig
from .residual import estimate_residual


def grid_of_store(ds: xr.Dataset, source: str) -> GridSpec:
    """The grid of a ``filtrax heldsuarez-data`` store; a store without its variables is
    refused, naming what is missing."""
    missing = [name for name in (*LEVEL_VARIABLES, *SURFACE_VARIABLES) if name not in ds]
    if missing:
        raise ValueError(
            f"{source}: lacks the variables {missing}; expected a heldsuarez-data store"
        )
    return grid_of(ds)


def _pair_indices(num_states: int, pairs: int) -> np.ndarray:
    """``pairs`` training times spread evenly over the store (each with its successor)."""
    if num_states < 2:
        raise ValueError(f"the training store has {num_states} states; a pair needs 2")
    return np.unique(np.linspace(0, num_states - 2, min(pairs, num_states - 1)).round().astype(int))


def _residual_chunks(cfg: HybridTrainingConfig, ds: xr.Dataset, indices: np.ndarray) -> np.ndarray:
    """``x^{k+1} - F(x^k)`` for every training index, forecast chunk by chunk (resumable)."""
    from tqdm.auto import tqdm

    folder = Path(cfg.output) / "residuals"
    folder.mkdir(parents=True, exist_ok=True)
    levels = ds.sizes["level"]
    forecast = coarse_forecast(cfg.base.truth_grid, levels, ds.sizes["lat"], ds.sizes["lon"])
    run = jax.jit(lambda frames: jax.lax.map(forecast, frames))
    chunk = cfg.fit.chunk
    parts = []
    for start in tqdm(range(0, len(indices), chunk), desc="forecasts", unit="chunk"):
        path = folder / f"chunk_{start // chunk:05d}.npz"
        which = indices[start : start + chunk]
        if path.exists():
            with np.load(path, allow_pickle=False) as data:
                if np.array_equal(data["indices"], which):
                    parts.append(data["residuals"])
                    continue
        now = stack_channels(ds.isel(time=which)).astype(np.float32)
        later = stack_channels(ds.isel(time=which + 1)).astype(np.float32)
        residuals = later - np.asarray(run(jnp.asarray(now)))
        np.savez(path, indices=which, residuals=residuals)
        parts.append(residuals)
    return np.concatenate(parts)


def _statistics(ds: xr.Dataset, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of the training states (the conditioning's normalisation)."""
    frames = stack_channels(ds.isel(time=indices)).astype(np.float64)
    return frames.mean(axis=(0, 2, 3)), frames.std(axis=(0, 2, 3))


def fit_hybrid(cfg: HybridTrainingConfig) -> Path:
    """Fit the residual, write ``OUTPUT/NAME.npz`` and its card ``OUTPUT/NAME.toml``."""
    tic = time.perf_counter()
    source = cfg.data.train
    if not Path(source).exists():
        raise FileNotFoundError(f"data.train = {source!r}: store not found")
    ds = xr.open_zarr(source, consolidated=False)
    grid = grid_of_store(ds, source)
    available = ds.sizes["time"]
    num_states = min(cfg.data.max_train_states or available, available)
    indices = _pair_indices(num_states, cfg.data.pairs)
    residuals = _residual_chunks(cfg, ds, indices)
    if not np.all(np.isfinite(residuals)):
        raise ValueError(
            f"data.train = {source!r}: non-finite states among the first {num_states} (an "
            f"unfinished store? set data.max_train_states to what has been written)"
        )
    estimate = estimate_residual(
        residuals,
        grid,
        cfg.residual.band_limit or None,
        winds=cfg.residual.winds,
        balance=cfg.residual.balance,
    )
    mean, std = _statistics(ds, indices)
    forecast = coarse_forecast(cfg.base.truth_grid, ds.sizes["level"], *grid.shape[1:])
    emulator = gaussian_hybrid(
        grid,
        forecast,
        SphericalResidual.on_grid(grid, **estimate, winds=cfg.residual.winds),
        mean,
        std,
        name=cfg.name,
    )
    out = Path(cfg.output)
    weights = out / f"{cfg.name}.npz"
    digest = write_weights(weights, hybrid_arrays(emulator))
    segment = _truth_segment(cfg, out)
    card = _card(cfg, grid, ds, indices, num_states, digest, time.perf_counter() - tic, segment)
    card_path = out / f"{cfg.name}.toml"
    card_path.write_text(card)
    return card_path


def _truth_segment(cfg: HybridTrainingConfig, out: Path) -> Path | None:
    """The held-out truth shipped with the card (``data.truth_segment_*``), or None."""
    from ..io.heldsuarez_store import write_segment

    if not cfg.data.truth_segment_length:
        return None
    if not Path(cfg.data.validation).exists():
        raise FileNotFoundError(f"data.validation = {cfg.data.validation!r}: store not found")
    path = out / f"{cfg.name}_truth.nc"
    start, length = cfg.data.truth_segment_start, cfg.data.truth_segment_length
    return write_segment(cfg.data.validation, start, length, path)


def _toml_list(values) -> str:
    return (
        "["
        + ", ".join(repr(float(v)) if not isinstance(v, str) else f'"{v}"' for v in values)
        + "]"
    )


def _card(cfg, grid: GridSpec, ds, indices, num_states, digest, seconds, segment) -> str:
    """The model card (TOML) of a fitted hybrid emulator."""
    last = cfg.data.truth_segment_start + cfg.data.truth_segment_length - 1
    truth = [
        f'truth_segment = "{segment.name}"',
        f'truth_segment_source = "states {cfg.data.truth_segment_start}..{last} of '
        f'{cfg.data.validation} (filtrax.io.heldsuarez_store.write_segment)"',
    ]
    levels = grid.levels_of(LEVEL_VARIABLES[0])
    hours = float(ds.attrs.get("save_hours", 12.0))
    years = num_states * hours / 24 / 365.25
    generator = (
        f"{ds.attrs.get('truth_grid', '?')} dinosaur Held-Suarez, seed {ds.attrs.get('seed')}"
    )
    machine = f"{platform.machine()}, {jax.default_backend()}, jax {jax.__version__}"
    band_limit = cfg.residual.band_limit or len(grid.longitudes) // 2
    lines = [
        f'name = "{cfg.name}"',
        f'description = "{cfg.description}"',
        'kind = "fitted"',
        'family = "hybrid_atmosphere"',
        'license = "Apache-2.0"',
        f'weights = "{cfg.name}.npz"',
        f'sha256 = "{digest}"',
        'reference = "filtrax.emulators.hybrid; fitted by filtrax train (filtrax.training.hybrid)"',
        *(truth if segment is not None else []),
        "",
        "[data]",
        f'train = "{cfg.data.train}"',
        f'validation = "{cfg.data.validation}"',
        f"train_states_used = {num_states}",
        f"train_years_used = {years:.2f}",
        f"pairs = {len(indices)}",
        f"time_step_hours = {hours}",
        f'truth_generator = "{generator}"',
        "",
        "[grid]",
        f"latitudes = {_toml_list(grid.latitudes)}",
        f"longitudes = {_toml_list(grid.longitudes)}",
        'level_name = "sigma"',
        f"levels = {_toml_list(levels)}",
        f"level_variables = {_toml_list(LEVEL_VARIABLES)}",
        f"surface_variables = {_toml_list(SURFACE_VARIABLES)}",
        "",
        "[base]",
        f'truth_grid = "{cfg.base.truth_grid}"',
        "",
        "[residual]",
        'denoiser = "exact Gaussian (StandardNormalDenoiser)"',
        f"band_limit = {band_limit}",
        f"winds = {str(cfg.residual.winds).lower()}",
        f"balance = {str(cfg.residual.balance).lower()}",
        "",
        "[fit]",
        f"seconds = {seconds:.1f}",
        f'machine = "{machine}"',
    ]
    return "\n".join(lines) + "\n"
