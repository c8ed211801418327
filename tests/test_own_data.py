"""Your own data for every model family: an initial ensemble from a file (gridded and
site-indexed), and a truth file for site-indexed models as well as gridded ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from filtrax.experiments.config import load_config
from filtrax.experiments.factory import build_experiment
from filtrax.experiments.run_directory import input_files

ROOT = Path(__file__).resolve().parents[1]
LORENZ96 = str(ROOT / "configs/lorenz96/wilks05.toml")
SHORT = ["run.cycles=3", "run.burn_in=0", "filter.particles=4"]


@pytest.fixture(autouse=True)
def _no_persistent_cache(monkeypatch):
    monkeypatch.setenv("FILTRAX_CACHE_DIR", "")


def test_a_gridded_initial_ensemble_replaces_the_perturbed_copies(tmp_path):
    from bad_input_catalogue import LAT, LON, small_config

    config = small_config(tmp_path)
    drawn = np.asarray(build_experiment(load_config(config)).initial_particles)
    members = (drawn + np.arange(8.0)[:, None, None, None]).astype(np.float32)  # distinct
    variables = ["temperature", "u_component_of_wind"]
    ensemble = xr.Dataset(
        {name: (("member", "lon", "lat"), members[:, c].transpose(0, 2, 1)) for c, name in
         enumerate(variables)},  # dimensions in any order
        coords={"lat": LAT, "lon": LON},
    )  # fmt: skip
    ensemble.to_netcdf(tmp_path / "ensemble.nc")
    loaded = load_config(config, [f"model.initial_ensemble={tmp_path / 'ensemble.nc'}"])
    experiment = build_experiment(loaded)
    np.testing.assert_array_equal(np.asarray(experiment.initial_particles), members)
    # The resume digest covers the file's contents.
    assert input_files(loaded)["model.initial_ensemble"] == tmp_path / "ensemble.nc"


def test_lorenz96_truth_and_ensemble_from_files_reproduce_the_simulated_ones(tmp_path):
    """The simulated twin written to files and read back gives the same experiment; an
    ensemble file gives each member its own two frames (x^-1, x^0)."""
    simulated = build_experiment(load_config(LORENZ96, SHORT))
    previous, start = (np.asarray(simulated.initial_state)[i] for i in (0, 1))
    frames = np.concatenate([[previous, start], simulated.truth])
    times = 0.05 * np.arange(-1, 4)
    truth = xr.Dataset({"x": (("site", "time"), frames.T)}, coords={"time": times})
    truth.to_netcdf(tmp_path / "truth.nc")
    members = (
        np.asarray(simulated.initial_particles) + np.arange(4, dtype=np.float32)[:, None, None]
    )
    ensemble = xr.Dataset({"x": (("member", "time", "site"), members)}, coords={"time": [-0.05, 0]})
    ensemble.to_netcdf(tmp_path / "ensemble.nc")
    from_files = build_experiment(
        load_config(
            LORENZ96,
            [
                *SHORT,
                "truth.source=file",
                f"truth.path={tmp_path / 'truth.nc'}",
                f"model.initial_ensemble={tmp_path / 'ensemble.nc'}",
            ],
        )
    )
    np.testing.assert_array_equal(from_files.truth, simulated.truth)
    np.testing.assert_array_equal(from_files.observations, simulated.observations)
    np.testing.assert_array_equal(np.asarray(from_files.initial_particles), members)
