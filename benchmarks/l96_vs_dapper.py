"""Two-scale Lorenz-96 twin experiment: our filters and DAPPER's, on one truth and one y.

In one process, for a twin config (default ``configs/lorenz96/wilks05.toml``):

1. the truth is the full two-scale system (our JAX RK4, checked against DAPPER's in
   ``tests/test_lorenz96.py``), observed as the config says;
2. our methods, all driving the *learned* slow-variable emulator: FA-APF with Dirac+α
   weights, FA-APF with moment-matched weights, the bootstrap PF, their block-local
   variants (selection per block of ``--local-block`` sites,
   :mod:`filtrax.filters.localisation`, with inflation ``--local-inflation``), the
   stochastic EnKF and the free ensemble, for each N;
3. DAPPER's EnKF_N, LETKF and PartFilt with its truncated (parameterised) slow model and
   with the full two-scale model (an upper bound: they know the true dynamics), see
   ``benchmarks/dapper_baselines.py``.

It prints one table: time-mean RMSE of the analysis mean (± 95 % interval, autocorrelation
aware), spread, spread/RMSE, CRPS, mean ESS, ms per cycle and, for our methods, the share of
the cycle spent in emulator / guidance / weights / the filter's own work, and in brackets the
selection step timed on its own (:mod:`filtrax.profiling`). Scores are over the cycles after
the burn-in.

Run (a few minutes to an hour, depending on N and the setting)::

    python benchmarks/l96_vs_dapper.py --config configs/lorenz96/wilks05.toml \\
        --particles 16,64,256 --json runs/l96_wilks05.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from filtrax import metrics, streams
from filtrax.driver import SaveAt, assimilate
from filtrax.dynamics.lorenz96 import DEFAULT_DT
from filtrax.experiments.config import load_config
from filtrax.experiments.factory import (
    build_experiment,
    build_filter,
    initial_particles,
    lorenz96_truth,
)
from filtrax.profiling import phase_seconds

ROOT = Path(__file__).resolve().parents[1]
# The paper's methods and the baselines select globally and do not inflate, whatever the
# config says (the lorenz96 twin configs default to the block-local FA-APF).
GLOBAL = ["filter.localisation_block=[]", "filter.inflation=1.0"]
OUR_METHODS = {
    "FA-APF (Dirac+α)": ("fa_apf", [*GLOBAL, "filter.weights=dirac", "filter.tempering=ess_band"]),
    "FA-APF (moment-matched, α=1)": (
        "fa_apf",
        [*GLOBAL, "filter.weights=moment_matched", "filter.tempering=fixed", "filter.alpha=1.0"],
    ),
    "FA-APF (moment-matched+α)": (
        "fa_apf",
        [*GLOBAL, "filter.weights=moment_matched", "filter.tempering=ess_band"],
    ),
    "FA-APF (blocks of {block}, λ = {inflation}, Dirac+α)": (
        "fa_apf",
        [
            "filter.weights=dirac",
            "filter.tempering=ess_band",
            "filter.localisation_block=[{block}]",
            "filter.inflation={inflation}",
        ],
    ),
    "bootstrap PF (α=1)": ("bootstrap", [*GLOBAL, "filter.tempering=fixed", "filter.alpha=1.0"]),
    "bootstrap PF (ESS band α)": ("bootstrap", [*GLOBAL, "filter.tempering=ess_band"]),
    "bootstrap PF (blocks of {block}, λ = {inflation}, α=1)": (
        "bootstrap",
        [
            "filter.tempering=fixed",
            "filter.alpha=1.0",
            "filter.localisation_block=[{block}]",
            "filter.inflation={inflation}",
        ],
    ),
    "EnKF (emulator)": ("enkf", GLOBAL),
    "free ensemble": ("free", GLOBAL),
}


def full_truth(config, experiment) -> np.ndarray:
    """The full two-scale truth every RK4 step from the initial time (row 0 at ``X^0``).

    The same trajectory :func:`~filtrax.experiments.factory.build_experiment` took the
    experiment's truth from (same key, same code path: bit for bit).
    """
    truth_key = jax.random.fold_in(jax.random.key(config.seed), streams.TRUTH)
    full, slow = lorenz96_truth(config, experiment.emulator.setting, truth_key)
    if not np.array_equal(slow[2:], experiment.truth):
        raise RuntimeError("the re-built truth differs from the experiment's")
    return full[round(config.model.time_step / DEFAULT_DT) :]


def _local(text: str) -> str:
    """Fill the block-local methods' ``{block}`` and ``{inflation}`` from the arguments."""
    return text.format(block=ARGS.local_block, inflation=ARGS.local_inflation)


class _NonFiniteError(Exception):
    """Stops a run whose ensemble is no longer finite (reported as a note, not an error)."""


def run_ours(experiment, config, method: str, overrides: list[str], n: int, truth, y, burn):
    overrides = [_local(o) for o in overrides]
    cfg = load_config(ARGS.config, [*ARGS.set, f"filter.particles={n}", *overrides])
    filter_ = build_filter(cfg, experiment.emulator, method)
    particles = initial_particles(cfg, experiment.initial_state, n)
    observation_model = experiment.observation_model
    root = jax.random.fold_in(jax.random.key(config.seed), streams.RUN["analysis"])

    rows = {"rmse": [], "spread": [], "crps": [], "ess": [], "alpha": [], "seconds": []}

    def record(chunk) -> None:
        k = chunk.first_cycle
        frames = np.asarray(chunk.analysis[0], np.float64)
        rows["seconds"].append(chunk.seconds)
        if not np.all(np.isfinite(frames)):
            raise _NonFiniteError(f"non-finite particles at cycle {k}")
        rows["rmse"].append(metrics.rmse(frames, truth[k]))
        rows["spread"].append(metrics.spread(frames))
        rows["crps"].append(metrics.crps(frames, truth[k]))
        rows["ess"].append(float(chunk.diagnostics.ess[0]))
        rows["alpha"].append(float(chunk.diagnostics.alpha[0]))

    try:
        assimilate(
            filter_, particles, np.asarray(y[: len(truth)]), observation_model, key=root,
            save=SaveAt(moments=False), chunk_cycles=1, callback=record, allow_nonfinite=True,
        )  # fmt: skip
    except _NonFiniteError as stop:
        return {"note": str(stop)}
    after = slice(burn, None)
    rmse, rmse_ci = metrics.time_mean_with_interval(np.asarray(rows["rmse"][after]))
    profile = phase_seconds(
        filter_, filter_.init(particles), jnp.asarray(y[0]), observation_model, root
    )
    return {
        "rmse": rmse,
        "rmse_ci": rmse_ci,
        "spread": float(np.mean(rows["spread"][after])),
        "crps": float(np.mean(rows["crps"][after])),
        "ess": float(np.mean(rows["ess"][after])),
        "ms_per_cycle": 1e3 * float(np.median(rows["seconds"][1:])),
        "profile": profile,
        "rmse_series": rows["rmse"],
    }


def main() -> None:
    cfg = load_config(ARGS.config, ARGS.set)
    experiment = build_experiment(dataclasses.replace(cfg))
    full = full_truth(cfg, experiment)
    truth, y = experiment.truth, experiment.observations
    burn = cfg.run.burn_in
    sizes = [int(v) for v in ARGS.particles.split(",")]
    print(
        f"# {cfg.name}: setting {experiment.emulator.setting}, K = {truth.shape[1]}, "
        f"dt = {cfg.model.time_step}, {y.shape[1]} observed sites, obs variance "
        f"{float(experiment.observation_model.noise_variance[0]):.3g}, {cfg.run.cycles} cycles "
        f"(burn-in {burn}); emulator {experiment.emulator.name}",
        flush=True,
    )
    results = []
    chosen = [
        m for m in OUR_METHODS if not ARGS.methods or any(p in _local(m) for p in ARGS.methods)
    ]
    for n in sizes:
        for name in chosen:
            method, overrides = OUR_METHODS[name]
            tic = time.perf_counter()
            row = run_ours(experiment, cfg, method, overrides, n, truth, y, burn)
            row.update(method=_local(name), model="learned emulator", N=n)
            results.append(row)
            print(_format(row), f"  [{time.perf_counter() - tic:.0f} s]", flush=True)
    if not ARGS.no_dapper:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from dapper_baselines import run_dapper_baselines

        sites = np.asarray(experiment.observation_model.operator.indices)
        rows = run_dapper_baselines(
            experiment.emulator.setting,
            full,
            y,
            sites,
            float(experiment.observation_model.noise_variance[0]),
            burn,
            [int(v) for v in (ARGS.dapper_sizes or ARGS.particles).split(",")],
            seed=cfg.seed,
            time_step=cfg.model.time_step,
        )
        for row in rows:
            results.append(row)
            print(_format(row), flush=True)
    if ARGS.json:
        Path(ARGS.json).parent.mkdir(parents=True, exist_ok=True)
        Path(ARGS.json).write_text(json.dumps(results, indent=1, default=float))


def _format(row: dict) -> str:
    if "rmse" not in row or not math.isfinite(row.get("rmse", math.nan)):
        return f"| {row['method']} | {row['model']} | {row['N']} | failed: {row.get('note')} |"
    ratio = row["spread"] / row["rmse"]
    ci = f" ± {row['rmse_ci']:.3f}" if "rmse_ci" in row else ""
    ess = f"{row['ess']:.1f}" if "ess" in row else "-"
    profile = row.get("profile")
    shares = "-"
    if profile:
        total = profile["cycle"]
        shares = " / ".join(
            f"{100 * profile[p] / total:.0f}" for p in ("emulator", "guidance", "weights", "filter")
        )
        shares += f" ({100 * profile['selection'] / total:.1f})"
    return (
        f"| {row['method']} | {row['model']} | {row['N']} | {row['rmse']:.3f}{ci} | "
        f"{row['spread']:.3f} | {ratio:.2f} | {row['crps']:.3f} | {ess} | "
        f"{row['ms_per_cycle']:.1f} | {shares} |"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs/lorenz96/wilks05.toml"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--particles", default="16,64,256")
    parser.add_argument(
        "--methods", nargs="*", help="substrings of the method names to run (default all)"
    )
    parser.add_argument(
        "--dapper-sizes", help="ensemble sizes for DAPPER's filters (default: --particles)"
    )
    parser.add_argument(
        "--local-block",
        type=int,
        default=4,
        help="sites per selection block of the block-local filters (default 4)",
    )
    parser.add_argument(
        "--local-inflation",
        type=float,
        default=1.0,
        help="multiplicative inflation λ of the block-local filters (default 1)",
    )
    parser.add_argument("--no-dapper", action="store_true")
    parser.add_argument("--json", help="write every row (with per-cycle RMSE) here")
    ARGS = parser.parse_args()
    print(
        "| method | model | N | RMSE ± 95% | spread | spread/RMSE | CRPS | ESS | ms/cycle | "
        "% emulator / guidance / weights / filter (selection) |\n"
        "|---|---|---|---|---|---|---|---|---|---|"
    )
    main()
