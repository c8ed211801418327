r"""Does the emulator's denoiser use its noisy input? Its Jacobian against EDM's c_skip.

With EDM preconditioning the denoiser is
:math:`D(x, \sigma) = c_\text{skip}(\sigma)\, x + c_\text{out}(\sigma)\, F_\theta(c_\text{in} x,
\sigma, c)`. A network that predicts the conditional mean :math:`\mu(c)` from the
conditioning frames alone and ignores its noisy input has
:math:`\partial D / \partial x = c_\text{skip}\, I`: it is then the exact denoiser of
:math:`\mathcal N(\mu, \sigma_\text{data}^2 I)`, and its samples are :math:`\mu` plus noise
that is white in space and across channels, whatever the data's covariance.

The Held–Suarez data have an exact test. In the normalised 12 h residual three channels are
*identical*: the near-surface temperature is a fixed multiple of the lowest level's
temperature, and so is the lowest level's geopotential (hydrostatic balance), and each is
normalised by its own difference std, which carries the same factor. A denoiser that had
learned this averages the three noisy copies: with prior variance :math:`s^2` around the
mean, :math:`\partial D_i / \partial x_j = s^2 / (3 s^2 + \sigma^2)` for all three
:math:`i, j`, where the isotropic one has :math:`c_\text{skip} = s^2/(s^2+\sigma^2)` on the
diagonal and 0 off it.

For ``--points`` random grid points of the lowest-level temperature and the bundled truth's
first state pair, the script computes the Jacobian's column at that point (one VJP) at a
noisy version of the true residual, for several σ, and prints the diagonal, the coupling to
the two identical channels and to the next cell east (means over the points), next to
:math:`c_\text{skip}` and the three-copy denoiser's value.

A second table gives EDM's loss, :math:`\lambda(\sigma)\,\|D(x) - z\|^2` per entry
(cos-lat weighted; 1 for the isotropic denoiser at small σ), over every transition of the
bundled truth segment, for the three identical channels, for the others, and for the three
once the denoiser's outputs are replaced by their average: what a denoiser that had learned
the copies would reach.

    python benchmarks/denoiser_jacobian.py                         # the shipped emulator
    python benchmarks/denoiser_jacobian.py --weights runs/train/<name>/<name>.npz
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from _heldsuarez import add_emulator_choice, chosen_emulator, first_transition, truth_transitions
from filtrax.training.engine import loss_weight

IDENTICAL = ("temperature@0.9375", "geopotential@0.9375", "near_surface_temperature")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_emulator_choice(parser)
    parser.add_argument("--points", type=int, default=8)
    parser.add_argument("--sigmas", default="0.02,0.05,0.1,0.2,0.35,0.6,1,3")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.points < 1:
        parser.error(f"--points must be >= 1, got {args.points}")
    emulator = chosen_emulator(args)
    names = [c.label() for c in emulator.grid.channels]
    missing = [n for n in IDENTICAL if n not in names]
    if missing:
        parser.error(f"emulator {emulator.name!r} lacks the channels {missing}")
    own, first, second = (names.index(n) for n in IDENTICAL)
    # One truth for every emulator: a trained card need not ship a segment of its own.
    cond, residual = first_transition(emulator)
    spread = float(np.max(np.abs(residual[[first, second]] - residual[own])))
    sigma_data = emulator.denoiser.sigma_data_like(jnp.asarray(residual))
    s2 = float(np.broadcast_to(np.asarray(sigma_data), residual.shape)[own, 0, 0]) ** 2
    rng = np.random.default_rng(args.seed)
    num_lat, num_lon = residual.shape[1:]
    points = [(int(rng.integers(num_lat)), int(rng.integers(num_lon))) for _ in range(args.points)]
    print(
        f"{emulator.name}: Jacobian of the denoiser at {IDENTICAL[0]}, mean over {args.points} "
        f"points; the three channels {', '.join(IDENTICAL)} differ by at most {spread:.1e} "
        f"in the normalised residual (std {residual[own].std():.2f}); sigma_data = {s2**0.5:.2f}"
    )
    print(
        "columns: dD/dx at the point itself, to each identical channel at the point, to the "
        "next cell east;\n  then an isotropic denoiser's (c_skip, 0, 0) and a three-copy "
        "denoiser's (its value for self and for each copy, 0)"
    )
    header = f"{'sigma':>6} {'self':>7} {'each copy':>10} {'east':>7} {'c_skip':>8} {'3-copy':>7}"
    print(header + "\n" + "-" * len(header))
    key = jax.random.key(args.seed)
    for sigma in (float(s) for s in args.sigmas.split(",")):
        noisy = jnp.asarray(residual) + sigma * jax.random.normal(key, residual.shape)
        _, vjp = jax.vjp(lambda x, s=sigma: emulator.denoiser(x, jnp.asarray(s), cond), noisy)
        diagonal, copies, east = [], [], []
        for lat, lon in points:
            impulse = jnp.zeros(residual.shape).at[own, lat, lon].set(1.0)
            column = np.asarray(vjp(impulse)[0])
            diagonal.append(column[own, lat, lon])
            copies.append(0.5 * (column[first, lat, lon] + column[second, lat, lon]))
            east.append(column[own, lat, (lon + 1) % num_lon])
        c_skip = s2 / (s2 + sigma**2)
        three = s2 / (3 * s2 + sigma**2)
        print(
            f"{sigma:6.3g} {np.mean(diagonal):7.3f} {np.mean(copies):10.3f} "
            f"{np.mean(east):7.3f} {c_skip:8.3f} {three:7.3f}"
        )
    print_losses(emulator, [own, first, second], args)


def print_losses(emulator, identical: list[int], args) -> None:
    """EDM's loss per entry on the truth segment's transitions (module docstring)."""
    conds, residuals = truth_transitions(emulator)
    z = jnp.asarray(residuals)
    area = jnp.asarray(emulator.grid.area_weights())
    sigma_data = jnp.broadcast_to(
        emulator.denoiser.sigma_data_like(z[0]).reshape(-1), (z.shape[1],)
    )
    others = [c for c in range(z.shape[1]) if c not in identical]
    denoise = jax.jit(jax.vmap(emulator.denoiser, in_axes=(0, None, 0)))
    print(
        f"\nEDM loss per entry, {z.shape[0]} transitions of the bundled truth: the three identical "
        "channels, the others, the three with their outputs averaged"
    )
    header = f"{'sigma':>6} {'identical':>10} {'others':>7} {'averaged':>9}"
    print(header + "\n" + "-" * len(header))
    key = jax.random.fold_in(jax.random.key(args.seed), 1)
    for sigma in (float(s) for s in args.sigmas.split(",")):
        noisy = z + sigma * jax.random.normal(key, z.shape)
        denoised = denoise(noisy, jnp.asarray(sigma), conds)
        weight = loss_weight(sigma, sigma_data)[:, None, None]
        loss = np.asarray(jnp.mean(weight * area * (denoised - z) ** 2, axis=(0, 2, 3)))
        mean_of_copies = jnp.mean(denoised[:, identical], axis=1, keepdims=True)
        averaged = denoised.at[:, identical].set(
            jnp.broadcast_to(mean_of_copies, z[:, identical].shape)
        )
        loss_averaged = np.asarray(jnp.mean(weight * area * (averaged - z) ** 2, axis=(0, 2, 3)))
        print(
            f"{sigma:6.3g} {loss[identical].mean():10.3f} {loss[others].mean():7.3f} "
            f"{loss_averaged[identical].mean():9.3f}"
        )


if __name__ == "__main__":
    main()
