r"""Samplers of the reverse diffusion, each usable with *any* denoiser.

Everything is in the EDM/VE parameterisation :math:`\sigma(t) = t`, where the
probability-flow ODE reads

.. math:: \frac{\mathrm d z}{\mathrm d\sigma} = \frac{z - D(z, \sigma, c)}{\sigma}.

A sampler starts from :math:`z_0 = \sigma_0 \varepsilon` on a descending grid
:math:`\sigma_0 > \dots > \sigma_{n-1} > \sigma_n = 0` and returns a sample of
:math:`p(x \mid c)`. Passing a *posterior* denoiser (see :mod:`filtrax.guidance`) turns
every sampler into a posterior sampler: samplers know nothing about guidance.

Each sampler exposes ``num_denoiser_calls``, the exact number of denoiser evaluations
per sample, used for the cost accounting of the filters.

References:
    Karras et al. (2022), arXiv:2206.00364 (Euler and Heun, Alg. 1).
    Song, Meng & Ermon (2021), DDIM, arXiv:2010.02502; the η-family in VE form as in
    the FA-APF code and azula.
    Lu et al. (2022), DPM-Solver++, arXiv:2211.01095; GenCast's 2S variant with
    stochastic churn, Price et al. (2024).
    Savary, Rozet & Louppe (2025), Adams–Bashforth + Langevin corrector.
"""

from __future__ import annotations

import abc
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PyTree

from .._typing import Key, State, is_traced
from .denoisers import AbstractDenoiser
from .noise_levels import karras_noise_levels

NoiseFn = Callable[[Key, State], State]


def standard_normal_noise(key: Key, template: State) -> State:
    """I.i.d. unit Gaussian noise with the shape and dtype of ``template``."""
    return jax.random.normal(key, template.shape, template.dtype)


def _check_levels(noise_levels: ArrayLike) -> None:
    levels = jnp.asarray(noise_levels)
    if levels.ndim != 1 or levels.shape[0] < 2:
        raise ValueError(
            f"noise_levels must be a 1-D grid with at least 2 entries, got shape {levels.shape}"
        )
    if is_traced(levels):
        return
    if float(levels[-1]) != 0.0:
        raise ValueError(f"noise_levels must end with 0, got last level {float(levels[-1])}")
    if not bool(jnp.all(jnp.diff(levels) < 0)):
        raise ValueError("noise_levels must be strictly decreasing")


class AbstractSampler(eqx.Module):
    """A reverse-diffusion sampler for one unbatched state.

    ``noise_levels`` is the descending grid ending at 0 (see
    :func:`filtrax.diffusion.karras_noise_levels`).
    """

    noise_levels: eqx.AbstractVar[Float[Array, " levels"]]

    @property
    def num_steps(self) -> int:
        """``n``, the number of non-zero noise levels."""
        return int(self.noise_levels.shape[0]) - 1

    @property
    @abc.abstractmethod
    def num_denoiser_calls(self) -> int:
        """The exact number of denoiser evaluations per sample."""

    @abc.abstractmethod
    def sample(
        self,
        denoiser: AbstractDenoiser,
        cond: PyTree,
        template: State,
        *,
        key: Key,
        noise: NoiseFn = standard_normal_noise,
    ) -> State:
        """Draw one sample of ``p(x | cond)`` with the shape and dtype of ``template``."""

    def _initial(self, template: State, key: Key, noise: NoiseFn) -> State:
        sigma_0 = self.noise_levels[0].astype(template.dtype)
        return sigma_0 * noise(key, template)


class EulerSampler(AbstractSampler):
    """Euler steps on the probability-flow ODE (``n`` denoiser calls)."""

    noise_levels: Float[Array, " levels"]

    def __check_init__(self) -> None:
        _check_levels(self.noise_levels)

    @property
    def num_denoiser_calls(self) -> int:
        return self.num_steps

    def sample(self, denoiser, cond, template, *, key, noise=standard_normal_noise):
        levels = self.noise_levels.astype(template.dtype)

        def step(z, i):
            sigma, sigma_next = levels[i], levels[i + 1]
            slope = (z - denoiser(z, sigma, cond)) / sigma
            return z + (sigma_next - sigma) * slope, None

        z, _ = jax.lax.scan(step, self._initial(template, key, noise), jnp.arange(self.num_steps))
        return z


class HeunSampler(AbstractSampler):
    """Heun's second-order method on the probability-flow ODE, Euler on the last step.

    ``2n - 1`` denoiser calls (Karras et al. 2022, Alg. 1 with no churn).
    """

    noise_levels: Float[Array, " levels"]

    def __check_init__(self) -> None:
        _check_levels(self.noise_levels)

    @property
    def num_denoiser_calls(self) -> int:
        return 2 * self.num_steps - 1

    def sample(self, denoiser, cond, template, *, key, noise=standard_normal_noise):
        levels = self.noise_levels.astype(template.dtype)

        def step(z, i):
            sigma, sigma_next = levels[i], levels[i + 1]
            slope = (z - denoiser(z, sigma, cond)) / sigma
            z_euler = z + (sigma_next - sigma) * slope
            slope_next = (z_euler - denoiser(z_euler, sigma_next, cond)) / sigma_next
            return z + (sigma_next - sigma) * 0.5 * (slope + slope_next), None

        z = self._initial(template, key, noise)
        z, _ = jax.lax.scan(step, z, jnp.arange(self.num_steps - 1))
        # Last step to σ = 0: the Euler step lands exactly on D(z, σ_{n-1}).
        return denoiser(z, levels[-2], cond)


class DDIMSampler(AbstractSampler):
    r"""The η-family of the poster: DDIM-η in VE form (``n`` denoiser calls).

    From :math:`\sigma_t` to :math:`\sigma_s < \sigma_t`, with :math:`\hat x = D(z_t, \sigma_t)`,

    .. math::
        \tau = \operatorname{clip}\big(\eta (1 - \sigma_s^2/\sigma_t^2), 0, 1\big), \quad
        z_s = \hat x + \sigma_s\sqrt{1-\tau}\,\frac{z_t - \hat x}{\sigma_t}
              + \sigma_s \sqrt{\tau}\,\varepsilon .

    η = 0 is the probability-flow ODE (deterministic DDIM, which equals the Euler step);
    η = 1 is the ancestral sampler of the reverse SDE (DDPM).

    Attributes:
        noise_levels: the descending grid ending at 0.
        eta: the stochasticity η ≥ 0 (an array leaf: changing it does not recompile).
    """

    noise_levels: Float[Array, " levels"]
    eta: Float[Array, ""] = eqx.field(default=1.0, converter=jnp.asarray)

    def __check_init__(self) -> None:
        _check_levels(self.noise_levels)
        if not is_traced(self.eta) and not float(self.eta) >= 0:
            raise ValueError(f"DDIMSampler.eta must be >= 0, got {float(self.eta)}")

    @property
    def num_denoiser_calls(self) -> int:
        return self.num_steps

    def sample(self, denoiser, cond, template, *, key, noise=standard_normal_noise):
        levels = self.noise_levels.astype(template.dtype)
        eta = self.eta.astype(template.dtype)

        def step(z, i):
            sigma_t, sigma_s = levels[i], levels[i + 1]
            x_hat = denoiser(z, sigma_t, cond)
            tau = jnp.clip(eta * (1.0 - (sigma_s / sigma_t) ** 2), 0.0, 1.0)
            eps = noise(jax.random.fold_in(key, i + 1), template)
            z_next = (
                x_hat
                + sigma_s * jnp.sqrt(1.0 - tau) * (z - x_hat) / sigma_t
                + sigma_s * jnp.sqrt(tau) * eps
            )
            return z_next, None

        z0 = self._initial(template, jax.random.fold_in(key, 0), noise)
        z, _ = jax.lax.scan(step, z0, jnp.arange(self.num_steps))
        return z


class DPMSolverPlusPlus2SSampler(AbstractSampler):
    r"""DPM-Solver++(2S) with stochastic churn, GenCast's sampler (``2n - 1`` calls).

    Per step, with churn rate :math:`\gamma_i = \min(S_\text{churn}/n, \sqrt2 - 1)` when
    :math:`S_\min \le \sigma_i \le S_\max` (else 0):

    .. math::
        \hat\sigma = \sigma_i(1+\gamma_i),\quad
        z \leftarrow z + S_\text{noise}\sqrt{\hat\sigma^2-\sigma_i^2}\,\varepsilon,\quad
        \sigma_m = \sqrt{\hat\sigma\,\sigma_{i+1}},

    .. math::
        z_m = \tfrac{\sigma_m}{\hat\sigma} z + \big(1-\tfrac{\sigma_m}{\hat\sigma}\big)
              D(z,\hat\sigma),\qquad
        z_{i+1} = \tfrac{\sigma_{i+1}}{\hat\sigma} z
              + \big(1-\tfrac{\sigma_{i+1}}{\hat\sigma}\big) D(z_m,\sigma_m),

    and the last step returns :math:`D(z, \hat\sigma)`.

    Use :meth:`gencast` for GenCast's defaults (σ 80 → 0.03, 20 levels, ρ = 7,
    S_churn 2.5, S_min 0.75, S_max ∞, S_noise 1.05).
    """

    noise_levels: Float[Array, " levels"]
    churn: float = eqx.field(static=True, default=2.5)
    churn_min_sigma: float = eqx.field(static=True, default=0.75)
    churn_max_sigma: float = eqx.field(static=True, default=float("inf"))
    churn_noise_scale: float = eqx.field(static=True, default=1.05)

    def __check_init__(self) -> None:
        _check_levels(self.noise_levels)
        if self.churn < 0 or self.churn_noise_scale < 0:
            raise ValueError(
                f"churn and churn_noise_scale must be >= 0, got churn={self.churn}, "
                f"churn_noise_scale={self.churn_noise_scale}"
            )

    @classmethod
    def gencast(cls, num_levels: int = 20, **overrides: float) -> DPMSolverPlusPlus2SSampler:
        """GenCast's default sampler configuration (Price et al. 2024)."""
        levels = karras_noise_levels(80.0, 0.03, 7.0, num_levels)
        return cls(levels, **overrides)

    @property
    def num_denoiser_calls(self) -> int:
        return 2 * self.num_steps - 1

    def sample(self, denoiser, cond, template, *, key, noise=standard_normal_noise):
        levels = self.noise_levels.astype(template.dtype)
        churn_rate = min(self.churn / self.num_steps, 2.0**0.5 - 1.0)

        def churned(z, i):
            sigma = levels[i]
            in_band = (sigma >= self.churn_min_sigma) & (sigma <= self.churn_max_sigma)
            gamma = jnp.where(in_band, churn_rate, 0.0).astype(template.dtype)
            sigma_hat = sigma * (1.0 + gamma)
            eps = noise(jax.random.fold_in(key, i + 1), template)
            extra_std = jnp.sqrt(jnp.maximum(sigma_hat**2 - sigma**2, 0.0))
            return z + self.churn_noise_scale * extra_std * eps, sigma_hat

        def step(z, i):
            z, sigma_hat = churned(z, i)
            sigma_next = levels[i + 1]
            sigma_mid = jnp.sqrt(sigma_hat * sigma_next)
            ratio_mid = sigma_mid / sigma_hat
            z_mid = ratio_mid * z + (1.0 - ratio_mid) * denoiser(z, sigma_hat, cond)
            ratio_next = sigma_next / sigma_hat
            return ratio_next * z + (1.0 - ratio_next) * denoiser(z_mid, sigma_mid, cond), None

        z = self._initial(template, jax.random.fold_in(key, 0), noise)
        z, _ = jax.lax.scan(step, z, jnp.arange(self.num_steps - 1))
        z, sigma_hat = churned(z, self.num_steps - 1)
        return denoiser(z, sigma_hat, cond)


class AdamsBashforthSampler(AbstractSampler):
    r"""Adams–Bashforth of order k on the PF-ODE, with Langevin correctors (the authors' sampler).

    Predictor: with :math:`e_j = (z_j - D(z_j, \sigma_j))/\sigma_j` kept for the last k nodes,
    :math:`z_{i+1} = z_i + \sum_j \beta_j e_j`, where :math:`\beta_j` integrates the Lagrange
    basis polynomials through those nodes over :math:`[\sigma_i, \sigma_{i+1}]` (fewer nodes
    at the start). Corrector, ``num_corrections`` times when :math:`\sigma_{i+1} > 0`, at
    :math:`\sigma' = \sigma_{i+1} + 10^{-4}`:

    .. math::
        s = \frac{D(z,\sigma') - z}{\sigma'^2},\quad \gamma = \delta\sigma'^2,\quad
        z \leftarrow z + \tfrac{\gamma}{2}s + \sqrt{\gamma}\,\varepsilon .

    ``n + C (n - 1)`` denoiser calls: the corrections after the last step are skipped.
    Use :meth:`savary2025` for the authors' configuration (AB3, 32 levels 88 → 2e-5, ρ = 6,
    2 corrections, δ = 0.25).
    """

    noise_levels: Float[Array, " levels"]
    order: int = eqx.field(static=True, default=3)
    num_corrections: int = eqx.field(static=True, default=2)
    langevin_step: Float[Array, ""] = eqx.field(default=0.25, converter=jnp.asarray)

    def __check_init__(self) -> None:
        _check_levels(self.noise_levels)
        if int(self.order) != self.order or self.order < 1:
            raise ValueError(
                f"AdamsBashforthSampler.order must be an integer >= 1, got {self.order}"
            )
        if int(self.num_corrections) != self.num_corrections or self.num_corrections < 0:
            raise ValueError(
                f"AdamsBashforthSampler.num_corrections must be an integer >= 0, "
                f"got {self.num_corrections}"
            )
        if not is_traced(self.langevin_step) and not (float(self.langevin_step) > 0):
            raise ValueError(
                f"AdamsBashforthSampler.langevin_step must be > 0, got {float(self.langevin_step)}"
            )

    @classmethod
    def savary2025(cls, num_levels: int = 32) -> AdamsBashforthSampler:
        """The FA-APF authors' proposal sampler (Savary, Rozet & Louppe 2025, workshop paper)."""
        return cls(karras_noise_levels(88.0, 2e-5, 6.0, num_levels), 3, 2, 0.25)

    @property
    def num_denoiser_calls(self) -> int:
        return self.num_steps + self.num_corrections * (self.num_steps - 1)

    def _coefficients(self, node_sigmas: Array, num_valid: Array, sigma, sigma_next) -> Array:
        """Integrals of the Lagrange basis over [σ_i, σ_{i+1}] for the valid nodes.

        Nodes are stored newest first: ``node_sigmas[0] = σ_i``. The Vandermonde system is
        solved in the local variable ``t = (σ - σ_i)/h`` (``h = σ_{i+1} - σ_i``), which keeps it
        well conditioned; invalid nodes get an identity block and a zero coefficient.
        """
        k = self.order
        h = sigma_next - sigma
        t = (node_sigmas - sigma) / h
        valid = jnp.arange(k) < num_valid
        # Rows t^p, p = 0..k-1, by cumulative products (exact for negative t as well).
        rows = jnp.concatenate([jnp.ones((1, k), t.dtype), jnp.broadcast_to(t, (k - 1, k))])
        vander = jnp.where(valid[None, :] & valid[:, None], jnp.cumprod(rows, axis=0), 0.0)
        vander = vander + jnp.diag(jnp.where(valid, 0.0, 1.0).astype(t.dtype))
        rhs = jnp.where(valid, 1.0 / (jnp.arange(k, dtype=t.dtype) + 1.0), 0.0)
        return h * jnp.linalg.solve(vander, rhs)

    def sample(self, denoiser, cond, template, *, key, noise=standard_normal_noise):
        levels = self.noise_levels.astype(template.dtype)
        delta = self.langevin_step.astype(template.dtype)
        k = self.order

        def predictor(carry, i):
            z, slopes, node_sigmas = carry
            sigma, sigma_next = levels[i], levels[i + 1]
            slope = (z - denoiser(z, sigma, cond)) / sigma
            slopes = jnp.concatenate([slope[None], slopes[:-1]])
            node_sigmas = jnp.concatenate([sigma[None], node_sigmas[:-1]])
            beta = self._coefficients(node_sigmas, jnp.minimum(i + 1, k), sigma, sigma_next)
            z = z + jnp.tensordot(beta, slopes, axes=1)
            return z, slopes, node_sigmas

        def corrector(z, i):
            if self.num_corrections == 0:
                # A zero-length scan fails under jax.disable_jit(); skip it statically.
                return z
            sigma_c = levels[i + 1] + 1e-4

            def one(z, c):
                eps = noise(jax.random.fold_in(jax.random.fold_in(key, i + 1), c), template)
                score = (denoiser(z, sigma_c, cond) - z) / sigma_c**2
                gamma = delta * sigma_c**2
                return z + 0.5 * gamma * score + jnp.sqrt(gamma) * eps, None

            z, _ = jax.lax.scan(one, z, jnp.arange(self.num_corrections))
            return z

        def step(carry, i):
            z, slopes, node_sigmas = predictor(carry, i)
            return (corrector(z, i), slopes, node_sigmas), None

        z = self._initial(template, jax.random.fold_in(key, 0), noise)
        carry = (z, jnp.zeros((k, *template.shape), template.dtype), jnp.ones((k,), template.dtype))
        carry, _ = jax.lax.scan(step, carry, jnp.arange(self.num_steps - 1))
        z, _, _ = predictor(carry, self.num_steps - 1)
        return z
