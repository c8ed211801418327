"""A catalogue of bad inputs, each tried as a careful user would, and what filtrax must answer.

Each :class:`Case` builds its inputs in a fresh directory and either runs the command line
in-process (``filtrax run …``) or calls the Python API. What it expects:

* ``"error"``: exit code 2 and one ``error: …`` line holding every ``fragment`` (the file or
  field, the value, what was expected), no traceback; for the API, a ``ValueError`` or
  ``TypeError`` raised by filtrax whose message holds the fragments.
* ``"accepted"``: the input is valid after all (exit code 0).

Every file that existed before the attempt in the case's directory must be byte-identical
after it (``protected``): nothing a user had is lost or changed.

``tests/test_bad_input.py`` asserts every case. Run this module as a script for the census
the issue asks for (outcome class per case, counts per class), without asserting::

    .venv/bin/python tests/bad_input_catalogue.py
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from click.testing import CliRunner

from filtrax.cli import main
from test_runs import SMALL as SMALL_CONFIG

ROOT = Path(__file__).resolve().parents[1]

SMALL = SMALL_CONFIG.format(cycles=2)  # the small two-variable Gaussian-field config
LAT = np.linspace(-90 + 180 / 16, 90 - 180 / 16, 8)  # the small config's grid
LON = np.arange(16) * 360 / 16
CYCLE_TIMES = pd.to_datetime(["2000-01-01T12:00", "2000-01-02T00:00"])


@dataclasses.dataclass(frozen=True)
class Case:
    """One bad input: ``build(folder) -> argv`` (CLI) or a callable (API), and the answer."""

    name: str
    family: str
    build: Callable[[Path], list[str] | Callable[[], object]]
    fragments: tuple[str, ...] = ()
    expect: str = "error"


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What happened: ``kind`` is clear / unclear / traceback / accepted / changed files."""

    kind: str
    text: str


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def small_config(folder: Path, text: str = SMALL, name: str = "config.toml") -> str:
    path = folder / name
    path.write_text(text)
    return str(path)


def run_args(folder: Path, *extra: str, config: str | None = None) -> list[str]:
    config = config or small_config(folder)
    return ["run", config, "--out", str(folder / "run"), "--quiet", *extra]


def station_rows(**changes) -> pd.DataFrame:
    rows = {
        "time": ["2000-01-01T12:00", "2000-01-02T00:00"],
        "lat": [10.0, 10.0],
        "lon": [45.0, 45.0],
        "variable": ["temperature", "temperature"],
        "value": [0.3, -0.1],
        "error_std": [0.2, 0.2],
    }
    rows.update(changes)
    return pd.DataFrame(rows)


def stations(folder: Path, table: pd.DataFrame | str, *extra: str) -> list[str]:
    path = folder / "stations.csv"
    if isinstance(table, str):
        path.write_text(table)
    else:
        table.to_csv(path, index=False)
    return run_args(
        folder,
        "--set", "observations.source=stations",
        "--set", f"observations.path={path}",
        *extra,
    )  # fmt: skip


def gridded_dataset(
    values: float = 0.5, std: float | None = None, variable: str = "temperature"
) -> xr.Dataset:
    data = np.full((2, 8, 16), np.nan)
    data[:, ::2, ::2] = values
    ds = xr.Dataset(
        {variable: (("time", "lat", "lon"), data, {"units": "1"})},
        coords={"time": CYCLE_TIMES, "lat": LAT, "lon": LON},
    )
    if std is not None:
        ds[f"{variable}_error_std"] = (("lat", "lon"), np.full((8, 16), std))
    return ds


def gridded(
    folder: Path, ds: xr.Dataset | bytes, *extra: str, config: str | None = None
) -> list[str]:
    path = folder / "obs.nc"
    if isinstance(ds, bytes):
        path.write_bytes(ds)
    else:
        ds.to_netcdf(path)
    return run_args(
        folder,
        "--set", "observations.source=gridded",
        "--set", f"observations.path={path}",
        *extra,
        config=config,
    )  # fmt: skip


def heldsuarez_stations(folder: Path, variable: str, value: float) -> list[str]:
    """One station value of ``variable`` on the bundled 16 x 32 Held-Suarez emulator."""
    rows = station_rows(
        time=["2001-03-27T12:00"], lat=[10.0], lon=[45.0], variable=[variable], value=[value],
        error_std=[1.0],
    )  # fmt: skip
    rows.to_csv(folder / "stations.csv", index=False)
    return [
        "run", str(ROOT / "configs/heldsuarez/poster16.toml"), "--out", str(folder / "run"),
        "--quiet", "--set", "observations.source=stations",
        "--set", f"observations.path={folder / 'stations.csv'}",
        "--set", "observations.variables=[]", "--set", "observations.error_std=0",
        "--set", "run.cycles=1", "--set", "filter.particles=2",
        "--set", "sampler.levels=2", "--set", "run.baseline=false",
    ]  # fmt: skip


def truth_dataset() -> xr.Dataset:
    """A valid truth file for the small config: a start frame and both cycles."""
    times = pd.to_datetime(["2000-01-01T00:00", "2000-01-01T12:00", "2000-01-02T00:00"])
    rng = np.random.default_rng(0)
    shape = (3, 8, 16)
    return xr.Dataset(
        {
            name: (("time", "lat", "lon"), rng.normal(size=shape), {"units": "1"})
            for name in ("temperature", "u_component_of_wind")
        },
        coords={"time": times, "lat": LAT, "lon": LON},
    )


def truth(folder: Path, ds: xr.Dataset | bytes | None, *extra: str) -> list[str]:
    path = folder / "truth.nc"
    if isinstance(ds, bytes):
        path.write_bytes(ds)
    elif ds is not None:
        ds.to_netcdf(path)
    return run_args(folder, "--set", "truth.source=file", "--set", f"truth.path={path}", *extra)


def ensemble_dataset(members: int) -> xr.Dataset:
    """An initial ensemble for the small config: ``members`` states at the start time."""
    rng = np.random.default_rng(1)
    return xr.Dataset(
        {
            name: (("member", "lat", "lon"), rng.normal(size=(members, 8, 16)))
            for name in ("temperature", "u_component_of_wind")
        },
        coords={"lat": LAT, "lon": LON},
    )


def ensemble(folder: Path, ds: xr.Dataset) -> list[str]:
    ds.to_netcdf(folder / "ensemble.nc")
    return run_args(folder, "--set", f"model.initial_ensemble={folder / 'ensemble.nc'}")


def _site_ensemble(folder: Path, times: list[float] | None) -> str:
    """A four-member Lorenz-96 ensemble (8 sites), at ``times`` or without a time axis."""
    values = np.zeros((4, 2 if times else 1, 8)) + 1.0
    ds = xr.Dataset({"x": (("member", "time", "site"), values)})
    ds = ds.assign_coords(time=times) if times else ds.isel(time=0)
    return _write_nc(folder, ds, "site_ensemble.nc")


def _site_truth(folder: Path, times: int) -> str:
    """A Lorenz-96 truth with only ``times`` of the model times -Δt, 0, Δt, ... it needs."""
    ds = xr.Dataset(
        {"x": (("time", "site"), np.ones((times, 8)))},
        coords={"time": 0.05 * np.arange(-1, times - 1)},
    )
    return _write_nc(folder, ds, "site_truth.nc")


def _write_nc(folder: Path, ds: xr.Dataset, name: str = "file.nc") -> str:
    ds.to_netcdf(folder / name)
    return str(folder / name)


FINISHED: dict[str, Path] = {}


def finished_run(folder: Path) -> tuple[str, Path]:
    """A copy of a finished two-cycle run of the small config (run once per process)."""
    if "run" not in FINISHED:
        home = Path(os.environ.get("FILTRAX_CATALOGUE_CACHE", folder.parent / "finished"))
        home.mkdir(parents=True, exist_ok=True)
        config = small_config(home)
        result = CliRunner().invoke(main, ["run", config, "--out", str(home / "run"), "--quiet"])
        assert result.exit_code == 0, result.output
        FINISHED["run"] = home / "run"
    config = small_config(folder)
    target = folder / "run"
    shutil.copytree(FINISHED["run"], target)
    return config, target


def resume_with(folder: Path, damage: Callable[[Path], None], *extra: str) -> list[str]:
    config, run_dir = finished_run(folder)
    damage(run_dir)
    return ["run", config, "--out", str(run_dir), "--quiet", "--resume", *extra]


def write(path: str, data: bytes | str) -> Callable[[Path], None]:
    def damage(run_dir: Path) -> None:
        target = run_dir / path
        if isinstance(data, bytes):
            target.write_bytes(data)
        else:
            target.write_text(data)

    return damage


def truncate(path: str, size: int) -> Callable[[Path], None]:
    def damage(run_dir: Path) -> None:
        target = run_dir / path
        target.write_bytes(target.read_bytes()[:size])

    return damage


def remove(path: str) -> Callable[[Path], None]:
    def damage(run_dir: Path) -> None:
        target = run_dir / path
        shutil.rmtree(target) if target.is_dir() else target.unlink()

    return damage


def lorenz96(folder: Path, *extra: str) -> list[str]:
    return [
        "run", str(ROOT / "configs/lorenz96/wilks05.toml"), "--out", str(folder / "run"),
        "--quiet", "--set", "run.cycles=2", "--set", "run.burn_in=0",
        "--set", "filter.particles=4", *extra,
    ]  # fmt: skip


def tampered_weights(folder: Path) -> list[str]:
    """A copy of a trained Lorenz-96 emulator (weights + card) with one byte changed."""
    cards = ROOT / "src/filtrax/emulators/cards"
    card = (cards / "l96_wilks05_dt0.05.toml").read_text()
    weights = (cards / "l96_wilks05_dt0.05.npz").read_bytes()
    (folder / "mine.toml").write_text(card)
    (folder / "mine.npz").write_bytes(weights[:-1] + bytes([weights[-1] ^ 1]))
    return lorenz96(folder, "--set", f"model.weights={folder / 'mine.npz'}")


# --------------------------------------------------------------------------------------------
# The Python API
# --------------------------------------------------------------------------------------------


def api(change: Callable[[dict], None]) -> Callable[[Path], Callable[[], object]]:
    """An ``assimilate`` call on the linear-Gaussian model with one argument spoiled."""

    def build(folder: Path) -> Callable[[], object]:
        def attempt():
            import jax

            from filtrax.experiments.config import load_config
            from filtrax.experiments.factory import build_experiment

            experiment = build_experiment(load_config(small_config(folder, KALMAN)))
            arguments = {
                "filter": experiment.filter,
                "initial_particles": experiment.initial_particles,
                "observations": experiment.observations,
                "observation_model": experiment.observation_model,
                "key": jax.random.key(0),
            }
            change(arguments)
            import filtrax as fx

            return fx.assimilate(
                arguments.pop("filter"),
                arguments.pop("initial_particles"),
                arguments.pop("observations"),
                arguments.pop("observation_model"),
                **arguments,
            )

        return attempt

    return build


KALMAN = """
name = "api"
[model]
name = "linear_gaussian"
state_dim = 4
observed = 2
[filter]
particles = 4
[sampler]
levels = 4
[run]
cycles = 2
baseline = false
"""


def _set(**values) -> Callable[[dict], None]:
    def change(arguments: dict) -> None:
        arguments.update(values)

    return change


def _map(name: str, function: Callable) -> Callable[[dict], None]:
    def change(arguments: dict) -> None:
        arguments[name] = function(arguments[name])

    return change


# --------------------------------------------------------------------------------------------
# The catalogue
# --------------------------------------------------------------------------------------------

_BOM = b"\xef\xbb\xbf"
CASES: list[Case] = [
    # --- config files and overrides ---
    Case("config missing", "config", lambda f: ["run", str(f / "nope.toml")], ("nope.toml",)),
    Case(
        "config not utf-8",
        "config",
        lambda f: run_args(f, config=_write(f / "latin.toml", b"name = '\xe9'")),
        ("latin.toml", "not UTF-8"),
    ),
    Case(
        "config invalid TOML",
        "config",
        lambda f: run_args(f, config=small_config(f, "name = [", "broken.toml")),
        ("broken.toml", "invalid TOML", "end of document"),
    ),
    Case(
        "config with a byte-order mark",
        "config",
        lambda f: run_args(f, config=small_config(f, "\ufeff" + SMALL, "bom.toml")),
        expect="accepted",
    ),
    Case(
        "config BOM and invalid TOML",
        "config",
        lambda f: run_args(f, config=small_config(f, "\ufeffname = [", "bomb.toml")),
        ("bomb.toml", "invalid TOML"),
    ),
    Case(
        "unknown section",
        "config",
        lambda f: run_args(f, "--set", "filtr.particles=4"),
        ("filtr", "did you mean"),
    ),
    Case(
        "unknown key",
        "config",
        lambda f: run_args(f, "--set", "filter.particle=4"),
        ("filter.particle", "did you mean", "filter.particles"),
    ),
    Case(
        "wrong type",
        "config",
        lambda f: run_args(f, "--set", "filter.particles=many"),
        ("filter.particles", "expected an integer", "'many'"),
    ),
    Case(
        "one particle",
        "config",
        lambda f: run_args(f, "--set", "filter.particles=1"),
        ("filter.particles = 1", ">= 2"),
    ),
    Case(
        "zero cycles", "config", lambda f: run_args(f, "--set", "run.cycles=0"), ("run.cycles = 0",)
    ),
    Case(
        "unknown method",
        "config",
        lambda f: run_args(f, "--set", "filter.method=kalman"),
        ("filter.method = 'kalman'", "not one of"),
    ),
    Case(
        "malformed override",
        "config",
        lambda f: run_args(f, "--set", "filter.particles"),
        ("malformed override", "section.key=value"),
    ),
    Case(
        "infinite number",
        "config",
        lambda f: run_args(f, "--set", "observations.error_std=inf"),
        ("observations.error_std", "finite"),
    ),
    Case(
        "bad start time",
        "config",
        lambda f: run_args(f, "--set", "run.start_time=yesterday"),
        ("run.start_time = 'yesterday'",),
    ),
    Case(
        "ess band reversed",
        "config",
        lambda f: run_args(f, "--set", "filter.ess_band=[0.5, 0.2]"),
        ("filter.ess_band",),
    ),
    Case(
        "Kalman update after the move without predicted observations",
        "config",
        lambda f: run_args(
            f, "--set", "filter.hybrid=predictive", "--set", "filter.weights=moment_matched"
        ),
        ("filter.hybrid = 'predictive'", "filter.weights = 'dirac'", "'moment_matched'"),
    ),
    Case(
        "burn-in as long as the run",
        "config",
        lambda f: run_args(f, "--set", "run.burn_in=2"),
        ("run.burn_in = 2",),
    ),
    Case(
        "stride leaves one row",
        "config",
        lambda f: run_args(f, "--set", "observations.stride=8"),
        ("observations.stride = 8", "expected 1 to 7"),
    ),
    Case(
        "more random stations than grid columns",
        "config",
        lambda f: run_args(f, "--set", "observations.stations=200"),
        ("observations.stations = 200", "8 x 16 = 128 columns", "expected 1 to 128"),
    ),
    Case(
        "random stations on a site model",
        "config",
        lambda f: lorenz96(f, "--set", "observations.stations=5"),
        ("observations.stations = 5", "model.name = 'lorenz96' has sites", "set it to 0"),
    ),
    Case(
        "random stations with an observation file",
        "config",
        lambda f: run_args(
            f,
            "--set",
            "observations.stations=5",
            "--set",
            "observations.source=gridded",
            "--set",
            "observations.path=obs.nc",
        ),
        ("observations.stations = 5", "observations.source = 'gridded'", "set it to 0"),
    ),
    Case(
        "observed variable the model lacks",
        "config",
        lambda f: run_args(f, "--set", "observations.variables=['humidity']"),
        ("humidity", "available"),
    ),
    Case(
        "observed level on a surface model",
        "config",
        lambda f: run_args(f, "--set", "observations.levels=[500.0]"),
        ("observations.levels = [500.0]", "surface fields"),
    ),
    Case(
        "truth none with synthetic observations",
        "config",
        lambda f: run_args(f, "--set", "truth.source=none"),
        ("truth.source = 'none'",),
    ),
    # --- station tables ---
    Case(
        "stations file missing",
        "stations",
        lambda f: run_args(
            f,
            "--set",
            "observations.source=stations",
            "--set",
            f"observations.path={f / 'none.csv'}",
        ),
        ("observations.path", "none.csv", "file not found"),
    ),
    Case(
        "stations empty file",
        "stations",
        lambda f: stations(f, ""),
        ("observations.path", "stations.csv"),
    ),
    Case(
        "stations not parquet",
        "stations",
        lambda f: run_args(
            f,
            "--set",
            "observations.source=stations",
            "--set",
            f"observations.path={_write(f / 's.parquet', b'PAR1x')}",
        ),
        ("observations.path", "s.parquet", "Parquet"),
    ),
    Case(
        "stations missing column",
        "stations",
        lambda f: stations(f, station_rows().drop(columns="error_std")),
        ("stations.csv", "missing required column", "error_std"),
    ),
    Case(
        "stations latitude out of range",
        "stations",
        lambda f: stations(f, station_rows(lat=[10.0, 95.0])),
        ("stations.csv", "line 3", "lat"),
    ),
    Case(
        "stations time not a cycle",
        "stations",
        lambda f: stations(f, station_rows(time=["2000-01-01T12:00", "2000-01-01T13:00"])),
        ("stations.csv", "line 3", "2000-01-01T13:00"),
    ),
    Case(
        "stations bad time text",
        "stations",
        lambda f: stations(f, station_rows(time=["2000-01-01T12:00", "noon"])),
        ("stations.csv", "line 3", "noon"),
    ),
    Case(
        "stations value not a number",
        "stations",
        lambda f: stations(f, station_rows(value=["0.3", "warm"])),
        ("stations.csv", "line 3", "value"),
    ),
    Case(
        "stations infinite value",
        "stations",
        lambda f: stations(f, station_rows(value=[0.3, float("inf")])),
        ("stations.csv", "line 3", "value"),
    ),
    Case(
        "stations negative error std",
        "stations",
        lambda f: stations(f, station_rows(error_std=[0.2, -1.0])),
        ("stations.csv", "line 3", "error_std"),
    ),
    Case(
        "stations unknown variable",
        "stations",
        lambda f: stations(f, station_rows(variable=["temperature", "humidity"])),
        ("stations.csv", "line 3", "humidity"),
    ),
    Case(
        "stations level on a surface model",
        "stations",
        lambda f: stations(f, station_rows().assign(level=[500.0, 500.0])),
        ("stations.csv", "line 2", "level"),
    ),
    Case(
        "stations duplicate rows",
        "stations",
        lambda f: stations(f, station_rows(time=["2000-01-01T12:00"] * 2)),
        ("stations.csv", "duplicate"),
    ),
    Case(
        "stations error std differs from the config's",
        "stations",
        lambda f: stations(f, station_rows(), "--set", "observations.error_std=0.7"),
        ("observations.error_std = 0.7", "stations.csv", "0.2"),
    ),
    Case(
        "stations of a variable that observations.variables leaves out",
        "stations",
        lambda f: stations(f, station_rows(variable=["temperature", "u_component_of_wind"])),
        (
            "observations.path",
            "observes u_component_of_wind",
            "observations.variables = ['temperature']",
        ),
    ),
    Case(
        "stations far from a dimensionless field's values",
        "stations",
        lambda f: stations(f, station_rows(value=[15.0, 400.0])),
        expect="accepted",
    ),
    Case(
        "stations in Celsius for a field in K",
        "stations",
        lambda f: heldsuarez_stations(f, "near_surface_temperature", 15.0),
        ("observations.path", "15 K", "150 to 350 K", "°C instead of K"),
    ),
    Case(
        "stations surface pressure in hPa",
        "stations",
        lambda f: heldsuarez_stations(f, "surface_pressure", 1013.0),
        ("observations.path", "1013 Pa", "hPa instead of Pa"),
    ),
    # --- gridded observation files ---
    Case(
        "gridded file missing",
        "gridded",
        lambda f: run_args(
            f, "--set", "observations.source=gridded", "--set", f"observations.path={f / 'none.nc'}"
        ),
        ("observations.path", "none.nc", "file not found"),
    ),
    Case(
        "gridded not netCDF",
        "gridded",
        lambda f: gridded(f, b"hello"),
        ("observations.path", "obs.nc"),
    ),
    Case(
        "gridded wrong grid",
        "gridded",
        lambda f: gridded(f, gridded_dataset().assign_coords(lat=LAT + 1.0)),
        ("obs.nc", "lat"),
    ),
    Case(
        "gridded unknown variable",
        "gridded",
        lambda f: gridded(f, gridded_dataset(variable="humidity")),
        ("obs.nc", "humidity"),
    ),
    Case(
        "gridded time not a cycle",
        "gridded",
        lambda f: gridded(
            f,
            gridded_dataset().assign_coords(
                time=pd.to_datetime(["2000-01-01T12:00", "2000-01-03T00:00"])
            ),
        ),
        ("obs.nc", "2000-01-03"),
    ),
    Case(
        "gridded infinite value",
        "gridded",
        lambda f: gridded(f, gridded_dataset(values=np.inf)),
        ("obs.nc", "infinite"),
    ),
    Case(
        "gridded transposed dimensions",
        "gridded",
        lambda f: gridded(f, gridded_dataset().transpose("lon", "lat", "time")),
        expect="accepted",
    ),
    Case(
        "gridded own error std with the config's different",
        "gridded",
        lambda f: gridded(f, gridded_dataset(std=0.5), "--set", "observations.error_std=0.3"),
        ("observations.error_std = 0.3", "obs.nc", "'temperature_error_std' (0.5)"),
    ),
    Case(
        "gridded own error std, config silent",
        "gridded",
        lambda f: gridded(
            f,
            gridded_dataset(std=0.5),
            config=small_config(f, SMALL.replace("error_std = 0.2\n", "")),
        ),
        expect="accepted",
    ),
    Case(
        "gridded without error std anywhere",
        "gridded",
        lambda f: gridded(
            f, gridded_dataset(), config=small_config(f, SMALL.replace("error_std = 0.2\n", ""))
        ),
        ("obs.nc", "error std", "observations.error_std"),
    ),
    # --- truth files ---
    Case(
        "truth file missing",
        "truth",
        lambda f: truth(f, None),
        ("truth.path", "truth.nc", "file not found"),
    ),
    Case(
        "truth not netCDF",
        "truth",
        lambda f: truth(f, b"garbage"),
        ("truth.path", "truth.nc", "not a readable netCDF"),
    ),
    Case(
        "truth wrong grid",
        "truth",
        lambda f: truth(f, truth_dataset().isel(lat=slice(0, 6))),
        ("truth.nc", "lat"),
    ),
    Case(
        "truth missing times",
        "truth",
        lambda f: truth(f, truth_dataset().isel(time=[0, 1])),
        ("truth.nc", "2000-01-02T00:00"),
    ),
    Case(
        "truth with NaN",
        "truth",
        lambda f: truth(f, truth_dataset().where(truth_dataset().lat > 0)),
        ("truth.nc", "temperature is nan", "finite"),
    ),
    Case(
        "truth missing variable",
        "truth",
        lambda f: truth(f, truth_dataset().drop_vars("u_component_of_wind")),
        ("truth.nc", "u_component_of_wind"),
    ),
    Case(
        "truth transposed dimensions",
        "truth",
        lambda f: truth(f, truth_dataset().transpose("lon", "lat", "time")),
        expect="accepted",
    ),
    Case(
        "truth without a time coordinate",
        "truth",
        lambda f: truth(f, truth_dataset().rename(time="t")),
        ("truth.nc", "time"),
    ),
    Case(
        "truth with a variable of other dimensions",
        "truth",
        lambda f: truth(
            f, truth_dataset().assign(temperature=(("time", "lon", "x"), np.zeros((3, 16, 2))))
        ),
        ("truth.nc", "temperature", "dimensions"),
    ),
    # --- initial ensembles and site-indexed truth files ---
    Case(
        "ensemble with another member count",
        "ensemble",
        lambda f: ensemble(f, ensemble_dataset(3)),
        (
            "model.initial_ensemble",
            "has 3 members",
            "filter.particles = 8",
            "set filter.particles = 3",
        ),
    ),
    Case(
        "ensemble without a member dimension",
        "ensemble",
        lambda f: ensemble(f, ensemble_dataset(8).rename(member="number")),
        ("model.initial_ensemble", "no 'member' dimension", "number"),
    ),
    Case(
        "ensemble on another grid",
        "ensemble",
        lambda f: ensemble(f, ensemble_dataset(8).assign_coords(lon=LON + 3.0)),
        ("model.initial_ensemble", "member 0", "'lon' differs from the model grid"),
    ),
    Case(
        "ensemble lacking a variable",
        "ensemble",
        lambda f: ensemble(f, ensemble_dataset(8).drop_vars("temperature")),
        ("model.initial_ensemble", "lacks the variables ['temperature']"),
    ),
    Case(
        "ensemble with NaN",
        "ensemble",
        lambda f: ensemble(f, ensemble_dataset(8).where(ensemble_dataset(8).lat > 0)),
        ("model.initial_ensemble", "finite"),
    ),
    Case(
        "ensemble of one frame for a two-frame emulator",
        "ensemble",
        lambda f: lorenz96(f, "--set", f"model.initial_ensemble={_site_ensemble(f, times=None)}"),
        ("model.initial_ensemble", "no 'time' dimension", "previous frame", "-0.05"),
    ),
    Case(
        "site truth file missing times",
        "ensemble",
        lambda f: lorenz96(
            f, "--set", "truth.source=file", "--set", f"truth.path={_site_truth(f, 3)}"
        ),
        ("truth.path", "no state at the model times", "0.1"),
    ),
    Case(
        "site truth file with a gridded layout",
        "ensemble",
        lambda f: lorenz96(
            f, "--set", "truth.source=file", "--set", f"truth.path={_write_nc(f, truth_dataset())}"
        ),
        ("truth.path", "expected a variable 'x' with dimensions (time, site)"),
    ),
    # --- emulators and weights ---
    Case(
        "unknown bundled emulator",
        "weights",
        lambda f: lorenz96(f, "--set", "model.emulator=l96_nope"),
        ("model.emulator", "l96_nope"),
    ),
    Case(
        "a Held-Suarez card in a Lorenz-96 config",
        "weights",
        lambda f: lorenz96(f, "--set", "model.emulator=hs_t21_16x32"),
        ("model.emulator = 'hs_t21_16x32'", "not a Lorenz-96 one", "l96_wilks05_dt0.05"),
    ),
    Case(
        "weights file missing",
        "weights",
        lambda f: lorenz96(f, "--set", f"model.weights={f / 'gone.npz'}"),
        ("model.weights", "gone.npz", "not found"),
    ),
    Case("weights tampered", "weights", tampered_weights, ("mine.npz", "sha256")),
    Case(
        "factory path missing",
        "weights",
        lambda f: run_args(f, "--set", f"model.factory={f / 'nope.py'}:SETTING"),
        ("model.factory", "nope.py"),
    ),
    # --- run directories ---
    Case(
        "out is a file",
        "run directory",
        lambda f: ["run", small_config(f), "--out", _write(f / "afile", "x"), "--quiet"],
        ("afile", "is a file"),
    ),
    Case(
        "out is a foreign non-empty folder",
        "run directory",
        lambda f: ["run", small_config(f), "--out", _foreign(f), "--quiet"],
        ("mine", "not empty"),
    ),
    Case(
        "a finished run without --resume",
        "run directory",
        lambda f: ["run", *finished_run(f)[:1], "--out", str(f / "run"), "--quiet"],
        ("already holds a run", "--resume", "--overwrite"),
    ),
    Case(
        "a run without checkpoints, another config",
        "run directory",
        lambda f: [*resume_with(f, remove("checkpoints"))[:-1], "--set", "filter.particles=16"],
        ("already holds a run",),
    ),
    Case(
        "resume an empty folder",
        "run directory",
        lambda f: run_args(f, "--resume") if (f / "run").mkdir() is None else [],
        ("--resume", "holds no run"),
    ),
    Case(
        "resume with another config",
        "run directory",
        lambda f: resume_with(f, lambda d: None, "--set", "filter.particles=16"),
        ("--resume", "config differs"),
    ),
    Case(
        "resume a truncated checkpoint",
        "run directory",
        lambda f: resume_with(f, truncate("checkpoints/analysis.npz", 100)),
        ("analysis.npz", "unreadable"),
    ),
    Case(
        "resume an empty checkpoint",
        "run directory",
        lambda f: resume_with(f, write("checkpoints/analysis.npz", b"")),
        ("analysis.npz", "unreadable"),
    ),
    Case(
        "resume a corrupted config.toml",
        "run directory",
        lambda f: resume_with(f, write("config.toml", "garbage [")),
        ("config.toml is unreadable",),
    ),
    Case(
        "resume with observations.nc edited",
        "run directory",
        lambda f: resume_with(f, _edit_observations),
        ("observations differ",),
    ),
    Case(
        "resume with observations.nc removed",
        "run directory",
        lambda f: resume_with(f, remove("observations.nc")),
        expect="accepted",
    ),
    Case(
        "resume a finished run",
        "run directory",
        lambda f: resume_with(f, lambda d: None),
        expect="accepted",
    ),
    Case(
        "resume with a damaged metrics.nc",
        "run directory",
        lambda f: resume_with(f, write("metrics.nc", b"junk")),
        expect="accepted",
    ),
    Case(
        "overwrite a finished run",
        "run directory",
        lambda f: ["run", *finished_run(f)[:1], "--out", str(f / "run"), "--quiet", "--overwrite"],
        expect="accepted",
    ),
    Case(
        "overwrite a foreign folder with a report.md",
        "run directory",
        lambda f: ["run", small_config(f), "--out", _foreign(f), "--quiet", "--overwrite"],
        ("mine holds figures, report.md", "--overwrite replaces only"),
    ),
    Case(
        "overwrite with resume",
        "run directory",
        lambda f: [
            "run",
            *finished_run(f)[:1],
            "--out",
            str(f / "run"),
            "--quiet",
            "--overwrite",
            "--resume",
        ],
        ("--resume and --overwrite",),
    ),
    Case(
        "a start killed before config.toml",
        "run directory",
        lambda f: run_args(f) if _killed_start(f / "run") else [],
        expect="accepted",
    ),
    Case(
        "resume after the truth file changed",
        "run directory",
        lambda f: _resume_after_truth_edit(f),
        ("truth.path", "truth.nc", "changed", "sha256"),
    ),
    Case(
        "resume after the observation file changed",
        "run directory",
        lambda f: _resume_after_station_edit(f),
        ("observations.path", "stations.csv", "sha256"),
    ),
    # --- the Python API ---
    Case(
        "api: one particle",
        "api",
        api(_map("initial_particles", lambda p: p[:1])),
        ("initial_particles has 1", "at least 2"),
    ),
    Case(
        "api: no particle axis",
        "api",
        api(_map("initial_particles", lambda p: p[0])),
        ("initial_particles has shape (4,)", "particle axis"),
    ),
    Case("api: an int key", "api", api(_set(key=1)), ("key", "jax.random.key")),
    Case(
        "api: observations of the wrong width",
        "api",
        api(_map("observations", lambda y: y[:, :1])),
        ("observations", "shape"),
    ),
    Case(
        "api: observations 1-D",
        "api",
        api(_map("observations", lambda y: y[0])),
        ("observations", "shape"),
    ),
    Case(
        "api: infinite observations",
        "api",
        api(_map("observations", lambda y: y * np.inf)),
        ("observations", "inf"),
    ),
    Case(
        "api: huge observations",
        "api",
        api(_map("observations", lambda y: y + 1e30)),
        ("observations[0, 0] = 1e+30", "units"),
    ),
    Case(
        "api: NaN particles",
        "api",
        api(_map("initial_particles", lambda p: p * np.nan)),
        ("initial_particles", "NaN"),
    ),
    Case("api: a string filter", "api", api(_set(filter="fa_apf")), ("filter", "AbstractFilter")),
]


def _write(path: Path, data: bytes | str) -> str:
    path.write_bytes(data) if isinstance(data, bytes) else path.write_text(data)
    return str(path)


def _foreign(folder: Path) -> str:
    mine = folder / "mine"
    (mine / "figures").mkdir(parents=True)
    (mine / "report.md").write_text("my notes")
    (mine / "figures" / "skill.png").write_bytes(b"my figure")
    return str(mine)


def _edit_observations(run_dir: Path) -> None:
    path = run_dir / "observations.nc"
    with xr.open_dataset(path) as stored:
        edited = stored.load()
    edited["y"] = edited["y"] + 1.0
    path.unlink()
    edited.to_netcdf(path)


def _killed_start(run_dir: Path) -> bool:
    """What a start killed before its config.toml leaves: an empty checkpoints/ (written
    first by earlier versions) and the temporary of config.toml's atomic write."""
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.toml.tmp").write_text("name = ")
    return True


def _resume_after_truth_edit(folder: Path) -> list[str]:
    """A finished run from a truth file whose file is then edited, resumed."""
    args = truth(folder, truth_dataset())
    first = CliRunner().invoke(main, args, env={"FILTRAX_CACHE_DIR": ""})
    assert first.exit_code == 0, first.output
    (truth_dataset() + 1.0).to_netcdf(folder / "truth.nc")
    return [*args, "--resume"]


def _resume_after_station_edit(folder: Path) -> list[str]:
    """A finished station run whose station file is then edited, resumed."""
    args = stations(folder, station_rows())
    first = CliRunner().invoke(main, args, env={"FILTRAX_CACHE_DIR": ""})
    assert first.exit_code == 0, first.output
    station_rows(value=[0.9, -0.1]).to_csv(folder / "stations.csv", index=False)
    return [*args, "--resume"]


# --------------------------------------------------------------------------------------------
# Trying a case
# --------------------------------------------------------------------------------------------


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def attempt(case: Case, folder: Path) -> Outcome:
    """Build the case's inputs in ``folder``, try it, and classify what came back."""
    folder.mkdir(parents=True, exist_ok=True)
    built = case.build(folder)
    before = _digests(folder)
    outcome = _try_api(built) if callable(built) else _try_cli(built)
    after = _digests(folder)
    changed = sorted(name for name, digest in before.items() if after.get(name) != digest)
    if changed and not (case.expect == "accepted" and outcome.kind == "accepted"):
        return Outcome("changed files", f"{outcome.kind}; changed: {', '.join(changed[:4])}")
    return outcome


def _try_cli(argv: list[str]) -> Outcome:
    result = CliRunner().invoke(main, argv, env={"FILTRAX_CACHE_DIR": ""})
    text = result.output.strip()
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        lines = traceback.format_exception(result.exception)
        return Outcome("traceback", "".join(lines[-2:]).strip())
    if result.exit_code == 0:
        return Outcome("accepted", text.splitlines()[-1] if text else "")
    lines = text.splitlines()
    one_line = len(lines) == 1 and lines[0].startswith("error: ")
    usage = result.exit_code == 2 and any(line.startswith("Error: ") for line in lines)
    if result.exit_code == 2 and (one_line or usage):
        return Outcome("clear", lines[-1])
    return Outcome("unclear", f"exit {result.exit_code}: {text[-300:]}")


def _try_api(call: Callable[[], object]) -> Outcome:
    try:
        call()
    except (ValueError, TypeError) as error:
        frames = traceback.extract_tb(error.__traceback__)
        own = "filtrax" in frames[-1].filename if frames else False
        return Outcome("clear" if own else "unclear", f"{type(error).__name__}: {error}")
    except Exception as error:
        return Outcome("unclear", f"{type(error).__name__}: {error}")
    return Outcome("accepted", "")


def judge(case: Case, outcome: Outcome) -> str | None:
    """Why ``outcome`` is not what ``case`` expects, or ``None``."""
    if case.expect == "accepted":
        return None if outcome.kind == "accepted" else f"expected acceptance: {outcome.text}"
    if outcome.kind != "clear":
        return f"{outcome.kind}: {outcome.text}"
    missing = [f for f in case.fragments if f not in outcome.text]
    return f"message lacks {missing}: {outcome.text}" if missing else None


def census(root: Path, only: str = "") -> dict[str, int]:
    counts: dict[str, int] = {}
    for i, case in enumerate(CASES):
        if only not in case.name:
            continue
        outcome = attempt(case, root / f"case{i:03d}")
        verdict = judge(case, outcome)
        kind = outcome.kind if verdict is None or outcome.kind != "clear" else "unclear"
        if case.expect == "accepted" and outcome.kind == "accepted":
            kind = "accepted, rightly"
        counts[kind] = counts.get(kind, 0) + 1
        print(f"[{kind:>17}] {case.family:>13} | {case.name}: {verdict or outcome.text}")
    return counts


if __name__ == "__main__":
    import tempfile

    os.environ["FILTRAX_CACHE_DIR"] = ""
    with tempfile.TemporaryDirectory() as tmp:
        totals = census(Path(tmp), *sys.argv[1:2])
    print(f"{len(CASES)} cases: " + ", ".join(f"{k} {v}" for k, v in sorted(totals.items())))
    sys.exit(0)
