"""The regime suite: is the particle filter never worse than doing nothing, in every regime?

Each regime is a config and its overrides (model, truth start, network); in each, every
method runs through ``filtrax run`` on the same emulator, truth and observations (same
seed), with the free ensemble as the baseline run. After the burn-in it prints, per method:

* the RMSE ratio to the free ensemble, per variable (levels pooled), and its worst;
* the RMSE ratio to the LETKF on the same emulator;
* spread/RMSE;
* the first cycle from which the method stays below the free ensemble.

The last lines are ``worst FA-APF/free: r; worst FA-APF/LETKF: q; worst spread/RMSE: s`` for
the default FA-APF and for each remedy. Finished runs under ``--out`` are reused (a killed
suite resumes), unless their config differs, which is an error.

    python benchmarks/regimes.py --quick --out runs/regimes      # about 4 min on 2 CPU cores
    python benchmarks/regimes.py --out runs/regimes_full          # every regime, longer runs

The LETKF reference uses λ = 1.05 and, on Lorenz-96, a Gaspari-Cohn half-width of 2 sites
(fixed, not tuned per regime; global elsewhere). ``--regime TEXT`` runs only the regimes
whose name contains TEXT, e.g. ``--regime Held-Suarez --cycles 10 --burn-in 3``.
"""

from __future__ import annotations

import argparse
import math
import tomllib
from pathlib import Path

import numpy as np
import xarray as xr

from filtrax.experiments.config import config_from_dict, load_config
from filtrax.experiments.runner import RunDirectoryError, config_digest, run_experiment

ROOT = Path(__file__).resolve().parents[1]
L96 = ROOT / "configs" / "lorenz96"
HS = ROOT / "configs" / "heldsuarez" / "poster16.toml"
FROM_REST = ["model.spin_up=0"]
ATTRACTOR = ["model.spin_up=20"]
#: name -> (config, overrides, quick?)
REGIMES = {
    "linear-Gaussian": (ROOT / "configs/linear_gaussian/kalman_check.toml", [], True),
    "wilks05, every 2nd X, from rest": (L96 / "wilks05_every_second.toml", FROM_REST, True),
    "wilks05, every 2nd X, attractor": (L96 / "wilks05_every_second.toml", ATTRACTOR, True),
    "wilks05, every X, from rest": (L96 / "wilks05.toml", FROM_REST, False),
    "lorenz96, every 2nd X, from rest": (L96 / "lorenz96_every_second.toml", FROM_REST, True),
    "lorenz96, every 2nd X, attractor": (L96 / "lorenz96_every_second.toml", ATTRACTOR, False),
    # Held-Suarez (the bundled 16 x 32 card), N = 16: temperature at every 4th and every 2nd
    # column (the poster's network and a denser one).
    "Held-Suarez, every 4th column, N = 16": (HS, ["filter.particles=16"], False),
    "Held-Suarez, every 2nd column, N = 16": (
        HS,
        ["filter.particles=16", "observations.stride=2"],
        False,
    ),
    # A random station network: 40 columns, area-weighted (observations.network_seed 0),
    # sigma = 0.5 K, as a new user would try one.
    "Held-Suarez, 40 random columns, N = 16": (
        HS,
        ["filter.particles=16", "observations.stations=40", "observations.error_std=0.5"],
        False,
    ),
}
#: Global selection, no inflation: the FA-APF as the paper runs it, whatever the config says.
PLAIN = ["filter.localisation_block=[]", "filter.inflation=1.0", "filter.adaptive_inflation=false"]
#: The library's default FA-APF (Dirac weights, ESS-band α), whatever the config says.
FA_APF = ["filter.method=fa_apf", "filter.weights=dirac", "filter.tempering=ess_band", *PLAIN]
#: The ensemble Kalman particle filter: the LETKF takes what the tempering leaves out,
#: localised as the LETKF reference is.
HYBRID = [*FA_APF, "filter.hybrid=letkf", "filter.localisation_half_width=2"]
UNRESAMPLED = [
    *FA_APF,
    "filter.tempering=fixed",
    "filter.alpha=0",
    "filter.localisation_half_width=2",
]
METHODS = {
    "FA-APF (default)": FA_APF,
    "FA-APF + kernel": [*FA_APF, "filter.rejuvenation=kernel"],
    "FA-APF + kernel + adaptive λ": [
        *FA_APF,
        "filter.rejuvenation=kernel",
        "filter.adaptive_inflation=true",
    ],
    "FA-APF + transform": [*FA_APF, "filter.rejuvenation=transform"],
    "FA-APF + transform + adaptive λ": [
        *FA_APF,
        "filter.rejuvenation=transform",
        "filter.adaptive_inflation=true",
    ],
    "FA-APF + transform + kernel": [*FA_APF, "filter.rejuvenation=transform+kernel"],
    "FA-APF + LETKF hybrid": HYBRID,
    # The same with the particle filter's share held to ESS >= 0.9 N: selection then removes
    # little diversity, which a near-deterministic transition cannot restore.
    "FA-APF + LETKF hybrid, ESS ≥ 0.9N": [*HYBRID, "filter.ess_band=[0.9, 0.95]"],
    "FA-APF + LETKF hybrid + kernel": [*HYBRID, "filter.rejuvenation=kernel"],
    "FA-APF + LETKF hybrid + adaptive λ": [*HYBRID, "filter.adaptive_inflation=true"],
    # No resampling: the move guided by the whole likelihood, then an ensemble Kalman
    # update of the share of the innovation the move did not absorb (filtrax.filters.hybrid).
    "FA-APF + predictive Kalman": [*UNRESAMPLED, "filter.hybrid=predictive_unabsorbed"],
    "FA-APF + moved Kalman": [*UNRESAMPLED, "filter.hybrid=unabsorbed"],
    "bootstrap PF": ["filter.method=bootstrap", *PLAIN],
    "LETKF": ["filter.method=letkf", "filter.inflation=1.05", "filter.localisation_half_width=2"],
}
REMEDIES = [m for m in METHODS if m.startswith("FA-APF +")]


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_").lower()


def run_method(regime, method, out: Path, args) -> xr.Dataset:
    config_path, regime_overrides, _ = REGIMES[regime]
    overrides = [*regime_overrides, *METHODS[method], *args.set]
    overrides += [f"run.cycles={args.cycles}", f"run.burn_in={args.burn_in}"]
    overrides += ["run.profile=false", f"run.baseline={'true' if method == 'LETKF' else 'false'}"]
    if "lorenz96" not in str(config_path):  # the LETKF's 2-site half-width is Lorenz-96's
        overrides = [o for o in overrides if not o.startswith("filter.localisation_half_width")]
    config = load_config(config_path, overrides)
    return run_or_reuse(config, out / _slug(regime) / _slug(method))


def run_or_reuse(config, run_dir: Path) -> xr.Dataset:
    """The metrics of ``config``'s run in ``run_dir``: reused when finished (refused when that
    run is of another config), resumed when killed, else run."""
    if (run_dir / "metrics.nc").exists():
        stored = config_from_dict(tomllib.loads((run_dir / "config.toml").read_text()))
        if config_digest(stored) != config_digest(config):
            raise SystemExit(
                f"error: {run_dir} holds a finished run of another config; remove it or "
                f"choose another --out"
            )
    else:
        try:
            run_experiment(config, run_dir, quiet=True, report=False, resume=run_dir.exists())
        except RunDirectoryError as error:
            raise SystemExit(f"error: {error}") from None
    return xr.open_dataset(run_dir / "metrics.nc").load()


def per_variable(metrics: xr.Dataset, ensemble: str, name: str, after: int) -> dict:
    """Time mean over cycles >= ``after`` of the variable's RMS over its channels."""
    values = metrics[name].sel(ensemble=ensemble).values[after:]  # (cycle, channel)
    out = {}
    for variable in dict.fromkeys(str(v) for v in metrics["variable"].values):
        channels = metrics["variable"].values == variable
        out[variable] = float(np.mean(np.sqrt(np.mean(values[:, channels] ** 2, axis=1))))
    return out


def first_cycle_below(metrics, free: xr.Dataset) -> int | None:
    """The first cycle from which the pooled RMSE stays below the free ensemble's."""
    ours = np.sqrt(np.mean(metrics.rmse.sel(ensemble="analysis").values ** 2, axis=1))
    base = np.sqrt(np.mean(free.rmse.sel(ensemble="baseline").values ** 2, axis=1))
    below = ours < base
    for k in range(len(below)):
        if below[k:].all():
            return k
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the quick regimes, 60 cycles")
    parser.add_argument("--cycles", type=int, default=None)
    parser.add_argument("--burn-in", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "regimes")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--regime", action="append", default=[], help="only the regimes whose name contains this"
    )
    parser.add_argument(
        "--method",
        action="append",
        default=[],
        choices=list(METHODS),
        help="only these methods (the LETKF always runs: it carries the free baseline)",
    )
    args = parser.parse_args()
    methods = [m for m in METHODS if not args.method or m in args.method or m == "LETKF"]
    args.cycles = args.cycles or (60 if args.quick else 200)
    worst = {m: [0.0, 0.0, math.inf, 0.0] for m in methods if m.startswith("FA-APF")}
    for regime, (_, _, quick) in REGIMES.items():
        if (args.quick and not quick) or (
            args.regime and not any(r in regime for r in args.regime)
        ):
            continue
        results = {m: run_method(regime, m, args.out, args) for m in methods}
        free_metrics = results["LETKF"]  # the LETKF run carries the free baseline
        free = per_variable(free_metrics, "baseline", "rmse", args.burn_in)
        letkf = per_variable(results["LETKF"], "analysis", "rmse", args.burn_in)
        print(f"\n{regime} ({args.cycles} cycles, scores after cycle {args.burn_in})")
        print(f"{'method':<30} {'/free (worst var)':>18} {'/LETKF':>8} {'spread/RMSE':>12} "
              f"{'below free from':>16}")  # fmt: skip
        print(f"{'free ensemble':<30} {'1.00':>18} "
              f"{max(free[v] / letkf[v] for v in free):8.2f}")  # fmt: skip
        for method, metrics in results.items():
            rmse = per_variable(metrics, "analysis", "rmse", args.burn_in)
            spread = per_variable(metrics, "analysis", "spread", args.burn_in)
            to_free = max(rmse[v] / free[v] for v in rmse)
            to_letkf = max(rmse[v] / letkf[v] for v in rmse)
            ratio = min(spread[v] / rmse[v] for v in rmse)
            ratio_hi = max(spread[v] / rmse[v] for v in rmse)
            start = first_cycle_below(metrics, free_metrics)
            print(f"{method:<30} {to_free:18.2f} {to_letkf:8.2f} {ratio:6.2f}-{ratio_hi:<5.2f} "
                  f"{'never' if start is None else start:>16}")  # fmt: skip
            if method in worst:
                w = worst[method]
                w[0], w[1] = max(w[0], to_free), max(w[1], to_letkf)
                w[2], w[3] = min(w[2], ratio), max(w[3], ratio_hi)
    print()
    for method, (to_free, to_letkf, low, high) in worst.items():
        print(f"{method}: worst FA-APF/free: {to_free:.2f}; worst FA-APF/LETKF: {to_letkf:.2f}; "
              f"worst spread/RMSE: {low:.2f} (highest {high:.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
