"""Filters and driver: key streams, invariants, call accounting, resumption, bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import filtrax as fx

D = 6
LEVELS = fx.karras_noise_levels(80.0, 0.01, 7.0, 8)


@pytest.fixture(scope="module")
def model():
    return fx.random_linear_gaussian_model(seed=3, state_dim=D, dtype=np.float32)


@pytest.fixture(scope="module")
def observations(model):
    _, ys = model.simulate(jax.random.key(11), jnp.zeros(D), 6)
    return ys


def fa_apf(model, weight=None, tempering=None, **kwargs):
    proposal = fx.EmulatorProposal(model.emulator(), fx.HeunSampler(LEVELS), fx.MMPSGuidance(2))
    return fx.AuxiliaryParticleFilter(
        proposal,
        fx.DiracPredictiveWeight() if weight is None else weight,
        fx.ESSBandTempering() if tempering is None else tempering,
        **kwargs,
    )


def unguided(model):
    return fx.EmulatorProposal(model.emulator(), fx.HeunSampler(LEVELS))


def run(filter_, model, observations, n, key=0, **kwargs):
    return fx.assimilate(
        filter_,
        jnp.zeros((n, D)),
        observations,
        model.observation_model(),
        key=jax.random.key(key),
        **kwargs,
    )


def test_member_streams_do_not_depend_on_particle_count(model, observations):
    # Same random streams; only float32 round-off of differently batched kernels may differ
    # (a stream that depended on N would change members by O(1)).
    free = fx.FreeEnsemble(unguided(model))
    small = run(free, model, observations, 4)
    large = run(free, model, observations, 9)
    np.testing.assert_allclose(small.analysis, large.analysis[:, :4], rtol=1e-4, atol=1e-5)
    # The FA-APF's first cycle with no selection moves member i with its own stream too.
    filt = fa_apf(model, skip_first_selection=True)
    small = run(filt, model, observations[:1], 4)
    large = run(filt, model, observations[:1], 9)
    np.testing.assert_allclose(small.analysis, large.analysis[:, :4], rtol=1e-4, atol=1e-5)


def test_particle_key_is_fold_in_of_cycle_and_index(model):
    root = jax.random.key(5)
    keys = fx.filters.particle.particle_keys(jax.random.fold_in(root, 3), 4)
    expected = jax.random.fold_in(jax.random.fold_in(root, 3), 2)
    np.testing.assert_array_equal(jax.random.key_data(keys[2]), jax.random.key_data(expected))


def test_resuming_from_a_saved_state_equals_an_uninterrupted_run(model, observations):
    filt = fa_apf(model)
    whole = run(filt, model, observations, 16)
    first = run(filt, model, observations[:3], 16)
    second = fx.assimilate(
        filt,
        jnp.zeros((16, D)),
        observations[3:],
        model.observation_model(),
        key=jax.random.key(0),
        initial_state=first.final_state,
    )
    np.testing.assert_array_equal(whole.analysis[3:], second.analysis)
    np.testing.assert_array_equal(whole.diagnostics.ess[3:], second.diagnostics.ess)


def test_flat_likelihood_bootstrap_equals_free_ensemble(model, observations):
    """With α = 0 the bootstrap PF selects nobody: systematic resampling of equal weights is
    the identity, so it must reproduce the free ensemble exactly."""
    boot = fx.BootstrapParticleFilter(unguided(model), fx.FixedTempering(0.0))
    free = fx.FreeEnsemble(unguided(model))
    a = run(boot, model, observations, 8)
    b = run(free, model, observations, 8)
    np.testing.assert_array_equal(a.analysis, b.analysis)
    np.testing.assert_allclose(a.diagnostics.ess, 8.0, rtol=1e-5)


def test_diagnostics_are_sane_and_calls_are_counted(model, observations):
    n = 32
    filt = fa_apf(model)
    result = run(filt, model, observations, n)
    diag = result.diagnostics
    assert np.all((diag.ess >= 1.0 - 1e-4) & (diag.ess <= n + 1e-3))
    assert np.all((diag.alpha > 0) & (diag.alpha <= 1))
    assert np.all(np.isfinite(diag.log_evidence_increment))
    calls = fx.HeunSampler(LEVELS).num_denoiser_calls  # 15
    # Dirac weight: 1 forward; proposal: `calls` posterior-denoiser calls of F + 3 B (CG K=2).
    np.testing.assert_array_equal(diag.forward_calls, n * (1 + calls))
    np.testing.assert_array_equal(diag.backward_calls, n * calls * 3)
    assert result.analysis.shape == (len(observations), n, D)
    assert result.analysis_mean.shape == (len(observations), D)


def test_ess_band_is_reached_when_tempering_is_needed(model):
    # Very precise observations make untempered weights degenerate.
    precise = fx.LinearGaussianModel(
        model.transition_matrix,
        model.noise_covariance,
        model.observation_matrix,
        jnp.full_like(model.observation_variance, 1e-4),
    )
    _, ys = precise.simulate(jax.random.key(2), jnp.zeros(D), 4)
    n = 200
    result = run(fa_apf(precise), precise, ys, n)
    ess = np.asarray(result.diagnostics.ess)
    alpha = np.asarray(result.diagnostics.alpha)
    tempered = alpha < 1
    assert tempered.any()
    assert np.all((ess[tempered] >= 0.2 * n - 1e-3) & (ess[tempered] <= 0.25 * n + 1e-3))


@pytest.mark.parametrize("scheme", ["systematic", "stratified", "residual", "multinomial"])
def test_every_resampling_scheme_runs_in_the_filters(model, observations, scheme):
    result = run(fa_apf(model, resampling=scheme), model, observations[:2], 8)
    assert np.all(np.isfinite(result.analysis))


# --- bad input --------------------------------------------------------------------------------


def test_observation_shape_mismatch_is_rejected(model, observations):
    with pytest.raises(ValueError, match=r"observations has shape \(6, 2\), expected"):
        run(fa_apf(model), model, observations[:, :2], 4)


def test_a_cycle_without_observations_is_a_forecast_step(model, observations):
    """An all-NaN row moves the FA-APF's members by the emulator's own transition (guidance
    needs an observation): α = 0, ESS = N, no evidence, unguided call counts, and the
    members are the free ensemble's from the same state and key, bit for bit."""
    missing = np.asarray(observations).copy()
    missing[2] = np.nan
    filter_ = fa_apf(model)
    result = run(filter_, model, missing, 4)
    assert float(result.diagnostics.alpha[2]) == 0.0
    np.testing.assert_allclose(result.diagnostics.ess[2], 4.0, rtol=1e-6)
    assert np.isnan(result.diagnostics.log_evidence_increment[2])
    assert (
        int(result.diagnostics.backward_calls[2]) == 0 < int(result.diagnostics.backward_calls[1])
    )
    before = run(filter_, model, missing[:2], 4)
    free = run(
        fx.FreeEnsemble(unguided(model)), model, missing[2:3], 4, initial_state=before.final_state
    )
    np.testing.assert_array_equal(result.analysis[2], free.analysis[0])
    assert np.all(np.isfinite(result.analysis[3]))
    # Without guidance an empty cycle is fine too: uniform weights, a pure forecast.
    result = run(fx.BootstrapParticleFilter(unguided(model)), model, missing, 4)
    np.testing.assert_allclose(result.diagnostics.ess[2], 4.0, rtol=1e-5)


def test_letkf_ignores_missing_observations(model, observations):
    """A NaN observation gets zero weight: with every observation missing the LETKF is the
    free ensemble (same keys, same forecasts); with one missing it still moves."""
    missing = np.full_like(np.asarray(observations[:2]), np.nan)
    free = run(fx.FreeEnsemble(unguided(model)), model, missing, 6)
    letkf = fx.LocalEnsembleTransformKalmanFilter(unguided(model), relaxation=0.3)
    blind = run(letkf, model, missing, 6)
    np.testing.assert_allclose(blind.analysis, free.analysis, rtol=1e-5, atol=1e-5)
    partial = np.asarray(observations[:2]).copy()
    partial[:, 0] = np.nan
    moved = run(letkf, model, partial, 6)
    assert np.all(np.isfinite(moved.analysis))
    assert not np.allclose(moved.analysis, free.analysis, atol=1e-3)


def test_nan_initial_particles_are_rejected(model, observations):
    with pytest.raises(ValueError, match="initial_particles contains NaN"):
        fx.assimilate(
            fx.FreeEnsemble(unguided(model)),
            jnp.full((4, D), jnp.nan),
            observations,
            model.observation_model(),
            key=jax.random.key(0),
        )


@pytest.mark.bad_input
def test_a_bad_key_or_particles_without_their_axis_are_named(model, observations):
    free = fx.FreeEnsemble(unguided(model))
    with pytest.raises(ValueError, match=r"key must be a JAX random key .* got int 1"):
        fx.assimilate(free, jnp.zeros((4, D)), observations, model.observation_model(), key=1)
    with pytest.raises(ValueError, match=r"shape \(6,\), the shape of one state: it lacks the lea"):
        fx.assimilate(
            free, jnp.zeros(D), observations, model.observation_model(), key=jax.random.key(0)
        )
    # A legacy uint32 key is a key too.
    run(free, model, observations[:1], 2, key=0)
    fx.assimilate(
        free, jnp.zeros((2, D)), observations[:1], model.observation_model(),
        key=jax.random.PRNGKey(0),
    )  # fmt: skip


def test_chunks_and_a_callback_give_the_same_cycles(model, observations):
    """Running the cycles one chunk at a time, with a callback that receives each chunk,
    gives the one-call result bit for bit; the result then keeps the diagnostics only."""
    filter_ = fa_apf(model)
    whole = run(filter_, model, observations, 4)
    chunks = []
    chunked = run(filter_, model, observations, 4, chunk_cycles=4, callback=chunks.append)
    assert [c.first_cycle for c in chunks] == [0, 4]
    assert [c.analysis.shape[0] for c in chunks] == [4, 2]
    np.testing.assert_array_equal(
        np.concatenate([c.analysis for c in chunks]), np.asarray(whole.analysis)
    )
    np.testing.assert_array_equal(chunked.diagnostics.ess, whole.diagnostics.ess)
    assert chunked.analysis is None and chunked.analysis_mean is None
    moments_only = run(filter_, model, observations, 4, save=fx.SaveAt(ensemble=False))
    assert moments_only.analysis is None
    np.testing.assert_array_equal(moments_only.analysis_mean, whole.analysis_mean)
    with pytest.raises(ValueError, match="chunk_cycles = 0"):
        run(filter_, model, observations, 4, chunk_cycles=0)
    empty = run(filter_, model, np.asarray(observations)[:0], 4)
    assert empty.analysis.shape[0] == 0 and int(empty.final_state.cycle) == 0


def test_nan_during_the_run_raises_naming_the_cycle(model, observations):
    broken = fx.LinearGaussianModel(
        model.transition_matrix.at[0, 0].set(jnp.nan),
        model.noise_covariance,
        model.observation_matrix,
        model.observation_variance,
    )
    with pytest.raises(FloatingPointError, match="cycle 0"):
        run(fx.FreeEnsemble(unguided(broken)), broken, observations, 4)


def test_frame_and_operator_shapes_must_agree(model, observations):
    other = fx.ObservationModel(fx.PointSelection((D + 1,), [0, 1]), 1.0)
    with pytest.raises(ValueError, match="state_shape"):
        fx.assimilate(
            fx.FreeEnsemble(unguided(model)),
            jnp.zeros((4, D)),
            np.zeros((3, 2)),
            other,
            key=jax.random.key(0),
        )


def test_filter_configuration_errors(model):
    with pytest.raises(ValueError, match="resampling is 'bogus'"):
        fa_apf(model, resampling="bogus")
    with pytest.raises(ValueError, match="must be guided"):
        fx.AuxiliaryParticleFilter(unguided(model))
    guided = fx.EmulatorProposal(model.emulator(), fx.HeunSampler(LEVELS), fx.MMPSGuidance(1))
    with pytest.raises(ValueError, match="must be unguided"):
        fx.BootstrapParticleFilter(guided)
    with pytest.raises(ValueError, match="solver is 'lu'"):
        fx.MMPSGuidance(2, "lu")
    with pytest.raises(ValueError, match="lower <= upper"):
        fx.ESSBandTempering(lower=0.5, upper=0.3)
    with pytest.raises(ValueError, match="num_noise_draws"):
        fx.DiracPredictiveWeight(num_noise_draws=0)


def test_guided_denoiser_rejects_bad_observations(model):
    denoiser = fx.GaussianDenoiser(model.noise_covariance)
    observation_model = model.observation_model()
    with pytest.raises(ValueError, match=r"GuidedDenoiser\.y has shape"):
        fx.GuidedDenoiser(denoiser, fx.MMPSGuidance(1), observation_model, jnp.zeros(5))
    with pytest.raises(ValueError, match="no observed"):
        fx.GuidedDenoiser(
            denoiser, fx.MMPSGuidance(1), observation_model, jnp.full((D // 2,), jnp.nan)
        )
    with pytest.raises(ValueError, match="noise_variance must be finite and > 0"):
        fx.ObservationModel(observation_model.operator, jnp.array([1.0, -1.0, jnp.nan]))


def test_sweeping_a_tunable_does_not_retrace(model, observations):
    """Tunables are array leaves: a filter with another ESS band, kernel bandwidth, weight
    σ_max or transform regularisation reuses the compiled cycle (a static field would retrace
    it, as the sampler's levels do)."""
    import equinox as eqx

    traces = []

    @eqx.filter_jit
    def cycle(filter_, state, y, key):
        traces.append(None)
        return filter_.step(state, y, model.observation_model(), key)

    def filter_with(lower, bandwidth, sigma_max=88.0):
        return fa_apf(
            model,
            fx.DiracPredictiveWeight(sigma_max),
            fx.ESSBandTempering(lower, 0.6),
            rejuvenation=fx.KernelRejuvenation(bandwidth),
        )

    state = filter_with(0.2, 0.5).init(jnp.zeros((4, D)))
    sweep = ((0.2, 0.5), (0.4, 0.5), (0.4, 0.9), (0.4, 0.9, 40.0))
    for values in sweep:
        cycle(filter_with(*values), state, observations[0], jax.random.key(0))
    assert len(traces) == 1
    for regularisation in (0.05, 0.2):
        transform = fa_apf(model, rejuvenation=fx.TransformRejuvenation(regularisation))
        cycle(transform, state, observations[0], jax.random.key(0))
    assert len(traces) == 2
    # The control: a static field (the number of noise levels) does retrace.
    other = fx.EmulatorProposal(
        model.emulator(), fx.HeunSampler(fx.karras_noise_levels(80.0, 0.01, 7.0, 5)),
        fx.MMPSGuidance(2),
    )  # fmt: skip
    cycle(fx.AuxiliaryParticleFilter(other), state, observations[0], jax.random.key(0))
    assert len(traces) == 3


def test_sweeping_inflation_or_relaxation_does_not_retrace(model, observations):
    """The inflation strategies' numbers and the LETKF's relaxation are array leaves too:
    another λ, other adaptive bounds, another RTPP coefficient reuse the compiled cycle,
    in the particle filters, the EnKF and the LETKF. λ = 1 exactly is a static fact
    (the filters then skip the arithmetic), so leaving it compiles once more."""
    import equinox as eqx

    traces = []

    @eqx.filter_jit
    def cycle(filter_, state, y, key):
        traces.append(None)
        return filter_.step(state, y, model.observation_model(), key)

    state = fa_apf(model).init(jnp.zeros((4, D)))

    def count(filters):
        before = len(traces)
        for filter_ in filters:
            cycle(filter_, state, observations[0], jax.random.key(0))
        return len(traces) - before

    assert count(fa_apf(model, inflation=fx.FixedInflation(lam)) for lam in (1.05, 1.2, 1.5)) == 1
    adaptive = (fx.InnovationInflation(low, high) for low, high in ((1.0, 2.0), (1.1, 1.5)))
    assert count(fa_apf(model, inflation=inflation) for inflation in adaptive) == 1
    assert count(fx.EnsembleKalmanFilter(unguided(model), lam) for lam in (1.1, 1.3)) == 1
    letkfs = (
        fx.LocalEnsembleTransformKalmanFilter(unguided(model), lam, relaxation)
        for lam, relaxation in ((1.1, 0.2), (1.3, 0.2), (1.3, 0.6))
    )
    assert count(letkfs) == 1
    # The control: λ = 1 is the identity, a static choice.
    assert count([fa_apf(model, inflation=fx.FixedInflation(1.0))]) == 1
