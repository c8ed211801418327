"""The learned Lorenz-96 emulator: network symmetry, weights I/O, cards, training and configs."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from click.testing import CliRunner

import filtrax as fx
from filtrax.cli import main
from filtrax.emulators.cards import list_cards, load_card
from filtrax.emulators.lorenz96 import (
    CircularStencilNetwork,
    bundled_emulator,
    load_emulator,
    network_arrays,
    network_from_arrays,
)
from filtrax.experiments.config import ConfigError, load_config
from filtrax.experiments.factory import build_experiment, initial_particles
from filtrax.training.lorenz96 import fit_ar1, forecast_ensembles, gaussian_crps, statistics

ROOT = Path(__file__).resolve().parents[1]
LEARNED = [c["name"] for c in list_cards() if c.get("family") == "lorenz96"]
ARCH = {"num_sites": 8, "hidden": 16, "depth": 1, "radius": 2, "mix_radius": 1, "bottleneck": 4}


def _network(key=0):
    net = CircularStencilNetwork(
        hidden=16, depth=1, radius=2, mix_radius=1, bottleneck=4, key=jax.random.key(key)
    )
    # The head starts at zero; give it weights so that the test sees the whole network.
    return jax.tree_util.tree_map(lambda a: a + 0.1 if a.shape == net.head.weight.shape else a, net)


def test_network_is_equivariant_under_cyclic_shifts():
    net = _network()
    keys = jax.random.split(jax.random.key(1), 2)
    x = jax.random.normal(keys[0], (8,))
    cond = jax.random.normal(keys[1], (2, 8))
    out = net(x, jnp.asarray(0.3), cond)
    for shift in (1, 3):
        shifted = net(jnp.roll(x, shift), jnp.asarray(0.3), jnp.roll(cond, shift, axis=1))
        np.testing.assert_allclose(shifted, jnp.roll(out, shift), rtol=1e-5, atol=1e-6)
    # ... and it depends on the noise level and on neighbours within its receptive field.
    assert not np.allclose(net(x, jnp.asarray(-1.0), cond), out)
    bumped = net(x.at[3].add(1.0), jnp.asarray(0.3), cond)
    changed = np.flatnonzero(np.abs(np.asarray(bumped - out)) > 1e-7)
    assert set(changed) <= {0, 1, 2, 3, 4, 5, 6}  # radius 2 + mix radius 1 = 3 sites each way


def test_weights_round_trip_and_mismatches_are_named():
    net = _network()
    arrays = network_arrays(net)
    rebuilt = network_from_arrays(ARCH, arrays, "test.npz")
    x, cond = jnp.ones(8), jnp.zeros((2, 8))
    np.testing.assert_array_equal(
        rebuilt(x, jnp.asarray(0.0), cond), net(x, jnp.asarray(0.0), cond)
    )
    with pytest.raises(ValueError, match=r"test\.npz.*shape"):
        network_from_arrays({**ARCH, "hidden": 32}, arrays, "test.npz")
    missing = {k: v for k, v in arrays.items() if "head" not in k}
    with pytest.raises(ValueError, match=r"lack the array 'network\.head"):
        network_from_arrays(ARCH, missing, "test.npz")


def test_bundled_learned_emulators_exist_and_load():
    assert {"l96_wilks05_dt0.05", "l96_lorenz96_dt0.05"} <= set(LEARNED)
    for name in LEARNED:
        card = load_card(name)
        emulator = bundled_emulator(name)
        assert emulator.time_step == card["data"]["time_step"]
        assert emulator.num_sites == card["network"]["num_sites"]
        for key in ("seed", "setting", "train_trajectories"):
            assert key in card["data"]
        for key in ("steps", "final_loss", "seconds"):
            assert key in card["training"]
        validation = card["validation"]
        for key in ("one_step_crps", "one_step_crps_ar1", "spread_skill_ratio", "rmse"):
            assert key in validation


def test_tampered_weights_are_refused(tmp_path):
    card = load_card(LEARNED[0])
    source = ROOT / "src/filtrax/emulators/cards" / card["weights"]
    copy = tmp_path / "w.npz"
    payload = bytearray(source.read_bytes())
    payload[-10] ^= 0xFF
    copy.write_bytes(bytes(payload))
    (tmp_path / "w.toml").write_text((source.with_suffix(".toml")).read_text())
    with pytest.raises(ValueError, match="sha256"):
        load_emulator(None, copy)


@pytest.fixture(scope="module")
def held_out():
    """Fresh wilks05 trajectories (another key than training and validation)."""
    model = fx.TwoScaleLorenz96.wilks05()
    from filtrax.io.lorenz96_files import generate_dataset

    ds = generate_dataset(
        model,
        jax.random.key(12345),
        sample_every=0.05,
        spin_up_time=10.0,
        num_samples=300,
        num_trajectories=4,
    )
    return ds["X"].values


def test_shipped_wilks05_emulator_beats_ar1_and_is_calibrated(held_out):
    """Recomputed here on fresh data: one-step CRPS below the AR(1)'s, spread/skill near 1."""
    emulator = bundled_emulator("l96_wilks05_dt0.05")
    card = load_card("l96_wilks05_dt0.05")
    from filtrax.experiments.config import SamplerConfig
    from filtrax.experiments.factory import sampler_from_config

    sampler = sampler_from_config(SamplerConfig(**card["sampler"]))
    rng = np.random.default_rng(0)
    which, start = rng.integers(0, 4, 24), rng.integers(1, 290, 24)
    initial = np.stack([held_out[which, start - 1], held_out[which, start]], axis=1)
    frames = forecast_ensembles(emulator, sampler, initial, 16, 5, jax.random.key(3))
    ensemble = frames[0].transpose(1, 0, 2)
    truth = held_out[which, start + 1]
    emulator_crps = fx.metrics.crps(ensemble, truth)
    stats = statistics(held_out)
    coefficients, residual_std = fit_ar1(held_out, stats["mean"])
    ar_mean = stats["mean"] + (held_out[which, start] - stats["mean"]) @ coefficients.T
    ar_crps = float(gaussian_crps(ar_mean, residual_std, truth).mean())
    assert emulator_crps < ar_crps, (emulator_crps, ar_crps)
    for lead in (1, 5):
        ens = frames[lead - 1].transpose(1, 0, 2)
        truth = held_out[which, start + lead]
        rmse = np.sqrt(np.mean((ens.mean(0) - truth) ** 2))
        ratio = math.sqrt(17 / 16) * np.sqrt(np.mean(ens.var(0, ddof=1))) / rmse
        assert 0.6 < ratio < 1.5, (lead, ratio)


def test_gaussian_crps_matches_monte_carlo():
    rng = np.random.default_rng(0)
    sample = rng.normal(1.0, 2.0, size=(200_000, 1))
    mc = fx.metrics.crps(sample, np.array([0.3]))
    assert float(gaussian_crps(1.0, 2.0, np.array([0.3]))[0]) == pytest.approx(mc, rel=1e-2)


def test_train_smoke_writes_a_loadable_card_and_resumes(tmp_path):
    out = tmp_path / "train"
    args = [
        "train",
        str(ROOT / "configs/lorenz96/train_wilks05_dt0.05.toml"),
        "--set", f"output={out}",
        "--set", "name=smoke",
        "--set", "training.steps=6",
        "--set", "training.chunk=3",
        "--set", "training.checkpoint_every=3",
        "--set", "training.batch_size=8",
        "--set", "data.train_trajectories=2",
        "--set", "data.train_samples=30",
        "--set", "data.validation_trajectories=1",
        "--set", "data.validation_samples=30",
        "--set", "data.spin_up=1.0",
        "--set", "network.hidden=8",
        "--set", "validation.initial_states=2",
        "--set", "validation.members=2",
        "--set", "validation.leads=[1, 2]",
        "--set", "sampler.levels=3",
    ]  # fmt: skip
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    card = tomllib.loads((out / "smoke.toml").read_text())
    assert card["training"]["steps"] == 6 and card["data"]["time_step"] == 0.05
    emulator = load_emulator(None, out / "smoke.npz")
    assert emulator.time_step == 0.05 and emulator.setting == "wilks05"
    # A changed schedule cannot resume the old checkpoint.
    result = CliRunner().invoke(main, [*args, "--set", "training.steps=9"])
    assert result.exit_code != 0 and "another training config" in str(result.exception)


def test_killed_training_resumes_to_the_same_weights(tmp_path, monkeypatch):
    from filtrax.training import lorenz96 as training
    from filtrax.training.config import load_training_config

    def config(out, *extra):
        return load_training_config(
            ROOT / "configs/lorenz96/train_wilks05_dt0.05.toml",
            [*extra, f"output={out}", "name=smoke", "training.steps=6", "training.chunk=3",
             "training.checkpoint_every=3", "training.batch_size=8",
             "data.train_trajectories=2", "data.train_samples=30",
             "data.validation_trajectories=1", "data.validation_samples=30", "data.spin_up=1.0",
             "network.hidden=8", "validation.initial_states=2", "validation.members=2",
             "validation.leads=[1, 2]", "sampler.levels=3"],
        )  # fmt: skip

    from filtrax.training import engine

    straight = training.train_lorenz96(config(tmp_path / "a"))
    original = engine.save_checkpoint

    def killed(*args, **kwargs):
        original(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "save_checkpoint", killed)
    with pytest.raises(KeyboardInterrupt):
        training.train_lorenz96(config(tmp_path / "b"))
    monkeypatch.setattr(engine, "save_checkpoint", original)
    resumed = training.train_lorenz96(config(tmp_path / "b"))
    # A run stopped early (training.stop_after) cards the weights it reached, and a later run
    # without the stop continues the same schedule to the same weights.
    early = training.train_lorenz96(config(tmp_path / "c", "training.stop_after=3"))
    early_sha = tomllib.loads(early.read_text())["sha256"]
    continued = training.train_lorenz96(config(tmp_path / "c"))
    sha = [tomllib.loads(p.read_text())["sha256"] for p in (straight, resumed, continued)]
    assert sha[0] == sha[1] == sha[2] != early_sha


def _config(*overrides):
    return load_config(
        ROOT / "configs/lorenz96/wilks05.toml", ["run.cycles=4", "run.burn_in=0", *overrides]
    )


def test_config_with_another_time_step_is_refused():
    with pytest.raises(ConfigError, match=r"model.time_step = 0.2 .*trained at time_step 0.05"):
        build_experiment(_config("model.time_step=0.2"))
    with pytest.raises(ConfigError, match=r"model\.emulator = 'nope'.*bundled"):
        build_experiment(_config("model.emulator=nope"))


def test_initial_particles_do_not_depend_on_the_ensemble_size():
    config = _config("model.initial_spread=1.0")
    x0 = jnp.zeros((2, 8))
    small, large = initial_particles(config, x0, 4), initial_particles(config, x0, 9)
    np.testing.assert_array_equal(small, large[:4])
    assert float(jnp.std(large)) > 0.5


def test_site_observation_files(tmp_path):
    path = tmp_path / "obs.csv"
    path.write_text("time,site,value\n0.05,0,1.5\n0.05,3,2.0\n0.10,3,2.5\n")
    config = _config("observations.source=sites", f"observations.path={path}")
    experiment = build_experiment(config)
    assert experiment.observation_labels == ("X[0]", "X[3]")
    np.testing.assert_array_equal(experiment.observations[1], [np.nan, 2.5])
    np.testing.assert_array_equal(experiment.observations[2:], np.nan)

    path.write_text("time,site,value\n0.05,0,1.5\n0.05,8,2.0\n")
    with pytest.raises(ValueError, match=r"obs.csv': line 3: column 'site' of variable X: index 8"):
        build_experiment(config)
    path.write_text("time,site,value\n0.05,0,1.5\n0.07,1,2.0\n")
    with pytest.raises(ValueError, match=r"obs.csv': line 3: column 'time' of variable X: 0.07"):
        build_experiment(config)
    path.write_text("time,site,value\n0.05,0,1.5\n0.05,0,2.0\n")
    with pytest.raises(ValueError, match="line 3: duplicate observation of X"):
        build_experiment(config)


def test_twin_run_with_enkf_records_phase_times(tmp_path):
    out = tmp_path / "run"
    args = [
        "run", str(ROOT / "configs/lorenz96/wilks05.toml"), "--out", str(out), "--quiet",
        "--set", "run.cycles=5", "--set", "run.burn_in=1", "--set", "filter.particles=8",
        "--set", "filter.method=enkf", "--set", "filter.inflation=1.05",
        "--set", "sampler.levels=4", "--set", "run.profile=true",
    ]  # fmt: skip
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    import xarray as xr

    metrics = xr.open_dataset(out / "metrics.nc")
    assert set(metrics["ensemble"].values) == {"analysis", "baseline"}
    assert float(metrics["seconds_emulator"].sel(ensemble="analysis")) > 0
    assert float(metrics["seconds_cycle"].sel(ensemble="analysis")) > 0
    analysis = metrics["rmse"].sel(ensemble="analysis").values[1:].mean()
    free = metrics["rmse"].sel(ensemble="baseline").values[1:].mean()
    assert analysis < free


def test_state_of_the_wrong_shape_is_refused():
    emulator = bundled_emulator("l96_wilks05_dt0.05")
    with pytest.raises(ValueError, match=r"shape \(2, 8\).*got \(2, 36\)"):
        emulator.condition(jnp.zeros((2, 36)))


def test_data_command_writes_attributes_and_refuses_off_grid_steps(tmp_path):
    import xarray as xr

    out = tmp_path / "x.nc"
    args = ["data", "--setting", "wilks05", "--time-step", "0.2", "--samples", "5", "--out"]
    result = CliRunner().invoke(main, [*args, str(out), "--spin-up", "1.0"])
    assert result.exit_code == 0, result.output
    ds = xr.open_dataset(out)
    assert ds["X"].shape == (1, 5, 8)
    assert ds.attrs["sample_every"] == 0.2 and ds.attrs["spin_up_time"] == 1.0
    assert ds.attrs["forcing"] == 20.0 and ds.attrs["dt_integration"] == 0.005
    bad = CliRunner().invoke(main, ["data", "--time-step", "0.0733", "--out", str(out)])
    assert bad.exit_code == 2 and "sample_every" in bad.output


@pytest.mark.parametrize(("steps", "warmup"), [(1, 0), (1, 1), (6, 500), (10, 2)])
def test_the_learning_rate_schedule_accepts_any_step_and_warmup_count(steps, warmup):
    from filtrax.training.config import OptimisationConfig
    from filtrax.training.engine import make_optimizer

    params = {"w": jnp.ones(3)}
    optimiser = make_optimizer(OptimisationConfig(steps=steps, warmup=warmup, learning_rate=0.1))
    state = optimiser.init(params)
    with jax.numpy_dtype_promotion("standard"):  # as the training loop runs optax
        update, state = optimiser.update({"w": jnp.ones(3)}, state, params)
    assert np.all(np.isfinite(np.asarray(update["w"])))
