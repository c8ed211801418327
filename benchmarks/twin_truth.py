"""An identical-twin truth for the Held–Suarez poster: one trajectory of the emulator itself.

The poster's truth is dinosaur's coarse-grained state, which the emulator only approximates
(a *fraternal* twin: the filters carry model error). Here the truth is instead a sample
path of the emulator, started from the same two true states as the bundled segment
(an *identical* twin: the filters' model is exact). Running ``benchmarks/poster.py`` on both
separates what the method and the ensemble size cannot do from what the emulator's model
error does:

    python benchmarks/twin_truth.py --out runs/twin/truth.nc
    python benchmarks/poster.py --particles 16 --cycles 10 --out runs/twin \\
        --set truth.source=file --set truth.path=runs/twin/truth.nc

The file has the bundled segment's times, coordinates, variables and units; its first two
states are the segment's (the filters' initial state), the rest are emulator samples drawn
with the config's sampler from ``jax.random.key(--seed)``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import numpy as np
import xarray as xr
from tqdm import tqdm

from filtrax.dynamics.heldsuarez import UNITS
from filtrax.emulators.atmosphere import AtmosphereEmulator
from filtrax.experiments.config import load_config
from filtrax.experiments.factory import (
    build_sampler,
    bundled_truth_path,
    load_atmosphere_emulator,
)
from filtrax.filters.proposals import EmulatorProposal
from filtrax.io.datasets import dataset_to_frames, frames_to_dataset

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs/heldsuarez/poster16.toml")
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--out", type=Path, default=ROOT / "runs/twin/truth.nc")
    args = parser.parse_args()

    config = load_config(args.config)
    emulator, card = load_atmosphere_emulator(config)
    segment = xr.open_dataset(bundled_truth_path(card)).load()
    frames = dataset_to_frames(segment, emulator.grid)
    if not np.all(np.isfinite(frames)):
        raise ValueError("the bundled truth segment has non-finite values")
    proposal = EmulatorProposal(emulator, build_sampler(config))
    step = jax.jit(lambda key, state: proposal(state, None, None, key=key))

    state = AtmosphereEmulator.initial_state(frames[0], frames[1])
    twin = [frames[0], frames[1]]
    key = jax.random.key(args.seed)
    for k in tqdm(range(2, len(frames)), desc="emulator truth", unit="step"):
        state = step(jax.random.fold_in(key, k), state)
        frame = np.asarray(emulator.current_frame(state))
        if not np.all(np.isfinite(frame)):
            raise FloatingPointError(f"the emulator produced non-finite values at step {k}")
        twin.append(frame)
    twin = np.stack(twin)

    units = [UNITS.get(c.variable, "1") for c in emulator.grid.channels]
    out = frames_to_dataset(
        twin, grid=emulator.grid, units=units, leading_dims=("time",), coords={"time": segment.time}
    )
    out.attrs = {
        "title": "identical-twin truth: a sample path of the emulator",
        "emulator": emulator.name,
        "emulator_sha256": card["sha256"],
        "seed": args.seed,
        "initial_states_from": str(bundled_truth_path(card).name),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    out.to_netcdf(args.out)
    print(f"wrote {args.out}: {len(twin)} states of {emulator.name}")


if __name__ == "__main__":
    main()
