"""The Held–Suarez truth, the sphere U-Net, the gridded emulator and its end-to-end path."""

from __future__ import annotations

import dataclasses
import math
import re
import shutil
import tomllib
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from click.testing import CliRunner

from filtrax.cli import main
from filtrax.diffusion.denoisers import EDMPreconditionedDenoiser
from filtrax.dynamics.heldsuarez import HeldSuarezSetup
from filtrax.emulators.atmosphere import AtmosphereEmulator, load_emulator, save_emulator
from filtrax.emulators.sphere_unet import NoisyInputPath, SphereUNet, pad_sphere
from filtrax.experiments.config import ConfigError, config_from_dict
from filtrax.experiments.factory import build_experiment
from filtrax.grid import Channel, GridSpec
from filtrax.io.heldsuarez_store import stack_channels, write_segment

LAT = tuple((-90 + 22.5 * (np.arange(8) + 0.5)).tolist())
LON = tuple((45.0 * np.arange(8)).tolist())


def test_pad_sphere_continues_meridians_across_the_poles():
    lat = np.deg2rad(np.asarray(LAT))
    lon = np.deg2rad(np.asarray(LON))
    # A smooth field on the sphere: the Cartesian x coordinate cos φ cos λ.
    field = (np.cos(lat)[:, None] * np.cos(lon)[None, :])[..., None]
    padded = np.asarray(pad_sphere(jnp.asarray(field), 2))
    assert padded.shape == (12, 12, 1)
    # Beyond the south pole, row -1-j is latitude j at longitude λ + 180°: cos φ cos(λ + π).
    for j in range(2):
        expected = np.cos(lat[j]) * np.cos(lon + np.pi)
        np.testing.assert_allclose(padded[1 - j, 2:-2, 0], expected, atol=1e-6)
        expected_north = np.cos(lat[-1 - j]) * np.cos(lon + np.pi)
        np.testing.assert_allclose(padded[10 + j, 2:-2, 0], expected_north, atol=1e-6)
    # Periodic in longitude.
    np.testing.assert_allclose(padded[2:-2, 0, 0], field[:, -2, 0])
    np.testing.assert_allclose(padded[2:-2, -1, 0], field[:, 1, 0])


def _unet(key=0):
    net = SphereUNet(
        channels=3, condition_frames=2, widths=(8, 16), latitudes=LAT, key=jax.random.key(key)
    )
    # A non-zero head, so the equivariance test sees the whole network.
    weight = jax.random.normal(jax.random.key(9), net.head.weight.shape) * 0.1
    return eqx.tree_at(lambda n: n.head.weight, net, weight)


def test_sphere_unet_is_equivariant_under_longitude_shifts():
    net = _unet()
    key1, key2 = jax.random.split(jax.random.key(1))
    x = jax.random.normal(key1, (3, 8, 8))
    cond = jax.random.normal(key2, (2, 3, 8, 8))
    out = net(x, jnp.asarray(0.3), cond)
    shifted = net(jnp.roll(x, 2, axis=-1), jnp.asarray(0.3), jnp.roll(cond, 2, axis=-1))
    np.testing.assert_allclose(np.asarray(shifted), np.roll(np.asarray(out), 2, axis=-1), atol=2e-5)
    # ... and not trivially: a latitude flip is not a symmetry (Coriolis changes sign).
    flipped = net(x[:, ::-1], jnp.asarray(0.3), cond[:, :, ::-1])
    assert not np.allclose(np.asarray(flipped)[:, ::-1], np.asarray(out), atol=1e-3)


def test_noisy_input_path_starts_as_its_base_and_keeps_the_symmetry():
    base = _unet()
    path = NoisyInputPath(base, channels=3, terms=3, key=jax.random.key(4))
    key1, key2 = jax.random.split(jax.random.key(1))
    x = jax.random.normal(key1, (3, 8, 8))
    cond = jax.random.normal(key2, (2, 3, 8, 8))
    for c_noise in (-0.98, 0.0, 1.1):  # sigma = 0.02, 1, 81
        np.testing.assert_array_equal(
            np.asarray(path(x, jnp.asarray(c_noise), cond)),
            np.asarray(base(x, jnp.asarray(c_noise), cond)),
        )
    # The stencils get a gradient at the start, so training moves away from the base.
    grads = eqx.filter_grad(lambda n: jnp.sum(n(x, jnp.asarray(-0.5), cond) ** 2))(path)
    assert float(jnp.abs(grads.stencils.weight).max()) > 0
    # The bands: one at each end of [0.02, 2], and nothing left far above it.
    np.testing.assert_allclose(np.asarray(path.bands(jnp.asarray(0.02)))[0], 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(path.bands(jnp.asarray(2.0)))[-1], 0.5, rtol=1e-5)
    assert float(path.bands(jnp.asarray(80.0)).max()) < 1e-6
    # With stencils V_k the path adds m(sigma) sum_k phi_k V_k x: linear in x, gone at large
    # sigma, and, like the U-Net, equivariant under longitude shifts.
    weight = jax.random.normal(jax.random.key(5), path.stencils.weight.shape)
    path = eqx.tree_at(lambda n: n.stencils.weight, path, weight)
    c_small = jnp.asarray(math.log(0.1) / 4)
    added = [path(s * x, c_small, cond) - base(s * x, c_small, cond) for s in (1, 2)]
    assert float(jnp.abs(added[0]).max()) > 0.1
    np.testing.assert_allclose(np.asarray(added[1]), 2 * np.asarray(added[0]), rtol=1e-4, atol=1e-4)
    large = path(x, jnp.asarray(1.1), cond) - base(x, jnp.asarray(1.1), cond)
    assert float(jnp.abs(large).max()) < 1e-3 * float(jnp.abs(added[0]).max())
    out = path(x, c_small, cond)
    shifted = path(jnp.roll(x, 2, axis=-1), c_small, jnp.roll(cond, 2, axis=-1))
    np.testing.assert_allclose(np.asarray(shifted), np.roll(np.asarray(out), 2, axis=-1), atol=1e-4)
    with pytest.raises(ValueError, match=r"NoisyInputPath\.terms must be >= 2, got 1"):
        NoisyInputPath(base, channels=3, terms=1, key=jax.random.key(4))


def _emulator():
    channels = (Channel("temperature", 0.5), Channel("u_component_of_wind", 0.5))
    channels += (Channel("surface_pressure"),)
    grid = GridSpec(LAT, LON, channels, level_name="sigma")
    net = _unet()
    return AtmosphereEmulator(
        EDMPreconditionedDenoiser(net),
        mean=jnp.asarray([250.0, 5.0, 1e5]),
        std=jnp.asarray([10.0, 8.0, 700.0]),
        diff_std=jnp.asarray([1.0, 3.0, 200.0]),
        grid=grid,
        name="tiny",
    )


def test_emulator_maps_latent_to_physical_residual_and_checks_shapes():
    emulator = _emulator()
    state = jnp.ones((2, 3, 8, 8))
    z = jnp.ones((3, 8, 8))
    frame = emulator.latent_to_frame(z, state)
    np.testing.assert_allclose(np.asarray(frame[:, 0, 0]), [2.0, 4.0, 201.0])
    with pytest.raises(ValueError, match=r"tiny: a particle state must have shape \(2, 3, 8, 8\)"):
        emulator.condition(jnp.ones((3, 8, 8)))


def test_one_state_history_ignores_the_older_frame():
    two = _emulator()
    one = dataclasses.replace(two, history=1)
    state = jax.random.normal(jax.random.key(0), (2, 3, 8, 8))
    other = state.at[0].add(1.0)  # another x^{k-1}, the same x^k
    c = one.condition(state)
    np.testing.assert_array_equal(np.asarray(c), np.asarray(one.condition(other)))
    np.testing.assert_array_equal(np.asarray(c[0]), np.asarray(c[1]))
    np.testing.assert_array_equal(np.asarray(c[1]), np.asarray(two.condition(state)[1]))
    # The control: GenCast's two-state conditioning sees the older frame.
    assert not np.allclose(np.asarray(two.condition(state)), np.asarray(two.condition(other)))
    with pytest.raises(ValueError, match="tiny: history = 3, expected 1 or 2"):
        dataclasses.replace(two, history=3)


def test_weights_round_trip_and_tampering(tmp_path):
    emulator = _emulator()
    path = tmp_path / "tiny.npz"
    digest = save_emulator(path, emulator)
    card = {
        "name": "tiny",
        "sha256": digest,
        "weights": path.name,
        "data": {"time_step_hours": 12.0},
        "network": {"widths": [8, 16], "embed": 64, "sigma_data": [1.0]},
        "grid": {
            "latitudes": list(LAT),
            "longitudes": list(LON),
            "levels": [0.5],
            "level_variables": ["temperature", "u_component_of_wind"],
            "surface_variables": ["surface_pressure"],
        },
    }
    import filtrax.training.engine as engine

    path.with_suffix(".toml").write_text(engine.card_text(card))
    loaded = load_emulator(None, path)
    state = jax.random.normal(jax.random.key(0), (2, 3, 8, 8))
    a = emulator.denoiser(state[1], jnp.asarray(1.0), emulator.condition(state))
    b = loaded.denoiser(state[1], jnp.asarray(1.0), loaded.condition(state))
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
    # A card with one σ_data per channel builds the per-channel preconditioning; a card with
    # another count is refused.
    card["network"]["sigma_data"] = [0.5, 0.6, 0.7]
    path.with_suffix(".toml").write_text(engine.card_text(card))
    assert load_emulator(None, path).denoiser.sigma_data == (0.5, 0.6, 0.7)
    card["network"]["sigma_data"] = [0.5, 0.6]
    path.with_suffix(".toml").write_text(engine.card_text(card))
    with pytest.raises(
        ValueError, match=r"card's network.sigma_data has 2 values; expected 1 .* or 3"
    ):
        load_emulator(None, path)
    card["network"]["sigma_data"] = [1.0]
    card["network"]["history"] = 1
    path.with_suffix(".toml").write_text(engine.card_text(card))
    assert load_emulator(None, path).history == 1
    card["network"]["history"] = 0
    path.with_suffix(".toml").write_text(engine.card_text(card))
    with pytest.raises(ValueError, match=r"card's network.history = 0, expected 1 or 2"):
        load_emulator(None, path)
    data = bytearray(path.read_bytes())
    data[-100] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        load_emulator(None, path)


def test_setup_rejects_bad_levels_and_steps():
    with pytest.raises(ValueError, match="state_levels"):
        HeldSuarezSetup(state_levels=(1, 8))
    with pytest.raises(ValueError, match="save_hours"):
        HeldSuarezSetup(save_hours=12.25)
    from filtrax.io.heldsuarez_store import generate_heldsuarez

    with pytest.raises(ValueError, match="spin_up_days = 15"):
        generate_heldsuarez("unused.zarr", years=1, spin_up_days=15)
    with pytest.raises(ValueError, match="years = 0"):
        generate_heldsuarez("unused.zarr", years=0)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """Simulate 15 days, train the smoke config for 4 steps: a store and trained weights."""
    root = tmp_path_factory.mktemp("hs")
    store = root / "hs.zarr"
    runner = CliRunner()
    result = runner.invoke(
        main,
        [
            "heldsuarez-data",
            "--years",
            "0.04",
            "--spin-up-days",
            "10",
            "--seed",
            "3",
            "--out",
            str(store),
        ],
    )
    assert result.exit_code == 0, result.output
    config = Path(__file__).parents[1] / "configs" / "heldsuarez" / "train_smoke.toml"
    result = runner.invoke(
        main,
        [
            "train",
            str(config),
            "--set",
            f"data.train={store}",
            "--set",
            f"data.validation={store}",
            "--set",
            f"output={root / 'train'}",
        ],
    )
    assert result.exit_code == 0, result.output
    return store, root / "train" / "hs_smoke.npz"


def test_data_store_has_cf_attributes_and_era5_names(smoke_run):
    import xarray as xr

    store, _ = smoke_run
    ds = xr.open_zarr(store, consolidated=False)
    assert ds.sizes["time"] == round(0.04 * 365.25 * 2)
    for name, unit in (
        ("temperature", "K"),
        ("u_component_of_wind", "m s-1"),
        ("v_component_of_wind", "m s-1"),
        ("geopotential", "m2 s-2"),
        ("surface_pressure", "Pa"),
        ("near_surface_temperature", "K"),
    ):
        assert ds[name].attrs["units"] == unit
        assert np.isfinite(ds[name].values).all()
    assert "sigma" in ds["level"].attrs["long_name"]
    assert ds.attrs["seed"] == 3 and ds.attrs["spin_up_days"] == 10
    assert ds.attrs["truth_grid"] == "T21"
    hours = np.diff(ds["time"].values).astype("timedelta64[h]").astype(int)
    assert (hours == 12).all()


def test_a_killed_data_run_resumes_to_the_same_store_and_refuses_other_settings(
    smoke_run, tmp_path, monkeypatch
):
    """Killed after its first 5-day chunk, the run resumes from the saved model state and
    writes the states of the uninterrupted smoke run bit for bit; other settings are refused
    and leave the partial run as it was."""
    import xarray as xr

    from filtrax.dynamics import heldsuarez
    from filtrax.io.heldsuarez_store import generate_heldsuarez

    store, _ = smoke_run
    out = tmp_path / "killed.zarr"
    settings = dict(years=0.04, spin_up_days=10, seed=3, chunk_days=5, progress=False)
    trajectory = heldsuarez.HeldSuarezSimulator.trajectory
    calls = []

    def killed_on_the_second_chunk(self, state, num):
        calls.append(num)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return trajectory(self, state, num)

    monkeypatch.setattr(heldsuarez.HeldSuarezSimulator, "trajectory", killed_on_the_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        generate_heldsuarez(out, **settings)
    monkeypatch.setattr(heldsuarez.HeldSuarezSimulator, "trajectory", trajectory)
    assert not out.exists() and (tmp_path / "killed.zarr.partial").exists()
    with pytest.raises(ValueError, match="seed = 3 there, 4 asked"):
        generate_heldsuarez(out, **{**settings, "seed": 4})
    generate_heldsuarez(out, **settings)
    assert not (tmp_path / "killed.zarr.resume.npz").exists()
    expected, resumed = xr.open_zarr(store, consolidated=False), xr.open_zarr(out)
    assert resumed.sizes == expected.sizes
    np.testing.assert_array_equal(resumed["time"].values, expected["time"].values)
    for name in expected.data_vars:
        np.testing.assert_array_equal(resumed[name].values, expected[name].values)


def test_smoke_card_and_a_short_run(smoke_run, tmp_path):
    store, weights = smoke_run
    card = tomllib.loads(weights.with_suffix(".toml").read_text())
    assert card["family"] == "atmosphere" and card["training"]["steps"] == 4
    assert len(card["validation"]["rmse_temperature"]) == 2
    emulator = load_emulator(None, weights)
    assert emulator.grid.shape == (18, 16, 32)
    assert card["network"]["sigma_data"] == [0.5] and emulator.denoiser.sigma_data == 0.5
    segment = write_segment(store, 4, 8, tmp_path / "truth.nc")
    import xarray as xr

    times = xr.open_dataset(segment)["time"].values
    config = {
        "model": {"name": "heldsuarez", "weights": str(weights)},
        "truth": {"source": "file", "path": str(segment)},
        "observations": {
            "variables": ["temperature", "near_surface_temperature"],
            "stride": 4,
            "error_std": 0.1,
        },
        "filter": {"particles": 3},
        "sampler": {"levels": 3},
        "run": {"cycles": 2, "start_time": str(np.datetime_as_string(times[1], "s"))},
    }
    experiment = build_experiment(config_from_dict(config))
    assert experiment.truth.shape == (2, 18, 16, 32)
    assert experiment.initial_particles.shape == (3, 2, 18, 16, 32)
    # 4 temperature levels + the near-surface analog, on a 4 x 8 sub-grid.
    assert experiment.observations.shape == (2, 5 * 4 * 8)

    frames = stack_channels(xr.open_dataset(segment))
    np.testing.assert_array_equal(np.asarray(experiment.initial_state), frames[0:2])
    np.testing.assert_array_equal(experiment.truth, frames[2:4])

    bad_variable = {**config, "observations": {**config["observations"], "variables": ["rh"]}}
    with pytest.raises(ConfigError, match="available: temperature, u_component_of_wind"):
        build_experiment(config_from_dict(bad_variable))
    bad_level = {**config, "observations": {**config["observations"], "levels": [0.5]}}
    with pytest.raises(ConfigError, match=r"available sigmas: 0\.1875, 0\.4375, 0\.6875, 0\.9375"):
        build_experiment(config_from_dict(bad_level))
    late = {**config, "run": {**config["run"], "cycles": 20}}
    with pytest.raises(ConfigError, match="no state at the cycle times"):
        build_experiment(config_from_dict(late))
    alone = tmp_path / "alone.npz"  # weights without the card 'filtrax train' writes next to them
    shutil.copy(weights, alone)
    no_card = {**config, "model": {**config["model"], "weights": str(alone)}}
    with pytest.raises(ConfigError, match=r"model.weights = .*alone.npz': .* has no card"):
        build_experiment(config_from_dict(no_card))
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_convolution_vjp_matches_autodiff_of_the_plain_convolution():
    from filtrax.emulators.sphere_unet import _conv_valid, _valid_conv

    x = jax.random.normal(jax.random.key(0), (10, 12, 5))
    w = jax.random.normal(jax.random.key(1), (3, 3, 5, 7))

    def loss(conv):
        return lambda x, w: jnp.sum(jnp.sin(conv(x, w)))

    expected = jax.grad(loss(_valid_conv), (0, 1))(x, w)
    actual = jax.grad(loss(_conv_valid), (0, 1))(x, w)
    for e, a in zip(expected, actual, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=1e-5, atol=1e-4)


def test_training_checks_the_sigma_data_count_against_the_channels():
    from filtrax.emulators.atmosphere import sigma_data_of

    grid = _emulator().grid
    assert sigma_data_of([0.5], grid) == 0.5
    assert sigma_data_of([0.5, 0.6, 0.7], grid) == (0.5, 0.6, 0.7)
    with pytest.raises(ValueError, match=r"sigma_data has 2 values; expected 1 .* or 3, one per"):
        sigma_data_of([0.5, 0.6], grid)


def test_focused_noise_levels_draw_a_fraction_of_the_batch_below_the_focus_level():
    from filtrax.training.config import load_training_config
    from filtrax.training.engine import config_digest, noise_levels, sample_noise_levels

    u = jax.random.uniform(jax.random.key(0), (1000,))
    opt = {"sigma_min": 0.02, "sigma_max": 88.0, "rho": 7.0}
    plain = np.asarray(sample_noise_levels(u, opt))
    np.testing.assert_array_equal(plain, np.asarray(noise_levels(u, 0.02, 88.0, 7.0)))
    focused = np.asarray(
        sample_noise_levels(u, {**opt, "focus_fraction": 0.25, "focus_sigma_max": 1.0})
    )
    # The first quarter is the same law on [0.02, 1]; the rest is untouched.
    np.testing.assert_allclose(focused[:250], np.asarray(noise_levels(u[:250], 0.02, 1.0, 7.0)))
    np.testing.assert_array_equal(focused[250:], plain[250:])
    assert focused[:250].max() <= 1.0 and (plain[:250] > 1.0).mean() > 0.5

    path = Path(__file__).parents[1] / "configs/heldsuarez/continue_hs.toml"
    base = load_training_config(path)
    # Off (the default), the new keys leave earlier runs' checkpoint digests as they were.
    assert config_digest(base) == config_digest(
        load_training_config(path, ["training.focus_sigma_max=2.0"])
    )
    assert config_digest(base) != config_digest(
        load_training_config(path, ["training.focus_fraction=0.5"])
    )
    # Likewise a noisy-input path of 0 terms (none).
    assert config_digest(base) == config_digest(
        load_training_config(path, ["network.noisy_path=0"])
    )
    assert config_digest(base) != config_digest(
        load_training_config(path, ["network.noisy_path=2"])
    )
    message = (
        "training.focus_sigma_max = 100.0 must lie in (training.sigma_min, training.sigma_max]"
        " = (0.02, 88.0] when training.focus_fraction > 0"
    )
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_training_config(
            path, ["training.focus_fraction=0.5", "training.focus_sigma_max=100.0"]
        )
    with pytest.raises(ConfigError, match=r"focus_fraction = 0.01 selects no entry of a batch "):
        load_training_config(path, ["training.focus_fraction=0.01"])


def test_smoke_training_bundles_a_truth_segment(smoke_run):
    _, weights = smoke_run
    card = tomllib.loads(weights.with_suffix(".toml").read_text())
    segment = weights.parent / card["truth_segment"]
    import xarray as xr

    assert xr.open_dataset(segment).sizes["time"] == 6


def test_bundled_emulator_and_poster_config():
    from filtrax.emulators.atmosphere import bundled_emulator
    from filtrax.experiments.config import load_config

    emulator = bundled_emulator("hs_t21_16x32")
    assert emulator.grid.shape == (18, 16, 32)
    # σ_data per channel: the conditional spread of the residual, not GenCast's 1.
    sigma_data = emulator.denoiser.sigma_data
    assert len(sigma_data) == 18 and all(0.2 < v < 0.7 for v in sigma_data)
    assert emulator.time_step_hours == 12.0
    root = Path(__file__).parents[1]
    config = load_config(root / "configs/heldsuarez/poster16.toml", ["filter.particles=2"])
    experiment = build_experiment(config)
    # 30 cycles of truth after (x^-1, x^0), from the held-out segment shipped with the card.
    assert experiment.truth.shape == (30, 18, 16, 32)
    assert np.isfinite(experiment.observations).all()
    # Every particle starts as the true state.
    np.testing.assert_array_equal(
        np.asarray(experiment.initial_particles[1]), np.asarray(experiment.initial_state)
    )
    # The default is the card with the least-squares noisy-input path.
    assert experiment.emulator.name == "hs_t21_16x32_path"
    assert isinstance(experiment.emulator.denoiser.network, NoisyInputPath)
    # The other cards run on the same bundled truth, so all are compared on one truth.
    for name in ("hs_t21_16x32", "hs_t21_16x32_focus"):
        other_config = load_config(
            root / "configs/heldsuarez/poster16.toml",
            ["filter.particles=2", f"model.emulator={name}"],
        )
        other = build_experiment(other_config)
        assert other.emulator.name == name
        np.testing.assert_array_equal(np.asarray(other.truth), np.asarray(experiment.truth))
        assert not isinstance(other.emulator.denoiser.network, NoisyInputPath)
    wrong_step = load_config(root / "configs/heldsuarez/poster16.toml", ["run.cycle_hours=6"])
    with pytest.raises(ConfigError, match=r"run.cycle_hours = 6.0 but emulator"):
        build_experiment(wrong_step)


def test_fine_tuning_starts_from_the_given_weights_and_checks_them(smoke_run, tmp_path):
    from filtrax.emulators.cards import module_arrays

    store, weights = smoke_run
    config = Path(__file__).parents[1] / "configs" / "heldsuarez" / "train_smoke.toml"
    common = ["--set", f"data.train={store}", "--set", f"data.validation={store}"]
    runner = CliRunner()

    def train(output, *overrides):
        args = ["train", str(config), *common, "--set", f"output={output}"]
        for override in overrides:
            args += ["--set", override]
        return runner.invoke(main, args)

    # A learning rate of ~0 keeps the (EMA) weights where they started: the start's.
    result = train(
        tmp_path / "tuned",
        f"training.initialise_from={weights}",
        "training.condition_noise=0.5",
        "training.learning_rate=1e-30",
        "network.history=1",  # two-state weights fine-tuned to condition on one
    )
    assert result.exit_code == 0, result.output
    card = tomllib.loads((tmp_path / "tuned" / "hs_smoke.toml").read_text())
    assert card["training"]["condition_noise"] == 0.5
    assert card["network"]["history"] == 1
    assert load_emulator(None, tmp_path / "tuned" / "hs_smoke.npz").history == 1
    assert card["training"]["initialise_from"] == str(weights)
    start = module_arrays(load_emulator(None, weights).denoiser.network)
    tuned = module_arrays(load_emulator(None, tmp_path / "tuned" / "hs_smoke.npz").denoiser.network)
    assert start.keys() == tuned.keys()
    for name in start:
        np.testing.assert_allclose(tuned[name], start[name], rtol=1e-6, atol=1e-7)
    # Weights without a noisy-input path can be given one: it starts with zero gains, so the
    # network is the start's exactly; the reverse, or another number of terms, is refused.
    grafted = train(
        tmp_path / "path",
        f"training.initialise_from={weights}",
        "training.learning_rate=1e-30",
        "network.noisy_path=2",
    )
    assert grafted.exit_code == 0, grafted.output
    with_path = load_emulator(None, tmp_path / "path" / "hs_smoke.npz")
    assert isinstance(with_path.denoiser.network, NoisyInputPath)
    assert with_path.denoiser.network.terms == 2
    grafted_arrays = module_arrays(with_path.denoiser.network.base)
    for name in start:
        np.testing.assert_allclose(grafted_arrays[name], start[name], rtol=1e-6, atol=1e-7)
    for terms in (0, 3):
        refused = train(
            tmp_path / f"path{terms}",
            f"training.initialise_from={tmp_path / 'path' / 'hs_smoke.npz'}",
            f"network.noisy_path={terms}",
        )
        assert refused.exit_code == 2
        assert f"has network.noisy_path = 2; the config asks for {terms}" in refused.output
    # No optimiser steps: the path is grafted and its stencils fit by least squares
    # (filtrax.training.noisy_path), the base network left as it was.
    fitted = train(
        tmp_path / "fit",
        f"training.initialise_from={weights}",
        "training.steps=0",
        "network.noisy_path=2",
        "training.path_fit_samples=4",
    )
    assert fitted.exit_code == 0, fitted.output
    fit_card = tomllib.loads((tmp_path / "fit" / "hs_smoke.toml").read_text())
    assert fit_card["training"]["steps_completed"] == 0
    assert fit_card["training"]["path_fit_samples"] == 4
    fit_network = load_emulator(None, tmp_path / "fit" / "hs_smoke.npz").denoiser.network
    assert float(jnp.abs(fit_network.stencils.weight).max()) > 0
    fit_arrays = module_arrays(fit_network.base)
    for name in start:
        np.testing.assert_array_equal(fit_arrays[name], start[name])
    for overrides, message in [
        (["training.path_fit_samples=4"], "training.path_fit_samples = 4 needs a noisy-input"),
        (["training.steps=0"], "training.steps = 0 needs training.initialise_from"),
        (["network.noisy_path=1"], "network.noisy_path = 1; expected 0 (none) or >= 2"),
    ]:
        refused = train(tmp_path / "refused", *overrides)
        assert refused.exit_code == 2 and message in refused.output, refused.output
    # The control: the random start a run without training.initialise_from begins from (and,
    # at this learning rate, ends at) is not the given weights, so the checks above can fail.
    from filtrax.training.atmosphere import grid_of, open_store, random_network
    from filtrax.training.config import load_training_config

    smoke = load_training_config(config, [f"data.train={store}"])
    fresh = module_arrays(random_network(smoke, grid_of(open_store(store))))
    assert fresh.keys() == start.keys()
    assert not all(np.allclose(fresh[n], start[n]) for n in start)

    other = train(
        tmp_path / "other", f"training.initialise_from={weights}", "network.widths=[8, 8]"
    )
    assert other.exit_code == 2 and "network.widths = [8, 16]" in other.output
    missing = train(tmp_path / "missing", "training.initialise_from=nowhere.npz")
    assert missing.exit_code == 2 and "initialise_from = 'nowhere.npz'" in missing.output
    negative = train(tmp_path / "negative", "training.condition_noise=-1")
    assert negative.exit_code == 2 and "training.condition_noise" in negative.output
    history = train(tmp_path / "history", "network.history=3")
    assert history.exit_code == 2 and "network.history" in history.output


def test_fine_tuning_keeps_the_weights_statistics_and_refuses_another_climate(smoke_run):
    from filtrax.training.atmosphere import (
        STATISTICS_TOLERANCE,
        channel_statistics,
        grid_of,
        initial_network,
        open_store,
    )
    from filtrax.training.config import load_training_config

    store, weights = smoke_run
    config = load_training_config(
        Path(__file__).parents[1] / "configs" / "heldsuarez" / "train_smoke.toml",
        [f"data.train={store}", f"training.initialise_from={weights}"],
    )
    grid = grid_of(open_store(store))
    start = load_emulator(None, weights)
    # Another run of the same generator is another sample of the same climate: statistics
    # a little off are accepted, and the weights' own are kept (they normalise its inputs).
    stats = channel_statistics(stack_channels(open_store(store).load()))
    nearby = {**stats, "std": stats["std"] * 1.03, "mean": stats["mean"] + 0.02 * stats["std"]}
    _, kept = initial_network(str(weights), config, grid, nearby, jax.random.key(0))
    for name in ("mean", "std", "diff_std"):
        np.testing.assert_array_equal(kept[name], np.asarray(getattr(start, name)))
    # Another climate is refused, naming the statistic, the channel and both values.
    far = {**stats, "diff_std": stats["diff_std"].copy()}
    far["diff_std"][2] *= math.exp(2 * STATISTICS_TOLERANCE)
    label = re.escape(grid.channels[2].label())
    with pytest.raises(ValueError, match=rf"diff_std of {label} is .* there and .* in the weights"):
        initial_network(str(weights), config, grid, far, jax.random.key(0))
    # A latitude moved by a rounding error is the same grid; by a degree it is not.
    lats = list(grid.latitudes)
    lats[3] += 1e-12
    assert grid.difference(dataclasses.replace(grid, latitudes=tuple(lats))) is None
    lats[3] += 1.0
    moved = dataclasses.replace(grid, latitudes=tuple(lats))
    assert grid.difference(moved) == "latitudes differ by up to 1 degrees"
    with pytest.raises(ValueError, match=r"its grid differs from .*: latitudes differ by up to 1"):
        initial_network(str(weights), config, moved, stats, jax.random.key(0))
    fewer = dataclasses.replace(grid, channels=grid.channels[:-1])
    assert grid.difference(fewer).startswith("channels temperature@")


@pytest.mark.parametrize("name", ["hs_t21_16x32", "hs_t21_16x32_focus", "hs_t21_16x32_path"])
def test_shipped_card_meets_the_calibration_target_it_reports(name):
    """The card's own held-out validation: spread/skill in [0.6, 1.4] at 1-10 days, and the
    ensemble mean beats persistence at 12 h and 24 h, for every variable (issue 5)."""
    from filtrax.emulators.cards import load_card

    card = load_card(name)
    scores = card["validation"]
    leads = scores["leads_hours"]
    variables = card["grid"]["level_variables"] + card["grid"]["surface_variables"]
    for variable in variables:
        ratios = [r for h, r in zip(leads, scores[f"ratio_{variable}"], strict=True) if h >= 24]
        assert all(0.6 <= r <= 1.4 for r in ratios), (variable, ratios)
        rmse, persistence = scores[f"rmse_{variable}"], scores[f"rmse_persistence_{variable}"]
        assert rmse[0] < persistence[0] and rmse[1] < persistence[1], variable
    # All are fine-tuned with noisy conditioning frames (configs/heldsuarez/finetune_hs.toml);
    # a card with no optimiser steps (a least-squares path fit) through the card it starts from.
    if card["training"]["steps"] == 0:
        card = load_card(Path(card["training"]["initialise_from"]).stem)
    assert card["training"]["condition_noise"] == 0.5
