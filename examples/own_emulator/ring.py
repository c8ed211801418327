"""Bring your own emulator: a model written from scratch and assimilated with the FA-APF.

The model is a ring of ``d`` sites, ``x' = m(x) + w`` with ``m`` a short integration of
single-scale Lorenz-96 and ``w ~ N(0, Q)`` smooth in space. Its diffusion emulator is
exact: the latent is the residual ``w``, whose denoiser is the analytic
``fx.GaussianDenoiser(Q)``. Replace that denoiser by a trained network (wrapped in
``fx.EDMPreconditionedDenoiser``) and nothing else changes.

Run from the repository root:  .venv/bin/python examples/own_emulator/ring.py
(the Python API), or  .venv/bin/filtrax run examples/own_emulator/config.toml  (the same model
through a config, by the import path ``model.factory = "examples/own_emulator/ring.py:SETTING"``:
it gets a run directory, resume, metrics, a report and figures like a bundled model).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import filtrax as fx
from filtrax.experiments.models import ModelParts, ModelSetting

NUM_SITES = 40


class RingEmulator(fx.AbstractEmulator):
    """The emulator of one transition: a denoiser plus the maps around its latent."""

    denoiser: fx.GaussianDenoiser
    dt: float = eqx.field(static=True, default=0.05)

    def mean_step(self, x):
        # Single-scale Lorenz-96 (F = 8) over dt in 5 Euler steps: the deterministic move.
        for _ in range(5):
            tendency = (jnp.roll(x, -1) - jnp.roll(x, 2)) * jnp.roll(x, 1) - x + 8.0
            x = x + self.dt / 5 * tendency
        return x

    def condition(self, state):
        # What the denoiser is conditioned on; GaussianDenoiser takes the prior mean of the
        # latent (the residual's mean is 0 for every particle).
        return jnp.zeros_like(state)

    def latent_template(self, state):
        return jnp.zeros_like(state)  # the latent is one frame (the residual)

    def latent_to_frame(self, z, state):
        return self.mean_step(state) + z  # affine in z, as MMPS and the weights need

    def advance(self, state, frame):
        return frame  # first order: the particle state is the last frame

    def current_frame(self, state):
        return state  # what observations and scores see


def ring_covariance(d: int = NUM_SITES) -> np.ndarray:
    """The residual's covariance Q: smooth in space (length 2 sites) plus a small nugget."""
    distance = np.abs(np.subtract.outer(np.arange(d), np.arange(d)))
    distance = np.minimum(distance, d - distance)
    return 0.05 * np.exp(-0.5 * (distance / 2.0) ** 2) + 1e-4 * np.eye(d)


def ring_emulator(d: int = NUM_SITES) -> RingEmulator:
    """The ring's exact emulator: the residual's analytic denoiser."""
    return RingEmulator(fx.GaussianDenoiser(jnp.asarray(ring_covariance(d), jnp.float32)))


def draw_truth(emulator: RingEmulator, num_cycles: int, key, start_key):
    """A start on the attractor (from ``start_key``) and ``num_cycles`` true frames drawn
    from the model itself (from ``key``)."""
    chol = jnp.asarray(np.linalg.cholesky(ring_covariance()), jnp.float32)
    x0 = 8.0 + jax.random.normal(start_key, (NUM_SITES,))
    for _ in range(100):  # spin-up onto the attractor
        x0 = emulator.mean_step(x0)
    truth, x = [], x0
    for k in range(num_cycles):
        noise = chol @ jax.random.normal(jax.random.fold_in(key, k), (NUM_SITES,))
        x = emulator.mean_step(x) + noise
        truth.append(x)
    return x0, jnp.stack(truth)


def build(config, truth_key, init_key) -> ModelParts:
    """What ``filtrax run`` needs from this model (``model.factory = ".../ring.py:SETTING"``).

    The emulator, a truth of ``run.cycles`` frames drawn with ``truth_key``, its start (the
    particles' centre) and the synthetic observation model: every ``observations.stride``-th
    site with error std ``observations.error_std``. The sites have no grid (``grid=None``).
    """
    emulator = ring_emulator()
    start_key, key = jax.random.split(truth_key)
    x0, truth = draw_truth(emulator, config.run.cycles, key, start_key)
    sites = np.arange(0, NUM_SITES, config.observations.stride)
    observation_model = fx.ObservationModel(
        fx.PointSelection((NUM_SITES,), sites), config.observations.error_std**2
    )
    return ModelParts(
        emulator=emulator,
        grid=None,
        frame_shape=(NUM_SITES,),
        units=("1",),
        truth=np.asarray(truth),
        initial_state=x0,
        observation_model=(observation_model, [f"x[{s}]" for s in sites]),
    )


#: The model setting a config names by import path: a builder and the sources it accepts.
SETTING = ModelSetting(build, truth_sources=("simulate",), observation_sources=("synthetic",))


def main():
    num_particles, num_cycles = 32, 20
    emulator = ring_emulator()

    # Every second site observed with error std 0.5 (NaN would mark a missing value).
    sites = np.arange(0, NUM_SITES, 2)
    observation_model = fx.ObservationModel(fx.PointSelection((NUM_SITES,), sites), 0.5**2)

    # A truth drawn from the model itself, and its observations.
    key_truth, key_obs, key_filter = jax.random.split(jax.random.key(0), 3)
    x0, truth = draw_truth(emulator, num_cycles, key_truth, jax.random.key(1))
    observations = jax.vmap(observation_model.predict)(truth)
    observations = observations + 0.5 * jax.random.normal(key_obs, observations.shape)

    # The FA-APF: DPM-Solver++(2S) on the MMPS posterior denoiser, Dirac weights, ESS-band α.
    proposal = fx.EmulatorProposal(
        emulator,
        fx.DPMSolverPlusPlus2SSampler.gencast(num_levels=10),
        fx.MMPSGuidance(iterations=2),
    )
    fa_apf = fx.AuxiliaryParticleFilter(proposal, fx.DiracPredictiveWeight(), fx.ESSBandTempering())
    free = fx.FreeEnsemble(proposal.unguided())
    particles = jnp.broadcast_to(x0, (num_particles, NUM_SITES))

    for name, method in (("FA-APF", fa_apf), ("free ensemble", free)):
        result = fx.assimilate(method, particles, observations, observation_model, key=key_filter)
        rmse = jnp.sqrt(jnp.mean((result.analysis_mean - truth) ** 2, axis=1))
        print(f"{name}: RMSE per cycle", np.round(np.asarray(rmse), 2))
        print(f"{name}: alpha", np.round(np.asarray(result.diagnostics.alpha), 3))


if __name__ == "__main__":
    main()
