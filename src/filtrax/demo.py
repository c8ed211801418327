"""``python -m filtrax.demo``: a linear-Gaussian twin experiment against the Kalman filter.

The truth follows ``x' = A x + w`` (d = 16, correlated ``Q``), half of the components are
observed with noise every cycle. Every filter starts from N copies of the true initial
state; the table reports, time-averaged over the cycles after a short burn-in, the RMSE of
the analysis mean against the truth, the ensemble spread and the ESS before resampling.
The Kalman filter is exact here, so it is the bar every particle filter is measured against.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import filtrax as fx


def build_filters(model: fx.LinearGaussianModel, guidance_iterations: int) -> dict:
    emulator = model.emulator()
    sampler = fx.DPMSolverPlusPlus2SSampler.gencast()
    guided = fx.EmulatorProposal(emulator, sampler, fx.MMPSGuidance(guidance_iterations))
    unguided = fx.EmulatorProposal(emulator, sampler)
    return {
        "FA-APF, Dirac weights + ESS-band α": fx.AuxiliaryParticleFilter(
            guided, fx.DiracPredictiveWeight(), fx.ESSBandTempering()
        ),
        "FA-APF, moment-matched weights, α=1": fx.AuxiliaryParticleFilter(
            guided,
            fx.MomentMatchedPredictiveWeight(cg_iterations=guidance_iterations),
            fx.FixedTempering(1.0),
        ),
        "bootstrap PF": fx.BootstrapParticleFilter(unguided),
        "free ensemble": fx.FreeEnsemble(unguided),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, default=128)
    parser.add_argument("--cycles", type=int, default=40)
    parser.add_argument("--state-dim", type=int, default=16)
    parser.add_argument("--burn-in", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.particles < 2 or args.cycles <= args.burn_in or args.state_dim < 2:
        parser.error("need --particles >= 2, --cycles > --burn-in and --state-dim >= 2")

    model = fx.random_linear_gaussian_model(args.seed, args.state_dim, dtype=np.float32)
    x0 = jnp.zeros(args.state_dim)
    truth, observations = model.simulate(jax.random.key(args.seed), x0, args.cycles)
    truth = np.asarray(truth)
    kalman = model.kalman_filter(
        np.zeros(args.state_dim), np.zeros((args.state_dim,) * 2), np.asarray(observations)
    )
    after = slice(args.burn_in, None)

    def rmse(mean: np.ndarray) -> float:
        return float(np.mean(np.sqrt(np.mean((mean - truth) ** 2, axis=-1))[after]))

    rows = [
        (
            "Kalman filter (exact)",
            rmse(kalman.means),
            float(
                np.mean(np.sqrt(np.einsum("kii->k", kalman.covariances) / args.state_dim)[after])
            ),
            float("nan"),
            0.0,
        )
    ]
    initial = jnp.broadcast_to(x0, (args.particles, args.state_dim))
    print(
        f"Linear-Gaussian twin experiment: d={args.state_dim}, "
        f"{model.observation_matrix.shape[0]} observed, N={args.particles}, "
        f"{args.cycles} cycles (first {args.burn_in} not scored)"
    )
    for name, filter_ in build_filters(model, guidance_iterations=4).items():
        start = time.perf_counter()
        result = fx.assimilate(
            filter_, initial, observations, model.observation_model(), key=jax.random.key(1)
        )
        seconds = time.perf_counter() - start
        spread = np.sqrt(np.mean(np.asarray(result.analysis_spread) ** 2, axis=-1))
        rows.append(
            (
                name,
                rmse(np.asarray(result.analysis_mean)),
                float(np.mean(spread[after])),
                float(np.mean(np.asarray(result.diagnostics.ess)[after])),
                seconds,
            )
        )
    header = f"{'method':<38} {'RMSE':>7} {'spread':>7} {'ESS':>7} {'seconds':>8}"
    print(header)
    print("-" * len(header))
    for name, error, spread, ess, seconds in rows:
        ess_text = "-" if np.isnan(ess) else f"{ess:7.1f}"
        print(f"{name:<38} {error:7.3f} {spread:7.3f} {ess_text:>7} {seconds:8.1f}")
    print("(seconds include JIT compilation)")


if __name__ == "__main__":
    main()
