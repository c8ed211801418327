r"""Log-space weight utilities and resampling schemes.

All schemes share one signature ``scheme(key, log_weights, num) -> ancestors`` and are
unbiased: :math:`\mathbb E[\#\{j : a_j = i\}] = \text{num}\cdot w_i` with
:math:`w = \operatorname{softmax}(\text{log\_weights})`. Weights are never exponentiated
before normalisation.

References:
    Douc, Cappé & Moulines (2005), "Comparison of resampling schemes for particle
    filtering", ISPA. Chopin & Papaspiliopoulos (2020), *An Introduction to Sequential
    Monte Carlo*, ch. 9 (and the ``particles`` package).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from ._typing import Key, LogWeights, Scalar

Resampler = Callable[[Key, LogWeights, int], Int[Array, " num"]]


def normalize_log_weights(log_weights: LogWeights) -> LogWeights:
    """``log w_i = ℓ_i − logsumexp(ℓ)``; NaN weights are an error upstream, −inf means zero."""
    return log_weights - jax.scipy.special.logsumexp(log_weights)


def effective_sample_size(log_weights: LogWeights) -> Scalar:
    """``ESS = 1 / Σ w_i² = exp(−logsumexp(2 log w))`` for unnormalised log-weights."""
    log_w = normalize_log_weights(log_weights)
    return jnp.exp(-jax.scipy.special.logsumexp(2.0 * log_w))


def _inverse_cdf(log_weights: LogWeights, positions: Float[Array, " num"]) -> Int[Array, " num"]:
    """Ancestors for sorted uniform ``positions`` in [0, 1) by inversion of the weights' CDF."""
    cdf = jnp.cumsum(jnp.exp(normalize_log_weights(log_weights)))
    ancestors = jnp.searchsorted(cdf, positions, side="right")
    # Round-off can leave cdf[-1] slightly below 1.
    return jnp.minimum(ancestors, log_weights.shape[0] - 1).astype(jnp.int32)


def systematic(key: Key, log_weights: LogWeights, num: int) -> Int[Array, " num"]:
    """One uniform ``u ~ U[0, 1/num)`` and positions ``u + j/num`` (the default)."""
    dtype = log_weights.dtype
    u = jax.random.uniform(key, (), dtype)
    positions = (u + jnp.arange(num, dtype=dtype)) / num
    return _inverse_cdf(log_weights, positions)


def stratified(key: Key, log_weights: LogWeights, num: int) -> Int[Array, " num"]:
    """One independent uniform per stratum: positions ``(j + u_j)/num``."""
    dtype = log_weights.dtype
    u = jax.random.uniform(key, (num,), dtype)
    positions = (jnp.arange(num, dtype=dtype) + u) / num
    return _inverse_cdf(log_weights, positions)


def multinomial(key: Key, log_weights: LogWeights, num: int) -> Int[Array, " num"]:
    """``num`` independent draws from the categorical distribution of the weights."""
    return jax.random.categorical(key, normalize_log_weights(log_weights), shape=(num,)).astype(
        jnp.int32
    )


def residual(key: Key, log_weights: LogWeights, num: int) -> Int[Array, " num"]:
    """``⌊num·w_i⌋`` deterministic copies, the rest multinomial on the residual weights."""
    weights = jnp.exp(normalize_log_weights(log_weights))
    copies = jnp.floor(num * weights).astype(jnp.int32)
    num_deterministic = jnp.sum(copies)
    deterministic = jnp.repeat(
        jnp.arange(weights.shape[0], dtype=jnp.int32), copies, total_repeat_length=num
    )
    leftover = jnp.maximum(num * weights - copies.astype(weights.dtype), 0.0)
    # When num·w_i are all integers the leftover is empty; any distribution works then
    # because no residual draw is used.
    log_leftover = jnp.where(jnp.sum(leftover) > 0, jnp.log(leftover), jnp.zeros_like(leftover))
    random = jax.random.categorical(key, log_leftover, shape=(num,)).astype(jnp.int32)
    return jnp.where(jnp.arange(num) < num_deterministic, deterministic, random)


RESAMPLERS: dict[str, Resampler] = {
    "systematic": systematic,
    "stratified": stratified,
    "multinomial": multinomial,
    "residual": residual,
}


def as_resampler(scheme: str | Resampler) -> Resampler:
    """A scheme itself, or the one registered under its name."""
    return get_resampler(scheme) if isinstance(scheme, str) else scheme


def get_resampler(name: str) -> Resampler:
    """Look a scheme up by name (for configs and the command line)."""
    try:
        return RESAMPLERS[name]
    except KeyError:
        raise ValueError(
            f"unknown resampling scheme {name!r}; expected one of {sorted(RESAMPLERS)}"
        ) from None
