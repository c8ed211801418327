"""The LETKF's transforms against the Kalman filter on the forecast's sample covariance."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from filtrax.filters.letkf import apply_transforms, letkf_transforms

PROGNOSTIC = ("vorticity", "divergence", "temperature_variation", "log_surface_pressure")


def _problem(num_members=8, state=5, num_obs=3, seed=0):
    rng = np.random.default_rng(seed)
    forecast = rng.normal(size=(num_members, state)) @ rng.normal(size=(state, state))
    operator = rng.normal(size=(num_obs, state))
    observations = rng.normal(size=num_obs)
    error_std = rng.uniform(0.5, 2.0, size=num_obs)
    return forecast, operator, observations, error_std


def _kalman(forecast, operator, observations, error_std):
    """Mean and covariance of the Kalman analysis for the forecast's sample covariance."""
    mean = forecast.mean(0)
    anomalies = forecast - mean
    covariance = anomalies.T @ anomalies / (forecast.shape[0] - 1)
    innovation_cov = operator @ covariance @ operator.T + np.diag(error_std**2)
    gain = covariance @ operator.T @ np.linalg.inv(innovation_cov)
    return mean + gain @ (observations - operator @ mean), covariance - gain @ operator @ covariance


def _analysis(forecast, operator, observations, error_std, **options):
    transforms = letkf_transforms(
        jnp.asarray(forecast @ operator.T),
        jnp.asarray(observations),
        jnp.asarray(error_std),
        jnp.ones((forecast.shape[1], operator.shape[0])),  # one site per state entry
        **options,
    )
    return np.asarray(apply_transforms(transforms, jnp.asarray(forecast)))


def _moments(members):
    mean = members.mean(0)
    return mean, (members - mean).T @ (members - mean) / (members.shape[0] - 1)


@pytest.mark.x64
def test_unlocalised_letkf_is_the_kalman_filter_of_the_sample_covariance():
    problem = _problem()
    mean, covariance = _moments(_analysis(*problem))
    kalman_mean, kalman_covariance = _kalman(*problem)
    np.testing.assert_allclose(mean, kalman_mean, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(covariance, kalman_covariance, rtol=1e-9, atol=1e-10)
    # The oracle can fail: inflating the prior moves both moments away from it.
    inflated_mean, inflated_covariance = _moments(_analysis(*problem, inflation=1.5))
    assert not np.allclose(inflated_mean, kalman_mean, rtol=1e-3, atol=1e-3)
    assert not np.allclose(inflated_covariance, kalman_covariance, rtol=1e-3, atol=1e-3)


@pytest.mark.x64
def test_inflation_and_relaxation_are_the_kalman_filter_of_their_priors():
    forecast, operator, observations, error_std = _problem(seed=1)
    # Inflation by lambda is the Kalman filter of the prior with anomalies scaled by sqrt(lambda).
    mean = forecast.mean(0)
    inflated = mean + np.sqrt(1.7) * (forecast - mean)
    got = _moments(_analysis(forecast, operator, observations, error_std, inflation=1.7))
    for a, b in zip(got, _kalman(inflated, operator, observations, error_std), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-10)
    # Full relaxation keeps the forecast anomalies about the Kalman mean.
    relaxed = _analysis(forecast, operator, observations, error_std, relaxation=1.0)
    kalman_mean, _ = _kalman(forecast, operator, observations, error_std)
    np.testing.assert_allclose(relaxed - relaxed.mean(0), forecast - mean, atol=1e-10)
    np.testing.assert_allclose(relaxed.mean(0), kalman_mean, atol=1e-10)


def test_a_site_that_sees_no_observation_keeps_its_forecast():
    forecast, operator, observations, error_std = _problem(num_members=6, state=2, seed=2)
    # Site 0 sees every observation, site 1 none.
    locality = jnp.asarray([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    transforms = letkf_transforms(
        jnp.asarray(forecast @ operator.T, jnp.float32),
        jnp.asarray(observations, jnp.float32),
        jnp.asarray(error_std, jnp.float32),
        locality,
    )
    np.testing.assert_allclose(np.asarray(transforms[1]), np.eye(6), atol=1e-5)
    assert not np.allclose(np.asarray(transforms[0]), np.eye(6), atol=1e-2)
    # Halving an observation's locality is doubling its variance at that site.
    halved = letkf_transforms(
        jnp.asarray(forecast @ operator.T, jnp.float32),
        jnp.asarray(observations, jnp.float32),
        jnp.asarray(error_std * [1.0, np.sqrt(2.0), 1.0], jnp.float32),
        jnp.ones((1, 3)),
    )
    half_locality = letkf_transforms(
        jnp.asarray(forecast @ operator.T, jnp.float32),
        jnp.asarray(observations, jnp.float32),
        jnp.asarray(error_std, jnp.float32),
        jnp.asarray([[1.0, 0.5, 1.0]]),
    )
    np.testing.assert_allclose(np.asarray(halved), np.asarray(half_locality), atol=1e-5)


@pytest.mark.bad_input
def test_bad_input_is_refused_with_the_field_named():
    predicted = jnp.zeros((4, 3))
    good = {"observations": jnp.zeros(3), "error_std": jnp.ones(3), "locality": jnp.ones((2, 3))}
    with pytest.raises(ValueError, match=r"error_std has shape \(2,\); expected \(3,\)"):
        letkf_transforms(predicted, **{**good, "error_std": jnp.ones(2)})
    with pytest.raises(ValueError, match=r"locality has shape \(2, 4\); expected \(sites, 3\)"):
        letkf_transforms(predicted, **{**good, "locality": jnp.ones((2, 4))})
    with pytest.raises(ValueError, match=r"inflation = 0.5; expected a value in \[1.0, inf\]"):
        letkf_transforms(predicted, **good, inflation=0.5)
    with pytest.raises(ValueError, match=r"relaxation = nan"):
        letkf_transforms(predicted, **good, relaxation=float("nan"))
    with pytest.raises(ValueError, match="1 member"):
        letkf_transforms(predicted[:1], **good)
    with pytest.raises(ValueError, match=r"forecast has shape \(4, 5\); expected \(4, \.\.\., 2\)"):
        apply_transforms(jnp.zeros((2, 4, 4)), jnp.zeros((4, 5)))


def test_dinosaur_members_take_node_by_node_transforms():
    """The transforms act on dinosaur's prognostic fields node by node: the identity keeps
    every member, averaging makes every member the mean, and a transform that differs between
    nodes mixes only where it says."""
    import jax

    from filtrax.dynamics.heldsuarez import HeldSuarezSetup, HeldSuarezSimulator

    sim = HeldSuarezSimulator(HeldSuarezSetup())
    from dinosaur import spherical_harmonic

    grid = spherical_harmonic.Grid.T21()
    base = sim.initial_state(jax.random.key(0))
    members = 3
    # Members: the state at rest plus band-limited noise of their own in every field.
    keys = iter(jax.random.split(jax.random.key(1), 4))
    states = dataclasses.replace(
        jax.tree.map(lambda a: jnp.stack([a] * members), base),
        **{
            name: jnp.stack([getattr(base, name)] * members)
            + jax.random.normal(next(keys), (members, *getattr(base, name).shape))
            * jnp.broadcast_to(
                jnp.asarray(grid.mask, jnp.float32), (members, *getattr(base, name).shape)
            )
            * 1e-3
            for name in PROGNOSTIC
        },
    )
    nodes = sim.node_latitudes.size
    assert sim.node_longitudes.shape == (nodes,) and nodes == 64 * 32
    identity = jnp.broadcast_to(jnp.eye(members), (nodes, members, members))
    kept = sim.transform_members(states, identity)
    np.testing.assert_allclose(kept.vorticity, states.vorticity, atol=1e-7)
    np.testing.assert_allclose(kept.temperature_variation, states.temperature_variation, atol=1e-4)
    averaged = sim.transform_members(states, jnp.full((nodes, members, members), 1 / members))
    for name in PROGNOSTIC:
        mean = getattr(states, name).mean(0, keepdims=True)
        spread = float(jnp.abs(getattr(states, name) - mean).max())
        assert spread > 0, name  # the control: the members do differ
        np.testing.assert_allclose(
            getattr(averaged, name),
            jnp.broadcast_to(mean, getattr(states, name).shape),
            atol=1e-5 * max(spread, 1.0),
        )
    # A transform that is not symmetric: every member becomes member 0 (i takes row i).
    first = jnp.zeros((nodes, members, members)).at[:, :, 0].set(1.0)
    copied = sim.transform_members(states, first)
    np.testing.assert_allclose(
        copied.divergence, jnp.stack([states.divergence[0]] * members), atol=1e-7
    )
    # Only the southern half of the grid averages: the northern nodal temperature is kept.
    southern = jnp.asarray(sim.node_latitudes < 0)[:, None, None]
    half = sim.transform_members(states, jnp.where(southern, 1 / members, identity))
    south = sim.node_latitudes.reshape(64, 32) < -30
    north = sim.node_latitudes.reshape(64, 32) > 30
    before = np.asarray(grid.to_nodal(states.temperature_variation))
    after = np.asarray(grid.to_nodal(half.temperature_variation))

    # Projection back to T21 smooths the jump at the equator (Gibbs ringing); away from it
    # the north keeps its members and the south has lost nearly all its spread.
    def rms(a):
        return float(np.sqrt(np.mean(a**2)))

    north_spread = rms(before[..., north] - before[..., north].mean(0))
    assert rms(after[..., north] - before[..., north]) < 0.1 * north_spread
    south_spread = rms(before[..., south] - before[..., south].mean(0))
    assert rms(after[..., south] - after[..., south].mean(0)) < 0.1 * south_spread

    # The mass fixer restores each member's integral of surface pressure, by a constant
    # factor: the log surface pressure moves in its constant mode (m = l = 0) alone.
    def masses(states):
        return np.asarray(grid.integrate(np.exp(grid.to_nodal(states.log_surface_pressure))))

    fixed = sim.with_mass_of(averaged, states)
    assert not np.allclose(masses(averaged), masses(states), rtol=1e-6)  # the control
    np.testing.assert_allclose(masses(fixed), masses(states), rtol=1e-5)
    moved = np.asarray(fixed.log_surface_pressure - averaged.log_surface_pressure)
    np.testing.assert_allclose(moved[..., 1:, :], 0.0, atol=1e-6)
    np.testing.assert_allclose(moved[..., 0, 1:], 0.0, atol=1e-6)
    np.testing.assert_array_equal(fixed.temperature_variation, averaged.temperature_variation)
    with pytest.raises(
        ValueError, match=r"transforms has shape \(5, 3, 3\); expected \(2048, 3, 3\)"
    ):
        sim.transform_members(states, jnp.zeros((5, members, members)))


@pytest.mark.x64
def test_local_analysis_with_a_likelihood_power_is_the_kalman_filter_of_r_over_that_power():
    """``likelihood_power`` γ assimilates p(y|x)^γ: the Kalman analysis with error variances
    R/γ (the hybrid's remainder); γ = 0 leaves the forecast as it is, to round-off."""
    import filtrax as fx
    from filtrax.filters.letkf import local_analysis

    forecast, operator, observations, error_std = _problem()
    observation_model = fx.ObservationModel(
        fx.LinearObservation(jnp.asarray(operator)), error_std**2
    )
    means = {}
    for power in (0.25, 1.0):
        members = np.asarray(
            local_analysis(
                jnp.asarray(forecast), jnp.asarray(observations), observation_model, None,
                likelihood_power=power,
            )
        )  # fmt: skip
        means[power], covariance = _moments(members)
        kalman_mean, kalman_covariance = _kalman(
            forecast, operator, observations, error_std / np.sqrt(power)
        )
        np.testing.assert_allclose(means[power], kalman_mean, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(covariance, kalman_covariance, rtol=1e-8, atol=1e-9)
    # The check can fail: a quarter of the likelihood is visibly not all of it.
    assert not np.allclose(means[0.25], means[1.0], rtol=1e-3, atol=1e-3)
    unchanged = local_analysis(
        jnp.asarray(forecast),
        jnp.asarray(observations),
        observation_model,
        None,
        likelihood_power=0.0,
    )
    np.testing.assert_allclose(np.asarray(unchanged), forecast, rtol=1e-10, atol=1e-10)
