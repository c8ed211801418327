"""Command-line pieces shared by the Held–Suarez emulator benchmarks (run as scripts)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from filtrax.dynamics.heldsuarez import stack_channels
from filtrax.emulators.atmosphere import AtmosphereEmulator, bundled_emulator, load_emulator
from filtrax.training.atmosphere import open_store

ROOT = Path(__file__).resolve().parents[1]


def add_emulator_arguments(parser: argparse.ArgumentParser) -> None:
    """``--emulator``/``--weights`` (which emulator), ``--config`` (its sampler) and
    ``--store`` (the held-out data)."""
    parser.add_argument("--emulator", default="hs_t21_16x32", help="bundled card name")
    parser.add_argument("--weights", default=None, help="weights of 'filtrax train' instead")
    parser.add_argument("--config", type=Path, default=ROOT / "configs/heldsuarez/poster.toml")
    parser.add_argument("--store", default="runs/data/hs_test.zarr", help="held-out store")


def emulator_and_data(args: argparse.Namespace) -> tuple[AtmosphereEmulator, np.ndarray]:
    """The emulator the arguments name, and the store's states ``(time, channel, lat, lon)``."""
    emulator = (
        load_emulator(None, args.weights) if args.weights else bundled_emulator(args.emulator)
    )
    return emulator, stack_channels(open_store(args.store).load()).astype(np.float32)
