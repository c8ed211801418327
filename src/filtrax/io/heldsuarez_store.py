r"""Held–Suarez truth stores: the coarse fields as CF-annotated xarray data, written resumably.

:func:`generate_heldsuarez` spins :class:`~filtrax.dynamics.heldsuarez.HeldSuarezSimulator`
up from rest and writes its coarse states to a zarr store in chunks, saving the model state
after each one, so that a killed run continues from its last finished chunk.
:func:`write_segment` cuts the truth segment an emulator card bundles. The model equations
live in :mod:`filtrax.dynamics.heldsuarez`; this module holds only what turns their arrays
into files (variables, units and names as that module's table gives them).
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from ..dynamics.heldsuarez import (
    LEVEL_VARIABLES,
    LONG_NAMES,
    MODEL_EPOCH,
    STANDARD_NAMES,
    SURFACE_VARIABLES,
    UNITS,
    HeldSuarezSetup,
    HeldSuarezSimulator,
)
from .atomic import atomic_savez


def coarse_dataset(
    fields: dict[str, np.ndarray], setup: HeldSuarezSetup, latitudes, longitudes, start_hours
) -> xr.Dataset:
    """An xarray Dataset of stacked coarse fields ``{name: (time, [level,] lat, lon)}``."""
    num = next(iter(fields.values())).shape[0]
    hours = start_hours + setup.save_hours * np.arange(num)
    # A nominal calendar: the model has no seasons, so day 0 (the state at rest) is labelled
    # MODEL_EPOCH only to give CF-decodable times.
    times = np.datetime64(MODEL_EPOCH, "s") + (hours * 3600).round().astype("timedelta64[s]")
    coords = {
        "time": ("time", times.astype("datetime64[ns]"), {"long_name": "nominal model time"}),
        "level": (
            "level",
            setup.state_sigma,
            {"long_name": "sigma = p / p_surface (level centre)", "units": "1", "positive": "down"},
        ),
        "lat": ("lat", latitudes, {"units": "degrees_north", "standard_name": "latitude"}),
        "lon": ("lon", longitudes, {"units": "degrees_east", "standard_name": "longitude"}),
    }
    data_vars = {}

    def values(name):  # lazy (dask) fields stay lazy: a preallocated store is metadata only
        field = fields[name]
        return field if hasattr(field, "dask") else np.asarray(field)

    for name in LEVEL_VARIABLES:
        data_vars[name] = (("time", "level", "lat", "lon"), values(name))
    for name in SURFACE_VARIABLES:
        data_vars[name] = (("time", "lat", "lon"), values(name))
    ds = xr.Dataset(data_vars, coords=coords)
    for name in LEVEL_VARIABLES + SURFACE_VARIABLES:
        ds[name].attrs.update(
            units=UNITS[name], long_name=LONG_NAMES[name], standard_name=STANDARD_NAMES[name]
        )
    return ds


def _settings(setup: HeldSuarezSetup, *, years, spin_up_days, seed, chunk_days) -> dict:
    """What a partial store must agree on to be resumed (JSON-safe)."""
    return {
        **{k: (str(v) if isinstance(v, list) else v) for k, v in setup.attributes().items()},
        "years": years,
        "spin_up_days": spin_up_days,
        "seed": seed,
        "chunk_days": chunk_days,
    }


def _save_progress(path: Path, state, written: int, seconds: float, settings: dict) -> None:
    """The model state after ``written`` saved states (npz of its leaves; no pickle)."""
    leaves = jax.tree_util.tree_leaves(state)
    arrays = {f"leaf_{i}": np.asarray(leaf) for i, leaf in enumerate(leaves)}
    arrays["written"] = np.asarray(written)
    arrays["seconds"] = np.asarray(seconds)
    arrays["settings"] = np.frombuffer(json.dumps(settings, sort_keys=True).encode(), np.uint8)
    atomic_savez(path, arrays)


def _load_progress(path: Path, template, settings: dict):
    """``(state, written, seconds)`` from :func:`_save_progress`; refuses other settings."""
    with np.load(path, allow_pickle=False) as data:
        stored = json.loads(bytes(data["settings"]).decode())
        if stored != settings:
            changed = sorted(k for k in settings if stored.get(k) != settings[k])
            detail = ", ".join(
                f"{k} = {stored.get(k)!r} there, {settings[k]!r} asked" for k in changed
            )
            store = path.name.removesuffix(".resume.npz") + ".partial"
            raise ValueError(
                f"{path} belongs to a partial run with other settings ({detail}); rerun with "
                f"its settings to resume it, or delete it and {store} to start again"
            )
        leaves, treedef = jax.tree_util.tree_flatten(template)
        restored = [jnp.asarray(data[f"leaf_{i}"]) for i in range(len(leaves))]
        state = jax.tree_util.tree_unflatten(treedef, restored)
        return state, int(data["written"]), float(data["seconds"])


def _preallocate_store(
    partial: Path,
    sim,
    setup: HeldSuarezSetup,
    total: int,
    per_chunk: int,
    start_hours: float,
    attrs: dict,
) -> None:
    """Zarr metadata for all ``total`` states (NaN until written), chunked as they are written."""
    import dask.array

    shapes: dict[str, tuple[int, ...]] = {
        name: (total, len(setup.state_levels), setup.state_lat, setup.state_lon)
        for name in LEVEL_VARIABLES
    }
    shapes.update({name: (total, setup.state_lat, setup.state_lon) for name in SURFACE_VARIABLES})
    fields = {
        name: dask.array.full(shape, np.nan, dtype=np.float32, chunks=(per_chunk, *shape[1:]))
        for name, shape in shapes.items()
    }
    ds = coarse_dataset(fields, setup, sim.latitudes, sim.longitudes, start_hours)
    ds.attrs.update(attrs)
    ds.to_zarr(partial, mode="w", compute=False, consolidated=False)


def generate_heldsuarez(
    out: str | Path,
    *,
    years: float,
    spin_up_days: float = 200.0,
    seed: int = 0,
    setup: HeldSuarezSetup | None = None,
    chunk_days: int = 60,
    progress: bool = True,
) -> Path:
    """Spin up from rest, then write ``years`` of coarse states to a zarr store, resumably.

    The store is preallocated as ``<out>.partial`` and filled ``chunk_days`` at a time; after
    each chunk the model state is saved to ``<out>.resume.npz``. A killed run called again
    with the same settings continues from its last finished chunk (the same states, since
    the integration is deterministic), and other settings are refused. At the end the
    metadata is consolidated and the store renamed to ``out``, so a store at ``out`` is
    always complete.
    """
    from tqdm.auto import tqdm

    setup = setup or HeldSuarezSetup()
    out = Path(out)
    if years <= 0:
        raise ValueError(f"years = {years!r}; expected a positive number")
    if spin_up_days < 0 or spin_up_days % 10:
        raise ValueError(
            f"spin_up_days = {spin_up_days!r}; expected a non-negative multiple of 10 (the "
            f"spin-up runs in jitted 10-day blocks)"
        )
    partial = out.with_name(out.name + ".partial")
    progress_file = out.with_name(out.name + ".resume.npz")
    settings = _settings(
        setup, years=years, spin_up_days=spin_up_days, seed=seed, chunk_days=chunk_days
    )
    tic = time.perf_counter()
    sim = HeldSuarezSimulator(setup)
    per_day = 24 / setup.save_hours
    total = round(years * 365.25 * per_day)
    per_chunk = round(chunk_days * per_day)
    start_hours = spin_up_days * 24 + setup.save_hours
    state = sim.initial_state(jax.random.key(seed))
    if partial.exists() and progress_file.exists():
        state, written, earlier_seconds = _load_progress(progress_file, state, settings)
    else:
        state = sim.spin_up(state, spin_up_days)
        written, earlier_seconds = 0, 0.0
        attrs = dict(
            title="Held-Suarez dry primitive equations (dinosaur), coarse-grained",
            source=f"dinosaur {_version('dinosaur')}, jax {jax.__version__}",
            conventions="CF-1.8",
            generator="filtrax heldsuarez-data",
            **settings,
        )
        _preallocate_store(partial, sim, setup, total, per_chunk, start_hours, attrs)
        _save_progress(progress_file, state, 0, time.perf_counter() - tic, settings)
    bar = tqdm(total=total, initial=written, desc="held-suarez", unit="state", disable=not progress)
    while written < total:
        num = min(per_chunk, total - written)
        state, fields = sim.trajectory(state, num)
        if not all(np.all(np.isfinite(v)) for v in fields.values()):
            raise FloatingPointError(
                f"the {setup.truth_grid} simulation with a {setup.time_step_minutes:g}-minute "
                f"step produced non-finite values in states {written}-{written + num - 1}"
            )
        ds = coarse_dataset(
            fields, setup, sim.latitudes, sim.longitudes, start_hours + setup.save_hours * written
        )
        # A region write carries only what varies along time; the rest was preallocated.
        ds.drop_vars(["level", "lat", "lon"]).to_zarr(
            partial, region={"time": slice(written, written + num)}, consolidated=False
        )
        written += num
        seconds = earlier_seconds + time.perf_counter() - tic
        _save_progress(progress_file, state, written, seconds, settings)
        bar.update(num)
    bar.close()
    _finish_store(partial, out, earlier_seconds + time.perf_counter() - tic)
    progress_file.unlink()
    return out


def _finish_store(partial: Path, out: Path, seconds: float) -> None:
    """Record the wall time, consolidate the metadata and move the store into place."""
    import shutil

    import zarr

    group = zarr.open_group(str(partial), mode="r+")
    group.attrs["wall_seconds"] = round(seconds, 1)
    with warnings.catch_warnings():
        # zarr 3 warns that consolidated metadata is outside its format's spec; xarray reads
        # it, and it spares every reader a scan of the store (and a warning of its own).
        warnings.filterwarnings("ignore", "Consolidated metadata", UserWarning)
        zarr.consolidate_metadata(str(partial))
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def stack_channels(ds: xr.Dataset, variables: Sequence[str] | None = None) -> np.ndarray:
    """``(time, channel, lat, lon)`` in the emulator's order: level variables level by level,
    then surface variables."""
    variables = variables or (*LEVEL_VARIABLES, *SURFACE_VARIABLES)
    parts = []
    for name in variables:
        values = ds[name].values
        parts.append(values if values.ndim == 4 else values[:, None])
    return np.concatenate(parts, axis=1)


def write_segment(store: str | Path, start: int, length: int, out: str | Path) -> Path:
    """Copy states ``start … start + length - 1`` of a store to a compressed netCDF file.

    This is how the truth segment bundled with an atmosphere emulator is made, from the
    held-out store (see the emulator's card).
    """
    ds = xr.open_zarr(store, consolidated=False)
    if not 0 <= start < start + length <= ds.sizes["time"]:
        raise ValueError(
            f"segment start = {start}, length = {length} does not fit the "
            f"{ds.sizes['time']} states of {store}"
        )
    segment = ds.isel(time=slice(start, start + length)).load()
    segment.attrs.update(segment_of=str(store), segment_start=start, segment_length=length)
    encoding = {name: {"zlib": True, "complevel": 5} for name in segment.data_vars}
    out = Path(out)
    segment.to_netcdf(out, encoding=encoding)
    return out
