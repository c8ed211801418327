"""Where one assimilation cycle's time goes, per method (see :mod:`filtrax.profiling`).

For a config (default: the ``wilks05`` Lorenz-96 twin) and an ensemble size, each phase is
compiled and timed on its own, side by side in one process, on the same particles, key and
observation: the emulator's unguided forecast, the guidance (guided minus unguided
proposal), the predictive weights, and the rest of the cycle (tempering, resampling,
gathers, bookkeeping), plus the selection step (tempering, resampling, gather) timed directly,
because separately compiled phases can sum to more than the fused cycle and the subtracted
"rest" moves by ±15 % of the cycle between runs on this machine. The filter's own work is
reported as weights + selection, both timed directly. The issue's target: at most 5 % of the FA-APF
cycle at N = 64. Run on a quiet machine::

    python benchmarks/cycle_profile.py --config configs/lorenz96/wilks05.toml --particles 64
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import jax.numpy as jnp

from filtrax.experiments.config import load_config
from filtrax.experiments.factory import build_experiment, build_filter, initial_particles
from filtrax.profiling import phase_seconds

ROOT = Path(__file__).resolve().parents[1]
# Global selection and no inflation unless the row says otherwise, whatever the config says.
GLOBAL = ["filter.localisation_block=[]", "filter.inflation=1.0"]
METHODS = {
    "FA-APF (Dirac+α)": ("fa_apf", [*GLOBAL, "filter.weights=dirac"]),
    "FA-APF (blocks of 2, λ = 1.1, Dirac+α)": (
        "fa_apf",
        ["filter.weights=dirac", "filter.localisation_block=[2]", "filter.inflation=1.1"],
    ),
    "FA-APF (moment-matched)": ("fa_apf", [*GLOBAL, "filter.weights=moment_matched"]),
    "bootstrap PF": ("bootstrap", GLOBAL),
    "EnKF": ("enkf", GLOBAL),
    "free ensemble": ("free", GLOBAL),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs/lorenz96/wilks05.toml"))
    parser.add_argument("--particles", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    base = [f"filter.particles={args.particles}", "run.cycles=2", "run.burn_in=0"]
    experiment = build_experiment(load_config(args.config, base))
    y = jnp.asarray(experiment.observations[0])
    key = jax.random.key(0)
    print(f"# {args.config}, N = {args.particles}, median of {args.repeats} calls per phase")
    print(
        "| method | cycle ms | emulator | guidance | weights | rest | selection (direct) | "
        "filter's own work |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, (method, overrides) in METHODS.items():
        config = load_config(args.config, [*base, *overrides])
        filter_ = build_filter(config, experiment.emulator, method)
        state = filter_.init(initial_particles(config, experiment.initial_state, args.particles))
        t = phase_seconds(
            filter_, state, y, experiment.observation_model, key, repeats=args.repeats
        )
        total = t["cycle"]
        phases = ("emulator", "guidance", "weights", "filter", "selection")
        share = {p: 100 * t[p] / total for p in phases}
        own = share["weights"] + share["selection"]
        print(
            f"| {name} | {1e3 * total:.1f} | {share['emulator']:.1f} % | "
            f"{share['guidance']:.1f} % | {share['weights']:.1f} % | {share['filter']:.1f} % | "
            f"{share['selection']:.2f} % | {own:.1f} % |"
        )


if __name__ == "__main__":
    main()
