r"""Cost of a guided MMPS denoiser call against its lower bound ``F + (K+1)·B``.

Cost model. One MMPS posterior-denoiser call (Rozet, Andry, Lanusse & Louppe 2024,
arXiv:2405.13712) with ``K`` iterations of the hand-written conjugate gradient in
:mod:`filtrax.guidance.linear_solvers` (started at ``u₀ = 0``, so no matvec is spent on
``A u₀``) runs

* one forward pass of the denoiser that stores its linearisation (``jax.vjp``),
* ``K`` VJPs through that linearisation, one per CG matvec ``σ² G J Gᵀ v``, and
* one more VJP for the score ``Jᵀ Gᵀ u``,

so its cost cannot be below ``F + (K+1)·B``, where ``F`` is an unguided denoiser call and ``B``
one VJP application. Everything else (the observation operator, CG's vector updates) is
``O(num_observations)`` and should be negligible next to a network pass. The target is a
ratio ``measured / (F + (K+1)·B) ≤ 1.15`` for every ``K``.

Measurement. A small EDM-preconditioned MLP denoiser (``EDMPreconditionedDenoiser``
around ``eqx.nn.MLP``, conditioned on ``c_noise`` and a ``cond`` vector) observed on every
4th state entry (``PointSelection``, noise variance 0.01) is ``vmap``-ed over ``P`` particles
so that timings are compute-bound, not dispatch-bound. Each function is ``jax.jit``-compiled
once and warmed up. Then, in each of many rounds, every function is timed once as a block of
back-to-back calls (the same count for all, enough for ``F``'s block to last 2 ms) ended by
``block_until_ready``, in a rotating order. The speed of a small shared CPU machine drifts by
up to 2x over seconds, which makes medians of absolute times unreliable for ratios (they
moved the ratio by ±0.15 between quarters of one run); so each block time is divided by
``F``'s block time *of the same round*, and the median over rounds of that relative time is
used (``IQR`` columns give its spread). ``ms`` columns are those medians times the median
``F``. The timed functions are

* ``F``: the unguided denoiser;
* ``T1``: forward with a stored linearisation + 1 VJP;
* ``T2``: forward with the same linearisation + 2 VJPs, the second cotangent being the
  first VJP's output (sequential, as CG's matvecs are, so XLA cannot merge them);
* the guided call ``GuidedDenoiser(denoiser, MMPSGuidance(K, "cg"), ...)`` for K = 1, 2, 4.

* ``D1``, ``D2``: as ``T1``, ``T2``, but the first cotangent is the forward's own output.

Then ``B = T2 − T1`` (one VJP application) and ``F_lin = T1 − B`` (a forward that stores
the linearisation; reported for information). The bound uses the unguided ``F``.

Why ``D1``/``D2``. In ``T1`` the cotangent is an input, so XLA can start the VJP's first
matrix product before the forward has finished, on the other core. A guided call never can:
its every cotangent comes from the residual ``y − h(x̂)``. Measured on a 2-core CPU
(jax 0.10.2, P = 64): ``T1 = 1.62–1.65 F`` but ``D1 = 1.90–1.92 F``, with the same ``B``
(0.63–0.69 F). A forward that stores its linearisation and must finish first costs
``1.2 F``; ``jax.linearize`` + ``linear_transpose`` costs the same as ``jax.vjp``
(1.918 F against 1.915 F) and re-materialising (``jax.checkpoint``) costs more (2.2 F).
The compiled guided call for K = 1 has the same 12 matrix products and the same flop count
as ``T2`` (3.11e8); what it adds are the observation operator's gather and scatter-add (one
pair per matvec) and seven 64 × 64 transposes of the particle-batched observation vectors.
Replacing the gather/scatter by a mask on the state saves 0.15–0.25 F at K = 1. The last
column is the ratio to the bound that can be reached, ``F_lin + (K+1)·B`` from ``D1``/``D2``.

The model assumes additive, compute-bound passes. With few particles (``P = 16``) a pass
mostly streams the ~3 MB of weights through a shared cache, successive VJPs are not equally
expensive and ``T2 − T1`` misjudges ``B`` by up to 40 % from run to run; hence ``P = 64``
by default and ``P = 32`` for ``--quick`` (a smoke test: fewer rounds, noisier ratios).

Run: ``.venv/bin/python benchmarks/guidance_cost.py [--quick] [--particles P] [--dim D]``.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from filtrax.diffusion.denoisers import EDMPreconditionedDenoiser
from filtrax.guidance.guided import GuidedDenoiser, MMPSGuidance
from filtrax.observations.model import ObservationModel
from filtrax.observations.operators import PointSelection

ITERATIONS = (1, 2, 4)
TARGET = 1.15
SIGMA = 1.0
NOISE_VARIANCE = 0.01
OBSERVE_EVERY = 4
NOISY_IQR = 0.25  # relative IQR above which the run is flagged as noisy
BLOCK_SECONDS = 2e-3  # a block lasts at least this long for F, so dispatch is negligible


class MLPNetwork(eqx.Module):
    """``F_θ(x_scaled, c_noise, cond)``: an MLP on ``[x_scaled, c_noise, cond]``."""

    mlp: eqx.nn.MLP

    def __init__(self, dim: int, cond_dim: int, width: int, depth: int, *, key: jax.Array):
        self.mlp = eqx.nn.MLP(
            in_size=dim + 1 + cond_dim,
            out_size=dim,
            width_size=width,
            depth=depth,
            activation=jax.nn.silu,
            key=key,
        )

    def __call__(self, x: jax.Array, c_noise: jax.Array, cond: jax.Array) -> jax.Array:
        return self.mlp(jnp.concatenate([x, c_noise[None].astype(x.dtype), cond]))


def jit_with_arrays(fn: Callable, tree: eqx.Module) -> Callable:
    """``jax.jit`` ``fn(tree, *args)`` with the array leaves of ``tree`` passed as arguments."""
    dynamic, static = eqx.partition(tree, eqx.is_array)
    jitted = jax.jit(lambda dyn, *args: fn(eqx.combine(dyn, static), *args))
    return lambda *args: jitted(dynamic, *args)


def build_functions(
    denoiser: EDMPreconditionedDenoiser, observation_model: ObservationModel, y: jax.Array
) -> dict[str, Callable]:
    """The batched (``vmap`` over particles) functions to time, keyed by name."""
    sigma = jnp.asarray(SIGMA, jnp.float32)

    def unguided(den, x, cond):
        return jax.vmap(lambda xi, ci: den(xi, sigma, ci))(x, cond)

    def forward_and_vjps(count):
        def run(den, x, cond, cotangent):
            def one(xi, ci, vi):
                x_hat, vjp = jax.vjp(lambda z: den(z, sigma, ci), xi)
                v = vi
                for _ in range(count):
                    (v,) = vjp(v)  # each cotangent is the previous VJP's output
                return x_hat, v

            return jax.vmap(one)(x, cond, cotangent)

        return run

    def forward_then_dependent_vjps(count):
        # The first cotangent is the forward's own output, as in a guided call (whose
        # cotangents come from the residual y - h(x̂)): no VJP can start before the forward
        # has finished, so nothing of it can overlap the forward.
        def run(den, x, cond):
            def one(xi, ci):
                x_hat, vjp = jax.vjp(lambda z: den(z, sigma, ci), xi)
                v = x_hat
                for _ in range(count):
                    (v,) = vjp(v)
                return x_hat, v

            return jax.vmap(one)(x, cond)

        return run

    functions: dict[str, Callable] = {
        "F": jit_with_arrays(unguided, denoiser),
        "T1": jit_with_arrays(forward_and_vjps(1), denoiser),
        "T2": jit_with_arrays(forward_and_vjps(2), denoiser),
        "D1": jit_with_arrays(forward_then_dependent_vjps(1), denoiser),
        "D2": jit_with_arrays(forward_then_dependent_vjps(2), denoiser),
    }
    for k in ITERATIONS:
        guided = GuidedDenoiser(
            denoiser, MMPSGuidance(iterations=k, solver="cg"), observation_model, y
        )
        functions[f"K={k}"] = jit_with_arrays(unguided, guided)
    return functions


def time_rounds(
    calls: dict[str, Callable[[], object]], rounds: int, block_seconds: float, warmup: int = 3
) -> dict[str, np.ndarray]:
    """Seconds per call of each thunk, one block per thunk per round, shape ``(rounds,)``.

    Every thunk is called once to compile and ``warmup`` more times. A block is the same
    number of back-to-back calls for every thunk (enough for the first thunk's block to last
    ``block_seconds``), ended by ``block_until_ready``. The thunks are timed round-robin in a
    rotating order, so that the blocks of one round see the same machine state.
    """
    names = list(calls)
    for call in calls.values():
        for _ in range(1 + warmup):
            jax.block_until_ready(call())
    start = time.perf_counter()
    jax.block_until_ready(calls[names[0]]())
    single = time.perf_counter() - start
    number = max(1, math.ceil(block_seconds / max(single, 1e-6)))

    samples = {name: np.empty(rounds) for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            call = calls[name]
            out = None
            start = time.perf_counter()
            for _ in range(number):
                out = call()
            jax.block_until_ready(out)
            samples[name][r] = (time.perf_counter() - start) / number
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, fewer particles")
    parser.add_argument("--particles", type=int, default=None, help="P (default 64, quick 32)")
    parser.add_argument("--dim", type=int, default=256, help="state dimension d")
    parser.add_argument("--width", type=int, default=512, help="MLP width")
    parser.add_argument("--depth", type=int, default=3, help="MLP hidden layers")
    parser.add_argument("--rounds", type=int, default=None, help="timing rounds (400, quick 150)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the explicit JAX key")
    args = parser.parse_args()
    particles = args.particles or (32 if args.quick else 64)
    rounds = args.rounds or (150 if args.quick else 400)
    if particles < 1 or args.dim < OBSERVE_EVERY or rounds < 1:
        parser.error(f"need --particles >= 1, --dim >= {OBSERVE_EVERY} and --rounds >= 1")

    cond_dim = 32
    key_net, key_truth, key_obs, key_x, key_cond, key_v = jax.random.split(
        jax.random.key(args.seed), 6
    )
    network = MLPNetwork(args.dim, cond_dim, args.width, args.depth, key=key_net)
    denoiser = EDMPreconditionedDenoiser(network, sigma_data=1.0)
    operator = PointSelection(args.dim, np.arange(0, args.dim, OBSERVE_EVERY))
    observation_model = ObservationModel(operator, NOISE_VARIANCE)
    truth = jax.random.normal(key_truth, (args.dim,))
    y = observation_model.sample(truth, key=key_obs)
    x_t = truth + SIGMA * jax.random.normal(key_x, (particles, args.dim))
    cond = jax.random.normal(key_cond, (particles, cond_dim))
    cotangent = jax.random.normal(key_v, (particles, args.dim))

    functions = build_functions(denoiser, observation_model, y)
    calls = {
        name: (
            (lambda fn=fn: fn(x_t, cond, cotangent))
            if name.startswith("T")
            else (lambda fn=fn: fn(x_t, cond))
        )
        for name, fn in functions.items()
    }
    samples = time_rounds(calls, rounds, BLOCK_SECONDS)

    # The machine's speed drifts (by up to 2x on a shared 2-core VM) on a time scale longer
    # than a round, so each time is taken relative to F in the same round before the median.
    F_ms = 1e3 * float(np.median(samples["F"]))
    rel = {name: float(np.median(values / samples["F"])) for name, values in samples.items()}
    B = rel["T2"] - rel["T1"]
    F_lin = rel["T1"] - B
    B_dep = rel["D2"] - rel["D1"]
    F_lin_dep = rel["D1"] - B_dep
    spread = {
        name: np.percentile(values / samples["F"], [25, 75]) for name, values in samples.items()
    }
    print(
        f"backend {jax.default_backend()}, P={particles}, d={args.dim}, width={args.width}, "
        f"depth={args.depth}, observations={observation_model.num_observations}, rounds={rounds}"
    )
    print(f"F = {F_ms:.3f} ms (median); below, times are median ratios to F in the same round")
    for name in ("T1", "T2", "D1", "D2"):
        q25, q75 = spread[name]
        print(f"{name} = {rel[name]:.3f} F   (IQR {q25:.3f}-{q75:.3f})")
    print(f"B = T2 - T1 = {B:.3f} F   F_lin = T1 - B = {F_lin:.3f} F")
    print(
        f"with dependent cotangents: B = D2 - D1 = {B_dep:.3f} F   "
        f"F_lin = D1 - B = {F_lin_dep:.3f} F"
    )
    if B <= 0:
        print("warning: B = T2 - T1 <= 0: the timings are too noisy for the bound to mean anything")
    print(
        f"{'K':>3} {'guided ms':>10} {'bound ms':>10} {'ratio':>6} "
        f"{'guided/F':>9} {'IQR':>13} {'ratio to F_lin+(K+1)B':>22} {'dependent':>10}"
    )
    ratios, reachable = [], []
    for k in ITERATIONS:
        name = f"K={k}"
        bound = 1.0 + (k + 1) * B
        ratios.append(rel[name] / bound)
        reachable.append(rel[name] / (F_lin_dep + (k + 1) * B_dep))
        q25, q75 = spread[name]
        print(
            f"{k:>3} {rel[name] * F_ms:>10.3f} {bound * F_ms:>10.3f} {ratios[-1]:>6.2f} "
            f"{rel[name]:>9.3f} {f'{q25:.3f}-{q75:.3f}':>13} "
            f"{rel[name] / (F_lin + (k + 1) * B):>22.2f} "
            f"{rel[name] / (F_lin_dep + (k + 1) * B_dep):>10.2f}"
        )
    widths = [(q75 - q25) / rel[name] for name, (q25, q75) in spread.items() if name != "F"]
    if max(widths) > NOISY_IQR:
        print(
            f"warning: a relative IQR reaches {max(widths):.2f} (> {NOISY_IQR}): the machine was "
            "busy; the ratios may be off by several percent, rerun on a quiet machine"
        )
    print(f"target: ratio <= {TARGET:.2f}")
    print(f"worst ratio to bound: {max(ratios):.2f}")
    print(f"worst ratio to the reachable bound (D1, D2): {max(reachable):.2f}")


if __name__ == "__main__":
    main()
