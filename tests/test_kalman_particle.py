"""The Kalman updates of filtrax.filters.hybrid (the ensemble Kalman particle filter, and
those after a move guided by the whole likelihood): identities, the move's gain, refusals.

Their exactness on the linear-Gaussian oracle, with controls that fail, is in
``test_oracle.py`` (``test_kalman_remainder_makes_a_tempered_fa_apf_exact`` and
``test_predictive_kalman_update_without_resampling_is_exact``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import filtrax as fx
from filtrax.experiments.config import ConfigError, config_from_dict
from filtrax.experiments.factory import build_filter

STATE_DIM = 6


@pytest.fixture(scope="module")
def model() -> fx.LinearGaussianModel:
    return fx.random_linear_gaussian_model(seed=3, state_dim=STATE_DIM)


def _fa_apf(model, tempering, split=None):
    sampler = fx.HeunSampler(fx.karras_noise_levels(200.0, 0.002, 7.0, 8))
    proposal = fx.EmulatorProposal(model.emulator(), sampler, fx.MMPSGuidance(2))
    return fx.AuxiliaryParticleFilter(
        proposal, tempering=tempering, skip_first_selection=True, likelihood_split=split
    )


def _analysis(model, filter_, cycles=4, particles=32):
    _, observations = model.simulate(jax.random.key(1), jnp.zeros(STATE_DIM), cycles)
    result = fx.assimilate(
        filter_,
        jnp.zeros((particles, STATE_DIM)),
        observations,
        model.observation_model(),
        key=jax.random.key(2),
    )
    return np.asarray(result.analysis), np.asarray(result.diagnostics.alpha)


def test_at_alpha_one_the_hybrid_is_the_fa_apf_bit_for_bit(model):
    """α = 1: the selection and the move used the whole likelihood, nothing is left to the
    Kalman update, and the analysis equals the paper's filter exactly."""
    paper, _ = _analysis(model, _fa_apf(model, fx.FixedTempering(1.0)))
    hybrid, _ = _analysis(model, _fa_apf(model, fx.FixedTempering(1.0), fx.KalmanRemainder()))
    np.testing.assert_array_equal(hybrid, paper)


def test_below_alpha_one_the_kalman_update_moves_the_particles(model):
    """α < 1 (the ESS band): the move is guided by R/α and the ETKF takes the rest, so the
    analysis differs from the paper's filter from the first selected cycle on."""
    band = fx.ESSBandTempering(0.5, 0.6)
    paper, alphas = _analysis(model, _fa_apf(model, band))
    hybrid, _ = _analysis(model, _fa_apf(model, band, fx.KalmanRemainder()))
    assert np.all(alphas[1:] < 1.0), alphas
    assert np.all(np.isfinite(hybrid))
    # Cycle 0 skips the selection (α = 0, the whole likelihood to the move): the same.
    np.testing.assert_array_equal(hybrid[0], paper[0])
    assert not np.allclose(hybrid[1], paper[1])


def test_the_split_is_refused_where_it_cannot_work(model):
    sampler = fx.HeunSampler(fx.karras_noise_levels(200.0, 0.002, 7.0, 8))
    unguided = fx.EmulatorProposal(model.emulator(), sampler)
    with pytest.raises(ValueError, match=r"likelihood_split = KalmanRemainder needs a guided move"):
        fx.ParticleFilter(
            unguided,
            fx.ObservationLikelihood(),
            fx.FixedTempering(1.0),
            likelihood_split=fx.KalmanRemainder(),
        )
    guided = fx.EmulatorProposal(model.emulator(), sampler, fx.MMPSGuidance(2))
    with pytest.raises(ValueError, match=r"needs global selection, not a block localisation"):
        fx.AuxiliaryParticleFilter(
            guided,
            localisation=fx.BlockLocalisation((2,)),
            likelihood_split=fx.KalmanRemainder(),
        )


def test_config_builds_the_hybrid_with_the_letkf_localisation():
    emulator = fx.random_linear_gaussian_model(seed=0, state_dim=4).emulator()
    plain = config_from_dict({"model": {"name": "lorenz96"}})
    assert plain.filter.hybrid == "none"
    paper = build_filter(plain, emulator, "fa_apf")
    assert isinstance(paper.likelihood_split, fx.FullLikelihoodMove)
    config = config_from_dict({"model": {"name": "lorenz96"}, "filter": {"hybrid": "letkf"}})
    split = build_filter(config, emulator, "fa_apf").likelihood_split
    assert isinstance(split, fx.KalmanRemainder) and split.localisation is None
    with pytest.raises(
        ConfigError,
        match=r"filter.hybrid = 'letkf' needs global selection, not filter.localisation_block = "
        r"\[2\]",
    ):
        config_from_dict(
            {
                "model": {"name": "lorenz96"},
                "filter": {"hybrid": "letkf", "localisation_block": [2]},
            }
        )
    with pytest.raises(ConfigError, match=r"filter.hybrid = 'kalman' is not one of"):
        config_from_dict({"model": {"name": "lorenz96"}, "filter": {"hybrid": "kalman"}})


# --- The Kalman updates after a move guided by the whole likelihood ------------------------

AFTER_FULL_MOVE = [
    fx.PredictiveKalmanUpdate(),
    fx.PredictiveKalmanUpdate(scale_by_unabsorbed=True),
    fx.UnabsorbedKalmanRemainder(),
]


@pytest.mark.parametrize("split", AFTER_FULL_MOVE, ids=lambda s: type(s).__name__)
def test_after_a_full_move_alpha_one_is_the_fa_apf_bit_for_bit(model, split):
    """α = 1: the selection took the whole weight, the Kalman share is 0 and skipped."""
    paper, _ = _analysis(model, _fa_apf(model, fx.FixedTempering(1.0)))
    ours, _ = _analysis(model, _fa_apf(model, fx.FixedTempering(1.0), split))
    np.testing.assert_array_equal(ours, paper)


@pytest.mark.parametrize("split", AFTER_FULL_MOVE, ids=lambda s: type(s).__name__)
def test_after_a_full_move_the_kalman_share_moves_the_particles(model, split):
    """α = 0: no resampling; the move is the paper's (cycle 0, whose selection is skipped,
    is the same), and from cycle 1 on the Kalman update changes the analysis."""
    paper, _ = _analysis(model, _fa_apf(model, fx.FixedTempering(0.0)))
    ours, _ = _analysis(model, _fa_apf(model, fx.FixedTempering(0.0), split))
    np.testing.assert_array_equal(ours[0], paper[0])
    assert np.all(np.isfinite(ours)) and not np.allclose(ours[1], paper[1])


def test_move_gain_recovers_the_share_of_the_innovation_the_move_took():
    """A shift of g·(y − ŷ_i) plus noise is read back as g; none is 0; an overshoot is
    clipped below 1; unobserved (NaN) entries count for nothing."""
    rng = np.random.default_rng(0)
    observation_model = fx.ObservationModel(fx.LinearObservation(jnp.eye(50)), jnp.full(50, 0.04))
    y = jnp.asarray(rng.normal(size=50))
    predicted = jnp.asarray(rng.normal(size=(400, 50)))
    noise = jnp.asarray(0.2 * rng.normal(size=(400, 50)))

    def gain(share, y=y):
        moved = predicted + share * (y[None, :] - predicted) + noise
        return float(fx.move_gain(predicted, moved, y, observation_model))

    assert gain(0.6) == pytest.approx(0.6, abs=0.02)
    assert gain(0.0) == pytest.approx(0.0, abs=0.02)
    assert gain(1.5) == pytest.approx(0.999)
    holes = y.at[::2].set(jnp.nan)
    assert np.isfinite(gain(0.6, holes)) and gain(0.6, holes) == pytest.approx(0.6, abs=0.03)


def test_the_filter_records_the_move_gain_where_a_kalman_update_measured_it(model):
    """``CycleDiagnostics.move_gain``: g in [0, 1) every cycle after a full move, the
    skipped first selection included (α forced to 1 skips the update, not the measure);
    NaN for the paper's filter, which measures nothing."""
    _, observations = model.simulate(jax.random.key(1), jnp.zeros(STATE_DIM), 4)

    def gains(split):
        result = fx.assimilate(
            _fa_apf(model, fx.FixedTempering(0.0), split),
            jnp.zeros((32, STATE_DIM)),
            observations,
            model.observation_model(),
            key=jax.random.key(2),
        )
        return np.asarray(result.diagnostics.move_gain)

    assert np.all(np.isnan(gains(None)))
    for split in AFTER_FULL_MOVE:
        g = gains(split)
        assert g.shape == (4,) and np.all((g >= 0.0) & (g < 1.0)), (split, g)
        # The guided move reaches the observations of this linear-Gaussian model.
        assert np.all(g > 0.05), (split, g)


def test_the_kalman_updates_after_a_full_move_need_dirac_weights(model):
    sampler = fx.HeunSampler(fx.karras_noise_levels(200.0, 0.002, 7.0, 8))
    guided = fx.EmulatorProposal(model.emulator(), sampler, fx.MMPSGuidance(2))
    with pytest.raises(
        ValueError,
        match=r"likelihood_split = UnabsorbedKalmanRemainder needs the weights' predicted "
        r"observations, which MomentMatchedPredictiveWeight does not give",
    ):
        fx.AuxiliaryParticleFilter(
            guided,
            fx.MomentMatchedPredictiveWeight(cg_iterations=2),
            likelihood_split=fx.UnabsorbedKalmanRemainder(),
        )
    emulator = fx.random_linear_gaussian_model(seed=0, state_dim=4).emulator()
    for name, kind in [
        ("predictive", fx.PredictiveKalmanUpdate),
        ("predictive_unabsorbed", fx.PredictiveKalmanUpdate),
        ("unabsorbed", fx.UnabsorbedKalmanRemainder),
    ]:
        filter_section = {"hybrid": name, "localisation_half_width": 2.0}
        config_from_dict({"model": {"name": "lorenz96"}, "filter": filter_section})
        config = config_from_dict({"model": {"name": "lorenz96"}, "filter": {"hybrid": name}})
        split = build_filter(config, emulator, "fa_apf").likelihood_split
        assert isinstance(split, kind) and split.localisation is None
        with pytest.raises(
            ConfigError,
            match=rf"filter.hybrid = '{name}' needs the weights' predicted observations: "
            r"filter.weights = 'dirac', not 'moment_matched'",
        ):
            config_from_dict(
                {
                    "model": {"name": "lorenz96"},
                    "filter": {**filter_section, "weights": "moment_matched"},
                }
            )
    unabsorbed = build_filter(
        config_from_dict(
            {"model": {"name": "lorenz96"}, "filter": {"hybrid": "predictive_unabsorbed"}}
        ),
        emulator,
        "fa_apf",
    ).likelihood_split
    assert unabsorbed.scale_by_unabsorbed
