r"""The stochastic ensemble Kalman filter whose forecast is the diffusion emulator's ensemble.

A baseline on the same cycle interface as the particle filters. Each member is propagated
with the unguided emulator (a sample of :math:`p(x^{k+1}\mid s^k)`), then updated with
perturbed observations (Burgers, van Leeuwen & Evensen 1998; Houtekamer & Mitchell 1998):

.. math::
    x^f_i &\leftarrow \bar x^f + \lambda\,(x^f_i - \bar x^f)
        \qquad\text{(multiplicative inflation)},\\
    C_{xy} &= \tfrac{1}{N-1}\sum_i (x^f_i - \bar x^f)(h(x^f_i) - \overline{h(x^f)})^\top,
    \quad C_{yy} = \tfrac{1}{N-1}\sum_i (h(x^f_i) - \overline{h(x^f)})(\cdot)^\top + R,\\
    x^a_i &= x^f_i + C_{xy} C_{yy}^{-1}\big(y + \varepsilon_i - h(x^f_i)\big),
    \qquad \varepsilon_i \sim \mathcal N(0, R).

With a :class:`~filtrax.filters.covariance_localisation.GaspariCohnLocalisation`, both
covariances are tapered entry-wise before the gain is formed,
:math:`C_{xy} \to \rho_{xy} \circ C_{xy}` and the ensemble part of :math:`C_{yy}` by
:math:`\rho_{yy}` (covariance localisation; Houtekamer & Mitchell 2001).

The observation operator enters only through :math:`h(x^f_i)` (the ensemble-space form),
so nonlinear operators work too. A NaN in ``y`` gives that row zero gain. Only the frame
that the emulator produced is updated; the state is rebuilt with
:meth:`~filtrax.emulators._base.AbstractEmulator.advance` from the member's previous state,
so the conditioning frame :math:`x^{k}` of a second-order emulator keeps its own analysis.

Member ``i``'s perturbation uses ``fold_in(key_i, PERTURBATION_STREAM)`` with the same
particle key as the proposal, so it does not depend on N.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from .. import streams
from ..observations.model import observation_mask
from .covariance_localisation import GaspariCohnLocalisation
from .inflation import AbstractInflation, FixedInflation, as_inflation
from .particle import (
    FilterState,
    UnguidedEnsembleFilter,
    _propagate,
    num_particles_of,
    particle_keys,
)

PERTURBATION_STREAM = streams.PERTURBATION


class EnsembleKalmanFilter(UnguidedEnsembleFilter):
    """Stochastic EnKF with perturbed observations and multiplicative inflation.

    Attributes:
        proposal: an unguided :class:`EmulatorProposal` (the forecast).
        inflation: an :class:`~filtrax.filters.inflation.AbstractInflation` choosing
            :math:`\\lambda \\ge 1` from the forecast's predicted observations (a number
            means :class:`~filtrax.filters.inflation.FixedInflation`), applied to the
            forecast anomalies.
        localisation: Gaspari–Cohn covariance localisation, or ``None`` for the global
            EnKF.
    """

    inflation: AbstractInflation = eqx.field(
        default=FixedInflation(), converter=as_inflation("EnsembleKalmanFilter")
    )
    localisation: GaspariCohnLocalisation | None = None

    def step(self, state, y, observation_model, key):
        particles = state.particles
        n = num_particles_of(particles)
        if n < 2:
            raise ValueError(f"EnsembleKalmanFilter needs at least 2 members, got {n}")
        keys = particle_keys(key, n)
        emulator = self.emulator
        forecast = _propagate(
            self.proposal, keys, particles, y, observation_model, self.particle_map
        )
        frames = jax.vmap(emulator.current_frame)(forecast)
        shape = frames.shape[1:]
        flat = frames.reshape(n, -1)
        mean = flat.mean(axis=0, keepdims=True)
        # λ from the forecast's own predictions (unused, and compiled away, when fixed).
        inflation = self.inflation.factor(
            jax.vmap(observation_model.predict)(frames), y, observation_model
        )
        flat = mean + inflation.astype(flat.dtype) * (flat - mean)

        predicted = jax.vmap(observation_model.predict)(flat.reshape(n, *shape))
        mask = observation_mask(y)
        variance = observation_model.noise_variance
        anomalies_x = (flat - mean) / jnp.sqrt(n - 1.0)
        predicted_anomalies = predicted - predicted.mean(axis=0, keepdims=True)
        anomalies_y = jnp.where(mask[None, :], predicted_anomalies, 0.0) / jnp.sqrt(n - 1.0)
        ensemble_yy = anomalies_y.T @ anomalies_y
        cov_xy = anomalies_x.T @ anomalies_y
        if self.localisation is not None:
            rho_xy, rho_yy = self.localisation.factors(observation_model, frames[0])
            ensemble_yy, cov_xy = rho_yy * ensemble_yy, rho_xy * cov_xy
        cov_yy = ensemble_yy + jnp.diag(jnp.where(mask, variance, 1.0))

        def perturbation(k):
            k = jax.random.fold_in(k, PERTURBATION_STREAM)
            return jnp.sqrt(variance) * jax.random.normal(k, variance.shape, variance.dtype)

        perturbed = jnp.where(mask, y, 0.0)[None, :] + jax.vmap(perturbation)(keys)
        innovations = jnp.where(mask[None, :], perturbed - predicted, 0.0)
        factor = jax.scipy.linalg.cho_factor(cov_yy)
        increments = jax.scipy.linalg.cho_solve(factor, innovations.T).T @ cov_xy.T
        analysis = (flat + increments).reshape(n, *shape)
        new_particles = self.particle_map.constrain(jax.vmap(emulator.advance)(particles, analysis))

        diagnostics = self._unweighted_diagnostics(
            new_particles, state.log_weights.dtype, observation_model.num_observations, inflation
        )
        return FilterState(new_particles, state.log_weights, state.cycle + 1), diagnostics
