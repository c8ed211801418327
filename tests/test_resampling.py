"""Oracles for the resampling schemes and the effective sample size.

Unbiasedness, ``E[#offspring_i] = num · w_i``, is checked over many independent keys with a
z-score built from the empirical standard deviation of the counts; negative controls show
the same check rejects biased schemes.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from filtrax.resampling import (
    RESAMPLERS,
    effective_sample_size,
    get_resampler,
    multinomial,
    normalize_log_weights,
    residual,
    stratified,
    systematic,
)

SCHEMES = {
    "systematic": systematic,
    "stratified": stratified,
    "multinomial": multinomial,
    "residual": residual,
}
NUM_KEYS = 20_000
# Uneven weights with a tiny one, two exact zeros and non-integer num·w_i.
WEIGHTS = np.array([0.31, 0.02, 0.17, 0.005, 0.095, 0.4, 0.0, 0.0])


def _log(weights):
    with np.errstate(divide="ignore"):
        return jnp.asarray(np.log(weights), jnp.float32)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _batched(scheme, keys, log_weights, num):
    """Ancestors and offspring counts for each key (one compile per scheme and num)."""
    ancestors = jax.vmap(lambda k: scheme(k, log_weights, num))(keys)
    counts = jax.vmap(lambda a: jnp.bincount(a, length=log_weights.shape[0]))(ancestors)
    return ancestors, counts


@functools.cache
def _weights_counts(scheme, num):
    """Counts for WEIGHTS over NUM_KEYS keys, shared by the tests that need them."""
    keys = jax.random.split(jax.random.key(0), NUM_KEYS)
    ancestors, counts = _batched(scheme, keys, _log(WEIGHTS), num)
    return np.asarray(ancestors), np.asarray(counts, np.float64)


_resample = jax.jit(lambda scheme, key, lw, num: scheme(key, lw, num), static_argnums=(0, 3))


def _unbiasedness_violations(counts, expected, z_max=5.0):
    """Indices whose mean count is off: a z-score bound where the counts vary, exact
    equality (to float error) where they never vary."""
    mean = counts.mean(axis=0)
    stderr = counts.std(axis=0, ddof=1) / np.sqrt(counts.shape[0])
    deterministic = stderr == 0
    bad_random = ~deterministic & (np.abs(mean - expected) > z_max * stderr)
    bad_fixed = deterministic & (np.abs(mean - expected) > 1e-4)
    return np.flatnonzero(bad_random | bad_fixed)


@pytest.mark.parametrize("name", sorted(SCHEMES))
@pytest.mark.parametrize("num", [8, 13])
def test_resampling_is_unbiased(name, num):
    ancestors, counts = _weights_counts(SCHEMES[name], num)
    assert ancestors.shape == (NUM_KEYS, num)
    assert ancestors.dtype == np.int32
    assert ancestors.min() >= 0 and ancestors.max() < WEIGHTS.size
    np.testing.assert_array_equal(counts.sum(axis=1), num)
    # Zero weights are never selected.
    assert np.all(counts[:, WEIGHTS == 0] == 0)
    bad = _unbiasedness_violations(counts, num * WEIGHTS)
    assert bad.size == 0, (
        f"{name}: mean counts {counts.mean(axis=0)[bad]} vs {num * WEIGHTS[bad]} at {bad}"
    )


def _frozen_systematic(key, log_weights, num):
    """Biased: systematic resampling with u frozen at 0.999/num (deterministic)."""
    cdf = jnp.cumsum(jnp.exp(normalize_log_weights(log_weights)))
    positions = (0.999 + jnp.arange(num, dtype=log_weights.dtype)) / num
    found = jnp.searchsorted(cdf, positions, side="right")
    return jnp.minimum(found, log_weights.shape[0] - 1).astype(jnp.int32)


def _squared_multinomial(key, log_weights, num):
    """Biased but random: multinomial on w² (over-selects heavy particles)."""
    return multinomial(key, 2.0 * log_weights, num)


def _stratified_off_by_one(key, log_weights, num):
    """Biased but random: stratified resampling with an off-by-one that relabels the
    offspring of particle 5 as particle 4."""
    ancestors = stratified(key, log_weights, num)
    return jnp.maximum(ancestors - (ancestors == 5).astype(jnp.int32), 0)


@pytest.mark.parametrize(
    "biased",
    [_frozen_systematic, _squared_multinomial, _stratified_off_by_one],
    ids=lambda f: f.__name__.strip("_"),
)
def test_unbiasedness_check_rejects_biased_schemes(biased):
    """Negative controls: the same check, on the same weights, must fail."""
    _, counts = _weights_counts(biased, 8)
    assert _unbiasedness_violations(counts, 8 * WEIGHTS).size > 0


def test_systematic_counts_are_floor_or_ceil():
    """Systematic resampling gives each particle ⌊N w_i⌋ or ⌈N w_i⌉ offspring."""
    n = WEIGHTS.size
    _, counts = _weights_counts(systematic, n)
    expected = n * WEIGHTS
    assert np.all(counts >= np.floor(expected) - 1e-9)
    assert np.all(counts <= np.ceil(expected) + 1e-9)


def test_residual_and_multinomial_count_variances():
    """Multinomial counts are Binomial(N, w_i); residual counts are ⌊N w_i⌋ plus
    Binomial(R, r_i) with R = N − Σ⌊N w⌋ and r ∝ N w − ⌊N w⌋."""
    n = WEIGHTS.size
    _, counts = _weights_counts(multinomial, n)
    variance = counts.var(axis=0, ddof=1)
    expected = n * WEIGHTS * (1 - WEIGHTS)
    positive = WEIGHTS > 0
    np.testing.assert_allclose(variance[positive], expected[positive], rtol=0.1)

    _, counts = _weights_counts(residual, n)
    floor = np.floor(n * WEIGHTS)
    assert np.all(counts >= floor)
    leftover = n * WEIGHTS - floor
    num_random = n - floor.sum()
    r = leftover / leftover.sum()
    variance = counts.var(axis=0, ddof=1)
    expected = num_random * r * (1 - r)
    np.testing.assert_allclose(variance[positive], expected[positive], rtol=0.1)


@pytest.mark.parametrize("name", sorted(SCHEMES))
def test_degenerate_weights_select_the_only_particle(name):
    log_weights = jnp.asarray([-jnp.inf, -jnp.inf, 0.0, -jnp.inf, -jnp.inf], jnp.float32)
    ancestors = _resample(SCHEMES[name], jax.random.key(3), log_weights, 5)
    np.testing.assert_array_equal(np.asarray(ancestors), np.full(5, 2))


@pytest.mark.parametrize("name", sorted(SCHEMES))
def test_huge_log_weights_do_not_overflow(name):
    """Only softmax(ℓ) matters: a shift of 1e4 (exp overflows) gives the same ancestors."""
    base = jnp.asarray([0.3, -1.0, 2.0, 0.0, 0.7], jnp.float32)
    key = jax.random.key(4)
    a = _resample(SCHEMES[name], key, base, 5)
    b = _resample(SCHEMES[name], key, base + 1e4, 5)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert np.asarray(a).min() >= 0 and np.asarray(a).max() < 5


@pytest.mark.parametrize("n", [1, 5, 100])
def test_systematic_on_equal_weights_is_the_identity(n):
    keys = jax.random.split(jax.random.key(5), 500)
    ancestors, _ = _batched(systematic, keys, jnp.zeros((n,), jnp.float32), n)
    np.testing.assert_array_equal(np.asarray(ancestors), np.tile(np.arange(n), (500, 1)))


@pytest.mark.x64
@pytest.mark.parametrize("shift", [0.0, 3.7, -250.0])
def test_systematic_on_equal_weights_is_the_identity_x64(shift):
    """In float64 also for large N and shifted log-weights (in float32 the rounding of
    ``ℓ − logsumexp ℓ`` can move a CDF step across a position when N ~ 1000)."""
    n = 1000
    keys = jax.random.split(jax.random.key(5), 200)
    ancestors, _ = _batched(systematic, keys, jnp.full((n,), shift, jnp.float64), n)
    np.testing.assert_array_equal(np.asarray(ancestors), np.tile(np.arange(n), (200, 1)))


def test_residual_on_equal_weights_is_the_identity():
    """N w_i = 1 for every particle: all offspring are deterministic copies.

    N = 8 so that N · exp(−log N) is exactly 1 in float32 (for N = 5 it rounds to
    1 − 2⁻²⁴, ⌊N w_i⌋ = 0 and every offspring is drawn at random instead)."""
    ancestors = _resample(residual, jax.random.key(6), jnp.zeros(8, jnp.float32), 8)
    np.testing.assert_array_equal(np.asarray(ancestors), np.arange(8))


# --- effective sample size ---------------------------------------------------------------------


@pytest.mark.x64
def test_effective_sample_size_formula():
    rng = np.random.default_rng(7)
    for scale in (0.1, 1.0, 5.0, 50.0):
        log_weights = rng.normal(size=64) * scale + 123.0
        w = np.exp(log_weights - log_weights.max())
        w /= w.sum()
        expected = 1.0 / np.sum(w**2)
        value = float(effective_sample_size(jnp.asarray(log_weights)))
        assert value == pytest.approx(expected, rel=1e-12)
        assert 1.0 - 1e-12 <= value <= 64 + 1e-9


@pytest.mark.parametrize("n", [1, 7, 256])
def test_effective_sample_size_limits(n):
    assert float(effective_sample_size(jnp.zeros(n, jnp.float32))) == pytest.approx(n, rel=1e-5)
    assert float(effective_sample_size(jnp.full(n, -30.0, jnp.float32))) == pytest.approx(
        n, rel=1e-5
    )
    one_hot = jnp.full(n, -jnp.inf, jnp.float32).at[0].set(0.0)
    assert float(effective_sample_size(one_hot)) == pytest.approx(1.0, rel=1e-6)


@pytest.mark.x64
def test_effective_sample_size_of_huge_equal_log_weights():
    for shift in (-1e4, 1e4):
        value = float(effective_sample_size(jnp.full(256, shift, jnp.float64)))
        assert value == pytest.approx(256, rel=1e-9)


@pytest.mark.x64
def test_effective_sample_size_with_k_equal_weights():
    """k equal weights and N − k zeros: ESS = k exactly."""
    for k in (1, 3, 10):
        log_weights = np.full(16, -np.inf)
        log_weights[:k] = 2.0
        assert float(effective_sample_size(jnp.asarray(log_weights))) == pytest.approx(k)


def test_get_resampler():
    for name, scheme in RESAMPLERS.items():
        assert get_resampler(name) is scheme
    assert set(RESAMPLERS) == set(SCHEMES)
    with pytest.raises(ValueError, match="unknown resampling scheme 'bogus'"):
        get_resampler("bogus")
