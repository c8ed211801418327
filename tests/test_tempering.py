"""Oracles for the tempering exponents (fixed α and the ESS-band bisection)."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from filtrax.filters.tempering import ESSBandTempering, FixedTempering


def _ess(log_weights, alpha, log_likelihoods):
    """Independent float64 reference: 1 / Σ w², w ∝ exp(log w + α ℓ)."""
    a = np.asarray(log_weights, np.float64) + float(alpha) * np.asarray(log_likelihoods, np.float64)
    w = np.exp(a - a.max())
    w /= w.sum()
    return 1.0 / np.sum(w**2)


@jax.jit
def _exponent(tempering, log_likelihoods, log_weights):
    """Jitted ``tempering.exponent`` (settings are static: one compile per setting)."""
    return tempering.exponent(log_likelihoods, log_weights)


def _uniform(n, dtype=jnp.float32):
    return jnp.full((n,), -np.log(n), dtype)


# --- FixedTempering ----------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_fixed_tempering_returns_alpha(alpha):
    ll = jnp.asarray([1.0, -5.0, 30.0], jnp.float32)
    value = FixedTempering(alpha).exponent(ll, _uniform(3))
    assert value.dtype == jnp.float32 and value.shape == ()
    assert float(value) == pytest.approx(alpha)


def test_fixed_tempering_default_and_dtype():
    assert float(FixedTempering().exponent(jnp.zeros(2), _uniform(2))) == 1.0
    with jax.enable_x64(True):
        value = FixedTempering(0.5).exponent(jnp.zeros(2, jnp.float64), _uniform(2, jnp.float64))
        assert value.dtype == jnp.float64


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan")])
def test_fixed_tempering_rejects_alpha_outside_unit_interval(alpha):
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\]"):
        FixedTempering(alpha)


# --- ESSBandTempering --------------------------------------------------------------------------


def test_ess_band_keeps_alpha_one_when_ess_is_already_high():
    n = 256
    tempering = ESSBandTempering(0.2, 0.25)
    rng = np.random.default_rng(0)
    for scale in (0.0, 0.01, 0.5):
        ll = jnp.asarray(rng.normal(size=n) * scale, jnp.float32)
        assert _ess(_uniform(n), 1.0, ll) >= 0.2 * n
        assert float(_exponent(tempering, ll, _uniform(n))) == 1.0


def test_ess_band_alpha_one_exactly_at_the_lower_edge():
    """ESS(1) just above lower·N keeps α = 1; the same ℓ with a tighter band tempers."""
    n = 64
    rng = np.random.default_rng(1)
    ll = jnp.asarray(rng.normal(size=n) * 2.0, jnp.float32)
    ess_one = _ess(_uniform(n), 1.0, ll)
    fraction = float(ess_one / n)
    assert float(_exponent(ESSBandTempering(0.99 * fraction, 1.0), ll, _uniform(n))) == 1.0
    alpha = float(_exponent(ESSBandTempering(1.01 * fraction, 1.0), ll, _uniform(n)))
    assert alpha < 1.0
    assert _ess(_uniform(n), alpha, ll) >= 1.01 * fraction * n * (1 - 1e-4)


@pytest.mark.parametrize("band", [(0.2, 0.25), (0.5, 0.55), (0.05, 0.1), (0.9, 1.0)])
def test_ess_band_hits_the_band_for_widely_spread_log_likelihoods(band):
    n, num_trials = 256, 64
    lower, upper = band
    tempering = ESSBandTempering(lower, upper)
    ll = 1e3 * jax.random.normal(jax.random.key(2), (num_trials, n), jnp.float32)
    log_weights = _uniform(n)
    alphas = np.asarray(jax.jit(jax.vmap(lambda row: tempering.exponent(row, log_weights)))(ll))
    assert np.all((alphas > 0) & (alphas < 1))
    for alpha, row in zip(alphas, np.asarray(ll), strict=True):
        # ESS(1) is tiny at this spread, so tempering is needed ...
        assert _ess(log_weights, 1.0, row) < lower * n
        # ... and the chosen α lands in the band (float32 evaluation: 1e-3 slack).
        ess = _ess(log_weights, alpha, row)
        assert lower * n * (1 - 1e-3) <= ess <= upper * n * (1 + 1e-3), (alpha, ess)


@pytest.mark.x64
def test_ess_band_with_non_uniform_previous_weights():
    n = 128
    rng = np.random.default_rng(3)
    log_weights = jnp.asarray(rng.normal(size=n) * 0.3)
    ll = jnp.asarray(rng.normal(size=n) * 200.0)
    alpha = float(_exponent(ESSBandTempering(0.3, 0.35), ll, log_weights))
    assert 0 < alpha < 1
    assert 0.3 * n <= _ess(log_weights, alpha, ll) <= 0.35 * n


@pytest.mark.x64
def test_ess_band_is_monotone_consistent():
    """A higher ESS target never gives a larger α, and α scales as 1/c when ℓ → c ℓ."""
    n = 256
    rng = np.random.default_rng(4)
    log_weights = _uniform(n, jnp.float64)
    for trial in range(5):
        ll = jnp.asarray(rng.normal(size=n) * 1e3 * (trial + 1))
        bands = [(0.05, 0.07), (0.2, 0.25), (0.4, 0.45), (0.7, 0.75)]
        alphas = [float(_exponent(ESSBandTempering(lo, hi), ll, log_weights)) for lo, hi in bands]
        assert all(a > b for a, b in itertools.pairwise(alphas)), alphas
        for (lo, hi), alpha in zip(bands, alphas, strict=True):
            assert lo * n <= _ess(log_weights, alpha, ll) <= hi * n
        # Only α·ℓ matters: scaling ℓ by 10 scales α by about 1/10 (both in band, and the
        # band is narrow enough that the products agree to the band's width).
        tempering = ESSBandTempering(0.2, 0.21)
        a1 = float(_exponent(tempering, ll, log_weights))
        a10 = float(_exponent(tempering, 10.0 * ll, log_weights))
        assert a10 * 10.0 == pytest.approx(a1, rel=0.05)


@pytest.mark.x64
def test_ess_band_narrow_band_falls_back_to_the_diverse_side():
    """lower = upper cannot be hit exactly: α is the largest tried with ESS > upper·N, i.e.
    (to bisection accuracy) the α where ESS crosses the target, from above."""
    n = 100
    rng = np.random.default_rng(5)
    ll = jnp.asarray(rng.normal(size=n) * 500.0)
    log_weights = _uniform(n, jnp.float64)
    target = 0.3
    alpha = float(_exponent(ESSBandTempering(target, target), ll, log_weights))
    assert _ess(log_weights, alpha, ll) >= target * n
    assert _ess(log_weights, alpha * (1 + 1e-6), ll) == pytest.approx(target * n, rel=1e-4)
    assert _ess(log_weights, alpha * 1.01, ll) < target * n


def test_ess_band_respects_min_alpha():
    """ℓ so spread that even α = min_alpha leaves ESS below the band: α = min_alpha."""
    n = 64
    ll = jnp.asarray(np.linspace(0, 1e30, n), jnp.float32)
    alpha = float(_exponent(ESSBandTempering(0.2, 0.25, min_alpha=1e-6), ll, _uniform(n)))
    assert alpha == pytest.approx(1e-6, rel=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lower": 0.0, "upper": 0.25}, "0 < lower <= upper <= 1"),
        ({"lower": 0.3, "upper": 0.2}, "0 < lower <= upper <= 1"),
        ({"lower": 0.2, "upper": 1.5}, "0 < lower <= upper <= 1"),
        ({"lower": -0.1, "upper": 0.5}, "0 < lower <= upper <= 1"),
        ({"min_alpha": 0.0}, "min_alpha"),
        ({"min_alpha": 1.0}, "min_alpha"),
        ({"iterations": 0}, "iterations"),
    ],
)
def test_ess_band_rejects_invalid_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ESSBandTempering(**kwargs)
