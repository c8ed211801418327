"""The two-scale Lorenz-96 integrator against DAPPER's ``LorenzUV``, and its data sets."""

from __future__ import annotations

import importlib
import os

# DAPPER's liveplotting picks a matplotlib backend on import; keep it headless.
os.environ.setdefault("MPLBACKEND", "Agg")

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

from filtrax.dynamics.lorenz96 import DEFAULT_DT, TwoScaleLorenz96
from filtrax.io.lorenz96_files import generate_dataset, write_dataset

SETTINGS = ["wilks05", "lorenz96"]


def _dapper_setting(name: str):
    """DAPPER's settings module ``dapper.mods.LorenzUV.<name>`` (skips without DAPPER)."""
    pytest.importorskip("dapper")
    return importlib.import_module(f"dapper.mods.LorenzUV.{name}")


def _random_state(model: TwoScaleLorenz96, seed: int, batch: tuple[int, ...] = ()) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scale = np.r_[np.full(model.num_slow, 5.0), np.full(model.num_fast, 0.5)]
    return rng.normal(size=(*batch, model.state_dim)) * scale


@pytest.mark.parametrize("name", SETTINGS)
def test_parameters_match_dapper(name):
    setting = _dapper_setting(name)
    model = getattr(TwoScaleLorenz96, name)()
    luv = setting.LUV
    assert (model.num_slow, model.num_fast_per_slow) == (luv.nU, luv.J)
    assert (model.forcing, model.coupling) == (luv.F, luv.h)
    assert (model.time_scale_ratio, model.amplitude_ratio) == (luv.c, luv.b)
    assert model.state_dim == luv.M == setting.HMM_full.Dyn.M
    assert setting.HMM_full.tseq.dt == DEFAULT_DT


@pytest.mark.x64
@pytest.mark.parametrize("name", SETTINGS)
def test_tendency_matches_dapper(name):
    luv = _dapper_setting(name).LUV
    model = getattr(TwoScaleLorenz96, name)()
    states = _random_state(model, seed=0, batch=(2, 3))
    ours = np.asarray(model.tendency(jnp.asarray(states)))  # batched call
    assert ours.dtype == np.float64
    for index in np.ndindex(states.shape[:-1]):
        reference = luv.dxdt(states[index])
        np.testing.assert_allclose(
            ours[index], reference, rtol=1e-10, atol=1e-10 * np.abs(reference).max()
        )
    # slow/fast split follows DAPPER's unpack: U = x[:nU], V = x[nU:] in (nU, J) rows.
    state = states[0, 0]
    np.testing.assert_array_equal(model.slow(jnp.asarray(state)), state[: luv.nU])
    fast = np.asarray(model.fast(jnp.asarray(state)))
    np.testing.assert_array_equal(fast.ravel(), state[luv.nU :])
    np.testing.assert_array_equal(np.repeat(np.arange(luv.nU), luv.J), luv.iiU)


@pytest.mark.x64
@pytest.mark.parametrize(
    ("name", "num_steps", "tolerance"), [("wilks05", 150, 1e-5), ("lorenz96", 300, 1e-5)]
)
def test_rk4_trajectory_matches_dapper(name, num_steps, tolerance):
    setting = _dapper_setting(name)
    dapper_step = setting.HMM_full.Dyn.model  # with_rk4(LUV.dxdt, autonom=True)
    model = getattr(TwoScaleLorenz96, name)()
    dt = setting.HMM_full.tseq.dt
    rng = np.random.default_rng(1)
    x = setting.LUV.x0 + 0.1 * rng.normal(size=model.state_dim)
    for _ in range(200):  # onto the attractor, with DAPPER's own stepper
        x = dapper_step(x, np.nan, dt)
    reference = [x]
    for _ in range(num_steps):
        reference.append(dapper_step(reference[-1], np.nan, dt))
    reference = np.array(reference[1:])

    one_step = np.asarray(model.step(jnp.asarray(x), dt))
    np.testing.assert_allclose(one_step, reference[0], rtol=0, atol=1e-13 * np.abs(x).max())
    ours = np.asarray(model.integrate(jnp.asarray(x), dt, num_steps))
    assert ours.shape == reference.shape
    # Chaos amplifies the round-off (~1e-16 per step) of any reordering of the arithmetic:
    # over 4 starts the error stayed below 1.4e-7 of max |x| (wilks05, 150 steps = 0.75 time
    # units) and 1.3e-7 (lorenz96, 300 steps), but reaches 1e-6..1e-2 by 200 / 400 steps.
    error = np.abs(ours - reference).max() / np.abs(reference).max()
    assert error < tolerance


def test_integrate_saves_every_block_end():
    model = TwoScaleLorenz96.wilks05()
    x0 = jnp.asarray(_random_state(model, seed=2, batch=(2,)), jnp.float32)
    thinned = model.integrate(x0, DEFAULT_DT, 6, save_every=3)
    assert thinned.shape == (2, 2, model.state_dim) and thinned.dtype == jnp.float32
    stepped = [x0]
    for _ in range(6):
        stepped.append(model.step(stepped[-1], DEFAULT_DT))
    np.testing.assert_allclose(thinned, jnp.stack(stepped[3::3]), rtol=1e-5, atol=1e-4)


# One shape (4 trajectories x 50 samples) per setting: every wilks05 data set below shares
# a single compilation, whatever its sampling step or spin-up.
DATASET_SIZE = {"num_samples": 50, "num_trajectories": 4}


def test_dataset_layout_attributes_and_files(tmp_path):
    model = TwoScaleLorenz96.wilks05()
    key = jax.random.key(3)
    by_step = {
        sample_every: generate_dataset(
            model,
            key,
            dt_integration=DEFAULT_DT,
            sample_every=sample_every,
            spin_up_time=0.5,
            **DATASET_SIZE,
        )
        for sample_every in (0.05, 0.2)
    }
    for sample_every, ds in by_step.items():
        assert ds.X.dims == ("trajectory", "time", "site")
        assert ds.X.shape == (4, 50, 8) and ds.X.dtype == np.float32
        assert np.isfinite(ds.X.values).all()
        np.testing.assert_allclose(ds.time.values, 0.5 + sample_every * np.arange(50))
        attrs = ds.attrs
        assert attrs["sample_every"] == sample_every and attrs["dt_integration"] == DEFAULT_DT
        assert attrs["steps_per_sample"] == round(sample_every / DEFAULT_DT)
        assert (attrs["spin_up_time"], attrs["spin_up_steps"]) == (0.5, 100)
        assert attrs["num_samples"] == 50 and attrs["length"] == pytest.approx(49 * sample_every)
        assert attrs["num_trajectories"] == 4
        assert {k: attrs[k] for k in model.parameters} == model.parameters
        rebuilt = jax.random.wrap_key_data(
            np.array(attrs["key_data"].split(), np.uint32), impl=attrs["key_impl"]
        )
        assert (jax.random.key_data(rebuilt) == jax.random.key_data(key)).all()
    # Δt = 0.2 samples are every fourth Δt = 0.05 sample of the same trajectories.
    fine, coarse = by_step[0.05], by_step[0.2]
    np.testing.assert_allclose(coarse.time[:13], fine.time[::4])
    np.testing.assert_allclose(coarse.X[:, :13], fine.X[:, ::4], rtol=1e-5, atol=1e-4)
    assert len(np.unique(fine.X.values[:, 0, 0])) == 4  # distinct trajectories

    ds = by_step[0.2]
    again = generate_dataset(model, key, sample_every=0.2, spin_up_time=0.5, **DATASET_SIZE)
    xr.testing.assert_identical(ds, again)
    other = generate_dataset(
        model, jax.random.key(4), sample_every=0.2, spin_up_time=0.5, **DATASET_SIZE
    )
    assert not np.allclose(other.X.values, ds.X.values)

    for suffix in (".nc", ".zarr"):
        path = write_dataset(ds, tmp_path / f"l96{suffix}")
        engine = "netcdf4" if suffix == ".nc" else "zarr"
        kwargs = {} if suffix == ".nc" else {"consolidated": False}
        with xr.open_dataset(path, engine=engine, **kwargs) as loaded:
            assert loaded.X.dtype == np.float32
            xr.testing.assert_identical(loaded.load(), ds)


@pytest.mark.parametrize(
    ("name", "mean_range", "std_range"),
    [("wilks05", (3.0, 4.6), (4.4, 5.8)), ("lorenz96", (2.0, 3.2), (3.0, 4.1))],
)
def test_spun_up_statistics_are_climatological(name, mean_range, std_range):
    # Long-run climatology (8 trajectories x 200 time units, float32): X mean 3.80, std 5.08
    # (wilks05); mean 2.58, std 3.55 (lorenz96). 10-unit windows stay within +-0.25.
    model = getattr(TwoScaleLorenz96, name)()
    ds = generate_dataset(
        model,
        jax.random.key(5),
        sample_every=0.2,
        spin_up_time=5.0,
        **DATASET_SIZE,
    )
    X = ds.X.values
    assert np.isfinite(X).all()
    assert mean_range[0] < X.mean() < mean_range[1]
    assert std_range[0] < X.std() < std_range[1]
    first_half, second_half = X[:, :25].mean(), X[:, 25:].mean()
    assert abs(first_half - second_half) < 1.0
    # Without the spin-up the first sample would be DAPPER's initial draw e_0 + 0.1 N(0, I).
    cold = model.slow(model.initial_state(jax.random.key(5), (4,)))
    assert abs(float(cold.mean())) < 0.5 < abs(X.mean())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"sample_every": 0.0123},
            r"sample_every=0.0123 must be a positive integer multiple "
            r"of dt_integration=0.005",
        ),
        ({"sample_every": 0.0}, "sample_every must be a finite positive number"),
        ({"sample_every": 0.002}, "sample_every=0.002 must be a positive integer multiple"),
        ({"spin_up_time": 0.0101}, "spin_up_time=0.0101 must be a non-negative integer multiple"),
        ({"spin_up_time": -1.0}, "spin_up_time=-1.0 must be a non-negative integer multiple"),
        ({"num_samples": 0}, "num_samples must be a positive integer, got 0"),
        ({"num_trajectories": -2}, "num_trajectories must be a positive integer, got -2"),
        ({"num_samples": 2.5}, "num_samples must be a positive integer, got 2.5"),
        ({"dt_integration": -0.01}, "dt_integration must be a finite positive number"),
    ],
)
@pytest.mark.bad_input
def test_dataset_rejects_bad_input(kwargs, match):
    arguments = {"sample_every": 0.05, "spin_up_time": 0.0, "num_samples": 2} | kwargs
    with pytest.raises(ValueError, match=match):
        generate_dataset(TwoScaleLorenz96.lorenz96(), jax.random.key(0), **arguments)


def test_write_rejects_unknown_suffix(tmp_path):
    ds = xr.Dataset({"X": (("time",), np.zeros(2, np.float32))})
    with pytest.raises(ValueError, match=r"suffix must be '.nc' or '.zarr', got '.csv'"):
        write_dataset(ds, tmp_path / "l96.csv")
    assert not (tmp_path / "l96.csv").exists()


def test_model_and_state_validation():
    with pytest.raises(ValueError, match="num_slow must be at least 4"):
        TwoScaleLorenz96(3, 10, 10.0, 1.0, 10.0, 10.0)
    with pytest.raises(ValueError, match="num_fast_per_slow must be a positive integer, got 0"):
        TwoScaleLorenz96(8, 0, 10.0, 1.0, 10.0, 10.0)
    with pytest.raises(ValueError, match="amplitude_ratio must be a finite positive number"):
        TwoScaleLorenz96(8, 4, 10.0, 1.0, 10.0, 0.0)
    model = TwoScaleLorenz96(4, 2, 8.0, 1.0, 10.0, 10.0)
    with pytest.raises(ValueError, match=r"last axis of length K \+ K\*J = 12, got shape \(11,\)"):
        model.tendency(jnp.zeros(11))
    with pytest.raises(ValueError, match="num_steps=5 must be a multiple of save_every=2"):
        model.integrate(jnp.zeros(12), 0.01, 5, save_every=2)
    with pytest.raises(ValueError, match="num_steps must be a positive integer, got 0"):
        model.integrate(jnp.zeros(12), 0.01, 0)
