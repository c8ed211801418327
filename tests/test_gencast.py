"""The GenCast adapter's own code: layout, statistics, Φ, SST filling, forcings, a full cycle.

DeepMind's graphcast cannot be installed here, so the raw network is a stand-in with
GenCast's call signature; everything around it is the code a GenCast run uses.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

from filtrax import (
    AuxiliaryParticleFilter,
    BlockLocalisation,
    DiracPredictiveWeight,
    DPMSolverPlusPlus2SSampler,
    EmulatorProposal,
    FixedInflation,
    MMPSGuidance,
    ObservationModel,
    PointSelection,
    assimilate,
    karras_noise_levels,
)
from filtrax.diffusion.latent_noise import SphericalWhiteNoise
from filtrax.emulators import gencast as gc
from filtrax.experiments.config import load_config
from filtrax.experiments.factory import build_experiment

LEVELS = (500.0, 850.0)


def small_grid():
    return gc.gencast_grid(22.5, gc.gencast_channels(levels=LEVELS))


def synthetic_statistics(channels, directory=None):
    """Per-variable statistics files laid out as GenCast's (``level`` dim for level vars)."""
    rng = np.random.default_rng(0)
    files = {}
    for field in gc.STATISTICS_FILES:
        data = {}
        for variable in sorted({c.variable for c in channels}):
            if field == "diff_std" and variable in gc.TARGET_ONLY_VARIABLES:
                continue
            levels = [c.level for c in channels if c.variable == variable]
            base = rng.uniform(1.0, 3.0, len(levels)).astype(np.float32)
            if levels == [None]:
                data[variable] = ((), base[0])
            else:
                data[variable] = (("level",), base)
        if field in ("mean", "std"):
            for name in gc.FORCING_VARIABLES + gc.STATIC_VARIABLES:
                data[name] = ((), np.float32(0.1 if field == "mean" else 0.7))
        files[field] = xr.Dataset(data, coords={"level": list(LEVELS)})
        if directory is not None:
            files[field].to_netcdf(directory / gc.STATISTICS_FILES[field])
    return files


def test_channel_order_is_gencasts_stacking():
    channels = gc.gencast_channels()
    labels = [c.label() for c in channels]
    assert len(channels) == 84
    assert labels[:3] == ["10m_u_component_of_wind", "10m_v_component_of_wind", "2m_temperature"]
    assert labels[3] == "geopotential@50" and labels[15] == "geopotential@1000"
    assert labels[16:18] == ["mean_sea_level_pressure", "sea_surface_temperature"]
    assert labels[31] == "temperature@50" and labels[43] == "temperature@1000"
    assert labels[44] == "total_precipitation_12hr"
    assert labels[71] == "vertical_velocity@50" and labels[83] == "vertical_velocity@1000"
    grid = gc.gencast_grid(1.0)
    assert grid.shape == (84, 181, 360) and grid.latitudes[0] == -90.0


def test_statistics_files_are_read_per_channel_with_clear_errors(tmp_path):
    grid = small_grid()
    files = synthetic_statistics(grid.channels, tmp_path)
    stats = gc.read_statistics(tmp_path, grid.channels)
    i = grid.channel_index("temperature", 850.0)
    assert stats["std"][i] == pytest.approx(float(files["std"]["temperature"].sel(level=850.0)))
    tp = grid.channel_index("total_precipitation_12hr")
    assert np.isnan(stats["diff_std"][tp]) and np.isfinite(np.delete(stats["diff_std"], tp)).all()
    assert stats["forcing_std"] == pytest.approx([0.7] * 4)
    with pytest.raises(ValueError, match="'temperature' has no level 300"):
        extra = [*grid.channels, gc.Channel("temperature", 300.0)]
        gc.statistics_vector(files["mean"], extra, source="m", field="mean")
    with pytest.raises(ValueError, match="no variable 'specific_humidity'"):
        gc.statistics_vector(
            files["mean"].drop_vars("specific_humidity"), grid.channels, source="m", field="mean"
        )
    with pytest.raises(FileNotFoundError, match=r"min_by_level\.nc"):
        (tmp_path / "min_by_level.nc").unlink()
        gc.read_statistics(tmp_path, grid.channels)


def test_progress_forcings_follow_the_solar_and_tropical_year():
    lon = (0.0, 90.0, 180.0, 270.0)
    epoch = gc.progress_forcings(jnp.int32(0), lon, 2)
    np.testing.assert_allclose(epoch[:, 0, 0], [0, 1, 0, 1], atol=1e-6)
    np.testing.assert_allclose(epoch[2, 0], [0, 1, 0, -1], atol=1e-6)  # sin(2π λ/360)
    seconds = gc.seconds_since_epoch("2019-03-29T12:00")
    f = gc.progress_forcings(jnp.int32(seconds), lon, 2)
    year = (seconds / 86400 / gc.DAYS_PER_YEAR) % 1.0
    np.testing.assert_allclose(
        f[:2, 0, 0], [np.sin(2 * np.pi * year), np.cos(2 * np.pi * year)], atol=2e-5
    )
    np.testing.assert_allclose(f[3, 0], [-1, 0, 1, 0], atol=1e-6)  # noon at Greenwich


def stand_in_network(z_scaled, sigma, cond):
    """GenCast's call signature; touches every part of the conditioning."""
    summary = jnp.mean(cond["inputs"][-1], axis=0) + 0.1 * jnp.sum(cond["target_forcings"], 0)
    return 0.5 * z_scaled + 0.05 * (summary + jnp.mean(cond["statics"], 0))[None] / (1 + sigma)


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    grid = small_grid()
    directory = tmp_path_factory.mktemp("stats")
    synthetic_statistics(grid.channels, directory)
    stats = gc.read_statistics(directory, grid.channels)
    land = np.zeros(grid.shape[1:], bool)
    land[3:5, 4:9] = True
    return gc.gencast_emulator(stand_in_network, stats, grid, sst_missing=land)


def era5_like(grid, times, *, nan_land=None):
    rng = np.random.default_rng(1)
    frames = 280 + rng.normal(size=(len(times), *grid.shape)).astype(np.float32)
    if nan_land is not None:
        frames[:, grid.channel_index("sea_surface_temperature")][:, nan_land] = np.nan
    data = {}
    for variable in grid.variables:
        levels = grid.levels_of(variable)
        idx = [grid.channel_index(variable, lev) for lev in levels]
        if levels == (None,):
            data[variable] = (("time", "latitude", "longitude"), frames[:, idx[0]])
        else:
            data[variable] = (("time", "level", "latitude", "longitude"), frames[:, idx])
    coords = {
        "time": np.asarray(times, "datetime64[ns]"),
        "level": list(LEVELS),
        "latitude": list(grid.latitudes)[::-1],  # WeatherBench-2 stores them descending
        "longitude": list(grid.longitudes),
    }
    data = {k: (dims, np.flip(v, axis=-2)) for k, (dims, v) in data.items()}
    rng_static = np.random.default_rng(3).normal(size=grid.shape[1:]).astype(np.float32)
    data["geopotential_at_surface"] = (("latitude", "longitude"), np.flip(rng_static, 0))
    data["land_sea_mask"] = (("latitude", "longitude"), np.zeros(grid.shape[1:], np.float32))
    return xr.Dataset(data, coords=coords), frames


def test_era5_reader_and_initial_state_fill_sst_over_land(emulator):
    grid = emulator.grid
    times = np.array(["2019-03-28T12:00", "2019-03-29T00:00"], "datetime64[s]")
    land = np.asarray(emulator.sst_missing)
    dataset, frames = era5_like(grid, times, nan_land=land)
    read = gc.era5_frames(dataset, grid, times)
    np.testing.assert_array_equal(read, frames)
    state = emulator.initial_state(read[0], read[1], times[1])
    sst = grid.channel_index("sea_surface_temperature")
    assert np.isfinite(np.asarray(state.frames)).all()
    np.testing.assert_array_equal(state.frames[1, sst][land], emulator.minimum[sst])
    assert np.isnan(np.asarray(emulator.with_nans(state.frames[1]))[sst][land]).all()
    assert int(state.seconds) == gc.seconds_since_epoch("2019-03-29T00:00")
    with pytest.raises(ValueError, match="no state at the times"):
        gc.era5_frames(dataset, grid, np.array(["2019-03-30T00:00"], "datetime64[s]"))
    with pytest.raises(ValueError, match="lacks the variables"):
        gc.era5_frames(dataset.drop_vars("temperature"), grid, times)


def test_phi_is_the_residual_map_and_precipitation_is_absolute(emulator):
    grid = emulator.grid
    rng = np.random.default_rng(2)
    frames = jnp.asarray(280 + rng.normal(size=(2, *grid.shape)), jnp.float32)
    state = gc.GenCastState(frames, jnp.int32(0))
    z = jnp.asarray(rng.normal(size=grid.shape), jnp.float32)
    x = emulator.latent_to_frame(z, state)
    t = grid.channel_index("temperature", 500.0)
    tp = grid.channel_index("total_precipitation_12hr")
    np.testing.assert_allclose(x[t], frames[1, t] + emulator.diff_std[t] * z[t], rtol=1e-6)
    np.testing.assert_allclose(x[tp], emulator.mean[tp] + emulator.std[tp] * z[tp], rtol=1e-6)
    cond = emulator.condition(state)
    assert cond["inputs"].shape == (2, len(grid.channels) - 1, *grid.shape[1:])
    assert cond["input_forcings"].shape == (2, 4, *grid.shape[1:])
    np.testing.assert_allclose(
        cond["inputs"][1, t], (frames[1, t] - emulator.mean[t]) / emulator.std[t], rtol=1e-5
    )
    nxt = emulator.advance(state, x)
    assert int(nxt.seconds) == gc.TIME_STEP_SECONDS
    np.testing.assert_array_equal(nxt.frames[0], frames[1])


@pytest.mark.parametrize("local", [False, True], ids=["global", "blocks-inflation"])
def test_a_full_fa_apf_cycle_runs_on_the_adapter(emulator, local):
    """Spherical noise, MMPS guidance, Dirac weights and resampling on GenCastState pytrees;
    also with block-local selection and inflation (the int32 valid time is stitched from one
    ancestor and not inflated)."""
    grid = emulator.grid
    assert isinstance(emulator.latent_noise, SphericalWhiteNoise)
    times = np.array(["2019-03-28T12:00", "2019-03-29T00:00"], "datetime64[s]")
    _, frames = era5_like(grid, times)
    x0 = emulator.initial_state(frames[0], frames[1], times[1])
    particles = jax.tree_util.tree_map(lambda leaf: jnp.stack([leaf] * 4), x0)
    t = grid.channel_index("2m_temperature")
    points = np.ravel_multi_index(([t, t], [2, 6], [3, 10]), grid.shape)
    observation_model = ObservationModel(PointSelection(grid.shape, points), 0.1**2)
    y = jnp.asarray([[285.0, 275.0]])
    levels = karras_noise_levels(80.0, 0.03, 7.0, 6)
    proposal = EmulatorProposal(
        emulator, DPMSolverPlusPlus2SSampler(levels), MMPSGuidance(iterations=2)
    )
    extras = (
        {"localisation": BlockLocalisation((4, 8)), "inflation": FixedInflation(1.1)}
        if local
        else {}
    )
    filter_ = AuxiliaryParticleFilter(proposal, DiracPredictiveWeight(), **extras)
    result = assimilate(filter_, particles, y, observation_model, key=jax.random.key(0))
    final = result.final_state.particles
    assert np.isfinite(np.asarray(final.frames)).all()
    np.testing.assert_array_equal(final.seconds, x0.seconds + gc.TIME_STEP_SECONDS)
    analysis = np.asarray(result.analysis)[0]
    # Guidance pulls the observed points toward y (σ_obs = 0.1 K, prior spread ≫ 0.1 K).
    assert np.abs(analysis[:, t, 2, 3].mean() - 285.0) < np.abs(frames[1, t, 2, 3] - 285.0)


def test_gpu_attention_returns_a_modified_copy():
    @dataclasses.dataclass(frozen=True)
    class Transformer:
        attention_type: str = "splash_mha"
        mask_type: str = "lazy"
        num_heads: int = 4

    @dataclasses.dataclass(frozen=True)
    class Architecture:
        sparse_transformer_config: Transformer = Transformer()
        node_output_size: int | None = None

    original = Architecture()
    changed = gc.gpu_attention(original)
    assert changed.sparse_transformer_config.attention_type == "triblockdiag_mha"
    assert changed.sparse_transformer_config.mask_type == "full"
    assert changed.sparse_transformer_config.num_heads == 4
    assert original.sparse_transformer_config.attention_type == "splash_mha"


def test_without_graphcast_the_error_says_how_to_install(tmp_path):
    with pytest.raises(ImportError, match=r"git\+https://github\.com/google-deepmind/graphcast"):
        gc.load_gencast_network(tmp_path / "ckpt.npz")


def test_the_authors_config_parses_and_stops_at_the_missing_package():
    cfg = load_config("configs/gencast/savary2025.toml")
    assert cfg.filter.particles == 256 and cfg.run.cycles == 30
    assert cfg.observations.error_std == pytest.approx(0.1)
    assert cfg.observations.variables == ("2m_temperature", "temperature")
    assert cfg.run.start_time.startswith("2019-03-29")
    with pytest.raises(ImportError, match="graphcast"):
        build_experiment(cfg)


# --------------------------------------------------------------------------------------------
# The thin layer, against stand-ins for graphcast's modules (the real package cannot be
# installed here). They check the calls the adapter makes, as graphcast documents them.
# --------------------------------------------------------------------------------------------


def _fake_graphcast(monkeypatch, levels, calls):
    import sys
    import types

    @dataclasses.dataclass(frozen=True)
    class Transformer:
        attention_type: str = "splash_mha"
        mask_type: str = "lazy"

    @dataclasses.dataclass(frozen=True)
    class Architecture:
        sparse_transformer_config: Transformer = Transformer()
        node_output_size: int | None = None

    surface_inputs = [v for v in gc.SURFACE_VARIABLES if v not in gc.TARGET_ONLY_VARIABLES]
    task = types.SimpleNamespace(
        pressure_levels=levels,
        input_variables=(
            *surface_inputs,
            *gc.LEVEL_VARIABLES,
            *gc.FORCING_VARIABLES,
            *gc.STATIC_VARIABLES,
        ),
    )
    ckpt = types.SimpleNamespace(
        params={"w": jnp.float32(0.5)},
        task_config=task,
        denoiser_architecture_config=Architecture(),
        noise_encoder_config="noise-encoder",
    )

    class Denoiser:
        def __init__(self, noise_encoder_config, architecture):
            calls["architecture"] = architecture
            assert noise_encoder_config == "noise-encoder"

        def __call__(self, inputs, noisy_targets, noise_levels, forcings):
            calls["inputs"] = inputs
            calls["forcings"] = forcings
            calls["noise_levels"] = noise_levels
            t = inputs["2m_temperature"].isel(time=-1)
            return noisy_targets * 0.5 + 0.01 * t

    def transform(fn):
        return types.SimpleNamespace(apply=lambda params, rng, *args: fn(*args))

    def data_array(values, dims, coords=None):
        return xr.DataArray(np.asarray(values), dims=dims, coords=coords)

    modules = {
        "haiku": types.SimpleNamespace(transform=transform),
        "graphcast": types.ModuleType("graphcast"),
        "graphcast.checkpoint": types.SimpleNamespace(load=lambda f, cls: ckpt),
        "graphcast.gencast": types.SimpleNamespace(CheckPoint=object),
        "graphcast.denoiser": types.SimpleNamespace(Denoiser=Denoiser),
        "graphcast.xarray_jax": types.SimpleNamespace(
            DataArray=data_array, unwrap_data=lambda da: jnp.asarray(da.values)
        ),
    }
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    for name in ("checkpoint", "gencast", "denoiser", "xarray_jax"):
        setattr(modules["graphcast"], name, modules[f"graphcast.{name}"])


def test_thin_layer_builds_gencasts_datasets_and_maps_back(monkeypatch, tmp_path):
    calls = {}
    _fake_graphcast(monkeypatch, LEVELS, calls)
    (tmp_path / "ckpt.npz").write_bytes(b"stand-in")
    network, grid = gc.load_gencast_network(tmp_path / "ckpt.npz", resolution_degrees=22.5)
    assert grid.shape == small_grid().shape and grid.channels == small_grid().channels
    assert "architecture" not in calls  # the module is built inside the transform, per call
    statistics_dir = tmp_path / "stats"
    statistics_dir.mkdir()
    synthetic_statistics(grid.channels, statistics_dir)
    emulator = gc.gencast_emulator(network, gc.read_statistics(statistics_dir, grid.channels), grid)
    times = np.array(["2019-03-28T12:00", "2019-03-29T00:00"], "datetime64[s]")
    _, frames = era5_like(grid, times)
    state = emulator.initial_state(frames[0], frames[1], times[1])
    cond = emulator.condition(state)
    z = jnp.asarray(np.random.default_rng(4).normal(size=grid.shape), jnp.float32)
    out = network(z, jnp.float32(3.0), cond)

    architecture = calls["architecture"]
    assert architecture.node_output_size == len(grid.channels)
    assert architecture.sparse_transformer_config.attention_type == "triblockdiag_mha"
    inputs, forcings = calls["inputs"], calls["forcings"]
    assert "total_precipitation_12hr" not in inputs
    assert inputs["temperature"].dims == ("batch", "time", "level", "lat", "lon")
    assert inputs["temperature"].sizes["time"] == 2
    assert list(inputs["temperature"]["level"].values) == list(LEVELS)
    np.testing.assert_allclose(inputs["lat"].values, grid.latitudes)
    assert inputs["year_progress_sin"].dims == ("batch", "time")
    assert inputs["day_progress_cos"].dims == ("batch", "time", "lon")
    assert inputs["land_sea_mask"].dims == ("lat", "lon")
    assert forcings["day_progress_sin"].sizes["time"] == 1
    assert calls["noise_levels"].dims == ("batch",)
    # The stand-in returns 0.5 z + 0.01 t2m_input: check the stacking round trip.
    t2m = grid.channel_index("2m_temperature")
    expected = 0.5 * z + 0.01 * cond["inputs"][1, t2m][None]
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
