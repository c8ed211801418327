r"""Proposals: how one particle moves to the next cycle.

:class:`EmulatorProposal` runs the emulator's reverse diffusion from the particle's
conditioning. Without guidance it samples the emulator's transition
:math:`p(x^{k+1}\mid s^k)` (bootstrap PF, free ensemble); with guidance it samples an
approximation of the optimal proposal :math:`p(x^{k+1}\mid s^k, y^{k+1})` (FA-APF): the
sampler runs on the posterior denoiser of :mod:`filtrax.guidance`.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import PyTree

from .._typing import Key, Observation
from ..diffusion.samplers import AbstractSampler
from ..emulators._base import AbstractEmulator
from ..guidance.guided import AbstractGuidance, GuidedDenoiser
from ..observations.model import ObservationModel


class EmulatorProposal(eqx.Module):
    """Sample the next frame with ``sampler`` and append it to the particle state.

    Attributes:
        emulator: the conditional diffusion emulator.
        sampler: the reverse-diffusion sampler (any of :mod:`filtrax.diffusion.samplers`).
        guidance: ``None`` for the emulator's own transition, else DPS/SDA/MMPS.
    """

    emulator: AbstractEmulator
    sampler: AbstractSampler
    guidance: AbstractGuidance | None = None

    @property
    def is_guided(self) -> bool:
        return self.guidance is not None

    def unguided(self) -> EmulatorProposal:
        """The same emulator and sampler without guidance: the emulator's own transition."""
        return self if self.guidance is None else EmulatorProposal(self.emulator, self.sampler)

    def call_counts(self) -> tuple[int, int]:
        """Denoiser ``(forward evaluations, VJPs)`` per particle."""
        calls = self.sampler.num_denoiser_calls
        if self.guidance is None:
            return calls, 0
        return calls, calls * self.guidance.backward_calls

    def __call__(
        self,
        state: PyTree,
        y: Observation,
        observation_model: ObservationModel | None,
        *,
        key: Key,
    ) -> PyTree:
        emulator = self.emulator
        cond = emulator.condition(state)
        template = emulator.latent_template(state)
        denoiser = emulator.denoiser
        if self.guidance is not None:
            if observation_model is None:
                raise ValueError("a guided EmulatorProposal needs the observation model")

            def latent_to_frame(z):
                return emulator.latent_to_frame(z, state)

            denoiser = GuidedDenoiser(
                denoiser, self.guidance, observation_model, jnp.asarray(y), latent_to_frame
            )
        z = self.sampler.sample(denoiser, cond, template, key=key, noise=emulator.noise)
        return emulator.advance(state, emulator.latent_to_frame(z, state))
