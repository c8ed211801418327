"""``python -m filtrax.demo`` (``make demo``): the poster's experiment, shortened.

**Default: the 32 × 64 Held–Suarez atmosphere.** The FA-APF (Dirac weights with ESS-band α,
MMPS guidance with 8 CG steps, DPM-Solver++(2S)) with N = 16 particles assimilates 10 cycles
of 12 h of temperature (all levels and the near-surface analogue, every column, σ = 0.1 K)
into the bundled hybrid emulator ``hs_t21_32x64_hybrid``, on the held-out truth shipped with
it, next to a free ensemble from the same start. It is ``configs/heldsuarez/poster.toml`` with fewer
particles and cycles, the first two cycles left out of the scores and no phase profile
(:data:`DEMO_CONFIG`, checked against that file by the tests). It prints one row per
variable (:func:`filtrax.report.variable_table`, the table the run's report opens with) and
where the run directory, report and figures are.

**``--linear-gaussian``: the exactness check.** The truth follows ``x' = A x + w``
(d = 16, correlated ``Q``), half of the components are observed with noise every cycle.
Every filter starts from N copies of the true initial state; the table reports,
time-averaged over the cycles after a short burn-in, the RMSE of the analysis mean against
the truth, the ensemble spread and the ESS before resampling. The Kalman filter is exact
here, so it is the bar every particle filter is measured against.
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


#: ``configs/heldsuarez/poster.toml`` with N = 16, 10 cycles, cycles 1–2 left out of the
#: scores and no phase profile.
DEMO_CONFIG = {
    "name": "heldsuarez_demo",
    "seed": 0,
    "model": {"name": "heldsuarez", "emulator": "hs_t21_32x64_hybrid"},
    "truth": {"source": "bundled"},
    "observations": {
        "source": "synthetic",
        "variables": ["temperature", "near_surface_temperature"],
        "stride": 1,
        "error_std": 0.1,
    },
    "filter": {"method": "fa_apf", "particles": 16, "weights": "dirac", "tempering": "ess_band"},
    "sampler": {
        "name": "dpmpp2s",
        "levels": 10,
        "sigma_max": 80.0,
        "sigma_min": 0.01,
        "churn": 2.5,
    },
    "guidance": {"name": "mmps", "iterations": 8},
    "run": {
        "cycles": 10,
        "cycle_hours": 12.0,
        "start_time": "2001-03-27T00:00",
        "baseline": True,
        # The first two cycles are the filter's spin-up from N copies of one state.
        "burn_in": 2,
        # The phase profile (each phase compiled and timed on its own) would take about a
        # third of the demo's time; the demo does not need the cost split.
        "profile": False,
    },
}


def _is_run_named(run_dir, name: str) -> bool:
    """Whether ``run_dir`` holds a run directory whose config is named ``name``."""
    import tomllib

    try:
        return tomllib.loads((run_dir / "config.toml").read_text()).get("name") == name
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False


def atmosphere_demo(out: str, particles: int, cycles: int) -> None:
    """Run :data:`DEMO_CONFIG` into ``out`` and print per-variable skill."""
    from pathlib import Path

    import xarray as xr

    from .experiments.config import config_from_dict
    from .experiments.runner import run_experiment
    from .report import format_variable_table, variable_table

    data = {**DEMO_CONFIG}
    data["filter"] = {**data["filter"], "particles": particles}
    burn_in = min(data["run"]["burn_in"], cycles - 1)
    data["run"] = {**data["run"], "cycles": cycles, "burn_in": burn_in}
    config = config_from_dict(data)
    run_dir = Path(out)
    # The demo starts afresh, but only ever replaces a run of its own (its own files only).
    previous = run_dir.is_dir() and any(run_dir.iterdir())
    if previous and not _is_run_named(run_dir, config.name):
        raise SystemExit(
            f"error: {run_dir} exists and is not a previous run of this demo; move it away "
            f"or pass another --out"
        )
    print(
        f"The poster's experiment on the 32 x 64 Held-Suarez atmosphere (emulator "
        f"{config.model.emulator}, dinosaur's truth): FA-APF with N = {particles}, {cycles} "
        "cycles of 12 h; temperature observed in every column (sigma = 0.1 K)."
    )
    start = time.perf_counter()
    run_experiment(config, run_dir, quiet=False, overwrite=previous)
    seconds = time.perf_counter() - start
    metrics = xr.open_dataset(run_dir / "metrics.nc").load()
    rows = variable_table(metrics, set(config.observations.variables), burn_in)
    print(
        f"\nMean over cycles {burn_in + 1}-{cycles} (cos-lat weighted, levels pooled; ratio = "
        "filter RMSE / free RMSE):"
    )
    print(format_variable_table(rows))
    print(f"\n{seconds:.0f} s (including compilation)")
    print(f"run directory: {run_dir}")
    print(f"report:        {run_dir / 'report.md'}")
    print(f"figures:       {run_dir / 'figures'}")
    print("the command line: .venv/bin/filtrax --help (or `source .venv/bin/activate`)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument(
        "--linear-gaussian",
        action="store_true",
        help="run the linear-Gaussian exactness check against the Kalman filter instead",
    )
    parser.add_argument("--out", default="runs/demo", help="run directory (atmosphere demo)")
    parser.add_argument("--particles", type=int, default=None, help="16 (atmosphere), 128")
    parser.add_argument("--cycles", type=int, default=None, help="10 (atmosphere), 40")
    parser.add_argument("--state-dim", type=int, default=16)
    parser.add_argument("--burn-in", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.linear_gaussian:
        particles = 16 if args.particles is None else args.particles
        cycles = 10 if args.cycles is None else args.cycles
        if particles < 2 or cycles < 1:
            parser.error("need --particles >= 2 and --cycles >= 1")
        atmosphere_demo(args.out, particles, cycles)
        return
    args.particles = 128 if args.particles is None else args.particles
    args.cycles = 40 if args.cycles is None else args.cycles
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
    # `make demo` runs this module: it keeps its compilations on disk as `filtrax demo` does,
    # so that a second demo starts warm (FILTRAX_CACHE_DIR, `filtrax cache info`).
    from .compilation_cache import enable_compilation_cache

    enable_compilation_cache()
    main()
