"""The recorded denoiser call counts equal the calls actually made.

A counting denoiser (a ``jax.custom_vjp`` with Python counters) is run eagerly under
``jax.disable_jit()``, where ``lax.scan``/``fori_loop`` execute as Python loops, so every
forward evaluation and every VJP application is seen.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import filtrax as fx


@dataclasses.dataclass
class Counter:
    forward: int = 0
    backward: int = 0


def counting(denoiser: fx.AbstractDenoiser, counter: Counter):
    @jax.custom_vjp
    def call(x, sigma, cond):
        counter.forward += 1
        return denoiser(x, sigma, cond)

    def forward(x, sigma, cond):
        counter.forward += 1
        out, pullback = jax.vjp(denoiser, x, sigma, cond)
        return out, pullback

    def backward(pullback, cotangent):
        counter.backward += 1
        return pullback(cotangent)

    call.defvjp(forward, backward)
    return call


class CountingDenoiser(fx.AbstractDenoiser):
    inner: fx.AbstractDenoiser
    counter: Counter

    def __call__(self, x_t, sigma, cond):
        return counting(self.inner, self.counter)(x_t, sigma, cond)


D = 4
LEVELS = fx.karras_noise_levels(80.0, 0.01, 7.0, 5)
SAMPLERS = [
    fx.EulerSampler(LEVELS),
    fx.HeunSampler(LEVELS),
    fx.DDIMSampler(LEVELS, 1.0),
    fx.DPMSolverPlusPlus2SSampler(LEVELS),
    fx.AdamsBashforthSampler(LEVELS, 3, 2),
]
GUIDANCES = [
    None,
    fx.DPSGuidance(),
    fx.SDAGuidance(),
    fx.MMPSGuidance(2, "cg"),
    fx.MMPSGuidance(2, "bicgstab"),
    fx.MMPSGuidance(3, "gmres"),
]


def setup(counter):
    model = fx.random_linear_gaussian_model(seed=0, state_dim=D)
    emulator = model.emulator()
    counted = CountingDenoiser(emulator.denoiser, counter)
    return model, eqx.tree_at(lambda e: e.denoiser, emulator, counted)


@pytest.mark.parametrize("sampler", SAMPLERS, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("guidance", GUIDANCES, ids=lambda g: repr(g))
def test_proposal_call_counts(sampler, guidance):
    counter = Counter()
    model, emulator = setup(counter)
    proposal = fx.EmulatorProposal(emulator, sampler, guidance)
    y = jnp.asarray(np.ones(model.observation_matrix.shape[0]), jnp.float32)
    with jax.disable_jit():
        proposal(jnp.zeros(D), y, model.observation_model(), key=jax.random.key(0))
    assert (counter.forward, counter.backward) == proposal.call_counts()


@pytest.mark.parametrize(
    "weight",
    [
        fx.DiracPredictiveWeight(num_noise_draws=3),
        fx.MomentMatchedPredictiveWeight(cg_iterations=3),
        fx.MomentMatchedPredictiveWeight(cg_iterations=2, dense_log_determinant=True),
    ],
    ids=["dirac", "moment-matched", "moment-matched-dense-logdet"],
)
def test_weight_call_counts(weight):
    counter = Counter()
    model, emulator = setup(counter)
    observation_model = model.observation_model()
    y = jnp.ones(observation_model.num_observations)
    with jax.disable_jit():
        weight.log_likelihood(jnp.zeros(D), y, observation_model, emulator, key=jax.random.key(0))
    forward, backward = weight.call_counts(observation_model.num_observations)
    # Batched work runs under vmap and the counter sees one batched call: the M noise draws
    # of the Dirac weight, and the `obs` VJPs of the dense log-determinant.
    if isinstance(weight, fx.DiracPredictiveWeight):
        assert forward == weight.num_noise_draws
        forward = 1
    if getattr(weight, "dense_log_determinant", False):
        assert backward == weight.cg_iterations + observation_model.num_observations
        backward = weight.cg_iterations + 1
    assert (counter.forward, counter.backward) == (forward, backward)


def test_a_split_that_needs_the_predictions_calls_the_weight_once_more():
    """:class:`~filtrax.PredictiveKalmanUpdate` recomputes the parents' predictions after the
    selection: one more batched predictive-mean call per cycle, N more in the counts."""
    model = fx.random_linear_gaussian_model(seed=0, state_dim=D)
    observation_model = model.observation_model()
    y = jnp.ones(observation_model.num_observations)
    made, reported = [], []
    for split in (None, fx.PredictiveKalmanUpdate()):
        counter = Counter()
        _, emulator = setup(counter)
        proposal = fx.EmulatorProposal(emulator, fx.EulerSampler(LEVELS), fx.MMPSGuidance(2))
        filter_ = fx.AuxiliaryParticleFilter(
            proposal, tempering=fx.FixedTempering(0.0), likelihood_split=split
        )
        state = filter_.init(jnp.zeros((8, D)))
        with jax.disable_jit():
            filter_.step(state, y, observation_model, jax.random.key(0))
        made.append(counter.forward)
        reported.append(filter_.call_counts(8, observation_model.num_observations)[0])
    assert made[1] - made[0] == 1
    assert reported[1] - reported[0] == 8
