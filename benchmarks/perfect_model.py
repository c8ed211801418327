r"""What can the poster's observations do with a perfect model? An LETKF running dinosaur itself.

The poster's filters (``benchmarks/poster.py``) forecast with the learned emulator, whose
members have the right spread but not the structure of its error
(``benchmarks/error_structure.py``). This script removes the emulator: the forecast model of
every member is the dynamical core that made the truth (dinosaur's Held–Suarez primitive
equations at T21, 8 σ levels, :class:`filtrax.dynamics.heldsuarez.HeldSuarezSimulator`), so
the only limits left are the observation network, the ensemble size and the filter. It asks
whether the issue's targets (unobserved variables at ≤ 0.35 × the free ensemble after 30
cycles, observed temperature ≤ 0.3 ×) can be reached *at all* with these observations.

**Truth.** Spin-up from rest (``--spin-up-days``), then ``--members`` states 3 days apart
that form a climatological library, then, 3 days after the last of them, the truth:
``--cycles`` 12 h steps.

**Initial ensemble.** The poster starts from N copies of the true coarse state, and the
emulator's noise spreads them. Dinosaur is deterministic, so here the members are the true
model state with what the coarse grid cannot resolve replaced: member i keeps the truth's
total wavenumbers below ``--min-wavenumber`` and takes library state i's from there up (all
fields and levels). The default, 16, is the coarse grid's Nyquist wavenumber (32 cells
around a latitude circle); measured on the coarse state, it starts the members 0.75 K, 2.2 /
2.5 m/s, 116 m²/s² and 119 Pa from the truth (RMSE of their mean), about the emulator's own
12 h error (0.60 K, 2.2 / 2.4 m/s, 66 m²/s², 66 Pa; its card).

**Observations** (as the poster's): the coarse temperature at its 4 levels and the
near-surface temperature on every ``--stride``-th coarse cell in lat and lon, with error
``--error-std`` K, drawn from ``jax.random.key(--seed)``. The filter assumes
``--assumed-error-std`` (default: the same); a larger value is observation-error inflation.
``--mass-fixer`` restores every member's mass to its initial one (the truth's) after each
analysis.

**Filter.** The LETKF (:mod:`filtrax.filters.letkf`; Hunt et al. 2007) at each node of
dinosaur's Gaussian grid, observations tapered by Gaspari–Cohn at ``--half-width`` km (the
poster's EnKF uses 2000 km), multiplicative inflation ``--inflation`` and relaxation to prior
perturbations ``--relaxation``. Every member's analysis is a combination of the forecast
members, applied to dinosaur's prognostic fields (vorticity, divergence, temperature, log
surface pressure) on its grid. The **free ensemble** is the same initial ensemble without
observations.

Scores are the poster's: RMSE of the ensemble mean of the coarse state (16 × 32, the
emulator's levels), levels pooled, cos-latitude weighted, per variable and cycle, as a ratio
to the free ensemble. The per-cycle scores are written to ``--out`` (netCDF).

    python benchmarks/perfect_model.py                       # N = 64, stride 4, 30 cycles
    python benchmarks/perfect_model.py --stride 2 --out runs/perfect_model/stride2.nc
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from tqdm import tqdm

from filtrax.dynamics.heldsuarez import (
    LEVEL_VARIABLES,
    SURFACE_VARIABLES,
    HeldSuarezSetup,
    HeldSuarezSimulator,
)
from filtrax.filters.covariance_localisation import EARTH_RADIUS_KM, gaspari_cohn
from filtrax.filters.letkf import letkf_transforms
from filtrax.metrics import rmse, spread

VARIABLES = (*LEVEL_VARIABLES, *SURFACE_VARIABLES)
OBSERVED = ("temperature", "near_surface_temperature")


def unit_sphere(latitudes: np.ndarray, longitudes: np.ndarray) -> np.ndarray:
    """``(n, 3)`` points on the unit sphere for paired latitude/longitude arrays (degrees)."""
    phi, lam = np.deg2rad(latitudes), np.deg2rad(longitudes)
    return np.stack([np.cos(phi) * np.cos(lam), np.cos(phi) * np.sin(lam), np.sin(phi)], -1)


def observe(coarse: dict[str, jax.Array], stride: int) -> jax.Array:
    """``(..., obs)``: the observed channels on every ``stride``-th coarse cell."""
    batch = coarse["near_surface_temperature"].shape[:-2]
    parts = [coarse[name][..., ::stride, ::stride].reshape(*batch, -1) for name in OBSERVED]
    return jnp.concatenate(parts, axis=-1)


def scores(coarse: dict[str, jax.Array], truth: dict[str, jax.Array], weights: np.ndarray):
    """Per variable: (RMSE of the mean, spread), levels pooled, cos-lat weighted."""
    out = {}
    for name in VARIABLES:
        members, true = np.asarray(coarse[name], np.float64), np.asarray(truth[name], np.float64)
        out[name] = (rmse(members, true, weights), spread(members, weights))
    return out


def global_mean_error(coarse, truth, weights: np.ndarray) -> float:
    """The area-weighted global mean surface pressure of the ensemble mean minus the truth's
    (Pa): the atmosphere's mass, which the dynamics conserve."""
    error = np.asarray(coarse["surface_pressure"]).mean(0) - np.asarray(truth["surface_pressure"])
    return float(np.sum(weights * error) / np.sum(weights))


def stacked(states, members: int):
    """A batch of ``members`` copies of one model state."""
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (members, *jnp.shape(a))), states)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=64)
    parser.add_argument("--cycles", type=int, default=30)
    parser.add_argument("--stride", type=int, default=4)
    parser.add_argument("--error-std", type=float, default=0.1)
    parser.add_argument(
        "--assumed-error-std",
        type=float,
        default=None,
        help="the observation error std the filter assumes (default: --error-std)",
    )
    parser.add_argument("--half-width", type=float, default=2000.0, help="Gaspari-Cohn c (km)")
    parser.add_argument("--inflation", type=float, default=1.1)
    parser.add_argument("--relaxation", type=float, default=0.5, help="RTPP coefficient")
    parser.add_argument("--min-wavenumber", type=int, default=16)
    parser.add_argument("--spin-up-days", type=float, default=200.0)
    parser.add_argument(
        "--mass-fixer",
        action="store_true",
        help="restore each member's mass (integral of surface pressure) to its initial one "
        "after every analysis",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/perfect_model/stride4.nc"))
    args = parser.parse_args()
    if args.members < 2 or args.cycles < 1 or args.stride < 1:
        parser.error("--members must be >= 2, --cycles and --stride >= 1")
    if args.assumed_error_std is None:
        args.assumed_error_std = args.error_std
    if not (args.error_std > 0 and args.assumed_error_std > 0):
        parser.error(
            f"--error-std = {args.error_std} and --assumed-error-std = "
            f"{args.assumed_error_std}; expected both > 0"
        )
    if not 1 <= args.min_wavenumber <= 21:
        parser.error(f"--min-wavenumber = {args.min_wavenumber}; expected 1 … 21 (T21)")

    tic = time.perf_counter()
    sim = HeldSuarezSimulator(HeldSuarezSetup())
    key_model, key_obs = jax.random.split(jax.random.key(args.seed))
    state = sim.spin_up(sim.initial_state(key_model), args.spin_up_days)
    library = []
    for _ in range(args.members + 1):
        for _ in range(6):  # 3 days
            state = sim.forecast(stacked(state, 1))
            state = jax.tree.map(lambda a: a[0], state)
        library.append(state)
    # The truth is 3 days past the last library state, so no member starts as the truth.
    truth = library.pop()
    library = jax.tree.map(lambda *a: jnp.stack(a), *library)
    truth_members = stacked(truth, args.members)
    # Keep the truth's large scales; take the library's small ones (module docstring).
    initial = jax.tree.map(
        lambda t, t_small, lib_small: t - t_small + lib_small,
        truth_members,
        sim.high_pass(truth_members, args.min_wavenumber),
        sim.high_pass(library, args.min_wavenumber),
    )
    print(f"spin-up and library: {time.perf_counter() - tic:.0f} s")

    weights = np.cos(np.deg2rad(sim.latitudes))[:, None] * np.ones(sim.longitudes.size)
    coarse_lat = np.repeat(sim.latitudes[:, None], sim.longitudes.size, 1)
    coarse_lon = np.repeat(sim.longitudes[None, :], sim.latitudes.size, 0)
    obs_lat = coarse_lat[:: args.stride, :: args.stride].ravel()
    obs_lon = coarse_lon[:: args.stride, :: args.stride].ravel()
    channels_per_site = len(sim.setup.state_levels) + 1  # temperature levels, near-surface
    obs_points = np.tile(unit_sphere(obs_lat, obs_lon), (channels_per_site, 1))
    nodes = unit_sphere(sim.node_latitudes, sim.node_longitudes)
    distance = EARTH_RADIUS_KM * np.linalg.norm(nodes[:, None] - obs_points[None], axis=-1)
    locality = gaspari_cohn(jnp.asarray(distance, jnp.float32), args.half_width)
    # The filter may assume a larger error than the observations have (R inflation).
    error_std = jnp.full(obs_points.shape[0], args.assumed_error_std, jnp.float32)
    print(
        f"N = {args.members}, {obs_points.shape[0]} observations per cycle (stride "
        f"{args.stride}), LETKF c = {args.half_width:g} km, inflation {args.inflation:g}, "
        f"RTPP {args.relaxation:g}, assumed error {args.assumed_error_std:g} K; initial members "
        f"differ from wavenumber {args.min_wavenumber}"
    )

    transforms_fn = jax.jit(
        lambda predicted, y: letkf_transforms(
            predicted,
            y,
            error_std,
            locality,
            inflation=args.inflation,
            relaxation=args.relaxation,
        )
    )
    filtered, free = initial, initial
    records = {"letkf": [], "free": []}
    mass_errors = {"letkf": [], "free": []}
    first = scores(
        sim.coarse_members(initial), _single(sim.coarse_members(stacked(truth, 1))), weights
    )
    for cycle in tqdm(range(1, args.cycles + 1), desc="cycles"):
        truth = jax.tree.map(lambda a: a[0], sim.forecast(stacked(truth, 1)))
        true_coarse = _single(sim.coarse_members(stacked(truth, 1)))
        noise = args.error_std * jax.random.normal(
            jax.random.fold_in(key_obs, cycle), (obs_points.shape[0],)
        )
        observations = observe(true_coarse, args.stride) + noise
        forecast = sim.forecast(filtered)
        predicted = observe(sim.coarse_members(forecast), args.stride)
        filtered = sim.transform_members(forecast, transforms_fn(predicted, observations))
        if args.mass_fixer:
            # The dry mass is a known constant, and the truth's, since every member starts
            # with the truth's wavenumber 0. Restoring it to the forecast's is not enough: the
            # forecasts of analysed members do not conserve it (measured: the analysis mean's
            # global-mean surface pressure still drifted by 700 Pa in 30 cycles).
            filtered = sim.with_mass_of(filtered, initial)
        free = sim.forecast(free)
        coarse = {"letkf": sim.coarse_members(filtered), "free": sim.coarse_members(free)}
        diverged = [
            name
            for name, fields in coarse.items()
            if not all(bool(jnp.all(jnp.isfinite(v))) for v in fields.values())
        ]
        if diverged:
            # Keep (and report) the cycles before: a filter that blows up is a result.
            tqdm.write(f"the {' and '.join(diverged)} ensemble is not finite at cycle {cycle}")
            break
        for name, fields in coarse.items():
            records[name].append(scores(fields, true_coarse, weights))
            mass_errors[name].append(global_mean_error(fields, true_coarse, weights))
        tqdm.write(
            f"cycle {cycle}: LETKF / free "
            + " ".join(
                f"{records['letkf'][-1][v][0] / records['free'][-1][v][0]:.2f}" for v in VARIABLES
            )
        )

    if not records["free"]:
        raise SystemExit("nothing to report: an ensemble was not finite at cycle 1")
    data_vars = {
        f"{kind}_{method}": (
            ("cycle", "variable"),
            np.array([[r[v][i] for v in VARIABLES] for r in records[method]]),
        )
        for method in records
        for i, kind in enumerate(("rmse", "spread"))
    }
    for method, errors in mass_errors.items():
        data_vars[f"global_mean_surface_pressure_error_{method}"] = ("cycle", errors)
    ds = xr.Dataset(
        data_vars,
        coords={"cycle": np.arange(1, len(records["free"]) + 1), "variable": list(VARIABLES)},
        attrs={k: str(v) for k, v in vars(args).items()},
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    ds.to_netcdf(args.out)

    short = [v[:14] for v in VARIABLES]
    print(
        "initial ensemble RMSE (coarse state): "
        + ", ".join(f"{s} {first[v][0]:.3g}" for s, v in zip(short, VARIABLES, strict=True))
    )
    print("RMSE of the LETKF's analysis mean / the free ensemble's, by cycle:")
    columns = "".join(f"{s:>16}" for s in short)
    print(f"{'cycle':>5}{columns}   free: T (K), u (m/s)   LETKF mass error (Pa)")
    ratio = ds.rmse_letkf / ds.rmse_free
    for c in ds.cycle.values:
        free = ds.rmse_free.sel(cycle=c)
        print(
            f"{c:>5}"
            + "".join(f"{float(ratio.sel(cycle=c, variable=v)):>16.2f}" for v in VARIABLES)
            + f"{float(free.sel(variable='temperature')):>11.3g}"
            + f"{float(free.sel(variable='u_component_of_wind')):>8.3g}"
            + f"{float(ds.global_mean_surface_pressure_error_letkf.sel(cycle=c)):>24.3g}"
        )
    last = ds.isel(cycle=-1)
    late = ds.isel(cycle=slice(4, None)).mean("cycle")
    print("\nlast cycle: RMSE (ratio to free) spread/RMSE averaged over cycles 5+")
    for method in ("letkf", "free"):
        cells = "".join(
            f"{float(last[f'rmse_{method}'].sel(variable=v)):>9.3g} "
            f"({float(ratio.isel(cycle=-1).sel(variable=v)) if method == 'letkf' else 1.0:.2f}) "
            f"{float((late[f'spread_{method}'] / late[f'rmse_{method}']).sel(variable=v)):.2f}"
            for v in VARIABLES
        )
        print(f"{method:<6}{cells}")
    print(f"wrote {args.out}; {time.perf_counter() - tic:.0f} s in all")


def _single(coarse: dict[str, jax.Array]) -> dict[str, jax.Array]:
    return {k: v[0] for k, v in coarse.items()}


if __name__ == "__main__":
    main()
