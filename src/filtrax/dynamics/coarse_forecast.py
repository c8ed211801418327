r"""The dynamical core as a deterministic forecast of the coarse state: dinosaur at T21.

The hybrid emulator's mean path (:mod:`filtrax.emulators.hybrid`). A coarse frame
:math:`x^k` (``(channel, lat, lon)`` in physical units, every σ level of the truth, channels in
:func:`~filtrax.io.heldsuarez_store.stack_channels` order) is put back on a spectral model and
integrated ``save_hours``:

.. math::
    F(x^k) = \mathcal C\big(\mathcal M_{12\,h}(\mathcal P(x^k))\big),

* :math:`\mathcal P`: the winds, temperature and surface pressure are conservatively remapped
  from the coarse equiangular cells onto the model's Gaussian nodes; vorticity and divergence
  follow from the winds by spectral transform (dinosaur's ``uv_nodal_to_vor_div_modal``), the
  temperature is split into the reference profile plus a variation, and the surface pressure
  enters as its logarithm. Geopotential and the near-surface temperature are diagnostic: the
  model recomputes them.
* :math:`\mathcal M_{12\,h}`: dinosaur's Held–Suarez primitive equations at ``truth_grid``
  (default T21, 30-minute IMEX-RK3 steps), the same equations and forcing as the truth's.
* :math:`\mathcal C`: the coarse-graining that made the truth's coarse states
  (:class:`~filtrax.dynamics.heldsuarez.HeldSuarezSimulator`).

:math:`F` is pure JAX, so it runs under ``jit`` and ``vmap`` (one member per particle). The
filters never differentiate it: the guidance differentiates the denoiser with respect to its
noisy input, and :math:`F(x^k)` is part of the conditioning.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from .heldsuarez import (
    LEVEL_VARIABLES,
    SURFACE_VARIABLES,
    HeldSuarezSetup,
    HeldSuarezSimulator,
    _dinosaur_promotion,
)


def _channel_slices(levels: int) -> dict[str, slice]:
    """Where each variable sits in a stacked frame (level variables first, then surface)."""
    slices, start = {}, 0
    for name in LEVEL_VARIABLES:
        slices[name] = slice(start, start + levels)
        start += levels
    for name in SURFACE_VARIABLES:
        slices[name] = slice(start, start + 1)
        start += 1
    return slices


class CoarseForecast:
    """:math:`F`: one ``save_hours`` dinosaur forecast of a coarse frame (module docstring).

    ``forecast(frame)`` takes and returns ``(channel, lat, lon)`` float32 arrays, latitudes
    ascending as the truth stores write them. It may be called inside ``jit``/``vmap``.

    Attributes:
        setup: the model's resolution; its coarse grid and levels must be the emulator's.
        num_channels: channels of a frame (4 level variables × levels + 2 surface).
    """

    def __init__(self, setup: HeldSuarezSetup):
        if tuple(setup.state_levels) != tuple(range(setup.truth_levels)):
            raise ValueError(
                f"CoarseForecast needs every level of the model in the state "
                f"(state_levels = {tuple(range(setup.truth_levels))}), got {setup.state_levels}"
            )
        self.setup = setup
        self._sim = HeldSuarezSimulator(setup)
        self.latitudes, self.longitudes = self._sim.latitudes, self._sim.longitudes
        self.num_channels = len(LEVEL_VARIABLES) * setup.truth_levels + len(SURFACE_VARIABLES)
        with _dinosaur_promotion():
            self._build()

    def _build(self) -> None:
        from dinosaur import (
            horizontal_interpolation,
            primitive_equations,
            scales,
            spherical_harmonic,
            time_integration,
        )

        sim, units = self._sim, scales.units
        grid, specs = sim.spectral_grid, sim.specs
        to_model = horizontal_interpolation.ConservativeRegridder(sim.state_grid, grid)
        # Unit conversions as plain factors: the arrays stay jax arrays under tracing.
        per_speed = float(specs.nondimensionalize(1.0 * units.meter / units.second))
        per_kelvin = float(specs.nondimensionalize(1.0 * units.degK))
        per_pascal = float(specs.nondimensionalize(1.0 * units.pascal))
        reference = jnp.asarray(sim.reference_temperatures)[:, None, None]
        slices = _channel_slices(self.setup.truth_levels)
        integrate = time_integration.repeated(sim._step, sim._steps_per_save)

        def model_state(frame):
            nodal = {k: to_model(jnp.swapaxes(frame[s], -1, -2)) for k, s in slices.items()}
            vorticity, divergence = spherical_harmonic.uv_nodal_to_vor_div_modal(
                grid,
                nodal["u_component_of_wind"] * per_speed,
                nodal["v_component_of_wind"] * per_speed,
            )
            temperature = nodal["temperature"] * per_kelvin - reference
            log_pressure = jnp.log(nodal["surface_pressure"] * per_pascal)
            return primitive_equations.State(
                vorticity=vorticity,
                divergence=divergence,
                temperature_variation=grid.to_modal(temperature),
                log_surface_pressure=grid.to_modal(log_pressure),
            )

        def forecast(frame):
            fields = sim._to_coarse(integrate(model_state(frame.astype(jnp.float32))))
            parts = [fields[name] for name in LEVEL_VARIABLES]
            parts += [fields[name][None] for name in SURFACE_VARIABLES]
            return jnp.concatenate(parts, axis=0).astype(frame.dtype)

        # An inlined jit, traced once per process. Under a trace (a cycle's program) the outer
        # program's HLO is the one the bare function gives. An eager call (a particle's
        # initial state) is one compiled program: run op by op it dispatched 126 programs,
        # which cost a cold start of make demo's config 10 s of its 21 s build and its free
        # ensemble's first cycle another 6 s (benchmarks/startup.py). Compiled as one,
        # XLA fuses it differently: the forecast moves by float32 round-off (1e-7 relative;
        # surface pressure 7e-6, through its logarithm).
        self._traced = jax.jit(forecast, inline=True)

    def __call__(self, frame: jax.Array) -> jax.Array:
        expected = (self.num_channels, len(self.latitudes), len(self.longitudes))
        if tuple(frame.shape) != expected:
            raise ValueError(
                f"CoarseForecast: a frame must have shape {expected} = (channel, lat, lon), "
                f"got {tuple(frame.shape)}"
            )
        with _dinosaur_promotion():
            return self._traced(frame)


@functools.lru_cache(maxsize=4)
def coarse_forecast(
    truth_grid: str = "T21", levels: int = 8, lat: int = 32, lon: int = 64
) -> CoarseForecast:
    """The :class:`CoarseForecast` for a resolution, built once per process (dinosaur's
    operators take seconds to build)."""
    setup = HeldSuarezSetup(
        truth_grid=truth_grid,
        truth_levels=levels,
        time_step_minutes=30.0 if truth_grid == "T21" else 20.0,
        state_lat=lat,
        state_lon=lon,
        state_levels=tuple(range(levels)),
    )
    return CoarseForecast(setup)
