"""``filtrax report RUN_DIR``: figures and a Markdown summary of a finished run.

Every variable of the run appears in every figure: one panel per variable with its levels
pooled (the root mean square over the variable's channels, as :func:`variable_table`), and,
for a variable with several levels, a page of its own with one panel per level. Axes carry
the variable's units (the ``units`` coordinate of ``metrics.nc``) and levels are named by
their coordinate (``σ = 0.1875`` on sigma levels).

A leaf module: only the command line imports it (the core never imports matplotlib).
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .metrics import time_mean_with_interval

#: Filter methods whose weights are tempered (``filter.tempering``); the others weight nothing.
TEMPERED_METHODS = ("bootstrap", "fa_apf")
#: The default ``filter.ess_band`` (fractions of N), as in :mod:`filtrax.experiments.config`.
DEFAULT_ESS_BAND = (0.2, 0.25)
#: Name and colour of each ensemble of ``metrics.nc``.
ENSEMBLES = {"analysis": ("filter", "C0"), "baseline": ("free ensemble", "C1")}
COLUMNS = 4
_SUPERSCRIPTS = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")
# Observation labels of the gridded runs (filtrax.experiments.factory, filtrax.io):
# "temperature@0.1875 lat=-84.37 lon=0.00", "t2m at (lat 10, lon 20)",
# "station 3 t2m at (lat 10, lon 20)".
_LOCATION = re.compile(
    r"^(?:station \d+ )?(?P<channel>\S+)\s+"
    r"(?:lat=(?P<lat>\S+) lon=(?P<lon>\S+)|at \(lat (?P<lat2>[^,]+), lon (?P<lon2>[^)]+)\))$"
)


@dataclasses.dataclass(frozen=True)
class _Variable:
    """One variable of ``metrics.nc``: its channels' positions, and their level labels."""

    name: str
    units: str
    channels: tuple[int, ...]
    levels: tuple[str, ...]  # one label per channel, empty without levels

    @property
    def title(self) -> str:
        if len(self.levels) > 1:
            return f"{self.name} ({len(self.levels)} levels pooled)"
        return f"{self.name} ({self.levels[0]})" if self.levels else self.name


def units_text(units: str) -> str:
    """CF units for an axis label: ``m s-1`` as ``m s⁻¹``, ``1`` (or none) as dimensionless."""
    if units.strip() in ("", "1"):
        return "dimensionless"
    return re.sub(r"(?<=[A-Za-z])(-?\d+)", lambda m: m.group(1).translate(_SUPERSCRIPTS), units)


def with_units(text: str, units: str) -> str:
    """``RMSE [K]``; ``RMSE (dimensionless)``."""
    shown = units_text(units)
    return f"{text} ({shown})" if shown == "dimensionless" else f"{text} [{shown}]"


def level_text(level: float, level_name: str) -> str:
    """A level named by its coordinate: ``σ = 0.1875``, ``p = 500 hPa``, ``level = 3``."""
    if level_name == "sigma":
        return f"σ = {level:g}"
    if level_name.endswith("hPa"):
        return f"p = {level:g} hPa"
    return f"{level_name} = {level:g}"


def level_name(run_dir: Path, metrics: xr.Dataset) -> str:
    """The level coordinate's name (``sigma``, ``pressure_hPa``): from ``metrics.nc`` if it
    records one, else from the ``long_name`` of the level coordinate of the stored fields."""
    if "level" in metrics.coords and metrics["level"].attrs.get("long_name"):
        return str(metrics["level"].attrs["long_name"])
    for name in ("truth.nc", "analysis.zarr"):
        path = run_dir / name
        if not path.exists():
            continue
        is_zarr = path.suffix == ".zarr"
        with xr.open_zarr(path, consolidated=False) if is_zarr else xr.open_dataset(path) as fields:
            if "level" in fields.coords and fields["level"].attrs.get("long_name"):
                return str(fields["level"].attrs["long_name"])
    return "level"


def variables_of(metrics: xr.Dataset, level_name: str = "level") -> list[_Variable]:
    """The variables of ``metrics.nc`` in channel order, each with its channels."""
    names = [str(v) for v in metrics["variable"].values]
    count = metrics.sizes["channel"]
    units = metrics["units"].values if "units" in metrics.coords else [""] * count
    levels = metrics["level"].values if "level" in metrics.coords else np.full(count, np.nan)
    result = []
    for name in dict.fromkeys(names):
        channels = tuple(i for i, n in enumerate(names) if n == name)
        labels = tuple(
            level_text(float(levels[i]), level_name)
            for i in channels
            if np.isfinite(float(levels[i]))
        )
        result.append(_Variable(name, str(units[channels[0]]), channels, labels))
    return result


def file_stem(name: str) -> str:
    """A variable's name as it appears in figure file names."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def _pooled(metrics: xr.Dataset, name: str, ensemble: str, channels) -> np.ndarray:
    """Per cycle, the root mean square of ``name`` over ``channels`` (one channel: itself)."""
    values = metrics[name].sel(ensemble=ensemble).transpose("cycle", "channel").values
    return np.sqrt(np.mean(values[:, list(channels)] ** 2, axis=1))


def _panels(count: int, title: str, width: float = 3.5, height: float = 2.8):
    """A figure with ``count`` panels, at most :data:`COLUMNS` a row."""
    columns = max(1, min(count, COLUMNS))
    rows = -(-count // columns)
    fig, axes = plt.subplots(
        rows,
        columns,
        figsize=(max(width * columns, 8.0), height * rows + 0.9),
        squeeze=False,
        layout="constrained",
    )
    for ax in axes.ravel()[count:]:
        ax.remove()
    fig.suptitle(title)
    return fig, list(axes.ravel()[:count])


def _legend_below(fig: Figure, axes) -> None:
    """One legend for the whole figure, below the panels (it covers no data)."""
    entries = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    if entries:
        fig.legend(
            entries.values(),
            entries.keys(),
            loc="outside lower center",
            ncol=min(len(entries), 4),
            fontsize=8,
            frameon=False,
        )


def _save(fig: Figure, path: Path) -> None:
    fig.savefig(path, dpi=110)
    plt.close(fig)


Draw = Callable[[Axes, tuple[int, ...], str], None]


def _variable_figures(
    variables: list[_Variable], draw: Draw, title: str, stem: str, figures: Path
) -> list[tuple[str, str]]:
    """``stem.png``, one panel per variable (levels pooled), and ``stem_<variable>.png``, one
    panel per level, for each variable with several levels; returns (title or variable,
    file name) pairs."""
    fig, axes = _panels(len(variables), title)
    for ax, variable in zip(axes, variables, strict=True):
        draw(ax, variable.channels, variable.units)
        ax.set_title(variable.title, fontsize=9)
    _legend_below(fig, axes)
    _save(fig, figures / f"{stem}.png")
    made = [(title, f"{stem}.png")]
    for variable in variables:
        if len(variable.levels) < 2:
            continue
        fig, axes = _panels(len(variable.levels), f"{title}: {variable.name}, per level")
        for ax, channel, level in zip(axes, variable.channels, variable.levels, strict=True):
            draw(ax, (channel,), variable.units)
            ax.set_title(level, fontsize=9)
        _legend_below(fig, axes)
        name = f"{stem}_{file_stem(variable.name)}.png"
        _save(fig, figures / name)
        made.append((variable.name, name))
    return made


def ensemble_names(method: str) -> dict[str, tuple[str, str]]:
    """Name and colour of each ensemble; a free-only run's analysis is the free ensemble."""
    return {"analysis": ENSEMBLES["baseline"]} if method == "free" else ENSEMBLES


def _skill_draw(metrics: xr.Dataset, names: dict) -> Draw:
    """A panel of RMSE (solid) and spread (dashed) per cycle, filter and free ensemble."""

    def draw(ax: Axes, channels: tuple[int, ...], units: str) -> None:
        for ensemble in metrics.ensemble.values:
            label, color = names.get(str(ensemble), (str(ensemble), "C2"))
            rmse = _pooled(metrics, "rmse", ensemble, channels)
            spread = _pooled(metrics, "spread", ensemble, channels)
            ax.plot(metrics.cycle, rmse, color=color, marker="o", ms=3, label=f"{label} RMSE")
            ax.plot(metrics.cycle, spread, color=color, ls="--", label=f"{label} spread")
        ax.set_ylim(bottom=0)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("cycle")
        ax.set_ylabel(with_units("RMSE / spread", units))

    return draw


def _spread_skill_draw(metrics: xr.Dataset, names: dict, burn_in: int) -> Draw:
    """A panel of spread against RMSE, one point per cycle after the burn-in, on the
    variable's own axes (both from 0, same units, equal scales) with its own 1:1 line."""
    cycles = slice(burn_in, None) if burn_in < metrics.sizes["cycle"] else slice(None)

    def draw(ax: Axes, channels: tuple[int, ...], units: str) -> None:
        top = 0.0
        for ensemble in metrics.ensemble.values:
            label, color = names.get(str(ensemble), (str(ensemble), "C2"))
            rmse = _pooled(metrics, "rmse", ensemble, channels)[cycles]
            spread = _pooled(metrics, "spread", ensemble, channels)[cycles]
            ax.plot(rmse, spread, "o", color=color, ms=4, alpha=0.8, label=label)
            finite = np.concatenate([rmse, spread])
            finite = finite[np.isfinite(finite)]
            top = max(top, float(finite.max(initial=0.0)))
        top = 1.08 * top if top > 0 else 1.0
        ax.plot([0, top], [0, top], "k:", lw=1, label="spread = RMSE")
        ax.set_xlim(0, top)
        ax.set_ylim(0, top)
        ax.set_aspect("equal", adjustable="box")
        ax.set_xlabel(with_units("RMSE", units))
        ax.set_ylabel(with_units("spread", units))

    return draw


def _rank_draw(metrics: xr.Dataset, names: dict, num_particles: int) -> Draw:
    """A panel of the truth's rank among the N members, pooled over the channels: the
    filter's as bars, the free ensemble's as a line; flat (the dotted line) = calibrated."""
    size = min(metrics.sizes["rank"], num_particles + 1)
    ranks = np.arange(size)

    def draw(ax: Axes, channels: tuple[int, ...], units: str) -> None:
        for ensemble in metrics.ensemble.values:
            label, color = names.get(str(ensemble), (str(ensemble), "C2"))
            hist = metrics.rank_histogram.sel(ensemble=ensemble).transpose("channel", "rank")
            counts = hist.values[list(channels), :size].sum(axis=0)
            if not counts.any():
                continue
            frequency = counts / counts.sum()
            if ensemble == "analysis":
                ax.bar(ranks, frequency, width=1.0, color=color, alpha=0.75, label=label)
            else:
                edges = np.arange(size + 1) - 0.5
                ax.stairs(frequency, edges, baseline=None, color=color, lw=1.5, label=label)
        ax.axhline(1 / size, color="k", ls=":", lw=1, label="uniform (calibrated)")
        ax.set_ylim(bottom=0)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(f"rank of the truth among N = {num_particles}")
        ax.set_ylabel("relative frequency")

    return draw


def ess_band(filter_section: dict) -> tuple[float, float] | None:
    """The ESS target band (fractions of N) when the run tempered by it, else ``None``."""
    method = filter_section.get("method", "fa_apf")
    if filter_section.get("tempering", "ess_band") != "ess_band" or method not in TEMPERED_METHODS:
        return None
    lower, upper = filter_section.get("ess_band", DEFAULT_ESS_BAND)
    return float(lower), float(upper)


def _ess_alpha_figure(metrics: xr.Dataset, filter_section: dict) -> Figure:
    """The filter's ESS before resampling per cycle, with N and (ESS-band tempering) the
    target band shaded, and its tempering exponent α per cycle."""
    n = int(filter_section["particles"])
    sel = metrics.sel(ensemble="analysis")
    fig, (ess_ax, alpha_ax) = plt.subplots(1, 2, figsize=(11, 3.9), layout="constrained")
    band = ess_band(filter_section)
    if band is not None:
        low, high = band[0] * n, band[1] * n
        ess_ax.axhspan(
            low, high, color="C2", alpha=0.3, lw=0,
            label=f"target band [{band[0]:g}N, {band[1]:g}N] = [{low:g}, {high:g}]",
        )  # fmt: skip
    ess_ax.plot(sel.cycle, sel.ess, "o-", ms=4, color="C0", label="ESS")
    ess_ax.axhline(n, color="k", ls=":", lw=1, label=f"N = {n}")
    ess_ax.set_ylim(0, 1.08 * n)
    ess_ax.set_xlabel("cycle")
    ess_ax.set_ylabel("ESS (particles)")
    ess_ax.set_title("effective sample size before resampling", fontsize=10)
    _alpha_panel(alpha_ax, sel.cycle.values, sel.alpha.values)
    for ax in (ess_ax, alpha_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3)
    fig.suptitle(f"Weights of the analysis per cycle (method {filter_section['method']})")
    return fig


def _alpha_panel(ax: Axes, cycles: np.ndarray, alpha: np.ndarray) -> None:
    """α per cycle. α spanning decades goes on a symmetric-log axis (logarithmic above the
    smallest α > 0, linear below it), else on a linear one; either way α = 0 (a cycle
    without weighting) is drawn at 0, as a marker of its own."""
    finite = np.isfinite(alpha)
    positive = finite & (alpha > 0)
    zero = finite & (alpha == 0)
    smallest = float(alpha[positive].min()) if positive.any() else 1.0
    if smallest < 0.1:
        threshold = 10.0 ** np.floor(np.log10(smallest))
        ax.set_yscale("symlog", linthresh=threshold, linscale=0.6)
        ax.set_ylim(-0.3 * threshold, 1.5)
    else:
        ax.set_ylim(-0.05, 1.08)
    ax.plot(cycles[finite], alpha[finite], "-", color="C0", lw=1)
    if positive.any():
        ax.plot(cycles[positive], alpha[positive], "o", ms=4, color="C0", label="α > 0")
    if zero.any():
        ax.plot(cycles[zero], alpha[zero], "v", ms=6, color="C3", label="α = 0 (no weighting)")
    ax.set_xlabel("cycle")
    ax.set_ylabel("α (dimensionless)")
    everywhere = zero.all()
    ax.set_title(
        "tempering exponent α" + (": 0 every cycle (no weighting)" if everywhere else ""),
        fontsize=10,
    )


@dataclasses.dataclass(frozen=True)
class _Locations:
    """Where a run observed: one (lat, lon) per observed point, and the variables seen."""

    lat: np.ndarray
    lon: np.ndarray
    variables: tuple[str, ...]


def observation_locations(run_dir: Path) -> _Locations | None:
    """The observed locations, read from the labels of ``observations.nc`` (which name the
    channel, lat and lon of each observation of a gridded run); ``None`` when the labels do
    not record a location (or the file is missing)."""
    path = run_dir / "observations.nc"
    if not path.exists():
        return None
    with xr.open_dataset(path) as observations:
        labels = [str(label) for label in observations["label"].values]
    points, variables = set(), {}
    for label in labels:
        match = _LOCATION.match(label.strip())
        if match is None:
            return None
        lat = match.group("lat") or match.group("lat2")
        lon = match.group("lon") or match.group("lon2")
        try:
            points.add((float(lat), float(lon) % 360.0))
        except ValueError:
            return None
        variables.setdefault(match.group("channel").split("@")[0], None)
    if not points:
        return None
    lat, lon = (np.array(v) for v in zip(*sorted(points), strict=True))
    return _Locations(lat, lon, tuple(variables))


def _last_cycle(analysis: xr.DataArray) -> int:
    """The last cycle with a finite analysis (a run killed early leaves NaN cycles)."""
    first = analysis.isel(particle=0)
    means = first.mean([d for d in first.dims if d != "cycle"])
    finite = np.flatnonzero(np.isfinite(means.values))
    return int(finite.max()) if finite.size else analysis.sizes["cycle"] - 1


def _map_fields(run_dir: Path, variable: str, name: str):
    """Truth, ensemble mean and spread of ``variable`` at the last analysed cycle, at the
    level nearest the surface (the largest σ or pressure); also its units and a caption."""
    analysis = xr.open_zarr(run_dir / "analysis.zarr", consolidated=False)[variable]
    truth = xr.open_dataset(run_dir / "truth.nc")[variable]
    last = _last_cycle(analysis)
    ensemble = analysis.isel(cycle=last).load()
    truth = truth.isel(cycle=last).load()
    caption = f"{variable}, cycle {last}"
    if "level" in ensemble.dims:
        level = float(ensemble.level.max())
        ensemble, truth = ensemble.sel(level=level), truth.sel(level=level)
        caption = f"{variable} at {level_text(level, name)}, cycle {last}"
    fields = {
        "truth": truth.values,
        "ensemble mean": ensemble.mean("particle").values,
        "spread": ensemble.std("particle", ddof=1).values,
    }
    units = str(truth.attrs.get("units", analysis.attrs.get("units", "")))
    return ensemble.lat.values, ensemble.lon.values, fields, units, caption


def _map_figure(run_dir: Path, variable: str, name: str, locations: _Locations | None) -> Figure:
    """Truth, ensemble mean, error (mean − truth) and spread of one variable at the last
    cycle on a lat-lon grid, with the observed locations marked on every panel."""
    lat, lon, fields, units, caption = _map_fields(run_dir, variable, name)
    true = fields["truth"]
    error = fields["ensemble mean"] - true
    low, high = float(np.nanmin(true)), float(np.nanmax(true))
    if low < 0 < high:
        limit = max(-low, high)
        low, high, cmap = -limit, limit, "RdBu_r"
    else:
        cmap = "viridis"
    limit = float(np.nanmax(np.abs(error))) or 1.0
    panels = [
        ("truth", true, cmap, low, high),
        ("ensemble mean", fields["ensemble mean"], cmap, low, high),
        ("error (mean − truth)", error, "RdBu_r", -limit, limit),
        ("spread", fields["spread"], "magma", 0, None),
    ]
    marked, drawn = _marking_caption(locations, lat.size * lon.size)
    fig, axes = plt.subplots(2, 2, figsize=(12, 6.4), layout="constrained")
    for ax, (title, field, colours, vmin, vmax) in zip(axes.ravel(), panels, strict=True):
        image = ax.pcolormesh(lon, lat, field, cmap=colours, vmin=vmin, vmax=vmax, shading="auto")
        fig.colorbar(image, ax=ax, shrink=0.8, label=with_units(title.split(" (")[0], units))
        if drawn and locations is not None:
            ax.plot(
                locations.lon, locations.lat, "o", ms=3, mfc="white", mec="black", mew=0.6,
                label="observed location",
            )  # fmt: skip
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("longitude [°E]")
        ax.set_ylabel("latitude [°N]")
        ax.set_xticks(np.arange(0, 361, 90))
        ax.set_yticks(np.arange(-90, 91, 45))
        ax.set_aspect("equal")
    fig.suptitle(f"{caption}; {marked}")
    return fig


#: Observed in more than this fraction of the grid's columns (the poster network observes
#: every one), markers would hide the fields: the caption says how many are observed instead.
DENSE_NETWORK_FRACTION = 0.5


def _marking_caption(locations: _Locations | None, num_columns: int) -> tuple[str, bool]:
    """What the map's title says about the observation locations, and whether they are
    marked on the panels."""
    if locations is None:
        return "observation locations not recorded for this run (not marked)", False
    variables = ", ".join(locations.variables)
    count = locations.lat.size
    if count > DENSE_NETWORK_FRACTION * num_columns:
        where = "every column" if count >= num_columns else f"{count} of {num_columns} columns"
        return f"{variables} observed in {where} (not marked)", False
    return f"○ = observed locations ({variables})", True


def _model_text(model: dict) -> str:
    """The model as the report names it: its ``model.factory`` when it has one."""
    if model.get("factory"):
        return f"`{model['factory']}` (model.factory)"
    return f"`{model['name']}`"


def observed_variables(config: dict, variables: list[str], locations: _Locations | None):
    """The observed variables: the config's ``observations.variables``; when it is empty
    (the model's default), those the observation labels name, else every variable."""
    observed = set(config["observations"].get("variables") or [])
    if not observed and locations is not None:
        observed = set(locations.variables)
    return observed or set(variables)


def _mapped_variables(config: dict, variables: list[str], locations: _Locations | None):
    """The first observed and the first unobserved variable (those that exist)."""
    observed = observed_variables(config, variables, locations)
    firsts = [
        next((v for v in variables if v in observed), None),
        next((v for v in variables if v not in observed), None),
    ]
    return [v for v in firsts if v is not None]


def variable_table(metrics: xr.Dataset, observed: set[str], burn_in: int) -> list[dict]:
    """One row per variable: the filter's and the free ensemble's RMSE, their ratio, and the
    filter's spread/RMSE, each the mean over the cycles after ``burn_in``.

    A variable's levels are pooled per cycle by the root mean square over its channels (each
    channel's score is already a cos-latitude weighted mean over the grid), so a row is the
    RMSE over all of the variable's points with every level weighted alike. Without a free
    ensemble (``run.baseline = false``) its columns are NaN.
    """
    after = metrics.isel(cycle=slice(burn_in, None))
    has_free = "baseline" in metrics.ensemble.values
    rows = []
    for variable in variables_of(metrics):

        def pooled(name: str, ensemble: str, channels=variable.channels) -> float:
            return float(np.mean(_pooled(after, name, ensemble, channels)))

        rmse = pooled("rmse", "analysis")
        free = pooled("rmse", "baseline") if has_free else float("nan")
        rows.append(
            {
                "variable": variable.name,
                "kind": "observed" if variable.name in observed else "unobserved",
                "units": variable.units,
                "rmse": rmse,
                "free": free,
                "ratio": rmse / free,
                "spread_ratio": pooled("spread", "analysis") / rmse,
            }
        )
    return rows


def format_variable_table(rows: list[dict], markdown: bool = False) -> str:
    """The rows of :func:`variable_table` as a fixed-width text table or a Markdown table."""
    names = ("variable", "", "units", "filter RMSE", "free RMSE", "ratio", "spread/RMSE")
    cells = [
        (
            r["variable"],
            r["kind"],
            r["units"],
            f"{r['rmse']:.3g}",
            f"{r['free']:.3g}",
            f"{r['ratio']:.2f}",
            f"{r['spread_ratio']:.2f}",
        )
        for r in rows
    ]
    if markdown:
        lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
        return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in cells])
    widths = [max(len(str(x)) for x in column) for column in zip(names, *cells, strict=True)]
    line = "  ".join(f"{{:<{w}}}" if i < 3 else f"{{:>{w}}}" for i, w in enumerate(widths))
    header = line.format(*names)
    return "\n".join([header, "-" * len(header)] + [line.format(*c) for c in cells])


def _figures(run_dir: Path, config: dict, metrics: xr.Dataset) -> list[tuple[str, str, str]]:
    """Draw every figure of the run into ``figures/``; returns (Markdown heading, caption,
    file name) triples, a per-level page as a subsection of its figure."""
    figures = run_dir / "figures"
    figures.mkdir(exist_ok=True)
    name = level_name(run_dir, metrics)
    variables = variables_of(metrics, name)
    burn = int(config["run"].get("burn_in", 0))
    names = ensemble_names(config["filter"]["method"])
    after = " after the burn-in" if 0 < burn < metrics.sizes["cycle"] else ""
    kinds = []
    if "rmse" in metrics:
        kinds += [
            ("Skill (RMSE of the ensemble mean) and spread per cycle", "skill",
             _skill_draw(metrics, names)),
            (f"Spread against skill, one point per cycle{after}", "spread_skill",
             _spread_skill_draw(metrics, names, burn)),
        ]  # fmt: skip
    if "rank_histogram" in metrics:
        draw = _rank_draw(metrics, names, int(config["filter"]["particles"]))
        kinds.append(("Rank histograms of the truth", "rank_histograms", draw))
    pooled = ", levels pooled" if any(len(v.levels) > 1 for v in variables) else ""
    made = []
    for title, stem, draw in kinds:
        pages = _variable_figures(variables, draw, title, stem, figures)
        made.append((f"## {title}{pooled}", f"{title}{pooled}", pages[0][1]))
        made += [
            (f"### {variable}, per level", f"{title}: {variable}, per level", file)
            for variable, file in pages[1:]
        ]
    _save(_ess_alpha_figure(metrics, config["filter"]), figures / "ess_alpha.png")
    made.append(("## ESS and α per cycle", "ESS and α per cycle", "ess_alpha.png"))
    gridded = "lat" in xr.open_zarr(run_dir / "analysis.zarr", consolidated=False).dims
    if gridded and "rmse" in metrics:
        locations = observation_locations(run_dir)
        for variable in _mapped_variables(config, [v.name for v in variables], locations):
            file = f"map_{file_stem(variable)}.png"
            _save(_map_figure(run_dir, variable, name, locations), figures / file)
            title = f"Maps of {variable} (last cycle)"
            made.append((f"## {title}", title, file))
    return made


def _channel_table(metrics: xr.Dataset, burn: int, level_name: str, names: dict) -> list[str]:
    """The Markdown rows of the per-channel table (a level named by its coordinate)."""
    labels = {}
    for variable in variables_of(metrics, level_name):
        levels = [f", {level}" for level in variable.levels] or [""] * len(variable.channels)
        labels |= {c: variable.name + lev for c, lev in zip(variable.channels, levels, strict=True)}
    lines = [
        "| channel | method | RMSE | spread | spread/RMSE | CRPS |",
        "|---|---|---|---|---|---|",
    ]
    for index, channel in enumerate(metrics.channel.values):
        for method in metrics.ensemble.values:
            sel = metrics.sel({"ensemble": method, "channel": channel}).isel(
                cycle=slice(burn, None)
            )
            rmse, rmse_ci = time_mean_with_interval(sel.rmse.values)
            spread, _ = time_mean_with_interval(sel.spread.values)
            crps, _ = time_mean_with_interval(sel.crps.values)
            name = names.get(str(method), (str(method),))[0]
            lines.append(
                f"| {labels[index]} | {name} | {rmse:.4g} ± {rmse_ci:.2g} | {spread:.4g} | "
                f"{spread / rmse:.2f} | {crps:.4g} |"
            )
    return lines


def _observation_space_table(metrics: xr.Dataset, burn: int, names: dict) -> list[str]:
    """The observation-space diagnostics per variable, means over the scored cycles: what
    the run says without a truth (filtrax.experiments.observation_space)."""
    if "omb_rms" not in metrics:
        return []
    header = (
        "| variable | ensemble | O−B RMS | O−A RMS | O−B mean | spread (b) | spread (a) | "
        "χ² (reduced) | Desroziers |"
    )
    rows = [header, "|" + " --- |" * 9]
    fields = ("omb_rms", "oma_rms", "omb_mean", "spread_background_obs", "spread_analysis_obs",
              "chi2_reduced", "desroziers_ratio")  # fmt: skip
    scored = metrics.isel(cycle=slice(burn, None))
    for variable in metrics.obs_variable.values:
        for member in metrics.ensemble.values:
            one = scored.sel(ensemble=member, obs_variable=variable)
            cells = [f"{float(np.nanmean(one[f].values)):.3g}" for f in fields]
            label = names.get(str(member), (str(member),))[0]
            rows.append(f"| {variable} | {label} | " + " | ".join(cells) + " |")
    return [
        f"In observation space, mean over cycles {burn + 1}–{metrics.cycle.size} (no truth "
        f"needed): O−B against the background (the emulator's forecast from the previous "
        f"analysis), O−A against the analysis, spreads of the background (b) and analysis (a) "
        f"in observation space, the reduced χ² of the innovations (1: the spread and R account "
        f"for them) and Desroziers' Σ(O−A)(O−B)/ΣR (1: the observations weighed as R says).",
        "",
        *rows,
        "",
    ]


def _startup_line(metrics: xr.Dataset) -> list[str]:
    """How long the last invocation took to its first cycle (runs from before it: none)."""
    if "seconds_to_first_cycle" not in metrics:
        return []
    parts = []
    for member in metrics.ensemble.values[::-1]:  # the order they ran in: the free one first
        first = float(metrics.seconds_first_cycle.sel(ensemble=member))
        compiling = float(metrics.seconds_compiling.sel(ensemble=member))
        if np.isfinite(first):
            about = f", about {compiling:.2g} s of it compiling" if np.isfinite(compiling) else ""
            parts.append(f"{member}'s first cycle {first:.2g} s{about}")
    build = f"{float(metrics.seconds_build):.2g} s reading the inputs and loading the emulator"
    if not parts:
        return [f"Start-up of the last invocation: {build}; no cycle was left to run."]
    return [
        f"Start-up of the last invocation: {float(metrics.seconds_to_first_cycle):.2g} s to the "
        f"end of its first cycle ({build}; " + "; ".join(parts) + ")."
    ]


def write_report(run_dir: str | Path) -> Path:
    """Write ``report.md`` and ``figures/*.png`` for a finished run; returns the report path."""
    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.nc"
    if not metrics_path.exists():
        raise FileNotFoundError(f"{metrics_path} not found: is {run_dir} a finished filtrax run?")
    config = tomllib.loads((run_dir / "config.toml").read_text())
    metrics = xr.open_dataset(metrics_path).load()
    has_truth = "rmse" in metrics
    made = _figures(run_dir, config, metrics)
    lines = [f"# filtrax run: {config.get('name', run_dir.name)}", ""]
    section = config["filter"]
    # A method that does not weigh (free, enkf, letkf) has no filter.weights in its config.
    weights = f"weights `{section['weights']}`, " if "weights" in section else ""
    lines.append(
        f"Model {_model_text(config['model'])}, method `{section['method']}` "
        f"({weights}N = {section['particles']}), "
        f"sampler `{config['sampler']['name']}`, guidance `{config['guidance']['name']}`, "
        f"{config['run']['cycles']} cycles. Burn-in of {config['run']['burn_in']} cycles is "
        f"excluded from the time means; intervals are 95 % and account for autocorrelation."
    )
    lines.append("")
    burn = int(config["run"]["burn_in"])
    if has_truth:
        variables = list(dict.fromkeys(str(v) for v in metrics["variable"].values))
        observed = observed_variables(config, variables, observation_locations(run_dir))
        table = format_variable_table(variable_table(metrics, observed, burn), markdown=True)
        ratio = (
            "ratio: the filter's RMSE over the free ensemble's"
            if "baseline" in metrics.ensemble.values
            else "no free ensemble beside this run, so no ratio"
        )
        lines += [
            f"Per variable, levels pooled, mean over cycles {burn + 1}–{metrics.cycle.size} "
            f"({ratio}):",
            "",
            table,
            "",
            "Per channel:",
            "",
            *_channel_table(
                metrics,
                burn,
                level_name(run_dir, metrics),
                ensemble_names(config["filter"]["method"]),
            ),
        ]
        lines.append("")
    lines += _observation_space_table(metrics, burn, ensemble_names(config["filter"]["method"]))
    sel = metrics.sel({"ensemble": "analysis"}).isel(cycle=slice(burn, None))
    ess, ess_ci = time_mean_with_interval(sel.ess.values)
    seconds = float(np.nanmedian(sel.seconds.values))
    lines.append(
        f"Mean ESS before resampling: {ess:.1f} ± {ess_ci:.2g}; median α: "
        f"{float(np.nanmedian(sel.alpha.values)):.3g}; median seconds per cycle: {seconds:.3g}; "
        f"denoiser calls per cycle: {int(np.nanmax(sel.forward_calls.values))} forward, "
        f"{int(np.nanmax(sel.backward_calls.values))} VJPs."
    )
    gain = sel.move_gain.values if "move_gain" in sel else np.array([np.nan])
    if np.isfinite(gain).any():  # a Kalman update after the move measured it
        lines.append(
            f"Median share of the innovation the guided move absorbed (move_gain): "
            f"{float(np.nanmedian(gain)):.3g}."
        )
    lines += ["", *_startup_line(metrics)]
    lines.append("")
    for heading, caption, name in made:
        lines += [heading, "", f"![{caption}](figures/{name})", ""]
    report = run_dir / "report.md"
    report.write_text("\n".join(lines))
    return report
