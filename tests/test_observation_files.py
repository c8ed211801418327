"""Reading station tables (CSV, Parquet) and gridded observations (netCDF, zarr)."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from filtrax.grid import Channel, GridSpec
from filtrax.io.observation_files import (
    ObservationSet,
    read_gridded_observations,
    read_station_table,
)
from filtrax.observations.interpolation import BilinearInterpolation
from filtrax.observations.model import ObservationModel
from filtrax.observations.operators import PointSelection

GRID = GridSpec.regular(
    4, 8, [Channel("t2m"), Channel("t", 850.0), Channel("t", 500.0)], level_name="pressure"
)  # lat -67.5, -22.5, 22.5, 67.5; lon 0, 45, ..., 315
CYCLES = pd.date_range("2024-01-01", periods=3, freq="6h")

# Station A at (10, 20), between grid points; station B at (-22.5, -45) = grid point (1, 7).
A, B = (10.0, 20.0), (-22.5, -45.0)
STD = {(A, "t2m"): 0.5, (A, "t"): 1.0, (B, "t2m"): 0.25, (B, "t"): 2.0}


def station_rows() -> list[dict]:
    rows = []
    for c, time in enumerate(CYCLES):
        for station in (A, B):
            for variable, level in (("t2m", np.nan), ("t", 850.0)):
                if station == B and variable == "t" and c == 1:
                    continue  # station B has no upper-air observation at the second cycle
                rows.append(
                    {
                        "time": time,
                        "lat": station[0],
                        "lon": station[1],
                        "level": level,
                        "variable": variable,
                        "value": 100.0 * c + 10.0 * (station == B) + (variable == "t"),
                        "error_std": STD[(station, variable)],
                    }
                )
    return rows


def write_csv(tmp_path, rows, name="obs.csv"):
    path = tmp_path / name
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def check_station_set(obs: ObservationSet):
    # Slots sorted by variable ("t" < "t2m"), level, lat, lon; stations numbered by (lat, lon).
    assert obs.labels == [
        "station 0 t@850 at (lat -22.5, lon 315)",
        "station 1 t@850 at (lat 10, lon 20)",
        "station 0 t2m at (lat -22.5, lon 315)",
        "station 1 t2m at (lat 10, lon 20)",
    ]
    expected = np.array(
        [[11.0, 1.0, 10.0, 0.0], [np.nan, 101.0, 110.0, 100.0], [211.0, 201.0, 210.0, 200.0]]
    )
    np.testing.assert_array_equal(obs.values, expected)
    np.testing.assert_array_equal(obs.noise_variance, [4.0, 1.0, 0.0625, 0.25])
    assert isinstance(obs.operator, BilinearInterpolation)
    assert obs.operator.state_shape == GRID.shape

    x = jnp.asarray(np.random.default_rng(0).normal(size=GRID.shape).astype(np.float32))
    y = np.asarray(obs.operator(x))
    t, u = 32.5 / 45.0, 20.0 / 45.0

    def bilinear(c):
        return (
            (1 - t) * (1 - u) * x[c, 1, 0]
            + (1 - t) * u * x[c, 1, 1]
            + t * (1 - u) * x[c, 2, 0]
            + t * u * x[c, 2, 1]
        )

    assert y[0] == x[1, 1, 7] and y[2] == x[0, 1, 7]  # station B is on a grid point
    np.testing.assert_allclose(y[[1, 3]], [bilinear(1), bilinear(0)], rtol=1e-5)

    model = obs.observation_model()
    assert isinstance(model, ObservationModel) and model.num_observations == 4
    model.check_observations(obs.values)
    assert np.isfinite(float(model.log_likelihood(jnp.asarray(obs.values[1], jnp.float32), x)))


def test_station_csv_round_trip(tmp_path):
    obs = read_station_table(write_csv(tmp_path, station_rows()), GRID, CYCLES)
    check_station_set(obs)


def test_station_csv_accepts_numpy_times_and_shuffled_rows(tmp_path):
    rows = station_rows()[::-1]
    cycles = [np.datetime64(t.to_datetime64(), "s") for t in CYCLES]
    check_station_set(read_station_table(str(write_csv(tmp_path, rows)), GRID, cycles))


def test_station_parquet_round_trip(tmp_path):
    pytest.importorskip("pyarrow")
    path = tmp_path / "obs.parquet"
    pd.DataFrame(station_rows()).to_parquet(path)
    check_station_set(read_station_table(path, GRID, CYCLES))


def test_station_parquet_errors_name_the_row(tmp_path):
    pytest.importorskip("pyarrow")
    rows = station_rows()
    rows[3]["lat"] = 91.0
    path = tmp_path / "obs.parquet"
    pd.DataFrame(rows).to_parquet(path)
    with pytest.raises(ValueError, match=r"obs.parquet: row 3: lat 91.0 outside \[-90, 90\]"):
        read_station_table(path, GRID, CYCLES)


def test_station_table_without_level_column(tmp_path):
    rows = [r for r in station_rows() if r["variable"] == "t2m"]
    for r in rows:
        del r["level"]
    obs = read_station_table(write_csv(tmp_path, rows), GRID, CYCLES)
    assert obs.labels == [
        "station 0 t2m at (lat -22.5, lon 315)",
        "station 1 t2m at (lat 10, lon 20)",
    ]


def test_blank_csv_lines_keep_their_line_numbers(tmp_path):
    path = tmp_path / "obs.csv"
    path.write_text(
        "time,lat,lon,variable,value,error_std\n"
        "2024-01-01T00:00,10,20,t2m,1.0,0.5\n"
        "\n"
        "2024-01-01T06:00,10,20,t2m,nan,0.5\n"
    )
    with pytest.raises(ValueError, match=r"obs.csv: line 4: value is nan"):
        read_station_table(path, GRID, CYCLES)


def modified(**changes):
    """Station rows with ``changes = {field: (row_index, new_value)}``."""
    rows = station_rows()
    for field, (i, value) in changes.items():
        rows[i][field] = value
    return rows


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        (modified(variable=(3, "q")), r"line 5: unknown variable 'q'; available: t2m, t"),
        (
            modified(level=(1, 700.0)),
            r"line 3: variable 't' has no level 700.0; available pressures: 850, 500",
        ),
        (modified(level=(0, 850.0)), r"line 2: variable 't2m' has no level 850.0"),
        (modified(lat=(4, 91.0)), r"line 6: lat 91.0 outside \[-90, 90\]"),
        (modified(lat=(4, -90.5)), r"line 6: lat -90.5 outside"),
        (modified(lon=(5, 360.0)), r"line 7: lon 360.0 outside \[-180, 360\)"),
        (modified(lon=(5, -181.0)), r"line 7: lon -181.0 outside"),
        (modified(lat=(2, "north")), r"line 4: lat 'north' is not a number"),
        (modified(lon=(2, np.nan)), r"line 4: lon is missing"),
        (
            modified(time=(6, pd.Timestamp("2024-01-01T03:00"))),
            r"line 8: time 2024-01-01T03:00:00 is not a cycle time; nearest cycle times: "
            r"2024-01-01T00:00:00, 2024-01-01T06:00:00",
        ),
        (
            modified(time=(6, pd.Timestamp("2025-01-01"))),
            r"line 8: time 2025-01-01T00:00:00 is not a cycle time; nearest cycle times: "
            r"2024-01-01T12:00:00$",
        ),
        (modified(time=(1, "yesterday")), r"line 3: time 'yesterday' is not a valid ISO 8601"),
        (modified(error_std=(2, 0.0)), r"line 4: error_std 0.0 must be finite and > 0"),
        (modified(error_std=(2, -1.0)), r"line 4: error_std -1.0 must be finite and > 0"),
        (modified(error_std=(2, np.nan)), r"line 4: error_std nan must be finite and > 0"),
        (modified(value=(9, np.nan)), r"line 11: value is nan; leave the row out"),
    ],
)
def test_station_table_errors(tmp_path, rows, match):
    path = write_csv(tmp_path, rows)
    with pytest.raises(ValueError, match=match) as info:
        read_station_table(path, GRID, CYCLES)
    assert str(path) in str(info.value)


def test_empty_variable_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="line 4: variable is empty"):
        read_station_table(write_csv(tmp_path, modified(variable=(2, ""))), GRID, CYCLES)


def test_missing_columns_are_listed(tmp_path):
    rows = [{k: v for k, v in r.items() if k not in ("value", "error_std")} for r in station_rows()]
    with pytest.raises(ValueError, match=r"obs.csv: missing required column\(s\) value, error_std"):
        read_station_table(write_csv(tmp_path, rows), GRID, CYCLES)


def test_unsupported_suffix(tmp_path):
    with pytest.raises(ValueError, match=r"unsupported station table suffix '.txt'"):
        read_station_table(tmp_path / "obs.txt", GRID, CYCLES)


def test_duplicate_rows_list_their_lines(tmp_path):
    rows = station_rows()
    rows.append(dict(rows[1]))  # same time, place, level and variable as line 3
    with pytest.raises(ValueError, match=r"duplicate observations .* at lines 3, 13$"):
        read_station_table(write_csv(tmp_path, rows), GRID, CYCLES)


def test_all_duplicate_groups_are_listed(tmp_path):
    rows = station_rows()
    rows += [dict(rows[1]), dict(rows[5]), dict(rows[1])]
    with pytest.raises(ValueError, match=r"at lines 3, 13, 15; lines 7, 14$"):
        read_station_table(write_csv(tmp_path, rows), GRID, CYCLES)


def test_time_zones_are_converted_to_utc(tmp_path):
    path = tmp_path / "obs.csv"
    path.write_text(
        "time,lat,lon,variable,value,error_std\n"
        "2024-01-01T00:00Z,10,20,t2m,1.0,0.5\n"
        "2024-01-01T08:00+02:00,10,20,t2m,2.0,0.5\n"
    )
    obs = read_station_table(path, GRID, CYCLES.tz_localize("UTC"))
    np.testing.assert_array_equal(obs.values, [[1.0], [2.0], [np.nan]])


def test_duplicates_after_longitude_normalisation(tmp_path):
    rows = station_rows()
    rows.append(dict(rows[2], lon=315.0))  # station B is at lon -45 == 315
    with pytest.raises(ValueError, match=r"duplicate observations .* at lines 4, 13$"):
        read_station_table(write_csv(tmp_path, rows), GRID, CYCLES)


def test_error_std_must_be_static(tmp_path):
    rows = modified(error_std=(4, 0.7))  # station A, t2m, second cycle (line 6)
    with pytest.raises(
        ValueError,
        match=r"error_std of station 1 t2m at \(lat 10, lon 20\) differs between times "
        r"\(0.5, 0.7\) at lines 2, 6, 9; the noise model is static",
    ):
        read_station_table(write_csv(tmp_path, rows), GRID, CYCLES)


def test_bad_cycle_times(tmp_path):
    path = write_csv(tmp_path, station_rows())
    with pytest.raises(ValueError, match="cycle_times is empty"):
        read_station_table(path, GRID, [])
    with pytest.raises(ValueError, match="cycle_times has duplicates"):
        read_station_table(path, GRID, CYCLES.append(CYCLES[:1]))


# ---------------------------------------------------------------------------------------------
# gridded observations


def gridded_dataset(with_file_std: bool = False):
    """t (time, level, lat, lon) and t2m (time, lat, lon), mostly NaN, at cycles 0 and 2."""
    xr = pytest.importorskip("xarray")
    t = np.full((2, 2, 4, 8), np.nan)
    t[0, 0, 1, 2] = 1.0  # t@850 at (-22.5, 90), cycle 0
    t[1, 0, 1, 2] = 3.0  # same point, cycle 2
    t[1, 1, 3, 7] = 2.0  # t@500 at (67.5, 315), cycle 2
    t2m = np.full((2, 4, 8), np.nan)
    t2m[1, 0, 0] = 5.0  # t2m at (-67.5, 0), cycle 2
    t2m[0, 2, 4] = 6.0  # t2m at (22.5, 180), cycle 0
    data = {
        "t": (("time", "pressure", "lat", "lon"), t),
        "t2m": (("time", "lat", "lon"), t2m.astype(np.float32)),
    }
    if with_file_std:
        std = np.full((4, 8), 0.3)
        std[2, 4] = 0.4
        data["t2m_error_std"] = (("lat", "lon"), std)
    return xr.Dataset(
        data,
        coords={
            "time": CYCLES[[0, 2]],
            "pressure": [850.0, 500.0],
            "lat": list(GRID.latitudes),
            "lon": list(GRID.longitudes),
        },
    )


def test_gridded_netcdf_round_trip(tmp_path):
    path = tmp_path / "obs.nc"
    gridded_dataset().to_netcdf(path)
    obs = read_gridded_observations(path, GRID, CYCLES, error_std={"t": 1.0, "t2m": 0.5})
    assert obs.labels == [
        "t2m at (lat -67.5, lon 0)",
        "t2m at (lat 22.5, lon 180)",
        "t@850 at (lat -22.5, lon 90)",
        "t@500 at (lat 67.5, lon 315)",
    ]
    nan = np.nan
    np.testing.assert_array_equal(
        obs.values, [[nan, 6.0, 1.0, nan], [nan, nan, nan, nan], [5.0, nan, 3.0, 2.0]]
    )
    np.testing.assert_array_equal(obs.noise_variance, [0.25, 0.25, 1.0, 1.0])
    assert isinstance(obs.operator, PointSelection)
    np.testing.assert_array_equal(np.asarray(obs.operator.indices), [0, 20, 32 + 10, 64 + 31])
    x = jnp.arange(math.prod(GRID.shape), dtype=jnp.float32).reshape(GRID.shape)
    np.testing.assert_array_equal(np.asarray(obs.operator(x)), [0.0, 20.0, 42.0, 95.0])
    assert obs.observation_model().num_observations == 4


def test_gridded_error_std_precedence(tmp_path):
    path = tmp_path / "obs.nc"
    gridded_dataset(with_file_std=True).to_netcdf(path)
    # t from the argument, t2m per point from the file.
    obs = read_gridded_observations(path, GRID, CYCLES, error_std={"t": 2.0})
    np.testing.assert_allclose(obs.noise_variance, [0.09, 0.16, 4.0, 4.0])
    # An argument that disagrees with the file's own std is refused, naming both.
    with pytest.raises(ValueError, match=r"given for 't2m' \(0.3\) differs from the file's"):
        read_gridded_observations(path, GRID, CYCLES, error_std={"t": 2.0, "t2m": 0.3})
    with pytest.raises(ValueError, match=r"no error std for variable 't'.*'t_error_std'"):
        read_gridded_observations(path, GRID, CYCLES)
    with pytest.raises(ValueError, match=r"error_std names 'q', not an observation variable"):
        read_gridded_observations(path, GRID, CYCLES, error_std={"q": 1.0, "t": 1.0})
    with pytest.raises(ValueError, match=r"error_std of 't' is -1.0"):
        read_gridded_observations(path, GRID, CYCLES, error_std={"t": -1.0})


def test_gridded_file_error_std_must_be_positive(tmp_path):
    ds = gridded_dataset(with_file_std=True)
    ds["t2m_error_std"][2, 4] = 0.0
    path = tmp_path / "obs.nc"
    ds.to_netcdf(path)
    with pytest.raises(ValueError, match=r"error std of 't2m' at \(lat 22.5, lon 180\) is 0.0"):
        read_gridded_observations(path, GRID, CYCLES, error_std={"t": 1.0})


def test_gridded_zarr_round_trip(tmp_path):
    pytest.importorskip("zarr")
    path = tmp_path / "obs.zarr"
    gridded_dataset().to_zarr(path, consolidated=False)
    obs = read_gridded_observations(path, GRID, CYCLES, error_std=1.0)
    assert obs.values.shape == (3, 4)


@pytest.mark.parametrize(
    ("coordinate", "shift", "match"),
    [
        ("lat", 1e-3, r"coordinate 'lat' does not match the grid: entry 0 is -67.499"),
        ("lon", 1e-3, r"coordinate 'lon' does not match the grid: entry 0 is 0.001"),
        ("lon", -360.0, None),  # longitudes are compared modulo 360
        ("lat", 1e-8, None),  # within the tolerance
    ],
)
def test_gridded_coordinates_must_match(tmp_path, coordinate, shift, match):
    ds = gridded_dataset()
    ds = ds.assign_coords({coordinate: ds[coordinate] + shift})
    path = tmp_path / "obs.nc"
    ds.to_netcdf(path)
    if match is None:
        assert read_gridded_observations(path, GRID, CYCLES, 1.0).values.shape == (3, 4)
    else:
        with pytest.raises(ValueError, match=match):
            read_gridded_observations(path, GRID, CYCLES, 1.0)


def test_gridded_coordinate_size_mismatch(tmp_path):
    path = tmp_path / "obs.nc"
    gridded_dataset().isel(lat=slice(0, 3)).to_netcdf(path)
    with pytest.raises(ValueError, match="coordinate 'lat' has 3 values, the grid has 4"):
        read_gridded_observations(path, GRID, CYCLES, 1.0)


def test_gridded_unknown_variable_and_level(tmp_path):
    path = tmp_path / "obs.nc"
    gridded_dataset().rename({"t2m": "q"}).to_netcdf(path)
    with pytest.raises(ValueError, match=r"unknown variable 'q'; available: t2m, t"):
        read_gridded_observations(path, GRID, CYCLES, 1.0)
    path = tmp_path / "obs2.nc"
    gridded_dataset().assign_coords(pressure=[850.0, 700.0]).to_netcdf(path)
    with pytest.raises(ValueError, match=r"'t' has no level 700.0; available pressures: 850, 500"):
        read_gridded_observations(path, GRID, CYCLES, 1.0)


def test_gridded_times_must_be_cycle_times(tmp_path):
    path = tmp_path / "obs.nc"
    ds = gridded_dataset().assign_coords(time=[CYCLES[0], CYCLES[1] + pd.Timedelta("1h")])
    ds.to_netcdf(path)
    with pytest.raises(
        ValueError,
        match=r"time 2024-01-01T07:00:00 is not a cycle time; nearest cycle times: "
        r"2024-01-01T06:00:00, 2024-01-01T12:00:00",
    ):
        read_gridded_observations(path, GRID, CYCLES, 1.0)


def test_gridded_empty_mask(tmp_path):
    path = tmp_path / "obs.nc"
    (gridded_dataset() * np.nan).to_netcdf(path)
    with pytest.raises(ValueError, match="observation mask selects no grid point"):
        read_gridded_observations(path, GRID, CYCLES, 1.0)


def test_gridded_unsupported_suffix(tmp_path):
    with pytest.raises(ValueError, match=r"unsupported gridded observation suffix '.grib'"):
        read_gridded_observations(tmp_path / "obs.grib", GRID, CYCLES, 1.0)


def test_plausible_ranges_refuse_unit_mistakes_and_accept_physical_values():
    """°C in a K field and hPa in a Pa field are refused, naming the units; physical values
    pass; a dimensionless field is not checked. The unit of each observation is found by
    observing an indicator frame, so an interpolating operator works as a selecting one."""
    from filtrax.io import plausibility

    grid = GridSpec.regular(4, 8, [Channel("t"), Channel("ps"), Channel("x")])
    shape = grid.shape
    units = ("K", "Pa", "1")
    model = ObservationModel(PointSelection(shape, np.array([0, 32 + 5, 64 + 9])), 1.0)
    labels = ["t", "ps", "x"]
    physical = np.array([[288.0, 101325.0, 1e6]])
    plausibility.check_observations(physical, model, units, labels, "obs.csv")
    for values, fragment in (
        ([[15.0, 101325.0, 0.0]], "t at cycle 0 is 15 K, outside the plausible range 150"),
        ([[288.0, 1013.0, 0.0]], "ps at cycle 0 is 1013 Pa, outside the plausible range"),
    ):
        with pytest.raises(ValueError, match=fragment):
            plausibility.check_observations(np.array(values), model, units, labels, "o")
    between = BilinearInterpolation(grid, [0], [10.0], [20.0])  # between grid points
    interpolated = ObservationModel(between, 1.0)
    plausibility.check_observations(np.array([[250.0]]), interpolated, units, ["t"], "o")
    with pytest.raises(ValueError, match="°C instead of K"):
        plausibility.check_observations(np.array([[-5.0]]), interpolated, units, ["t"], "o")
    frames = np.zeros((2, *shape))
    frames[:, 0], frames[:, 1] = 290.0, 1.0e5
    plausibility.check_frames(frames, units, ["T", "ps", "x"], "truth.nc")
    frames[1, 1, 2, 3] = 990.0
    with pytest.raises(ValueError, match=r"truth\.nc: ps at time index 1 is 990 Pa"):
        plausibility.check_frames(frames, units, ["T", "ps", "x"], "truth.nc")
