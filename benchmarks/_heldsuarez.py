"""Command-line pieces shared by the Held–Suarez emulator benchmarks (run as scripts)."""

from __future__ import annotations

import argparse
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import xarray as xr

from filtrax.emulators.atmosphere import AtmosphereEmulator, bundled_emulator, load_emulator
from filtrax.emulators.cards import load_card
from filtrax.experiments.factory import bundled_truth_path
from filtrax.io.heldsuarez_store import stack_channels
from filtrax.training.atmosphere import open_store

ROOT = Path(__file__).resolve().parents[1]


def add_emulator_choice(parser: argparse.ArgumentParser) -> None:
    """``--emulator`` (a bundled card) or ``--weights`` (a ``filtrax train`` output)."""
    parser.add_argument("--emulator", default="hs_t21_16x32", help="bundled card name")
    parser.add_argument("--weights", default=None, help="weights of 'filtrax train' instead")


def chosen_emulator(args: argparse.Namespace) -> AtmosphereEmulator:
    """The emulator :func:`add_emulator_choice`'s arguments name (a learned or a hybrid one)."""
    from filtrax.emulators.cards import trained_card
    from filtrax.emulators.hybrid import load_hybrid

    card = trained_card(args.weights) if args.weights else load_card(args.emulator)
    if card.get("family") == "hybrid_atmosphere":
        return load_hybrid(card, args.weights)
    return load_emulator(None, args.weights) if args.weights else bundled_emulator(args.emulator)


def first_transition(
    emulator: AtmosphereEmulator, card: str = "hs_t21_16x32"
) -> tuple[jnp.ndarray, np.ndarray]:
    """The conditioning of the first state pair of ``card``'s bundled truth segment, and the
    true next residual normalised by the emulator's difference std, ``(channel, lat, lon)``."""
    conds, residuals = truth_transitions(emulator, card)
    return conds[0], residuals[0]


def truth_transitions(
    emulator: AtmosphereEmulator, card: str = "hs_t21_16x32"
) -> tuple[jnp.ndarray, np.ndarray]:
    """Every transition of ``card``'s bundled truth segment: the conditionings
    ``(transition, 2, channel, lat, lon)`` and the true next residuals normalised by the
    emulator's difference std, ``(transition, channel, lat, lon)``."""
    segment = stack_channels(xr.open_dataset(bundled_truth_path(load_card(card))))
    conds = jnp.stack(
        [
            emulator.condition(jnp.asarray(segment[t - 1 : t + 1]))
            for t in range(1, len(segment) - 1)
        ]
    )
    residuals = np.diff(segment, axis=0)[1:] / np.asarray(emulator.diff_std)[:, None, None]
    return conds, residuals


def add_emulator_arguments(parser: argparse.ArgumentParser) -> None:
    """:func:`add_emulator_choice`, ``--config`` (the sampler) and ``--store`` (the held-out
    data)."""
    add_emulator_choice(parser)
    parser.add_argument("--config", type=Path, default=ROOT / "configs/heldsuarez/poster16.toml")
    parser.add_argument("--store", default="runs/data/hs_test.zarr", help="held-out store")


def emulator_and_data(args: argparse.Namespace) -> tuple[AtmosphereEmulator, np.ndarray]:
    """The emulator the arguments name, and the store's states ``(time, channel, lat, lon)``."""
    return chosen_emulator(args), stack_channels(open_store(args.store).load()).astype(np.float32)
