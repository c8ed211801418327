r"""Where the atmosphere emulator's spread comes from: members, their mean, and the weights' mean.

For ``--states`` consecutive state pairs :math:`(x^{k-1}, x^k)` of the truth, the script draws
``--members`` unguided 12-hour transitions with the config's sampler (the free ensemble's
proposal) and prints, per variable (levels pooled, cos-latitude weighted, physical units):

* **member**: the RMSE of one member against the truth (root mean over members);
* **mean**: the RMSE of the members' mean, the Monte Carlo estimate of
  :math:`E[x^{k+1} \mid x^k]`;
* **one call**: the RMSE of the one-denoiser-call estimate of that mean at
  ``sampler.sigma_max`` on pure noise, which the FA-APF's Dirac and moment-matched weights
  use (method spec §3.1);
* **spread**: the members' standard deviation (unbiased), and spread / mean-RMSE. For a
  calibrated transition the members' mean error and their spread are of the same size
  (spread / RMSE ≈ 1), and a member's error is about √2 times the mean's.

It then prints how much of the noise the denoiser lets through at several σ (the slope of
:math:`D(z + \sigma\epsilon) - z` on :math:`\sigma\epsilon`), next to
:math:`v / (v + \sigma^2)`, what the posterior mean of a Gaussian transition with the measured
latent error variance :math:`v` would let through. Noise let through at the last noise
levels stays in the sample.

It also prints how far the members break two identities that hold exactly in the truth
(``near_surface_temperature`` = c · lowest-level temperature, and lowest-level geopotential
= a · lowest-level temperature, with c and a fitted to the truth), which an emulator that had
learned the data's structure would keep.

Why it matters for the filters: a transition whose members carry extra noise is
over-dispersed; the free ensemble's mean averages that noise away over N members, while a
particle filter that keeps a few ancestors per cycle cannot.

    python benchmarks/emulator_noise.py                       # shipped hs_t21_16x32
    python benchmarks/emulator_noise.py --set model.weights=runs/train/hs_t21_16x32/hs_t21_16x32.npz
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from filtrax.experiments.config import load_config
from filtrax.experiments.factory import build_experiment, build_filter

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs/heldsuarez/poster16.toml")
    parser.add_argument("--states", type=int, default=4, help="consecutive initial state pairs")
    parser.add_argument("--members", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    if args.states < 1 or args.members < 2:
        parser.error("need --states >= 1 and --members >= 2")
    config = load_config(
        args.config,
        [*args.overrides, f"run.cycles={args.states + 1}", "filter.particles=2"],
    )
    exp = build_experiment(config)
    emulator, grid = exp.emulator, exp.grid
    proposal = build_filter(config, emulator, "free").proposal
    labels = [c.label() for c in grid.channels]
    variables = [label.split("@")[0] for label in labels]
    weights = grid.area_weights()
    sigma_max = jnp.asarray(config.sampler.sigma_max, jnp.float32)

    @jax.jit
    def members(keys, state):
        return jax.vmap(lambda k: proposal(state, None, exp.observation_model, key=k)[-1])(keys)

    @jax.jit
    def one_call(key, state):
        template = emulator.latent_template(state)
        z = emulator.denoiser(
            sigma_max * emulator.noise(key, template), sigma_max, emulator.condition(state)
        )
        return emulator.latent_to_frame(z, state)

    # x^{-1}, x^0 and the truth frames: consecutive pairs along the segment.
    frames = np.concatenate([np.asarray(exp.initial_state), np.asarray(exp.truth)], axis=0)
    key = jax.random.key(args.seed)
    squared = {name: [] for name in ("member", "mean", "one_call", "spread")}
    ensembles = []
    for k in range(args.states):
        state = jnp.asarray(frames[k : k + 2])
        truth = frames[k + 2]
        key, draw, call = jax.random.split(key, 3)
        x = np.asarray(members(jax.random.split(draw, args.members), state))
        ensembles.append(x)
        squared["member"].append((((x - truth) ** 2) * weights).mean(axis=(0, 2, 3)))
        squared["mean"].append((((x.mean(0) - truth) ** 2) * weights).mean(axis=(1, 2)))
        estimate = np.asarray(one_call(call, state))
        squared["one_call"].append((((estimate - truth) ** 2) * weights).mean(axis=(1, 2)))
        squared["spread"].append((x.var(0, ddof=1) * weights).mean(axis=(1, 2)))
    per_channel = {name: np.mean(values, axis=0) for name, values in squared.items()}

    print(
        f"{config.model.weights or config.model.emulator}: {args.states} initial states x "
        f"{args.members} members, sampler {config.sampler.name} ({config.sampler.levels} "
        f"levels, sigma {config.sampler.sigma_max:g}..{config.sampler.sigma_min:g}); RMSE at 12 h"
    )
    header = (
        f"{'variable':<26}{'member':>10}{'mean':>10}{'one call':>10}{'spread':>10}"
        f"{'spread/mean':>13}"
    )
    print(header)
    print("-" * len(header))
    for variable in dict.fromkeys(variables):
        pick = np.array([v == variable for v in variables])
        row = {name: float(np.sqrt(values[pick].mean())) for name, values in per_channel.items()}
        print(
            f"{variable:<26}{row['member']:>10.3g}{row['mean']:>10.3g}{row['one_call']:>10.3g}"
            f"{row['spread']:>10.3g}{row['spread'] / row['mean']:>13.2f}"
        )

    low = max(c.level for c in grid.channels if c.variable == "temperature")
    t_index = labels.index(f"temperature@{low:g}")
    checks = [
        ("near_surface_temperature", "near_surface_temperature"),
        ("geopotential (lowest level)", f"geopotential@{low:g}"),
    ]
    truth_all = frames[2 : args.states + 2]
    samples = np.stack(ensembles)  # (state, member, channel, lat, lon)
    # How much of the noise the denoiser lets through at each σ, on the first state pair:
    # the slope of D(z + σε) - z on σε. For a Gaussian transition whose latent error variance
    # is v, E[z | z_σ] passes v / (v + σ²) of it; v is measured above (the members' mean
    # error, in latent units, pooled over channels).
    scale = np.asarray(emulator.diff_std)[:, None, None]
    latent_error = np.mean(
        [(e / np.asarray(emulator.diff_std) ** 2).mean() for e in squared["mean"]]
    )
    state = jnp.asarray(frames[0:2])
    cond = emulator.condition(state)
    z_true = (frames[2] - frames[1]) / scale
    denoise = jax.jit(lambda x, s, c: emulator.denoiser(x, s, c))
    print(
        f"\nnoise passed through by the denoiser (slope of D(z + s e) - z on s e), against "
        f"v / (v + s^2) for the measured latent error variance v = {latent_error:.3f}:"
    )
    print(f"{'sigma':>8}{'denoiser':>10}{'v/(v+s^2)':>11}")
    for sigma in (0.1, 0.3, 1.0, 3.0, 10.0):
        slopes = []
        for i in range(4):
            eps = np.asarray(jax.random.normal(jax.random.fold_in(key, i), z_true.shape))
            out = np.asarray(denoise(jnp.asarray(z_true + sigma * eps), jnp.asarray(sigma), cond))
            slopes.append(float(((out - z_true) * eps).sum() / (sigma * (eps * eps).sum())))
        ideal = latent_error / (latent_error + sigma**2)
        print(f"{sigma:>8g}{np.mean(slopes):>10.3f}{ideal:>11.3f}")

    print("\nidentities of the truth, broken by the members (RMS of the residual):")
    for name, label in checks:
        if label not in labels:
            continue
        i = labels.index(label)
        t_true, d_true = truth_all[:, t_index], truth_all[:, i]
        factor = float((d_true * t_true).sum() / (t_true * t_true).sum())
        truth_residual = np.sqrt(np.mean((d_true - factor * t_true) ** 2))
        member_residual = np.sqrt(
            np.mean((samples[:, :, i] - factor * samples[:, :, t_index]) ** 2)
        )
        print(
            f"  {name} = {factor:.6g} x temperature@{low:g}: truth {truth_residual:.3g}, "
            f"members {member_residual:.3g}"
        )


if __name__ == "__main__":
    main()
