"""The regularised particle filter's shrinkage kernel (filtrax.filters.rejuvenation)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import filtrax as fx
from filtrax.filters.particle import particle_keys


def weighted_pool(n: int, d: int):
    """Particles with unequal weights, their weighted mean and covariance."""
    x = (
        jax.random.normal(jax.random.key(0), (n, d))
        @ jnp.array([[1.0, 0.5, 0.0], [0.0, 1.0, 0.3], [0.0, 0.0, 0.7]])[:d, :d]
        + jnp.arange(d, dtype=jnp.float32)[None]
    )
    log_w = -0.5 * jnp.sum((x - 1.0) ** 2, axis=1)
    log_w = log_w - jax.scipy.special.logsumexp(log_w)
    w = np.exp(np.asarray(log_w, np.float64))
    mean = w @ np.asarray(x, np.float64)
    anomalies = np.asarray(x, np.float64) - mean
    return x, log_w, mean, (w[:, None] * anomalies).T @ anomalies


def shrinkage_without_shrinking(selected, weighed, log_weights, *, keys, h):
    """The negative control: jitter by the weighted covariance without the shrinkage a."""
    n = log_weights.shape[0]
    w = jnp.exp(log_weights)
    mean = (w @ weighed)[None]
    z = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 3), (n,)))(keys)
    return selected + h * z @ (jnp.sqrt(w)[:, None] * (weighed - mean))


@pytest.mark.parametrize("h", [0.5, 1.0])
def test_the_kernel_keeps_the_weighted_mean_and_covariance(h):
    # Large enough that the negative control's widening by h² (25 % at h = 0.5) is many
    # Monte Carlo errors; each particle's jitter draws n normals, so the cost grows as n².
    n, d = 8_000, 3
    x, log_w, mean, cov = weighted_pool(n, d)
    keys = particle_keys(jax.random.key(1), n)
    ancestors = fx.systematic(jax.random.key(2), log_w, n)
    selected = x[ancestors]
    moved = np.asarray(fx.KernelRejuvenation(h)(selected, x, log_w, keys=keys), np.float64)
    ess = float(fx.effective_sample_size(log_w))
    tolerance = 6 / np.sqrt(ess)  # a few Monte Carlo standard errors of the moments
    scale = np.sqrt(np.diag(cov))
    assert np.all(np.abs(moved.mean(axis=0) - mean) <= tolerance * scale), (moved.mean(0), mean)
    np.testing.assert_allclose(np.cov(moved.T), cov, atol=tolerance * float(scale.max() ** 2))
    # The particles did move: duplicates are separated.
    assert np.unique(moved[:, 0]).size > 0.99 * n > np.unique(np.asarray(selected)[:, 0]).size
    # Negative control: jitter without shrinkage widens the covariance by 1 + h², and fails.
    wide = np.asarray(shrinkage_without_shrinking(selected, x, log_w, keys=keys, h=h))
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(np.cov(wide.T), cov, atol=tolerance * float(scale.max() ** 2))


def test_no_rejuvenation_is_the_identity_and_the_bandwidth_is_checked():
    x = jnp.arange(12.0).reshape(4, 3)
    log_w = jnp.full(4, -jnp.log(4.0))
    keys = particle_keys(jax.random.key(0), 4)
    assert fx.NoRejuvenation()(x, x, log_w, keys=keys) is x
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"bandwidth = .*; expected a number in \(0, 1\]"):
            fx.KernelRejuvenation(bad)
    # The bandwidth is an array leaf: another value reuses the compiled cycle.
    traces = []

    @jax.jit
    def rejuvenate(kernel, x):
        traces.append(None)
        return kernel(x, x, log_w, keys=keys)

    rejuvenate(fx.KernelRejuvenation(0.3), x)
    rejuvenate(fx.KernelRejuvenation(0.6), x)
    assert len(traces) == 1
    # Integer leaves (e.g. a step counter in a state) are carried, not jittered.
    tree = {"x": x, "step": jnp.arange(4)}
    moved = fx.KernelRejuvenation(0.5)(tree, tree, log_w, keys=keys)
    np.testing.assert_array_equal(moved["step"], tree["step"])


def test_the_config_builds_the_kernel_for_the_particle_filters_only(tmp_path):
    from filtrax.experiments.config import ConfigError, load_config
    from filtrax.experiments.factory import build_experiment

    path = tmp_path / "c.toml"
    path.write_text(
        '[model]\nname = "linear_gaussian"\nstate_dim = 4\nobserved = 2\n'
        "[filter]\nparticles = 8\n[run]\ncycles = 2\n"
    )
    experiment = build_experiment(
        load_config(path, ["filter.rejuvenation=kernel", "filter.rejuvenation_bandwidth=0.3"])
    )
    assert experiment.filter.rejuvenation == fx.KernelRejuvenation(0.3)
    with pytest.raises(ConfigError, match="applies to fa_apf and bootstrap"):
        load_config(path, ["filter.rejuvenation=kernel", "filter.method=letkf"])
    with pytest.raises(ConfigError, match=r"rejuvenation_bandwidth = 0\.0 is out of range"):
        load_config(path, ["filter.rejuvenation=kernel", "filter.rejuvenation_bandwidth=0"])


# --------------------------------------------------------------------------------------------
# The ensemble transform (Reich 2013): optimal transport from the weights to uniform ones.
# --------------------------------------------------------------------------------------------


def monotone_rearrangement(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The exact transform in one dimension: particle ``j`` is ``N`` times the weighted
    ensemble's mass between the quantiles ``j/N`` and ``(j+1)/N`` (sorted)."""
    n = x.size
    order = np.argsort(x)
    cdf = np.concatenate([[0.0], np.cumsum(w[order])])
    lower, upper = np.arange(n) / n, np.arange(1, n + 1) / n
    overlap = np.clip(
        np.minimum(cdf[None, 1:], upper[:, None]) - np.maximum(cdf[None, :-1], lower[:, None]),
        0.0,
        None,
    )
    return n * overlap @ x[order]


@pytest.mark.x64
def test_the_transform_tends_to_the_exact_transport_in_one_dimension():
    n = 64
    x = jax.random.normal(jax.random.key(0), (n, 1), jnp.float64)
    log_w = -0.5 * ((x[:, 0] - 1.0) / 0.5) ** 2
    w = np.exp(np.asarray(log_w - jax.scipy.special.logsumexp(log_w)))
    exact = monotone_rearrangement(np.asarray(x[:, 0]), w)
    errors = []
    for regularisation in (0.05, 0.01, 0.002):
        moved = fx.TransformRejuvenation(regularisation, iterations=10_000)(x, x, log_w, keys=None)
        moved = np.sort(np.asarray(moved[:, 0]))
        # Every new particle is a convex combination, and the weighted mean is kept.
        assert np.isclose(moved.mean(), w @ np.asarray(x[:, 0]), atol=1e-8)
        errors.append(np.sqrt(np.mean((moved - exact) ** 2)))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.03, errors
    # Negative control: the transposed coupling (weights on the columns) is not the transform.
    coupling = fx.filters.rejuvenation.sinkhorn_coupling(
        (x - x.T) ** 2, log_w, jnp.asarray(0.002), 10_000
    )
    wrong = np.sort(np.asarray(n * coupling @ x[:, 0]))
    assert np.sqrt(np.mean((wrong - exact) ** 2)) > 10 * errors[2]


def test_the_transform_keeps_the_weighted_mean_of_every_leaf_and_is_checked():
    x, log_w, mean, _ = weighted_pool(256, 3)
    tree = {"x": x, "twice": 2 * x, "step": jnp.arange(256)}
    moved = fx.TransformRejuvenation()(tree, tree, log_w, keys=None)
    np.testing.assert_allclose(np.asarray(moved["x"]).mean(axis=0), mean, atol=1e-4)
    np.testing.assert_allclose(moved["twice"], 2 * moved["x"], rtol=1e-5)  # one coupling
    np.testing.assert_array_equal(moved["step"], tree["step"])
    # No copies: the transform separates what resampling duplicates.
    assert np.unique(np.asarray(moved["x"][:, 0])).size == 256
    # N copies of one state (a filter's start) stay that state, finite.
    copies = jnp.ones((8, 3))
    same = fx.TransformRejuvenation()(copies, copies, jnp.full(8, -jnp.log(8.0)), keys=None)
    np.testing.assert_allclose(same, copies, rtol=1e-6)
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match=r"regularisation = .*; expected a number > 0"):
            fx.TransformRejuvenation(bad)
    with pytest.raises(ValueError, match="iterations = 0; expected an integer >= 1"):
        fx.TransformRejuvenation(0.1, iterations=0)


def test_the_config_builds_the_transform_for_global_selection_only(tmp_path):
    from filtrax.experiments.config import ConfigError, load_config
    from filtrax.experiments.factory import build_experiment

    path = tmp_path / "c.toml"
    path.write_text(
        '[model]\nname = "linear_gaussian"\nstate_dim = 4\nobserved = 2\n'
        "[filter]\nparticles = 8\n[run]\ncycles = 2\n"
    )
    chosen = ["filter.rejuvenation=transform", "filter.rejuvenation_regularisation=0.1"]
    experiment = build_experiment(load_config(path, chosen))
    assert experiment.filter.rejuvenation == fx.TransformRejuvenation(0.1)
    with pytest.raises(ConfigError, match="'transform' needs global selection"):
        load_config(path, [*chosen, "filter.localisation_block=[2]"])
    composed = build_experiment(load_config(path, ["filter.rejuvenation=transform+kernel"]))
    assert composed.filter.rejuvenation == fx.ComposedRejuvenation(
        (fx.TransformRejuvenation(0.05), fx.KernelRejuvenation(0.5))
    )
    with pytest.raises(ConfigError, match="'transform\\+kernel' needs global selection"):
        load_config(path, ["filter.rejuvenation=transform+kernel", "filter.localisation_block=[2]"])


def test_the_composition_applies_each_step_to_the_same_weighed_ensemble():
    x, log_w, _, _ = weighted_pool(64, 3)
    keys = particle_keys(jax.random.key(1), 64)
    transform, kernel = fx.TransformRejuvenation(), fx.KernelRejuvenation(0.3)
    composed = fx.ComposedRejuvenation((transform, kernel))(x, x, log_w, keys=keys)
    expected = kernel(transform(x, x, log_w, keys=keys), x, log_w, keys=keys)
    np.testing.assert_array_equal(composed, expected)
    assert fx.ComposedRejuvenation((fx.NoRejuvenation(),)).is_identity
    with pytest.raises(ValueError, match="non-empty tuple of rejuvenations"):
        fx.ComposedRejuvenation(())
