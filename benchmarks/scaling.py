r"""Cost of an FA-APF cycle against N, and against its lower bound from denoiser call counts.

For each emulator (Lorenz-96 ``l96_wilks05_dt0.05`` and Held–Suarez ``hs_t21_16x32``, with
the configs' own sampler and guidance) and each particle count N, one process times, side
by side and round-robin (see ``guidance_cost.time_rounds``: each block time is divided by
``F``'s block time of the same round, because the speed of a small shared machine drifts):

* ``F``: one denoiser call on N particles (``vmap``), at σ = 1;
* ``T1``, ``T2``: a forward pass that stores its linearisation plus 1 or 2 chained VJPs,
  so ``B = T2 − T1`` is one VJP application; each of the three runs as 8 chained calls in
  a compiled loop, divided by 8, so a call costs what it costs inside a cycle rather than
  what an isolated ``jit`` dispatch costs;
* ``forecast``: one unguided ensemble-forecast cycle (``FreeEnsemble.step``);
* ``guided``: one FA-APF cycle (Dirac weights, ESS-band α, resampling, MMPS proposals).

Call counts come from the filters themselves (``call_counts``): per particle, an unguided
cycle makes ``f_u`` denoiser calls and the FA-APF ``f_g`` calls (proposal steps plus the one
weight call) and ``b_g`` VJPs (``K + 1`` per guided call for MMPS with ``K`` CG steps). The
lower bound of a guided cycle is therefore ``f_g·F + b_g·B`` (the issue's
``F + (K+1)·B`` per guided call plus N weight calls), and the bound on the ratio of a guided
cycle to a forecast is ``(f_g·F + b_g·B) / (f_u·F)``. The table prints the measured ratio,
the bound, and ``measured / bound`` (target ≤ 1.15), plus ``guided / (f_g·F + b_g·B)``.

Memory: XLA's compiled memory analysis of one guided cycle (temporary buffers plus
arguments and outputs), vectorised and with ``particle_batch_size`` = ``--batch-size``,
so the effect of the bound is visible on any backend. On a GPU the device's own peak is
printed too.

    python benchmarks/scaling.py                                   # both emulators, CPU
    python benchmarks/scaling.py --models l96 --particles 16 64 256 1024
    python benchmarks/scaling.py --models hs --particles 16 64 256 1024 --rounds 5   # GPU
"""

from __future__ import annotations

import argparse
import math
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from filtrax.experiments.config import load_config
from filtrax.experiments.factory import build_experiment, build_filter, initial_particles
from filtrax.parallel import VectorisedParticles
from guidance_cost import jit_with_arrays, time_rounds

LOOP = 8  # denoiser calls per timed F / T1 / T2 (chained in a compiled loop)
MODELS = {
    "l96": ("configs/lorenz96/wilks05.toml", [16, 64, 256, 1024]),
    "hs": ("configs/heldsuarez/poster16.toml", [16, 64]),
}


def denoiser_functions(emulator, particles, calls_per_timing: int):
    """``F``, ``T1``, ``T2`` on the particles' conditioning, at σ = 1.

    Each runs ``calls_per_timing`` times in a ``lax.fori_loop``, every call's input being
    the previous call's output (as in a sampler), and is later divided by that count: a
    call then costs what it costs inside a compiled cycle, not what an isolated ``jit``
    dispatch costs (which dominates for millisecond-sized calls).
    """
    sigma = jnp.asarray(1.0, jnp.float32)
    cond = jax.vmap(emulator.condition)(particles)
    template = jax.vmap(emulator.latent_template)(particles)
    z = jax.random.normal(jax.random.key(0), template.shape, template.dtype)

    def looped(step):
        def run(emu, z, cond):
            return jax.lax.fori_loop(0, calls_per_timing, lambda _, x: step(emu, x, cond), z)

        return run

    def unguided(emu, z, cond):
        return jax.vmap(lambda zi, ci: emu.denoiser(zi, sigma, ci))(z, cond)

    def chained(count):
        def run(emu, z, cond):
            def one(zi, ci):
                out, vjp = jax.vjp(lambda x: emu.denoiser(x, sigma, ci), zi)
                v = out
                for _ in range(count):
                    (v,) = vjp(v)
                # Feed both back so neither the forward nor a VJP can be dropped.
                return 0.5 * (out + v)

            return jax.vmap(one)(z, cond)

        return run

    return {
        "F": (jit_with_arrays(looped(unguided), emulator), (z, cond)),
        "T1": (jit_with_arrays(looped(chained(1)), emulator), (z, cond)),
        "T2": (jit_with_arrays(looped(chained(2)), emulator), (z, cond)),
    }


def cycle_function(filter_, state, y, observation_model):
    step = eqx.filter_jit(lambda f, s, y, k: f.step(s, y, observation_model, k))
    key = jax.random.key(1)
    return lambda: step(filter_, state, y, key)


def compiled_bytes(filter_, state, y, observation_model) -> int:
    dynamic, static = eqx.partition((filter_, state), eqx.is_array)

    def step(dyn, y, key):
        f, s = eqx.combine(dyn, static)
        return f.step(s, y, observation_model, key)

    compiled = jax.jit(step).lower(dynamic, y, jax.random.key(1)).compile()
    analysis = compiled.memory_analysis()
    if analysis is None:
        return -1
    sizes = ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes")
    return int(sum(getattr(analysis, size) for size in sizes))


def measure(model: str, n: int, rounds: int, batch_size: int) -> dict:
    path, _ = MODELS[model]
    config = load_config(path, [f"filter.particles={n}", "run.cycles=1", "run.burn_in=0"])
    experiment = build_experiment(config)
    emulator = experiment.emulator
    observation_model = experiment.observation_model
    y = jnp.asarray(experiment.observations[0])
    particles = initial_particles(config, experiment.initial_state, n)
    guided = experiment.filter
    forecast = build_filter(config, emulator, "free")
    state = guided.init(particles)
    # Cycle 1, not 0: the configs skip the first selection (all particles start equal).
    state = eqx.tree_at(lambda s: s.cycle, state, jnp.ones((), jnp.int32))

    m = observation_model.num_observations
    f_g, b_g = (c / n for c in guided.call_counts(n, m))
    f_u, _ = (c / n for c in forecast.call_counts(n, m))

    calls = {}
    for name, (fn, args) in denoiser_functions(emulator, particles, LOOP).items():
        calls[name] = lambda fn=fn, args=args: fn(*args)
    calls["forecast"] = cycle_function(forecast, state, y, observation_model)
    calls["guided"] = cycle_function(guided, state, y, observation_model)
    tic = time.perf_counter()
    samples = time_rounds(calls, rounds=rounds, block_seconds=0.0, warmup=1)
    wall = time.perf_counter() - tic
    for name in ("F", "T1", "T2"):
        samples[name] = samples[name] / LOOP  # seconds per call
    relative = {k: np.median(v / samples["F"]) for k, v in samples.items()}
    f_ms = float(np.median(samples["F"])) * 1e3
    b_rel = relative["T2"] - relative["T1"]
    bound_cycle = f_g + b_g * b_rel  # in units of F
    bound_ratio = bound_cycle / f_u
    measured_ratio = relative["guided"] / relative["forecast"]

    batched = eqx.tree_at(lambda f: f.particle_map, guided, VectorisedParticles(min(batch_size, n)))
    memory = compiled_bytes(guided, state, y, observation_model)
    memory_batched = compiled_bytes(batched, state, y, observation_model)
    device_peak = None
    stats = jax.devices()[0].memory_stats() if hasattr(jax.devices()[0], "memory_stats") else None
    if stats and "peak_bytes_in_use" in stats:
        device_peak = stats["peak_bytes_in_use"]
    return {
        "model": model,
        "N": n,
        "F_ms": f_ms,
        "B_over_F": b_rel,
        "Flin_over_F": relative["T1"] - b_rel,
        "forecast_s": relative["forecast"] * f_ms / 1e3,
        "guided_s": relative["guided"] * f_ms / 1e3,
        "f_u": f_u,
        "f_g": f_g,
        "b_g": b_g,
        "measured_ratio": measured_ratio,
        "bound_ratio": bound_ratio,
        "ratio_over_bound": measured_ratio / bound_ratio,
        "guided_over_bound": relative["guided"] / bound_cycle,
        "memory_mb": memory / 2**20,
        "memory_batched_mb": memory_batched / 2**20,
        "device_peak_mb": None if device_peak is None else device_peak / 2**20,
        "wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--particles", nargs="+", type=int, help="N values (default per model)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8, help="particle_batch_size for memory")
    args = parser.parse_args()
    print(f"device: {jax.devices()[0].device_kind} x {len(jax.devices())}, jax {jax.__version__}")
    rows = []
    for model in args.models:
        for n in args.particles or MODELS[model][1]:
            row = measure(model, n, args.rounds, args.batch_size)
            rows.append(row)
            print(f"  measured {model} N={n} in {row['wall_s']:.0f} s", flush=True)
    header = (
        "| model | N | F ms | B/F | F_lin/F | calls f_u / f_g / b_g | forecast s | guided s | "
        "guided/forecast | bound | measured/bound | guided/(f_g F + b_g B) | "
        f"memory MB (all / batch {args.batch_size}) |"
    )
    print()
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for r in rows:
        peak = "" if r["device_peak_mb"] is None else f", device peak {r['device_peak_mb']:.0f}"
        print(
            f"| {r['model']} | {r['N']} | {r['F_ms']:.2f} | {r['B_over_F']:.2f} | "
            f"{r['Flin_over_F']:.2f} | "
            f"{r['f_u']:.0f} / {r['f_g']:.0f} / {r['b_g']:.0f} | {r['forecast_s']:.3f} | "
            f"{r['guided_s']:.3f} | {r['measured_ratio']:.2f} | {r['bound_ratio']:.2f} | "
            f"{r['ratio_over_bound']:.2f} | {r['guided_over_bound']:.2f} | "
            f"{r['memory_mb']:.1f} / {r['memory_batched_mb']:.1f}{peak} |"
        )
    if any(math.isnan(r["ratio_over_bound"]) for r in rows):
        raise SystemExit("a ratio is NaN")


if __name__ == "__main__":
    main()
