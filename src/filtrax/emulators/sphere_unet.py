r"""A small U-Net on an equiangular latitude–longitude grid that respects the sphere.

**Padding.** Every 3 × 3 convolution pads its input the way the sphere connects cells:
periodically in longitude, and across each pole by continuing the meridian on the other side,
i.e. the row beyond the last latitude is that latitude's row shifted by 180° in longitude
(and so on for wider halos). A feature field that is smooth on the sphere is therefore
smooth in the padded array, with no wall at the poles and no seam at the date line. The
network is exactly equivariant under longitude shifts by whole cells at the finest
resolution (tested); pooling by 2 reduces that to even shifts.

**Layout.** Arrays are ``(lat, lon, feature)`` (NHWC once batched): XLA's CPU convolutions
are 1.3–1.5× faster in that layout than in NCHW (measured on our 2-core CPU machines).

**Blocks.** Pre-norm residual blocks (group normalisation, SiLU, convolution) with a
per-channel scale and shift from the noise-level embedding after the second normalisation
(FiLM, as in EDM's and GenCast's conditioning on :math:`c_\text{noise}`). Average pooling
by 2 on the way down, nearest-neighbour upsampling plus a convolution on the way up, skip
connections by concatenation. The last convolution is zero-initialised so the untrained
denoiser is the EDM skip path.

**Inputs.** The noisy latent, the conditioning frames, and two static fields
:math:`(\sin\phi, \cos\phi)` of latitude, so the network can learn latitude-dependent
dynamics (Coriolis) while staying longitude-equivariant.

**Noisy-input path.** :class:`NoisyInputPath` wraps any such network with a linear path from
its noisy input to its output, one 3 × 3 stencil per band of noise levels, which a trained
network can be given and fit by least squares (:mod:`filtrax.training.noisy_path`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._typing import Key


def pad_sphere(x: Float[Array, "lat lon feature"], width: int) -> Float[Array, "lat2 lon2 feature"]:
    """Halo of ``width`` cells: periodic in longitude, across the poles in latitude.

    Row ``-1 - j`` (beyond the first latitude) is row ``j`` shifted by half the longitudes;
    the same holds beyond the last latitude. The longitude count must be even.
    """
    if width == 0:
        return x
    num_lon = x.shape[1]
    half = num_lon // 2
    south = jnp.roll(x[:width][::-1], half, axis=1)
    north = jnp.roll(x[-width:][::-1], half, axis=1)
    x = jnp.concatenate([south, x, north], axis=0)
    return jnp.concatenate([x[:, -width:], x, x[:, :width]], axis=1)


_DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def _valid_conv(x, weight):
    return jax.lax.conv_general_dilated(
        x[None], weight, (1, 1), "VALID", dimension_numbers=_DIMENSIONS
    )[0]


@jax.custom_vjp
def _conv_valid(x, weight):
    """A 'valid' convolution whose VJP is written as plain convolutions and a matmul.

    JAX's own transpose of a convolution is a convolution with swapped kernel dimensions,
    which XLA's CPU backend runs about 4x slower inside ``while`` loops (the sampler's
    loop over noise levels, CG, ``lax.scan`` training) than in straight-line code
    (measured: 4 VJPs of the atmosphere U-Net in a scan 4.3 s, unrolled 0.96 s). With the
    flipped kernel materialised in the standard layout the scanned VJPs take 1.02 s.
    """
    return _valid_conv(x, weight)


def _conv_valid_forward(x, weight):
    return _valid_conv(x, weight), (x, weight)


def _conv_valid_backward(residuals, cotangent):
    x, weight = residuals
    k = weight.shape[0]
    halo = ((k - 1, k - 1), (k - 1, k - 1), (0, 0))
    flipped = jnp.flip(weight, (0, 1)).transpose(0, 1, 3, 2)
    x_cotangent = _valid_conv(jnp.pad(cotangent, halo), flipped)
    lat, lon = cotangent.shape[0], cotangent.shape[1]
    patches = jnp.stack([x[i : i + lat, j : j + lon] for i in range(k) for j in range(k)])
    weight_cotangent = jnp.einsum("phwc,hwo->pco", patches, cotangent).reshape(weight.shape)
    return x_cotangent, weight_cotangent


_conv_valid.defvjp(_conv_valid_forward, _conv_valid_backward)


def _conv(x, weight, bias):
    return _conv_valid(x, weight) + bias[None, None, :]


class SphereConv(eqx.Module):
    """A ``k × k`` convolution with spherical padding (``k`` odd); ``1 × 1`` needs no halo."""

    weight: Float[Array, "k k cin cout"]
    bias: Float[Array, " cout"]

    def __init__(self, cin: int, cout: int, size: int, *, key: Key, zero: bool = False):
        if size % 2 != 1:
            raise ValueError(f"SphereConv size must be odd, got {size}")
        scale = 1.0 / math.sqrt(cin * size * size)
        weight = scale * jax.random.normal(key, (size, size, cin, cout))
        self.weight = jnp.zeros_like(weight) if zero else weight
        self.bias = jnp.zeros(cout)

    def __call__(self, x):
        return _conv(pad_sphere(x, self.weight.shape[0] // 2), self.weight, self.bias)


def _group_norm(x, groups: int, eps: float = 1e-5):
    lat, lon, features = x.shape
    g = x.reshape(lat, lon, groups, features // groups)
    mean = g.mean(axis=(0, 1, 3), keepdims=True)
    var = g.var(axis=(0, 1, 3), keepdims=True)
    return ((g - mean) * jax.lax.rsqrt(var + eps)).reshape(x.shape)


class ResidualBlock(eqx.Module):
    """``x + conv(silu(FiLM(norm(conv(silu(norm(x)))))))`` with a 1 × 1 skip when widths differ."""

    first: SphereConv
    second: SphereConv
    film: eqx.nn.Linear
    skip: SphereConv | None
    groups_in: int = eqx.field(static=True)
    groups_out: int = eqx.field(static=True)

    def __init__(self, cin: int, cout: int, embed: int, *, key: Key):
        k1, k2, k3, k4 = jax.random.split(key, 4)
        self.first = SphereConv(cin, cout, 3, key=k1)
        self.second = SphereConv(cout, cout, 3, key=k2)
        self.film = eqx.nn.Linear(embed, 2 * cout, key=k3)
        self.skip = SphereConv(cin, cout, 1, key=k4) if cin != cout else None
        self.groups_in, self.groups_out = _groups(cin), _groups(cout)

    def __call__(self, x, embedding):
        h = self.first(jax.nn.silu(_group_norm(x, self.groups_in)))
        scale, shift = jnp.split(self.film(embedding), 2)
        h = _group_norm(h, self.groups_out) * (1.0 + scale[None, None, :]) + shift[None, None, :]
        h = self.second(jax.nn.silu(h))
        return (x if self.skip is None else self.skip(x)) + h


def _groups(features: int) -> int:
    for g in (8, 4, 2):
        if features % g == 0:
            return g
    return 1


def _pool(x):
    lat, lon, f = x.shape
    return x.reshape(lat // 2, 2, lon // 2, 2, f).mean(axis=(1, 3))


def _upsample(x):
    return jnp.repeat(jnp.repeat(x, 2, axis=0), 2, axis=1)


class SphereUNet(eqx.Module):
    """``F(x_scaled, c_noise, cond)`` for latents ``(channel, lat, lon)``.

    ``cond`` is ``(frames, channel, lat, lon)`` (the normalised conditioning frames).

    Attributes:
        widths: features per resolution level (the grid halves between levels).
        latitudes: degrees north of the grid (static features ``sin φ, cos φ``).
    """

    embed_in: eqx.nn.Linear
    embed_out: eqx.nn.Linear
    stem: SphereConv
    down: tuple[ResidualBlock, ...]
    middle: ResidualBlock
    up: tuple[ResidualBlock, ...]
    up_convs: tuple[SphereConv, ...]
    head: SphereConv
    latitude_features: Float[Array, "lat 2"]
    num_frequencies: int = eqx.field(static=True)

    def __init__(
        self,
        *,
        channels: int,
        condition_frames: int,
        widths: Sequence[int],
        latitudes: Sequence[float],
        key: Key,
        embed: int = 64,
        num_frequencies: int = 16,
    ):
        widths = tuple(int(w) for w in widths)
        if not widths or min(widths) < 1:
            raise ValueError(f"SphereUNet.widths must be positive, got {widths}")
        num_lat = len(latitudes)
        if num_lat % 2 ** (len(widths) - 1):
            raise ValueError(
                f"SphereUNet: {num_lat} latitudes cannot be halved {len(widths) - 1} times"
            )
        keys = iter(jax.random.split(key, 6 + 3 * len(widths)))
        self.num_frequencies = num_frequencies
        self.embed_in = eqx.nn.Linear(2 * num_frequencies, embed, key=next(keys))
        self.embed_out = eqx.nn.Linear(embed, embed, key=next(keys))
        inputs = channels * (1 + condition_frames) + 2
        self.stem = SphereConv(inputs, widths[0], 3, key=next(keys))
        down = []
        for i, w in enumerate(widths):
            down.append(ResidualBlock(widths[max(i - 1, 0)], w, embed, key=next(keys)))
        self.down = tuple(down)
        self.middle = ResidualBlock(widths[-1], widths[-1], embed, key=next(keys))
        up, up_convs = [], []
        for i in reversed(range(len(widths))):
            # h arrives with widths[i] features and meets the skip of the same width.
            up.append(ResidualBlock(2 * widths[i], widths[i], embed, key=next(keys)))
            if i > 0:
                up_convs.append(SphereConv(widths[i], widths[i - 1], 3, key=next(keys)))
        self.up, self.up_convs = tuple(up), tuple(up_convs)
        self.head = SphereConv(widths[0], channels, 3, key=next(keys), zero=True)
        phi = jnp.deg2rad(jnp.asarray(latitudes, jnp.float32))
        self.latitude_features = jnp.stack([jnp.sin(phi), jnp.cos(phi)], axis=-1)

    def __call__(
        self,
        x_scaled: Float[Array, "channel lat lon"],
        c_noise: Float[Array, ""],
        cond: Float[Array, "frames channel lat lon"],
    ) -> Float[Array, "channel lat lon"]:
        dtype = x_scaled.dtype
        frequencies = jnp.exp(jnp.linspace(0.0, math.log(64.0), self.num_frequencies, dtype=dtype))
        angles = c_noise * frequencies
        embedding = jax.nn.silu(self.embed_in(jnp.concatenate([jnp.sin(angles), jnp.cos(angles)])))
        embedding = jax.nn.silu(self.embed_out(embedding))
        num_lon = x_scaled.shape[-1]
        static = jnp.broadcast_to(
            self.latitude_features[:, None, :].astype(dtype),
            (x_scaled.shape[1], num_lon, 2),
        )
        frames = jnp.concatenate([x_scaled[None], cond], axis=0)
        stacked = frames.reshape(-1, *x_scaled.shape[1:]).transpose(1, 2, 0)
        h = self.stem(jnp.concatenate([stacked, static], axis=-1))
        skips = []
        for i, block in enumerate(self.down):
            if i > 0:
                h = _pool(h)
            h = block(h, embedding)
            skips.append(h)
        h = self.middle(h, embedding)
        for j, block in enumerate(self.up):
            h = block(jnp.concatenate([h, skips.pop()], axis=-1), embedding)
            if j < len(self.up_convs):
                h = self.up_convs[j](_upsample(h))
        return self.head(jax.nn.silu(h)).transpose(2, 0, 1)


class NoisyInputPath(eqx.Module):
    r"""A network plus a linear path from its noisy input to its output, one stencil per
    band of noise levels.

    .. math::

        F(x, c_\text{noise}, c) = F_\text{base}(x, c_\text{noise}, c)
            + m(\sigma) \sum_{k=1}^{K} \phi_k(\sigma)\, (V_k \star x),
        \qquad m(\sigma) = \frac{\sigma^2 + \sigma_\text{ref}^2}{\sigma\, \sigma_\text{ref}},

    with :math:`V_k` spherical ``size`` × ``size`` convolutions (3 by default) mixing every
    channel (zero-initialised, so the wrapped network starts as ``base`` exactly),
    :math:`\phi_k` fixed bands of noise levels on [0.02, 2] (:meth:`bands`), and
    :math:`\sigma = e^{4 c_\text{noise}}` (EDM's :math:`c_\text{noise} = \ln\sigma/4`, the
    default of :class:`~filtrax.diffusion.denoisers.EDMPreconditionedDenoiser`).

    **Why.** Under EDM preconditioning :math:`D = c_\text{skip} x + c_\text{out} F(c_\text{in}
    x)`. The exact denoiser of a Gaussian with covariance :math:`\Sigma` has
    :math:`\partial D/\partial x = \Sigma(\Sigma + \sigma^2 I)^{-1}`, whose departure from
    :math:`c_\text{skip} I` is bounded; in :math:`F`'s units it is that departure times
    :math:`1/(c_\text{out} c_\text{in}) = (\sigma^2 + \sigma_\text{data}^2)/(\sigma
    \sigma_\text{data})`, about :math:`\sigma_\text{data}/\sigma` at small :math:`\sigma`.
    So at small :math:`\sigma` the network must amplify small differences of its input (two
    channels that carry the same value, neighbouring cells) by :math:`1/\sigma`, and a
    trained U-Net was measured not to (its :math:`\partial D/\partial x \approx
    c_\text{skip} I`; ``benchmarks/denoiser_jacobian.py``). Here :math:`m(\sigma)` converts
    exactly for :math:`\sigma_\text{data} = \sigma_\text{ref}`, so each :math:`V_k` is a
    bounded local correction of :math:`\partial D/\partial x` in the band
    :math:`\phi_k`, a Wiener-filter stencil; the path is linear in its parameters, and
    beyond :math:`\sigma \approx 2` it fades out (the bumps), where the base network's
    conditional mean dominates.
    """

    base: Callable[..., Array]  # the network it corrects: (x_scaled, c_noise, cond) -> output
    stencils: SphereConv
    terms: int = eqx.field(static=True)
    sigma_ref: float = eqx.field(static=True, default=0.4)

    def __init__(
        self,
        base: Callable[..., Array],
        *,
        channels: int,
        terms: int,
        key: Key,
        size: int = 3,
        sigma_ref: float = 0.4,
    ):
        if terms < 2:
            raise ValueError(f"NoisyInputPath.terms must be >= 2, got {terms}")
        self.base = base
        self.terms, self.sigma_ref = int(terms), float(sigma_ref)
        self.stencils = SphereConv(channels, terms * channels, size, key=key, zero=True)

    @property
    def size(self) -> int:
        """The stencils' width in cells (odd)."""
        return self.stencils.weight.shape[0]

    def bands(self, sigma: Float[Array, ""]) -> Float[Array, " terms"]:
        r""":math:`\phi_k(\sigma)`: Gaussian bumps in :math:`\ln\sigma` of width half their
        spacing, centred log-uniformly on [0.02, 2], times :math:`1/(1 + (\sigma/2)^4)`, so
        that :math:`m(\sigma)\phi_k(\sigma)`, which :math:`m \propto \sigma` would
        otherwise keep alive, vanishes at large :math:`\sigma`."""
        centres = jnp.linspace(math.log(0.02), math.log(2.0), self.terms, dtype=sigma.dtype)
        width = 0.5 * (math.log(2.0) - math.log(0.02)) / (self.terms - 1)
        bumps = jnp.exp(-0.5 * ((jnp.log(sigma) - centres) / width) ** 2)
        return bumps / (1.0 + (sigma / 2.0) ** 4)

    def __call__(
        self,
        x_scaled: Float[Array, "channel lat lon"],
        c_noise: Float[Array, ""],
        cond: Float[Array, "frames channel lat lon"],
    ) -> Float[Array, "channel lat lon"]:
        channels = x_scaled.shape[0]
        sigma = jnp.exp(4.0 * c_noise)
        gain = (sigma**2 + self.sigma_ref**2) / (sigma * self.sigma_ref)
        weights = (gain * self.bands(sigma)).astype(x_scaled.dtype)
        stencils = self.stencils(x_scaled.transpose(1, 2, 0))  # (lat, lon, terms * channel)
        stencils = stencils.reshape(*stencils.shape[:2], self.terms, channels)
        path = jnp.einsum("abkc,k->cab", stencils, weights)
        return self.base(x_scaled, c_noise, cond) + path
