"""The poster's experiment in miniature, on the Held–Suarez emulator: every method, one truth.

Savary, Rozet & Louppe (2025) assimilate 2 m temperature and temperature at all levels on a
4° sub-grid (σ = 0.1 K) into GenCast for 30 cycles of 12 h, from N copies of the true state,
and show (i) skill against lead for observed and unobserved variables, (ii) spread against
skill, (iii) maps of the ensemble mean against the truth for an unobserved variable. This
script does the same with our emulator (``configs/heldsuarez/poster.toml``, the 32 × 64 hybrid;
``--config configs/heldsuarez/poster16.toml`` for the 16 × 32 study): every
method runs through ``filtrax run`` into its own run directory under ``--out`` (a killed
benchmark resumes: finished runs are reused, unfinished ones continue from their last
cycle), on the same truth segment and the same observations (same seed). A finished run
whose config differs from the one asked for is an error, not a silent reuse.

``--set KEY=VALUE`` applies to every method; ``--method-set SLUG:KEY=VALUE`` applies to one
method, after that method's own settings (e.g. ``--method-set letkf:filter.inflation=1.2``,
which the free ensemble would refuse).

It prints, per variable (levels pooled: the root mean square over the variable's channels),
the RMSE of the analysis mean at the last cycle and its ratio to the free ensemble's, the
spread/RMSE ratio averaged over the cycles after ``--burn-in`` (the authors' figure uses all
cycles), and each method's denoiser calls per particle per cycle. Figures go to
``--out/figures``. Scores are cos-latitude weighted unless ``--unweighted`` (the authors'
convention) is given.

    python benchmarks/poster.py --particles 64 --out runs/poster      # hours on 2 CPU cores
    python benchmarks/poster.py --particles 16 --cycles 10 --burn-in 2 \
        --methods fa_apf_dirac,letkf --out runs/poster_short          # ~6 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import math
import tomllib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

from filtrax.experiments.config import config_from_dict, load_config
from filtrax.experiments.runner import config_digest, run_experiment

ROOT = Path(__file__).resolve().parents[1]
METHODS = {
    "fa_apf_dirac": ("FA-APF (Dirac+α)", ["filter.method=fa_apf", "filter.weights=dirac"]),
    "fa_apf_mm": (
        "FA-APF (moment-matched+α)",
        ["filter.method=fa_apf", "filter.weights=moment_matched"],
    ),
    # The guided proposal alone: α = 0 makes the weights uniform, so nothing is selected.
    # It separates what the proposal does from what the selection step does.
    "guided": (
        "guided ensemble (FA-APF, α = 0)",
        ["filter.method=fa_apf", "filter.tempering=fixed", "filter.alpha=0.0"],
    ),
    # Block-local selection (filtrax.filters.localisation): weights, α and ancestors per
    # block of 4 × 8 grid points (64 blocks on the 32 × 64 grid, 16 on the 16 × 32 one).
    "fa_apf_local": (
        "FA-APF (block-local, Dirac+α)",
        ["filter.method=fa_apf", "filter.weights=dirac", "filter.localisation_block=[4, 8]"],
    ),
    "bootstrap": ("bootstrap PF (ESS-band α)", ["filter.method=bootstrap"]),
    "bootstrap_local": (
        "bootstrap PF (block-local, ESS-band α)",
        ["filter.method=bootstrap", "filter.localisation_block=[4, 8]"],
    ),
    "enkf": ("EnKF (emulator)", ["filter.method=enkf"]),
    # Gaspari–Cohn covariance localisation (filtrax.filters.covariance_localisation): zero
    # beyond 2c = 4000 km (the 45° spacing of the 16 × 32 study's observed columns at the
    # equator; several grid lengths of the 32 × 64 grid).
    "enkf_local": (
        "EnKF (Gaspari–Cohn, c = 2000 km)",
        ["filter.method=enkf", "filter.localisation_half_width=2000"],
    ),
    # The LETKF (Hunt et al. 2007) with R-localisation and relaxation to prior perturbations;
    # benchmarks/perfect_model.py runs the same filter with dinosaur as the forecast model.
    "letkf": (
        "LETKF (c = 2000 km, λ = 1.1, RTPP 0.5)",
        [
            "filter.method=letkf",
            "filter.localisation_half_width=2000",
            "filter.inflation=1.1",
            "filter.relaxation=0.5",
        ],
    ),
    "free": ("free ensemble", ["filter.method=free"]),
    "fa_apf_authors": (
        "FA-APF, authors' sampler (AB3, 32 levels, 2 Langevin, BiCGSTAB 3)",
        [
            "filter.method=fa_apf",
            "filter.weights=dirac",
            "sampler.name=adams_bashforth",
            "sampler.levels=32",
            "sampler.order=3",
            "sampler.corrections=2",
            "guidance.solver=bicgstab",
            "guidance.iterations=3",
        ],
    ),
}
OBSERVED_DEFAULT = ("temperature", "near_surface_temperature")


def run_method(
    config_path: Path,
    slug: str,
    overrides: list[str],
    out: Path,
    method_overrides: tuple[str, ...] = (),
) -> Path:
    """Run (or reuse, or resume) one method in ``out / slug``.

    The method's own settings come after ``overrides`` (they define the method) and
    ``method_overrides`` after those (they tune it)."""
    config = load_config(
        config_path, [*overrides, *METHODS[slug][1], *method_overrides, "run.baseline=false"]
    )
    run_dir = out / slug
    stored = run_dir / "config.toml"
    if stored.exists():
        previous = config_from_dict(tomllib.loads(stored.read_text()))
        if config_digest(previous) != config_digest(config):
            raise SystemExit(
                f"{run_dir} holds a {slug} run made with another config than this command's "
                f"(compare {stored}); choose another --out"
            )
    if (run_dir / "metrics.nc").exists():
        return run_dir
    return run_experiment(config, run_dir, resume=stored.exists(), quiet=False, report=True)


def split_method_overrides(items: list[str], known: dict) -> dict[str, tuple[str, ...]]:
    """``["letkf:filter.inflation=1.2", …]`` → ``{"letkf": ("filter.inflation=1.2", …)}``."""
    scoped: dict[str, list[str]] = {}
    for item in items:
        slug, sep, override = item.partition(":")
        if not sep or "=" not in override or slug not in known:
            raise ValueError(
                f"--method-set {item!r}: expected SLUG:KEY=VALUE with SLUG one of "
                f"{', '.join(known)}"
            )
        scoped.setdefault(slug, []).append(override)
    return {slug: tuple(v) for slug, v in scoped.items()}


def per_variable(metrics: xr.Dataset, name: str) -> dict[str, np.ndarray]:
    """``name`` per variable and cycle: root mean square over the variable's channels."""
    sel = metrics[name].sel(ensemble="analysis")
    out = {}
    for variable in dict.fromkeys(str(v) for v in metrics["variable"].values):
        channels = [
            c
            for c, v in zip(metrics.channel.values, metrics.variable.values, strict=True)
            if v == variable
        ]
        values = sel.sel(channel=channels).values  # (cycle, channel)
        out[variable] = np.sqrt(np.mean(values**2, axis=-1))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs/heldsuarez/poster.toml")
    parser.add_argument("--particles", type=int, default=64)
    parser.add_argument("--cycles", type=int, default=0, help="0 = the config's")
    parser.add_argument(
        "--methods", default="fa_apf_dirac,fa_apf_mm,guided,bootstrap,enkf,enkf_local,letkf,free"
    )
    parser.add_argument("--burn-in", type=int, default=5)
    parser.add_argument("--unweighted", action="store_true")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument(
        "--method-set",
        dest="method_overrides",
        action="append",
        default=[],
        metavar="SLUG:KEY=VALUE",
        help="an override for one method, applied after that method's own settings",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "runs/poster")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--per-cycle",
        action="store_true",
        help="also print each method's ratio to the free ensemble, cycle by cycle",
    )
    parser.add_argument(
        "--runs-only",
        action="store_true",
        help="only run the methods (e.g. split over two processes); no table or figures",
    )
    args = parser.parse_args()
    slugs = [s.strip() for s in args.methods.split(",") if s.strip()]
    unknown = [s for s in slugs if s not in METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; available: {', '.join(METHODS)}")
    if args.cycles and not 0 <= args.burn_in < args.cycles:
        parser.error(
            f"--burn-in = {args.burn_in} leaves no cycle of --cycles = {args.cycles} to "
            f"average spread/RMSE over; expected 0 <= --burn-in < --cycles"
        )
    try:
        method_overrides = split_method_overrides(args.method_overrides, METHODS)
    except ValueError as error:
        parser.error(str(error))
    if "free" not in slugs and not args.runs_only:
        slugs.append("free")
    # No per-phase profile (benchmarks/cycle_profile.py does that): it compiles every phase on
    # its own, which took more than 6 minutes for the authors' 32-level sampler. run.profile
    # is outside the run digest, so runs made with it are reused; --set run.profile=true
    # turns it back on.
    overrides = [f"filter.particles={args.particles}", "run.profile=false", *args.overrides]
    if args.cycles:
        overrides.append(f"run.cycles={args.cycles}")
    rmse_name = "rmse_unweighted" if args.unweighted else "rmse"
    spread_name = "spread_unweighted" if args.unweighted else "spread"

    if args.runs_only:
        for slug in slugs:
            run_method(args.config, slug, overrides, args.out, method_overrides.get(slug, ()))
        return
    results = {}
    for slug in slugs:
        run_dir = run_method(args.config, slug, overrides, args.out, method_overrides.get(slug, ()))
        metrics = xr.open_dataset(run_dir / "metrics.nc").load()
        n = int(metrics.sizes["particle"]) if "particle" in metrics.sizes else args.particles
        tuned = method_overrides.get(slug, ())
        results[slug] = {
            # The method's label, with any --method-set it ran with, so no table lies.
            "label": METHODS[slug][0] + (f" [{', '.join(tuned)}]" if tuned else ""),
            "rmse": per_variable(metrics, rmse_name),
            "spread": per_variable(metrics, spread_name),
            "forward": float(np.nanmax(metrics["forward_calls"].sel(ensemble="analysis"))) / n,
            "backward": float(np.nanmax(metrics["backward_calls"].sel(ensemble="analysis"))) / n,
            "seconds": float(np.nanmedian(metrics["seconds"].sel(ensemble="analysis"))),
            "ess": float(np.nanmean(metrics["ess"].sel(ensemble="analysis"))),
            "run_dir": run_dir,
        }
    config = load_config(args.config, overrides)
    observed = tuple(config.observations.variables) or OBSERVED_DEFAULT
    variables = list(results["free"]["rmse"])
    burn = slice(args.burn_in, None)

    table = {}
    weighting = "unweighted" if args.unweighted else "cos-lat weighted"
    print(
        f"N = {args.particles}; RMSE at the last cycle (ratio to the free ensemble); "
        f"spread/RMSE averaged over cycles {args.burn_in}+; {weighting}"
    )
    for slug, tuned in method_overrides.items():
        if slug in results:
            print(f"{slug} ran with --method-set {', '.join(tuned)}")
    header = f"{'method':<34}" + "".join(f"{v[:14]:>22}" for v in variables)
    print(header + f"{'fwd/p':>8}{'vjp/p':>8}{'s/cycle':>9}")
    for slug, r in results.items():
        # A tuned method's label would lie once cut to the column: name the slug instead.
        name = f"{slug} (--method-set above)" if slug in method_overrides else r["label"]
        row = f"{name[:34]:<34}"
        entry = {}
        for v in variables:
            last = float(r["rmse"][v][-1])
            ratio = last / float(results["free"]["rmse"][v][-1])
            skill_ratio = float(np.nanmean(r["spread"][v][burn] / r["rmse"][v][burn]))
            entry[v] = {"rmse_last": last, "ratio_to_free": ratio, "spread_skill": skill_ratio}
            row += f"{last:>9.3g} ({ratio:4.2f}) {skill_ratio:4.2f}"
        row += f"{r['forward']:>8.0f}{r['backward']:>8.0f}{r['seconds']:>9.1f}"
        table[slug] = {
            "label": r["label"],
            "variables": entry,
            "forward_per_particle": r["forward"],
            "vjp_per_particle": r["backward"],
            "seconds_per_cycle": r["seconds"],
            "mean_ess": r["ess"],
        }
        print(row)
    print("columns per variable: RMSE at the last cycle (ratio to free) spread/RMSE")
    if args.per_cycle:
        print("\nratio of the pooled RMSE to the free ensemble's, cycle by cycle")
        for slug in (s for s in results if s != "free"):
            print(slug)
            for v in variables:
                ratios = results[slug]["rmse"][v] / results["free"]["rmse"][v]
                print(f"  {v:<26}" + " ".join(f"{x:4.2f}" for x in ratios))
    figures = args.out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    hours = config.run.cycle_hours
    _skill_figure(results, variables, observed, hours, figures / "skill_vs_lead.png")
    _spread_figure(results, variables, burn, figures / "spread_vs_skill.png")
    _map_figure(results, figures / "map_u_near_surface.png")
    print(f"figures: {figures}")
    if args.json:
        args.json.write_text(json.dumps(table, indent=2))


def _skill_figure(results, variables, observed, hours, path):
    columns = 3
    rows = math.ceil(len(variables) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.0 * rows), squeeze=False)
    for ax, variable in zip(axes.ravel(), variables, strict=False):
        for slug, r in results.items():
            lead = hours * (np.arange(len(r["rmse"][variable])) + 1) / 24
            style = "k--" if slug == "free" else "-"
            ax.plot(lead, r["rmse"][variable], style, label=r["label"][:26])
        kind = "observed" if variable in observed else "unobserved"
        ax.set_title(f"{variable} ({kind})", fontsize=9)
        ax.set_xlabel("lead (days)")
        ax.set_ylabel("RMSE of the mean")
    for ax in axes.ravel()[len(variables) :]:
        ax.set_visible(False)
    axes[0, 0].legend(fontsize=6)
    fig.suptitle("Skill against lead, observed and unobserved variables")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _spread_figure(results, variables, burn, path):
    fig, axes = plt.subplots(1, len(variables), figsize=(2.8 * len(variables), 3.0))
    for ax, variable in zip(np.atleast_1d(axes), variables, strict=False):
        top = 0.0
        for r in results.values():
            skill, spread = r["rmse"][variable][burn], r["spread"][variable][burn]
            ax.plot(skill, spread, "o", ms=3, label=r["label"][:26])
            top = max(top, float(np.nanmax(skill)), float(np.nanmax(spread)))
        ax.plot([0, top], [0, top], "k:", lw=1)
        ax.set_title(variable, fontsize=8)
        ax.set_xlabel("skill (RMSE)")
    np.atleast_1d(axes)[0].set_ylabel("spread")
    np.atleast_1d(axes)[0].legend(fontsize=6)
    fig.suptitle("Spread against skill (each point one cycle)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _map_figure(results, path, variable="u_component_of_wind"):
    panels = []
    truth = None
    for slug in ("fa_apf_dirac", "enkf", "free"):
        if slug not in results:
            continue
        run_dir = results[slug]["run_dir"]
        analysis = xr.open_zarr(run_dir / "analysis.zarr", consolidated=False)[variable]
        last = analysis.sizes["cycle"] - 1
        mean = analysis.isel(cycle=last, level=-1).mean("particle").load()
        panels.append((results[slug]["label"], mean))
        if truth is None:
            truth = xr.open_dataset(run_dir / "truth.nc")[variable].isel(cycle=last, level=-1)
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(4.0 * (len(panels) + 1), 3.0))
    limit = float(np.nanmax(np.abs(truth.values)))
    for ax, (title, field) in zip(axes, [("truth", truth), *panels], strict=False):
        image = ax.pcolormesh(
            field.lon, field.lat, field.values, cmap="RdBu_r", vmin=-limit, vmax=limit
        )
        ax.set_title(f"{title[:30]}", fontsize=8)
    fig.colorbar(image, ax=axes, shrink=0.8, label="m/s")
    level = float(truth["level"]) if "level" in truth.coords else float("nan")
    fig.suptitle(f"u-wind at sigma = {level:g} (unobserved), last cycle: ensemble means")
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
