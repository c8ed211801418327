"""The run report's figures: every variable, per-level pages, units, α = 0, the ESS band.

Most tests write a small synthetic run directory (metrics.nc, config.toml, the ensembles,
truth and observations laid out as :mod:`filtrax.experiments.runner` writes them) and
inspect the figures' artists; two run the command line on tiny runs (a free ensemble on
levels, and a site-indexed model) and build their reports.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import xarray as xr
from click.testing import CliRunner

from filtrax import report
from filtrax.cli import main

SIGMA = (0.2, 0.5, 0.9)
# 12 variables (the old report showed at most 8 channels), three of them on sigma levels.
VARIABLES = {
    "temperature": ("K", SIGMA),
    "u_component_of_wind": ("m s-1", SIGMA),
    "geopotential": ("m2 s-2", SIGMA),
    "surface_pressure": ("Pa", ()),
    **{f"tracer_{i}": ("1", ()) for i in range(8)},
}
# What most tests need: two variables on levels and one without.
FEW = {k: VARIABLES[k] for k in ("temperature", "u_component_of_wind", "surface_pressure")}
NUM_LAT, NUM_LON = 4, 8


def _metrics(variables, ensembles, cycles, particles, alpha, level_attrs) -> xr.Dataset:
    channels = [(v, u, lev) for v, (u, levels) in variables.items() for lev in levels or [None]]
    count = len(channels)
    rng = np.random.default_rng(0)
    # RMSE grows with the channel index, so that pooled and per-level values differ.
    scale = (1.0 + np.arange(count))[None, None, :]
    shape = (len(ensembles), cycles, count)
    per_channel = {
        "rmse": scale * (1 + rng.random(shape)),
        "spread": scale * rng.random(shape),
        "crps": scale * rng.random(shape),
    }
    ess = np.full((len(ensembles), cycles), float(particles))
    ess[0, 1:] = 0.22 * particles
    history = {
        "ess": ess,
        "alpha": np.stack([alpha] + [np.zeros(cycles)] * (len(ensembles) - 1)),
        "seconds": np.ones((len(ensembles), cycles)),
        "forward_calls": np.ones((len(ensembles), cycles)),
        "backward_calls": np.ones((len(ensembles), cycles)),
    }
    data = {k: (("ensemble", "cycle", "channel"), v) for k, v in per_channel.items()}
    data |= {k: (("ensemble", "cycle"), v) for k, v in history.items()}
    ranks = rng.integers(0, 20, (len(ensembles), count, particles + 1)).astype(float)
    data["rank_histogram"] = (("ensemble", "channel", "rank"), ranks)
    levels = [np.nan if lev is None else lev for _, _, lev in channels]
    coords = {
        "ensemble": list(ensembles),
        "cycle": np.arange(cycles),
        "channel": [v if lev is None else f"{v}@{lev:g}" for v, _, lev in channels],
        "variable": ("channel", [v for v, _, _ in channels]),
        "units": ("channel", [u for _, u, _ in channels]),
        "level": ("channel", levels, level_attrs),
    }
    return xr.Dataset(data, coords=coords)


def _fields(variables, cycles, particles, level_name) -> tuple[xr.Dataset, xr.Dataset]:
    """The analysis ensemble and the truth on a small lat-lon grid."""
    rng = np.random.default_rng(1)
    lat = np.linspace(-67.5, 67.5, NUM_LAT)
    lon = np.arange(NUM_LON) * 360.0 / NUM_LON
    ensemble, truth = {}, {}
    for name, (units, levels) in variables.items():
        dims = ("level", "lat", "lon") if levels else ("lat", "lon")
        shape = (len(levels), NUM_LAT, NUM_LON) if levels else (NUM_LAT, NUM_LON)
        value = 280.0 + rng.normal(size=(cycles, *shape))
        members = value[:, None] + rng.normal(size=(cycles, particles, *shape))
        ensemble[name] = (("cycle", "particle", *dims), members, {"units": units})
        truth[name] = (("cycle", *dims), value, {"units": units})
    coords = {"lat": lat, "lon": lon, "cycle": np.arange(cycles)}
    if any(levels for _, levels in variables.values()):
        coords["level"] = ("level", list(SIGMA), {"long_name": level_name})
    return xr.Dataset(ensemble, coords=coords), xr.Dataset(truth, coords=coords)


def _config(method, tempering, band, particles, cycles, observed) -> str:
    return f"""name = "synthetic"
[model]
name = "synthetic"
[observations]
variables = {observed!r}
[filter]
method = "{method}"
particles = {particles}
weights = "dirac"
tempering = "{tempering}"
ess_band = {list(band)!r}
[sampler]
name = "dpmpp2s"
[guidance]
name = "mmps"
[run]
cycles = {cycles}
burn_in = 1
"""


def make_run(
    path: Path,
    *,
    variables=FEW,
    ensembles=("analysis", "baseline"),
    method="fa_apf",
    tempering="ess_band",
    band=(0.2, 0.25),
    alpha=(0.0, 1e-6, 0.3, 1.0),
    particles=8,
    level_name="sigma",
    level_attrs=None,
    labels=None,
    gridded=True,
) -> Path:
    """A finished run directory with a synthetic metrics.nc, ensembles and observations."""
    alpha = np.asarray(alpha, float)
    cycles = alpha.size
    path.mkdir()
    metrics = _metrics(variables, ensembles, cycles, particles, alpha, level_attrs or {})
    metrics.to_netcdf(path / "metrics.nc")
    observed = ["temperature"] if "temperature" in variables else []
    config = _config(method, tempering, band, particles, cycles, observed)
    (path / "config.toml").write_text(config)
    if gridded:
        ensemble, truth = _fields(variables, cycles, particles, level_name)
        if labels is None:
            labels = [
                f"temperature@{s:g} lat={la:.2f} lon={lo:.2f}"
                for s in SIGMA
                for la in truth.lat.values[::2]
                for lo in truth.lon.values[::2]
            ]
    else:
        sites = np.arange(6)
        members = np.random.default_rng(2).normal(size=(cycles, particles, sites.size))
        ensemble = xr.Dataset({"x": (("cycle", "particle", "site"), members)}, {"site": sites})
        truth = xr.Dataset({"x": (("cycle", "site"), members[:, 0])}, {"site": sites})
        labels = labels or [f"x[{s}]" for s in sites[::2]]
    ensemble.to_zarr(path / "analysis.zarr", mode="w", consolidated=False)
    truth.to_netcdf(path / "truth.nc")
    observations = xr.Dataset(
        {"y": (("cycle", "obs"), np.zeros((cycles, len(labels))))},
        coords={"cycle": np.arange(cycles), "label": ("obs", labels)},
    )
    observations.to_netcdf(path / "observations.nc")
    return path


@pytest.fixture
def drawn(monkeypatch):
    """Build a report, keeping its figures (drawn, not written) by file name."""
    figures: dict[str, plt.Figure] = {}

    def keep(fig, path):
        fig.canvas.draw()  # lays out and renders: missing glyphs etc. would warn here
        figures[path.name] = fig

    monkeypatch.setattr(report, "_save", keep)

    def build(run_dir: Path) -> dict[str, plt.Figure]:
        report.write_report(run_dir)
        return figures

    yield build
    plt.close("all")


def panels(fig: plt.Figure) -> list[plt.Axes]:
    """The data panels of a figure (no colour bars)."""
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def labelled(ax: plt.Axes, label: str):
    return [line for line in ax.get_lines() if line.get_label() == label]


def test_every_variable_gets_a_panel_with_its_units(tmp_path, drawn):
    figures = drawn(make_run(tmp_path / "run", variables=VARIABLES))
    for name in ("skill.png", "spread_skill.png", "rank_histograms.png"):
        titles = [ax.get_title() for ax in panels(figures[name])]
        assert len(titles) == len(VARIABLES), name  # no silent cap
        for variable, title in zip(VARIABLES, titles, strict=True):
            assert title.startswith(variable), (name, title)
    skill = dict(zip(VARIABLES, panels(figures["skill.png"]), strict=True))
    assert skill["temperature"].get_ylabel() == "RMSE / spread [K]"
    assert skill["u_component_of_wind"].get_ylabel() == "RMSE / spread [m s⁻¹]"
    assert skill["geopotential"].get_ylabel() == "RMSE / spread [m² s⁻²]"
    assert skill["surface_pressure"].get_ylabel() == "RMSE / spread [Pa]"
    assert skill["tracer_0"].get_ylabel() == "RMSE / spread (dimensionless)"
    assert skill["temperature"].get_title() == "temperature (3 levels pooled)"
    spread_skill = panels(figures["spread_skill.png"])[0]
    assert (spread_skill.get_xlabel(), spread_skill.get_ylabel()) == ("RMSE [K]", "spread [K]")


def test_levels_are_pooled_by_root_mean_square(tmp_path, drawn):
    run = make_run(tmp_path / "run")
    figures = drawn(run)
    metrics = xr.open_dataset(run / "metrics.nc")
    rmse = metrics.rmse.sel(ensemble="analysis").values[:, :3]  # temperature's 3 levels
    (line,) = labelled(panels(figures["skill.png"])[0], "filter RMSE")
    np.testing.assert_allclose(line.get_ydata(), np.sqrt(np.mean(rmse**2, axis=1)))


def test_variables_with_levels_get_per_level_pages(tmp_path, drawn):
    figures = drawn(make_run(tmp_path / "run"))
    for stem in ("skill", "spread_skill", "rank_histograms"):
        for variable in ("temperature", "u_component_of_wind"):
            page = figures[f"{stem}_{variable}.png"]
            assert [ax.get_title() for ax in panels(page)] == [f"σ = {s:g}" for s in SIGMA]
        assert f"{stem}_surface_pressure.png" not in figures
    text = (tmp_path / "run" / "report.md").read_text()
    assert (
        "![Skill (RMSE of the ensemble mean) and spread per cycle: temperature, per level]" in text
    )
    assert "| temperature, σ = 0.2 | filter |" in text


def test_spread_skill_panels_have_their_own_axes_and_diagonal(tmp_path, drawn):
    figures = drawn(make_run(tmp_path / "run"))
    tops = []
    for ax in panels(figures["spread_skill.png"]):
        (diagonal,) = labelled(ax, "spread = RMSE")
        points = np.concatenate([line.get_xydata().ravel() for line in ax.get_lines()[:-1]])
        top = diagonal.get_xdata()[-1]
        assert top == pytest.approx(1.08 * points.max())
        assert ax.get_xlim() == ax.get_ylim() == (0.0, top)
        tops.append(top)
    assert len(set(tops)) == len(tops)  # each variable on its own scale


def test_level_names_come_from_the_level_coordinate(tmp_path, drawn):
    pressure = {"temperature": ("K", SIGMA)}
    figures = drawn(make_run(tmp_path / "a", variables=pressure, level_name="level"))
    titles = [ax.get_title() for ax in panels(figures["skill_temperature.png"])]
    assert titles == [f"level = {s:g}" for s in SIGMA]
    figures = drawn(
        make_run(tmp_path / "b", variables=pressure, level_attrs={"long_name": "pressure_hPa"})
    )
    titles = [ax.get_title() for ax in panels(figures["skill_temperature.png"])]
    assert titles == [f"p = {s:g} hPa" for s in SIGMA]


def _ess_alpha(alpha, **section) -> tuple[plt.Axes, plt.Axes]:
    metrics = _metrics(FEW, ("analysis",), len(alpha), 8, np.asarray(alpha, float), {})
    section = {"method": "fa_apf", "particles": 8, "tempering": "ess_band"} | section
    return tuple(report._ess_alpha_figure(metrics, section).axes)


def test_alpha_zero_is_drawn_at_zero_and_the_ess_band_is_shaded():
    ess_ax, alpha_ax = _ess_alpha([0.0, 1e-6, 0.3, 1.0], ess_band=[0.2, 0.25])
    (zero,) = labelled(alpha_ax, "α = 0 (no weighting)")
    assert list(zero.get_xdata()) == [0] and list(zero.get_ydata()) == [0.0]
    plotted = np.concatenate([line.get_ydata() for line in alpha_ax.get_lines()])
    assert set(plotted[plotted < 1e-6].tolist()) == {0.0}  # no 1e-16 stand-in
    assert alpha_ax.get_yscale() == "symlog" and alpha_ax.get_ylim()[0] < 0
    (band,) = [p for p in ess_ax.patches if p.get_label().startswith("target band")]
    assert (band.get_y(), band.get_y() + band.get_height()) == pytest.approx((1.6, 2.0))
    assert ess_ax.get_ylabel() == "ESS (particles)"
    assert alpha_ax.get_ylabel() == "α (dimensionless)"
    plt.close("all")


def test_the_band_follows_the_config_and_defaults_to_its_default():
    ess_ax, _ = _ess_alpha([0.0, 0.5], ess_band=[0.5, 0.75])
    (band,) = [p for p in ess_ax.patches if p.get_label().startswith("target band")]
    assert (band.get_y(), band.get_y() + band.get_height()) == pytest.approx((4.0, 6.0))
    assert report.ess_band({"method": "fa_apf"}) == (0.2, 0.25)
    _, alpha_ax = _ess_alpha([0.0, 0.0, 0.0], method="free")
    assert alpha_ax.get_yscale() == "linear" and "0 every cycle" in alpha_ax.get_title()
    plt.close("all")


@pytest.mark.parametrize(
    ("method", "tempering"), [("fa_apf", "fixed"), ("free", "ess_band"), ("letkf", "ess_band")]
)
def test_no_ess_band_without_ess_band_tempering(method, tempering):
    ess_ax, _ = _ess_alpha([0.0, 0.5], method=method, tempering=tempering)
    assert not [p for p in ess_ax.patches if p.get_label().startswith("target band")]
    plt.close("all")


def test_maps_mark_the_observed_locations(tmp_path, drawn):
    figures = drawn(make_run(tmp_path / "run"))
    maps = figures["map_temperature.png"], figures["map_u_component_of_wind.png"]
    truth = xr.open_dataset(tmp_path / "run" / "truth.nc")
    expected = {(la, lo) for la in truth.lat.values[::2] for lo in truth.lon.values[::2]}
    for fig, units in zip(maps, ("[K]", "[m s⁻¹]"), strict=True):
        assert "observed locations (temperature)" in fig.get_suptitle()
        assert "σ = 0.9" in fig.get_suptitle()
        for ax in panels(fig):
            (marks,) = labelled(ax, "observed location")
            assert set(zip(marks.get_ydata(), marks.get_xdata(), strict=True)) == expected
            assert (ax.get_xlabel(), ax.get_ylabel()) == ("longitude [°E]", "latitude [°N]")
        colour_bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
        assert all(ax.get_ylabel().endswith(units) for ax in colour_bars)


def test_a_network_in_every_column_is_named_not_marked(tmp_path, drawn):
    """Markers on every column would hide the fields (the poster network is every column)."""
    grid = xr.open_dataset(make_run(tmp_path / "probe") / "truth.nc")
    every = [
        f"temperature@0.9 lat={la:.2f} lon={lo:.2f}"
        for la in grid.lat.values
        for lo in grid.lon.values
    ]
    fig = drawn(make_run(tmp_path / "run", labels=every))["map_u_component_of_wind.png"]
    assert "temperature observed in every column (not marked)" in fig.get_suptitle()
    assert not any(labelled(ax, "observed location") for ax in panels(fig))


def test_maps_say_when_the_locations_are_unknown(tmp_path, drawn):
    figures = drawn(make_run(tmp_path / "run", labels=["slot 0", "slot 1"]))
    fig = figures["map_u_component_of_wind.png"]
    assert "observation locations not recorded" in fig.get_suptitle()
    assert not any(labelled(ax, "observed location") for ax in panels(fig))


@pytest.mark.parametrize(
    "label",
    ["station 3 temperature@0.5 at (lat 10.5, lon -20)", "temperature@0.5 at (lat 10.5, lon 340)"],
)
def test_observation_file_labels_give_locations(tmp_path, label):
    run = make_run(tmp_path / "run", labels=[label])
    locations = report.observation_locations(run)
    assert (list(locations.lat), list(locations.lon)) == ([10.5], [340.0])
    assert locations.variables == ("temperature",)


def test_report_of_a_synthetic_free_and_site_indexed_run_builds(tmp_path):
    free = make_run(tmp_path / "free", ensembles=("analysis",), method="free", alpha=[0.0] * 3)
    site = make_run(
        tmp_path / "site", variables={"x": ("1", ())}, gridded=False, alpha=[0, 0.5, 1.0]
    )
    for run in (free, site):
        text = report.write_report(run).read_text()
        assert text.startswith("# filtrax run: synthetic")
        for name in ("skill.png", "spread_skill.png", "rank_histograms.png", "ess_alpha.png"):
            assert (run / "figures" / name).stat().st_size > 0
    assert (free / "figures" / "map_temperature.png").exists()
    assert not list((site / "figures").glob("map_*.png"))


def test_units_text():
    assert report.units_text("m s-1") == "m s⁻¹"
    assert report.units_text("kg m-2 s-1") == "kg m⁻² s⁻¹"
    assert report.units_text("1") == report.units_text("") == "dimensionless"
    assert report.with_units("RMSE", "K") == "RMSE [K]"


TINY = """
name = "tiny"
[model]
name = "gaussian_field"
num_lat = 8
num_lon = 16
variables = ["temperature", "u_component_of_wind"]
levels = [850.0, 500.0]
[observations]
variables = ["temperature"]
stride = 2
[filter]
method = "free"
particles = 4
[sampler]
levels = 3
[run]
cycles = 2
burn_in = 0
"""


@pytest.mark.parametrize("kind", ["free_on_levels", "site_indexed"])
def test_report_of_a_real_free_and_site_indexed_run(tmp_path, monkeypatch, kind):
    monkeypatch.setenv("FILTRAX_CACHE_DIR", "")
    config = tmp_path / "config.toml"
    if kind == "free_on_levels":
        config.write_text(TINY)
    else:
        config.write_text(
            'name = "tiny"\n[model]\nname = "linear_gaussian"\nstate_dim = 8\nobserved = 4\n'
            '[filter]\nmethod = "enkf"\nparticles = 4\n[run]\ncycles = 2\nburn_in = 0\n'
        )
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["run", str(config), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert CliRunner().invoke(main, ["report", str(out)]).exit_code == 0
    names = {p.name for p in (out / "figures").iterdir()}
    assert {"skill.png", "spread_skill.png", "ess_alpha.png", "rank_histograms.png"} <= names
    if kind == "free_on_levels":
        assert {"skill_temperature.png", "map_u_component_of_wind.png"} <= names
        assert "| temperature, level = 850 |" in (out / "report.md").read_text()
    else:
        assert not any(n.startswith("map_") for n in names)
