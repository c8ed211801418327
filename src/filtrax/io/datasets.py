"""Frames ↔ xarray Datasets with CF attributes and ERA5/WeatherBench-2 names.

Gridded frames ``(channel, lat, lon)`` become one data variable per physical variable,
with dims ``(cycle, particle, level, lat, lon)`` for variables on levels and
``(cycle, particle, lat, lon)`` for surface ones. Site-indexed states become a single
variable ``x`` with dims ``(cycle, particle, site)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from ..grid import GridSpec

# CF standard names of the ERA5 / WeatherBench-2 variables we may carry.
STANDARD_NAMES = {
    "temperature": "air_temperature",
    "2m_temperature": "air_temperature",
    "near_surface_temperature": "air_temperature",
    "u_component_of_wind": "eastward_wind",
    "v_component_of_wind": "northward_wind",
    "geopotential": "geopotential",
    "surface_pressure": "surface_air_pressure",
    "mean_sea_level_pressure": "air_pressure_at_mean_sea_level",
}


def _variable_attrs(variable: str, unit: str) -> dict[str, str]:
    attrs = {"units": unit, "long_name": variable.replace("_", " ")}
    if variable in STANDARD_NAMES and unit != "1":
        attrs["standard_name"] = STANDARD_NAMES[variable]
    return attrs


def frames_to_dataset(
    frames: np.ndarray,
    *,
    grid: GridSpec | None,
    units: Sequence[str],
    leading_dims: tuple[str, ...] = ("cycle", "particle"),
    coords: dict | None = None,
) -> xr.Dataset:
    """Wrap frames with leading dims (e.g. ``(cycle, particle, *frame)``) as a Dataset."""
    frames = np.asarray(frames)
    lead = frames.shape[: len(leading_dims)]
    coords = dict(coords or {})
    if grid is None:
        data = {"x": ((*leading_dims, "site"), frames, _variable_attrs("x", units[0]))}
        coords["site"] = ("site", np.arange(frames.shape[-1]))
        return xr.Dataset(data, coords=coords)
    if frames.shape[len(leading_dims) :] != grid.shape:
        raise ValueError(
            f"frames have shape {frames.shape[len(leading_dims) :]}, grid is {grid.shape}"
        )
    data = {}
    levels = sorted({c.level for c in grid.channels if c.level is not None})
    for variable in grid.variables:
        own = grid.levels_of(variable)
        on_levels = sorted(level for level in own if level is not None)
        if own != (None,) and (None in own or on_levels != levels):
            raise ValueError(
                f"variable {variable!r} has levels {own}; every variable on levels must have "
                f"all of {levels}"
            )
        indices = [
            grid.channel_index(variable, level) for level in (own if own == (None,) else levels)
        ]
        unit = units[indices[0]]
        if own == (None,):
            values = frames[..., indices[0], :, :]
            data[variable] = (
                (*leading_dims, "lat", "lon"),
                values,
                _variable_attrs(variable, unit),
            )
        else:
            values = np.stack([frames[..., i, :, :] for i in indices], axis=len(lead))
            dims = (*leading_dims, "level", "lat", "lon")
            data[variable] = (dims, values, _variable_attrs(variable, unit))
    coords["lat"] = (
        "lat",
        np.asarray(grid.latitudes),
        {"units": "degrees_north", "standard_name": "latitude"},
    )
    coords["lon"] = (
        "lon",
        np.asarray(grid.longitudes),
        {"units": "degrees_east", "standard_name": "longitude"},
    )
    if levels:
        coords["level"] = ("level", np.asarray(levels), {"long_name": grid.level_name})
    return xr.Dataset(data, coords=coords)


def dataset_to_frames(dataset: xr.Dataset, grid: GridSpec | None) -> np.ndarray:
    """Inverse of :func:`frames_to_dataset`: stack variables back into ``(..., *frame)``."""
    if grid is None:
        return np.asarray(dataset["x"].values)
    channels = []
    for channel in grid.channels:
        values = dataset[channel.variable]
        if channel.level is not None:
            values = values.sel(level=channel.level)
        # Any other order of the dimensions in a file is the same field.
        channels.append(np.asarray(values.transpose(..., "lat", "lon").values))
    return np.stack(channels, axis=-3)


def open_gridded(path: Path) -> xr.Dataset:
    """A zarr store (``.zarr`` or a directory) or a netCDF file, opened lazily; a file that is
    neither is a ``ValueError`` naming it."""
    try:
        if path.suffix == ".zarr" or path.is_dir():
            return xr.open_zarr(path, consolidated=False)
        return xr.open_dataset(path)
    except (ValueError, OSError, KeyError) as error:
        raise unreadable(path, error) from None


def unreadable(path: Path, error: Exception) -> ValueError:
    """One line for a file that xarray cannot open (its own message runs to several)."""
    text = str(error).strip()
    first_sentence = text.splitlines()[0].split(". ")[0] if text else ""
    reason = first_sentence if len(first_sentence) < 120 else first_sentence[:117] + "..."
    return ValueError(
        f"{path}: not a readable netCDF file or zarr store ({type(error).__name__}"
        f"{': ' + reason if reason else ''})"
    )


def _check_dimensions(dataset: xr.Dataset, grid: GridSpec, source: str) -> None:
    """Every grid variable with dims ``(time, [level,] lat, lon)`` in any order."""
    if "time" not in dataset.dims or "time" not in dataset.coords:
        raise ValueError(
            f"{source} has no 'time' coordinate; its dimensions are "
            f"{', '.join(map(str, dataset.dims)) or 'none'}"
        )
    for variable in grid.variables:
        on_levels = grid.levels_of(variable) != (None,)
        expected = {"time", "lat", "lon"} | ({"level"} if on_levels else set())
        found = tuple(map(str, dataset[variable].dims))
        if set(found) != expected:
            shown = "(time, level, lat, lon)" if on_levels else "(time, lat, lon)"
            raise ValueError(
                f"{source}: variable {variable!r} has dimensions {found}; expected {shown} "
                f"in any order"
            )


def _check_finite(frames: np.ndarray, grid: GridSpec, times: np.ndarray, source: str) -> None:
    bad = np.argwhere(~np.isfinite(frames))
    if bad.size:
        t, c = int(bad[0][0]), int(bad[0][1])
        raise ValueError(
            f"{source}: {grid.channels[c].label()} is {frames[tuple(bad[0])]} at time "
            f"{np.datetime_as_string(np.asarray(times, 'datetime64[s]')[t])} ({len(bad)} "
            f"non-finite values in all); it must be finite everywhere (no NaN fill)"
        )


def check_grid_coordinates(dataset: xr.Dataset, grid: GridSpec, *, source: str) -> None:
    """``lat``/``lon`` of ``dataset`` must be ``grid``'s (same size, same values)."""
    for name, expected in (("lat", grid.latitudes), ("lon", grid.longitudes)):
        expected = np.asarray(expected, np.float64)
        if name not in dataset.coords:
            raise ValueError(f"{source} has no coordinate {name!r}")
        found = np.asarray(dataset[name].values, np.float64)
        if found.shape != expected.shape:
            raise ValueError(
                f"{source}: coordinate {name!r} has {found.size} values, the model grid "
                f"{expected.size}"
            )
        if not np.allclose(found, expected, atol=1e-6):
            i = int(np.argmax(~np.isclose(found, expected, atol=1e-6)))
            raise ValueError(
                f"{source}: coordinate {name!r} differs from the model grid: entry {i} is "
                f"{found[i]:g}, the grid has {expected[i]:g}"
            )


def frames_at_times(
    dataset: xr.Dataset,
    grid: GridSpec,
    times: np.ndarray,
    *,
    source: str,
    time_label: str = "times",
    finite: bool = False,
) -> np.ndarray:
    """Frames ``(time, *frame)`` of ``dataset`` at ``times`` on ``grid``.

    ``dataset`` holds one variable per grid variable with dims ``(time, [level,] lat, lon)``
    in any order; a missing variable, time or dimension, a grid mismatch, or (``finite``) a
    NaN or infinite value is a ``ValueError`` naming ``source``.
    """
    missing = [v for v in grid.variables if v not in dataset]
    if missing:
        raise ValueError(f"{source} lacks the variables {missing}")
    _check_dimensions(dataset, grid, source)
    file_times = np.asarray(dataset["time"].values, "datetime64[s]")
    absent = [str(t) for t in np.asarray(times, "datetime64[s]") if t not in file_times]
    if absent:
        raise ValueError(f"{source} has no state at the {time_label} {absent[:3]}")
    selected = dataset.sel(time=np.asarray(times, "datetime64[ns]"))
    check_grid_coordinates(selected, grid, source=source)
    frames = dataset_to_frames(selected.load(), grid)
    if finite:
        _check_finite(frames, grid, times, source)
    return frames
