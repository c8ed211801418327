"""Matrix-free Krylov solvers with a fixed number of iterations, started from ``u₀ = 0``.

A fixed count keeps the cost predictable (one matvec is one VJP through the denoiser)
and makes the solvers ``vmap``/``jit`` friendly: there is no convergence test. Starting
from zero saves the matvec that ``jax.scipy.sparse.linalg`` spends on ``A u₀``.

Matvecs per solve: CG ``K``, BiCGSTAB ``2K``, GMRES ``K``.

References:
    Hestenes & Stiefel (1952), CG. van der Vorst (1992), BiCGSTAB.
    Saad & Schultz (1986), GMRES.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

Vector = Float[Array, " n"]
MatVec = Callable[[Vector], Vector]


def _divide(numerator: Array, denominator: Array) -> Array:
    """``numerator / denominator``, or 0 where the denominator vanishes.

    A vanishing denominator means the solve has converged or broken down (zero residual or
    search direction); stopping the update there is exact in the first case and safe in the
    second. The ``where`` on both sides keeps XLA from fusing divisions into an underflowing
    product of denominators (which produced 0/0 with a plain epsilon guard).
    """
    tiny = jnp.asarray(jnp.finfo(denominator.dtype).tiny, denominator.dtype) ** 0.5
    ok = jnp.abs(denominator) > tiny
    return jnp.where(ok, numerator / jnp.where(ok, denominator, 1.0), 0.0)


def safeguarded_curvature(p, Ap, noise_variance):
    """``pᵀRp + |pᵀ(A − R)p|`` for ``A = R + C`` with diagonal ``R``: equal to ``pᵀAp`` when
    ``C ⪰ 0`` along ``p``, and never below ``pᵀRp`` or the magnitude of ``C`` otherwise."""
    noise_part = jnp.vdot(p, noise_variance * p)
    return noise_part + jnp.abs(jnp.vdot(p, Ap) - noise_part)


def conjugate_gradient(
    matvec: MatVec,
    b: Vector,
    iterations: int | Array,
    curvature: Callable[[Vector, Vector], Array] | None = None,
) -> Vector:
    """``K`` iterations of CG on ``A u = b`` (``A`` symmetric positive definite).

    ``curvature_floor(p)``, when given, is a known lower bound of :math:`p^\top A p`; the
    step uses :math:`\\max(p^\top A p, \text{floor}(p))`. For an SPD ``A`` that satisfies the
    bound this changes nothing; for an ``A`` that has lost definiteness it keeps each step
    no longer than the bound allows instead of dividing by a vanishing or negative
    curvature (see :class:`~filtrax.guidance.guided.MMPSGuidance`).
    """

    def body(_, carry):
        u, r, p, rr = carry
        Ap = matvec(p)
        step = _divide(rr, jnp.vdot(p, Ap) if curvature is None else curvature(p, Ap))
        u = u + step * p
        r = r - step * Ap
        rr_new = jnp.vdot(r, r)
        p = r + _divide(rr_new, rr) * p
        return u, r, p, rr_new

    init = (jnp.zeros_like(b), b, b, jnp.vdot(b, b))
    return jax.lax.fori_loop(0, iterations, body, init)[0]


def bicgstab(matvec: MatVec, b: Vector, iterations: int | Array) -> Vector:
    """``K`` iterations of BiCGSTAB on ``A u = b`` (two matvecs per iteration)."""

    def body(_, carry):
        u, r, p, r_hat, rho = carry
        v = matvec(p)
        step = _divide(rho, jnp.vdot(r_hat, v))
        s = r - step * v
        t = matvec(s)
        omega = _divide(jnp.vdot(t, s), jnp.vdot(t, t))
        u = u + step * p + omega * s
        r = s - omega * t
        rho_new = jnp.vdot(r_hat, r)
        beta = _divide(rho_new, rho) * _divide(step, omega)
        p = r + beta * (p - omega * v)
        return u, r, p, r_hat, rho_new

    init = (jnp.zeros_like(b), b, b, b, jnp.vdot(b, b))
    return jax.lax.fori_loop(0, iterations, body, init)[0]


def gmres(matvec: MatVec, b: Vector, iterations: int | Array) -> Vector:
    """GMRES with a Krylov space of dimension ``K`` (``K`` matvecs, no restart).

    Arnoldi with modified Gram–Schmidt, then the small least-squares problem
    ``min ‖β e₁ − H y‖`` is solved by SVD.
    """
    k = iterations
    beta = jnp.linalg.norm(b)
    basis = jnp.zeros((k + 1, b.shape[0]), b.dtype).at[0].set(_divide(b, beta))
    hessenberg = jnp.zeros((k + 1, k), b.dtype)

    def arnoldi(j, carry):
        basis, hessenberg = carry
        w = matvec(basis[j])

        def orthogonalise(i, carry):
            w, column = carry
            coefficient = jnp.where(i <= j, jnp.vdot(basis[i], w), 0.0)
            return w - coefficient * basis[i], column.at[i].set(coefficient)

        w, column = jax.lax.fori_loop(0, k, orthogonalise, (w, jnp.zeros((k + 1,), b.dtype)))
        norm = jnp.linalg.norm(w)
        column = column.at[j + 1].set(norm)
        basis = basis.at[j + 1].set(_divide(w, norm))
        return basis, hessenberg.at[:, j].set(column)

    basis, hessenberg = jax.lax.fori_loop(0, k, arnoldi, (basis, hessenberg))
    rhs = jnp.zeros((k + 1,), b.dtype).at[0].set(beta)
    # A least-squares solve by SVD also copes with breakdown (a Krylov space that became
    # invariant before k steps): tiny singular values are cut instead of producing NaNs.
    coefficients = jnp.linalg.lstsq(hessenberg, rhs)[0]
    return basis[:k].T @ coefficients


SOLVERS: dict[str, Callable[[MatVec, Vector, int], Vector]] = {
    "cg": conjugate_gradient,
    "bicgstab": bicgstab,
    "gmres": gmres,
}

MATVECS_PER_ITERATION: dict[str, int] = {"cg": 1, "bicgstab": 2, "gmres": 1}
