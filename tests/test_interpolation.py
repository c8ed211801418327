"""Bilinear interpolation of a (channel, lat, lon) frame to scattered points."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.interpolate import RegularGridInterpolator

from filtrax.grid import Channel, GridSpec
from filtrax.observations.interpolation import BilinearInterpolation

CHANNELS = (Channel("t", 850.0), Channel("t", 500.0), Channel("t2m"))


@pytest.fixture(scope="module")
def grid() -> GridSpec:
    return GridSpec.regular(6, 8, CHANNELS)  # lat -75..75 (cell-centred), lon 0..315


def frame(grid: GridSpec, seed: int = 0, dtype=np.float32) -> jnp.ndarray:
    return jnp.asarray(np.random.default_rng(seed).normal(size=grid.shape).astype(dtype))


def reference(grid: GridSpec, x: np.ndarray, chan, lat, lon) -> np.ndarray:
    """Independent reference: scipy on a periodically extended, lat-clamped grid."""
    glat = np.asarray(grid.latitudes)
    glon = np.asarray(grid.longitudes)
    order = np.argsort(glat)
    out = []
    for c, la, lo in zip(chan, lat, lon, strict=True):
        data = np.asarray(x[c], dtype=np.float64)[order]
        data = np.concatenate([data, data[:, :1]], axis=1)
        lons = np.append(glon, glon[0] + 360.0)
        lo = (lo - glon[0]) % 360.0 + glon[0]
        la = np.clip(la, glat.min(), glat.max())
        out.append(RegularGridInterpolator((glat[order], lons), data)([[la, lo]])[0])
    return np.asarray(out)


def all_grid_points(grid: GridSpec):
    c, i, j = np.meshgrid(*(np.arange(n) for n in grid.shape), indexing="ij")
    lat = np.asarray(grid.latitudes)[i.ravel()]
    lon = np.asarray(grid.longitudes)[j.ravel()]
    return c.ravel(), lat, lon


def test_grid_points_are_exact(grid):
    x = frame(grid)
    op = BilinearInterpolation(grid, *all_grid_points(grid))
    np.testing.assert_array_equal(np.asarray(op(x)), np.asarray(x).ravel())
    assert op.num_observations == x.size and op.state_shape == grid.shape


def test_grid_points_are_exact_on_descending_offset_grid():
    grid = GridSpec(
        latitudes=(60.0, 20.0, -20.0, -60.0),
        longitudes=tuple(22.5 + 45.0 * k for k in range(8)),
        channels=CHANNELS,
    )
    x = frame(grid, seed=1)
    op = BilinearInterpolation(grid, *all_grid_points(grid))
    np.testing.assert_array_equal(np.asarray(op(x)), np.asarray(x).ravel())
    # Points between the last column (337.5) and the first (22.5) wrap through 0.
    y = BilinearInterpolation(grid, [2, 2], [60.0, 60.0], [0.0, -11.25])(x)
    expected = 0.5 * (x[2, 0, 7] + x[2, 0, 0])
    np.testing.assert_allclose(np.asarray(y), [expected, 0.75 * x[2, 0, 7] + 0.25 * x[2, 0, 0]])


def test_periodic_longitude(grid):
    x = frame(grid, seed=2)
    row = 2
    lat = grid.latitudes[row]
    op = BilinearInterpolation(grid, [0, 0, 0, 0], [lat] * 4, [337.5, -22.5, 326.25, 359.0])
    y = np.asarray(op(x))
    between = 0.5 * (x[0, row, 7] + x[0, row, 0])
    np.testing.assert_allclose(y[:2], [between, between], rtol=1e-6)
    np.testing.assert_allclose(y[2], 0.75 * x[0, row, 7] + 0.25 * x[0, row, 0], rtol=1e-6)
    w = 44.0 / 45.0
    np.testing.assert_allclose(y[3], (1 - w) * x[0, row, 7] + w * x[0, row, 0], rtol=1e-5)


def test_latitude_is_clamped_to_outermost_rows(grid):
    x = frame(grid, seed=3)
    op = BilinearInterpolation(grid, [1, 1, 1], [90.0, -90.0, 80.0], [45.0, 90.0, 22.5])
    y = np.asarray(op(x))
    np.testing.assert_array_equal(y[:2], [x[1, -1, 1], x[1, 0, 2]])
    np.testing.assert_allclose(y[2], 0.5 * (x[1, -1, 0] + x[1, -1, 1]), rtol=1e-6)


def test_matches_reference_at_random_points(grid):
    rng = np.random.default_rng(4)
    n = 200
    chan = rng.integers(0, grid.shape[0], n)
    lat = rng.uniform(-90.0, 90.0, n)
    lon = rng.uniform(-180.0, 360.0, n)
    x = frame(grid, seed=5)
    y = np.asarray(BilinearInterpolation(grid, chan, lat, lon)(x))
    np.testing.assert_allclose(y, reference(grid, np.asarray(x), chan, lat, lon), atol=1e-5)


@pytest.mark.x64
def test_matches_reference_in_double_precision(grid):
    rng = np.random.default_rng(6)
    chan, lat, lon = rng.integers(0, 3, 50), rng.uniform(-90, 90, 50), rng.uniform(0, 360, 50)
    x = frame(grid, seed=7, dtype=np.float64)
    op = BilinearInterpolation(grid, chan, lat, lon)
    y = op(x)
    assert y.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(y), reference(grid, np.asarray(x), chan, lat, lon),
                               rtol=1e-12, atol=1e-12)  # fmt: skip


def test_linear_and_transformable(grid):
    rng = np.random.default_rng(8)
    op = BilinearInterpolation(
        grid, rng.integers(0, 3, 30), rng.uniform(-90, 90, 30), rng.uniform(-180, 360, 30)
    )
    x, z = frame(grid, seed=9), frame(grid, seed=10)
    H = jax.jacfwd(op)(x).reshape(op.num_observations, -1)
    np.testing.assert_allclose(np.asarray(H @ x.ravel()), np.asarray(op(x)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        np.asarray(op(2.0 * x - 3.0 * z)),
        np.asarray(2.0 * op(x) - 3.0 * op(z)),
        rtol=1e-5,
        atol=1e-5,
    )
    # Rows of H are the weights: non-negative, summing to one, at most 4 non-zeros.
    H = np.asarray(H)
    assert (H >= 0).all() and ((H != 0).sum(axis=1) <= 4).all()
    np.testing.assert_allclose(H.sum(axis=1), 1.0, rtol=1e-6)
    _, f_jvp = jax.linearize(op, x)
    np.testing.assert_allclose(np.asarray(f_jvp(z)), np.asarray(op(z)), rtol=1e-6, atol=1e-6)
    jitted = jax.jit(lambda m, v: m(v))(op, x)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(op(x)), rtol=1e-6, atol=1e-7)
    batch = jnp.stack([x, z])
    np.testing.assert_allclose(
        np.asarray(jax.vmap(op)(batch)), np.asarray(jnp.stack([op(x), op(z)])), rtol=1e-6
    )


@pytest.mark.parametrize(
    ("chan", "lat", "lon", "match"),
    [
        ([0, 1], [0.0, 95.0], [0.0, 0.0], "point 1 has latitude 95.0 outside"),
        ([0, 1], [0.0, np.nan], [0.0, 0.0], "point 1 has latitude nan"),
        ([0, 1], [0.0, 0.0], [360.0, 0.0], r"point 0 has longitude 360.0 outside \[-180, 360\)"),
        ([0, 1], [0.0, 0.0], [0.0, -180.5], "point 1 has longitude -180.5"),
        ([0, 3], [0.0, 0.0], [0.0, 0.0], r"point 1 has channel index 3 outside \[0, 3\)"),
        ([0, -1], [0.0, 0.0], [0.0, 0.0], "point 1 has channel index -1"),
        ([0.0, 1.0], [0.0, 0.0], [0.0, 0.0], "channels must be integers"),
        ([0, 1], [0.0], [0.0, 0.0], "1-D arrays of one length"),
        ([], [], [], "no observation point"),
    ],
)
def test_bad_points_raise(grid, chan, lat, lon, match):
    with pytest.raises(ValueError, match=match):
        BilinearInterpolation(grid, np.asarray(chan), lat, lon)


def test_wrong_state_shape_raises(grid):
    op = BilinearInterpolation(grid, [0], [0.0], [0.0])
    with pytest.raises(ValueError, match="expected state_shape"):
        op(jnp.zeros((2, 6, 8)))
