"""``filtrax report RUN_DIR``: figures and a Markdown summary of a finished run.

A leaf module: only the command line imports it (the core never imports matplotlib).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

from .metrics import time_mean_with_interval

MAX_PANELS = 8


def _panels(count: int) -> tuple[plt.Figure, np.ndarray]:
    columns = min(count, 4)
    rows = -(-count // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 2.8 * rows), squeeze=False)
    for ax in axes.ravel()[count:]:
        ax.set_visible(False)
    return fig, axes.ravel()


def _skill_figure(metrics: xr.Dataset, path: Path) -> None:
    channels = list(metrics.channel.values)[:MAX_PANELS]
    fig, axes = _panels(len(channels))
    for ax, channel in zip(axes, channels, strict=False):
        for method, color in zip(metrics.ensemble.values, ("C0", "C1"), strict=False):
            label = "filter" if method == "analysis" else "free ensemble"
            sel = metrics.sel({"ensemble": method, "channel": channel})
            if "rmse" in metrics:
                ax.plot(sel.cycle, sel.rmse, color=color, label=f"{label} RMSE")
            ax.plot(sel.cycle, sel.spread, color=color, ls="--", label=f"{label} spread")
        ax.set_title(str(channel), fontsize=9)
        ax.set_xlabel("cycle")
    axes[0].legend(fontsize=7)
    fig.suptitle("Skill (RMSE of the ensemble mean) and spread per cycle")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _shown_channels(channels: list) -> list:
    """At most MAX_PANELS channels, one of each variable first (``variable@level`` labels), so
    that a 34-channel atmosphere does not show eight temperatures and nothing else."""
    firsts = list({str(c).split("@")[0]: c for c in reversed(channels)}.values())[::-1]
    rest = [c for c in channels if c not in firsts]
    return (firsts + rest)[:MAX_PANELS]


def _spread_skill_figure(metrics: xr.Dataset, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 4))
    sel = metrics.sel({"ensemble": "analysis"})
    shown = _shown_channels(list(metrics.channel.values))
    for channel in shown:
        ax.plot(
            sel.sel(channel=channel).rmse,
            sel.sel(channel=channel).spread,
            "o",
            ms=3,
            label=str(channel),
        )
    # Log axes: channels of different units (K, m/s, Pa) share one plot, and the diagonal
    # spans exactly the plotted values.
    values = np.concatenate([sel.sel(channel=shown)[k].values.ravel() for k in ("rmse", "spread")])
    values = values[np.isfinite(values) & (values > 0)]
    if values.size:
        low, high = float(values.min()), float(values.max())
        ax.plot([low, high], [low, high], "k:", lw=1, label="spread = skill")
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel("skill (RMSE)")
    ax.set_ylabel("spread")
    ax.set_title("Spread against skill, filter analysis")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _ess_alpha_figure(metrics: xr.Dataset, num_particles: int, path: Path) -> None:
    sel = metrics.sel({"ensemble": "analysis"})
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
    ax1.plot(sel.cycle, sel.ess, "o-", ms=3)
    ax1.axhline(num_particles, color="k", ls=":", lw=1)
    ax1.set_ylim(0, num_particles * 1.05)
    ax1.set_title("ESS before resampling")
    ax1.set_xlabel("cycle")
    ax2.semilogy(sel.cycle, np.maximum(sel.alpha, 1e-16), "o-", ms=3)
    ax2.set_title("tempering exponent α")
    ax2.set_xlabel("cycle")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _rank_figure(metrics: xr.Dataset, path: Path) -> None:
    hist = metrics.rank_histogram.sel({"ensemble": "analysis"})
    channels = list(metrics.channel.values)[:MAX_PANELS]
    fig, axes = _panels(len(channels))
    for ax, channel in zip(axes, channels, strict=False):
        counts = hist.sel(channel=channel).values
        counts = (
            counts[: int(np.max(np.flatnonzero(counts > 0), initial=0)) + 1]
            if counts.any()
            else counts
        )
        ax.bar(np.arange(counts.size), counts / max(counts.sum(), 1), width=1.0)
        ax.axhline(1 / max(counts.size, 1), color="k", ls=":", lw=1)
        ax.set_title(str(channel), fontsize=9)
        ax.set_xlabel("rank of the truth")
    fig.suptitle("Rank histograms, filter analysis (flat = calibrated)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _map_figure(run_dir: Path, variable: str, path: Path) -> None:
    analysis = xr.open_zarr(run_dir / "analysis.zarr", consolidated=False)[variable]
    truth = xr.open_dataset(run_dir / "truth.nc")[variable]
    last = int(
        np.max(
            np.flatnonzero(np.isfinite(analysis.isel(particle=0).mean(analysis.dims[2:]).values))
        )
    )
    ensemble = analysis.isel(cycle=last).load()
    if "level" in ensemble.dims:
        ensemble, truth = ensemble.isel(level=-1), truth.isel(level=-1)
    true = truth.isel(cycle=last).values
    mean = ensemble.mean("particle").values
    spread = ensemble.std("particle", ddof=1).values
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.2))
    limit = float(np.nanmax(np.abs(true)))
    for ax, field, title, cmap, vmin, vmax in [
        (axes[0], true, "truth", "RdBu_r", -limit, limit),
        (axes[1], mean, "ensemble mean", "RdBu_r", -limit, limit),
        (axes[2], mean - true, "error", "RdBu_r", -limit / 2, limit / 2),
        (axes[3], spread, "spread", "viridis", 0, None),
    ]:
        image = ax.pcolormesh(
            ensemble.lon, ensemble.lat, field, cmap=cmap, vmin=vmin, vmax=vmax, shading="auto"
        )
        ax.set_title(f"{variable}: {title}", fontsize=9)
        fig.colorbar(image, ax=ax, shrink=0.8)
    fig.suptitle(f"cycle {last}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(run_dir: str | Path) -> Path:
    """Write ``report.md`` and ``figures/*.png`` for a finished run; returns the report path."""
    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.nc"
    if not metrics_path.exists():
        raise FileNotFoundError(f"{metrics_path} not found: is {run_dir} a finished filtrax run?")
    config = tomllib.loads((run_dir / "config.toml").read_text())
    metrics = xr.open_dataset(metrics_path).load()
    figures = run_dir / "figures"
    figures.mkdir(exist_ok=True)
    has_truth = "rmse" in metrics
    made = []
    if has_truth:
        _skill_figure(metrics, figures / "skill.png")
        _spread_skill_figure(metrics, figures / "spread_skill.png")
        made += [
            ("Skill and spread per cycle", "skill.png"),
            ("Spread against skill", "spread_skill.png"),
        ]
    _ess_alpha_figure(metrics, int(config["filter"]["particles"]), figures / "ess_alpha.png")
    made.append(("ESS and α per cycle", "ess_alpha.png"))
    if "rank_histogram" in metrics:
        _rank_figure(metrics, figures / "rank_histograms.png")
        made.append(("Rank histograms", "rank_histograms.png"))
    gridded = "lat" in xr.open_zarr(run_dir / "analysis.zarr", consolidated=False).dims
    if gridded and has_truth:
        observed = set(config["observations"].get("variables") or [])
        variables = list(dict.fromkeys(str(v) for v in metrics.variable.values))
        unobserved = [v for v in variables if v not in observed] if observed else []
        for variable in (unobserved or variables)[:1]:
            _map_figure(run_dir, variable, figures / f"map_{variable}.png")
            made.append((f"Maps of {variable} (last cycle)", f"map_{variable}.png"))

    lines = [f"# filtrax run: {config.get('name', run_dir.name)}", ""]
    lines.append(
        f"Model `{config['model']['name']}`, method `{config['filter']['method']}` "
        f"(weights `{config['filter']['weights']}`, N = {config['filter']['particles']}), "
        f"sampler `{config['sampler']['name']}`, guidance `{config['guidance']['name']}`, "
        f"{config['run']['cycles']} cycles. Burn-in of {config['run']['burn_in']} cycles is "
        f"excluded from the time means; intervals are 95 % and account for autocorrelation."
    )
    lines.append("")
    burn = int(config["run"]["burn_in"])
    if has_truth:
        lines += [
            "| channel | method | RMSE | spread | spread/RMSE | CRPS |",
            "|---|---|---|---|---|---|",
        ]
        for channel in metrics.channel.values:
            for method in metrics.ensemble.values:
                sel = metrics.sel({"ensemble": method, "channel": channel}).isel(
                    cycle=slice(burn, None)
                )
                rmse, rmse_ci = time_mean_with_interval(sel.rmse.values)
                spread, _ = time_mean_with_interval(sel.spread.values)
                crps, _ = time_mean_with_interval(sel.crps.values)
                name = "filter" if method == "analysis" else "free ensemble"
                lines.append(
                    f"| {channel} | {name} | {rmse:.4g} ± {rmse_ci:.2g} | {spread:.4g} | "
                    f"{spread / rmse:.2f} | {crps:.4g} |"
                )
        lines.append("")
    sel = metrics.sel({"ensemble": "analysis"}).isel(cycle=slice(burn, None))
    ess, ess_ci = time_mean_with_interval(sel.ess.values)
    seconds = float(np.nanmedian(sel.seconds.values))
    lines.append(
        f"Mean ESS before resampling: {ess:.1f} ± {ess_ci:.2g}; median α: "
        f"{float(np.nanmedian(sel.alpha.values)):.3g}; median seconds per cycle: {seconds:.3g}; "
        f"denoiser calls per cycle: {int(np.nanmax(sel.forward_calls.values))} forward, "
        f"{int(np.nanmax(sel.backward_calls.values))} VJPs."
    )
    lines.append("")
    for title, name in made:
        lines += [f"## {title}", "", f"![{title}](figures/{name})", ""]
    report = run_dir / "report.md"
    report.write_text("\n".join(lines))
    return report
