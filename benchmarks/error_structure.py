r"""Does an atmosphere emulator's 12 h uncertainty have the structure of its error?

An observation informs the unobserved neighbours of its point, and the other variables of
its column, through the covariance of the prior: in the FA-APF, through the Tweedie
covariance of the emulator's denoiser, i.e. through how the emulator's members spread
around their mean. A calibrated ensemble has spread of the size of its error
(spread/skill 1); this script asks whether the spread also has the error's *structure*.

For ``--states`` held-out states :math:`(x^{k-1}, x^k)` it draws ``--members`` members
:math:`x_i^{k+1}` with the poster's sampler and compares, per channel and pooled over
states (and members),

* the error of the ensemble mean, :math:`e = x^{k+1}_\text{true} - \bar x^{k+1}`, and
* the members' deviations, :math:`d_i = x_i^{k+1} - \bar x^{k+1}`,

by their correlation with the neighbouring cell (one cell east, one cell north: 11.25°),
and by their correlation with the lowest-level temperature of the same column. If the
errors are correlated in space and the deviations are not, a temperature observation
corrects its own cell and leaves the correlated error of the next cell alone, and no
filter built on this emulator can spread it. The true 12 h step
:math:`x^{k+1} - x^k` is shown for scale.

    python benchmarks/error_structure.py                  # the shipped emulator
    python benchmarks/error_structure.py --weights runs/train/<name>/<name>.npz
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

from _heldsuarez import add_emulator_arguments, emulator_and_data
from filtrax.experiments.config import load_config
from filtrax.experiments.factory import build_sampler
from filtrax.filters.proposals import EmulatorProposal


def neighbour_correlation(fields: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per channel, the correlation of ``(..., channel, lat, lon)`` anomaly fields with
    themselves one cell east (periodic) and one cell north, pooled over the leading axes."""
    pooled = fields.reshape(-1, *fields.shape[-3:]).astype(np.float64)

    def correlation(a, b):
        axes = (0, 2, 3)
        return (a * b).mean(axes) / np.sqrt((a * a).mean(axes) * (b * b).mean(axes))

    east = correlation(pooled, np.roll(pooled, -1, axis=-1))
    north = correlation(pooled[..., 1:, :], pooled[..., :-1, :])
    return east, north


def column_correlation(fields: np.ndarray, reference: int) -> np.ndarray:
    """Per channel, the pointwise correlation with channel ``reference``, pooled."""
    pooled = np.moveaxis(fields.reshape(-1, *fields.shape[-3:]), 1, 0).astype(np.float64)
    flat = pooled.reshape(pooled.shape[0], -1)
    ref = flat[reference]
    return (flat * ref).mean(-1) / np.sqrt((flat * flat).mean(-1) * (ref * ref).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_emulator_arguments(parser)
    parser.add_argument("--states", type=int, default=32)
    parser.add_argument("--members", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.states < 1 or args.members < 2:
        parser.error("--states must be >= 1 and --members >= 2")
    emulator, data = emulator_and_data(args)
    if data.shape[0] < args.states + 2:
        parser.error(f"{args.store} has {data.shape[0]} states, too few for --states")
    index = np.linspace(1, data.shape[0] - 2, args.states).astype(int)
    states = np.stack([np.asarray(emulator.initial_state(data[i - 1], data[i])) for i in index])
    proposal = EmulatorProposal(emulator, build_sampler(load_config(args.config)))
    step = jax.jit(jax.vmap(lambda key, state: proposal(state, None, None, key=key)))
    keys = jax.random.split(jax.random.key(args.seed), args.states * args.members)
    moved = step(keys, np.repeat(states, args.members, axis=0))
    members = np.asarray(jax.vmap(emulator.current_frame)(moved))
    members = members.reshape(args.states, args.members, *members.shape[1:])
    if not np.all(np.isfinite(members)):
        raise FloatingPointError("a member is not finite")
    mean = members.mean(axis=1)
    fields = {
        "error of the mean": data[index + 1] - mean,
        "member deviations": members - mean[:, None],
        "true 12 h step": data[index + 1] - data[index],
    }
    channels = emulator.grid.channels
    lowest_t = max(
        (i for i, c in enumerate(channels) if c.variable == "temperature"),
        key=lambda i: channels[i].level,
    )
    east, north, column = {}, {}, {}
    for name, f in fields.items():
        anomalies = f - f.mean(axis=(*range(f.ndim - 3), -1), keepdims=True)
        east[name], north[name] = neighbour_correlation(anomalies)
        column[name] = column_correlation(anomalies, lowest_t)
    names = list(fields)
    print(
        f"{emulator.name}: {args.states} held-out states x {args.members} members "
        f"({args.store}); anomalies from each latitude's mean"
    )
    print(
        "correlation with the next cell east | next cell north | the lowest-level temperature "
        f"({channels[lowest_t].label()}) of the same column"
    )
    print("columns: " + " / ".join(names))
    header = f"{'channel':<34}" + "".join(f"{h:>24}" for h in ("east", "north", "column"))
    print(header + "\n" + "-" * len(header))
    for c, channel in enumerate(channels):
        cells = "".join(
            f"{' / '.join(f'{table[n][c]:5.2f}' for n in names):>24}"
            for table in (east, north, column)
        )
        print(f"{channel.label():<34}{cells}")


if __name__ == "__main__":
    main()
