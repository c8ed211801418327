r"""Validate an atmosphere emulator's free ensemble on a held-out run, lead by lead.

From ``--initial-states`` held-out states (spread over the store) the emulator rolls out
``--members`` members for ``--leads`` 12 h steps with the poster's sampler, unguided. Per
variable (levels pooled, cos-latitude weighted) and lead it prints the ensemble-mean RMSE,
the CRPS and spread/skill, against three references on the same states:

* **persistence**: the initial state;
* **climatology**: the held-out run's own time-mean field (a generous reference: it has seen
  the verifying states);
* **T21**: the deterministic dinosaur T21 forecast of the same coarse state
  (:class:`filtrax.dynamics.coarse_forecast.CoarseForecast`), the hybrid's mean path.

It also prints the **drift** check: the spatial std of ``u`` and of the surface pressure in the
members at the last lead, over the truth's at the same times.

    python benchmarks/hybrid_validation.py --emulator hs_t21_32x64_hybrid \
        --store runs/data/hs32_heldout.zarr
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from _heldsuarez import add_emulator_arguments, emulator_and_data
from filtrax.dynamics.coarse_forecast import coarse_forecast
from filtrax.experiments.config import load_config
from filtrax.experiments.factory import build_sampler
from filtrax.filters.proposals import EmulatorProposal
from filtrax.metrics import crps, rmse, spread

SHOWN_LEADS = (1, 2, 4, 6, 10, 14, 20, 30, 40)


def rollout(emulator, sampler, states, members: int, leads: int, key) -> np.ndarray:
    """``(lead, state, member, channel, lat, lon)``: free members from each initial state."""
    proposal = EmulatorProposal(emulator, sampler)
    step = jax.jit(
        lambda keys, s: jax.lax.map(lambda a: proposal(a[1], None, None, key=a[0]), (keys, s))
    )
    current = jnp.repeat(jnp.asarray(states), members, axis=0)
    out = []
    for lead in range(leads):
        keys = jax.random.split(jax.random.fold_in(key, lead), current.shape[0])
        current = step(keys, current)
        frames = np.asarray(jax.vmap(emulator.current_frame)(current))
        out.append(frames.reshape(len(states), members, *frames.shape[1:]))
    return np.stack(out)


def variable_slices(grid) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for index, channel in enumerate(grid.channels):
        out.setdefault(channel.variable, []).append(index)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_emulator_arguments(parser)
    parser.add_argument("--initial-states", type=int, default=3)
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--leads", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    emulator, data = emulator_and_data(args)
    starts = np.linspace(1, len(data) - args.leads - 1, args.initial_states).astype(int)
    states = np.stack([np.asarray(emulator.initial_state(data[i - 1], data[i])) for i in starts])
    tic = time.perf_counter()
    members = rollout(
        emulator, build_sampler(load_config(args.config)), states, args.members, args.leads,
        jax.random.key(args.seed),
    )  # fmt: skip
    seconds = time.perf_counter() - tic
    levels, lat, lon = len(emulator.grid.channels), *emulator.grid.shape[1:]
    base = coarse_forecast(
        "T21", sum(c.variable == "temperature" for c in emulator.grid.channels), lat, lon
    )
    run = jax.jit(jax.vmap(base))
    deterministic, current = [], jnp.asarray(data[starts])
    for _ in range(args.leads):
        current = run(current)
        deterministic.append(np.asarray(current))
    deterministic = np.stack(deterministic)
    truth = np.stack([data[starts + lead] for lead in range(1, args.leads + 1)])
    climatology = data.mean(axis=0)
    weights = np.asarray(emulator.grid.area_weights())
    print(
        f"{emulator.name}: {args.initial_states} held-out initial states x {args.members} "
        f"members, {args.leads} leads of 12 h ({seconds:.0f} s for the rollout; {levels} channels)"
    )
    print(
        "per lead: RMSE of the ensemble mean | persistence | climatology | T21 ; CRPS | "
        "persistence's CRPS (its MAE) ; spread/skill"
    )
    for name, channels in variable_slices(emulator.grid).items():
        print(f"\n{name}")
        for lead in [k for k in SHOWN_LEADS if k <= args.leads]:
            t = lead - 1
            ens = members[t][:, :, channels]  # (state, member, level, lat, lon)
            true = truth[t][:, channels]
            pooled_ens = np.moveaxis(ens, 1, 0).reshape(args.members, -1, lat, lon)
            pooled_true = true.reshape(-1, lat, lon)
            score = rmse(pooled_ens, pooled_true, weights)
            persistence = rmse(
                data[starts][:, channels].reshape(1, -1, lat, lon), pooled_true, weights
            )
            clim = rmse(
                np.broadcast_to(climatology[channels], true.shape).reshape(1, -1, lat, lon),
                pooled_true,
                weights,
            )
            t21 = rmse(deterministic[t][:, channels].reshape(1, -1, lat, lon), pooled_true, weights)
            ens_crps = crps(pooled_ens, pooled_true, weights)
            pers_crps = crps(
                data[starts][:, channels].reshape(1, -1, lat, lon), pooled_true, weights
            )
            ratio = spread(pooled_ens, weights) / score
            print(
                f"  {lead * 12:>4} h  {score:10.4g} | {persistence:10.4g} | {clim:10.4g} | "
                f"{t21:10.4g} ; {ens_crps:10.4g} | {pers_crps:10.4g} ; {ratio:5.2f}"
            )
    for name in ("u_component_of_wind", "surface_pressure"):
        channels = variable_slices(emulator.grid)[name]
        ens_std = members[-1][:, :, channels].std(axis=(-2, -1)).mean()
        true_std = truth[-1][:, channels].std(axis=(-2, -1)).mean()
        print(
            f"drift at {args.leads * 12} h: spatial std of {name}: members / truth = "
            f"{ens_std / true_std:.3f}"
        )


if __name__ == "__main__":
    main()
