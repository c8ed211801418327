r"""The emulator interface shared by every model the filters can drive.

GenCast-style conventions (Price et al. 2025): a particle's *state* ``s`` holds what the
emulator conditions on (for a second-order emulator, two frames
:math:`(x^{k-1}, x^k)`); the diffusion runs on a *latent* ``z`` (GenCast: the normalised
12-hour residual), and an affine map :math:`\Phi_s(z)` returns the next physical frame.

.. math::
    c = \text{condition}(s), \quad z \sim p(z \mid c) \text{ by reverse diffusion}, \quad
    x^{k+1} = \Phi_s(z) = \text{latent\_to\_frame}(z, s), \quad
    s' = \text{advance}(s, x^{k+1}).

Observations and scores act on :meth:`AbstractEmulator.current_frame` of a state.
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import ArrayLike, Float, PyTree

from .._typing import FramePair, Key, State
from ..diffusion.denoisers import AbstractDenoiser


class AbstractEmulator(eqx.Module):
    """A conditional diffusion emulator of one transition step (all methods unbatched)."""

    denoiser: eqx.AbstractVar[AbstractDenoiser]

    @abc.abstractmethod
    def condition(self, state: PyTree) -> PyTree:
        """The denoiser's conditioning ``c`` for a particle state."""

    @abc.abstractmethod
    def latent_template(self, state: PyTree) -> State:
        """A zero array with the latent's shape and dtype."""

    @abc.abstractmethod
    def latent_to_frame(self, z: State, state: PyTree) -> State:
        """``Φ_s(z)``: the next physical frame from a latent sample (affine in ``z``)."""

    @abc.abstractmethod
    def advance(self, state: PyTree, frame: State) -> PyTree:
        """The particle state after ``frame`` has been appended."""

    @abc.abstractmethod
    def current_frame(self, state: PyTree) -> State:
        """The physical frame that observations and metrics see."""

    def noise(self, key: Key, template: State) -> State:
        """Unit noise in latent space (i.i.d. Gaussian; spherical emulators override this)."""
        return jax.random.normal(key, template.shape, template.dtype)


class AbstractTwoFrameEmulator(AbstractEmulator):
    r"""A second-order emulator whose particle state stacks :math:`(x^{k-1}, x^k)`.

    GenCast's convention (Price et al. 2025): the latent has the shape of one frame, the
    state advances by dropping the older frame, and observations see :math:`x^k`.
    Subclasses supply :meth:`condition` and :meth:`latent_to_frame`.

    Shapes: one particle's state is ``(2, *frame)`` (older frame first); the latent and the
    frame have the shape ``frame``. Every method sees **one unbatched particle**: the filters
    ``vmap`` (or shard) over the particle axis, so a subclass never handles it. Everything
    is traced by ``jax.jit``: the methods must be pure JAX functions of their arguments, with
    configuration (grid sizes, step counts) in static fields, never Python branches on array
    values. :meth:`latent_to_frame` should be affine in ``z`` (for GenCast
    :math:`x^k + s \odot z`), which makes the guidance's linearisation exact.
    """

    def latent_template(self, state: FramePair) -> State:
        return jnp.zeros_like(state[-1])

    def advance(self, state: FramePair, frame: State) -> FramePair:
        return jnp.stack([state[-1], frame])

    def current_frame(self, state: FramePair) -> State:
        return state[-1]

    @staticmethod
    def initial_state(
        previous: Float[ArrayLike, "*s"], current: Float[ArrayLike, "*s"]
    ) -> FramePair:
        """The particle state :math:`(x^{k-1}, x^k)`."""
        return jnp.stack([jnp.asarray(previous), jnp.asarray(current)])
