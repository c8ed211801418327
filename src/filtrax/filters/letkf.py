r"""The local ensemble transform Kalman filter (LETKF), as one ensemble transform per site.

Hunt, Kostelich & Szunyogh (2007) compute the analysis at each site :math:`g` in the
space spanned by the N forecast members. With :math:`\hat Y` the ``(N, M)`` anomalies of
the members' predicted observations, :math:`d = y - \bar y` the innovation of their mean
and :math:`R_g^{-1} = \mathrm{diag}(\rho_{gm}/\sigma_m^2)` the observation precision
tapered by the locality :math:`\rho_{gm} \in [0, 1]` of observation :math:`m` to the site
(R-localisation, their §2.3, with a Gaspari–Cohn :math:`\rho`), their eqs. (20)–(24) read

.. math::
    \tilde P_g = \bigl[(N-1) I/\rho + \hat Y R_g^{-1} \hat Y^\top\bigr]^{-1},\quad
    \bar w_g = \tilde P_g \hat Y R_g^{-1} d,\quad
    W_g = \bigl[(N-1)\tilde P_g\bigr]^{1/2},

with multiplicative prior covariance inflation :math:`\rho` (their eq. 21) and the symmetric
square root, which keeps the analysis anomalies centred. Member :math:`i`'s analysis at the
site is :math:`\bar x + \sum_j (\bar w_j + W_{ji}) (x_j - \bar x)`. Relaxation to prior
perturbations (RTPP; Zhang, Snyder & Sun 2004) replaces :math:`W` by
:math:`(1-\alpha)W + \alpha I`.

The covariance factor is :math:`\rho = \lambda^2` for the anomaly factor :math:`\lambda` that
every filter's :class:`~filtrax.filters.inflation.AbstractInflation` chooses
(:math:`x_i \leftarrow \bar x + \lambda(x_i - \bar x)` multiplies the sample covariance by
:math:`\lambda^2`), so the LETKF takes the same strategies as the EnKF and the particle filters,
the innovation-based one included.

Every member's analysis is thus a fixed linear combination of the forecast members,
:math:`x^a_i = \sum_k A_{g,ik} x^f_k`, the same for every variable and level of the site.
:func:`letkf_transforms` returns the matrices :math:`A_g`; :func:`apply_transforms` applies
them. Because the analysis never needs the state itself, it applies unchanged to a model's
full state (e.g. dinosaur's vorticity, divergence, temperature and log surface pressure on its
Gaussian grid) whose observations are of a coarser, derived state.

Without localisation (locality 1 everywhere) and with :math:`\rho = 1` the analysis mean and
sample covariance are exactly the Kalman filter's for the forecast's sample covariance,
:math:`\bar x^a = \bar x + K(y - H\bar x)` and :math:`P^a = (I - KH)P` with
:math:`K = PH^\top(HPH^\top + R)^{-1}`, for a linear :math:`H` (tested).

Reference:
    Hunt, Kostelich & Szunyogh (2007), "Efficient data assimilation for spatiotemporal chaos:
    a local ensemble transform Kalman filter", Physica D 230, 112–126.
    Zhang, Snyder & Sun (2004), "Impacts of initial estimate and observation availability on
    convective-scale data assimilation with an ensemble Kalman filter", Mon. Wea. Rev. 132,
    1238–1253.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .._typing import Scalar, is_traced, tunable_leaf
from ..observations.model import ObservationModel, observation_mask
from .covariance_localisation import GaspariCohnLocalisation
from .inflation import AbstractInflation, FixedInflation, as_inflation
from .particle import (
    FilterState,
    UnguidedEnsembleFilter,
    _propagate,
    num_particles_of,
    particle_keys,
)


def _check(name: str, value: float, lower: float, upper: float) -> None:
    if not (math.isfinite(value) and lower <= value <= upper):
        raise ValueError(
            f"letkf_transforms: {name} = {value!r}; expected a value in [{lower}, {upper}]"
        )


def letkf_transforms(
    predicted: Float[ArrayLike, "members obs"],
    observations: Float[ArrayLike, " obs"],
    error_std: Float[ArrayLike, " obs"],
    locality: Float[ArrayLike, "sites obs"],
    *,
    inflation: float | Scalar = 1.0,
    relaxation: ArrayLike = 0.0,
) -> Float[Array, "sites members members"]:
    r"""The LETKF's analysis transforms :math:`A_g` (module docstring), one per site.

    Args:
        predicted: each forecast member's predicted observations :math:`h(x_i)`.
        observations: :math:`y`.
        error_std: :math:`\sigma_m` (positive).
        locality: :math:`\rho_{gm}`: how much observation m counts at site g (0 ignores it).
        inflation: the prior covariance factor :math:`\rho \ge 1` (Hunt et al.'s
            :math:`\rho`; :math:`\lambda^2` for an anomaly factor λ). When it is traced (an
            adaptive λ) it is not checked here.
        relaxation: RTPP coefficient :math:`\alpha \in [0, 1]`.

    Returns:
        ``(sites, N, N)``: member i's analysis at site g is ``A[g, i] @ forecast[:, g]``.
    """
    predicted = jnp.asarray(predicted)
    num_members, num_obs = predicted.shape
    if num_members < 2:
        raise ValueError(f"letkf_transforms: {num_members} member(s); expected at least 2")
    for name, array, shape in (
        ("observations", observations, (num_obs,)),
        ("error_std", error_std, (num_obs,)),
    ):
        if tuple(jnp.shape(array)) != shape:
            raise ValueError(
                f"letkf_transforms: {name} has shape {tuple(jnp.shape(array))}; expected "
                f"{shape} (one per column of predicted, shape {tuple(predicted.shape)})"
            )
    if jnp.ndim(locality) != 2 or jnp.shape(locality)[1] != num_obs:
        raise ValueError(
            f"letkf_transforms: locality has shape {tuple(jnp.shape(locality))}; expected "
            f"(sites, {num_obs})"
        )
    if not is_traced(inflation):
        _check("inflation", float(inflation), 1.0, math.inf)
    if not is_traced(relaxation):
        _check("relaxation", float(np.asarray(relaxation)), 0.0, 1.0)
    dtype = predicted.dtype
    mean = predicted.mean(axis=0)
    anomalies = predicted - mean[None, :]
    innovation = jnp.asarray(observations, dtype) - mean
    precision = jnp.asarray(locality, dtype) / (jnp.asarray(error_std, dtype) ** 2)[None, :]
    eye = jnp.eye(num_members, dtype=dtype)
    average = jnp.full_like(eye, 1.0 / num_members)
    centring = eye - average

    def one_site(site_precision):
        weighted = anomalies * site_precision[None, :]  # \hat Y R^{-1}
        gram = weighted @ anomalies.T + (num_members - 1) / inflation * eye
        eigenvalues, eigenvectors = jnp.linalg.eigh(gram)
        # \tilde P and [(N-1) \tilde P]^{1/2} from one eigendecomposition of a symmetric
        # positive definite matrix (its eigenvalues are >= (N-1)/inflation > 0).
        p_tilde = (eigenvectors / eigenvalues[None, :]) @ eigenvectors.T
        root = (eigenvectors * jnp.sqrt((num_members - 1) / eigenvalues)[None, :]) @ eigenvectors.T
        mean_weights = p_tilde @ (weighted @ innovation)
        kept = jnp.asarray(relaxation, dtype)
        root = (1.0 - kept) * root + kept * eye
        combination = mean_weights[:, None] + root  # C[j, i] = \bar w_j + W_{ji}
        return average + combination.T @ centring

    return jax.vmap(one_site)(precision)


def apply_transforms(transforms: Float[Array, "sites members members"], forecast: Array) -> Array:
    """Members' analyses: ``forecast`` has the member axis first and the flattened sites
    last (any axes between, e.g. variable and level, share each site's transform)."""
    num_sites, num_members, _ = transforms.shape
    if forecast.shape[0] != num_members or forecast.shape[-1] != num_sites:
        raise ValueError(
            f"apply_transforms: forecast has shape {tuple(forecast.shape)}; expected "
            f"({num_members}, ..., {num_sites}) for {num_members} members and {num_sites} sites"
        )
    return jnp.einsum("gik,k...g->i...g", transforms.astype(forecast.dtype), forecast)


def local_analysis(
    frames: Array,
    y: Array,
    observation_model: ObservationModel,
    localisation: GaspariCohnLocalisation | None,
    *,
    inflation: float | Scalar = 1.0,
    relaxation: ArrayLike = 0.0,
    likelihood_power: ArrayLike | None = None,
    predicted: Array | None = None,
) -> Array:
    r"""The LETKF's analysis of forecast ``frames`` (members first) given ``y``.

    Every channel of a grid column shares its site's transform; the observations are
    tapered by the localisation's
    :meth:`~filtrax.filters.covariance_localisation.GaspariCohnLocalisation.site_locality`,
    or one global transform is used without localisation (the ETKF). A NaN in ``y`` gives
    that observation zero weight (zero locality everywhere and a finite stand-in value).
    ``inflation`` is the covariance factor ρ of :func:`letkf_transforms`.

    ``likelihood_power`` :math:`\gamma \in [0, 1]` assimilates :math:`p(y\mid x)^\gamma`,
    the likelihood with error variances :math:`R/\gamma`, by scaling every precision
    :math:`\rho_{gm}/\sigma_m^2` by γ; γ = 0 gives the identity transform, to round-off (what a
    particle filter's tempering left out, :mod:`.hybrid`).

    ``predicted`` (members first) are the observations the transforms are computed from,
    :math:`h(x_i)` of the ``frames`` by default. Given other predictions :math:`\hat y_i`, the
    transforms of the ensemble :math:`\hat y_i` are applied to ``frames``: the analysis
    regresses the frames on :math:`\hat y`
    (:class:`~filtrax.filters.hybrid.PredictiveKalmanUpdate`).
    """
    n = frames.shape[0]
    if predicted is None:
        predicted = jax.vmap(observation_model.predict)(frames)
    mask = observation_mask(y)
    observed = jnp.where(mask, y, predicted.mean(axis=0))
    error_std = jnp.sqrt(jnp.where(mask, observation_model.noise_variance, 1.0))
    if localisation is None:
        locality = mask[None, :].astype(frames.dtype)
        site_frames = frames.reshape(n, -1, 1)
    else:
        locality = localisation.site_locality(observation_model, frames[0])
        locality = jnp.where(mask[None, :], locality, 0.0)
        site_frames = frames.reshape(n, -1, locality.shape[0])
    if likelihood_power is not None:
        locality = locality * jnp.asarray(likelihood_power, locality.dtype)
    transforms = letkf_transforms(
        predicted, observed, error_std, locality, inflation=inflation, relaxation=relaxation
    )
    return apply_transforms(transforms, site_frames).reshape(frames.shape)


class LocalEnsembleTransformKalmanFilter(UnguidedEnsembleFilter):
    r"""The LETKF whose forecast is the diffusion emulator's ensemble (a baseline).

    Each member is propagated with the unguided emulator, as in
    :class:`~filtrax.filters.enkf.EnsembleKalmanFilter`; the analysis is then
    :func:`local_analysis`: :func:`letkf_transforms` at every site of the frame. Only the
    emulator's new frame is updated; the state is rebuilt with
    :meth:`~filtrax.emulators._base.AbstractEmulator.advance`. The update is deterministic:
    the key only drives the forecast.

    Attributes:
        proposal: an unguided :class:`EmulatorProposal` (the forecast).
        inflation: an :class:`~filtrax.filters.inflation.AbstractInflation` choosing the
            anomaly factor :math:`\lambda \ge 1` of the forecast (a number means
            :class:`~filtrax.filters.inflation.FixedInflation`); the analysis uses the
            covariance factor :math:`\rho = \lambda^2`, and ``metrics.inflation`` records λ.
        relaxation: RTPP coefficient :math:`\alpha \in [0, 1]`.
        localisation: Gaspari–Cohn R-localisation, or ``None`` for the global ETKF.
    """

    inflation: AbstractInflation = eqx.field(
        default=FixedInflation(), converter=as_inflation("LocalEnsembleTransformKalmanFilter")
    )
    # An array leaf: sweeping it reuses the compiled cycle.
    relaxation: ArrayLike = eqx.field(default=0.0, converter=tunable_leaf)
    localisation: GaspariCohnLocalisation | None = None

    def __check_init__(self) -> None:
        if is_traced(self.relaxation):
            return
        relaxation = float(np.asarray(self.relaxation))
        if not 0.0 <= relaxation <= 1.0:
            raise ValueError(
                f"LocalEnsembleTransformKalmanFilter.relaxation = {relaxation!r}; expected "
                f"a value in [0, 1]"
            )

    def step(self, state, y, observation_model, key):
        particles = state.particles
        n = num_particles_of(particles)
        if n < 2:
            raise ValueError(
                f"LocalEnsembleTransformKalmanFilter needs at least 2 members, got {n}"
            )
        keys = particle_keys(key, n)
        forecast = _propagate(
            self.proposal, keys, particles, y, observation_model, self.particle_map
        )
        frames = jax.vmap(self.emulator.current_frame)(forecast)
        predicted = jax.vmap(observation_model.predict)(frames)
        # λ from the forecast's own predictions (compiled away when fixed); ρ = λ².
        inflation = self.inflation.factor(predicted, y, observation_model)
        analysis = local_analysis(
            frames, y, observation_model, self.localisation,
            inflation=jnp.square(inflation), relaxation=self.relaxation, predicted=predicted,
        )  # fmt: skip
        new_particles = self.particle_map.constrain(
            jax.vmap(self.emulator.advance)(particles, analysis)
        )
        diagnostics = self._unweighted_diagnostics(
            new_particles,
            state.log_weights.dtype,
            observation_model.num_observations,
            inflation,
        )
        return FilterState(new_particles, state.log_weights, state.cycle + 1), diagnostics
