"""One regime of the suite, one filter: its RMSE against the free ensemble's, and its spread.

Where ``benchmarks/regimes.py`` compares the named methods, this runs one regime
(``--regime``, as named there) with any ``--set`` overrides and prints one line: the
root-mean-square over cycles after ``--burn-in`` of the analysis RMSE, its ratio to the free
ensemble's (the run's baseline, same truth and observations), spread/RMSE and the median α.
It is how the Lorenz-96 page takes a filter apart (what the selection, the guidance and the
Kalman update each contribute):

    python benchmarks/regime_probe.py --regime "lorenz96, every 2nd X, from rest" \\
        --label "guided, no selection" --set filter.tempering=fixed --set filter.alpha=0
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import regimes
from filtrax.experiments.config import load_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regime", required=True, choices=list(regimes.REGIMES))
    parser.add_argument("--label", required=True, help="names the run directory and the line")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--cycles", type=int, default=60)
    parser.add_argument("--burn-in", type=int, default=20)
    parser.add_argument("--out", type=Path, default=regimes.ROOT / "runs" / "probe")
    args = parser.parse_args()
    config_path, regime_overrides, _ = regimes.REGIMES[args.regime]
    overrides = [*regime_overrides, *args.set, f"run.cycles={args.cycles}"]
    overrides += [f"run.burn_in={args.burn_in}", "run.profile=false", "run.baseline=true"]
    run_dir = args.out / regimes._slug(args.regime) / regimes._slug(args.label)
    metrics = regimes.run_or_reuse(load_config(config_path, overrides), run_dir)

    def scored(name: str, ensemble: str) -> float:
        values = metrics[name].sel(ensemble=ensemble).isel(cycle=slice(args.burn_in, None))
        return float(np.sqrt((values**2).mean()))

    rmse, spread = scored("rmse", "analysis"), scored("spread", "analysis")
    ratio = rmse / scored("rmse", "baseline")
    alpha = metrics.alpha
    if "ensemble" in alpha.dims:
        alpha = alpha.sel(ensemble="analysis")
    alpha = np.asarray(alpha).reshape(-1)[args.burn_in :]
    print(
        f"{args.regime} | {args.label}: RMSE {rmse:.3f}, /free {ratio:.2f}, "
        f"spread/RMSE {spread / rmse:.2f}, median α {np.median(alpha):.2g}"
    )


if __name__ == "__main__":
    main()
