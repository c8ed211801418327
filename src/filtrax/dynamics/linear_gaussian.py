r"""The linear-Gaussian AR model, its exact Kalman filter, and its exact diffusion emulator.

.. math::
    x^{k+1} = A x^k + w^k,\quad w^k\sim\mathcal N(0, Q), \qquad
    y^{k} = H x^{k} + v^{k},\quad v^k\sim\mathcal N(0, \operatorname{diag} r).

Everything the particle filters approximate is available in closed form here:

* the optimal proposal :math:`p(x^{k+1}\mid x^k, y) = \mathcal N(m + K(y - Hm), (I-KH)Q)`,
  :math:`m = A x^k`, :math:`K = QH^\top(HQH^\top + R)^{-1}`;
* the exact predictive weight :math:`p(y\mid x^k) = \mathcal N(y; HAx^k, R + HQH^\top)`;
* the filtering distribution (Kalman filter), computed below in float64 NumPy,
  independently of the JAX filter code.

The emulator's latent is the residual :math:`z = x^{k+1} - A x^k \sim \mathcal N(0, Q)`
(GenCast's residual convention), so its denoiser is the analytic
:class:`~filtrax.diffusion.GaussianDenoiser` with prior mean 0.

References:
    Kalman (1960); Savary, Rozet & Louppe (2025) (the exactness test bed).
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float
from numpy.typing import DTypeLike

from .._typing import Key, State
from ..diffusion.denoisers import GaussianDenoiser
from ..emulators._base import AbstractEmulator
from ..observations.model import ObservationModel
from ..observations.operators import LinearObservation


class AbstractResidualGaussianEmulator(AbstractEmulator):
    """An exact emulator whose latent is the Gaussian residual ``z = x' − m(x) ~ N(0, Q)``.

    States are frames (first order); the denoiser is the analytic one with prior mean 0,
    and subclasses only say how the mean ``m(x)`` enters :meth:`latent_to_frame`.
    """

    # Narrower than AbstractEmulator's: safe, a module's fields are frozen.
    denoiser: eqx.AbstractVar[GaussianDenoiser]  # pyright: ignore[reportIncompatibleVariableOverride]

    def condition(self, state: State) -> State:
        # The residual's prior mean: zero for every particle.
        return jnp.zeros_like(state)

    def latent_template(self, state: State) -> State:
        return jnp.zeros_like(state)

    def advance(self, state: State, frame: State) -> State:
        return frame

    def current_frame(self, state: State) -> State:
        return state


class LinearGaussianEmulator(AbstractResidualGaussianEmulator):
    """Exact diffusion emulator of ``x' = A x + w``, ``w ~ N(0, Q)``, on the residual latent."""

    transition_matrix: Float[Array, "d d"]
    # Narrower than AbstractEmulator's: safe, a module's fields are frozen.
    denoiser: GaussianDenoiser  # pyright: ignore[reportIncompatibleVariableOverride]

    def __init__(self, transition_matrix: ArrayLike, noise_covariance: ArrayLike):
        A = jnp.asarray(transition_matrix)
        Q = jnp.asarray(noise_covariance)
        if A.ndim != 2 or A.shape[0] != A.shape[1] or Q.shape != A.shape:
            raise ValueError(
                f"LinearGaussianEmulator needs square A and Q of one shape, got A {A.shape}, "
                f"Q {Q.shape}"
            )
        self.transition_matrix = A
        self.denoiser = GaussianDenoiser(Q)

    def latent_to_frame(self, z: State, state: State) -> State:
        return self.transition_matrix.astype(state.dtype) @ state + z


class KalmanResult(NamedTuple):
    """Filtering means ``(K, d)``, covariances ``(K, d, d)`` and ``log p(y^k | y^{1:k-1})``."""

    means: np.ndarray
    covariances: np.ndarray
    log_evidence_increments: np.ndarray


class LinearGaussianModel(eqx.Module):
    """``x' = A x + w``, ``y = H x + v`` with ``w ~ N(0, Q)`` and ``v ~ N(0, diag r)``."""

    transition_matrix: Float[Array, "d d"]
    noise_covariance: Float[Array, "d d"]
    observation_matrix: Float[Array, "obs d"]
    observation_variance: Float[Array, " obs"]

    def __check_init__(self) -> None:
        A, Q = self.transition_matrix, self.noise_covariance
        H, r = self.observation_matrix, self.observation_variance
        d = A.shape[0]
        if A.shape != (d, d) or Q.shape != (d, d):
            raise ValueError(f"A and Q must be ({d}, {d}), got {A.shape} and {Q.shape}")
        if H.ndim != 2 or H.shape[1] != d or r.shape != (H.shape[0],):
            raise ValueError(f"H must be (obs, {d}) and r (obs,), got H {H.shape} and r {r.shape}")

    @property
    def state_dim(self) -> int:
        return int(self.transition_matrix.shape[0])

    def emulator(self) -> LinearGaussianEmulator:
        return LinearGaussianEmulator(self.transition_matrix, self.noise_covariance)

    def observation_model(self) -> ObservationModel:
        return ObservationModel(
            LinearObservation(self.observation_matrix), self.observation_variance
        )

    def simulate(
        self, key: Key, initial_state: State, num_cycles: int
    ) -> tuple[Float[Array, "cycle d"], Float[Array, "cycle obs"]]:
        """A truth trajectory ``x^1..x^K`` from ``x^0`` and its observations ``y^1..y^K``."""
        chol = jnp.linalg.cholesky(self.noise_covariance)
        obs_std = jnp.sqrt(self.observation_variance)

        def step(x, k):
            key_w, key_v = jax.random.split(jax.random.fold_in(key, k))
            x = self.transition_matrix @ x + chol @ jax.random.normal(key_w, x.shape, x.dtype)
            y = self.observation_matrix @ x + obs_std * jax.random.normal(
                key_v, obs_std.shape, x.dtype
            )
            return x, (x, y)

        _, (truth, observations) = jax.lax.scan(step, initial_state, jnp.arange(num_cycles))
        return truth, observations

    def kalman_filter(
        self, initial_mean: np.ndarray, initial_covariance: np.ndarray, observations: np.ndarray
    ) -> KalmanResult:
        """The exact filter, in float64 NumPy (independent of the JAX particle filters).

        The prior is on ``x^0``; each cycle forecasts with ``(A, Q)`` and updates with
        ``y^k``. NaN entries of ``y^k`` are skipped.
        """
        A = np.asarray(self.transition_matrix, np.float64)
        Q = np.asarray(self.noise_covariance, np.float64)
        H_all = np.asarray(self.observation_matrix, np.float64)
        r_all = np.asarray(self.observation_variance, np.float64)
        mean = np.asarray(initial_mean, np.float64)
        cov = np.asarray(initial_covariance, np.float64)
        means, covs, increments = [], [], []
        for y in np.asarray(observations, np.float64):
            mean, cov = A @ mean, A @ cov @ A.T + Q
            seen = np.isfinite(y)
            H, r, y_seen = H_all[seen], r_all[seen], y[seen]
            innovation_cov = H @ cov @ H.T + np.diag(r)
            innovation = y_seen - H @ mean
            gain = np.linalg.solve(innovation_cov, H @ cov).T
            mean = mean + gain @ innovation
            # Joseph form keeps the covariance symmetric positive definite.
            identity_minus = np.eye(len(mean)) - gain @ H
            cov = identity_minus @ cov @ identity_minus.T + gain @ np.diag(r) @ gain.T
            _, logdet = np.linalg.slogdet(innovation_cov)
            quad = innovation @ np.linalg.solve(innovation_cov, innovation)
            increments.append(-0.5 * (quad + logdet + len(y_seen) * np.log(2 * np.pi)))
            means.append(mean)
            covs.append(cov)
        return KalmanResult(np.array(means), np.array(covs), np.array(increments))


def random_linear_gaussian_model(
    seed: int,
    state_dim: int = 8,
    observed: int | None = None,
    *,
    spectral_radius: float = 0.9,
    observation_variance: float = 0.25,
    dtype: DTypeLike | None = None,
) -> LinearGaussianModel:
    """A reproducible test model: a stable rotation-like ``A``, correlated ``Q``, partial ``H``.

    ``H`` observes ``observed`` components, even indices first (every other one by default).
    ``dtype`` defaults to JAX's default float (float64 only under ``jax_enable_x64``).
    """
    rng = np.random.default_rng(seed)
    d = state_dim
    observed = d // 2 if observed is None else observed
    if not 1 <= observed <= d:
        raise ValueError(f"observed must lie in [1, {d}], got {observed}")
    orthogonal, _ = np.linalg.qr(rng.normal(size=(d, d)))
    A = spectral_radius * orthogonal
    L = rng.normal(size=(d, d)) / np.sqrt(d)
    Q = 0.5 * (L @ L.T) + 0.2 * np.eye(d)
    H = np.zeros((observed, d))
    columns = [*range(0, d, 2), *range(1, d, 2)][:observed]
    H[np.arange(observed), columns] = 1.0
    r = np.full(observed, observation_variance)
    dtype = jnp.zeros(()).dtype if dtype is None else dtype
    return LinearGaussianModel(*(jnp.asarray(m.astype(dtype)) for m in (A, Q, H, r)))
