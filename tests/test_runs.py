"""Runs through the command line: round trip, config errors, kill-and-resume, station files."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from click.testing import CliRunner

from filtrax.cli import main

SMALL = """
name = "small"
seed = 3

[model]
name = "gaussian_field"
num_lat = 8
num_lon = 16
variables = ["temperature", "u_component_of_wind"]
correlation_length_km = 2500.0

[observations]
variables = ["temperature"]
stride = 2
error_std = 0.2

[filter]
particles = 8

[sampler]
name = "dpmpp2s"
levels = 8

[guidance]
iterations = 1

[run]
cycles = {cycles}
burn_in = 1
observation_diagnostics = false  # one more compile per run; their own tests switch them on
"""


@pytest.fixture(autouse=True)
def _no_persistent_cache(monkeypatch):
    # In-process CLI calls must not switch on the XLA disk cache for the whole test session.
    monkeypatch.setenv("FILTRAX_CACHE_DIR", "")


def write_config(tmp_path: Path, cycles: int = 4, extra: str = "") -> Path:
    path = tmp_path / "config.toml"
    path.write_text(SMALL.format(cycles=cycles) + extra)
    return path


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_cli_round_trip(tmp_path):
    config = write_config(tmp_path)
    out = tmp_path / "run"
    result = invoke(
        "run", str(config), "--out", str(out), "--quiet", "--set", "filter.particles=6",
        "--set", "run.observation_diagnostics=true",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"report: {out / 'report.md'}" in result.output
    for name in ("config.toml", "metrics.nc", "observations.nc", "truth.nc", "report.md"):
        assert (out / name).exists(), name
    assert "particles = 6" in (out / "config.toml").read_text()
    # Consolidated metadata: a plain open_zarr neither scans the store nor warns (warnings
    # are errors in the suite).
    analysis = xr.open_zarr(out / "analysis.zarr")
    assert analysis["temperature"].dims == ("cycle", "particle", "lat", "lon")
    assert analysis["temperature"].attrs["units"] == "1"
    assert analysis.sizes["particle"] == 6 and analysis.sizes["cycle"] == 4
    assert np.isfinite(analysis["temperature"].values).all()
    metrics = xr.open_dataset(out / "metrics.nc")
    for name in ("rmse", "spread", "crps", "ess", "alpha", "seconds"):
        assert name in metrics, name
    assert list(metrics.ensemble.values) == ["analysis", "baseline"]
    # Start-up: the build, then each member's first cycle (compiling, so slower than later).
    first = metrics["seconds_first_cycle"].values
    assert np.all(first > metrics["seconds"].values[:, 1:].max(axis=1))
    baseline_first = float(metrics["seconds_first_cycle"].sel(ensemble="baseline"))
    to_first = float(metrics["seconds_build"]) + baseline_first  # the free ensemble runs first
    assert float(metrics["seconds_to_first_cycle"]) == pytest.approx(to_first)
    report = (out / "report.md").read_text()
    assert "Start-up of the last invocation" in report
    assert "In observation space" in report and "| temperature | filter |" in report
    assert metrics["omb_rms"].dims == ("ensemble", "cycle", "obs_variable")
    assert (out / "figures" / "skill.png").exists()
    assert (out / "figures" / "map_u_component_of_wind.png").exists()
    # report can be rebuilt; models lists the cards; analytic models have nothing to train.
    assert invoke("report", str(out)).exit_code == 0
    listing = invoke("models").output
    assert "gaussian_field" in listing and "linear_gaussian" in listing
    trained = invoke("train", str(config))
    assert trained.exit_code == 2 and "analytic" in trained.output
    # An existing run is never overwritten silently.
    again = invoke("run", str(config), "--out", str(out), "--quiet")
    assert again.exit_code == 2 and "--resume" in again.output


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("filter.particels=3", "did you mean 'filter.particles'"),
        ("filter.particles=abc", "filter.particles: expected an integer, got 'abc'"),
        ("filter.particles=1", "filter.particles = 1 is out of range"),
        ("sampler.name=foo", "sampler.name = 'foo' is not one of"),
    ],
)
def test_cli_reports_config_errors(tmp_path, override, message):
    result = invoke("run", str(write_config(tmp_path)), "--quiet", "--set", override)
    assert result.exit_code == 2
    assert message in result.output


def test_netcdf_output_on_request(tmp_path):
    out = tmp_path / "run"
    args = ("--set", "run.output_format=netcdf", "--set", "run.baseline=false")
    result = invoke(
        "run", str(write_config(tmp_path, cycles=2)), "--out", str(out), "--quiet", *args
    )
    assert result.exit_code == 0, result.output
    dataset = xr.open_dataset(out / "analysis.nc")
    assert dataset["u_component_of_wind"].shape == (2, 8, 8, 16)
    assert list(xr.open_dataset(out / "metrics.nc").ensemble.values) == ["analysis"]


def _cycle_of(checkpoint: Path) -> int:
    try:
        with np.load(checkpoint, allow_pickle=False) as data:
            return int(data["cycle"])
    except (OSError, ValueError, KeyError, EOFError):
        return -1


def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    config = write_config(tmp_path, cycles=6, extra="")
    command = [sys.executable, "-m", "filtrax.cli", "run", str(config), "--quiet"]
    # A shared XLA cache: the second and third processes reuse the first one's compilations.
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "FILTRAX_CACHE_DIR": str(tmp_path / "cache")}
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run([*command, "--out", str(whole)], check=True, env=env, timeout=600)

    process = subprocess.Popen([*command, "--out", str(killed)], env=env)
    checkpoint = killed / "checkpoints" / "analysis.npz"
    deadline = time.monotonic() + 300
    while _cycle_of(checkpoint) < 2:
        assert process.poll() is None, "the run finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    stopped_at = _cycle_of(checkpoint)
    assert 2 <= stopped_at < 6

    subprocess.run([*command, "--out", str(killed), "--resume"], check=True, env=env, timeout=600)
    for store in ("analysis.zarr", "baseline.zarr"):
        a = xr.open_zarr(whole / store, consolidated=False).load()
        b = xr.open_zarr(killed / store, consolidated=False).load()
        xr.testing.assert_identical(a, b)
    a, b = xr.open_dataset(whole / "metrics.nc"), xr.open_dataset(killed / "metrics.nc")
    timings = [name for name in a.data_vars if str(name).startswith("seconds")]
    xr.testing.assert_identical(a.drop_vars(timings), b.drop_vars(timings))


def test_resume_refuses_another_config(tmp_path):
    out = tmp_path / "run"
    config = write_config(tmp_path, cycles=2)
    assert invoke("run", str(config), "--out", str(out), "--quiet").exit_code == 0
    result = invoke("run", str(config), "--out", str(out), "--quiet", "--resume", "--set", "seed=9")
    assert result.exit_code == 2 and "config differs" in result.output


def test_profile_is_off_by_default_and_outside_the_digest(tmp_path):
    from filtrax.experiments.config import load_config
    from filtrax.experiments.runner import config_digest

    config = write_config(tmp_path, cycles=2)
    out = tmp_path / "run"
    result = invoke("run", str(config), "--out", str(out), "--quiet", "--set", "run.baseline=false")
    assert result.exit_code == 0
    metrics = xr.open_dataset(out / "metrics.nc")
    assert np.isnan(float(metrics["seconds_emulator"].sel(ensemble="analysis")))
    assert float(metrics["seconds"].sel(ensemble="analysis").max()) > 0  # cycles still timed
    # It only times phases after the run, so a run may resume with it switched on.
    plain = load_config(config, [])
    assert not plain.run.profile
    assert config_digest(load_config(config, ["run.profile=true"])) == config_digest(plain)
    assert config_digest(load_config(config, ["seed=9"])) != config_digest(plain)


def test_station_table_run_moves_toward_observations(tmp_path):
    """Stations observe temperature from the simulated truth; the analysis at the stations
    must be closer to the observations than the free ensemble is."""
    from filtrax.experiments.config import load_config
    from filtrax.experiments.factory import build_experiment

    base = write_config(tmp_path, cycles=4)
    experiment = build_experiment(load_config(base))
    grid, truth = experiment.grid, experiment.truth
    rng = np.random.default_rng(0)
    rows = []
    channel = grid.channel_index("temperature")
    lat, lon = np.asarray(grid.latitudes), np.asarray(grid.longitudes)
    # Stations on grid nodes, in the reader's slot order (sorted by lat, lon).
    stations = sorted([(1, 2), (3, 10), (5, 13), (6, 6), (0, 9)])
    for k, t in enumerate(experiment.cycle_times):
        for i, j in stations:
            value = truth[k, channel, i, j] + 0.1 * rng.normal()
            rows.append((str(t), lat[i], lon[j], "temperature", value, 0.1))
    table = pd.DataFrame(rows, columns=["time", "lat", "lon", "variable", "value", "error_std"])
    table.to_csv(tmp_path / "stations.csv", index=False)

    out = tmp_path / "run"
    result = invoke(
        "run", str(base), "--out", str(out), "--quiet",
        "--set", "observations.source=stations",
        "--set", f"observations.path={tmp_path / 'stations.csv'}",
        "--set", "observations.error_std=0",  # unset: the table's 0.1, not the config's 0.2
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    observations = xr.open_dataset(out / "observations.nc")
    assert observations.sizes["obs"] == len(stations)

    def station_error(store):
        ensemble = xr.open_zarr(out / store, consolidated=False)["temperature"].mean("particle")
        errors = []
        for k in range(4):
            for o, (i, j) in enumerate(stations):
                y = float(observations.y.values[k, o])
                errors.append(float(ensemble.isel(cycle=k, lat=i, lon=j)) - y)
        return float(np.sqrt(np.mean(np.square(errors))))

    assert station_error("analysis.zarr") < 0.5 * station_error("baseline.zarr")


def test_station_example_runs_without_truth(tmp_path):
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "run"
    result = invoke(
        "run", str(root / "examples/stations/config.toml"), "--out", str(out), "--quiet",
        "--set", f"observations.path={root / 'examples/stations/stations.csv'}",
        "--set", "filter.particles=8", "--set", "sampler.levels=8",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = xr.open_dataset(out / "metrics.nc")
    assert "rmse" not in metrics and "spread" in metrics
    assert np.all(np.isfinite(metrics.ess.sel(ensemble="analysis").values))
    assert not (out / "truth.nc").exists()


def test_cycles_without_observations_are_forecasts(tmp_path):
    out = tmp_path / "run"
    result = invoke(
        "run", str(write_config(tmp_path, cycles=4)), "--out", str(out), "--quiet",
        "--set", "observations.every=2", "--set", "run.baseline=false",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = xr.open_dataset(out / "metrics.nc").sel(ensemble="analysis")
    # Cycles 0 and 2 have no observation: a forecast step, all particles kept (α = 0).
    np.testing.assert_allclose(metrics.ess.values[[0, 2]], 8.0, rtol=1e-5)
    np.testing.assert_array_equal(metrics.alpha.values[[0, 2]], 0.0)
    assert np.all(np.isfinite(metrics.rmse.values))


def test_truth_read_from_a_file_drives_a_twin_experiment(tmp_path):
    from filtrax.experiments.config import load_config
    from filtrax.experiments.factory import build_experiment
    from filtrax.io.datasets import frames_to_dataset

    config = write_config(tmp_path, cycles=3)
    simulated = build_experiment(load_config(config))
    frames = np.concatenate([np.asarray(simulated.initial_particles[:1]), simulated.truth])
    start = np.datetime64("2000-01-01T00:00", "s")
    times = np.concatenate([[start], simulated.cycle_times])
    truth = frames_to_dataset(
        frames, grid=simulated.grid, units=simulated.units, leading_dims=("time",),
        coords={"time": ("time", times)},
    )  # fmt: skip
    truth.to_netcdf(tmp_path / "truth_in.nc")
    from_file = build_experiment(
        load_config(config, ["truth.source=file", f"truth.path={tmp_path / 'truth_in.nc'}"])
    )
    np.testing.assert_allclose(from_file.truth, simulated.truth, rtol=1e-6)
    np.testing.assert_allclose(from_file.observations, simulated.observations, rtol=1e-5)
    missing = load_config(config, ["truth.source=file", f"truth.path={tmp_path / 'nope.nc'}"])
    with pytest.raises(ValueError, match="file not found"):
        build_experiment(missing)


def test_observation_error_inflation_reaches_the_filter_not_the_observations(tmp_path):
    """R inflation: the filter assumes error_std × factor, the observations keep error_std.
    With a factor of 1000 the EnKF hardly moves its forecast, so its first analysis keeps
    far more spread than with the true error; the observations are the same draws."""
    from filtrax.experiments.config import ConfigError, load_config
    from filtrax.experiments.factory import build_experiment

    config = write_config(tmp_path, cycles=2)
    plain = build_experiment(load_config(config, ["filter.method=enkf"]))
    inflated = build_experiment(
        load_config(config, ["filter.method=enkf", "filter.observation_error_inflation=3"])
    )
    np.testing.assert_array_equal(plain.observations, inflated.observations)
    np.testing.assert_allclose(plain.observation_model.noise_variance, 0.04, rtol=1e-6)
    np.testing.assert_allclose(inflated.observation_model.noise_variance, 0.04, rtol=1e-6)
    np.testing.assert_allclose(inflated.filter_observation.noise_variance, 0.36, rtol=1e-6)
    assert plain.filter_observation is plain.observation_model
    with pytest.raises(ValueError, match=r"factor = nan; expected a finite value > 0"):
        plain.observation_model.with_error_inflation(float("nan"))

    spreads = {}
    for factor in (1, 1000):
        out = tmp_path / f"run{factor}"
        result = invoke(
            "run", str(config), "--out", str(out), "--quiet",
            "--set", "filter.method=enkf",
            "--set", f"filter.observation_error_inflation={factor}",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        metrics = xr.open_dataset(out / "metrics.nc")
        spreads[factor] = float(metrics["spread"].sel(ensemble="analysis").isel(cycle=0).mean())
    assert spreads[1000] > 3 * spreads[1], spreads

    with pytest.raises(ConfigError, match=r"observation_error_inflation = 2.0 applies to the"):
        load_config(config, ["filter.method=free", "filter.observation_error_inflation=2"])
    with pytest.raises(ConfigError, match=r"filter.observation_error_inflation = 0.5"):
        load_config(config, ["filter.observation_error_inflation=0.5"])


def test_a_checkpoint_from_before_the_move_gain_reads_it_as_nan(tmp_path):
    """Checkpoints written before ``move_gain`` was recorded still resume and score: the
    missing record reads as NaN, one per cycle, and the others as stored."""
    from filtrax.experiments.runner import _history

    path = tmp_path / "analysis.npz"
    np.savez(path, history_ess=np.array([3.0, 4.0, np.nan]))
    with np.load(path, allow_pickle=False) as data:
        np.testing.assert_array_equal(_history(data, "ess"), [3.0, 4.0, np.nan])
        gain = _history(data, "move_gain")
    assert gain.shape == (3,) and np.all(np.isnan(gain))


def test_random_stations_observe_the_drawn_columns_the_same_for_every_seed(tmp_path):
    """``observations.stations = K``: K distinct columns, every observed variable and level
    at each; drawn from ``network_seed``, so the experiment's seed does not move them, and
    another network seed does. Area-weighted: over many draws the polar rows are rarer."""
    from filtrax.experiments.config import load_config
    from filtrax.experiments.factory import _observed_columns, build_experiment

    config = tmp_path / "stations.toml"
    config.write_text(SMALL.format(cycles=2))

    def columns(*overrides):
        experiment = build_experiment(load_config(config, ["observations.stations=12", *overrides]))
        labels = experiment.observation_labels
        assert len(labels) == 12  # one observed channel (temperature, a surface field)
        return sorted(label.split(" ", 1)[1] for label in labels)

    first = columns()
    assert len(set(first)) == 12
    assert columns("seed=4") == first
    assert columns("observations.network_seed=1") != first
    base = load_config(config, ["observations.stations=60"])
    grid = build_experiment(base).grid
    masks = np.stack(
        [
            _observed_columns(dataclasses.replace(base.observations, network_seed=s), grid)
            for s in range(20)
        ]
    )
    assert np.all(masks.sum(axis=(1, 2)) == 60)
    rows = masks.mean(axis=(0, 2))  # the fraction of each latitude row observed
    assert rows[[0, -1]].mean() < rows[[3, 4]].mean(), rows
