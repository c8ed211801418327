r"""Two properties of an atmosphere emulator that decide what assimilation can do with it.

**Drift.** Free rollouts of ``--members`` members for ``--steps`` steps of 12 h, from
``--starts`` held-out initial states: the spatial standard deviation of each variable (RMS
over its levels of the per-level std over lat and lon, averaged over members and starts)
against the held-out store's own, i.e. whether the emulator keeps the truth's climate or
gains (loses) energy. The same for the *mean rollout*, which steps with the one-call
conditional mean :math:`D(\sigma_\max\epsilon; \sigma_\max, x^{k-1}, x^k)` and no noise: it
separates drift of the mean dynamics from the accumulation of the members' own noise.

**Coupling.** How much the conditional mean of the next state depends on each input
variable. For held-out states :math:`(x^{k-1}, x^k)`, one variable's two frames are replaced
by those of a state ``--swap`` steps later (wrong but realistic values), and the change of
the predicted next frame is measured per output variable (cos-lat weighted RMS, physical
units). The assimilation of temperature informs winds, geopotential and surface pressure
only through this coupling: through the proposal's cross-covariance at one step, and
through the weights :math:`p(y^{k+1}\mid x^k)` over steps. A temperature prediction that
hardly moves when the winds are replaced makes winds unobservable from temperature
(compare the change with the members' 12 h spread, ``benchmarks/emulator_noise.py``).

    python benchmarks/emulator_dynamics.py                          # the shipped emulator
    python benchmarks/emulator_dynamics.py --weights runs/train/hs_t21_16x32_cn/hs_t21_16x32.npz
"""

from __future__ import annotations

import argparse

import jax
import numpy as np
from tqdm import tqdm

from _heldsuarez import add_emulator_arguments, emulator_and_data
from filtrax.experiments.config import load_config
from filtrax.experiments.factory import build_sampler
from filtrax.filters.proposals import EmulatorProposal
from filtrax.filters.weights import DiracPredictiveWeight

VARIABLES = (
    "temperature",
    "u_component_of_wind",
    "v_component_of_wind",
    "geopotential",
    "surface_pressure",
    "near_surface_temperature",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_emulator_arguments(parser)
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--starts", type=int, default=4)
    parser.add_argument("--steps", type=int, default=40, help="12 h steps of the rollouts")
    parser.add_argument("--report-every", type=int, default=8)
    parser.add_argument("--swap", type=int, default=15, help="steps between swapped states")
    parser.add_argument("--coupling-states", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if min(args.members, args.starts, args.steps, args.report_every, args.swap) < 1:
        parser.error("--members, --starts, --steps, --report-every and --swap must be >= 1")
    emulator, data = emulator_and_data(args)
    channels = emulator.grid.channels
    rows = {v: [i for i, c in enumerate(channels) if c.variable == v] for v in VARIABLES}
    weights = np.asarray(emulator.grid.area_weights(), np.float64)
    weights = weights / weights.mean()

    def spatial_std(frames):  # (..., channel, lat, lon) -> {variable: (...)}
        centred = frames - frames.mean(axis=(-2, -1), keepdims=True)
        per_channel = np.sqrt((weights * centred**2).mean(axis=(-2, -1)))
        return {v: np.sqrt((per_channel[..., r] ** 2).mean(-1)) for v, r in rows.items()}

    def rms(delta):  # (states, channel, lat, lon) -> {variable: float}
        per_channel = (weights * delta.astype(np.float64) ** 2).mean(axis=(0, 2, 3))
        return {v: float(np.sqrt(per_channel[r].mean())) for v, r in rows.items()}

    # The members step with the poster's sampler (DPM-Solver++(2S), 10 levels, churn 2.5).
    proposal = EmulatorProposal(emulator, build_sampler(load_config(args.config)))
    # The one-call conditional mean, as the FA-APF's Dirac weights compute it.
    predictive = DiracPredictiveWeight(sigma_max=80.0)

    def mean_frame(key, state):
        return predictive.predicted_frame(state, emulator, key=key)

    member_step = jax.jit(jax.vmap(lambda key, state: proposal(state, None, None, key=key)))
    mean_next = jax.jit(jax.vmap(mean_frame))
    mean_roll = jax.jit(
        jax.vmap(lambda key, state: emulator.advance(state, mean_frame(key, state)))
    )

    # Drift.
    span = data.shape[0] - args.steps - 2
    if span < args.starts:
        parser.error(f"{args.store} has {data.shape[0]} states: too few for --steps {args.steps}")
    starts = np.linspace(1, span, args.starts).astype(int)
    initial = np.stack([np.stack([data[s - 1], data[s]]) for s in starts])
    members = np.repeat(initial, args.members, axis=0)
    means = initial.copy()
    key = jax.random.key(args.seed)
    climate = spatial_std(data)
    reported = {}
    for k in tqdm(range(1, args.steps + 1), desc="rollouts", unit="step"):
        step_key = jax.random.fold_in(key, k)
        members = member_step(jax.random.split(step_key, len(members)), members)
        means = mean_roll(jax.random.split(jax.random.fold_in(step_key, 1), len(means)), means)
        if k % args.report_every == 0 or k == args.steps:
            free = np.asarray(members[:, -1])
            if not np.all(np.isfinite(free)):
                raise FloatingPointError(f"a rollout became non-finite at step {k}")
            reported[k] = (spatial_std(free), spatial_std(np.asarray(means[:, -1])))
    _print_header(
        f"{emulator.name}: spatial std of free rollouts ({args.starts} starts x {args.members} "
        f"members) and of the mean rollout, against the held-out store ({args.store})",
        f"{'variable':<26}{'truth':>9}" + "".join(f"{f'{k * 12 / 24:g} d':>20}" for k in reported),
    )
    for v in VARIABLES:
        cells = "".join(
            f"{f'{free[v].mean():.4g} / {mean[v].mean():.4g}':>20}"
            for free, mean in reported.values()
        )
        print(f"{v:<26}{np.mean(climate[v]):>9.4g}{cells}")
    print("cells: members / mean rollout")

    # Coupling.
    index = np.linspace(1, data.shape[0] - args.swap - 2, args.coupling_states).astype(int)
    states = np.stack([np.stack([data[i - 1], data[i]]) for i in index])
    keys = jax.random.split(jax.random.fold_in(key, 10**6), len(index))
    base = np.asarray(mean_next(keys, states))
    truth_step = rms(data[index + 1] - data[index])
    _print_header(
        f"\nchange of the predicted next frame when one input variable's two frames come from "
        f"{args.swap * 12 / 24:g} days later ({len(index)} held-out states; RMS, physical units)",
        f"{'input replaced':<26}{'its change':>12}" + "".join(f"{v[:14]:>16}" for v in VARIABLES),
    )
    later = np.stack([np.stack([data[i - 1 + args.swap], data[i + args.swap]]) for i in index])
    for v in VARIABLES:
        swapped = states.copy()
        swapped[:, :, rows[v]] = later[:, :, rows[v]]
        change = rms(np.asarray(mean_next(keys, swapped)) - base)
        size = rms(swapped[:, 1] - states[:, 1])[v]
        print(f"{v:<26}{size:>12.3g}" + "".join(f"{change[w]:>16.3g}" for w in VARIABLES))
    print(
        f"{'(the true 12 h step)':<26}{'':>12}"
        + "".join(f"{truth_step[w]:>16.3g}" for w in VARIABLES)
    )


def _print_header(title: str, header: str) -> None:
    print(title)
    print(header + "\n" + "-" * len(header))


if __name__ == "__main__":
    main()
