"""Oracles for the fixed-iteration Krylov solvers (CG, BiCGSTAB, GMRES, started from u₀ = 0).

Besides convergence in ``n`` iterations on an ``n × n`` system, CG and GMRES are checked
iterate by iterate against their defining optimality property on the Krylov space
``K_k = span{b, A b, …, A^{k-1} b}``: CG minimises the A-norm error, GMRES the residual.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from filtrax.guidance.linear_solvers import (
    MATVECS_PER_ITERATION,
    SOLVERS,
    bicgstab,
    conjugate_gradient,
    gmres,
)

N = 8


def _spd(n=N, seed=0, low=0.5, high=10.0):
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.normal(size=(n, n)))
    return (U * np.linspace(low, high, n)) @ U.T


def _rhs(n=N, seed=1):
    return np.random.default_rng(seed).normal(size=n)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _solve_static(solver, A, b, iterations):
    return solver(lambda v: A @ v, b, iterations)


@functools.partial(jax.jit, static_argnums=0)
def _solve_traced(solver, A, b, iterations):
    return solver(lambda v: A @ v, b, iterations)


def _solve(solver, A, b, iterations):
    """Jitted solve; CG and BiCGSTAB take a traced iteration count (one compile for all
    counts), GMRES needs it static (it sizes the Krylov basis)."""
    A = jnp.asarray(A)
    b = jnp.asarray(b, A.dtype)
    if solver is gmres:
        return np.asarray(_solve_static(solver, A, b, iterations))
    return np.asarray(_solve_traced(solver, A, b, jnp.asarray(iterations)))


def _krylov_basis(A, b, k):
    """Orthonormal basis of K_k (QR of the Krylov matrix, fine for n = 8)."""
    columns = [b]
    for _ in range(k - 1):
        columns.append(A @ columns[-1])
    Q, _ = np.linalg.qr(np.stack(columns, axis=1))
    return Q


@pytest.mark.x64
@pytest.mark.parametrize("name", sorted(SOLVERS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_solvers_converge_in_n_iterations_on_spd(name, seed):
    A, b = _spd(seed=seed), _rhs(seed=seed + 10)
    exact = np.linalg.solve(A, b)
    u = _solve(SOLVERS[name], A, b, N)
    assert np.linalg.norm(u - exact) < 1e-8 * np.linalg.norm(exact)
    assert np.linalg.norm(b - A @ u) < 1e-8 * np.linalg.norm(b)


@pytest.mark.x64
def test_gmres_and_bicgstab_solve_a_nonsymmetric_system():
    rng = np.random.default_rng(3)
    skew = rng.normal(size=(N, N))
    A = _spd(seed=3) + 0.5 * (skew - skew.T)
    b = _rhs(seed=4)
    exact = np.linalg.solve(A, b)
    u = _solve(gmres, A, b, N)
    assert np.linalg.norm(u - exact) < 1e-8 * np.linalg.norm(exact)
    u = _solve(bicgstab, A, b, 2 * N)
    assert np.linalg.norm(u - exact) < 1e-6 * np.linalg.norm(exact)


@pytest.mark.x64
def test_cg_iterates_minimise_the_a_norm_error_on_the_krylov_space():
    A, b = _spd(seed=5), _rhs(seed=6)
    exact = np.linalg.solve(A, b)

    def a_norm(e):
        return float(np.sqrt(e @ A @ e))

    errors = [a_norm(exact)]  # u₀ = 0
    for k in range(1, N + 1):
        u = _solve(conjugate_gradient, A, b, k)
        V = _krylov_basis(A, b, k)
        optimal = V @ np.linalg.solve(V.T @ A @ V, V.T @ b)
        np.testing.assert_allclose(u, optimal, rtol=1e-7, atol=1e-9 * np.linalg.norm(exact))
        errors.append(a_norm(exact - u))
    errors = np.array(errors)
    assert np.all(np.diff(errors[:-1]) < 0), errors  # strictly decreasing until converged
    assert errors[-1] < 1e-8 * errors[0]


@pytest.mark.x64
def test_gmres_iterates_minimise_the_residual_on_the_krylov_space():
    rng = np.random.default_rng(7)
    skew = rng.normal(size=(N, N))
    A = _spd(seed=7) + 0.3 * (skew - skew.T)
    b = _rhs(seed=8)
    residuals = [np.linalg.norm(b)]
    for k in range(1, N + 1):
        u = _solve(gmres, A, b, k)
        V = _krylov_basis(A, b, k)
        coefficients = np.linalg.lstsq(A @ V, b, rcond=None)[0]
        np.testing.assert_allclose(u, V @ coefficients, rtol=1e-7, atol=1e-9)
        residuals.append(np.linalg.norm(b - A @ u))
    residuals = np.array(residuals)
    assert np.all(np.diff(residuals) <= 1e-12 * residuals[0])
    assert residuals[-1] < 1e-8 * residuals[0]


@pytest.mark.x64
@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_partial_solves_reduce_the_residual(name):
    A, b = _spd(seed=9), _rhs(seed=10)
    norm_b = np.linalg.norm(b)
    if name != "gmres":  # GMRES needs K >= 1 (MMPSGuidance enforces iterations >= 1)
        zero = _solve(SOLVERS[name], A, b, 0)
        np.testing.assert_array_equal(zero, np.zeros(N))  # u₀ = 0
    for k in range(1, N):
        u = _solve(SOLVERS[name], A, b, k)
        assert np.linalg.norm(b - A @ u) < norm_b, (name, k)


@pytest.mark.parametrize("name", sorted(SOLVERS))
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_no_nan_on_a_zero_right_hand_side_or_after_convergence(name, dtype):
    """Breakdown guard: b = 0 and iterating past convergence must not divide 0 by 0."""
    with jax.enable_x64(dtype == jnp.float64):
        A = _spd(seed=11).astype(dtype)
        solver = SOLVERS[name]
        for iterations in (1, 3 * N):
            u = _solve(solver, A, np.zeros(N, dtype), iterations)
            np.testing.assert_array_equal(u, np.zeros(N))
        b = _rhs(seed=12).astype(dtype)
        exact = np.linalg.solve(A.astype(np.float64), b.astype(np.float64))
        u = _solve(solver, A, b, 3 * N)
        assert np.all(np.isfinite(u))
        tol = 1e-3 if dtype == jnp.float32 else 1e-8
        assert np.linalg.norm(u - exact) < tol * np.linalg.norm(exact)
        # A right-hand side that is an eigenvector: exact after one iteration, then idle.
        eigenvector = np.linalg.eigh(A.astype(np.float64))[1][:, 0].astype(dtype)
        u = _solve(solver, A, eigenvector, 3 * N)
        assert np.all(np.isfinite(u))
        np.testing.assert_allclose(A @ u, eigenvector, atol=10 * tol)


def test_solvers_are_batched_with_vmap():
    A = jnp.asarray(_spd(seed=13), jnp.float32)
    bs = jnp.asarray(np.random.default_rng(14).normal(size=(5, N)), jnp.float32)
    for solver in SOLVERS.values():
        us = jax.jit(jax.vmap(lambda b, s=solver: s(lambda v: A @ v, b, N)))(bs)
        assert us.shape == (5, N) and us.dtype == jnp.float32
        residual = np.asarray(bs) - np.asarray(us) @ np.asarray(A).T
        assert np.abs(residual).max() < 1e-3


@pytest.mark.parametrize("name", sorted(SOLVERS))
@pytest.mark.parametrize("iterations", [1, 3])
def test_matvecs_per_iteration(name, iterations):
    """The documented cost: CG K, BiCGSTAB 2K, GMRES K matvecs (counted eagerly)."""
    A = jnp.asarray(_spd(n=4, seed=15), jnp.float32)
    calls = []

    def matvec(v):
        calls.append(1)
        return A @ v

    with jax.disable_jit():
        SOLVERS[name](matvec, jnp.ones(4, jnp.float32), iterations)
    assert len(calls) == MATVECS_PER_ITERATION[name] * iterations


def test_safeguarded_curvature_is_exact_for_spd_and_bounded_for_indefinite():
    from filtrax.guidance.linear_solvers import conjugate_gradient, safeguarded_curvature

    r = jnp.array([0.1, 0.1, 0.1])
    b = jnp.array([1.0, -0.5, 0.25])

    def solve(cov, safe):
        matrix = jnp.diag(r) + cov

        def curvature(p, Ap):
            return safeguarded_curvature(p, Ap, r)

        return conjugate_gradient(lambda v: matrix @ v, b, 2, curvature if safe else None)

    spd = jnp.array([[2.0, 0.3, 0.0], [0.3, 1.0, 0.2], [0.0, 0.2, 0.5]])
    np.testing.assert_allclose(solve(spd, True), solve(spd, False), rtol=1e-6)
    # A "covariance" with a negative eigenvalue that almost cancels R along b: plain CG
    # divides by a tiny curvature, the safeguarded one does not.
    indefinite = -0.0999 * jnp.eye(3)
    plain, safe = solve(indefinite, False), solve(indefinite, True)
    assert float(jnp.max(jnp.abs(plain))) > 1e3
    assert float(jnp.max(jnp.abs(safe))) < 20.0
