r"""Networks trained in another diffusion convention, as filtrax denoisers.

filtrax samples and guides in EDM's variance-exploding convention
:math:`x_\sigma = x + \sigma\varepsilon` with a denoiser
:math:`D(x_\sigma, \sigma, c) \approx \mathbb E[x \mid x_\sigma, c]`
(:mod:`filtrax.diffusion.denoisers`). Every Gaussian forward process of the form

.. math:: z_t = a_t\,x + b_t\,\varepsilon, \qquad \varepsilon \sim \mathcal N(0, I),

is the EDM one rescaled: :math:`z_t = a_t\,(x + \sigma\varepsilon) = a_t\,x_\sigma` with
:math:`\sigma = b_t / a_t` (the inverse square root of the signal-to-noise ratio, Kingma et
al. 2021). A network trained on :math:`z_t` is therefore evaluated at the time :math:`t(\sigma)`
with :math:`b_t/a_t = \sigma`, on the input :math:`a_t\,x_\sigma`, and its prediction is turned
into :math:`\hat x`. Each conversion below is linear in the network's output, so the *exact*
network of a convention (the conditional expectation of its target) gives the exact
denoiser :math:`\mathbb E[x \mid x_\sigma, c]`; ``tests/test_parameterisations.py`` checks
this against :class:`~filtrax.diffusion.denoisers.GaussianDenoiser` for every wrapper.

- :class:`VPDenoiser`, variance preserving (DDPM, VP-SDE), :math:`z_t = \alpha_t x +
  s_t\varepsilon` with :math:`\alpha_t^2 + s_t^2 = 1`: ε-prediction
  :math:`\hat x = x_\sigma - \sigma\hat\varepsilon`, v-prediction
  :math:`\hat x = \alpha_t^2 x_\sigma - s_t\hat v`, x-prediction
  the output itself; schedules :class:`LinearBetaVPSchedule`, :class:`CosineVPSchedule`,
  :class:`DiscreteVPSchedule`.
- :class:`VEDenoiser`, variance exploding (SMLD, VE-SDE), :math:`x_\sigma = x +
  \sigma\varepsilon`: ε-prediction :math:`\hat x = x_\sigma - \sigma\hat\varepsilon`,
  score :math:`\hat x = x_\sigma + \sigma^2\hat s`, x-prediction the output itself.
- :class:`FlowMatchingDenoiser`, flow matching, rectified flow and stochastic interpolants,
  :math:`z_t = a_t x + b_t\varepsilon`, velocity :math:`\hat u`:
  :math:`\hat x = (\dot b_t a_t x_\sigma - b_t\hat u)/(\dot b_t a_t - \dot a_t b_t)`;
  paths :class:`RectifiedFlowInterpolant`, :class:`CustomInterpolant`.
- EDM itself (Karras et al. 2022) is
  :class:`~filtrax.diffusion.denoisers.EDMPreconditionedDenoiser`.

Every wrapper calls ``network(inputs, time_or_noise, cond)`` once per call, for one
unbatched state, and is pure JAX (``jit``, ``vmap`` and ``jax.linearize`` go through it;
the guidance differentiates the denoiser with respect to its input).

References:
    Ho, Jain & Abbeel (2020), DDPM, arXiv:2006.11239.
    Song & Ermon (2019), NCSN (SMLD), arXiv:1907.05600.
    Song et al. (2021), score-based modelling through SDEs, arXiv:2011.13456, eq. 33 and
    Appendix B (VE and VP SDEs, linear β).
    Nichol & Dhariwal (2021), improved DDPM, arXiv:2102.09672, eq. 17 (cosine schedule).
    Kingma, Salimans, Poole & Ho (2021), variational diffusion models, arXiv:2107.00630.
    Salimans & Ho (2022), progressive distillation, arXiv:2202.00512, Section 4 (v).
    Karras et al. (2022), EDM, arXiv:2206.00364, Table 1 (VP and VE in EDM form).
    Lipman et al. (2023), flow matching, arXiv:2210.02747.
    Liu, Gong & Liu (2023), rectified flow, arXiv:2209.03003.
    Albergo & Vanden-Eijnden (2023), stochastic interpolants, arXiv:2209.15571; Albergo,
    Boffi & Vanden-Eijnden (2023), arXiv:2303.08797.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PyTree

from .._typing import State
from .denoisers import AbstractDenoiser

Network = Callable[[State, Float[Array, ""], PyTree], State]
ScalarFn = Callable[[Float[Array, ""]], Float[Array, ""]]

#: A VP network's target -> ``x̂(x_σ, σ, α_t, F)`` (the derivations are in VPDenoiser's docstring).
VP_CONVERSIONS: dict[str, Callable] = {
    "epsilon": lambda x_t, sigma, alpha, f: x_t - sigma * f,
    "v": lambda x_t, sigma, alpha, f: alpha**2 * x_t - (sigma * alpha) * f,
    "x": lambda x_t, sigma, alpha, f: f,
}
#: A VE network's target -> ``x̂(x_σ, σ, F)``.
VE_CONVERSIONS: dict[str, Callable] = {
    "epsilon": lambda x_t, sigma, f: x_t - sigma * f,
    "score": lambda x_t, sigma, f: x_t + sigma**2 * f,
    "x": lambda x_t, sigma, f: f,
}
#: A VE network's noise input ``c_noise(σ)``.
VE_NOISE_INPUT_MAPS: dict[str, Callable] = {"sigma": lambda sigma: sigma, "log_sigma": jnp.log}
VP_PREDICTIONS = tuple(VP_CONVERSIONS)
VE_PREDICTIONS = tuple(VE_CONVERSIONS)
VE_NOISE_INPUTS = tuple(VE_NOISE_INPUT_MAPS)


def _check_choice(owner: str, name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{owner}.{name} is {value!r}; expected one of {choices}")


def _check_positive(owner: str, name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{owner}.{name} is {value!r}; expected a finite positive number")


# --------------------------------------------------------------------------------------------
# Variance-preserving schedules: VP time t <-> EDM noise level σ = s_t / α_t.
# --------------------------------------------------------------------------------------------


class AbstractVPSchedule(eqx.Module):
    r"""A variance-preserving schedule :math:`z_t = \alpha_t x + s_t \varepsilon`,
    :math:`\alpha_t^2 + s_t^2 = 1`, seen through its EDM noise level.

    :math:`\sigma(t) = s_t/\alpha_t = \sqrt{1/\bar\alpha_t - 1}` with
    :math:`\bar\alpha_t = \alpha_t^2`; it increases with :math:`t`, and :meth:`time` is its
    inverse. The two coefficients follow from :math:`\sigma` alone:
    :math:`\alpha = 1/\sqrt{1+\sigma^2}`, :math:`s = \sigma\alpha`.
    """

    @abc.abstractmethod
    def sigma(self, t: Float[Array, ""]) -> Float[Array, ""]:
        r""":math:`\sigma(t) = s_t / \alpha_t` at the VP time ``t``."""

    @abc.abstractmethod
    def time(self, sigma: Float[Array, ""]) -> Float[Array, ""]:
        r"""The VP time :math:`t` with :math:`\sigma(t) =` ``sigma``, in ``sigma``'s dtype."""


class LinearBetaVPSchedule(AbstractVPSchedule):
    r"""The continuous VP SDE with a linear :math:`\beta(t) = \beta_\min + t(\beta_\max -
    \beta_\min)`, :math:`t \in [0, 1]` (Song et al. 2021, eq. 33; DDPM's schedule in the
    continuous limit).

    .. math::
        \log\alpha_t = -\tfrac14 t^2 (\beta_\max - \beta_\min) - \tfrac12 t\beta_\min,
        \qquad \sigma(t)^2 = \exp\!\big(\beta_\min t + \tfrac12(\beta_\max-\beta_\min)t^2\big) - 1,

    inverted in closed form with :math:`L = \log(1 + \sigma^2)`:

    .. math:: t = \frac{2L}{\beta_\min + \sqrt{\beta_\min^2 + 2(\beta_\max - \beta_\min)L}}

    (the root of :math:`\tfrac12\Delta\beta\,t^2 + \beta_\min t - L = 0`, written without
    cancellation). With the defaults, :math:`t = 1` is :math:`\sigma \approx 152`; larger
    :math:`\sigma` give :math:`t > 1` (the same formula, outside the trained range).
    """

    beta_min: float = eqx.field(static=True, default=0.1)
    beta_max: float = eqx.field(static=True, default=20.0)

    def __check_init__(self) -> None:
        _check_positive("LinearBetaVPSchedule", "beta_min", self.beta_min)
        if not (math.isfinite(self.beta_max) and self.beta_max >= self.beta_min):
            raise ValueError(
                f"LinearBetaVPSchedule.beta_max is {self.beta_max!r}; expected a finite "
                f"number >= beta_min = {self.beta_min}"
            )

    def sigma(self, t):
        t = jnp.asarray(t)
        integral = self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2
        return jnp.sqrt(jnp.expm1(integral))

    def time(self, sigma):
        sigma = jnp.asarray(sigma)
        integral = jnp.log1p(sigma**2)
        slope = self.beta_max - self.beta_min
        return (
            2.0 * integral / (self.beta_min + jnp.sqrt(self.beta_min**2 + 2.0 * slope * integral))
        )


class CosineVPSchedule(AbstractVPSchedule):
    r"""The cosine schedule of Nichol & Dhariwal (2021, eq. 17), continuous :math:`t \in [0, 1]`.

    .. math::
        \bar\alpha_t = \frac{\cos^2\theta_t}{\cos^2\theta_0}, \qquad
        \theta_t = \frac{t + s}{1 + s}\,\frac{\pi}{2},

    with offset :math:`s` (0.008). Then :math:`\sigma(t)^2 = 1/\bar\alpha_t - 1 =
    \sin(\theta_t - \theta_0)\sin(\theta_t + \theta_0)/\cos^2\theta_t`, which is ∞ at
    :math:`t = 1`, so every :math:`\sigma` has a time in :math:`[0, 1)`. The inverse solves
    :math:`\cos\theta_t = \cos\theta_0/\sqrt{1+\sigma^2}`; with
    :math:`r = \sqrt{\sin^2\theta_0 + \sigma^2}` (:math:`= \sqrt{1+\sigma^2}\sin\theta_t`) the
    angle difference is taken without cancellation,

    .. math::
        \theta_t - \theta_0 = \operatorname{atan2}\!\Big(\frac{\sigma^2\cos\theta_0}{r +
        \sin\theta_0},\; \cos^2\theta_0 + r\sin\theta_0\Big), \qquad
        t = (\theta_t - \theta_0)\,\frac{2(1+s)}{\pi}.

    The discrete DDPM variant (β clipped at 0.999) is a :class:`DiscreteVPSchedule`.
    """

    offset: float = eqx.field(static=True, default=0.008)

    def __check_init__(self) -> None:
        _check_positive("CosineVPSchedule", "offset", self.offset)

    def _angle(self, t):
        return (t + self.offset) / (1.0 + self.offset) * (math.pi / 2)

    def sigma(self, t):
        t = jnp.asarray(t)
        theta_0 = self._angle(0.0)
        theta = self._angle(t)
        step = t / (1.0 + self.offset) * (math.pi / 2)  # θ_t − θ_0
        return jnp.sqrt(jnp.sin(step) * jnp.sin(theta + theta_0)) / jnp.cos(theta)

    def time(self, sigma):
        sigma = jnp.asarray(sigma)
        theta_0 = self._angle(0.0)
        cos_0, sin_0 = math.cos(theta_0), math.sin(theta_0)
        r = jnp.sqrt(sin_0**2 + sigma**2)
        step = jnp.arctan2(sigma**2 * cos_0 / (r + sin_0), cos_0**2 + r * sin_0)
        return step * (2.0 * (1.0 + self.offset) / math.pi)


class DiscreteVPSchedule(AbstractVPSchedule):
    r"""A discrete DDPM schedule: a table :math:`\bar\alpha_0 > \dots > \bar\alpha_{N-1}`
    indexed by the network's integer timestep :math:`i = 0, \dots, N-1` (0-based, as most
    code bases feed it; DDPM's :math:`t = i + 1`).

    Table entry :math:`i` has :math:`\sigma_i = \sqrt{(1-\bar\alpha_i)/\bar\alpha_i}`. An
    arbitrary :math:`\sigma` lies between two entries, and the network receives the
    **fractional index obtained by interpolating linearly in** :math:`\log\sigma`:

    .. math::
        t(\sigma) = i + \frac{\log\sigma - \log\sigma_i}{\log\sigma_{i+1} - \log\sigma_i},
        \qquad \sigma_i \le \sigma \le \sigma_{i+1},

    exact at the table's levels, and clamped to :math:`[0, N-1]` outside
    :math:`[\sigma_0, \sigma_{N-1}]` (the network then sees its nearest trained time, while
    the input scaling :math:`\alpha = 1/\sqrt{1+\sigma^2}` stays exact). A network trained only
    on integer timesteps is assumed smooth in between; samplers whose grid is the table's own
    levels evaluate it at integer times only. :meth:`sigma` is the matching interpolation in
    the other direction.

    Attributes:
        log_sigmas: :math:`\log\sigma_i`, increasing, computed in float64 and stored in JAX's
            default float dtype at construction (build the schedule under
            ``jax.enable_x64`` for float64 runs).
    """

    log_sigmas: Float[Array, " steps"]

    def __init__(self, alphas_cumprod):
        alphas_cumprod = np.asarray(alphas_cumprod, dtype=np.float64)
        if alphas_cumprod.ndim != 1 or alphas_cumprod.shape[0] < 2:
            raise ValueError(
                f"DiscreteVPSchedule.alphas_cumprod must be 1-D with at least 2 entries, got "
                f"shape {alphas_cumprod.shape}"
            )
        if not (np.all(alphas_cumprod > 0) and np.all(alphas_cumprod < 1)):
            raise ValueError("DiscreteVPSchedule.alphas_cumprod must lie strictly in (0, 1)")
        if not np.all(np.diff(alphas_cumprod) < 0):
            raise ValueError("DiscreteVPSchedule.alphas_cumprod must be strictly decreasing")
        log_sigmas = 0.5 * np.log((1.0 - alphas_cumprod) / alphas_cumprod)
        self.log_sigmas = jnp.asarray(log_sigmas, dtype=jax.dtypes.canonicalize_dtype(np.float64))

    @classmethod
    def from_betas(cls, betas) -> DiscreteVPSchedule:
        r"""From the per-step variances: :math:`\bar\alpha_i = \prod_{j \le i}(1 - \beta_j)`."""
        return cls(np.cumprod(1.0 - np.asarray(betas, dtype=np.float64)))

    @classmethod
    def linear(
        cls, num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
    ) -> DiscreteVPSchedule:
        """DDPM's linear β schedule (Ho et al. 2020: 1000 steps, β from 1e-4 to 0.02)."""
        return cls.from_betas(np.linspace(beta_start, beta_end, num_steps))

    def _indices(self, dtype) -> Float[Array, " steps"]:
        return jnp.arange(self.log_sigmas.shape[0], dtype=dtype)

    def sigma(self, t):
        t = jnp.asarray(t)
        if not jnp.issubdtype(t.dtype, jnp.floating):  # an integer timestep interpolates too
            t = t.astype(self.log_sigmas.dtype)
        log_sigmas = self.log_sigmas.astype(t.dtype)
        return jnp.exp(jnp.interp(t, self._indices(t.dtype), log_sigmas))

    def time(self, sigma):
        sigma = jnp.asarray(sigma)
        log_sigmas = self.log_sigmas.astype(sigma.dtype)
        return jnp.interp(jnp.log(sigma), log_sigmas, self._indices(sigma.dtype))


class VPDenoiser(AbstractDenoiser):
    r"""A variance-preserving (DDPM / VP-SDE) network as an EDM denoiser.

    The network was trained on :math:`z_t = \alpha_t x + s_t\varepsilon`,
    :math:`\alpha_t^2 + s_t^2 = 1`. At EDM level :math:`\sigma` the matching time is
    :math:`t = t(\sigma)` (``schedule.time``, the inverse of :math:`\sigma = s_t/\alpha_t`),
    and :math:`z_t = \alpha_t x_\sigma` with

    .. math:: \alpha_t = \frac{1}{\sqrt{1+\sigma^2}}, \qquad s_t = \sigma\alpha_t.

    With :math:`F = ` ``network(α_t x_σ, time_scale · t, cond)``:

    - ``"epsilon"`` (Ho et al. 2020): :math:`\hat x = (z_t - s_t F)/\alpha_t = x_\sigma -
      \sigma F`;
    - ``"v"`` (Salimans & Ho 2022, :math:`v = \alpha_t\varepsilon - s_t x`):
      :math:`\hat x = \alpha_t z_t - s_t F = \alpha_t^2 x_\sigma - s_t F`, since
      :math:`\alpha_t(\alpha_t x + s_t\varepsilon) - s_t(\alpha_t\varepsilon - s_t x) = x`;
    - ``"x"`` (an :math:`x_0`-predictor): :math:`\hat x = F`.

    The coefficients are computed from :math:`\sigma`, not read off the schedule at
    :math:`t`: they agree wherever :meth:`AbstractVPSchedule.time` inverts exactly, and stay
    exact where a table clamps the time.

    Attributes:
        network: ``network(z_t, time, cond) -> prediction`` with the shape of ``z_t``.
        schedule: an :class:`AbstractVPSchedule` (:class:`LinearBetaVPSchedule`,
            :class:`CosineVPSchedule` or :class:`DiscreteVPSchedule`).
        prediction: ``"epsilon"`` (default), ``"v"`` or ``"x"``.
        time_scale: the network receives ``time_scale * t`` (e.g. 999 or 1000 for
            continuous-time models trained on scaled times; 1 for a discrete table's index).

    References:
        Ho et al. (2020); Song et al. (2021); Salimans & Ho (2022); Karras et al. (2022),
        Table 1.
    """

    network: Network
    schedule: AbstractVPSchedule
    prediction: str = eqx.field(static=True, default="epsilon")
    time_scale: float = eqx.field(static=True, default=1.0)

    def __check_init__(self) -> None:
        _check_choice("VPDenoiser", "prediction", self.prediction, VP_PREDICTIONS)
        _check_positive("VPDenoiser", "time_scale", self.time_scale)

    def __call__(self, x_t: State, sigma: Float[ArrayLike, ""], cond: PyTree) -> State:
        sigma = jnp.asarray(sigma, dtype=x_t.dtype)
        alpha = 1.0 / jnp.sqrt(1.0 + sigma**2)
        time = self.time_scale * self.schedule.time(sigma)
        prediction = self.network(alpha * x_t, time, cond)
        return VP_CONVERSIONS[self.prediction](x_t, sigma, alpha, prediction)


class VEDenoiser(AbstractDenoiser):
    r"""A variance-exploding (SMLD / NCSN / VE-SDE) network as an EDM denoiser.

    The forward process is already EDM's, :math:`x_\sigma = x + \sigma\varepsilon` (Song &
    Ermon 2019; Song et al. 2021), so the network sees :math:`x_\sigma` unscaled. With
    :math:`F = ` ``network(x_σ, c_noise, cond)``, :math:`c_\text{noise} = \sigma` or
    :math:`\log\sigma`:

    - ``"epsilon"``: :math:`\hat x = x_\sigma - \sigma F`;
    - ``"score"`` (:math:`\nabla\log p_\sigma(x_\sigma) = -\mathbb E[\varepsilon\mid
      x_\sigma]/\sigma`, Tweedie): :math:`\hat x = x_\sigma + \sigma^2 F`;
    - ``"x"``: :math:`\hat x = F`.

    Networks that take a discrete σ index, or that output the score times σ, are wrapped by
    the user first (``lambda x, c, cond: net(x, index_of(c), cond)``; a score times σ is
    :math:`-\hat\varepsilon`).

    Attributes:
        network: ``network(x_sigma, c_noise, cond) -> prediction`` with the shape of ``x``.
        prediction: ``"epsilon"`` (default), ``"x"`` or ``"score"``.
        noise_input: ``"sigma"`` (default) or ``"log_sigma"``.

    References:
        Song & Ermon (2019); Song et al. (2021); Karras et al. (2022), Table 1.
    """

    network: Network
    prediction: str = eqx.field(static=True, default="epsilon")
    noise_input: str = eqx.field(static=True, default="sigma")

    def __check_init__(self) -> None:
        _check_choice("VEDenoiser", "prediction", self.prediction, VE_PREDICTIONS)
        _check_choice("VEDenoiser", "noise_input", self.noise_input, VE_NOISE_INPUTS)

    def __call__(self, x_t: State, sigma: Float[ArrayLike, ""], cond: PyTree) -> State:
        sigma = jnp.asarray(sigma, dtype=x_t.dtype)
        prediction = self.network(x_t, VE_NOISE_INPUT_MAPS[self.noise_input](sigma), cond)
        return VE_CONVERSIONS[self.prediction](x_t, sigma, prediction)


# --------------------------------------------------------------------------------------------
# Flow matching / rectified flow / stochastic interpolants: z_t = a_t x + b_t ε.
# --------------------------------------------------------------------------------------------


class AbstractInterpolant(eqx.Module):
    r"""A Gaussian interpolant :math:`z_t = a_t x + b_t\varepsilon` between data and noise.

    Its EDM noise level is :math:`\sigma(t) = b_t/a_t`, monotone in :math:`t`; :meth:`time`
    inverts it.
    """

    @abc.abstractmethod
    def coefficients(self, t: Float[Array, ""]) -> tuple[Float[Array, ""], ...]:
        r""":math:`(a_t, b_t, \dot a_t, \dot b_t)` at time ``t``."""

    @abc.abstractmethod
    def time(self, sigma: Float[Array, ""]) -> Float[Array, ""]:
        r"""The time :math:`t` with :math:`b_t/a_t =` ``sigma``, in ``sigma``'s dtype."""


class RectifiedFlowInterpolant(AbstractInterpolant):
    r"""The straight (rectified-flow / optimal-transport) path, :math:`t \in [0, 1]`.

    - ``data_at_zero=True`` (Liu et al. 2023; Esser et al. 2024, SD3): :math:`z_t = (1-t)x +
      t\varepsilon`, data at :math:`t = 0`; :math:`\sigma = t/(1-t)`,
      :math:`t = \sigma/(1+\sigma)`.
    - ``data_at_zero=False`` (Lipman et al. 2023 with :math:`\sigma_\min = 0`):
      :math:`z_t = t x + (1-t)\varepsilon`, data at :math:`t = 1`; :math:`\sigma = (1-t)/t`,
      :math:`t = 1/(1+\sigma)`.

    For another path (a :math:`\sigma_\min > 0`, a trigonometric interpolant) use
    :class:`CustomInterpolant`.
    """

    data_at_zero: bool = eqx.field(static=True, default=True)

    def coefficients(self, t):
        t = jnp.asarray(t)
        one = jnp.ones_like(t)
        if self.data_at_zero:
            return 1.0 - t, t, -one, one
        return t, 1.0 - t, one, -one

    def time(self, sigma):
        sigma = jnp.asarray(sigma)
        return sigma / (1.0 + sigma) if self.data_at_zero else 1.0 / (1.0 + sigma)


def _derivative(fn: ScalarFn, t: Float[Array, ""]) -> Float[Array, ""]:
    return jax.jvp(fn, (t,), (jnp.ones_like(t),))[1]


class CustomInterpolant(AbstractInterpolant):
    r"""A general interpolant :math:`z_t = a_t x + b_t\varepsilon` from scalar callables.

    ``data_coefficient`` is :math:`t \mapsto a_t` and ``noise_coefficient`` is
    :math:`t \mapsto b_t`, both pure JAX. Their derivatives :math:`\dot a_t, \dot b_t` are
    given, or taken by forward-mode autodiff (``jax.jvp``). The inverse :math:`t(\sigma)` of
    :math:`\sigma = b_t/a_t` is ``time_of_sigma`` when given; otherwise it is found by
    ``bisection_steps`` bisection steps on :math:`[t_\min, t_\max]`, with :math:`b_t/a_t`
    assumed monotone there (either direction; the bisection result carries no derivative
    with respect to :math:`\sigma`, which the samplers and guidance never need).

    Example (the trigonometric interpolant of Albergo & Vanden-Eijnden 2023, data at 0):
    ``CustomInterpolant(lambda t: jnp.cos(jnp.pi * t / 2), lambda t: jnp.sin(jnp.pi * t / 2))``.

    Attributes:
        data_coefficient, noise_coefficient: :math:`a_t`, :math:`b_t`.
        data_coefficient_derivative, noise_coefficient_derivative: :math:`\dot a_t`,
            :math:`\dot b_t`, or ``None`` for autodiff.
        time_of_sigma: :math:`\sigma \mapsto t`, or ``None`` for bisection.
        t_min, t_max: the time interval the bisection searches.
        bisection_steps: the number of halvings (64 reaches float64 round-off on [0, 1]).
    """

    data_coefficient: ScalarFn = eqx.field(static=True)
    noise_coefficient: ScalarFn = eqx.field(static=True)
    data_coefficient_derivative: ScalarFn | None = eqx.field(static=True, default=None)
    noise_coefficient_derivative: ScalarFn | None = eqx.field(static=True, default=None)
    time_of_sigma: ScalarFn | None = eqx.field(static=True, default=None)
    t_min: float = eqx.field(static=True, default=0.0)
    t_max: float = eqx.field(static=True, default=1.0)
    bisection_steps: int = eqx.field(static=True, default=64)

    def __check_init__(self) -> None:
        if (
            not (math.isfinite(self.t_min) and math.isfinite(self.t_max))
            or self.t_min >= self.t_max
        ):
            raise ValueError(
                f"CustomInterpolant: t_min = {self.t_min!r} and t_max = {self.t_max!r}; expected "
                f"finite t_min < t_max"
            )
        if self.bisection_steps < 1:
            raise ValueError(
                f"CustomInterpolant.bisection_steps is {self.bisection_steps!r}; expected >= 1"
            )

    def coefficients(self, t):
        t = jnp.asarray(t)
        a_fn, b_fn = self.data_coefficient, self.noise_coefficient
        a_dot_fn, b_dot_fn = self.data_coefficient_derivative, self.noise_coefficient_derivative
        a_dot = _derivative(a_fn, t) if a_dot_fn is None else a_dot_fn(t)
        b_dot = _derivative(b_fn, t) if b_dot_fn is None else b_dot_fn(t)
        return tuple(jnp.asarray(c, dtype=t.dtype) for c in (a_fn(t), b_fn(t), a_dot, b_dot))

    def _ratio(self, t):
        a, b, _, _ = self.coefficients(t)
        return b / a

    def time(self, sigma):
        sigma = jnp.asarray(sigma)
        if self.time_of_sigma is not None:
            return jnp.asarray(self.time_of_sigma(sigma), dtype=sigma.dtype)
        lower = jnp.asarray(self.t_min, dtype=sigma.dtype)
        upper = jnp.asarray(self.t_max, dtype=sigma.dtype)
        # Direction from cross products, not ratios: a coefficient that should vanish at an
        # end may round to a tiny negative number there (cos(π/2) in float32).
        a_lower, b_lower, _, _ = self.coefficients(lower)
        a_upper, b_upper, _, _ = self.coefficients(upper)
        increasing = b_upper * a_lower > b_lower * a_upper

        def halve(_, bounds):
            lo, hi = bounds
            mid = 0.5 * (lo + hi)
            # σ(mid) below the target: the root is on the noisier side of mid.
            move_lower = (self._ratio(mid) < sigma) == increasing
            return jnp.where(move_lower, mid, lo), jnp.where(move_lower, hi, mid)

        lower, upper = jax.lax.fori_loop(0, self.bisection_steps, halve, (lower, upper))
        return 0.5 * (lower + upper)


class FlowMatchingDenoiser(AbstractDenoiser):
    r"""A flow-matching / rectified-flow / stochastic-interpolant velocity network as an EDM
    denoiser.

    The network was trained to regress the velocity of :math:`z_t = a_t x + b_t\varepsilon`,
    :math:`u_t = \dot a_t x + \dot b_t\varepsilon` (Lipman et al. 2023; Liu et al. 2023;
    Albergo & Vanden-Eijnden 2023), so the exact network is :math:`\mathbb E[u_t\mid z_t]`.
    At EDM level :math:`\sigma`: :math:`t = t(\sigma)` solves :math:`b_t/a_t = \sigma`, and
    :math:`z_t = a_t x_\sigma`. Solving the two linear equations

    .. math:: z_t = a_t x + b_t\varepsilon, \qquad u_t = \dot a_t x + \dot b_t\varepsilon

    for :math:`x` (eliminate :math:`\varepsilon = (z_t - a_t x)/b_t`:
    :math:`b_t u_t = \dot a_t b_t x + \dot b_t z_t - \dot b_t a_t x`) gives

    .. math::
        \hat x = \frac{\dot b_t z_t - b_t\hat u}{\dot b_t a_t - \dot a_t b_t}
               = \frac{\dot b_t a_t x_\sigma - b_t\hat u}{\dot b_t a_t - \dot a_t b_t},

    with :math:`\hat u = ` ``network(a_t x_σ, time_scale · t, cond)``; linear in
    :math:`\hat u`, hence exact for the exact velocity. The denominator is
    :math:`a_t^2\,\mathrm d\sigma/\mathrm dt`, non-zero on a monotone path. For rectified flow
    with data at 0 it is 1 and :math:`\hat x = z_t - t\hat u`.

    Attributes:
        network: ``network(z_t, time, cond) -> velocity`` with the shape of ``z_t``.
        interpolant: an :class:`AbstractInterpolant` (default
            ``RectifiedFlowInterpolant(data_at_zero=True)``).
        time_scale: the network receives ``time_scale * t`` (e.g. 1000 for SD3-style models).

    References:
        Lipman et al. (2023); Liu, Gong & Liu (2023); Albergo & Vanden-Eijnden (2023);
        Albergo, Boffi & Vanden-Eijnden (2023).
    """

    network: Network
    interpolant: AbstractInterpolant = eqx.field(default_factory=RectifiedFlowInterpolant)
    time_scale: float = eqx.field(static=True, default=1.0)

    def __check_init__(self) -> None:
        _check_positive("FlowMatchingDenoiser", "time_scale", self.time_scale)

    def __call__(self, x_t: State, sigma: Float[ArrayLike, ""], cond: PyTree) -> State:
        sigma = jnp.asarray(sigma, dtype=x_t.dtype)
        t = self.interpolant.time(sigma)
        a, b, a_dot, b_dot = (
            jnp.asarray(c, dtype=x_t.dtype) for c in self.interpolant.coefficients(t)
        )
        velocity = self.network(a * x_t, self.time_scale * t, cond)
        return ((b_dot * a) * x_t - b * velocity) / (b_dot * a - a_dot * b)
