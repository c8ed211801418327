r"""A learned, GenCast-style diffusion emulator of the slow variables of two-scale Lorenz-96.

The emulator samples :math:`X^{k+1}` given :math:`(X^{k-1}, X^k)` only: the fast variables
:math:`Y` are unresolved, so its transition is genuinely stochastic, as GenCast's is for
ERA5 (Price et al. 2025).

**Latent.** The normalised residual :math:`z = (X^{k+1} - X^k)/s_z`, with :math:`s_z` the
standard deviation of one-step differences in the training data (GenCast's
``diffs_stddev_by_level``), and :math:`\Phi_s(z) = X^k + s_z z`.

**Conditioning.** :math:`c = ((X^{k-1} - \mu_x)/s_x, (X^k - \mu_x)/s_x)` (GenCast's
``mean_by_level`` and ``stddev_by_level``; one value for all sites, because the system is
invariant under cyclic shifts of the site index).

**Denoiser.** EDM preconditioning with :math:`\sigma_\text{data} = 1` around
:class:`CircularStencilNetwork`, trained on :math:`\sigma \in [0.02, 88]`
(:mod:`filtrax.training`).

**Network.** Translation-equivariant on the ring of sites: every site sees the noisy
latent and both conditioning frames at the sites within ``radius`` of it (a circular
convolution, written as a gather followed by one dense layer so that it runs as a matrix
product on CPU), then a per-site residual MLP, then a second circular stencil of radius
``mix_radius`` over a narrow bottleneck, so the receptive field is
``radius + mix_radius`` sites each way. The noise level enters through Fourier features of
:math:`c_\text{noise} = \tfrac14\log\sigma` and a scale-and-shift of the hidden features.

Weights are stored as npz (``allow_pickle=False``) keyed by each leaf's path in the module
tree, plus the normalisation statistics; the architecture is read from the model card.
"""

from __future__ import annotations

import math
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PyTree

from .._typing import FramePair, Key, State
from ..diffusion.denoisers import EDMPreconditionedDenoiser
from ._base import AbstractTwoFrameEmulator
from .cards import (
    card_and_weights,
    fill_module,
    load_card,
    load_weights,
    module_arrays,
    write_weights,
)

#: Architecture fields every learned Lorenz-96 card carries in its ``[network]`` table.
ARCHITECTURE_FIELDS = ("num_sites", "hidden", "depth", "radius", "mix_radius", "bottleneck")
STATISTICS_FIELDS = ("mean", "std", "diff_std")


def _stencil(fields: Float[Array, "channel site"], radius: int) -> Float[Array, "site feature"]:
    """Per site ``i``, the values at sites ``i - radius .. i + radius`` (cyclic), flattened."""
    shifted = [jnp.roll(fields, -offset, axis=-1) for offset in range(-radius, radius + 1)]
    stacked = jnp.stack(shifted)  # (offset, channel, site); value at i is fields[:, i + offset]
    return stacked.reshape(-1, fields.shape[-1]).T


class CircularStencilNetwork(eqx.Module):
    """``F(x_scaled, c_noise, cond)`` on a ring of sites (see the module docstring).

    Attributes:
        noise_embedding: Fourier features of ``c_noise`` to the embedding.
        modulation: the embedding to a per-channel scale and shift of the hidden features.
        encoder: the first stencil (3 input fields) to the hidden width.
        blocks: residual per-site layers.
        bottleneck: hidden to the narrow features mixed by the second stencil.
        mixer: the second stencil back to the hidden width.
        head: hidden to one output per site (zero-initialised).
    """

    noise_embedding: eqx.nn.Linear
    modulation: eqx.nn.Linear
    encoder: eqx.nn.Linear
    blocks: tuple[eqx.nn.Linear, ...]
    bottleneck: eqx.nn.Linear
    mixer: eqx.nn.Linear
    head: eqx.nn.Linear
    radius: int = eqx.field(static=True)
    mix_radius: int = eqx.field(static=True)
    num_frequencies: int = eqx.field(static=True)

    def __init__(
        self,
        *,
        hidden: int,
        depth: int,
        radius: int,
        mix_radius: int,
        bottleneck: int,
        key: Key,
        num_frequencies: int = 16,
    ):
        if min(hidden, depth, bottleneck) < 1 or min(radius, mix_radius) < 0:
            raise ValueError(
                f"network sizes must be positive (hidden={hidden}, depth={depth}, "
                f"bottleneck={bottleneck}) and radii non-negative (radius={radius}, "
                f"mix_radius={mix_radius})"
            )
        keys = jax.random.split(key, 6 + depth)
        embed = 2 * num_frequencies
        self.noise_embedding = eqx.nn.Linear(embed, hidden, key=keys[0])
        self.modulation = eqx.nn.Linear(hidden, 2 * hidden, key=keys[1])
        self.encoder = eqx.nn.Linear(3 * (2 * radius + 1), hidden, key=keys[2])
        self.blocks = tuple(eqx.nn.Linear(hidden, hidden, key=k) for k in keys[6:])
        self.bottleneck = eqx.nn.Linear(hidden, bottleneck, key=keys[3])
        self.mixer = eqx.nn.Linear(bottleneck * (2 * mix_radius + 1), hidden, key=keys[4])
        head = eqx.nn.Linear(hidden, 1, key=keys[5])
        # A zero head makes the initial denoiser the EDM skip path, a stable starting point.
        self.head = eqx.tree_at(
            lambda h: (h.weight, h.bias), head, (jnp.zeros_like(head.weight), jnp.zeros(1))
        )
        self.radius, self.mix_radius, self.num_frequencies = radius, mix_radius, num_frequencies

    def __call__(
        self,
        x_scaled: Float[Array, " site"],
        c_noise: Float[Array, ""],
        cond: Float[Array, "2 site"],
    ) -> Float[Array, " site"]:
        frequencies = jnp.exp(
            jnp.linspace(0.0, math.log(64.0), self.num_frequencies, dtype=x_scaled.dtype)
        )
        angles = c_noise * frequencies
        embedding = jax.nn.silu(
            self.noise_embedding(jnp.concatenate([jnp.sin(angles), jnp.cos(angles)]))
        )
        scale, shift = jnp.split(self.modulation(embedding), 2)

        def per_site(layer, features):
            return jax.vmap(layer)(features)

        fields = jnp.concatenate([x_scaled[None, :], cond], axis=0)
        h = per_site(self.encoder, _stencil(fields, self.radius))
        h = jax.nn.silu(h * (1.0 + scale)[None, :] + shift[None, :])
        for block in self.blocks:
            h = h + jax.nn.silu(per_site(block, h))
        narrow = per_site(self.bottleneck, h)
        h = h + jax.nn.silu(per_site(self.mixer, _stencil(narrow.T, self.mix_radius)))
        return per_site(self.head, h)[:, 0]


class Lorenz96Emulator(AbstractTwoFrameEmulator):
    r"""The slow-variable emulator; a particle state is ``(2, K)`` = :math:`(X^{k-1}, X^k)`.

    Attributes:
        denoiser: EDM-preconditioned :class:`CircularStencilNetwork` (σ_data = 1).
        mean, std: :math:`\mu_x, s_x` of the conditioning normalisation.
        diff_std: :math:`s_z`, the scale of the residual latent.
        time_step: the model-time step :math:`\Delta t` the emulator was trained for.
        num_sites: :math:`K` (the network itself works on any ring, but it was trained on
            this one).
        setting: the two-scale system it emulates (``"wilks05"`` or ``"lorenz96"``).
        name: the card name, or the weights file it was loaded from.
    """

    # Narrower than AbstractEmulator's: safe, a module's fields are frozen.
    denoiser: EDMPreconditionedDenoiser  # pyright: ignore[reportIncompatibleVariableOverride]
    mean: float = eqx.field(static=True)
    std: float = eqx.field(static=True)
    diff_std: float = eqx.field(static=True)
    time_step: float = eqx.field(static=True)
    num_sites: int = eqx.field(static=True)
    setting: str = eqx.field(static=True, default="wilks05")
    name: str = eqx.field(static=True, default="lorenz96")

    def condition(self, state: State) -> State:
        if state.shape != (2, self.num_sites):
            raise ValueError(
                f"{self.name}: a particle state must have shape (2, {self.num_sites}) = "
                f"(X^(k-1), X^k), got {state.shape}"
            )
        return (state - self.mean) / self.std

    def latent_to_frame(self, z: State, state: FramePair) -> State:
        return state[-1] + self.diff_std * z


def build_network(architecture: dict, key: Key) -> CircularStencilNetwork:
    return CircularStencilNetwork(
        hidden=int(architecture["hidden"]),
        depth=int(architecture["depth"]),
        radius=int(architecture["radius"]),
        mix_radius=int(architecture["mix_radius"]),
        bottleneck=int(architecture["bottleneck"]),
        key=key,
    )


def network_arrays(network: PyTree) -> dict[str, np.ndarray]:
    """The network's parameters keyed by their path in the module tree."""
    return module_arrays(network)


def network_from_arrays(
    architecture: dict, arrays: dict[str, np.ndarray], source: str
) -> CircularStencilNetwork:
    """Rebuild the network of ``architecture`` and fill it from ``arrays`` (names checked)."""
    return fill_module(build_network(architecture, jax.random.key(0)), arrays, source)


def save_emulator(path: str | Path, emulator: Lorenz96Emulator) -> str:
    """Write the weights and statistics to ``path`` (npz); returns the file's sha256."""
    arrays = network_arrays(emulator.denoiser.network)
    for name in STATISTICS_FIELDS:
        arrays[f"statistics.{name}"] = np.asarray(getattr(emulator, name), np.float64)
    arrays["statistics.time_step"] = np.asarray(emulator.time_step, np.float64)
    return write_weights(path, arrays)


def emulator_from_arrays(
    architecture: dict, arrays: dict[str, np.ndarray], source: str, name: str, setting: str
) -> Lorenz96Emulator:
    network = network_from_arrays(architecture, arrays, source)
    stats = {}
    for field in (*STATISTICS_FIELDS, "time_step"):
        if f"statistics.{field}" not in arrays:
            raise ValueError(f"{source}: weights lack the array 'statistics.{field}'")
        stats[field] = float(arrays[f"statistics.{field}"])
    return Lorenz96Emulator(
        EDMPreconditionedDenoiser(network, sigma_data=1.0),
        mean=stats["mean"],
        std=stats["std"],
        diff_std=stats["diff_std"],
        time_step=stats["time_step"],
        num_sites=int(architecture["num_sites"]),
        setting=setting,
        name=name,
    )


def load_emulator(card: dict | None, weights: str | Path | None = None) -> Lorenz96Emulator:
    """The emulator a card describes, from its shipped weights (sha256 checked).

    ``weights`` replaces the card (``card`` may then be ``None``): a file written by
    ``filtrax train``, checked against the sha256 of the ``.toml`` card written next to it.
    """
    # Trained weights bring their own card: the one passed in describes the bundled file.
    card, path = card_and_weights(None if weights is not None else card, weights)
    expected = card["sha256"]
    missing = [f for f in ARCHITECTURE_FIELDS if f not in card.get("network", {})]
    if missing:
        raise ValueError(f"card {card.get('name')!r} lacks network fields {missing}")
    arrays = load_weights(path, expected)
    emulator = emulator_from_arrays(
        card["network"], arrays, str(path), card["name"], card["data"]["setting"]
    )
    declared = float(card["data"]["time_step"])
    if not math.isclose(declared, emulator.time_step, rel_tol=1e-9):
        raise ValueError(
            f"{path}: weights were trained at time_step {emulator.time_step}, but the card "
            f"says {declared}"
        )
    return emulator


def bundled_emulator(name: str) -> Lorenz96Emulator:
    """A shipped emulator by card name (see ``filtrax models``)."""
    card = load_card(name)
    if card.get("kind") != "learned" or card.get("family") != "lorenz96":
        raise ValueError(f"card {name!r} is not a learned Lorenz-96 emulator")
    return load_emulator(card)
