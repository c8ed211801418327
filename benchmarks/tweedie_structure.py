"""How far does one observation reach? Columns of the emulator's Tweedie covariance.

MMPS spreads an observation through the Tweedie covariance :math:`V[z \\mid z_\\sigma] =
\\sigma^2 \\partial D / \\partial z_\\sigma` (method spec §2). For a unit impulse at one grid
point of one channel this script computes :math:`\\sigma^2 J^\\top e` with one VJP of the
shipped Held–Suarez denoiser (conditioned on the first state pair of the bundled truth, at a
noisy version of the true next residual), for several σ, and prints how the column's energy
splits between the point itself, the same channel elsewhere, and the other channels.

In the truth, ``near_surface_temperature`` is a fixed multiple of the lowest level's
temperature, so a denoiser that had learned the data's covariance would couple those two
channels at every σ.

    python benchmarks/tweedie_structure.py --channel temperature@0.9375 --lat 8 --lon 16
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from _heldsuarez import first_transition
from filtrax.emulators.atmosphere import bundled_emulator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emulator", default="hs_t21_16x32")
    parser.add_argument("--channel", default="temperature@0.9375")
    parser.add_argument("--lat", type=int, default=8)
    parser.add_argument("--lon", type=int, default=16)
    parser.add_argument("--sigmas", default="0.05,0.3,1,3,10,30")
    args = parser.parse_args()
    emulator = bundled_emulator(args.emulator)
    names = [c.label() for c in emulator.grid.channels]
    if args.channel not in names:
        parser.error(f"--channel {args.channel!r} unknown; available: {', '.join(names)}")
    c = names.index(args.channel)
    cond, residual = first_transition(emulator, args.emulator)
    impulse = jnp.zeros(residual.shape).at[c, args.lat, args.lon].set(1.0)
    print(
        f"column of V[z | z_sigma] at {args.channel} (lat index {args.lat}, lon index {args.lon})"
    )
    print(f"{'sigma':>7} {'self':>6} {'same channel':>13} {'other channels':>15}  largest others")
    for sigma in (float(s) for s in args.sigmas.split(",")):
        noisy = jnp.asarray(residual) + sigma * jax.random.normal(jax.random.key(0), residual.shape)
        _, vjp = jax.vjp(lambda x, s=sigma: emulator.denoiser(x, jnp.asarray(s), cond), noisy)
        column = np.asarray(vjp(impulse)[0]) * sigma**2
        energy = column**2
        total = energy.sum()
        own = energy[c, args.lat, args.lon] / total
        channel = energy[c].sum() / total - own
        per_channel = energy.sum(axis=(1, 2))
        per_channel[c] = 0
        others = ", ".join(names[i] for i in np.argsort(-per_channel)[:2])
        print(f"{sigma:7.3g} {own:6.2f} {channel:13.2f} {1 - own - channel:15.2f}  {others}")


if __name__ == "__main__":
    main()
