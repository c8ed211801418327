"""Read observations from files into an :class:`ObservationSet` on a :class:`GridSpec`.

Two forms are supported:

* **Station tables** (:func:`read_station_table`): CSV or Parquet, one row per observation
  with columns ``time, lat, lon, [level,] variable, value, error_std`` (the form of
  earth2studio's data-assimilation observations). Stations are observed by
  :class:`~filtrax.observations.interpolation.BilinearInterpolation`.
* **Gridded observations** (:func:`read_gridded_observations`): netCDF or zarr, one data
  variable per observed model variable on the model grid, NaN where not observed. Grid points
  are observed by :class:`~filtrax.observations.operators.PointSelection`.

Every observation set has a *static* observation operator and noise model: one observation
slot per place and channel that is observed at least once, with a NaN in
``ObservationSet.values`` at the cycles where that slot has no observation.

Times are compared exactly with the assimilation cycle times. Time-zone-aware times are
converted to UTC and naive times are taken as UTC. ``pandas`` reads tables and ``xarray``
reads gridded files; both are imported on first use. Nothing is unpickled.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import jax.numpy as jnp
import numpy as np

from ..grid import GridSpec
from ..observations.interpolation import BilinearInterpolation
from ..observations.model import ObservationModel
from ..observations.operators import AbstractObservationOperator, PointSelection

if TYPE_CHECKING:
    import pandas as pd
    import xarray as xr

__all__ = ["ObservationSet", "read_gridded_observations", "read_station_table"]

REQUIRED_COLUMNS = ("time", "lat", "lon", "variable", "value", "error_std")
"""The columns every station table must have; ``level`` is optional (absent/empty = surface)."""

COORDINATE_TOLERANCE = 1e-6
"""Largest difference (degrees) between a file's lat/lon coordinate and the grid's."""


@dataclasses.dataclass(frozen=True, eq=False)
class ObservationSet:
    """Observations of several assimilation cycles with one static observation model.

    Attributes:
        values: shape ``(cycle, obs)``; NaN where a slot is not observed at a cycle.
        operator: maps one frame ``(channel, lat, lon)`` to the ``obs`` predicted values.
        noise_variance: the observation-error variances, shape ``(obs,)``.
        labels: one human-readable name per observation slot.
    """

    values: np.ndarray
    operator: AbstractObservationOperator
    noise_variance: np.ndarray
    labels: list[str]

    def __post_init__(self) -> None:
        n = self.operator.num_observations
        if self.values.ndim != 2 or self.values.shape[1] != n:
            raise ValueError(
                f"ObservationSet.values has shape {self.values.shape}, expected (cycle, {n})"
            )
        if self.noise_variance.shape != (n,):
            raise ValueError(
                f"ObservationSet.noise_variance has shape {self.noise_variance.shape}, "
                f"expected ({n},)"
            )
        if len(self.labels) != n:
            raise ValueError(f"ObservationSet.labels has {len(self.labels)} entries, expected {n}")

    @property
    def num_cycles(self) -> int:
        return int(self.values.shape[0])

    @property
    def num_observations(self) -> int:
        return int(self.values.shape[1])

    def observation_model(self) -> ObservationModel:
        """The Gaussian observation model ``y = h(x) + v``, ``v ~ N(0, diag noise_variance)``."""
        return ObservationModel(self.operator, self.noise_variance)


# ---------------------------------------------------------------------------------------------
# shared helpers


def _import_pandas() -> Any:
    try:
        import pandas
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("reading observation files needs pandas (pip install pandas)") from err
    return pandas


def _import_xarray() -> Any:
    try:
        import xarray
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "reading gridded observations needs xarray and netCDF4 or zarr "
            "(pip install xarray netCDF4 zarr)"
        ) from err
    return xarray


def _utc_naive(times: Any) -> pd.DatetimeIndex:
    """A naive-UTC, nanosecond DatetimeIndex."""
    pd = _import_pandas()
    index = pd.DatetimeIndex(times)
    if index.tz is not None:
        index = index.tz_convert("UTC").tz_localize(None)
    return index.as_unit("ns")


def _cycle_index(cycle_times: Sequence[np.datetime64] | pd.DatetimeIndex) -> pd.DatetimeIndex:
    try:
        cycles = _utc_naive(cycle_times)
    except (TypeError, ValueError) as err:
        raise ValueError(f"cycle_times could not be read as times: {err}") from err
    if len(cycles) == 0:
        raise ValueError("cycle_times is empty")
    if cycles.hasnans:
        raise ValueError("cycle_times contains NaT")
    if cycles.has_duplicates:
        dup = cycles[cycles.duplicated()]
        raise ValueError(f"cycle_times has duplicates: {_format_time(dup[0])}")
    return cycles


def _format_time(t: Any) -> str:
    pd = _import_pandas()
    return pd.Timestamp(t).isoformat()


def _nearest_cycles(t: Any, cycles: pd.DatetimeIndex) -> str:
    """The cycle times just before and after ``t``."""
    ordered = cycles.sort_values()
    pos = int(ordered.searchsorted(t))
    near = [ordered[i] for i in (pos - 1, pos) if 0 <= i < len(ordered)]
    return ", ".join(_format_time(c) for c in near)


def _not_a_cycle(t: Any, cycles: pd.DatetimeIndex) -> str:
    return (
        f"time {_format_time(t)} is not a cycle time; nearest cycle times: "
        f"{_nearest_cycles(t, cycles)}"
    )


def _normalise_lon(lon: np.ndarray) -> np.ndarray:
    lon = np.where(lon < 0.0, lon + 360.0, lon)
    return np.where(lon >= 360.0, lon - 360.0, lon) + 0.0  # + 0.0 turns -0.0 into 0.0


# ---------------------------------------------------------------------------------------------
# station tables


class _Rows:
    """Names the rows of a table the way a user finds them: CSV line or Parquet row."""

    def __init__(self, path: Path, csv: bool):
        self.path = path
        self.csv = csv

    def one(self, position: int) -> str:
        # CSV: the header is line 1 and blank lines keep their numbers (see _read_table).
        return f"line {position + 2}" if self.csv else f"row {position}"

    def many(self, positions: Sequence[int] | np.ndarray) -> str:
        positions = [int(p) for p in positions]
        if self.csv:
            return "lines " + ", ".join(str(p + 2) for p in positions)
        return "rows " + ", ".join(str(p) for p in positions)

    def error(self, position: int, message: str) -> ValueError:
        return ValueError(f"{self.path}: {self.one(position)}: {message}")


def _read_table(path: Path) -> tuple[pd.DataFrame, _Rows]:
    pd = _import_pandas()
    suffix = path.suffix.lower()
    if suffix == ".csv":
        # Every cell as text (numbers are parsed below, with row-level errors); blank lines
        # become all-empty rows so that row position + 2 is the line number.
        table = pd.read_csv(path, dtype=str, skip_blank_lines=False)
        rows = _Rows(path, csv=True)
    elif suffix == ".parquet":
        table = pd.read_parquet(path)
        rows = _Rows(path, csv=False)
    else:
        raise ValueError(
            f"{path}: unsupported station table suffix {path.suffix!r}; expected .csv or .parquet"
        )
    table = table.reset_index(drop=True)
    table.columns = [str(c).strip() for c in table.columns]
    return table, rows


def _numeric_column(
    table: pd.DataFrame, column: str, error: Callable[[int, str], ValueError]
) -> np.ndarray:
    """The column as float64 (NaN where empty); raise on text that is not a number."""
    pd = _import_pandas()
    raw = table[column]
    if raw.dtype == object or pd.api.types.is_string_dtype(raw):
        raw = raw.str.strip()
    numbers_ = pd.to_numeric(raw, errors="coerce")
    bad = np.flatnonzero(raw.notna().to_numpy() & numbers_.isna().to_numpy())
    if bad.size:
        i = int(bad[0])
        raise error(i, f"{column} {raw.iloc[i]!r} is not a number")
    return numbers_.to_numpy(dtype=np.float64, na_value=np.nan)


def _first_bad(mask: np.ndarray) -> int | None:
    bad = np.flatnonzero(mask)
    return int(bad[0]) if bad.size else None


def read_station_table(
    path: str | Path,
    grid: GridSpec,
    cycle_times: Sequence[np.datetime64] | pd.DatetimeIndex,
) -> ObservationSet:
    """Read station observations (CSV or Parquet) onto ``grid`` for the given cycles.

    The table has one row per observation with columns ``time, lat, lon, [level,] variable,
    value, error_std``: ``time`` in ISO 8601 (or a datetime column in Parquet), ``lat`` in
    ``[-90, 90]``, ``lon`` in ``[-180, 360)`` (normalised to ``[0, 360)``), ``level`` empty or
    absent for surface variables, ``error_std`` the observation-error standard deviation.

    Each distinct ``(lat, lon, level, variable)`` is one observation slot, observed by
    bilinear interpolation of its channel (see
    :class:`~filtrax.observations.interpolation.BilinearInterpolation`). Slots are ordered by
    variable, level (surface first), lat, lon; stations (distinct ``(lat, lon)``) are numbered
    in ``(lat, lon)`` order for the labels. Rows go to the cycle whose time equals theirs
    exactly; a slot without a row at a cycle is NaN there. Blank CSV lines are skipped.

    Args:
        path: a ``.csv`` or ``.parquet`` file.
        grid: the model grid; every ``(variable, level)`` must be one of its channels.
        cycle_times: the assimilation cycle times, one per row of ``values``.

    Returns:
        The :class:`ObservationSet` with ``values`` of shape ``(len(cycle_times), slots)`` and
        ``noise_variance = error_std**2``.

    Raises:
        ValueError: naming the file and the row (CSV: the 1-based line number with the header
            on line 1; Parquet: the 0-based row index) for a missing column, an unknown
            variable or level, a latitude/longitude out of range, a time that is not a cycle
            time, a missing or non-positive error_std, a missing value, duplicate rows, or an
            error_std that changes between times for one slot (the noise model is static).
    """
    path = Path(path)
    cycles = _cycle_index(cycle_times)
    table, rows = _read_table(path)
    optional = ["level"] if "level" in table.columns else []
    table, error = _observation_rows(path, table, rows, REQUIRED_COLUMNS, optional)
    position = table.index.to_numpy()
    lat, lon = _station_coordinates(table, error)
    value = _numeric_column(table, "value", error)
    error_std = _numeric_column(table, "error_std", error)
    channel = _station_channels(table, grid, error)
    cycle = _station_cycles(table, cycles, error)
    if (i := _first_bad(~(error_std > 0.0) | ~np.isfinite(error_std))) is not None:
        raise error(i, f"error_std {error_std[i]} must be finite and > 0")
    if (i := _first_bad(~np.isfinite(value))) is not None:
        raise error(i, f"value is {value[i]}; leave the row out where there is no observation")
    _refuse_duplicate_stations(path, rows, position, cycle, lat, lon, channel)
    slots, column, labels = _station_slots(grid, channel, lat, lon)
    std = _static_error_std(path, rows, position, error_std, column, labels)

    values = np.full((len(cycles), len(slots)), np.nan)
    values[cycle, column] = value
    chan, slot_lat, slot_lon = (np.array(v) for v in zip(*slots, strict=True))
    operator = BilinearInterpolation(grid, chan.astype(np.int64), slot_lat, slot_lon)
    return ObservationSet(values, operator, std**2, labels)


def _site_values(observed, shape, variable, site, times, rows, position, error):
    """``values (cycle, slot)`` and one noise variance per slot from the rows ``observed =
    (cycle, slot, value, error_std)``; a duplicate row or a changing error_std is an error."""
    cycle, slot, value, error_std = observed
    values = np.full(shape, np.nan)
    seen: dict[tuple[int, int], int] = {}
    variance = np.full(shape[1], np.nan)
    for i in range(len(value)):
        key = (int(cycle[i]), int(slot[i]))
        if key in seen:
            raise error(
                i,
                f"duplicate observation of {variable}[{site[i]}] at time {times[i]} "
                f"(also {rows.one(int(position[seen[key]]))})",
            )
        seen[key] = i
        values[key] = value[i]
        v = error_std[i] ** 2
        if np.isnan(variance[slot[i]]):
            variance[slot[i]] = v
        elif not np.isclose(variance[slot[i]], v):
            raise error(
                i,
                f"error_std of {variable}[{site[i]}] changes from "
                f"{np.sqrt(variance[slot[i]])} to {error_std[i]} (the noise model is static)",
            )
    return values, variance


def _observation_rows(
    path: Path, table: pd.DataFrame, rows, required, optional=()
) -> tuple[pd.DataFrame, Callable[[int, str], ValueError]]:
    """The table's observation rows (blank lines dropped, the index keeps each row's place)
    and ``error(i, message)``, which names the file and row ``i``'s line."""
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise ValueError(
            f"{path}: missing required column(s) {', '.join(missing)}; found columns: "
            f"{', '.join(map(str, table.columns))}"
        )
    # pandas types a column selection and a row mask as "frame or series"; both are frames.
    table = cast("pd.DataFrame", table[[*required, *optional]])
    table = cast("pd.DataFrame", table[~table.isna().all(axis=1)])  # blank lines dropped;
    # the index keeps the positions
    if table.empty:
        raise ValueError(f"{path}: the table has no observation rows")
    position = table.index.to_numpy()

    def error(i: int, message: str) -> ValueError:
        return rows.error(int(position[i]), message)

    return table, error


def _station_coordinates(table, error) -> tuple[np.ndarray, np.ndarray]:
    """``lat`` in [-90, 90] and ``lon`` normalised to [0, 360), each present in every row."""
    lat = _numeric_column(table, "lat", error)
    lon = _numeric_column(table, "lon", error)
    for name, column_values in (("lat", lat), ("lon", lon)):
        if (i := _first_bad(np.isnan(column_values))) is not None:
            raise error(i, f"{name} is missing")
    if (i := _first_bad(~((lat >= -90.0) & (lat <= 90.0)))) is not None:
        raise error(i, f"lat {lat[i]} outside [-90, 90]")
    if (i := _first_bad(~((lon >= -180.0) & (lon < 360.0)))) is not None:
        raise error(i, f"lon {lon[i]} outside [-180, 360)")
    return lat, _normalise_lon(lon)


def _station_channels(table, grid: GridSpec, error) -> np.ndarray:
    """The grid channel of every row's ``(variable, level)``."""
    level = (
        _numeric_column(table, "level", error)
        if "level" in table.columns
        else np.full(len(table), np.nan)
    )
    variable = table["variable"].astype(object).to_numpy()
    channel = np.empty(len(table), dtype=np.int64)
    resolved: dict[tuple[str, float | None], int] = {}
    for i, (var, lev) in enumerate(zip(variable, level, strict=True)):
        if not isinstance(var, str) or not var.strip():
            raise error(i, "variable is empty")
        key = (var.strip(), None if np.isnan(lev) else float(lev))
        if key not in resolved:
            try:
                resolved[key] = grid.channel_index(*key)
            except ValueError as err:
                raise error(i, str(err)) from None
        channel[i] = resolved[key]
    return channel


def _station_cycles(table, cycles, error) -> np.ndarray:
    """The cycle of every row, whose time must equal a cycle time exactly."""
    pd = _import_pandas()
    times = pd.to_datetime(table["time"], format="ISO8601", utc=True, errors="coerce")
    if (i := _first_bad(times.isna().to_numpy())) is not None:
        raise error(i, f"time {table['time'].iloc[i]!r} is not a valid ISO 8601 time")
    times = _utc_naive(times)
    cycle = cycles.get_indexer(times)
    if (i := _first_bad(cycle < 0)) is not None:
        raise error(i, _not_a_cycle(times[i], cycles))
    return cycle


def _refuse_duplicate_stations(path, rows, position, cycle, lat, lon, channel) -> None:
    """One error listing (up to five) groups of rows with the same time, place and channel."""
    pd = _import_pandas()
    keys = pd.DataFrame(
        {"cycle": cycle, "lat": lat, "lon": lon, "channel": channel}, index=position
    )
    duplicated = keys.duplicated(keep=False).to_numpy()
    if duplicated.any():
        groups = keys[duplicated].groupby(list(keys.columns), sort=False).groups
        listed = [rows.many(sorted(g)) for g in list(groups.values())[:5]]
        more = f" and {len(groups) - 5} more groups" if len(groups) > 5 else ""
        raise ValueError(
            f"{path}: duplicate observations (same time, lat, lon, level and variable) at "
            f"{'; '.join(listed)}{more}"
        )


def _station_slots(grid: GridSpec, channel, lat, lon):
    """Observation slots in a deterministic order (variable, level with the surface first,
    lat, lon), each row's slot, and the slots' labels (stations numbered in (lat, lon)
    order)."""

    def slot_order(slot: tuple[int, float, float]) -> tuple[Any, ...]:
        c = grid.channels[slot[0]]
        return (c.variable, c.level is not None, c.level or 0.0, slot[1], slot[2])

    slot_of_row = list(zip(channel.tolist(), lat.tolist(), lon.tolist(), strict=True))
    slots = sorted(set(slot_of_row), key=slot_order)
    slot_index = {s: k for k, s in enumerate(slots)}
    column = np.array([slot_index[s] for s in slot_of_row], dtype=np.int64)
    stations = {s: k for k, s in enumerate(sorted({(s[1], s[2]) for s in slots}))}
    labels = [
        f"station {stations[(la, lo)]} {grid.channels[c].label()} at (lat {la:g}, lon {lo:g})"
        for c, la, lo in slots
    ]
    return slots, column, labels


def _static_error_std(path, rows, position, error_std, column, labels) -> np.ndarray:
    """One error_std per slot; one that changes between times is an error naming the rows."""
    pd = _import_pandas()
    by_slot = pd.Series(error_std).groupby(column)
    changing = np.flatnonzero(by_slot.nunique().to_numpy() > 1)
    if changing.size:
        k = int(changing[0])
        in_slot = np.flatnonzero(column == k)
        distinct = np.unique(error_std[in_slot])
        raise ValueError(
            f"{path}: error_std of {labels[k]} differs between times "
            f"({', '.join(f'{s:g}' for s in distinct)}) at {rows.many(position[in_slot])}; "
            f"the noise model is static: use one error_std per slot"
        )
    return by_slot.first().to_numpy(dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# gridded observations

_ERROR_SUFFIX = "_error_std"


def _open_dataset(path: Path) -> xr.Dataset:
    xr = _import_xarray()
    suffix = path.suffix.lower()
    if suffix not in (".nc", ".zarr"):
        raise ValueError(
            f"{path}: unsupported gridded observation suffix {path.suffix!r}; expected .nc or .zarr"
        )
    try:
        if suffix == ".nc":
            return xr.open_dataset(path)
        # Small observation stores are often written without consolidated metadata; xarray's
        # fallback to reading them unconsolidated is fine here, so its warning is noise.
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message="Failed to open Zarr store with consolidated metadata"
            )
            return xr.open_dataset(path, engine="zarr", chunks=None)
    except (ValueError, OSError, KeyError) as error:
        from .datasets import unreadable

        raise unreadable(path, error) from None


def _check_coordinate(path: Path, ds: xr.Dataset, name: str, expected: np.ndarray) -> None:
    if name not in ds.coords and name not in ds.dims:
        raise ValueError(f"{path}: no coordinate {name!r}; found {', '.join(map(str, ds.dims))}")
    found = np.asarray(ds[name].values, dtype=np.float64)
    if found.shape != expected.shape:
        raise ValueError(
            f"{path}: coordinate {name!r} has {found.size} values, the grid has {expected.size}"
        )
    diff = found - expected
    if name == "lon":
        diff = (diff + 180.0) % 360.0 - 180.0
    bad = np.flatnonzero(~(np.abs(diff) <= COORDINATE_TOLERANCE))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"{path}: coordinate {name!r} does not match the grid: entry {i} is {found[i]}, "
            f"the grid has {expected[i]} (tolerance {COORDINATE_TOLERANCE:g})"
        )


def read_gridded_observations(
    path: str | Path,
    grid: GridSpec,
    cycle_times: Sequence[np.datetime64] | pd.DatetimeIndex,
    error_std: float | Mapping[str, float] | None = None,
) -> ObservationSet:
    """Read gridded observations (netCDF ``.nc`` or a ``.zarr`` directory) onto ``grid``.

    Every data variable with ``lat`` and ``lon`` dimensions (other than the error variables
    below) is an observed model variable with dimensions ``(time, [level,] lat, lon)`` in any
    order; a variable without a ``level`` dimension is the grid's surface channel of that
    name. ``lat`` and ``lon`` must equal the grid's (in order, within 1e-6 degrees;
    longitudes are compared modulo 360); ``latitude``/``longitude`` are accepted as names,
    and the level coordinate may be named ``level`` or ``grid.level_name``. NaN means not
    observed. The observed grid points are those finite at least once; they are observed by
    :class:`~filtrax.observations.operators.PointSelection` in the frame's C order (channel,
    lat, lon). File times must be cycle times; cycles missing from the file are all NaN.

    **Error standard deviation:** the ``error_std`` argument (a float applies to every
    variable, a mapping to the variables it names) or the file's data variable
    ``<variable>_error_std``, with the variable's dimensions minus ``time`` (or a subset of
    them, broadcast), one value per point. A variable covered by both must get the same
    values from both (an error names the two otherwise: one of them is mistaken); a
    variable covered by neither is an error.

    Args:
        path: a ``.nc`` file or ``.zarr`` directory.
        grid: the model grid.
        cycle_times: the assimilation cycle times, one per row of ``values``.
        error_std: see above.

    Returns:
        The :class:`ObservationSet` with ``values`` of shape ``(len(cycle_times), points)``.

    Raises:
        ValueError: an unsupported suffix, a coordinate that does not match the grid (named),
            an unknown variable or level (the available ones listed), a time that is not a
            cycle time, an infinite value, a missing or non-positive error std, or a mask that
            selects no grid point.
    """
    path = Path(path)
    cycles = _cycle_index(cycle_times)
    with _open_dataset(path) as ds:
        return _gridded_observations(ds.load(), path, grid, cycles, error_std)


def _gridded_observations(
    ds: xr.Dataset,
    path: Path,
    grid: GridSpec,
    cycles: pd.DatetimeIndex,
    error_std: float | Mapping[str, float] | None,
) -> ObservationSet:
    renames = {"latitude": "lat", "longitude": "lon"}
    if grid.level_name != "level":
        renames[grid.level_name] = "level"
    ds = ds.rename({k: v for k, v in renames.items() if k in ds.variables or k in ds.dims})
    _check_coordinate(path, ds, "lat", np.asarray(grid.latitudes, dtype=np.float64))
    _check_coordinate(path, ds, "lon", np.asarray(grid.longitudes, dtype=np.float64))

    observed_names = _gridded_variables(ds, path, grid)
    per_variable = _error_std_argument(path, error_std, observed_names)
    times, cycle = _gridded_cycles(ds, path, cycles)

    num_lat, num_lon = len(grid.latitudes), len(grid.longitudes)
    flat_parts: list[np.ndarray] = []
    value_parts: list[np.ndarray] = []
    std_parts: list[np.ndarray] = []
    channel_source: dict[int, str] = {}
    for name in observed_names:
        var = ds[name]
        dims = set(map(str, var.dims))
        if dims not in ({"time", "lat", "lon"}, {"time", "level", "lat", "lon"}):
            raise ValueError(
                f"{path}: variable {name!r} has dimensions {tuple(map(str, var.dims))}; "
                f"expected (time, [level,] lat, lon)"
            )
        has_level = "level" in dims
        var = var.transpose(*(("time", "level") if has_level else ("time",)), "lat", "lon")
        data = np.asarray(var.values, dtype=np.float64)
        if not has_level:
            data = data[:, None]
        if np.isinf(data).any():
            raise ValueError(f"{path}: variable {name!r} has infinite values; use NaN")
        levels = [float(v) for v in ds["level"].values] if has_level else [None]
        std_field = _error_std_field(path, ds, name, per_variable, has_level, data.shape[1:])

        for k, lev in enumerate(levels):
            try:
                chan = grid.channel_index(name, lev)
            except ValueError as err:
                raise ValueError(f"{path}: {err}") from None
            here = f"{name!r}" + ("" if lev is None else f" at level {lev:g}")
            if chan in channel_source:
                raise ValueError(
                    f"{path}: {here} and {channel_source[chan]} are the same grid channel "
                    f"{grid.channels[chan].label()}"
                )
            channel_source[chan] = here
            mask = np.isfinite(data[:, k]).any(axis=0)
            if not mask.any():
                continue
            points = np.flatnonzero(mask)
            std = std_field[k].reshape(-1)[points]
            if (i := _first_bad(~(np.isfinite(std) & (std > 0.0)))) is not None:
                lat_i, lon_i = divmod(int(points[i]), num_lon)
                raise ValueError(
                    f"{path}: error std of {here} at (lat {grid.latitudes[lat_i]:g}, "
                    f"lon {grid.longitudes[lon_i]:g}) is {std[i]}; it must be finite and > 0"
                )
            values = np.full((len(cycles), points.size), np.nan)
            values[cycle] = data[:, k].reshape(len(times), -1)[:, points]
            flat_parts.append(chan * num_lat * num_lon + points)
            value_parts.append(values)
            std_parts.append(std)

    if not flat_parts:
        raise ValueError(f"{path}: observation mask selects no grid point")
    return _grid_point_set(grid, flat_parts, value_parts, std_parts)


def _gridded_variables(ds: xr.Dataset, path: Path, grid: GridSpec) -> list[str]:
    """The observed variables (on lat and lon, known to the grid); each ``<name>_error_std``
    field must belong to one of them."""
    names = [str(n) for n in ds.data_vars if {"lat", "lon"} <= set(map(str, ds[n].dims))]
    observed_names = [n for n in names if not n.endswith(_ERROR_SUFFIX)]
    error_names = [n for n in names if n.endswith(_ERROR_SUFFIX)]
    if not observed_names:
        raise ValueError(
            f"{path}: no observation variable with lat and lon dimensions; available "
            f"variables: {', '.join(grid.variables)}"
        )
    for name in observed_names:
        if name not in grid.variables:
            raise ValueError(
                f"{path}: unknown variable {name!r}; available: {', '.join(grid.variables)}"
            )
    for name in error_names:
        if name.removesuffix(_ERROR_SUFFIX) not in observed_names:
            raise ValueError(
                f"{path}: {name!r} has no observation variable {name.removesuffix(_ERROR_SUFFIX)!r}"
            )
    return observed_names


def _gridded_cycles(ds: xr.Dataset, path: Path, cycles):
    """The file's times, each one a cycle time and none twice, and their cycle indices."""
    if "time" not in ds.dims:
        raise ValueError(f"{path}: no 'time' dimension")
    times = _utc_naive(ds["time"].values)
    if times.has_duplicates:
        raise ValueError(f"{path}: duplicate time {_format_time(times[times.duplicated()][0])}")
    cycle = cycles.get_indexer(times)
    if (i := _first_bad(cycle < 0)) is not None:
        raise ValueError(f"{path}: {_not_a_cycle(times[i], cycles)}")
    return times, cycle


def _grid_point_set(grid: GridSpec, flat_parts, value_parts, std_parts) -> ObservationSet:
    """Observed grid points in flat state order, with their values, noise and labels."""
    num_lat, num_lon = len(grid.latitudes), len(grid.longitudes)
    flat = np.concatenate(flat_parts)
    order = np.argsort(flat, kind="stable")
    flat = flat[order]
    values = np.concatenate(value_parts, axis=1)[:, order]
    std = np.concatenate(std_parts)[order]
    labels = []
    for index in flat.tolist():
        chan, rest = divmod(index, num_lat * num_lon)
        lat_i, lon_i = divmod(rest, num_lon)
        labels.append(
            f"{grid.channels[chan].label()} at (lat {grid.latitudes[lat_i]:g}, "
            f"lon {grid.longitudes[lon_i]:g})"
        )
    operator = PointSelection(grid.shape, flat.astype(np.int64))
    return ObservationSet(values, operator, std**2, labels)


class ErrorStdConflictError(ValueError):
    """An error std given to a reader that differs from the file's own (``field``)."""

    def __init__(self, message: str, *, given: float, found: float, field: str):
        super().__init__(message)
        self.given, self.found, self.field = given, found, field


def _error_std_argument(
    path: Path, error_std: float | Mapping[str, float] | None, observed: Sequence[str]
) -> dict[str, float]:
    """The per-variable error std the argument gives (variables it does not cover absent)."""
    if error_std is None:
        return {}
    if isinstance(error_std, Mapping):
        unknown = [k for k in error_std if k not in observed]
        if unknown:
            raise ValueError(
                f"{path}: error_std names {', '.join(map(repr, unknown))}, not an observation "
                f"variable of the file; file variables: {', '.join(observed)}"
            )
        given = {str(k): v for k, v in error_std.items()}
    elif isinstance(error_std, numbers.Real):
        given = dict.fromkeys(observed, error_std)
    else:
        raise ValueError(
            f"error_std must be a float, a mapping of variable to float, or None; got "
            f"{type(error_std).__name__}"
        )
    for name, value in given.items():
        if not (isinstance(value, numbers.Real) and math.isfinite(value) and value > 0):
            raise ValueError(f"error_std of {name!r} is {value!r}; it must be finite and > 0")
    return {k: float(v) for k, v in given.items()}


def _error_std_field(
    path: Path,
    ds: xr.Dataset,
    name: str,
    per_variable: Mapping[str, float],
    has_level: bool,
    shape: tuple[int, ...],
) -> np.ndarray:
    """The error std of ``name`` on ``(level, lat, lon)`` (level of size 1 without levels)."""
    error_name = name + _ERROR_SUFFIX
    if error_name not in ds.data_vars:
        if name in per_variable:
            return np.full(shape, per_variable[name])
        raise ValueError(
            f"{path}: no error std for variable {name!r}: give one (observations.error_std, "
            f"or error_std= in Python) or add a data variable {error_name!r}"
        )
    field = ds[error_name]
    allowed = {"level", "lat", "lon"} if has_level else {"lat", "lon"}
    extra = set(map(str, field.dims)) - allowed
    if extra:
        raise ValueError(
            f"{path}: {error_name!r} has dimensions {tuple(map(str, field.dims))}; expected "
            f"those of {name!r} without time, i.e. a subset of {tuple(sorted(allowed))}"
        )
    template = ds[name].isel(time=0, drop=True)
    field = field.broadcast_like(template)
    field = field.transpose(*(("level",) if has_level else ()), "lat", "lon")
    values = np.asarray(field.values, dtype=np.float64)
    values = values if has_level else values[None]
    given = per_variable.get(name)
    order = ("time", *(("level",) if has_level else ()), "lat", "lon")
    observed = np.asarray(np.isfinite(np.asarray(ds[name].transpose(*order).values)).any(axis=0))
    observed = observed if has_level else observed[None]
    if given is not None and not np.allclose(values[observed], given, rtol=1e-6):
        found = values[observed][~np.isclose(values[observed], given, rtol=1e-6)][0]
        raise ErrorStdConflictError(
            f"{path}: the error std given for {name!r} ({given:g}) differs from the file's "
            f"{error_name!r} ({found:g}); give one or the other, or make them agree",
            given=given,
            found=float(found),
            field=error_name,
        )
    return values


SITE_COLUMNS = ("time", "site", "value")


def read_site_table(
    path: str | Path,
    num_sites: int,
    time_step: float,
    num_cycles: int,
    default_error_std: float,
    *,
    variable: str = "X",
) -> ObservationSet:
    r"""Read observations of a site-indexed state (e.g. Lorenz-96's ``X``) from CSV or Parquet.

    Columns ``time, site, value`` and optionally ``error_std`` (else ``default_error_std``).
    ``time`` is model time since the start of the run: cycle ``k`` (0-based) is valid at
    :math:`(k+1)\,\Delta t`, so a time must be a positive multiple of ``time_step`` up to
    ``num_cycles * time_step`` (relative tolerance 1e-6). ``site`` is an integer in
    ``0 .. num_sites - 1``. Each distinct site is one observation slot (sorted by site); a
    slot without a row at a cycle is NaN there.

    Raises:
        ValueError: naming the file, the column and the row (CSV: 1-based line number with
            the header on line 1; Parquet: 0-based row) for a missing column, a site out of
            range or not an integer, a time off the cycle grid, a missing value, a
            non-positive error_std, duplicate ``(time, site)`` rows, or an error_std that
            changes between times for one site.
    """
    path = Path(path)
    table, rows = _read_table(path)
    optional = ["error_std"] if "error_std" in table.columns else []
    table, error = _observation_rows(path, table, rows, SITE_COLUMNS, optional)
    position = table.index.to_numpy()

    times = _numeric_column(table, "time", error)
    sites = _numeric_column(table, "site", error)
    value = _numeric_column(table, "value", error)
    if "error_std" in table.columns:
        error_std = _numeric_column(table, "error_std", error)
        error_std = np.where(np.isnan(error_std), default_error_std, error_std)
    else:
        error_std = np.full(len(table), float(default_error_std))

    bad_site = ~np.isfinite(sites) | (sites != np.round(sites))
    if (i := _first_bad(bad_site)) is not None:
        raise error(i, f"column 'site' of variable {variable}: {sites[i]} is not an integer index")
    if (i := _first_bad((sites < 0) | (sites >= num_sites))) is not None:
        raise error(
            i,
            f"column 'site' of variable {variable}: index {int(sites[i])} is out of range; "
            f"the model has sites 0..{num_sites - 1}",
        )
    steps = times / time_step
    cycle = np.round(steps).astype(np.int64) - 1
    off_grid = ~np.isfinite(times) | (np.abs(steps - np.round(steps)) > 1e-6 * np.maximum(1, steps))
    off_grid |= (cycle < 0) | (cycle >= num_cycles)
    if (i := _first_bad(off_grid)) is not None:
        raise error(
            i,
            f"column 'time' of variable {variable}: {times[i]} is not a cycle time; cycles are "
            f"at k * {time_step} for k = 1..{num_cycles}",
        )
    if (i := _first_bad(np.isnan(value))) is not None:
        raise error(i, f"column 'value' of variable {variable} at site {int(sites[i])} is missing")
    if (i := _first_bad(~(error_std > 0.0) | ~np.isfinite(error_std))) is not None:
        raise error(i, f"column 'error_std' is {error_std[i]}; it must be > 0")

    site = sites.astype(np.int64)
    slots = np.unique(site)
    observed = (cycle, np.searchsorted(slots, site), value, error_std)
    values, variance = _site_values(observed, (num_cycles, len(slots)), variable, site, times,
                                    rows, position, error)  # fmt: skip
    operator = PointSelection((num_sites,), jnp.asarray(slots))
    labels = [f"{variable}[{s}]" for s in slots]
    return ObservationSet(values, operator, variance, labels)
