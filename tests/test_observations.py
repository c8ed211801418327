"""Oracles for the observation operators and the Gaussian observation model (NaN = missing)."""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from filtrax.observations.model import ObservationModel, observation_mask
from filtrax.observations.operators import (
    BlockMean,
    LinearObservation,
    NonlinearObservation,
    PointSelection,
)


def _state(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape)


# --- PointSelection ----------------------------------------------------------------------------


@pytest.mark.x64
@pytest.mark.parametrize(
    ("shape", "indices"),
    [((7,), [0, 6, 3]), ((3, 4), [11, 0, 5, 5, 2]), ((2, 3, 2), list(range(12)))],
)
def test_point_selection_matches_numpy(shape, indices):
    x = _state(shape)
    op = PointSelection(shape, np.asarray(indices))
    assert op.num_observations == len(indices)
    np.testing.assert_array_equal(np.asarray(op(jnp.asarray(x))), x.ravel()[indices])
    # Batched under jit + vmap.
    xs = np.stack([x, 2 * x + 1])
    ys = np.asarray(jax.jit(jax.vmap(op))(jnp.asarray(xs)))
    np.testing.assert_array_equal(ys, xs.reshape(2, -1)[:, indices])


@pytest.mark.x64
def test_point_selection_from_mask_is_c_order_boolean_indexing():
    rng = np.random.default_rng(1)
    mask = rng.random((4, 5)) < 0.4
    mask[0, 0] = True
    x = _state((4, 5), seed=2)
    op = PointSelection.from_mask(mask)
    assert op.state_shape == (4, 5)
    assert op.num_observations == mask.sum()
    np.testing.assert_array_equal(np.asarray(op(jnp.asarray(x))), x[mask])
    np.testing.assert_array_equal(np.asarray(op.indices), np.flatnonzero(mask))
    # Also from a JAX boolean array.
    op_jax = PointSelection.from_mask(jnp.asarray(mask))
    np.testing.assert_array_equal(np.asarray(op_jax.indices), np.flatnonzero(mask))


def test_point_selection_int_state_shape():
    op = PointSelection(5, [4, 1])
    assert op.state_shape == (5,)
    np.testing.assert_array_equal(np.asarray(op(jnp.arange(5.0))), [4.0, 1.0])


@pytest.mark.parametrize(
    ("shape", "indices", "match"),
    [
        ((3, 4), [], "selects no state entry"),
        ((3, 4), [0, 12], r"\[12\] outside \[0, 12\)"),
        ((3, 4), [-1, 2, 13], r"\[-1, 13\] outside"),
        ((3, 4), [0.0, 1.0], "integer"),
        ((3, 4), [[0, 1]], "1-D"),
        ((0, 4), [0], "positive sizes"),
        ((), [0], "non-empty"),
    ],
)
def test_point_selection_rejects_bad_indices(shape, indices, match):
    with pytest.raises(ValueError, match=match):
        PointSelection(shape, np.asarray(indices) if indices != [] else np.zeros(0, int))


def test_point_selection_from_mask_rejects_bad_masks():
    with pytest.raises(ValueError, match="selects no grid point"):
        PointSelection.from_mask(np.zeros((3, 3), bool))
    with pytest.raises(ValueError, match="boolean"):
        PointSelection.from_mask(np.ones((3, 3), int))


@pytest.mark.parametrize(
    "op",
    [
        PointSelection((3, 4), [0]),
        BlockMean((3, 4), (2, 2)),
        LinearObservation(np.ones((2, 12)), (3, 4)),
        NonlinearObservation(lambda x: x.reshape(-1)[:2], (3, 4), 2),
    ],
    ids=lambda op: type(op).__name__,
)
@pytest.mark.parametrize("bad_shape", [(4, 3), (12,), (3, 4, 1)])
def test_operators_reject_a_state_of_the_wrong_shape(op, bad_shape):
    with pytest.raises(ValueError, match=r"state has shape .* expected state_shape \(3, 4\)"):
        op(jnp.zeros(bad_shape))


# --- BlockMean ---------------------------------------------------------------------------------


def _block_mean_reference(x: np.ndarray, block: tuple[int, ...]) -> np.ndarray:
    """Loop over every block of the trailing axes; edge blocks average the cells they have."""
    k = len(block)
    lead, trail = x.shape[: x.ndim - k], x.shape[x.ndim - k :]
    counts = [math.ceil(n / b) for n, b in zip(trail, block, strict=True)]
    out = np.empty((*lead, *counts))
    for index in itertools.product(*(range(c) for c in counts)):
        window = tuple(
            slice(i * b, min((i + 1) * b, n)) for i, b, n in zip(index, block, trail, strict=True)
        )
        out[(..., *index)] = x[(..., *window)].reshape(*lead, -1).mean(axis=-1)
    return out.reshape(-1)


@pytest.mark.x64
@pytest.mark.parametrize(
    ("shape", "block"),
    [
        ((6,), (2,)),
        ((7,), (3,)),  # edge block of 1 cell
        ((5,), (8,)),  # one block bigger than the axis
        ((4, 6), (2, 3)),
        ((5, 7), (2, 3)),  # edge blocks on both axes
        ((3, 5, 7), (2, 3)),  # a leading channel axis is kept
        ((2, 3, 4, 5), (2, 2)),  # two leading axes
        ((2, 3, 4), (1, 2, 4)),  # block over every axis
        ((3, 4), 2),  # an int block covers the last axis only
    ],
)
def test_block_mean_matches_numpy(shape, block):
    x = _state(shape, seed=3)
    op = BlockMean(shape, block)
    block_t = (block,) if isinstance(block, int) else block
    expected = _block_mean_reference(x, block_t)
    assert op.num_observations == expected.size
    np.testing.assert_allclose(np.asarray(op(jnp.asarray(x))), expected, rtol=1e-13, atol=1e-14)


@pytest.mark.x64
def test_block_mean_is_linear_with_averaging_rows():
    op = BlockMean((2, 5, 3), (2, 2))
    H = np.asarray(jax.jacfwd(op)(jnp.zeros((2, 5, 3)))).reshape(op.num_observations, -1)
    # Each row averages its cells: non-negative, sums to one, and every cell is used once
    # per channel.
    np.testing.assert_allclose(H.sum(axis=1), 1.0, rtol=1e-13)
    assert np.all(H >= 0)
    np.testing.assert_array_equal((H > 0).sum(axis=0), np.ones(30))
    # A constant field is preserved.
    np.testing.assert_allclose(np.asarray(op(jnp.full((2, 5, 3), 2.5))), 2.5, rtol=1e-13)


def test_block_mean_rejects_bad_blocks():
    with pytest.raises(ValueError, match="more axes"):
        BlockMean((4, 4), (2, 2, 2))
    with pytest.raises(ValueError, match="positive sizes"):
        BlockMean((4, 4), (0, 2))
    with pytest.raises(ValueError, match="positive sizes"):
        BlockMean((4, -4), (2, 2))


# --- LinearObservation and NonlinearObservation ------------------------------------------------


@pytest.mark.x64
def test_linear_observation_matches_numpy():
    rng = np.random.default_rng(4)
    H = rng.normal(size=(3, 6))
    x = rng.normal(size=(2, 3))
    op = LinearObservation(jnp.asarray(H), (2, 3))
    assert op.num_observations == 3 and op.state_shape == (2, 3)
    np.testing.assert_allclose(np.asarray(op(jnp.asarray(x))), H @ x.ravel(), rtol=1e-13)
    flat = LinearObservation(jnp.asarray(H))
    assert flat.state_shape == (6,)
    np.testing.assert_allclose(np.asarray(flat(jnp.asarray(x.ravel()))), H @ x.ravel())
    jac = np.asarray(jax.jacfwd(op)(jnp.asarray(x))).reshape(3, 6)
    np.testing.assert_allclose(jac, H, rtol=1e-13)


def test_linear_observation_rejects_bad_matrices():
    with pytest.raises(ValueError, match="2-D"):
        LinearObservation(np.ones(4))
    with pytest.raises(ValueError, match="obs >= 1"):
        LinearObservation(np.ones((0, 4)))
    with pytest.raises(ValueError, match="4 columns but state_shape"):
        LinearObservation(np.ones((2, 4)), (2, 3))


def _nonlinear(x):
    flat = x.reshape(-1)
    return jnp.stack([jnp.sin(flat[0]) * flat[1], flat[2] ** 2, jnp.exp(0.25 * jnp.sum(flat))])


@pytest.mark.x64
def test_nonlinear_observation_linearisation_equals_jacobian():
    op = NonlinearObservation(_nonlinear, (2, 2), 3)
    x = jnp.asarray(_state((2, 2), seed=5))
    y, jvp = jax.linearize(op, x)
    np.testing.assert_allclose(np.asarray(y), np.asarray(_nonlinear(x)), rtol=1e-14)
    basis = jnp.eye(4).reshape(4, 2, 2)
    linearised = np.stack([np.asarray(jvp(e)) for e in basis], axis=1)
    jac = np.asarray(jax.jacfwd(op)(x)).reshape(3, 4)
    np.testing.assert_allclose(linearised, jac, rtol=1e-13, atol=1e-15)
    # Against the hand-computed Jacobian.
    f = np.asarray(x).ravel()
    e = math.exp(0.25 * f.sum())
    hand = np.array(
        [
            [math.cos(f[0]) * f[1], math.sin(f[0]), 0.0, 0.0],
            [0.0, 0.0, 2 * f[2], 0.0],
            [0.25 * e] * 4,
        ]
    )
    np.testing.assert_allclose(jac, hand, rtol=1e-13, atol=1e-15)
    # The VJP (what guidance uses) is the transpose.
    _, vjp = jax.vjp(op, x)
    cot = jnp.asarray([1.0, -2.0, 0.5])
    np.testing.assert_allclose(
        np.asarray(vjp(cot)[0]).ravel(), hand.T @ np.asarray(cot), rtol=1e-13
    )


@pytest.mark.bad_input
def test_nonlinear_observation_rejects_bad_functions():
    with pytest.raises(ValueError, match="callable"):
        NonlinearObservation(3.0, (2,), 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_outputs"):
        NonlinearObservation(lambda x: x, (2,), 0)
    op = NonlinearObservation(lambda x: x[:1], (2,), 2)
    with pytest.raises(ValueError, match=r"returned shape \(1,\), expected \(2,\)"):
        op(jnp.zeros(2))


# --- ObservationModel --------------------------------------------------------------------------


@pytest.mark.x64
@pytest.mark.parametrize("missing", [[], [1], [0, 3, 4]])
def test_log_likelihood_matches_scipy_on_the_observed_subset(missing):
    rng = np.random.default_rng(6)
    H = rng.normal(size=(5, 4))
    r = np.array([0.5, 1.0, 0.1, 2.0, 0.3])
    model = ObservationModel(LinearObservation(jnp.asarray(H)), jnp.asarray(r))
    x = rng.normal(size=4)
    y = H @ x + rng.normal(size=5) * np.sqrt(r)
    y[missing] = np.nan
    observed = ~np.isnan(y)
    expected = stats.multivariate_normal(mean=(H @ x)[observed], cov=np.diag(r[observed])).logpdf(
        y[observed]
    )
    value = model.log_likelihood(jnp.asarray(y), jnp.asarray(x))
    assert float(value) == pytest.approx(expected, rel=1e-12)
    np.testing.assert_array_equal(np.asarray(observation_mask(jnp.asarray(y))), observed)
    # The gradient in x stays finite with NaNs in y and equals the observed-subset gradient.
    grad = np.asarray(jax.grad(model.log_likelihood, argnums=1)(jnp.asarray(y), jnp.asarray(x)))
    expected_grad = H[observed].T @ ((y[observed] - (H @ x)[observed]) / r[observed])
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-11, atol=1e-13)


@pytest.mark.x64
def test_log_likelihood_scalar_variance_and_batching():
    op = PointSelection((3, 3), [0, 4, 8])
    model = ObservationModel(op, 0.25)
    np.testing.assert_array_equal(np.asarray(model.noise_variance), [0.25] * 3)
    xs = jnp.asarray(_state((6, 3, 3), seed=7))
    y = jnp.asarray([0.1, np.nan, -0.3])
    values = np.asarray(jax.jit(jax.vmap(lambda x: model.log_likelihood(y, x)))(xs))
    for x, value in zip(np.asarray(xs), values, strict=True):
        diag = x.ravel()[[0, 8]]
        expected = stats.norm(diag, 0.5).logpdf([0.1, -0.3]).sum()
        assert value == pytest.approx(expected, rel=1e-12)


def test_all_missing_observation_has_zero_log_likelihood():
    model = ObservationModel(PointSelection(3, [0, 2]), 1.0)
    value = model.log_likelihood(jnp.full(2, jnp.nan), jnp.ones(3))
    assert float(value) == 0.0


def test_observation_model_sample_moments():
    r = jnp.asarray([0.5, 2.0, 0.1])
    model = ObservationModel(PointSelection(4, [3, 0, 1]), r)
    x = jnp.asarray([1.0, -1.0, 0.0, 3.0])
    n = 20_000
    keys = jax.random.split(jax.random.key(0), n)
    ys = np.asarray(jax.jit(jax.vmap(lambda k: model.sample(x, key=k)))(keys), np.float64)
    mean, var = ys.mean(axis=0), ys.var(axis=0, ddof=1)
    r_np = np.asarray(r, np.float64)
    assert np.all(np.abs(mean - [3.0, 1.0, -1.0]) < 5 * np.sqrt(r_np / n))
    assert np.all(np.abs(var / r_np - 1) < 5 * np.sqrt(2 / n))


@pytest.mark.parametrize(
    ("variance", "match"),
    [
        ([1.0, 0.0, 1.0], r"entries \[1\] are \[0.0\]"),
        ([1.0, -2.0, np.nan], r"entries \[1, 2\] are \[-2.0, nan\]"),
        ([np.inf, 1.0, 1.0], r"entries \[0\] are \[inf\]"),
        (0.0, r"entries \[0, 1, 2\]"),
        ([1.0, 1.0], r"shape \(2,\), expected \(3,\)"),
        (np.ones((3, 1)), r"shape \(3, 1\)"),
    ],
)
def test_observation_model_rejects_bad_variances(variance, match):
    with pytest.raises(ValueError, match=match):
        ObservationModel(PointSelection(5, [0, 1, 2]), jnp.asarray(variance))


@pytest.mark.bad_input
def test_observation_model_rejects_a_non_operator_and_a_wrong_state():
    with pytest.raises(ValueError, match="AbstractObservationOperator"):
        ObservationModel(lambda x: x, 1.0)  # type: ignore[arg-type]
    model = ObservationModel(PointSelection((2, 3), [0, 5]), 1.0)
    assert model.state_shape == (2, 3) and model.num_observations == 2
    with pytest.raises(ValueError, match="state has shape"):
        model.log_likelihood(jnp.zeros(2), jnp.zeros(6))


def test_check_observations():
    model = ObservationModel(PointSelection(6, [0, 2, 4]), 1.0)
    model.check_observations(np.array([1.0, np.nan, 2.0]))
    model.check_observations(np.array([[1.0, np.nan, 2.0], [np.nan, np.nan, 0.0]]))
    model.check_observations(np.full(3, np.nan), require_observed=False)
    with pytest.raises(ValueError, match=r"obs has shape \(4,\), expected \(\.\.\., 3\)"):
        model.check_observations(np.zeros(4), name="obs")
    with pytest.raises(ValueError, match=r"shape \(\)"):
        model.check_observations(np.float64(1.0))
    with pytest.raises(ValueError, match=r"shape \(3, 2\)"):
        model.check_observations(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="y has no observed"):
        model.check_observations(np.full(3, np.nan))
    batch = np.zeros((4, 3))
    batch[2] = np.nan
    with pytest.raises(ValueError, match=r"y\[2\] has no observed"):
        model.check_observations(batch)
    batch = np.zeros((2, 3))
    batch[1, 2] = -np.inf
    with pytest.raises(ValueError, match=r"infinite value at index \[1, 2\]"):
        model.check_observations(batch)
    with pytest.raises(ValueError, match="infinite"):
        model.check_observations(np.array([np.inf, np.nan, np.nan]), require_observed=False)
