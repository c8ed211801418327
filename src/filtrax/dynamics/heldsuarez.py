r"""Truth for the atmosphere twin: dinosaur's dry primitive equations with Held–Suarez forcing.

**Model** (Held & Suarez 1994; dinosaur, Hoyer et al., https://github.com/google-research/dinosaur):
dry hydrostatic primitive equations on σ levels, spectral transform at ``truth_grid``
(default T21: 64 × 32 Gaussian nodes, 8 equidistant σ levels, implicit-explicit RK3 with a
30-minute step and an exponential spectral filter), Newtonian relaxation of temperature to
the Held–Suarez equilibrium profile and Rayleigh friction in the boundary layer (σ > 0.7).

**Coarse state.** The emulator never sees the model state. Every ``save_hours`` the physical
fields are conservatively averaged (dinosaur's ``ConservativeRegridder``) from the Gaussian
grid onto a coarser equiangular ``state_lat × state_lon`` grid (default 16 × 32, 11.25°
cells centred at ±5.625° … ±84.375°) and only the levels ``state_levels`` are kept. What
the averaging removes (sub-cell eddies, the dropped levels) makes the 12-hour transition of
the coarse state genuinely uncertain, as ERA5's is for GenCast.

**Variables** (ERA5 / WeatherBench-2 names; levels are σ = p/p_s, labelled as such):

========================== ===================== =======================================
name                       dims                  meaning
========================== ===================== =======================================
``temperature``            level, lat, lon       K
``u_component_of_wind``    level, lat, lon       m s⁻¹
``v_component_of_wind``    level, lat, lon       m s⁻¹
``geopotential``           level, lat, lon       m² s⁻² (hydrostatic, on σ levels)
``surface_pressure``       lat, lon              Pa
``near_surface_temperature`` lat, lon            K: the lowest model level's temperature
                                                 brought dry-adiabatically to σ = 1,
                                                 :math:`T_L\,\sigma_L^{-R/c_p}` (the model
                                                 has no 2 m diagnostics; this is its
                                                 analog of ``2m_temperature``)
========================== ===================== =======================================
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

LEVEL_VARIABLES = (
    "temperature",
    "u_component_of_wind",
    "v_component_of_wind",
    "geopotential",
)
SURFACE_VARIABLES = ("surface_pressure", "near_surface_temperature")
UNITS = {
    "temperature": "K",
    "u_component_of_wind": "m s-1",
    "v_component_of_wind": "m s-1",
    "geopotential": "m2 s-2",
    "surface_pressure": "Pa",
    "near_surface_temperature": "K",
}
LONG_NAMES = {
    "temperature": "air temperature on sigma levels",
    "u_component_of_wind": "eastward wind on sigma levels",
    "v_component_of_wind": "northward wind on sigma levels",
    "geopotential": "geopotential on sigma levels (hydrostatic)",
    "surface_pressure": "surface pressure",
    "near_surface_temperature": (
        "lowest-level temperature brought dry-adiabatically to sigma = 1 "
        "(analog of ERA5 2m_temperature)"
    ),
}
STANDARD_NAMES = {
    "temperature": "air_temperature",
    "u_component_of_wind": "eastward_wind",
    "v_component_of_wind": "northward_wind",
    "geopotential": "geopotential",
    "surface_pressure": "surface_air_pressure",
    "near_surface_temperature": "air_temperature",
}
TRUTH_GRIDS = ("T21", "TL31", "T31")
#: A stable integrator step per truth grid: TL31 and T31 blow up within days at 30 minutes.
TIME_STEP_MINUTES = {"T21": 30.0, "TL31": 20.0, "T31": 20.0}
#: Nominal date of model day 0 (perpetual equinox: the date carries no meaning).
MODEL_EPOCH = "2000-01-01T00:00:00"


@dataclasses.dataclass(frozen=True)
class HeldSuarezSetup:
    """Resolution of the truth and of the coarse state (see the module docstring).

    Attributes:
        truth_grid: dinosaur's spectral grid of the simulation.
        truth_levels: equidistant σ levels of the simulation.
        time_step_minutes: the integrator's step.
        save_hours: the emulator's step (time between saved states).
        state_lat, state_lon: the coarse equiangular grid.
        state_levels: indices (into the ``truth_levels`` σ levels, 0 = top) that are kept.
    """

    truth_grid: str = "T21"
    truth_levels: int = 8
    time_step_minutes: float = 30.0
    save_hours: float = 12.0
    state_lat: int = 16
    state_lon: int = 32
    state_levels: tuple[int, ...] = (1, 3, 5, 7)

    def __post_init__(self):
        if self.truth_grid not in TRUTH_GRIDS:
            raise ValueError(f"truth_grid = {self.truth_grid!r}; expected one of {TRUTH_GRIDS}")
        if not all(0 <= i < self.truth_levels for i in self.state_levels):
            raise ValueError(
                f"state_levels = {self.state_levels} must index the {self.truth_levels} "
                f"truth levels (0 … {self.truth_levels - 1})"
            )
        steps = self.save_hours * 60 / self.time_step_minutes
        if abs(steps - round(steps)) > 1e-9 or steps < 1:
            raise ValueError(
                f"save_hours = {self.save_hours} is not a whole number of "
                f"time_step_minutes = {self.time_step_minutes}"
            )

    @property
    def sigma_centers(self) -> np.ndarray:
        return (np.arange(self.truth_levels) + 0.5) / self.truth_levels

    @property
    def state_sigma(self) -> np.ndarray:
        return self.sigma_centers[list(self.state_levels)]

    def attributes(self) -> dict:
        return {
            "truth_grid": self.truth_grid,
            "truth_levels": self.truth_levels,
            "time_step_minutes": self.time_step_minutes,
            "save_hours": self.save_hours,
            "state_grid": f"{self.state_lat}x{self.state_lon} equiangular",
            "state_levels": list(self.state_levels),
        }


def _dinosaur_promotion():
    """dinosaur relies on NumPy's implicit rank promotion; allow it inside its calls, whatever
    the caller's (our tests run with ``jax_numpy_rank_promotion = "raise"``)."""
    import contextlib

    stack = contextlib.ExitStack()
    stack.enter_context(jax.numpy_rank_promotion("allow"))
    stack.enter_context(jax.numpy_dtype_promotion("standard"))
    return stack


class HeldSuarezSimulator:
    """A jitted dinosaur integration that emits coarse physical states.

    >>> sim = HeldSuarezSimulator(HeldSuarezSetup())          # doctest: +SKIP
    >>> state = sim.spin_up(sim.initial_state(jax.random.key(0)), days=200)  # doctest: +SKIP
    >>> state, fields = sim.trajectory(state, num_outputs=10)  # doctest: +SKIP
    """

    def __init__(self, setup: HeldSuarezSetup):
        with _dinosaur_promotion():
            self._build(setup)

    def _build(self, setup: HeldSuarezSetup):
        from dinosaur import spherical_harmonic, time_integration

        self.setup = setup
        model = _dinosaur_model(setup)
        grid, step = model["grid"], model["step"]
        target = spherical_harmonic.Grid(
            longitude_wavenumbers=0,
            total_wavenumbers=0,
            longitude_nodes=setup.state_lon,
            latitude_nodes=setup.state_lat,
            latitude_spacing="equiangular",
        )
        to_coarse = _coarse_projection(setup, model, target)
        transform_members, high_pass, with_mass_of = _member_maps(grid)
        steps_per_save = round(setup.save_hours * 60 / setup.time_step_minutes)
        self._forecast = jax.jit(jax.vmap(time_integration.repeated(step, steps_per_save)))
        self._coarse_members = jax.jit(jax.vmap(to_coarse))
        self._transform_members = jax.jit(transform_members)
        self._high_pass = jax.jit(high_pass, static_argnums=1)
        self._with_mass_of = jax.jit(with_mass_of)
        # The Gaussian grid's nodes in the nodal fields' (lon, lat) order, flattened: the
        # sites of transform_members. dinosaur's mesh holds longitude and sin(latitude).
        node_lon, node_sin_lat = grid.nodal_mesh
        self.node_latitudes = np.degrees(np.arcsin(np.asarray(node_sin_lat))).ravel()
        self.node_longitudes = np.degrees(np.asarray(node_lon)).ravel()
        self._init_fn = model["init_fn"]
        # What filtrax.dynamics.coarse_forecast needs to map a coarse state back onto the model.
        self.spectral_grid, self.specs = grid, model["specs"]
        self.reference_temperatures = model["ref_temps"]
        self.state_grid = target
        self._step = step
        self._to_coarse = to_coarse
        self._steps_per_save = steps_per_save
        steps_per_day = round(24 * 60 / setup.time_step_minutes)
        self.latitudes = np.degrees(np.asarray(target.latitudes))
        self.longitudes = np.degrees(np.asarray(target.longitudes))
        self._trajectories: dict[int, Callable] = {}
        self._spin = jax.jit(time_integration.repeated(step, steps_per_day * 10))
        self._time_integration = time_integration

    def initial_state(self, key: jax.Array):
        """Isothermal rest plus a 50 hPa wavenumber-4 bump placed by ``key``."""
        with _dinosaur_promotion():
            return self._init_fn(key)

    def spin_up(self, state, days: float | int):
        """Integrate ``days`` (rounded up to a multiple of 10) without output."""
        with _dinosaur_promotion():
            for _ in range(math.ceil(days / 10)):
                state = self._spin(state)
        return state

    def trajectory(self, state, num_outputs: int):
        """Integrate ``num_outputs`` save intervals; returns (final state, coarse fields)."""
        if num_outputs not in self._trajectories:
            self._trajectories[num_outputs] = jax.jit(
                self._time_integration.trajectory_from_step(
                    self._step,
                    num_outputs,
                    self._steps_per_save,
                    post_process_fn=self._to_coarse,
                )
            )
        with _dinosaur_promotion():
            final, fields = self._trajectories[num_outputs](state)
        return final, jax.device_get(fields)

    # Ensembles of model states (a leading member axis on every field), for filters that run
    # dinosaur itself as their forecast model (benchmarks/perfect_model.py).

    def forecast(self, states):
        """Integrate every member one save interval (``save_hours``)."""
        with _dinosaur_promotion():
            return self._forecast(states)

    def coarse_members(self, states) -> dict[str, jax.Array]:
        """Every member's coarse physical fields, as :meth:`trajectory` emits them."""
        with _dinosaur_promotion():
            return self._coarse_members(states)

    def transform_members(self, states, transforms):
        r"""Member i's new prognostic fields at each node g of the Gaussian grid are
        :math:`\sum_k A_{g,ik} x_k` (``transforms`` ``(nodes, N, N)``, nodes in the order of
        :attr:`node_latitudes`), e.g. an LETKF analysis (:mod:`filtrax.filters.letkf`)."""
        nodes = self.node_latitudes.size
        members = states.vorticity.shape[0]
        if tuple(transforms.shape) != (nodes, members, members):
            raise ValueError(
                f"transform_members: transforms has shape {tuple(transforms.shape)}; expected "
                f"({nodes}, {members}, {members}) for {members} members on {nodes} nodes"
            )
        with _dinosaur_promotion():
            return self._transform_members(states, transforms)

    def with_mass_of(self, states, reference):
        r"""``states`` with each member's surface pressure scaled so that the atmosphere's
        mass, :math:`\int p_s\,dA`, is the ``reference`` member's (a mass fixer).

        A filter's node-by-node analysis can move a member's mass, and the 12 h forecasts of
        analysed members were measured not to conserve it either, so
        ``benchmarks/perfect_model.py --mass-fixer`` restores it to the initial mass. Scaling
        :math:`p_s` by a constant adds its logarithm to the constant mode of :math:`\ln p_s`
        and leaves every gradient, hence the dynamics' forces, as the analysis made them."""
        with _dinosaur_promotion():
            return self._with_mass_of(states, reference)

    def high_pass(self, state, min_total_wavenumber: int):
        """The state's prognostic fields keeping total wavenumbers >= ``min_total_wavenumber``."""
        with _dinosaur_promotion():
            return self._high_pass(state, min_total_wavenumber)


def _dinosaur_model(setup: HeldSuarezSetup) -> dict:
    """Dinosaur's Held–Suarez model at ``setup.truth_grid``: its spectral grid, σ levels,
    specs, the state at rest's initialiser, reference temperatures, orography and the
    filtered IMEX step (Held & Suarez 1994; the exponential filter of dinosaur's examples)."""
    from dinosaur import (
        coordinate_systems,
        held_suarez,
        primitive_equations,
        primitive_equations_states,
        scales,
        sigma_coordinates,
        spherical_harmonic,
        time_integration,
        xarray_utils,
    )

    units = scales.units
    grid = getattr(spherical_harmonic.Grid, setup.truth_grid)()
    vertical = sigma_coordinates.SigmaCoordinates.equidistant(setup.truth_levels)
    coords = coordinate_systems.CoordinateSystem(horizontal=grid, vertical=vertical)
    # dinosaur's own annotations disagree with its documented use here (SimUnits for its
    # SimUnitsProtocol, a float filter order, a nondimensional Numeric time step): the
    # ignores below are for those signatures only.
    specs = primitive_equations.PrimitiveEquationsSpecs.from_si()
    init_fn, aux = primitive_equations_states.isothermal_rest_atmosphere(
        coords,
        specs,  # pyright: ignore[reportArgumentType]
        p0=1e5 * units.pascal,
        p1=5e3 * units.pascal,
    )
    ref_temps = aux[xarray_utils.REF_TEMP_KEY]
    orography = primitive_equations.truncated_modal_orography(aux[xarray_utils.OROGRAPHY], coords)
    equations = time_integration.compose_equations(
        [
            primitive_equations.PrimitiveEquations(
                ref_temps,
                orography,
                coords,
                specs,  # pyright: ignore[reportArgumentType]
            ),
            held_suarez.HeldSuarezForcingSigma(
                coords=coords,
                physics_specs=specs,  # pyright: ignore[reportArgumentType]
                reference_temperature=ref_temps,
                p0=1e5 * units.pascal,
            ),
        ]
    )
    dt = specs.nondimensionalize(setup.time_step_minutes * units.minute)
    step = time_integration.step_with_filters(
        time_integration.imex_rk_sil3(equations, dt),  # pyright: ignore[reportArgumentType]
        [
            time_integration.exponential_step_filter(
                grid,
                dt,  # pyright: ignore[reportArgumentType]
                tau=0.0087504,
                order=1.5,  # pyright: ignore[reportArgumentType]
                cutoff=0.8,
            )
        ],
    )
    return dict(
        grid=grid, vertical=vertical, specs=specs, init_fn=init_fn, ref_temps=ref_temps,
        orography=orography, step=step, units=units,
    )  # fmt: skip


def _coarse_projection(setup: HeldSuarezSetup, model: dict, target):
    """``to_coarse(state)``: the physical fields of a model state, conservatively averaged
    onto ``target`` at the kept levels, with the near-surface temperature analog."""
    from dinosaur import horizontal_interpolation, primitive_equations, spherical_harmonic

    grid, vertical, specs = model["grid"], model["vertical"], model["specs"]
    ref_temps, units = model["ref_temps"], model["units"]
    regrid = horizontal_interpolation.ConservativeRegridder(grid, target)
    kept = np.asarray(setup.state_levels)
    lowest_sigma = float(setup.sigma_centers[-1])
    nodal_orography = grid.to_nodal(model["orography"])

    def to_coarse(state) -> dict[str, jax.Array]:
        u, v = spherical_harmonic.vor_div_to_uv_nodal(grid, state.vorticity, state.divergence)
        temperature = ref_temps[:, None, None] + grid.to_nodal(state.temperature_variation)
        surface_pressure = jnp.exp(grid.to_nodal(state.log_surface_pressure))[0]
        geopotential = primitive_equations.get_geopotential_on_sigma(
            temperature,
            nodal_orography=nodal_orography,
            sigma=vertical,
            gravity_acceleration=specs.g,
            ideal_gas_constant=specs.R,
        )
        speed = units.meter / units.second
        physical = {
            "temperature": specs.dimensionalize(temperature, units.degK).m,
            "u_component_of_wind": specs.dimensionalize(u, speed).m,
            "v_component_of_wind": specs.dimensionalize(v, speed).m,
            "geopotential": specs.dimensionalize(geopotential, speed**2).m,
        }
        out = {name: regrid(field[kept]) for name, field in physical.items()}
        out["surface_pressure"] = regrid(specs.dimensionalize(surface_pressure, units.pascal).m)
        lowest = physical["temperature"][-1] * lowest_sigma ** (-specs.kappa)
        out["near_surface_temperature"] = regrid(lowest)
        # dinosaur's nodal layout is (…, lon, lat); the CNN wants (…, lat, lon).
        return {k: jnp.swapaxes(v, -1, -2).astype(jnp.float32) for k, v in out.items()}

    return to_coarse


def _member_maps(grid):
    """Jittable maps on a batch of model states: the LETKF's node-by-node transforms, a
    spectral high-pass, and a mass correction to a reference ensemble's."""
    prognostic = ("vorticity", "divergence", "temperature_variation", "log_surface_pressure")

    def transform_members(states, transforms):
        # Each member's analysis is, node by node of the Gaussian grid, a combination of
        # the forecast members; applied to the nodal fields and projected back to modal
        # coefficients (exact for band-limited fields on dinosaur's Gaussian grid).
        from ..filters.letkf import apply_transforms  # filters build on dynamics

        replaced = {}
        for name in prognostic:
            nodal = grid.to_nodal(getattr(states, name))  # (member, level, lon, lat)
            mixed = apply_transforms(transforms, nodal.reshape(*nodal.shape[:-2], -1))
            replaced[name] = grid.to_modal(mixed.reshape(nodal.shape))
        return dataclasses.replace(states, **replaced)

    total_wavenumber = grid.modal_mesh[1]

    def high_pass(state, min_total_wavenumber):
        keep = (total_wavenumber >= min_total_wavenumber).astype(state.vorticity.dtype)
        return dataclasses.replace(
            state, **{name: getattr(state, name) * keep for name in prognostic}
        )

    constant_mode = grid.to_modal(jnp.ones(grid.nodal_shape))  # zero but for m = l = 0

    def with_mass_of(states, reference):
        def mass(log_surface_pressure):  # (member, 1, m, l) -> (member, 1)
            return grid.integrate(jnp.exp(grid.to_nodal(log_surface_pressure)))

        shift = jnp.log(mass(reference.log_surface_pressure) / mass(states.log_surface_pressure))
        return dataclasses.replace(
            states,
            log_surface_pressure=states.log_surface_pressure
            + shift[..., None, None] * constant_mode,
        )

    return transform_members, high_pass, with_mass_of
