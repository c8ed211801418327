"""Golden runs: small configs whose ``metrics.nc`` values and ensembles are pinned.

Refactoring the driver, the filters or the factory must not change what a run computes.
``tests/test_golden.py`` reruns each case here and compares it with the arrays stored in
``tests/golden/<case>.npz``. Regenerate them only for a deliberate change of behaviour
(or of the jax version, which the files record), and say so in the commit::

    python tests/golden_runs.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import xarray as xr

GOLDEN = Path(__file__).parent / "golden"

# A config of its own, not a copy of test_runs.SMALL by reference: the pinned arrays must not
# change when another test edits its config.
BASE = """
name = "golden"
seed = 5

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
levels = 6

[guidance]
iterations = 1

[run]
cycles = 4
burn_in = 1
profile = false
observation_diagnostics = false  # pinned before they existed; tests/test_observation_space.py
"""

#: case name -> ``--set`` overrides on :data:`BASE`. Together they cover the FA-APF's two
#: selection paths (one log-likelihood per particle, and per-observation predictions with
#: inflation and blocks), the bootstrap PF, the LETKF, cycles without observations (a
#: forecast step) and the free baseline.
CASES = {
    "fa_apf_gaps": ["observations.every=2"],
    "fa_apf_blocks_inflation": [
        "filter.localisation_block=[4, 4]",
        "filter.adaptive_inflation=true",
        "run.baseline=false",
    ],
    "bootstrap": ["filter.method=bootstrap", "run.baseline=false"],
    "letkf": ["filter.method=letkf", "filter.inflation=1.05", "run.baseline=false"],
}

#: metrics.nc variables that are timings, not results.
TIMINGS = ("seconds",)


def run_case(name: str, workdir: Path) -> Path:
    from filtrax.experiments.config import load_config
    from filtrax.experiments.runner import run_experiment

    config = workdir / f"{name}.toml"
    config.write_text(BASE)
    return run_experiment(
        load_config(config, CASES[name]), workdir / name, quiet=True, report=False
    )


def collect(run_dir: Path) -> dict[str, np.ndarray]:
    """Every result array of a run: metrics (timings excluded) and the recorded ensembles."""
    arrays = {}
    with xr.open_dataset(run_dir / "metrics.nc") as metrics:
        for name, variable in metrics.data_vars.items():
            if name in TIMINGS or name.startswith("seconds_"):
                continue
            arrays[f"metrics/{name}"] = variable.values
    for store in sorted(run_dir.glob("*.zarr")):
        with xr.open_zarr(store, consolidated=False) as ensemble:
            for name, variable in ensemble.data_vars.items():
                arrays[f"{store.stem}/{name}"] = variable.values
    return arrays


def main() -> None:
    import tempfile

    import jax

    GOLDEN.mkdir(exist_ok=True)
    names = sys.argv[1:] or list(CASES)
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            arrays = collect(run_case(name, Path(tmp)))
            arrays["jax_version"] = np.asarray(jax.__version__)
            np.savez_compressed(GOLDEN / f"{name}.npz", **arrays)
            print(f"wrote {GOLDEN / name}.npz ({len(arrays) - 1} arrays)")


if __name__ == "__main__":
    main()
